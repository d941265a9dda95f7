//! vmpod-agent: PID 1 of a vmpod guest. Sets the guest up, then serves the vmpod protocol on
//! vsock (or a virtio-serial port, see serial.rs) until the host asks it to power off.
//!
//! Not PID 1 (a test on the host), it serves on Unix sockets instead:
//!   vmpod-agent --listen-unix CONTROL_PATH STDIO_PATH [FORWARD_PATH]

mod cgroup;
mod container;
mod init;
mod net;
mod pod;
mod relay;
mod rootfs;
mod serial;
mod server;
mod shared;
mod sys;
mod user;

use std::os::fd::OwnedFd;
use vmpod_protocol::{AGENT_PORT, FORWARD_PORT, STDIO_PORT};

/// Set by `vmpod.debug` on the kernel command line: the agent narrates on the console.
pub(crate) static DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::DEBUG.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("vmpod-agent: {}", format!($($arg)*));
        }
    };
}
pub(crate) use debug;

/// An error with its causes, as one line for the console.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text += ": ";
        text += &c.to_string();
        cause = c.source();
    }
    text
}

fn unix_listener(path: &str) -> std::io::Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener.into())
}

/// The server's listeners: control, stdio and (optional in host tests) published ports.
pub(crate) type Listeners = (OwnedFd, OwnedFd, Option<OwnedFd>);

fn serve(
    (control, stdio, forward): Listeners,
    serial: Option<serial::SerialBridge>,
) -> Result<(), String> {
    let mut server = server::Server::new(control, stdio, forward, serial)
        .map_err(|e| format!("start the server: {e}"))?;
    server.run().map_err(|e| format!("event loop: {e}"))
}

fn run_as_init() -> Result<(), String> {
    init::boot().map_err(|e| format!("guest set-up: {}", chain(&e)))?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline.split_whitespace().any(|w| w == "vmpod.debug") {
        DEBUG.store(true, std::sync::atomic::Ordering::Relaxed);
        // libcontainer says why a container could not be made only in its log.
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .without_time()
            .try_init();
    }
    let (listeners, bridge) = if let Some(port) = serial::find_port() {
        debug!("serving on {}", port.display());
        let (listeners, bridge) =
            serial::listen(&port).map_err(|e| format!("serve on {}: {e}", port.display()))?;
        init::signal_ready();
        eprintln!("vmpod-agent: ready on {}", serial::PORT_NAME);
        (listeners, Some(bridge))
    } else {
        let cid = sys::vsock_local_cid().map_err(|e| format!("vsock: {e}"))?;
        debug!("vsock CID {cid}");
        let control = sys::vsock_listen(AGENT_PORT)
            .map_err(|e| format!("listen on vsock port {AGENT_PORT}: {e}"))?;
        let stdio = sys::vsock_listen(STDIO_PORT)
            .map_err(|e| format!("listen on vsock port {STDIO_PORT}: {e}"))?;
        let forward = sys::vsock_listen(FORWARD_PORT)
            .map_err(|e| format!("listen on vsock port {FORWARD_PORT}: {e}"))?;
        init::signal_ready();
        eprintln!("vmpod-agent: ready on vsock port {AGENT_PORT}");
        ((control, stdio, Some(forward)), None)
    };
    serve(listeners, bridge)
}

fn main() {
    // The pod's pause process is this binary, and PID 1 of its own PID namespace when the pod
    // shares one: its name decides before its pid does.
    if std::env::args_os().next().as_deref() == Some(std::ffi::OsStr::new(pod::PAUSE_PATH)) {
        pod::pause();
    }
    if std::process::id() == 1 {
        if let Err(why) = run_as_init() {
            // Said on the console; PID 1 then exits, the kernel panics and the VMM reports it.
            eprintln!("vmpod-agent: {why}");
            std::process::exit(1);
        }
        init::power_off();
    }
    let args: Vec<String> = std::env::args().collect();
    let result = match args.as_slice() {
        [_, flag, control, stdio, forward @ ..]
            if flag == "--listen-unix" && forward.len() <= 1 =>
        {
            (|| {
                Ok((
                    unix_listener(control)?,
                    unix_listener(stdio)?,
                    forward.first().map(|f| unix_listener(f)).transpose()?,
                ))
            })()
            .map_err(|e: std::io::Error| format!("listen: {e}"))
            .and_then(|listeners| serve(listeners, None))
        }
        _ => Err("runs as PID 1 of a vmpod guest; for tests: \
                  --listen-unix CONTROL_PATH STDIO_PATH [FORWARD_PATH]"
            .into()),
    };
    if let Err(why) = result {
        eprintln!("vmpod-agent: {why}");
        std::process::exit(1);
    }
}
