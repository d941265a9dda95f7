//! Many byte streams over one serial link. Where a VM's vsock device cannot be saved with it
//! (QEMU's vhost-user-vsock refuses migration, so a QEMU template has none), the host reaches
//! the agent over one virtio-serial port instead, and this multiplexer carries the same
//! connections vsock would: the host opens a stream to a guest port, both sides send bytes and
//! half-close, exactly as on a vsock stream.
//!
//! Wire format: frames of a 9-byte header (stream id u32 LE, kind u8, payload length u32 LE)
//! and at most [`MAX_PAYLOAD`] bytes. A side may send a stream at most [`WINDOW`] bytes the
//! other has not acknowledged with a `Credit` frame, so one slow reader never stalls the link
//! and a peer that overruns its window is cut off instead of filling our memory.
//!
//! A session starts with a `Hello` frame from the host, answered by one from the guest; each
//! side ignores everything before the other's hello. That is what lets a guest restored from a
//! template meet a new host: whatever the template's host left half-sent is skipped, and the
//! guest forgets every stream of the old session when the new hello arrives.

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const MAX_PAYLOAD: usize = 32 * 1024;
/// Unacknowledged bytes a side may send on one stream.
pub const WINDOW: u32 = 256 * 1024;
const HEADER: usize = 9;
const MAGIC: &[u8; 8] = b"vmpodmux";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hello = 1,
    Open = 2,
    Opened = 3,
    Data = 4,
    Credit = 5,
    Close = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Open,
            3 => Kind::Opened,
            4 => Kind::Data,
            5 => Kind::Credit,
            6 => Kind::Close,
            _ => return None,
        })
    }
}

fn frame(id: u32, kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&id.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn hello() -> Vec<u8> {
    frame(0, Kind::Hello, MAGIC)
}

/// Reads until the peer's hello; `false` at end of input.
pub fn find_hello(r: &mut impl Read) -> io::Result<bool> {
    let wanted = hello();
    let mut seen = Vec::with_capacity(wanted.len());
    let mut byte = [0u8; 1];
    loop {
        if r.read(&mut byte)? == 0 {
            return Ok(false);
        }
        seen.push(byte[0]);
        if seen.len() > wanted.len() {
            seen.remove(0);
        }
        if seen == wanted {
            return Ok(true);
        }
    }
}

/// The next frame; `None` at end of input. A malformed header is an error: the peer is not
/// speaking this protocol (or a guest is misbehaving), and the session ends.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u32, Kind, Vec<u8>)>> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        let n = r.read(&mut header[got..])?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the link ended inside a frame header",
                ))
            };
        }
        got += n;
    }
    let id = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let kind = Kind::from_u8(header[4]).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown frame kind {}", header[4]),
        )
    })?;
    let len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the {MAX_PAYLOAD}-byte limit"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((id, kind, payload)))
}

fn u32_payload(payload: &[u8], what: &str) -> io::Result<u32> {
    let bytes: [u8; 4] = payload.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {what} frame needs 4 bytes, not {}", payload.len()),
        )
    })?;
    Ok(u32::from_le_bytes(bytes))
}

/// The link's sending half. Frames of an old session are dropped: `generation` changes when the
/// guest meets a new host, and every sender says which session it belongs to.
struct LinkWriter {
    generation: u64,
    out: Box<dyn Write + Send>,
}

struct Stream {
    /// Distinguishes this stream from a later one reusing its id.
    serial: u64,
    local: UnixStream,
    /// Bytes we may still send.
    credit: u32,
    /// Peer bytes waiting for the local socket; `None` marks the peer's half-close.
    inbox: VecDeque<Option<Vec<u8>>>,
    inbox_bytes: usize,
    /// Host side: the guest's answer to our Open.
    opened: Option<bool>,
    sent_close: bool,
    got_close: bool,
}

#[derive(Default)]
struct State {
    streams: HashMap<u32, Stream>,
    next_id: u32,
    next_serial: u64,
    /// The peer's hello arrived (host side); no stream opens before it.
    ready: bool,
    /// The link is gone (host side): nothing more will open.
    dead: bool,
}

struct Shared {
    link: Mutex<LinkWriter>,
    state: Mutex<State>,
    changed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking pump thread must not take the whole link down with a poisoned lock.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn new(out: Box<dyn Write + Send>) -> Arc<Shared> {
        Arc::new(Shared {
            link: Mutex::new(LinkWriter { generation: 0, out }),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        })
    }

    /// Sends one frame of session `generation`; a frame of a past session is dropped.
    fn send(&self, generation: u64, bytes: &[u8]) -> io::Result<()> {
        let mut link = lock(&self.link);
        if link.generation != generation {
            return Ok(());
        }
        link.out.write_all(bytes)?;
        link.out.flush()
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(state).unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a change until `deadline`; `None` once it has passed.
    fn wait_until<'a>(
        &self,
        state: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> Option<MutexGuard<'a, State>> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let (state, _) = self
            .changed
            .wait_timeout(state, left)
            .unwrap_or_else(|p| p.into_inner());
        Some(state)
    }

    fn generation(&self) -> u64 {
        lock(&self.link).generation
    }

    /// Registers a stream and starts its two pumps.
    fn add_stream(self: &Arc<Self>, state: &mut State, id: u32, local: UnixStream, opened: bool) {
        let generation = self.generation();
        let serial = state.next_serial;
        state.next_serial += 1;
        let Ok(reader) = local.try_clone() else {
            return;
        };
        state.streams.insert(
            id,
            Stream {
                serial,
                local,
                credit: WINDOW,
                inbox: VecDeque::new(),
                inbox_bytes: 0,
                opened: opened.then_some(true),
                sent_close: false,
                got_close: false,
            },
        );
        let shared = Arc::clone(self);
        std::thread::spawn(move || shared.pump_out(id, serial, generation, reader));
        let shared = Arc::clone(self);
        std::thread::spawn(move || shared.pump_in(id, serial, generation));
    }

    fn remove_if_done(state: &mut State, id: u32) {
        if let Some(s) = state.streams.get(&id) {
            if s.sent_close && s.got_close && s.inbox.is_empty() {
                state.streams.remove(&id);
            }
        }
    }

    /// Local socket → link, within the peer's window.
    fn pump_out(&self, id: u32, serial: u64, generation: u64, mut local: UnixStream) {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        loop {
            let mut state = lock(&self.state);
            let allowed = loop {
                match state.streams.get(&id) {
                    Some(s) if s.serial == serial => {
                        // Host side: nothing flows before the guest accepted the stream.
                        if s.credit > 0 && s.opened == Some(true) {
                            break s.credit as usize;
                        }
                        if s.opened == Some(false) {
                            return;
                        }
                    }
                    _ => return,
                }
                state = self.wait(state);
            };
            drop(state);
            let n = local
                .read(&mut buf[..allowed.min(MAX_PAYLOAD)])
                .unwrap_or(0);
            let mut state = lock(&self.state);
            match state.streams.get_mut(&id) {
                Some(s) if s.serial == serial => {
                    if n == 0 {
                        s.sent_close = true;
                    } else {
                        s.credit -= n as u32;
                    }
                }
                _ => return,
            }
            drop(state);
            let sent = if n == 0 {
                self.send(generation, &frame(id, Kind::Close, &[]))
            } else {
                self.send(generation, &frame(id, Kind::Data, &buf[..n]))
            };
            if n == 0 || sent.is_err() {
                let mut state = lock(&self.state);
                Self::remove_if_done(&mut state, id);
                self.changed.notify_all();
                return;
            }
        }
    }

    /// Link → local socket; every byte written is credited back to the peer.
    fn pump_in(&self, id: u32, serial: u64, generation: u64) {
        let mut broken = false;
        loop {
            let mut state = lock(&self.state);
            let (item, mut local) = loop {
                match state.streams.get_mut(&id) {
                    Some(s) if s.serial == serial => {
                        if let Some(item) = s.inbox.pop_front() {
                            if let Some(data) = &item {
                                s.inbox_bytes -= data.len();
                            }
                            let Ok(local) = s.local.try_clone() else {
                                return;
                            };
                            break (item, local);
                        }
                    }
                    _ => return,
                }
                state = self.wait(state);
            };
            drop(state);
            match item {
                Some(data) => {
                    // A local reader that went away still gets its bytes acknowledged, so
                    // the peer's sender ends on its own instead of stalling.
                    if !broken && local.write_all(&data).is_err() {
                        broken = true;
                    }
                    let credit = (data.len() as u32).to_le_bytes();
                    if self
                        .send(generation, &frame(id, Kind::Credit, &credit))
                        .is_err()
                    {
                        return;
                    }
                }
                None => {
                    let _ = local.shutdown(Shutdown::Write);
                    let mut state = lock(&self.state);
                    Self::remove_if_done(&mut state, id);
                    self.changed.notify_all();
                    return;
                }
            }
        }
    }

    /// Forgets every stream: their local sockets see the end, their pumps stop.
    fn reset_streams(&self, state: &mut State) {
        for (_, s) in state.streams.drain() {
            let _ = s.local.shutdown(Shutdown::Both);
        }
        self.changed.notify_all();
    }

    /// One frame that is not an Open (those are the guest's to handle).
    fn dispatch(&self, id: u32, kind: Kind, payload: Vec<u8>) -> io::Result<()> {
        let mut state = lock(&self.state);
        let Some(s) = state.streams.get_mut(&id) else {
            // A stream that ended (or belongs to an old session): nothing to do.
            return Ok(());
        };
        match kind {
            Kind::Opened => s.opened = Some(true),
            Kind::Data => {
                if s.got_close {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("data on stream {id} after its close"),
                    ));
                }
                s.inbox_bytes += payload.len();
                if s.inbox_bytes > WINDOW as usize {
                    // The peer ignored its window: cut this stream off, keep the others.
                    let _ = s.local.shutdown(Shutdown::Both);
                    state.streams.remove(&id);
                    self.changed.notify_all();
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("stream {id} overran its {WINDOW}-byte window"),
                    ));
                }
                s.inbox.push_back(Some(payload));
            }
            Kind::Credit => {
                let n = u32_payload(&payload, "credit")?;
                s.credit = s.credit.saturating_add(n).min(WINDOW);
            }
            Kind::Close => {
                if s.opened.is_none() {
                    s.opened = Some(false);
                    state.streams.remove(&id);
                } else if !s.got_close {
                    s.got_close = true;
                    s.inbox.push_back(None);
                }
            }
            Kind::Hello | Kind::Open => {}
        }
        self.changed.notify_all();
        Ok(())
    }
}

/// The host's end: opens streams to guest ports over the link to the VM's serial port.
#[derive(Clone)]
pub struct HostMux {
    shared: Arc<Shared>,
    link: Arc<UnixStream>,
}

impl HostMux {
    /// Starts a session on `link` (a connection to the VM's serial port): says hello and
    /// reads the guest's frames on a thread of its own until the link ends.
    pub fn start(link: UnixStream) -> io::Result<HostMux> {
        let reader = link.try_clone()?;
        let writer = link.try_clone()?;
        let shared = Shared::new(Box::new(writer));
        shared.send(0, &hello())?;
        let for_reader = Arc::clone(&shared);
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            if let Ok(true) = find_hello(&mut r) {
                lock(&for_reader.state).ready = true;
                for_reader.changed.notify_all();
                while let Ok(Some((id, kind, payload))) = read_frame(&mut r) {
                    // A bad frame from the guest ends only the stream it names (dispatch
                    // already cut it off); a malformed header ends the loop above.
                    let _ = for_reader.dispatch(id, kind, payload);
                }
            }
            let mut state = lock(&for_reader.state);
            state.dead = true;
            for_reader.reset_streams(&mut state);
        });
        Ok(HostMux {
            shared,
            link: Arc::new(link),
        })
    }

    /// Connects `local` to guest `port`: `Ok(true)` once the guest accepted, `Ok(false)` if
    /// nothing listens there (or the guest did not answer within `timeout`).
    pub fn open(&self, port: u32, local: UnixStream, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        let shared = &self.shared;
        let mut state = lock(&shared.state);
        while !state.ready && !state.dead {
            match shared.wait_until(state, deadline) {
                Some(s) => state = s,
                None => return Ok(false),
            }
        }
        if state.dead {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the VM's serial link has ended",
            ));
        }
        state.next_id = state.next_id.wrapping_add(1).max(1);
        let id = state.next_id;
        let serial = state.next_serial;
        shared.add_stream(&mut state, id, local, false);
        drop(state);
        shared.send(0, &frame(id, Kind::Open, &port.to_le_bytes()))?;
        let mut state = lock(&shared.state);
        loop {
            match state.streams.get(&id) {
                Some(s) if s.serial == serial => {
                    if s.opened == Some(true) {
                        return Ok(true);
                    }
                }
                _ => return Ok(false),
            }
            match shared.wait_until(state, deadline) {
                Some(s) => state = s,
                None => {
                    // No answer: the stream is dropped, its local end sees the end.
                    let mut state = lock(&shared.state);
                    if let Some(s) = state.streams.remove(&id) {
                        let _ = s.local.shutdown(Shutdown::Both);
                    }
                    shared.changed.notify_all();
                    return Ok(false);
                }
            }
        }
    }

    /// Open streams; 0 when the link is quiet (as a template must be when it is saved).
    pub fn streams(&self) -> usize {
        lock(&self.shared.state).streams.len()
    }

    /// Waits until no stream is open, up to `timeout`; `true` if so.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        while !state.streams.is_empty() {
            match self.shared.wait_until(state, deadline) {
                Some(s) => state = s,
                None => return false,
            }
        }
        true
    }

    /// Ends the session: the guest sees its host go, every stream ends.
    pub fn shut_down(&self) {
        let _ = self.link.shutdown(Shutdown::Both);
    }
}

/// The guest's end of one session on `reader`/`writer`: waits for the host's hello (anything
/// before it is skipped), then serves Open frames by calling `open(port)` for a local
/// connection. Returns when the link ends; a new hello on the same link starts afresh.
pub struct GuestMux {
    shared: Arc<Shared>,
}

impl GuestMux {
    pub fn new(writer: Box<dyn Write + Send>) -> GuestMux {
        GuestMux {
            shared: Shared::new(writer),
        }
    }

    /// Serves until `reader` ends (`Ok`) or the host breaks the protocol (`Err`). Every stream
    /// ends with the session either way.
    pub fn serve(
        &self,
        reader: &mut impl Read,
        open: &dyn Fn(u32) -> io::Result<UnixStream>,
    ) -> io::Result<()> {
        let result = self.session(reader, open);
        self.reset();
        result
    }

    /// A new session: the old one's frames stop here, its streams end.
    fn reset(&self) {
        let mut link = lock(&self.shared.link);
        link.generation += 1;
        drop(link);
        let mut state = lock(&self.shared.state);
        self.shared.reset_streams(&mut state);
    }

    fn session(
        &self,
        reader: &mut impl Read,
        open: &dyn Fn(u32) -> io::Result<UnixStream>,
    ) -> io::Result<()> {
        if !find_hello(reader)? {
            return Ok(());
        }
        loop {
            self.reset();
            let generation = self.shared.generation();
            self.shared.send(generation, &hello())?;
            loop {
                let Some((id, kind, payload)) = read_frame(reader)? else {
                    return Ok(());
                };
                match kind {
                    Kind::Hello if payload == MAGIC => break,
                    Kind::Open => {
                        let port = u32_payload(&payload, "open")?;
                        let mut state = lock(&self.shared.state);
                        if state.streams.contains_key(&id) {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("the host opened stream {id} twice"),
                            ));
                        }
                        drop(state);
                        match open(port) {
                            Ok(local) => {
                                state = lock(&self.shared.state);
                                self.shared.add_stream(&mut state, id, local, true);
                                drop(state);
                                self.shared
                                    .send(generation, &frame(id, Kind::Opened, &[]))?;
                            }
                            Err(_) => {
                                self.shared.send(generation, &frame(id, Kind::Close, &[]))?;
                            }
                        }
                    }
                    _ => {
                        // A window overrun cuts off that one stream; the session goes on.
                        let _ = self.shared.dispatch(id, kind, payload);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    struct Guest {
        dir: std::path::PathBuf,
    }

    /// A guest mux on one end of a socket pair, its port 7 an echo server, port 9 closed.
    fn guest(link: UnixStream) -> Guest {
        let dir = std::env::temp_dir().join(format!(
            "vmpod-mux-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let echo = dir.join("echo.sock");
        let listener = UnixListener::bind(&echo).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut back = conn.try_clone().unwrap();
                    let _ = std::io::copy(&mut conn, &mut back);
                    let _ = back.shutdown(Shutdown::Write);
                });
            }
        });
        let writer = link.try_clone().unwrap();
        std::thread::spawn(move || {
            let mux = GuestMux::new(Box::new(writer));
            let mut reader = BufReader::new(link);
            let open = move |port: u32| match port {
                7 => UnixStream::connect(&echo),
                _ => Err(io::Error::from(io::ErrorKind::ConnectionRefused)),
            };
            let _ = mux.serve(&mut reader, &open);
        });
        Guest { dir }
    }

    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    impl Drop for Guest {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn open(host: &HostMux, port: u32) -> Option<UnixStream> {
        let (ours, theirs) = UnixStream::pair().unwrap();
        host.open(port, theirs, Duration::from_secs(5))
            .unwrap()
            .then_some(ours)
    }

    #[test]
    fn streams_carry_bytes_both_ways_and_half_close() {
        let (h, g) = UnixStream::pair().unwrap();
        let _guest = guest(g);
        let host = HostMux::start(h).unwrap();
        // More than the window, in several streams at once: credit must flow back.
        let payload: Vec<u8> = (0..3 * WINDOW).map(|i| (i % 251) as u8).collect();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let mut s = open(&host, 7).expect("port 7 accepts");
                let payload = payload.clone();
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    let p = payload.clone();
                    let writer = std::thread::spawn(move || {
                        w.write_all(&p).unwrap();
                        w.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut back = Vec::new();
                    s.read_to_end(&mut back).unwrap();
                    writer.join().unwrap();
                    back == payload
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().unwrap(), "echoed bytes differ");
        }
        assert!(host.wait_idle(Duration::from_secs(5)), "streams left open");
    }

    #[test]
    fn a_port_nobody_listens_on_is_refused() {
        let (h, g) = UnixStream::pair().unwrap();
        let _guest = guest(g);
        let host = HostMux::start(h).unwrap();
        assert!(open(&host, 9).is_none());
        assert!(open(&host, 7).is_some(), "the session survives a refusal");
    }

    /// The next frame that is not a credit.
    fn next(r: &mut impl Read) -> (u32, Kind, Vec<u8>) {
        loop {
            let f = read_frame(r).unwrap().expect("a frame");
            if f.1 != Kind::Credit {
                return f;
            }
        }
    }

    #[test]
    fn garbage_before_the_hello_is_skipped_and_a_new_hello_resets_the_guest() {
        let (mut h, g) = UnixStream::pair().unwrap();
        let _guest = guest(g);
        let mut r = BufReader::new(h.try_clone().unwrap());
        // What a template's host may have left half-sent.
        h.write_all(b"\x07\x00\x00\x00\x04\xff\xff").unwrap();
        for round in ["ping", "pong"] {
            h.write_all(&hello()).unwrap();
            assert!(find_hello(&mut r).unwrap());
            // The same stream id in both sessions: the guest must have forgotten the first.
            h.write_all(&frame(1, Kind::Open, &7u32.to_le_bytes()))
                .unwrap();
            assert_eq!(next(&mut r), (1, Kind::Opened, vec![]), "{round}");
            h.write_all(&frame(1, Kind::Data, round.as_bytes()))
                .unwrap();
            assert_eq!(next(&mut r), (1, Kind::Data, round.as_bytes().to_vec()));
        }
    }

    #[test]
    fn a_guest_overrunning_its_window_loses_that_stream_only() {
        let (h, mut g) = UnixStream::pair().unwrap();
        let host = HostMux::start(h).unwrap();
        let mut r = BufReader::new(g.try_clone().unwrap());
        assert!(find_hello(&mut r).unwrap());
        g.write_all(&hello()).unwrap();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let opener = {
            let host = host.clone();
            std::thread::spawn(move || host.open(7, theirs, Duration::from_secs(5)))
        };
        let (id, kind, port) = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((kind, u32_payload(&port, "open").unwrap()), (Kind::Open, 7));
        g.write_all(&frame(id, Kind::Opened, &[])).unwrap();
        assert!(opener.join().unwrap().unwrap());
        // Nobody reads `ours`: once its socket buffer is full nothing more is credited, and a
        // guest that keeps sending overflows the window. Four windows are more than the
        // socket buffer and one window together.
        let chunk = vec![0u8; MAX_PAYLOAD];
        let sent = 4 * WINDOW as usize;
        for _ in 0..sent / MAX_PAYLOAD {
            g.write_all(&frame(id, Kind::Data, &chunk)).unwrap();
        }
        assert!(host.wait_idle(Duration::from_secs(5)), "the stream stayed");
        ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = Vec::new();
        ours.read_to_end(&mut sink)
            .expect("the cut-off stream ends");
        assert!(sink.len() < sent, "all {sent} bytes arrived");
    }

    #[test]
    fn malformed_frames_are_named() {
        let mut bad_kind: &[u8] = b"\x01\x00\x00\x00\x63\x00\x00\x00\x00";
        let e = read_frame(&mut bad_kind).unwrap_err();
        assert!(e.to_string().contains("unknown frame kind 99"), "{e}");
        let mut huge = frame(1, Kind::Data, &[]);
        huge[5..9].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        let e = read_frame(&mut huge.as_slice()).unwrap_err();
        assert!(e.to_string().contains("over the"), "{e}");
        let mut short: &[u8] = b"\x01\x00";
        let e = read_frame(&mut short).unwrap_err();
        assert!(e.to_string().contains("inside a frame header"), "{e}");
    }
}
