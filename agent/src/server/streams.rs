//! Stdio streams: the pipes or pty a process gets, the host connections that attach to them,
//! and the relays between the two.

use super::*;

pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// What the agent keeps of a process's stdio while libcontainer gets the other ends.
pub(super) struct Kept {
    pub(super) stdin: Option<OwnedFd>,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
    /// Output nobody asked for: read and dropped.
    pub(super) discard: Vec<OwnedFd>,
    pub(super) console: Option<ConsoleSocket>,
}

/// Where console sockets are made: a socket's path must fit in 108 bytes, which a path under
/// a container's directory with CRI's 64-character exec ids does not.
const CONSOLE_DIR: &str = "/run/vmpod/tty";

/// A console socket, whose file goes with it.
pub(super) struct ConsoleSocket {
    pub(super) listener: std::os::unix::net::UnixListener,
    path: std::path::PathBuf,
}

impl ConsoleSocket {
    fn bind() -> io::Result<ConsoleSocket> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        std::fs::create_dir_all(CONSOLE_DIR)?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::path::Path::new(CONSOLE_DIR).join(format!("{n}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        Ok(ConsoleSocket { listener, path })
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The process's ends of its stdio (pipes, or a console socket) and ours. Streams nobody asked
/// for are pipes too, not /dev/null: an empty stdin, output the agent drains and drops. (A
/// /dev/null opened by the agent reached the container as a read-only /dev/null on fds 0
/// and 1, and writes to stdout failed.)
pub(super) fn plan_io(wiring: StdioWiring, terminal: bool) -> io::Result<(ProcessIo, Kept)> {
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let mut kept = Kept {
        stdin: None,
        stdout: None,
        stderr: None,
        discard: Vec::new(),
        console: None,
    };
    let mut io = ProcessIo {
        stdin: stdin_r,
        stdout: stdout_w,
        stderr: stderr_w,
        console_socket: None,
    };
    if terminal {
        let console = ConsoleSocket::bind()?;
        io.console_socket = Some(console.path.clone());
        kept.console = Some(console);
        return Ok((io, kept));
    }
    // A stdin nobody feeds is at its end from the start.
    if wiring.stdin {
        kept.stdin = Some(stdin_w);
    }
    if wiring.stdout {
        kept.stdout = Some(stdout_r);
    } else {
        kept.discard.push(stdout_r);
    }
    if wiring.stderr {
        kept.stderr = Some(stderr_r);
    } else {
        kept.discard.push(stderr_r);
    }
    Ok((io, kept))
}

/// The pty master libcontainer sends over the console socket once the process has its tty.
pub(super) fn receive_pty(listener: &std::os::unix::net::UnixListener) -> io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    listener.set_nonblocking(true)?;
    let (stream, _) = listener.accept().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("the container never connected its console: {e}"),
        )
    })?;
    let mut buf = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "the console socket carried no pty",
    ))
}

impl Server {
    pub(super) fn close_pending(&mut self, id: u64) -> Option<OwnedFd> {
        let p = self.pending.remove(&id)?;
        let _ = self.epoll.delete(&p.fd);
        self.tokens.remove(&id);
        Some(p.fd)
    }

    pub(super) fn read_pending(&mut self, id: u64) {
        let Some(listener) = self.pending.get(&id).map(|p| p.listener) else {
            return;
        };
        let what = if listener == Listener::Forward {
            "published port connection"
        } else {
            "stdio stream"
        };
        let frame = loop {
            let Some(p) = self.pending.get_mut(&id) else {
                return;
            };
            // Never read past the hello: what follows belongs to the process.
            let mut buf = vec![0u8; p.decoder.wanted()];
            match nix::unistd::read(p.fd.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    self.close_pending(id);
                    return;
                }
                Ok(n) => p.decoder.push(&buf[..n]),
                Err(nix::Error::EAGAIN) => return,
                Err(nix::Error::EINTR) => continue,
                Err(_) => {
                    self.close_pending(id);
                    return;
                }
            }
            match p.decoder.next_frame() {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(e) => {
                    eprintln!("vmpod-agent: {what} refused: {}", crate::chain(&e));
                    self.close_pending(id);
                    return;
                }
            }
        };
        let Some(fd) = self.close_pending(id) else {
            return;
        };
        if listener == Listener::Forward {
            return match decode::<ForwardHello>(&frame) {
                Ok(hello) => self.open_forward(hello, fd),
                Err(e) => eprintln!("vmpod-agent: {what} refused: {}", crate::chain(&e)),
            };
        }
        let hello: StdioHello = match decode(&frame) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("vmpod-agent: stdio stream refused: {}", crate::chain(&e));
                return;
            }
        };
        if let Err(why) = self.attach_stream(&hello, fd) {
            eprintln!(
                "vmpod-agent: stdio stream {:?} for {} refused: {why}",
                hello.stream,
                proc_name(&(hello.container_id.clone(), hello.exec_id.clone()))
            );
        }
    }

    pub(super) fn attach_stream(&mut self, hello: &StdioHello, fd: OwnedFd) -> Result<(), String> {
        let key = (hello.container_id.clone(), hello.exec_id.clone());
        let proc = self.procs.get(&key).ok_or("no such process")?;
        let relay = match hello.stream {
            StdStream::Stdin => proc.stdin,
            StdStream::Stdout => proc.stdout,
            StdStream::Stderr => proc.stderr,
        }
        .ok_or("the stream was not asked for")?;
        let entry = self.relays.get_mut(&relay).ok_or("the stream is over")?;
        match hello.stream {
            StdStream::Stdin if !entry.relay.has_src() => entry.relay.attach_src(fd),
            StdStream::Stdout | StdStream::Stderr if !entry.relay.has_dst() => {
                entry.relay.attach_dst(fd)
            }
            _ => return Err("already attached".into()),
        }
        self.sync_relay(relay);
        Ok(())
    }

    pub(super) fn new_relay(
        &mut self,
        owner: &ProcKey,
        src: Option<OwnedFd>,
        dst: Option<OwnedFd>,
    ) -> io::Result<u64> {
        self.add_relay(Some(owner), Relay::new(src, dst))
    }

    pub(super) fn add_relay(&mut self, owner: Option<&ProcKey>, relay: Relay) -> io::Result<u64> {
        for fd in relay.src().iter().chain(relay.dst().iter()) {
            sys::set_nonblocking(fd.as_raw_fd())?;
        }
        self.next += 1;
        let id = self.next;
        let src_token = self.token(Token::RelaySrc(id));
        let dst_token = self.token(Token::RelayDst(id));
        self.relays.insert(
            id,
            RelayEntry {
                relay,
                src_token,
                dst_token,
                src_reg: false,
                dst_reg: false,
                owner: owner.cloned(),
            },
        );
        Ok(id)
    }

    /// Makes epoll watch what the relay waits for, closes what it is done with, and finishes
    /// the process's report when its output is all delivered.
    pub(super) fn sync_relay(&mut self, id: u64) {
        let Some(e) = self.relays.get_mut(&id) else {
            return;
        };
        let want = e.relay.want();
        let (want_src, want_dst) = (want == Want::Read, want == Want::Write);
        if e.src_reg && !want_src {
            if let Some(fd) = e.relay.src() {
                let _ = self.epoll.delete(fd);
            }
            e.src_reg = false;
        }
        if e.dst_reg && !want_dst {
            if let Some(fd) = e.relay.dst() {
                let _ = self.epoll.delete(fd);
            }
            e.dst_reg = false;
        }
        if want_src && !e.src_reg {
            if let Some(fd) = e.relay.src() {
                e.src_reg = self
                    .epoll
                    .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, e.src_token))
                    .is_ok();
            }
        }
        if want_dst && !e.dst_reg {
            if let Some(fd) = e.relay.dst() {
                e.dst_reg = self
                    .epoll
                    .add(fd, EpollEvent::new(EpollFlags::EPOLLOUT, e.dst_token))
                    .is_ok();
            }
        }
        // Closed fds leave epoll before they are closed (see relay.rs).
        let (src, dst) = e.relay.release();
        for (fd, reg) in [(src, &mut e.src_reg), (dst, &mut e.dst_reg)] {
            if let Some(fd) = fd {
                if *reg {
                    let _ = self.epoll.delete(&fd);
                    *reg = false;
                }
            }
        }
        if e.relay.is_done() {
            let e = self.relays.remove(&id);
            if let Some(e) = e {
                self.tokens.remove(&e.src_token);
                self.tokens.remove(&e.dst_token);
                if let Some(owner) = &e.owner {
                    self.maybe_report(owner);
                }
            }
        }
    }
}
