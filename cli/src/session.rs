//! A process attached to the local terminal: its streams copied both ways, Ctrl-C / SIGTERM
//! forwarded, the window size kept in step, and its exit awaited. `vmpod run` and
//! `vmpod exec` both end up here.
//!
//! As with `docker run`, a process that ignores Ctrl-C can still be stopped: a second SIGINT
//! within `FORCE_WINDOW` of the first kills it (SIGKILL to every process of the container, or
//! of the exec).

use crate::signals;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use vmpod_protocol::{Client, ClientError, ProcessExit, RequestBody};
use vmpod_sandbox::Endpoint;

/// How soon a second SIGINT must follow the first to kill rather than forward.
const FORCE_WINDOW: Duration = Duration::from_secs(2);

pub struct Streams {
    pub stdout: UnixStream,
    pub stderr: Option<UnixStream>,
    pub stdin: Option<UnixStream>,
}

/// Starts copying, runs `start` (which lets the process go), then waits for its exit on
/// `waiter`. Signals go through a second control connection, closed once the process is gone.
pub fn attach(
    endpoint: &Endpoint,
    waiter: &mut Client<UnixStream>,
    container: &str,
    exec: Option<&str>,
    streams: Streams,
    tty: bool,
    start: impl FnOnce(&mut Client<UnixStream>) -> Result<(), ClientError>,
) -> Result<Result<ProcessExit, ClientError>, ClientError> {
    let terminal = if tty { raw_terminal() } else { None };
    if let Err(e) = start(waiter) {
        drop(terminal);
        return Err(e);
    }
    let out = std::thread::spawn(move || copy(streams.stdout, std::io::stdout()));
    let err = streams
        .stderr
        .map(|s| std::thread::spawn(move || copy(s, std::io::stderr())));
    if let Some(mut s) = streams.stdin {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut s);
            let _ = s.shutdown(std::net::Shutdown::Write);
        });
    }
    let mut signal_connection = None;
    if let (Ok(mut signals), Ok(mut control)) = (
        signals::catch(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGWINCH]),
        endpoint.control(),
    ) {
        signal_connection = control.stream().try_clone().ok();
        let (container, exec) = (container.to_string(), exec.map(str::to_string));
        if tty {
            resize(&mut control, &container, exec.as_deref());
        }
        std::thread::spawn(move || {
            let mut last_interrupt: Option<Instant> = None;
            while let Some(sig) = signals::next(&mut signals) {
                if sig == libc::SIGWINCH {
                    if tty {
                        resize(&mut control, &container, exec.as_deref());
                    }
                    continue;
                }
                let forced = sig == libc::SIGINT
                    && last_interrupt.is_some_and(|at| at.elapsed() < FORCE_WINDOW);
                if sig == libc::SIGINT {
                    last_interrupt = Some(Instant::now());
                }
                let _ = control.call(RequestBody::SignalProcess {
                    container_id: container.clone(),
                    exec_id: exec.clone(),
                    signal: if forced { libc::SIGKILL } else { sig },
                    all: forced,
                });
            }
        });
    }
    let exit = waiter.wait(container, exec);
    let _ = out.join();
    if let Some(err) = err {
        let _ = err.join();
    }
    drop(terminal);
    // The agent powers off only once its clients hang up; this one is ours to close.
    if let Some(connection) = signal_connection {
        let _ = connection.shutdown(std::net::Shutdown::Both);
    }
    Ok(exit)
}

fn resize(control: &mut Client<UnixStream>, container: &str, exec: Option<&str>) {
    // SAFETY: TIOCGWINSZ writes one winsize.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut size) } == 0 {
        let _ = control.call(RequestBody::ResizePty {
            container_id: container.into(),
            exec_id: exec.map(str::to_string),
            rows: size.ws_row,
            cols: size.ws_col,
        });
    }
}

/// The local terminal in raw mode while the container owns it; restored on drop.
pub struct RawTerminal(libc::termios);

pub fn raw_terminal() -> Option<RawTerminal> {
    // SAFETY: tcgetattr/tcsetattr on stdin with a termios we own.
    unsafe {
        let mut saved: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
            return None;
        }
        let mut raw = saved;
        libc::cfmakeraw(&mut raw);
        libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw);
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the termios saved above.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0) };
    }
}

/// Copies until `from` ends or `to` refuses more, flushing each piece (a terminal, a log).
pub fn copy(mut from: impl Read, mut to: impl Write) {
    let mut buf = [0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
                let _ = to.flush();
            }
        }
    }
}
