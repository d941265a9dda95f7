//! The agent's event loop: one thread (libcontainer forks from it, so no other thread may hold
//! a lock at that moment), level-triggered epoll over the listeners, the control connections,
//! the stdio streams and the SIGCHLD wake-up.

use crate::container::{self, Container, ProcessIo, CONTAINERS_DIR};
use crate::relay::{Relay, Want};
use crate::rootfs::{Assembled, Layers};
use crate::{cgroup, net, sys};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use vmpod_protocol::frame::{decode, encode};
use vmpod_protocol::{
    AgentMessage, ContainerStats, CreateContainer, ErrorKind, ErrorReply, Event, ExecProcess,
    FrameDecoder, ProcessExit, Request, RequestBody, Response, ResponseBody, StdStream, StdioHello,
    StdioWiring, PROTOCOL_VERSION,
};

const CONTROL_LISTENER: u64 = 0;
const STDIO_LISTENER: u64 = 1;
const SIGCHLD: u64 = 2;
/// A host that stops reading its control connection loses it rather than the agent's memory.
const MAX_PENDING_OUTPUT: usize = 16 << 20;

type ProcKey = (String, Option<String>);

enum Token {
    Control(u64),
    Pending(u64),
    RelaySrc(u64),
    RelayDst(u64),
}

struct Control {
    fd: OwnedFd,
    decoder: FrameDecoder,
    out: Vec<u8>,
    writing: bool,
    hello: bool,
}

struct Pending {
    fd: OwnedFd,
    decoder: FrameDecoder,
}

struct RelayEntry {
    relay: Relay,
    src_token: u64,
    dst_token: u64,
    src_reg: bool,
    dst_reg: bool,
    owner: ProcKey,
}

struct Proc {
    pid: i32,
    stdin: Option<u64>,
    stdout: Option<u64>,
    stderr: Option<u64>,
    pty: Option<OwnedFd>,
    exit: Option<ProcessExit>,
    waiters: Vec<(u64, u64)>,
    reported: bool,
}

struct ContainerEntry {
    container: Container,
    rootfs: Option<Assembled>,
    oom_kills: u64,
    started: bool,
}

pub struct Server {
    epoll: Epoll,
    control_listener: OwnedFd,
    stdio_listener: OwnedFd,
    sigchld: OwnedFd,
    next: u64,
    tokens: HashMap<u64, Token>,
    controls: HashMap<u64, Control>,
    pending: HashMap<u64, Pending>,
    relays: HashMap<u64, RelayEntry>,
    procs: HashMap<ProcKey, Proc>,
    pids: HashMap<i32, ProcKey>,
    containers: HashMap<String, ContainerEntry>,
    layers: Layers,
    shutdown: bool,
}

type Reply = Result<ResponseBody, ErrorReply>;

fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        kind,
        message: message.into(),
    }
}

fn failed(e: impl std::fmt::Display) -> ErrorReply {
    err(ErrorKind::Failed, e.to_string())
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn proc_name(key: &ProcKey) -> String {
    match &key.1 {
        Some(exec) => format!("process {exec} of container {}", key.0),
        None => format!("container {}", key.0),
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// What the agent keeps of a process's stdio while libcontainer gets the other ends.
struct Kept {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    /// Output nobody asked for: read and dropped.
    discard: Vec<OwnedFd>,
    console: Option<std::os::unix::net::UnixListener>,
}

/// The process's ends of its stdio (pipes, or a console socket) and ours. Streams nobody asked
/// for are pipes too, not /dev/null: an empty stdin, output the agent drains and drops. (A
/// /dev/null opened by the agent reached the container as a read-only /dev/null on fds 0
/// and 1, and writes to stdout failed.)
fn plan_io(
    wiring: StdioWiring,
    terminal: bool,
    dir: &std::path::Path,
    name: &str,
) -> io::Result<(ProcessIo, Kept)> {
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
        let path = dir.join(format!("console-{name}.sock"));
        let _ = std::fs::remove_file(&path);
        kept.console = Some(std::os::unix::net::UnixListener::bind(&path)?);
        io.console_socket = Some(path);
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
fn receive_pty(listener: &std::os::unix::net::UnixListener) -> io::Result<OwnedFd> {
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
    pub fn new(control_listener: OwnedFd, stdio_listener: OwnedFd) -> io::Result<Server> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let sigchld = sys::sigchld_eventfd()?;
        epoll.add(
            &control_listener,
            EpollEvent::new(EpollFlags::EPOLLIN, CONTROL_LISTENER),
        )?;
        epoll.add(
            &stdio_listener,
            EpollEvent::new(EpollFlags::EPOLLIN, STDIO_LISTENER),
        )?;
        epoll.add(&sigchld, EpollEvent::new(EpollFlags::EPOLLIN, SIGCHLD))?;
        Ok(Server {
            epoll,
            control_listener,
            stdio_listener,
            sigchld,
            next: 16,
            tokens: HashMap::new(),
            controls: HashMap::new(),
            pending: HashMap::new(),
            relays: HashMap::new(),
            procs: HashMap::new(),
            pids: HashMap::new(),
            containers: HashMap::new(),
            layers: Layers::new("/run/vmpod/layers"),
            shutdown: false,
        })
    }

    fn token(&mut self, t: Token) -> u64 {
        self.next += 1;
        self.tokens.insert(self.next, t);
        self.next
    }

    /// Serves until a Shutdown request has been answered.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = vec![EpollEvent::empty(); 64];
        while !self.shutdown {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            for ev in &events[..n] {
                self.dispatch(ev.data(), ev.events());
            }
        }
        self.drain_before_power_off();
        Ok(())
    }

    /// Bytes written to a vsock socket are still in the guest kernel, and a reset loses them:
    /// the agent waits until every host client has read its reply and closed its connection
    /// (what the protocol asks after Shutdown), two seconds at most.
    fn drain_before_power_off(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut events = vec![EpollEvent::empty(); 16];
        while !self.controls.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                eprintln!("vmpod-agent: a host client kept its connection open after Shutdown");
                return;
            }
            let timeout = EpollTimeout::try_from(left).unwrap_or(EpollTimeout::ZERO);
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(_) => return,
            };
            for ev in &events[..n] {
                if let Some(Token::Control(id)) = self.tokens.get(&ev.data()) {
                    let id = *id;
                    if ev.events().contains(EpollFlags::EPOLLOUT) {
                        self.flush(id);
                    }
                    let mut buf = [0u8; 4096];
                    let closed = match self.controls.get(&id) {
                        Some(c) => matches!(
                            nix::unistd::read(c.fd.as_raw_fd(), &mut buf),
                            Ok(0) | Err(nix::Error::ECONNRESET)
                        ),
                        None => false,
                    };
                    if closed {
                        self.close_control(id);
                    }
                }
            }
        }
    }

    fn dispatch(&mut self, token: u64, events: EpollFlags) {
        match token {
            CONTROL_LISTENER => self.accept(true),
            STDIO_LISTENER => self.accept(false),
            SIGCHLD => {
                sys::drain_eventfd(&self.sigchld);
                self.reap();
            }
            _ => match self.tokens.get(&token) {
                Some(Token::Control(id)) => {
                    let id = *id;
                    if events.contains(EpollFlags::EPOLLOUT) {
                        self.flush(id);
                    }
                    if events.intersects(
                        EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR,
                    ) {
                        self.read_control(id);
                    }
                }
                Some(Token::Pending(id)) => {
                    let id = *id;
                    self.read_pending(id);
                }
                Some(Token::RelaySrc(id)) => {
                    let id = *id;
                    if let Some(e) = self.relays.get_mut(&id) {
                        e.relay.on_readable();
                    }
                    self.sync_relay(id);
                }
                Some(Token::RelayDst(id)) => {
                    let id = *id;
                    if let Some(e) = self.relays.get_mut(&id) {
                        e.relay.on_writable();
                    }
                    self.sync_relay(id);
                }
                None => {}
            },
        }
    }

    fn accept(&mut self, control: bool) {
        loop {
            let listener = if control {
                &self.control_listener
            } else {
                &self.stdio_listener
            };
            let fd = match sys::accept(listener) {
                Ok(Some(fd)) => fd,
                Ok(None) => return,
                Err(e) => {
                    eprintln!("vmpod-agent: accept: {e}");
                    return;
                }
            };
            let token = if control {
                self.next += 1;
                let id = self.next;
                self.controls.insert(
                    id,
                    Control {
                        fd,
                        decoder: FrameDecoder::new(),
                        out: Vec::new(),
                        writing: false,
                        hello: false,
                    },
                );
                self.tokens.insert(id, Token::Control(id));
                id
            } else {
                self.next += 1;
                let id = self.next;
                self.pending.insert(
                    id,
                    Pending {
                        fd,
                        decoder: FrameDecoder::new(),
                    },
                );
                self.tokens.insert(id, Token::Pending(id));
                id
            };
            let fd = if control {
                self.controls[&token].fd.as_fd()
            } else {
                self.pending[&token].fd.as_fd()
            };
            if let Err(e) = self
                .epoll
                .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
            {
                eprintln!("vmpod-agent: watch a new connection: {e}");
                self.controls.remove(&token);
                self.pending.remove(&token);
                self.tokens.remove(&token);
            }
        }
    }

    // ---- control connections ----

    fn close_control(&mut self, id: u64) {
        if let Some(c) = self.controls.remove(&id) {
            let _ = self.epoll.delete(&c.fd);
        }
        self.tokens.remove(&id);
    }

    fn read_control(&mut self, id: u64) {
        let mut buf = [0u8; 64 << 10];
        let Some(c) = self.controls.get_mut(&id) else {
            return;
        };
        let n = match nix::unistd::read(c.fd.as_raw_fd(), &mut buf) {
            Ok(0) => {
                if c.decoder.pending() > 0 {
                    eprintln!("vmpod-agent: control connection closed in the middle of a frame");
                }
                return self.close_control(id);
            }
            Ok(n) => n,
            Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => return,
            Err(_) => return self.close_control(id),
        };
        c.decoder.push(&buf[..n]);
        loop {
            let Some(c) = self.controls.get_mut(&id) else {
                return;
            };
            match c.decoder.next_frame() {
                Ok(Some(frame)) => self.handle_frame(id, &frame),
                Ok(None) => return,
                Err(e) => {
                    // The length is wrong: nothing after it can be framed. Say why and hang up.
                    self.respond(id, 0, Err(err(ErrorKind::BadRequest, e.to_string())));
                    self.flush(id);
                    return self.close_control(id);
                }
            }
        }
    }

    fn handle_frame(&mut self, conn: u64, frame: &[u8]) {
        let request: Request = match decode(frame) {
            Ok(r) => r,
            Err(e) => {
                // Answer with the id if one can be read, so the caller's request fails fast.
                let id = serde_json::from_slice::<serde_json::Value>(frame)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|i| i.as_u64()))
                    .unwrap_or(0);
                return self.respond(conn, id, Err(err(ErrorKind::BadRequest, e.to_string())));
            }
        };
        let hello = self.controls.get(&conn).map(|c| c.hello).unwrap_or(false);
        if !hello {
            let reply = match request.body {
                RequestBody::Hello { version } if version == PROTOCOL_VERSION => {
                    if let Some(c) = self.controls.get_mut(&conn) {
                        c.hello = true;
                    }
                    Ok(ResponseBody::Hello {
                        version: PROTOCOL_VERSION,
                        agent_version: env!("CARGO_PKG_VERSION").to_string(),
                    })
                }
                RequestBody::Hello { version } => Err(err(
                    ErrorKind::VersionMismatch,
                    format!("host speaks protocol {version}, agent {PROTOCOL_VERSION}"),
                )),
                _ => Err(err(
                    ErrorKind::BadRequest,
                    "the first request must be hello",
                )),
            };
            return self.respond(conn, request.id, reply);
        }
        let id = request.id;
        if let RequestBody::WaitProcess {
            container_id,
            exec_id,
        } = &request.body
        {
            let key = (container_id.clone(), exec_id.clone());
            return match self.procs.get_mut(&key) {
                Some(p) if p.reported => {
                    let exit = p.exit.clone();
                    self.respond(
                        conn,
                        id,
                        exit.map(ResponseBody::Exited)
                            .ok_or_else(|| failed("no exit status")),
                    )
                }
                Some(p) => p.waiters.push((conn, id)),
                None => self.respond(
                    conn,
                    id,
                    Err(err(ErrorKind::NotFound, format!("no {}", proc_name(&key)))),
                ),
            };
        }
        crate::debug!("request {id}: {:?}", std::mem::discriminant(&request.body));
        let reply = self.handle(request.body);
        self.respond(conn, id, reply);
    }

    fn send(&mut self, conn: u64, message: &AgentMessage) {
        let bytes = match encode(message) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("vmpod-agent: encode a reply: {e}");
                return;
            }
        };
        let Some(c) = self.controls.get_mut(&conn) else {
            return;
        };
        c.out.extend_from_slice(&bytes);
        if c.out.len() > MAX_PENDING_OUTPUT {
            eprintln!("vmpod-agent: the host stopped reading; dropping its connection");
            return self.close_control(conn);
        }
        self.flush(conn);
    }

    fn respond(&mut self, conn: u64, id: u64, result: Reply) {
        self.send(conn, &AgentMessage::Response(Response { id, result }));
    }

    fn broadcast(&mut self, event: Event) {
        let conns: Vec<u64> = self
            .controls
            .iter()
            .filter(|(_, c)| c.hello)
            .map(|(k, _)| *k)
            .collect();
        for conn in conns {
            self.send(conn, &AgentMessage::Event(event.clone()));
        }
    }

    fn flush(&mut self, conn: u64) {
        let Some(c) = self.controls.get_mut(&conn) else {
            return;
        };
        while !c.out.is_empty() {
            match nix::unistd::write(&c.fd, &c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(nix::Error::EAGAIN) => break,
                Err(nix::Error::EINTR) => {}
                Err(_) => return self.close_control(conn),
            }
        }
        let want_write = !c.out.is_empty();
        if want_write != c.writing {
            c.writing = want_write;
            let flags = if want_write {
                EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
            } else {
                EpollFlags::EPOLLIN
            };
            let mut ev = EpollEvent::new(flags, conn);
            let _ = self.epoll.modify(&c.fd, &mut ev);
        }
    }

    // ---- stdio streams ----

    fn close_pending(&mut self, id: u64) -> Option<OwnedFd> {
        let p = self.pending.remove(&id)?;
        let _ = self.epoll.delete(&p.fd);
        self.tokens.remove(&id);
        Some(p.fd)
    }

    fn read_pending(&mut self, id: u64) {
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
                    eprintln!("vmpod-agent: stdio stream refused: {e}");
                    self.close_pending(id);
                    return;
                }
            }
        };
        let Some(fd) = self.close_pending(id) else {
            return;
        };
        let hello: StdioHello = match decode(&frame) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("vmpod-agent: stdio stream refused: {e}");
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

    fn attach_stream(&mut self, hello: &StdioHello, fd: OwnedFd) -> Result<(), String> {
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

    fn new_relay(
        &mut self,
        owner: &ProcKey,
        src: Option<OwnedFd>,
        dst: Option<OwnedFd>,
    ) -> io::Result<u64> {
        self.add_relay(owner, Relay::new(src, dst))
    }

    fn add_relay(&mut self, owner: &ProcKey, relay: Relay) -> io::Result<u64> {
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
                owner: owner.clone(),
            },
        );
        Ok(id)
    }

    /// Makes epoll watch what the relay waits for, closes what it is done with, and finishes
    /// the process's report when its output is all delivered.
    fn sync_relay(&mut self, id: u64) {
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
                self.maybe_report(&e.owner);
            }
        }
    }

    // ---- processes ----

    fn add_proc(&mut self, key: &ProcKey, pid: i32, mut plan: Kept) -> io::Result<()> {
        let mut proc = Proc {
            pid,
            stdin: None,
            stdout: None,
            stderr: None,
            pty: None,
            exit: None,
            waiters: Vec::new(),
            reported: false,
        };
        if let Some(console) = plan.console.take() {
            let master = receive_pty(&console)?;
            let _ = std::fs::remove_file(
                console
                    .local_addr()?
                    .as_pathname()
                    .unwrap_or(std::path::Path::new("")),
            );
            let out = master.try_clone()?;
            let input = master.try_clone()?;
            proc.stdout = Some(self.new_relay(key, Some(out), None)?);
            proc.stdin = Some(self.new_relay(key, None, Some(input))?);
            proc.pty = Some(master);
        } else {
            if let Some(w) = plan.stdin.take() {
                proc.stdin = Some(self.new_relay(key, None, Some(w))?);
            }
            if let Some(r) = plan.stdout.take() {
                proc.stdout = Some(self.new_relay(key, Some(r), None)?);
            }
            if let Some(r) = plan.stderr.take() {
                proc.stderr = Some(self.new_relay(key, Some(r), None)?);
            }
            for r in plan.discard.drain(..) {
                let id = self.add_relay(key, Relay::discard(r))?;
                self.sync_relay(id);
                if proc.stdout.is_none() {
                    proc.stdout = Some(id);
                } else {
                    proc.stderr = Some(id);
                }
            }
        }
        self.pids.insert(pid, key.clone());
        self.procs.insert(key.clone(), proc);
        Ok(())
    }

    fn reap(&mut self) {
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let (pid, code, signal) = match status {
                WaitStatus::Exited(pid, code) => (pid, code, None),
                WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as i32, Some(sig as i32)),
                _ => continue,
            };
            let Some(key) = self.pids.remove(&pid.as_raw()) else {
                crate::debug!("reaped pid {pid} ({status:?})");
                continue;
            };
            crate::debug!("{} exited: {status:?}", proc_name(&key));
            let mut oom_killed = false;
            if let Some(c) = self.containers.get_mut(&key.0) {
                let kills = cgroup::oom_kills(&c.container.cgroup);
                crate::debug!(
                    "{}: {kills} OOM kills in {}",
                    proc_name(&key),
                    c.container.cgroup.display()
                );
                if kills > c.oom_kills {
                    c.oom_kills = kills;
                    oom_killed = signal == Some(libc::SIGKILL);
                    let container_id = key.0.clone();
                    self.broadcast(Event::Oom { container_id });
                }
            }
            if let Some(p) = self.procs.get_mut(&key) {
                p.exit = Some(ProcessExit {
                    container_id: key.0.clone(),
                    exec_id: key.1.clone(),
                    status: code,
                    signal,
                    oom_killed,
                    exited_at_unix_nanos: now_nanos(),
                });
                // Nobody reads the stdin of a dead process.
                if let Some(stdin) = p.stdin {
                    if let Some(e) = self.relays.get_mut(&stdin) {
                        e.relay.close_src();
                    }
                    self.sync_relay(stdin);
                }
            }
            self.maybe_report(&key);
        }
    }

    /// A process is reported (event and waiters) once it has exited and its stdout and stderr
    /// have reached the host: a host that sees the exit has every byte written before it.
    fn maybe_report(&mut self, key: &ProcKey) {
        let Some(p) = self.procs.get_mut(key) else {
            return;
        };
        if p.reported || p.exit.is_none() {
            return;
        }
        let busy = |r: Option<u64>| r.is_some_and(|id| self.relays.contains_key(&id));
        if busy(p.stdout) || busy(p.stderr) {
            crate::debug!("{} exited; its output is still flowing", proc_name(key));
            return;
        }
        p.reported = true;
        p.pty = None;
        let exit = p.exit.clone().expect("checked above");
        let waiters = std::mem::take(&mut p.waiters);
        for (conn, id) in waiters {
            self.respond(conn, id, Ok(ResponseBody::Exited(exit.clone())));
        }
        self.broadcast(Event::ProcessExited(exit));
    }

    // ---- requests ----

    fn handle(&mut self, body: RequestBody) -> Reply {
        match body {
            RequestBody::Hello { .. } => Err(err(ErrorKind::BadRequest, "hello was already said")),
            RequestBody::CreateContainer(c) => self.create(c),
            RequestBody::StartContainer { container_id } => self.start(&container_id),
            RequestBody::ExecProcess(e) => self.exec(e),
            RequestBody::SignalProcess {
                container_id,
                exec_id,
                signal,
                all,
            } => self.signal(&container_id, exec_id, signal, all),
            RequestBody::WaitProcess { .. } => Err(failed("handled by the caller")),
            RequestBody::ResizePty {
                container_id,
                exec_id,
                rows,
                cols,
            } => {
                let key = (container_id, exec_id);
                let p = self
                    .procs
                    .get(&key)
                    .ok_or_else(|| err(ErrorKind::NotFound, format!("no {}", proc_name(&key))))?;
                let pty = p.pty.as_ref().ok_or_else(|| {
                    err(
                        ErrorKind::InvalidState,
                        format!("{} has no terminal", proc_name(&key)),
                    )
                })?;
                let size = libc::winsize {
                    ws_row: rows,
                    ws_col: cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: TIOCSWINSZ reads one winsize.
                if unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
                    return Err(failed(io::Error::last_os_error()));
                }
                Ok(ResponseBody::Done)
            }
            RequestBody::CloseStdin {
                container_id,
                exec_id,
            } => {
                let key = (container_id, exec_id);
                let p = self
                    .procs
                    .get(&key)
                    .ok_or_else(|| err(ErrorKind::NotFound, format!("no {}", proc_name(&key))))?;
                if let Some(stdin) = p.stdin {
                    if let Some(e) = self.relays.get_mut(&stdin) {
                        e.relay.close_src();
                    }
                    self.sync_relay(stdin);
                }
                Ok(ResponseBody::Done)
            }
            RequestBody::PauseContainer { container_id } => {
                self.entry(&container_id)?
                    .container
                    .pause()
                    .map_err(failed)?;
                Ok(ResponseBody::Done)
            }
            RequestBody::ResumeContainer { container_id } => {
                self.entry(&container_id)?
                    .container
                    .resume()
                    .map_err(failed)?;
                Ok(ResponseBody::Done)
            }
            RequestBody::Stats { container_id } => {
                let c = self.entry(&container_id)?;
                let stats: ContainerStats = cgroup::stats(&c.container.cgroup);
                Ok(ResponseBody::Stats(stats))
            }
            RequestBody::UpdateResources {
                container_id,
                resources,
            } => {
                let c = self.entry(&container_id)?;
                cgroup::update(&c.container.cgroup, &resources)
                    .map_err(|e| failed(crate::chain(&e)))?;
                Ok(ResponseBody::Done)
            }
            RequestBody::RemoveContainer { container_id } => self.remove(&container_id),
            RequestBody::SetupNetwork(config) => {
                net::validate(&config).map_err(|e| err(ErrorKind::BadRequest, e.to_string()))?;
                net::setup(&config).map_err(|e| failed(crate::chain(&e)))?;
                Ok(ResponseBody::Done)
            }
            RequestBody::SetTime { unix_secs, nanos } => {
                sys::set_time(unix_secs, nanos)
                    .map_err(|e| failed(format!("set the clock: {e}")))?;
                Ok(ResponseBody::Done)
            }
            RequestBody::AddEntropy { bytes } => {
                sys::add_entropy(&bytes).map_err(|e| failed(format!("add entropy: {e}")))?;
                Ok(ResponseBody::Done)
            }
            RequestBody::Shutdown => {
                let ids: Vec<String> = self.containers.keys().cloned().collect();
                for id in ids {
                    let _ = self.remove(&id);
                }
                self.shutdown = true;
                Ok(ResponseBody::Done)
            }
        }
    }

    fn entry(&mut self, id: &str) -> Result<&mut ContainerEntry, ErrorReply> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no container {id}")))
    }

    fn create(&mut self, c: CreateContainer) -> Reply {
        container::validate_id(&c.container_id)
            .map_err(|e| err(ErrorKind::BadRequest, e.to_string()))?;
        if self.containers.contains_key(&c.container_id) {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!("container {} exists", c.container_id),
            ));
        }
        let dir = PathBuf::from(CONTAINERS_DIR).join(&c.container_id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| failed(format!("create {}: {e}", dir.display())))?;
        let result = self.create_in(&c, &dir);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    fn create_in(&mut self, c: &CreateContainer, dir: &std::path::Path) -> Reply {
        let terminal = c
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let assembled = self
            .layers
            .assemble(&c.rootfs, dir)
            .map_err(|e| err(ErrorKind::BadRequest, crate::chain(&e)))?;
        let (io, kept) = match plan_io(c.stdio, terminal, dir, "init") {
            Ok(p) => p,
            Err(e) => {
                self.layers.release(assembled);
                return Err(failed(format!("stdio: {e}")));
            }
        };
        let rootfs = assembled.rootfs.clone();
        let (container, pid) =
            match Container::create(&c.container_id, (*c.spec).clone(), dir, &rootfs, io) {
                Ok(x) => x,
                Err(e) => {
                    self.layers.release(assembled);
                    return Err(failed(crate::chain(&e)));
                }
            };
        let oom_kills = cgroup::oom_kills(&container.cgroup);
        self.containers.insert(
            c.container_id.clone(),
            ContainerEntry {
                container,
                rootfs: Some(assembled),
                oom_kills,
                started: false,
            },
        );
        let key = (c.container_id.clone(), None);
        if let Err(e) = self.add_proc(&key, pid.as_raw(), kept) {
            let _ = self.remove(&c.container_id);
            return Err(failed(format!("stdio: {e}")));
        }
        Ok(ResponseBody::Pid(pid.as_raw()))
    }

    fn start(&mut self, id: &str) -> Reply {
        let entry = self.entry(id)?;
        if entry.started {
            return Err(err(
                ErrorKind::InvalidState,
                format!("container {id} was already started"),
            ));
        }
        entry.container.start().map_err(failed)?;
        entry.started = true;
        let pid = self
            .procs
            .get(&(id.to_string(), None))
            .map(|p| p.pid)
            .unwrap_or(0);
        Ok(ResponseBody::Pid(pid))
    }

    fn exec(&mut self, e: ExecProcess) -> Reply {
        let key = (e.container_id.clone(), Some(e.exec_id.clone()));
        container::validate_id(&e.exec_id)
            .map_err(|x| err(ErrorKind::BadRequest, format!("exec id: {x}")))?;
        if self.procs.get(&key).is_some_and(|p| !p.reported) {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!("{} exists", proc_name(&key)),
            ));
        }
        let entry = self.entry(&e.container_id)?;
        if !entry.started {
            return Err(err(
                ErrorKind::InvalidState,
                format!("container {} is not running", e.container_id),
            ));
        }
        let dir = entry.container.dir.clone();
        let terminal = e.process.terminal().unwrap_or(false);
        let (io, kept) = plan_io(e.stdio, terminal, &dir, &e.exec_id)
            .map_err(|x| failed(format!("stdio: {x}")))?;
        let entry = self.entry(&e.container_id)?;
        let pid = entry
            .container
            .exec(&e.exec_id, &e.process, io)
            .map_err(failed)?;
        self.procs.remove(&key);
        self.add_proc(&key, pid.as_raw(), kept)
            .map_err(|x| failed(format!("stdio: {x}")))?;
        Ok(ResponseBody::Pid(pid.as_raw()))
    }

    fn signal(&mut self, id: &str, exec_id: Option<String>, signal: i32, all: bool) -> Reply {
        let entry = self.entry(id)?;
        if all {
            entry.container.kill_all(signal).map_err(failed)?;
            return Ok(ResponseBody::Done);
        }
        let key = (id.to_string(), exec_id);
        let p = self
            .procs
            .get(&key)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no {}", proc_name(&key))))?;
        if p.exit.is_some() {
            return Err(err(
                ErrorKind::InvalidState,
                format!("{} has exited", proc_name(&key)),
            ));
        }
        let sig = nix::sys::signal::Signal::try_from(signal)
            .map_err(|_| err(ErrorKind::BadRequest, format!("{signal} is not a signal")))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig)
            .map_err(|e| failed(format!("kill: {e}")))?;
        Ok(ResponseBody::Done)
    }

    fn remove(&mut self, id: &str) -> Reply {
        let mut entry = self
            .containers
            .remove(id)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no container {id}")))?;
        let deleted = entry.container.delete();
        // Its processes are gone or going: drop their records and streams.
        let keys: Vec<ProcKey> = self.procs.keys().filter(|k| k.0 == id).cloned().collect();
        for key in keys {
            if let Some(p) = self.procs.remove(&key) {
                self.pids.remove(&p.pid);
                for relay in [p.stdin, p.stdout, p.stderr].into_iter().flatten() {
                    if let Some(e) = self.relays.remove(&relay) {
                        for fd in [e.relay.src(), e.relay.dst()].into_iter().flatten() {
                            let _ = self.epoll.delete(fd);
                        }
                        self.tokens.remove(&e.src_token);
                        self.tokens.remove(&e.dst_token);
                    }
                }
                for (conn, rid) in p.waiters {
                    self.respond(
                        conn,
                        rid,
                        Err(err(
                            ErrorKind::NotFound,
                            format!("container {id} was removed"),
                        )),
                    );
                }
            }
        }
        if let Some(rootfs) = entry.rootfs.take() {
            self.layers.release(rootfs);
        }
        let _ = std::fs::remove_dir_all(&entry.container.dir);
        deleted.map_err(failed)?;
        Ok(ResponseBody::Done)
    }
}
