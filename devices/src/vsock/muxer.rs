//! The hybrid vsock muxer (the Firecracker / Cloud Hypervisor convention): the VM's vsock is a
//! Unix socket on the host. A host client connects to it and writes `CONNECT <port>\n`; once
//! the guest accepts, it reads `OK <host port>\n` and the stream is raw bytes. A guest
//! connection to CID 2 port P is forwarded to the Unix socket `<path>_P`.
//!
//! Every socket is non-blocking and sits in the muxer's own epoll set, whose descriptor the
//! transport watches; guest memory is only touched through the queues handed in.
//!
//! (Over 600 lines with its unit tests; the muxer itself is about 500.)

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, Key, State};
use super::hybrid;
use super::packet::*;
use crate::virtio::{serve_chains, QueueError, UsedQueues};

pub const RX: usize = 0;
pub const TX: usize = 1;

/// Limits on what the guest and host clients can make us hold.
const MAX_CONNECTIONS: usize = 1024;
const MAX_HANDSHAKES: usize = 256;
const MAX_CONTROL_PACKETS: usize = 4096;
/// Host ports we hand out for host-initiated connections start here.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// The epoll token of the listening socket; streams use their fd.
const LISTENER_TOKEN: u64 = u64::MAX;

#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vsock: cannot create its epoll set: {0}")]
    Epoll(std::io::Error),
}

pub struct Muxer {
    guest_cid: u64,
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    connections: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    /// Host clients that have not sent their CONNECT line yet.
    handshakes: HashMap<RawFd, (UnixStream, Vec<u8>)>,
    /// Control packets waiting for guest RX buffers.
    control: VecDeque<Header>,
    /// Connections whose host stream may have data for the guest.
    readable: VecDeque<Key>,
    next_local_port: u32,
    bounce: Vec<u8>,
}

impl Muxer {
    /// Listens on `path` (which must not exist yet) for host clients.
    pub fn new(guest_cid: u64, path: &Path) -> Result<Muxer, MuxerError> {
        let bind_err = |source| MuxerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )
            .map_err(MuxerError::Epoll)?;
        Ok(Muxer {
            guest_cid,
            path: path.to_path_buf(),
            listener,
            epoll,
            connections: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            control: VecDeque::new(),
            readable: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            bounce: vec![0; MAX_PAYLOAD as usize],
        })
    }

    /// The descriptor to watch: readable whenever a socket needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Packets the guest sent: act on each, then give the guest what is waiting for it.
    pub fn process_tx(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<UsedQueues, QueueError> {
        let mut used = UsedQueues::NONE;
        if let Some(tx) = queues.get_mut(TX) {
            if serve_chains(tx, mem, |chain| {
                match chain.reader(mem) {
                    Ok(mut reader) => {
                        let mut raw = [0u8; HEADER_LEN];
                        match reader.read_exact(&mut raw) {
                            Ok(()) => self.guest_packet(Header::parse(&raw), &mut reader),
                            Err(_) => tracing::debug!("vsock: {}", PacketError::Short),
                        }
                    }
                    Err(e) => tracing::debug!("vsock: unusable tx chain: {e}"),
                }
                0
            })? {
                used.add(TX);
            }
        }
        used.0 |= self.fill_rx(queues, mem)?.0;
        Ok(used)
    }

    /// Socket events (new host clients, data, hangups), then the guest's RX.
    pub fn process_events(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<UsedQueues, QueueError> {
        let mut events = [EpollEvent::default(); 64];
        let count = self.epoll.wait(0, &mut events).unwrap_or(0);
        for event in &events[..count] {
            if event.data() == LISTENER_TOKEN {
                self.accept_clients();
                continue;
            }
            let fd = event.data() as RawFd;
            let set = event.event_set();
            if self.handshakes.contains_key(&fd) {
                self.read_handshake(fd);
            } else if let Some(&key) = self.by_fd.get(&fd) {
                if set.contains(EventSet::OUT) {
                    self.flush(key);
                }
                let readable =
                    EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR;
                if set.intersects(readable) {
                    self.mark_readable(key);
                }
            }
        }
        self.fill_rx(queues, mem)
    }

    fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.handshakes.len() >= MAX_HANDSHAKES
                        || self.connections.len() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        tracing::warn!("vsock: too many connections; refusing a host client");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if self.watch(fd).is_ok() {
                        self.handshakes.insert(fd, (stream, Vec::new()));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Reads a host client's `CONNECT <port>\n`; anything else closes it.
    fn read_handshake(&mut self, fd: RawFd) {
        let Some((stream, line)) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(1) => {
                    line.push(byte[0]);
                    // At the limit without a newline the parse below refuses it.
                    if byte[0] == b'\n' || line.len() >= hybrid::MAX_LINE {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                _ => {
                    tracing::debug!("vsock: host client sent no valid CONNECT line");
                    return self.drop_handshake(fd);
                }
            }
        }
        let peer_port = match hybrid::parse_connect(line) {
            Ok(port) => port,
            Err(e) => {
                tracing::debug!(
                    "vsock: malformed handshake {:?}: {e}",
                    String::from_utf8_lossy(line)
                );
                return self.drop_handshake(fd);
            }
        };
        let Some((stream, _)) = self.handshakes.remove(&fd) else {
            return;
        };
        let local_port = self.allocate_local_port(peer_port);
        let key = (local_port, peer_port);
        let mut conn = Connection::new(stream, State::LocalInit, local_port, peer_port);
        let request = conn.header(self.guest_cid, OP_REQUEST);
        self.by_fd.insert(fd, key);
        self.connections.insert(key, conn);
        self.push_control(request);
    }

    fn drop_handshake(&mut self, fd: RawFd) {
        if let Some((stream, _)) = self.handshakes.remove(&fd) {
            self.unwatch(stream.as_raw_fd());
        }
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.connections.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    /// Acts on one packet from the guest; `payload` holds its data (RW only).
    fn guest_packet(&mut self, header: Header, payload: &mut impl Read) {
        if let Err(e) = header.validate(self.guest_cid) {
            tracing::debug!("vsock: dropping guest packet: {e}");
            return;
        }
        let key = (header.dst_port, header.src_port);
        if header.op == OP_REQUEST {
            return self.guest_connects(key);
        }
        let Some(conn) = self.connections.get_mut(&key) else {
            if header.op != OP_RST {
                self.push_control(self.reset_header(key));
            }
            return;
        };
        let had_credit = conn.peer_credit() > 0;
        conn.update_peer_credit(&header);
        match (header.op, conn.state) {
            (OP_RESPONSE, State::LocalInit) => {
                conn.state = State::Established;
                let line = hybrid::ok_line(conn.local_port);
                conn.queue_host_line(line.as_bytes());
                self.mark_readable(key);
            }
            (OP_RW, State::Established | State::HostClosed) => {
                let len = header.len as usize;
                let chunk = &mut self.bounce[..len];
                let delivered = payload.read_exact(chunk).is_ok();
                let conn = self.connections.get_mut(&key).expect("looked up above");
                if !delivered || conn.write_to_host(chunk).is_err() {
                    tracing::debug!("vsock: port {}: host gone or guest over its credit", key.0);
                    return self.reset(key);
                }
                if conn.needs_credit_update() {
                    let update = conn.credit_update(self.guest_cid);
                    self.push_control(update);
                }
            }
            (OP_CREDIT_REQUEST, _) => {
                let update = conn.credit_update(self.guest_cid);
                self.push_control(update);
            }
            (OP_CREDIT_UPDATE, _) => {
                if !had_credit && conn.peer_credit() > 0 {
                    self.mark_readable(key);
                }
            }
            (OP_SHUTDOWN, _)
                if header.flags & SHUTDOWN_SEND != 0 && header.flags & SHUTDOWN_RCV == 0 =>
            {
                // The guest is done sending; the host sees EOF once the buffered data is out.
                conn.flush_to_host();
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            }
            (OP_SHUTDOWN, _) => {
                conn.flush_to_host();
                self.reset(key);
            }
            (OP_RST, _) => self.close(key),
            (op, state) => {
                tracing::debug!(
                    "vsock: op {op} in state {state:?}: resetting port {}",
                    key.0
                );
                self.reset(key);
            }
        }
    }

    /// The guest connects to host port `key.0`: forward to `<path>_<port>`.
    fn guest_connects(&mut self, key: Key) {
        if self.connections.contains_key(&key) || self.connections.len() >= MAX_CONNECTIONS {
            return self.push_control(self.reset_header(key));
        }
        let target = PathBuf::from(format!("{}_{}", self.path.display(), key.0));
        let stream = match UnixStream::connect(&target) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => {
                tracing::debug!("vsock: guest connection to {} refused", target.display());
                return self.push_control(self.reset_header(key));
            }
        };
        let fd = stream.as_raw_fd();
        if self.watch(fd).is_err() {
            return self.push_control(self.reset_header(key));
        }
        let mut conn = Connection::new(stream, State::Established, key.0, key.1);
        let response = conn.header(self.guest_cid, OP_RESPONSE);
        self.by_fd.insert(fd, key);
        self.connections.insert(key, conn);
        self.push_control(response);
    }

    /// Moves waiting control packets and host data into the guest's RX buffers.
    fn fill_rx(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<UsedQueues, QueueError> {
        // Before the driver set RX up, whatever waits stays queued.
        let Some(rx) = queues.get_mut(RX).filter(|q| q.ready()) else {
            return Ok(UsedQueues::NONE);
        };
        let mut used = false;
        while !self.control.is_empty() || !self.readable.is_empty() {
            let Some(chain) = rx.pop_descriptor_chain(mem) else {
                break; // no buffers: the guest kicks RX when it adds some
            };
            let head = chain.head_index();
            let Ok(mut writer) = chain.writer(mem) else {
                rx.add_used(mem, head, 0)
                    .map_err(|e| QueueError::Used(e.to_string()))?;
                used = true;
                continue;
            };
            let room = writer.available_bytes().saturating_sub(HEADER_LEN);
            let written = match self.next_rx_packet(room) {
                Some((header, len)) => {
                    let mut header = header;
                    header.len = len as u32;
                    let ok = std::io::Write::write_all(&mut writer, &header.to_bytes()).is_ok()
                        && std::io::Write::write_all(&mut writer, &self.bounce[..len]).is_ok();
                    if ok {
                        (HEADER_LEN + len) as u32
                    } else {
                        0
                    }
                }
                None => {
                    // Nothing to send after all: give the buffer back untouched.
                    rx.go_to_previous_position();
                    break;
                }
            };
            rx.add_used(mem, head, written)
                .map_err(|e| QueueError::Used(e.to_string()))?;
            used = true;
        }
        Ok(if used {
            UsedQueues::queue(RX)
        } else {
            UsedQueues::NONE
        })
    }

    /// The next packet for the guest, its payload (if any) in `self.bounce[..len]`.
    fn next_rx_packet(&mut self, room: usize) -> Option<(Header, usize)> {
        if let Some(header) = self.control.pop_front() {
            return Some((header, 0));
        }
        while let Some(key) = self.readable.pop_front() {
            let Some(conn) = self.connections.get_mut(&key) else {
                continue;
            };
            if conn.state != State::Established {
                continue;
            }
            let want = room.min(conn.peer_credit() as usize).min(self.bounce.len());
            if want == 0 {
                // Out of guest credit (its CREDIT_UPDATE re-arms us) or a useless buffer.
                continue;
            }
            match conn.stream.read(&mut self.bounce[..want]) {
                Ok(0) => {
                    // EOF says only that the host sends no more; it may still be reading
                    // (a half-close), so the guest may go on sending.
                    conn.state = State::HostClosed;
                    let mut shutdown = conn.header(self.guest_cid, OP_SHUTDOWN);
                    shutdown.flags = SHUTDOWN_SEND;
                    return Some((shutdown, 0));
                }
                Ok(n) => {
                    conn.sent_to_guest(n as u32);
                    let header = conn.header(self.guest_cid, OP_RW);
                    // There may be more: keep the connection in line, behind the others.
                    self.readable.push_back(key);
                    return Some((header, n));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => self.readable.push_front(key),
                Err(_) => {
                    let reset = conn.header(self.guest_cid, OP_RST);
                    self.close(key);
                    return Some((reset, 0));
                }
            }
        }
        None
    }

    fn mark_readable(&mut self, key: Key) {
        if !self.readable.contains(&key) {
            self.readable.push_back(key);
        }
    }

    fn flush(&mut self, key: Key) {
        if let Some(conn) = self.connections.get_mut(&key) {
            conn.flush_to_host();
            if conn.needs_credit_update() {
                let update = conn.credit_update(self.guest_cid);
                self.push_control(update);
            }
        }
    }

    fn push_control(&mut self, header: Header) {
        if self.control.len() >= MAX_CONTROL_PACKETS {
            tracing::warn!("vsock: guest is not taking control packets; dropping one");
            return;
        }
        self.control.push_back(header);
    }

    fn reset_header(&self, key: Key) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        }
    }

    /// Tells the guest the connection is gone and forgets it.
    fn reset(&mut self, key: Key) {
        self.close(key);
        self.push_control(self.reset_header(key));
    }

    fn close(&mut self, key: Key) {
        if let Some(conn) = self.connections.remove(&key) {
            let fd = conn.stream.as_raw_fd();
            self.unwatch(fd);
            self.by_fd.remove(&fd);
        }
        self.readable.retain(|k| *k != key);
    }

    /// Streams are edge-triggered: we read each until it would block (or the guest runs out of
    /// buffers or credit, and then `readable` remembers it), so a stream the guest cannot take
    /// from yet never makes the event loop spin.
    fn watch(&self, fd: RawFd) -> std::io::Result<()> {
        let events =
            EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED | EventSet::READ_HANG_UP;
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, fd as u64),
        )
    }

    fn unwatch(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    //! The muxer between real Unix sockets and a simulated guest driver: queues in guest memory
    //! built here, packets written and read the way Linux's virtio-vsock driver does.

    use super::*;
    use crate::testing::{raw_desc, used_entry, used_idx, VRING_DESC_F_WRITE};
    use std::io::Write;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const GUEST_CID: u64 = 3;
    const QSIZE: u16 = 64;
    const RX_BUF: u32 = 4096 + HEADER_LEN as u32;

    struct Guest<'a> {
        mem: &'a GuestMemoryMmap,
        rx: MockSplitQueue<'a, GuestMemoryMmap>,
        tx: MockSplitQueue<'a, GuestMemoryMmap>,
        queues: Vec<Queue>,
        rx_posted: u16,
        rx_seen: u16,
        tx_posted: u16,
    }

    const RX_BUFFERS: u64 = 0x10_0000;
    const TX_BUFFERS: u64 = 0x80_0000;

    impl<'a> Guest<'a> {
        fn new(mem: &'a GuestMemoryMmap) -> Guest<'a> {
            let rx = MockSplitQueue::create(mem, GuestAddress(0), QSIZE);
            let tx = MockSplitQueue::create(mem, GuestAddress(0x8000), QSIZE);
            let queues = vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()];
            Guest {
                mem,
                rx,
                tx,
                queues,
                rx_posted: 0,
                rx_seen: 0,
                tx_posted: 0,
            }
        }

        fn post_rx_buffers(&mut self, count: u16) {
            for _ in 0..count {
                let slot = self.rx_posted % QSIZE;
                let addr = RX_BUFFERS + u64::from(slot) * u64::from(RX_BUF);
                let desc = raw_desc(addr, RX_BUF, VRING_DESC_F_WRITE, 0);
                self.rx.add_desc_chains(&[desc], slot).unwrap();
                self.rx_posted += 1;
            }
        }

        fn send(&mut self, header: Header, payload: &[u8]) {
            let slot = self.tx_posted % QSIZE;
            let addr = TX_BUFFERS + u64::from(slot) * 0x1_1000;
            let mut bytes = header.to_bytes().to_vec();
            bytes.extend_from_slice(payload);
            self.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
            let desc = raw_desc(addr, bytes.len() as u32, 0, 0);
            self.tx.add_desc_chains(&[desc], slot).unwrap();
            self.tx_posted += 1;
        }

        /// Packets the device put in RX since the last call.
        fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
            let used = used_idx(self.mem, &self.rx);
            let mut out = Vec::new();
            while self.rx_seen != used {
                let (id, len) = used_entry(self.mem, &self.rx, self.rx_seen % QSIZE);
                let addr = RX_BUFFERS + u64::from(id) * u64::from(RX_BUF);
                let mut raw = [0u8; HEADER_LEN];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                let header = Header::parse(&raw);
                let mut payload = vec![0u8; len as usize - HEADER_LEN];
                self.mem
                    .read_slice(&mut payload, GuestAddress(addr + HEADER_LEN as u64))
                    .unwrap();
                out.push((header, payload));
                self.rx_seen = self.rx_seen.wrapping_add(1);
            }
            out
        }

        fn header(&self, src_port: u32, dst_port: u32, op: u16, len: u32) -> Header {
            Header {
                src_cid: GUEST_CID,
                dst_cid: HOST_CID,
                src_port,
                dst_port,
                len,
                type_: TYPE_STREAM,
                op,
                flags: 0,
                buf_alloc: 256 << 10,
                fwd_cnt: 0,
            }
        }
    }

    struct SocketDir(tempfile::TempDir);

    impl SocketDir {
        fn new(name: &str) -> SocketDir {
            let prefix = format!("vmpod-vsock-{name}-");
            SocketDir(tempfile::Builder::new().prefix(&prefix).tempdir().unwrap())
        }
        fn path(&self) -> PathBuf {
            self.0.path().join("vsock.sock")
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
    }

    fn pump(muxer: &mut Muxer, guest: &mut Guest) {
        for _ in 0..5 {
            muxer.process_events(&mut guest.queues, guest.mem).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    fn read_line(stream: &mut UnixStream) -> String {
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn host_connect_handshake_then_bytes_both_ways_then_close() {
        let dir = SocketDir::new("hostinit");
        let mem = memory();
        let mut guest = Guest::new(&mem);
        guest.post_rx_buffers(8);
        let mut muxer = Muxer::new(GUEST_CID, &dir.path()).unwrap();

        let mut client = UnixStream::connect(dir.path()).unwrap();
        client.write_all(b"CONNECT 52\n").unwrap();
        pump(&mut muxer, &mut guest);
        let got = guest.received();
        assert_eq!(got.len(), 1, "{got:?}");
        let request = got[0].0;
        assert_eq!(
            (request.op, request.dst_port, request.dst_cid),
            (OP_REQUEST, 52, GUEST_CID)
        );
        let host_port = request.src_port;

        guest.send(guest.header(52, host_port, OP_RESPONSE, 0), &[]);
        muxer.process_tx(&mut guest.queues, &mem).unwrap();
        assert_eq!(read_line(&mut client), format!("OK {host_port}"));

        client.write_all(b"ping").unwrap();
        pump(&mut muxer, &mut guest);
        let got = guest.received();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].0.op, got[0].1.as_slice()), (OP_RW, &b"ping"[..]));

        guest.send(guest.header(52, host_port, OP_RW, 4), b"pong");
        muxer.process_tx(&mut guest.queues, &mem).unwrap();
        let mut reply = [0u8; 4];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"pong");

        drop(client);
        pump(&mut muxer, &mut guest);
        let got = guest.received();
        assert_eq!(got.last().map(|p| p.0.op), Some(OP_SHUTDOWN), "{got:?}");
        guest.send(guest.header(52, host_port, OP_RST, 0), &[]);
        muxer.process_tx(&mut guest.queues, &mem).unwrap();
        assert!(muxer.connections.is_empty());
    }

    #[test]
    fn guest_connection_goes_to_the_port_socket_or_is_reset() {
        let dir = SocketDir::new("guestinit");
        let mem = memory();
        let mut guest = Guest::new(&mem);
        guest.post_rx_buffers(8);
        let mut muxer = Muxer::new(GUEST_CID, &dir.path()).unwrap();
        let listener = UnixListener::bind(format!("{}_1234", dir.path().display())).unwrap();

        guest.send(guest.header(5000, 1234, OP_REQUEST, 0), &[]);
        guest.send(guest.header(5001, 999, OP_REQUEST, 0), &[]);
        muxer.process_tx(&mut guest.queues, &mem).unwrap();
        let ops: Vec<(u16, u32)> = guest
            .received()
            .iter()
            .map(|p| (p.0.op, p.0.dst_port))
            .collect();
        assert_eq!(ops, vec![(OP_RESPONSE, 5000), (OP_RST, 5001)]);

        let (mut accepted, _) = listener.accept().unwrap();
        guest.send(guest.header(5000, 1234, OP_RW, 5), b"hello");
        muxer.process_tx(&mut guest.queues, &mem).unwrap();
        let mut buf = [0u8; 5];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn malformed_handshake_closes_the_client() {
        let dir = SocketDir::new("badhs");
        let mem = memory();
        let mut guest = Guest::new(&mem);
        guest.post_rx_buffers(4);
        let mut muxer = Muxer::new(GUEST_CID, &dir.path()).unwrap();
        for junk in [&b"HELLO 52\n"[..], b"CONNECT x\n", &[b'A'; 100][..]] {
            let mut client = UnixStream::connect(dir.path()).unwrap();
            client.write_all(junk).unwrap();
            pump(&mut muxer, &mut guest);
            client
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 8];
            assert_eq!(client.read(&mut buf).unwrap_or(0), 0, "{junk:?} not closed");
        }
        assert!(guest.received().is_empty());
        assert!(muxer.handshakes.is_empty() && muxer.connections.is_empty());
    }

    #[test]
    fn packets_for_unknown_connections_get_a_reset_and_bad_headers_nothing() {
        let dir = SocketDir::new("unknown");
        let mem = memory();
        let mut guest = Guest::new(&mem);
        guest.post_rx_buffers(8);
        let mut muxer = Muxer::new(GUEST_CID, &dir.path()).unwrap();
        guest.send(guest.header(7, 8, OP_RW, 3), b"abc");
        let mut wrong_cid = guest.header(7, 8, OP_RW, 0);
        wrong_cid.src_cid = 99;
        guest.send(wrong_cid, &[]);
        let mut lying_len = guest.header(7, 8, OP_RW, 60000);
        lying_len.len = 60000; // but only 3 bytes follow
        guest.send(lying_len, b"abc");
        guest.send(guest.header(7, 8, OP_RST, 0), &[]);
        muxer.process_tx(&mut guest.queues, &mem).unwrap();
        let got: Vec<u16> = guest.received().iter().map(|p| p.0.op).collect();
        assert_eq!(
            got,
            vec![OP_RST, OP_RST],
            "one per packet for an unknown connection, none for RST or bad CID"
        );
    }

    #[test]
    fn host_data_waits_for_guest_buffers_and_credit() {
        let dir = SocketDir::new("credit");
        let mem = memory();
        let mut guest = Guest::new(&mem);
        guest.post_rx_buffers(1);
        let mut muxer = Muxer::new(GUEST_CID, &dir.path()).unwrap();
        let mut client = UnixStream::connect(dir.path()).unwrap();
        client.write_all(b"CONNECT 52\n").unwrap();
        pump(&mut muxer, &mut guest);
        let host_port = guest.received()[0].0.src_port;
        let mut response = guest.header(52, host_port, OP_RESPONSE, 0);
        response.buf_alloc = 6; // the guest can take only 6 bytes
        guest.send(response, &[]);
        muxer.process_tx(&mut guest.queues, &mem).unwrap();
        read_line(&mut client);

        client.write_all(b"0123456789").unwrap();
        pump(&mut muxer, &mut guest);
        assert!(
            guest.received().is_empty(),
            "no RX buffer: nothing delivered"
        );
        guest.post_rx_buffers(4);
        muxer.process_events(&mut guest.queues, &mem).unwrap();
        let got = guest.received();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, b"012345", "only as much as the credit allows");
        let mut update = guest.header(52, host_port, OP_CREDIT_UPDATE, 0);
        update.buf_alloc = 6;
        update.fwd_cnt = 6;
        guest.send(update, &[]);
        muxer.process_tx(&mut guest.queues, &mem).unwrap();
        let got = guest.received();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, b"6789");
    }
}
