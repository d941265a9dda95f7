//! One side of a serial link's session, with no I/O of its own: the driver feeds it the bytes
//! the link brought ([`Session::feed`]), writes what it queued ([`Session::output`]), and moves
//! bytes between each stream and its local socket ([`Session::send`], [`Session::inbound`]).
//! The guest's agent drives it from its epoll loop, the host from a few threads; both speak
//! through this one state machine.
//!
//! (Over 600 lines with its unit tests; the session itself is about 400.)

use super::codec::{encode_into, hello, Decoder, Frame, HelloScanner, Kind, MuxError};
use super::codec::{MAGIC, MAX_PAYLOAD, WINDOW};
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Opens streams; says hello first.
    Host,
    /// Accepts streams; answers the host's hello, and a new hello starts a new session.
    Guest,
}

/// What the driver must act on.
#[derive(Debug)]
pub enum Event {
    /// Host: the guest answered the hello; streams may open.
    Ready,
    /// Every stream is gone (guest: a new host said hello, the link ended or broke the
    /// protocol): their local sockets must end.
    Reset,
    /// Guest: the host opens `stream` to `port`; answer with [`Session::accept`] or
    /// [`Session::refuse`].
    OpenRequested { stream: u32, port: u32 },
    /// Host: the guest accepted the stream.
    Opened { stream: u32 },
    /// Host: nothing listens on the port; the stream is gone.
    Refused { stream: u32 },
    /// The stream's frames broke the protocol; it is gone, the others go on.
    CutOff { stream: u32, error: MuxError },
    /// Both directions ended and every byte was delivered; the stream is gone.
    Finished { stream: u32 },
}

#[derive(Debug)]
struct Stream {
    /// Bytes we may still send.
    credit: u32,
    /// Peer bytes not yet delivered to the local socket.
    inbox: Vec<u8>,
    /// Host: the guest accepted (guest: always).
    opened: bool,
    sent_close: bool,
    got_close: bool,
    /// The driver passed the peer's end on to the local socket.
    end_delivered: bool,
}

impl Stream {
    fn new(opened: bool) -> Stream {
        Stream {
            credit: WINDOW,
            inbox: Vec::new(),
            opened,
            sent_close: false,
            got_close: false,
            end_delivered: false,
        }
    }
}

#[derive(Debug)]
pub struct Session {
    side: Side,
    /// Looks for the peer's hello while `None` of the session's frames may be read.
    scanner: Option<HelloScanner>,
    decoder: Decoder,
    streams: HashMap<u32, Stream>,
    out: Vec<u8>,
    events: VecDeque<Event>,
    next_id: u32,
}

impl Session {
    /// A session not yet started: the host's hello is queued at once, the guest waits for it.
    pub fn new(side: Side) -> Session {
        let mut session = Session {
            side,
            scanner: Some(HelloScanner::new()),
            decoder: Decoder::new(),
            streams: HashMap::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            next_id: 0,
        };
        if side == Side::Host {
            session.out.extend(hello());
        }
        session
    }

    /// The peer's hello arrived.
    pub fn is_ready(&self) -> bool {
        self.scanner.is_none()
    }

    /// Takes bytes from the link. An error is the peer breaking the protocol in a way no
    /// stream can survive: the host's session is then over; the guest's forgets its streams and
    /// waits for the next hello.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), MuxError> {
        while !bytes.is_empty() {
            if let Some(scanner) = &mut self.scanner {
                let Some(n) = scanner.scan(bytes) else {
                    return Ok(());
                };
                bytes = &bytes[n..];
                self.scanner = None;
                self.decoder.clear();
                match self.side {
                    Side::Host => self.events.push_back(Event::Ready),
                    Side::Guest => self.start_guest_session(),
                }
                continue;
            }
            self.decoder.push(bytes);
            bytes = &[];
            loop {
                let result = match self.decoder.next_frame() {
                    Ok(Some(frame)) => self.dispatch(frame),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    return Err(self.broken(e));
                }
            }
        }
        Ok(())
    }

    /// The link ended (guest: the host went away): every stream goes, the next session starts
    /// with a hello.
    pub fn link_ended(&mut self) {
        if self.side == Side::Guest {
            self.restart();
        }
    }

    /// The peer broke the protocol. The guest looks for the next hello in what follows, as
    /// it does after any garbage.
    fn broken(&mut self, e: MuxError) -> MuxError {
        if self.side == Side::Guest {
            let rest = self.decoder.take_pending();
            self.restart();
            // A second error in the rest is the same broken session.
            let _ = self.feed(&rest);
        }
        e
    }

    /// Guest: back to waiting for a hello, with nothing of the old session left.
    fn restart(&mut self) {
        self.scanner = Some(HelloScanner::new());
        self.decoder.clear();
        self.forget_session();
    }

    /// Guest: the host's hello came; a fresh session answers it.
    fn start_guest_session(&mut self) {
        self.forget_session();
        self.out.extend(hello());
    }

    /// Nothing of the old session stays: its streams, queued output and unanswered opens.
    fn forget_session(&mut self) {
        self.out.clear();
        self.streams.clear();
        self.events
            .retain(|e| !matches!(e, Event::OpenRequested { .. }));
        self.events.push_back(Event::Reset);
    }

    fn dispatch(&mut self, frame: Frame) -> Result<(), MuxError> {
        let id = frame.stream;
        match (frame.kind, self.side) {
            (Kind::Hello, Side::Guest) if frame.payload == MAGIC => {
                self.start_guest_session();
                return Ok(());
            }
            (Kind::Hello, _) | (Kind::Open, Side::Host) | (Kind::Opened, Side::Guest) => {
                return Ok(());
            }
            (Kind::Open, Side::Guest) => {
                let port = frame.u32_payload()?;
                if id == 0 {
                    return Err(MuxError::StreamZero);
                }
                let pending = self
                    .events
                    .iter()
                    .any(|e| matches!(e, Event::OpenRequested { stream, .. } if *stream == id));
                if self.streams.contains_key(&id) || pending {
                    return Err(MuxError::OpenedTwice { stream: id });
                }
                self.events
                    .push_back(Event::OpenRequested { stream: id, port });
                return Ok(());
            }
            _ => {}
        }
        let Some(s) = self.streams.get_mut(&id) else {
            // A stream that ended (or belongs to an old session): nothing to do.
            return Ok(());
        };
        let problem = match frame.kind {
            Kind::Opened => {
                if !s.opened {
                    s.opened = true;
                    self.events.push_back(Event::Opened { stream: id });
                }
                None
            }
            Kind::Data if s.got_close => Some(MuxError::DataAfterClose { stream: id }),
            Kind::Data if s.inbox.len() + frame.payload.len() > WINDOW as usize => {
                // The peer ignored its window: cut this stream off, keep the others.
                Some(MuxError::WindowOverrun { stream: id })
            }
            // An empty inbox takes the frame's payload as it is, without a copy.
            Kind::Data if s.inbox.is_empty() => {
                s.inbox = frame.payload;
                None
            }
            Kind::Data => {
                s.inbox.extend_from_slice(&frame.payload);
                None
            }
            Kind::Credit => match frame.u32_payload() {
                Ok(n) => {
                    s.credit = s.credit.saturating_add(n).min(WINDOW);
                    None
                }
                Err(e) => Some(e),
            },
            Kind::Close if !s.opened => {
                self.streams.remove(&id);
                self.events.push_back(Event::Refused { stream: id });
                None
            }
            Kind::Close => {
                s.got_close = true;
                None
            }
            Kind::Hello | Kind::Open => None,
        };
        if let Some(error) = problem {
            self.streams.remove(&id);
            self.events.push_back(Event::CutOff { stream: id, error });
        }
        Ok(())
    }

    /// The next thing the driver must act on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether [`Session::poll_event`] has something.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Bytes queued for the link.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// The first `n` bytes of [`Session::output`] were written to the link.
    /// Everything queued for the link, taken out (for a writer that sends it all at once).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// Host: opens a stream to the guest's `port`; its answer comes as [`Event::Opened`] or
    /// [`Event::Refused`].
    pub fn open(&mut self, port: u32) -> u32 {
        loop {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.streams.contains_key(&self.next_id) {
                break;
            }
        }
        let id = self.next_id;
        self.streams.insert(id, Stream::new(false));
        encode_into(&mut self.out, id, Kind::Open, &port.to_le_bytes());
        id
    }

    /// Guest: the local connection for a requested stream is made.
    pub fn accept(&mut self, stream: u32) {
        self.streams.insert(stream, Stream::new(true));
        encode_into(&mut self.out, stream, Kind::Opened, &[]);
    }

    /// Guest: nothing listens on the requested port.
    pub fn refuse(&mut self, stream: u32) {
        encode_into(&mut self.out, stream, Kind::Close, &[]);
    }

    /// Forgets a stream without a word to the peer (its local end is gone, or the host gave up
    /// waiting for the guest's answer).
    pub fn remove(&mut self, stream: u32) {
        self.streams.remove(&stream);
    }

    /// Streams open.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// The ids of the open streams.
    pub fn stream_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.streams.keys().copied()
    }

    /// The stream exists; `Some(true)` once the guest accepted it.
    pub fn opened(&self, stream: u32) -> Option<bool> {
        self.streams.get(&stream).map(|s| s.opened)
    }

    /// How many bytes of the local socket may be sent now: zero before the guest accepts,
    /// after our close, or while the peer has not acknowledged a window's worth.
    pub fn send_window(&self, stream: u32) -> usize {
        match self.streams.get(&stream) {
            Some(s) if s.opened && !s.sent_close => s.credit as usize,
            _ => 0,
        }
    }

    /// Whether the local socket's bytes are still wanted (the stream is open and we have not
    /// sent our close).
    pub fn sending(&self, stream: u32) -> bool {
        matches!(self.streams.get(&stream), Some(s) if !s.sent_close)
    }

    /// Queues bytes read from the local socket; returns how many fit the window (frames of at
    /// most [`MAX_PAYLOAD`] each).
    pub fn send(&mut self, stream: u32, bytes: &[u8]) -> usize {
        let allowed = self.send_window(stream).min(bytes.len());
        let Some(s) = self.streams.get_mut(&stream) else {
            return 0;
        };
        s.credit -= allowed as u32;
        for chunk in bytes[..allowed].chunks(MAX_PAYLOAD) {
            encode_into(&mut self.out, stream, Kind::Data, chunk);
        }
        allowed
    }

    /// The local socket's input ended: the peer sees the stream's end.
    pub fn close(&mut self, stream: u32) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if !s.sent_close {
            s.sent_close = true;
            encode_into(&mut self.out, stream, Kind::Close, &[]);
        }
        self.remove_if_finished(stream);
    }

    /// Peer bytes waiting for the local socket.
    pub fn inbound(&self, stream: u32) -> &[u8] {
        self.streams.get(&stream).map_or(&[], |s| &s.inbox)
    }

    /// `n` bytes of [`Session::inbound`] reached the local socket (or were dropped, its reader
    /// being gone): they are credited back to the peer.
    pub fn consume_inbound(&mut self, stream: u32, n: usize) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let n = n.min(s.inbox.len());
        if n == 0 {
            return;
        }
        s.inbox.drain(..n);
        encode_into(
            &mut self.out,
            stream,
            Kind::Credit,
            &(n as u32).to_le_bytes(),
        );
    }

    /// The peer closed and every byte before its close was delivered: the local socket's
    /// writing half must now be shut down (then [`Session::end_delivered`]).
    pub fn peer_end_pending(&self, stream: u32) -> bool {
        matches!(self.streams.get(&stream),
            Some(s) if s.got_close && s.inbox.is_empty() && !s.end_delivered)
    }

    /// The local socket saw the peer's end.
    pub fn end_delivered(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.end_delivered = true;
        }
        self.remove_if_finished(stream);
    }

    fn remove_if_finished(&mut self, stream: u32) {
        if matches!(self.streams.get(&stream), Some(s) if s.sent_close && s.end_delivered) {
            self.streams.remove(&stream);
            self.events.push_back(Event::Finished { stream });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{encode, read_frame};
    use super::*;

    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut r = bytes;
        let mut out = Vec::new();
        while let Some(f) = read_frame(&mut r).unwrap() {
            out.push(f);
        }
        out
    }

    /// Moves each side's output to the other until both are quiet.
    fn exchange(host: &mut Session, guest: &mut Session) {
        loop {
            let h = host.output().to_vec();
            host.consume_output(h.len());
            let g = guest.output().to_vec();
            guest.consume_output(g.len());
            if h.is_empty() && g.is_empty() {
                return;
            }
            guest.feed(&h).unwrap();
            host.feed(&g).unwrap();
        }
    }

    fn events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    /// A host and guest session with stream `id` open between them.
    fn pair() -> (Session, Session, u32) {
        let mut host = Session::new(Side::Host);
        let mut guest = Session::new(Side::Guest);
        exchange(&mut host, &mut guest);
        assert!(matches!(events(&mut host)[..], [Event::Ready]));
        let id = host.open(1024);
        exchange(&mut host, &mut guest);
        match events(&mut guest)[..] {
            [Event::Reset, Event::OpenRequested { stream, port: 1024 }] => {
                assert_eq!(stream, id);
                guest.accept(stream);
            }
            ref other => panic!("{other:?}"),
        }
        exchange(&mut host, &mut guest);
        assert!(matches!(events(&mut host)[..], [Event::Opened { stream }] if stream == id));
        (host, guest, id)
    }

    #[test]
    fn bytes_flow_both_ways_within_the_window_and_credit_comes_back() {
        let (mut host, mut guest, id) = pair();
        let big = vec![7u8; WINDOW as usize + 10];
        assert_eq!(host.send(id, &big), WINDOW as usize, "one window at most");
        assert_eq!(host.send_window(id), 0);
        exchange(&mut host, &mut guest);
        assert_eq!(guest.inbound(id).len(), WINDOW as usize);
        guest.consume_inbound(id, 1000);
        exchange(&mut host, &mut guest);
        assert_eq!(host.send_window(id), 1000, "the credit came back");
        assert_eq!(guest.send(id, b"reply"), 5);
        exchange(&mut host, &mut guest);
        assert_eq!(host.inbound(id), b"reply");
    }

    #[test]
    fn both_closes_delivered_finish_the_stream() {
        let (mut host, mut guest, id) = pair();
        host.close(id);
        exchange(&mut host, &mut guest);
        assert!(guest.peer_end_pending(id));
        guest.end_delivered(id);
        guest.close(id);
        exchange(&mut host, &mut guest);
        assert!(matches!(events(&mut guest)[..], [Event::Finished { stream }] if stream == id));
        assert!(host.peer_end_pending(id));
        host.end_delivered(id);
        assert!(matches!(events(&mut host)[..], [Event::Finished { stream }] if stream == id));
        assert_eq!((host.streams(), guest.streams()), (0, 0));
    }

    #[test]
    fn a_refused_open_is_reported_to_the_host() {
        let mut host = Session::new(Side::Host);
        let mut guest = Session::new(Side::Guest);
        exchange(&mut host, &mut guest);
        let id = host.open(9);
        exchange(&mut host, &mut guest);
        let _ = events(&mut guest);
        guest.refuse(id);
        exchange(&mut host, &mut guest);
        let got = events(&mut host);
        assert!(matches!(got[..], [Event::Ready, Event::Refused { stream }] if stream == id));
        assert_eq!(host.streams(), 0);
    }

    #[test]
    fn garbage_before_the_hello_is_skipped_and_a_new_hello_resets_the_guest() {
        let mut guest = Session::new(Side::Guest);
        guest.feed(b"\x07\x00\x00\x00\x04\xff\xff").unwrap();
        assert!(guest.output().is_empty(), "no answer before a hello");
        for round in 0..2 {
            let mut input = hello();
            input.extend(encode(1, Kind::Open, &7u32.to_le_bytes()));
            guest.feed(&input).unwrap();
            let got = events(&mut guest);
            assert!(
                matches!(
                    got[..],
                    [Event::Reset, Event::OpenRequested { stream: 1, port: 7 }]
                ),
                "round {round}: {got:?}"
            );
            // The same stream id in both sessions: the guest must have forgotten the first.
            guest.accept(1);
            let out = frames(guest.output());
            guest.consume_output(guest.output().len());
            assert_eq!(out.last().unwrap().kind, Kind::Opened);
        }
    }

    #[test]
    fn a_peer_overrunning_its_window_loses_that_stream_only() {
        let (mut host, _guest, id) = pair();
        let other = host.open(1025);
        let chunk = vec![0u8; 32 * 1024];
        let mut input = Vec::new();
        for _ in 0..=WINDOW as usize / chunk.len() {
            input.extend(encode(id, Kind::Data, &chunk));
        }
        host.feed(&input).unwrap();
        let got = events(&mut host);
        match &got[..] {
            [Event::CutOff { stream, error }] => {
                assert_eq!(*stream, id);
                assert_eq!(
                    error.to_string(),
                    format!("stream {id} overran its 262144-byte window")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(host.opened(id), None);
        assert_eq!(host.opened(other), Some(false), "the other stream stays");
    }

    #[test]
    fn data_after_close_and_a_short_credit_cut_off_the_stream() {
        let (mut host, mut guest, id) = pair();
        let mut input = encode(id, Kind::Close, &[]);
        input.extend(encode(id, Kind::Data, b"late"));
        guest.feed(&input).unwrap();
        let got = events(&mut guest);
        assert!(
            matches!(
                &got[..],
                [Event::CutOff {
                    error: MuxError::DataAfterClose { .. },
                    ..
                }]
            ),
            "{got:?}"
        );
        host.feed(&encode(id, Kind::Credit, &[1])).unwrap();
        let got = events(&mut host);
        match &got[..] {
            [Event::CutOff { error, .. }] => assert_eq!(
                error.to_string(),
                format!("the credit frame on stream {id} needs 4 bytes, not 1")
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_malformed_header_ends_the_guests_session_until_the_next_hello() {
        let (_host, mut guest, id) = pair();
        let e = guest
            .feed(b"\x01\x00\x00\x00\x63\x00\x00\x00\x00")
            .unwrap_err();
        assert!(
            matches!(
                e,
                MuxError::UnknownKind {
                    stream: 1,
                    kind: 99
                }
            ),
            "{e}"
        );
        assert!(matches!(events(&mut guest)[..], [Event::Reset]));
        assert_eq!(guest.opened(id), None);
        assert!(!guest.is_ready(), "it waits for a new hello");
        // Frames without a hello are skipped; the hello starts afresh.
        let mut input = encode(1, Kind::Open, &7u32.to_le_bytes());
        input.extend(hello());
        guest.feed(&input).unwrap();
        assert!(guest.is_ready());
        assert_eq!(frames(guest.output())[0].kind, Kind::Hello);
    }

    #[test]
    fn a_hello_right_after_a_malformed_header_starts_the_next_session() {
        let (_host, mut guest, id) = pair();
        let mut input = b"\x01\x00\x00\x00\x63\x00\x00\x00\x00".to_vec();
        input.extend(hello());
        input.extend(encode(id, Kind::Open, &7u32.to_le_bytes()));
        assert!(guest.feed(&input).is_err());
        assert!(guest.is_ready(), "the hello in the same read was found");
        let got = events(&mut guest);
        assert!(
            matches!(
                got[..],
                [
                    Event::Reset,
                    Event::Reset,
                    Event::OpenRequested { port: 7, .. }
                ]
            ),
            "{got:?}"
        );
    }

    #[test]
    fn an_open_twice_or_on_stream_zero_or_short_is_a_protocol_error() {
        let (_host, mut guest, id) = pair();
        let e = guest
            .feed(&encode(id, Kind::Open, &7u32.to_le_bytes()))
            .unwrap_err();
        assert_eq!(e.to_string(), format!("the host opened stream {id} twice"));
        let mut input = hello();
        input.extend(encode(0, Kind::Open, &7u32.to_le_bytes()));
        assert!(matches!(guest.feed(&input), Err(MuxError::StreamZero)));
        let mut input = hello();
        input.extend(encode(3, Kind::Open, &[7]));
        let e = guest.feed(&input).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the open frame on stream 3 needs 4 bytes, not 1"
        );
    }

    #[test]
    fn any_bytes_fed_never_panic() {
        // A cheap stand-in for the fuzzer: every prefix of a valid exchange, and noise.
        let mut valid = hello();
        valid.extend(encode(1, Kind::Opened, &[]));
        valid.extend(encode(1, Kind::Data, b"abc"));
        valid.extend(encode(1, Kind::Credit, &5u32.to_le_bytes()));
        valid.extend(encode(1, Kind::Close, &[]));
        for side in [Side::Host, Side::Guest] {
            for cut in 0..valid.len() {
                let mut s = Session::new(side);
                let _ = s.feed(&valid[..cut]);
                let mut noisy = valid[cut..].to_vec();
                noisy.iter_mut().step_by(3).for_each(|b| *b ^= 0x5a);
                let _ = s.feed(&noisy);
                while s.poll_event().is_some() {}
            }
        }
    }
}
