//! The agent's channel where the VM has a virtio-serial port named [`PORT_NAME`] instead of a
//! vsock device (a QEMU template: its vsock could not be saved). The server listens on three Unix
//! sockets of its own as usual, and [`SerialBridge`] joins each stream the host opens over the
//! port (vmpod_protocol::mux) to a connection to one of them, so the server cannot tell the
//! channels apart. The bridge runs in the server's epoll loop, never on a thread of its own:
//! libcontainer clones from the agent, and a lock another thread held at that moment would
//! stay held in the child.

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmpod_protocol::mux::{Event, Session, Side, MAX_PAYLOAD};
use vmpod_protocol::{AGENT_PORT, FORWARD_PORT, STDIO_PORT};

pub const PORT_NAME: &str = "vmpod.agent";
const CONTROL_SOCKET: &str = "/run/vmpod-agent/control.sock";
const STDIO_SOCKET: &str = "/run/vmpod-agent/stdio.sock";
const FORWARD_SOCKET: &str = "/run/vmpod-agent/forward.sock";

/// The epoll token of the serial port.
pub const PORT_TOKEN: u64 = 4;
/// Stream `id`'s local connection has token `STREAM_TOKENS + id`, above every token the
/// server hands out.
const STREAM_TOKENS: u64 = 1 << 40;
/// While no host is connected the port reads as ended at once, and epoll would report it
/// ready without end; the bridge then looks again this often for a new host (a restored
/// clone's).
const IDLE_POLL: Duration = Duration::from_millis(5);

/// Whether an epoll token is the bridge's.
pub fn owns(token: u64) -> bool {
    token == PORT_TOKEN || token >= STREAM_TOKENS
}

/// The device node of the agent's serial port, when the VM has one.
pub fn find_port() -> Option<PathBuf> {
    let ports = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    for port in ports.flatten() {
        let name = std::fs::read_to_string(port.path().join("name")).unwrap_or_default();
        if name.trim_end() == PORT_NAME {
            return Some(Path::new("/dev").join(port.file_name()));
        }
    }
    None
}

fn listener(path: &str) -> io::Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener.into())
}

/// The server's listeners, and the bridge from `port` to them.
pub fn listen(port: &Path) -> io::Result<(crate::Listeners, SerialBridge)> {
    std::fs::create_dir_all("/run/vmpod-agent")?;
    let control = listener(CONTROL_SOCKET)?;
    let stdio = listener(STDIO_SOCKET)?;
    let forward = listener(FORWARD_SOCKET)?;
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(port)?;
    Ok((
        (control, stdio, Some(forward)),
        SerialBridge::new(device.into()),
    ))
}

/// A new non-blocking connection to the server's listener for `port`. A listener in this
/// process with room in its backlog takes it at once; a full one refuses (never blocks).
fn connect_local(port: u32) -> io::Result<OwnedFd> {
    let path = match port {
        AGENT_PORT => CONTROL_SOCKET,
        STDIO_PORT => STDIO_SOCKET,
        FORWARD_PORT => FORWARD_SOCKET,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("nothing listens on port {other}"),
            ))
        }
    };
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}

/// One stream's connection to the server.
struct Local {
    fd: OwnedFd,
    /// What epoll watches it for; `None` when it is not in the epoll set (a socket nobody
    /// may read or write now would otherwise report a hang-up without end).
    watched: Option<EpollFlags>,
    /// The server closed its end for reading: the host's bytes are acknowledged and dropped.
    broken: bool,
}

/// The serial port, its mux session, and each stream's connection to the server.
pub struct SerialBridge {
    port: OwnedFd,
    session: Session,
    streams: HashMap<u32, Local>,
    /// What epoll watches the port for; `None` while no host is connected.
    port_watched: Option<EpollFlags>,
    /// When to look for a new host again.
    idle_until: Option<Instant>,
    buf: Vec<u8>,
}

impl SerialBridge {
    fn new(port: OwnedFd) -> SerialBridge {
        SerialBridge {
            port,
            session: Session::new(Side::Guest),
            streams: HashMap::new(),
            port_watched: None,
            idle_until: None,
            buf: vec![0u8; 64 << 10],
        }
    }

    /// Puts the port into the server's epoll set.
    pub fn register(&mut self, epoll: &Epoll) -> io::Result<()> {
        epoll.add(&self.port, EpollEvent::new(EpollFlags::EPOLLIN, PORT_TOKEN))?;
        self.port_watched = Some(EpollFlags::EPOLLIN);
        Ok(())
    }

    /// How long the server's loop may sleep before [`SerialBridge::tick`] is due.
    pub fn timeout(&self) -> Option<Duration> {
        self.idle_until
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// Looks for a new host once the idle wait is over.
    pub fn tick(&mut self, epoll: &Epoll) {
        match self.idle_until {
            Some(t) if t <= Instant::now() => {
                self.idle_until = None;
                self.read_port();
                self.settle(epoll);
            }
            _ => {}
        }
    }

    /// One epoll event on a token of the bridge's.
    pub fn handle(&mut self, epoll: &Epoll, token: u64, events: EpollFlags) {
        let readable =
            events.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
        if token == PORT_TOKEN {
            if readable {
                self.read_port();
            }
        } else if let Ok(id) = u32::try_from(token - STREAM_TOKENS) {
            if readable {
                self.read_local(id);
            }
        }
        self.settle(epoll);
    }

    fn read_port(&mut self) {
        match nix::unistd::read(self.port.as_raw_fd(), &mut self.buf) {
            Ok(0) => {
                // No host (it hung up, or a template is being saved): every stream ends, and
                // the next host starts with a hello.
                self.session.link_ended();
                self.idle_until = Some(Instant::now() + IDLE_POLL);
            }
            Ok(n) => {
                if let Err(e) = self.session.feed(&self.buf[..n]) {
                    eprintln!(
                        "vmpod-agent: serial channel: {}; waiting for the host to start over",
                        crate::chain(&e)
                    );
                }
            }
            Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                eprintln!("vmpod-agent: serial channel: read: {e}");
                self.session.link_ended();
                self.idle_until = Some(Instant::now() + IDLE_POLL);
            }
        }
    }

    /// The server's bytes on stream `id`, within the host's window.
    fn read_local(&mut self, id: u32) {
        let window = self.session.send_window(id).min(MAX_PAYLOAD * 2);
        let Some(local) = self.streams.get(&id) else {
            return;
        };
        if window == 0 {
            return;
        }
        match nix::unistd::read(local.fd.as_raw_fd(), &mut self.buf[..window]) {
            Ok(0) => self.session.close(id),
            Ok(n) => {
                self.session.send(id, &self.buf[..n]);
            }
            Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
            Err(_) => self.session.close(id),
        }
    }

    /// The host's bytes on stream `id`, as far as the server takes them now; then its end.
    fn deliver(&mut self, id: u32) {
        let Some(local) = self.streams.get_mut(&id) else {
            return;
        };
        loop {
            let inbound = self.session.inbound(id);
            if inbound.is_empty() {
                break;
            }
            if local.broken {
                let n = inbound.len();
                self.session.consume_inbound(id, n);
                break;
            }
            match nix::unistd::write(&local.fd, inbound) {
                Ok(n) => self.session.consume_inbound(id, n),
                Err(nix::Error::EAGAIN) => break,
                Err(nix::Error::EINTR) => {}
                // A reader that went away still gets the bytes acknowledged, so the host's
                // sender ends on its own instead of stalling.
                Err(_) => local.broken = true,
            }
        }
        if self.session.peer_end_pending(id) {
            let _ = socket::shutdown(local.fd.as_raw_fd(), socket::Shutdown::Write);
            self.session.end_delivered(id);
        }
    }

    /// Acts on what the session asks, moves what can move, writes the port, and sets what
    /// epoll watches.
    fn settle(&mut self, epoll: &Epoll) {
        loop {
            while let Some(event) = self.session.poll_event() {
                self.on_event(epoll, event);
            }
            let ids: Vec<u32> = self.streams.keys().copied().collect();
            for id in ids {
                self.deliver(id);
            }
            if !self.session.has_events() {
                break;
            }
        }
        self.write_port();
        self.watch(epoll);
    }

    fn on_event(&mut self, epoll: &Epoll, event: Event) {
        match event {
            Event::OpenRequested { stream, port } => match connect_local(port) {
                Ok(fd) => {
                    self.session.accept(stream);
                    self.streams.insert(
                        stream,
                        Local {
                            fd,
                            watched: None,
                            broken: false,
                        },
                    );
                }
                Err(e) => {
                    crate::debug!("serial stream {stream} to port {port}: {e}");
                    self.session.refuse(stream);
                }
            },
            Event::Reset => {
                for (_, local) in self.streams.drain() {
                    forget(epoll, local);
                }
            }
            Event::CutOff { stream, error } => {
                eprintln!("vmpod-agent: serial channel: {}", crate::chain(&error));
                if let Some(local) = self.streams.remove(&stream) {
                    forget(epoll, local);
                }
            }
            Event::Finished { stream } => {
                if let Some(local) = self.streams.remove(&stream) {
                    forget(epoll, local);
                }
            }
            Event::Ready | Event::Opened { .. } | Event::Refused { .. } => {}
        }
    }

    fn write_port(&mut self) {
        while !self.session.output().is_empty() {
            match nix::unistd::write(&self.port, self.session.output()) {
                Ok(n) => self.session.consume_output(n),
                Err(nix::Error::EINTR) => {}
                // Full (EPOLLOUT says when it drains), or no host: its read says so.
                Err(_) => return,
            }
        }
    }

    fn watch(&mut self, epoll: &Epoll) {
        let port = if self.idle_until.is_some() {
            None
        } else if self.session.output().is_empty() {
            Some(EpollFlags::EPOLLIN)
        } else {
            Some(EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT)
        };
        rewatch(
            epoll,
            self.port.as_fd(),
            PORT_TOKEN,
            &mut self.port_watched,
            port,
        );
        for (&id, local) in self.streams.iter_mut() {
            let mut wanted = EpollFlags::empty();
            if self.session.send_window(id) > 0 {
                wanted |= EpollFlags::EPOLLIN;
            }
            if !self.session.inbound(id).is_empty() {
                wanted |= EpollFlags::EPOLLOUT;
            }
            let wanted = (!wanted.is_empty()).then_some(wanted);
            let token = STREAM_TOKENS + u64::from(id);
            rewatch(epoll, local.fd.as_fd(), token, &mut local.watched, wanted);
        }
    }
}

/// Brings what epoll watches `fd` for from `current` to `wanted`.
fn rewatch(
    epoll: &Epoll,
    fd: std::os::fd::BorrowedFd<'_>,
    token: u64,
    current: &mut Option<EpollFlags>,
    wanted: Option<EpollFlags>,
) {
    if *current == wanted {
        return;
    }
    let done = match (*current, wanted) {
        (None, Some(flags)) => epoll.add(fd, EpollEvent::new(flags, token)),
        (Some(_), Some(flags)) => epoll.modify(fd, &mut EpollEvent::new(flags, token)),
        (Some(_), None) => epoll.delete(fd),
        (None, None) => Ok(()),
    };
    match done {
        Ok(()) => *current = wanted,
        Err(e) => eprintln!("vmpod-agent: serial channel: watch a descriptor: {e}"),
    }
}

/// A stream's connection goes: the server sees its end.
fn forget(epoll: &Epoll, local: Local) {
    if local.watched.is_some() {
        let _ = epoll.delete(&local.fd);
    }
    let _ = socket::shutdown(local.fd.as_raw_fd(), socket::Shutdown::Both);
}
