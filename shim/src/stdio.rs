//! A process's stdio as containerd hands it over (FIFO paths, `file://` and `binary://`
//! URIs) joined to the agent's vsock streams. Sinks are opened in the copying threads: a FIFO
//! open waits for its other end, and no RPC may wait on that.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use vmpod_protocol::{StdStream, StdioWiring};
use vmpod_sandbox::Endpoint;

#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    None,
    Fifo(PathBuf),
    File(PathBuf),
    /// A logging program: its path and arguments.
    Binary(PathBuf, Vec<String>),
}

/// containerd's stdio strings: a path (a FIFO it made), `fifo://`, `file://` or `binary://`.
pub fn parse(uri: &str) -> Result<Target, String> {
    if uri.is_empty() {
        return Ok(Target::None);
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Ok(Target::Fifo(PathBuf::from(uri)));
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err(format!("stdio URI '{uri}' must name an absolute path"));
    }
    match scheme {
        "fifo" => Ok(Target::Fifo(path.into())),
        "file" => Ok(Target::File(path.into())),
        "binary" => {
            // As containerd's Go shims do: each key, then its value when there is one.
            let mut args = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                args.push(k.to_string());
                if !v.is_empty() {
                    args.push(v.to_string());
                }
            }
            Ok(Target::Binary(path.into(), args))
        }
        other => Err(format!(
            "stdio URI scheme '{other}' is not supported (fifo, file and binary are)"
        )),
    }
}

#[derive(Debug, Clone, Default)]
pub struct Paths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl Paths {
    pub fn wiring(&self) -> StdioWiring {
        StdioWiring {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.terminal && !self.stderr.is_empty(),
        }
    }

    /// Checks the strings before anything is created.
    pub fn validate(&self) -> Result<(), String> {
        for s in [&self.stdin, &self.stdout, &self.stderr] {
            parse(s)?;
        }
        if matches!(parse(&self.stdin)?, Target::File(_) | Target::Binary(..)) {
            return Err(format!("stdin '{}' must be a FIFO", self.stdin));
        }
        Ok(())
    }
}

/// The copying threads of one process (none by default).
#[derive(Default)]
pub struct Attached {
    outputs: Vec<std::thread::JoinHandle<()>>,
    /// Our end of the container's stdin, to close it on CloseIO.
    pub stdin: Option<UnixStream>,
    logger: Option<Child>,
}

impl Attached {
    /// Waits until stdout and stderr are written out (the agent reports an exit only after
    /// delivering them, so this returns promptly once the process is gone).
    pub fn finish(mut self) {
        for t in self.outputs.drain(..) {
            let _ = t.join();
        }
        if let Some(mut logger) = self.logger.take() {
            let _ = logger.wait();
        }
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [RawFd; 2] = [-1; 2];
    // SAFETY: pipe2(2) fills two fds, owned right after.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just created.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts the logging program with the process's stdout on fd 3, stderr on fd 4 and a
/// readiness pipe on fd 5, and waits until it says it is ready.
fn start_logger(
    path: &PathBuf,
    args: &[String],
    container: &str,
    namespace: &str,
) -> Result<(Child, File, File), String> {
    let fail = |e: std::io::Error| format!("logging binary {}: {e}", path.display());
    let (out_r, out_w) = pipe().map_err(fail)?;
    let (err_r, err_w) = pipe().map_err(fail)?;
    let (ready_r, ready_w) = pipe().map_err(fail)?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", container)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; the fds stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(fail)?;
    drop((out_r, err_r, ready_w));
    let mut ready = File::from(ready_r);
    let mut byte = [0u8; 1];
    let _ = ready.read(&mut byte);
    Ok((child, File::from(out_w), File::from(err_w)))
}

/// Opens the sink in the copying thread; a sink that cannot be opened drains the stream, so
/// the process never blocks on output nobody can read.
enum Sink {
    Fifo(PathBuf),
    File(PathBuf),
    Open(File),
}

impl Sink {
    fn open(self) -> Option<(File, Option<File>)> {
        match self {
            // Go's shims open a FIFO for writing and then once more for reading: the extra
            // reader keeps writes from failing while containerd restarts.
            Sink::Fifo(p) => {
                let w = OpenOptions::new().write(true).open(&p).ok()?;
                let r = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&p)
                    .ok();
                Some((w, r))
            }
            Sink::File(p) => {
                if let Some(dir) = p.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let f = OpenOptions::new().create(true).append(true).open(&p).ok()?;
                Some((f, None))
            }
            Sink::Open(f) => Some((f, None)),
        }
    }
}

fn copy_out(mut from: UnixStream, sink: Sink) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut to = sink.open();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if let Some((w, _)) = to.as_mut() {
                        if w.write_all(&buf[..n]).is_err() {
                            to = None;
                        }
                    }
                }
            }
        }
    })
}

/// Opens the agent's streams for the process and starts copying. `namespace` is for logging
/// binaries.
pub fn attach(
    endpoint: &Endpoint,
    container: &str,
    exec: Option<&str>,
    paths: &Paths,
    namespace: &str,
) -> Result<Attached, String> {
    let wiring = paths.wiring();
    let stream = |which| {
        endpoint.stream(container, exec, which).map_err(|e| {
            format!(
                "open the {which:?} stream: {}",
                vmpod_sandbox::error::chain(&e)
            )
        })
    };
    let mut attached = Attached {
        outputs: Vec::new(),
        stdin: None,
        logger: None,
    };
    let stdout_target = parse(&paths.stdout)?;
    let stderr_target = parse(&paths.stderr)?;
    // file:// and binary:// take stdout and stderr together.
    let (mut out_sink, mut err_sink) = (None, None);
    match &stdout_target {
        Target::None => {}
        Target::Fifo(p) => out_sink = Some(Sink::Fifo(p.clone())),
        Target::File(p) => {
            out_sink = Some(Sink::File(p.clone()));
            err_sink = Some(Sink::File(p.clone()));
        }
        Target::Binary(path, args) => {
            let (child, out, err) = start_logger(path, args, container, namespace)?;
            attached.logger = Some(child);
            out_sink = Some(Sink::Open(out));
            err_sink = Some(Sink::Open(err));
        }
    }
    if let Target::Fifo(p) = &stderr_target {
        err_sink = Some(Sink::Fifo(p.clone()));
    }
    if wiring.stdout {
        if let Some(sink) = out_sink {
            attached
                .outputs
                .push(copy_out(stream(StdStream::Stdout)?, sink));
        }
    }
    if wiring.stderr {
        if let Some(sink) = err_sink {
            attached
                .outputs
                .push(copy_out(stream(StdStream::Stderr)?, sink));
        }
    }
    if let Target::Fifo(path) = parse(&paths.stdin)? {
        let mut to = stream(StdStream::Stdin)?;
        attached.stdin = to.try_clone().ok();
        std::thread::spawn(move || {
            if let Ok(mut from) = File::open(&path) {
                let _ = std::io::copy(&mut from, &mut to);
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    }
    Ok(attached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_stdio_strings() {
        assert_eq!(parse("").unwrap(), Target::None);
        assert_eq!(
            parse("/run/containerd/fifo/1/x-stdout").unwrap(),
            Target::Fifo("/run/containerd/fifo/1/x-stdout".into())
        );
        assert_eq!(
            parse("file:///var/log/x.log").unwrap(),
            Target::File("/var/log/x.log".into())
        );
        assert_eq!(
            parse("binary:///usr/bin/logger?tag=x&debug").unwrap(),
            Target::Binary(
                "/usr/bin/logger".into(),
                vec!["tag".into(), "x".into(), "debug".into()]
            )
        );
        assert!(parse("ftp:///x").unwrap_err().contains("'ftp'"));
        assert!(parse("file://relative").unwrap_err().contains("absolute"));
        let paths = Paths {
            stdin: "file:///x".into(),
            ..Default::default()
        };
        assert!(paths.validate().unwrap_err().contains("FIFO"));
    }

    #[test]
    fn a_terminal_has_no_stderr_stream() {
        let paths = Paths {
            stdin: "/a".into(),
            stdout: "/b".into(),
            stderr: "/c".into(),
            terminal: true,
        };
        let w = paths.wiring();
        assert!(w.stdin && w.stdout && !w.stderr);
    }
}
