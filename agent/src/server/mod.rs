//! The agent's event loop: one thread (libcontainer forks from it, so no other thread may hold
//! a lock at that moment), level-triggered epoll over the listeners, the control connections,
//! the stdio streams, published ports' connections, the SIGCHLD wake-up and, in a VM whose
//! agent channel is a serial port, that port and its streams (crate::serial).

use crate::container::{self, Container, ProcessIo, CONTAINERS_DIR};
use crate::pod::{self, PodMounts};
use crate::relay::{Relay, Want};
use crate::rootfs::{Assembled, Layers};
use crate::serial::{self, SerialBridge};
use crate::shared::SharedFs;
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
    ForwardHello, FrameDecoder, ProcessExit, Request, RequestBody, Response, ResponseBody,
    StdStream, StdioHello, StdioWiring, PROTOCOL_VERSION,
};

const CONTROL_LISTENER: u64 = 0;
const STDIO_LISTENER: u64 = 1;
const SIGCHLD: u64 = 2;
const FORWARD_LISTENER: u64 = 3;
const _: () = assert!(
    serial::PORT_TOKEN == 4,
    "the serial port's token is its own"
);
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

/// Which listener accepted a connection: it decides what the connection's hello is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    Control,
    Stdio,
    Forward,
}

/// A connection whose one hello frame has not fully arrived yet.
struct Pending {
    fd: OwnedFd,
    decoder: FrameDecoder,
    listener: Listener,
}

struct RelayEntry {
    relay: Relay,
    src_token: u64,
    dst_token: u64,
    src_reg: bool,
    dst_reg: bool,
    /// The process whose stdio this is; none for a published port's connection.
    owner: Option<ProcKey>,
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
    forward_listener: Option<OwnedFd>,
    sigchld: OwnedFd,
    serial: Option<SerialBridge>,
    next: u64,
    tokens: HashMap<u64, Token>,
    controls: HashMap<u64, Control>,
    pending: HashMap<u64, Pending>,
    relays: HashMap<u64, RelayEntry>,
    procs: HashMap<ProcKey, Proc>,
    pids: HashMap<i32, ProcKey>,
    containers: HashMap<String, ContainerEntry>,
    layers: Layers,
    shared: SharedFs,
    pod: PodMounts,
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

mod forward;
mod processes;
mod requests;
mod streams;

use streams::Kept;

impl Server {
    pub fn new(
        control_listener: OwnedFd,
        stdio_listener: OwnedFd,
        forward_listener: Option<OwnedFd>,
        mut serial: Option<SerialBridge>,
    ) -> io::Result<Server> {
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
        if let Some(forward) = &forward_listener {
            epoll.add(
                forward,
                EpollEvent::new(EpollFlags::EPOLLIN, FORWARD_LISTENER),
            )?;
        }
        epoll.add(&sigchld, EpollEvent::new(EpollFlags::EPOLLIN, SIGCHLD))?;
        if let Some(bridge) = &mut serial {
            bridge.register(&epoll)?;
        }
        Ok(Server {
            epoll,
            control_listener,
            stdio_listener,
            forward_listener,
            sigchld,
            serial,
            next: 16,
            tokens: HashMap::new(),
            controls: HashMap::new(),
            pending: HashMap::new(),
            relays: HashMap::new(),
            procs: HashMap::new(),
            pids: HashMap::new(),
            containers: HashMap::new(),
            layers: Layers::new("/run/vmpod/layers"),
            shared: SharedFs::default(),
            pod: PodMounts::default(),
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
            let timeout = self.serial_timeout(None);
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            for ev in &events[..n] {
                self.dispatch(ev.data(), ev.events());
            }
            self.serial_tick();
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
            let timeout = self.serial_timeout(Some(left));
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(_) => return,
            };
            self.serial_tick();
            for ev in &events[..n] {
                // Over a serial port the replies and the host's closes travel through the
                // bridge, which must go on meanwhile.
                if serial::owns(ev.data()) {
                    self.dispatch(ev.data(), ev.events());
                } else if let Some(Token::Control(id)) = self.tokens.get(&ev.data()) {
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

    /// How long epoll may wait: at most `limit`, and no longer than the serial bridge allows.
    fn serial_timeout(&self, limit: Option<std::time::Duration>) -> EpollTimeout {
        let serial = self.serial.as_ref().and_then(|s| s.timeout());
        let wait = match (limit, serial) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match wait {
            // Rounded up, so a wait of a fraction of a millisecond does not spin.
            Some(d) => EpollTimeout::try_from(d + std::time::Duration::from_micros(999))
                .unwrap_or(EpollTimeout::ZERO),
            None => EpollTimeout::NONE,
        }
    }

    fn serial_tick(&mut self) {
        if let Some(bridge) = &mut self.serial {
            bridge.tick(&self.epoll);
        }
    }

    fn dispatch(&mut self, token: u64, events: EpollFlags) {
        if serial::owns(token) {
            if let Some(bridge) = &mut self.serial {
                bridge.handle(&self.epoll, token, events);
            }
            return;
        }
        match token {
            CONTROL_LISTENER => self.accept(Listener::Control),
            STDIO_LISTENER => self.accept(Listener::Stdio),
            FORWARD_LISTENER => self.accept(Listener::Forward),
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

    fn accept(&mut self, which: Listener) {
        loop {
            let listener = match which {
                Listener::Control => &self.control_listener,
                Listener::Stdio => &self.stdio_listener,
                Listener::Forward => match &self.forward_listener {
                    Some(l) => l,
                    None => return,
                },
            };
            let fd = match sys::accept(listener) {
                Ok(Some(fd)) => fd,
                Ok(None) => return,
                Err(e) => {
                    eprintln!("vmpod-agent: accept: {e}");
                    return;
                }
            };
            self.next += 1;
            let id = self.next;
            if which == Listener::Control {
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
            } else {
                self.pending.insert(
                    id,
                    Pending {
                        fd,
                        decoder: FrameDecoder::new(),
                        listener: which,
                    },
                );
                self.tokens.insert(id, Token::Pending(id));
            }
            let fd = match which {
                Listener::Control => self.controls[&id].fd.as_fd(),
                _ => self.pending[&id].fd.as_fd(),
            };
            if let Err(e) = self.epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, id)) {
                eprintln!("vmpod-agent: watch a new connection: {e}");
                self.controls.remove(&id);
                self.pending.remove(&id);
                self.tokens.remove(&id);
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
                return self.respond(conn, id, Err(err(ErrorKind::BadRequest, crate::chain(&e))));
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
}
