//! Just enough of QEMU's machine protocol to save a stopped VM to a file and load it back.

use crate::error::{io, SandboxError};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (QEMU creates the socket as it starts) and leaves capabilities negotiation.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, SandboxError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(io(format!("connect to QEMU's {}", socket.display()))(e))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io("set a timeout on QEMU's QMP socket"))?;
        let writer = stream.try_clone().map_err(io("clone QEMU's QMP socket"))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        qmp.read()?; // the greeting
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, SandboxError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(io("read from QEMU's QMP socket"))?;
        if n == 0 {
            return Err(SandboxError::Invalid(
                "QEMU closed its QMP socket (it ended?)".into(),
            ));
        }
        serde_json::from_str(&line)
            .map_err(|e| SandboxError::Invalid(format!("QEMU sent bad QMP JSON ({e}): {line}")))
    }

    /// Runs one command; its `return` value, or QEMU's error as ours.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, SandboxError> {
        let request = json!({"execute": command, "arguments": arguments});
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .map_err(io("write to QEMU's QMP socket"))?;
        self.answer(command)
    }

    /// The reply to `command`, asynchronous events skipped.
    fn answer(&mut self, command: &str) -> Result<Value, SandboxError> {
        loop {
            let reply = self.read()?;
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                let desc = error.get("desc").and_then(Value::as_str).unwrap_or("?");
                return Err(SandboxError::Invalid(format!("QEMU {command}: {desc}")));
            }
            // An asynchronous event: not what we wait for.
        }
    }

    /// Hands QEMU `fd` under `name` (QMP `getfd`: the command travels with the descriptor as
    /// SCM_RIGHTS), for a URI such as `fd:NAME`.
    pub fn pass_fd(&mut self, name: &str, fd: BorrowedFd) -> Result<(), SandboxError> {
        let request = json!({"execute": "getfd", "arguments": {"fdname": name}});
        let line = format!("{request}\n");
        let mut iov = libc::iovec {
            iov_base: line.as_ptr() as *mut libc::c_void,
            iov_len: line.len(),
        };
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: an all-zero msghdr is valid; the fields set point at live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer holds one header with room for one descriptor.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), fd.as_raw_fd());
        }
        // SAFETY: msg describes the buffers above, which outlive the call.
        let sent = unsafe { libc::sendmsg(self.writer.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if sent < 0 || sent as usize != line.len() {
            return Err(io("send a descriptor on QEMU's QMP socket")(
                std::io::Error::last_os_error(),
            ));
        }
        self.answer("getfd").map(drop)
    }

    /// Waits until `query-migrate` says the migration ended: `Ok` when completed, QEMU's
    /// reason otherwise.
    pub fn wait_for_migration(&mut self, timeout: Duration) -> Result<(), SandboxError> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.execute("query-migrate", json!({}))?;
            match info.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    let why = info
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given");
                    return Err(SandboxError::Invalid(format!(
                        "QEMU's migration failed: {why}"
                    )));
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(SandboxError::Invalid(format!(
                    "QEMU's migration did not end within {} s",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The VM's run state (`running`, `paused`, `inmigrate`, ...).
    pub fn status(&mut self) -> Result<String, SandboxError> {
        let info = self.execute("query-status", json!({}))?;
        Ok(info
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }
}
