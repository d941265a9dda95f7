//! The serial link's wire format: frames of a 9-byte header (stream id u32 LE, kind u8, payload
//! length u32 LE) and at most [`MAX_PAYLOAD`] bytes, and the hello that starts a session.
//!
//! [`Decoder`] takes bytes as they come and yields whole frames; a header that cannot be a
//! frame of ours is a [`MuxError`] naming the stream and what is wrong, never a panic, since
//! each side reads what the other (a guest it must not trust, or a stale host) wrote.

use std::io;
#[cfg(test)]
use std::io::Read;

/// The largest payload of one frame.
pub const MAX_PAYLOAD: usize = 32 * 1024;
/// Unacknowledged bytes a side may send on one stream.
pub const WINDOW: u32 = 256 * 1024;
/// A frame's header: stream id, kind, payload length.
pub const HEADER: usize = 9;
/// The hello frame's payload.
pub const MAGIC: &[u8; 8] = b"vmpodmux";
/// The hello frame's length on the wire.
pub const HELLO_LEN: usize = HEADER + MAGIC.len();

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
    pub fn from_u8(b: u8) -> Option<Kind> {
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

    fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Open => "open",
            Kind::Opened => "opened",
            Kind::Data => "data",
            Kind::Credit => "credit",
            Kind::Close => "close",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What is wrong with the bytes or frames a peer sent.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("frame on stream {stream} has unknown frame kind {kind}")]
    UnknownKind { stream: u32, kind: u8 },
    #[error("a frame of {len} bytes on stream {stream} is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge { stream: u32, len: usize },
    #[error("the {kind} frame on stream {stream} needs 4 bytes, not {len}")]
    BadPayload { stream: u32, kind: Kind, len: usize },
    #[error("the link ended inside a frame header")]
    TruncatedHeader,
    #[error("the link ended inside the payload of a frame on stream {stream}")]
    TruncatedPayload { stream: u32 },
    #[error("the host opened stream {stream} twice")]
    OpenedTwice { stream: u32 },
    #[error("an open frame on stream 0, which no stream may use")]
    StreamZero,
    #[error("data on stream {stream} after its close")]
    DataAfterClose { stream: u32 },
    #[error("stream {stream} overran its {WINDOW}-byte window")]
    WindowOverrun { stream: u32 },
    #[error("a {kind} frame from the host, which only the guest sends")]
    WrongSide { kind: Kind },
    #[error("link I/O")]
    Io(#[from] io::Error),
}

/// One frame as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: u32,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The payload of an open or credit frame: one u32.
    pub fn u32_payload(&self) -> Result<u32, MuxError> {
        let bytes: [u8; 4] =
            self.payload
                .as_slice()
                .try_into()
                .map_err(|_| MuxError::BadPayload {
                    stream: self.stream,
                    kind: self.kind,
                    len: self.payload.len(),
                })?;
        Ok(u32::from_le_bytes(bytes))
    }
}

/// Appends one frame to `out`. `payload` must be at most [`MAX_PAYLOAD`] bytes.
pub fn encode_into(out: &mut Vec<u8>, stream: u32, kind: Kind, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    out.reserve(HEADER + payload.len());
    out.extend_from_slice(&stream.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// One frame's bytes.
pub fn encode(stream: u32, kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, stream, kind, payload);
    out
}

/// The hello frame's bytes.
pub fn hello() -> Vec<u8> {
    encode(0, Kind::Hello, MAGIC)
}

/// Finds the peer's hello in a byte stream that may start with anything (a template's host
/// may have left a frame half-sent). Bytes after the hello are the session's.
#[derive(Debug, Default)]
pub struct HelloScanner {
    /// The last bytes seen, at most a hello's length.
    seen: Vec<u8>,
}

impl HelloScanner {
    pub fn new() -> HelloScanner {
        HelloScanner::default()
    }

    /// Scans `bytes`; `Some(n)` once the hello ends at `bytes[n - 1]`.
    pub fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let wanted = hello();
        for (i, &b) in bytes.iter().enumerate() {
            if self.seen.len() == HELLO_LEN {
                self.seen.remove(0);
            }
            self.seen.push(b);
            if self.seen == wanted {
                self.seen.clear();
                return Some(i + 1);
            }
        }
        None
    }
}

/// Accumulates bytes and yields whole frames.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Where the undecoded bytes start in `buf`.
    start: usize,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a returned frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Forgets every byte not yet decoded.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// The bytes not yet decoded, taken out.
    pub fn take_pending(&mut self) -> Vec<u8> {
        let rest = self.buf[self.start..].to_vec();
        self.clear();
        rest
    }

    /// The next whole frame, if one is buffered. A header naming an unknown kind or an
    /// oversized payload is an error as soon as it arrives: nothing after it can be framed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, MuxError> {
        let rest = &self.buf[self.start..];
        let Some(header) = rest.get(..HEADER) else {
            return Ok(None);
        };
        let (stream, kind, len) = parse_header(header.try_into().expect("a 9-byte slice"))?;
        let Some(payload) = rest.get(HEADER..HEADER + len) else {
            return Ok(None);
        };
        let frame = Frame {
            stream,
            kind,
            payload: payload.to_vec(),
        };
        self.start += HEADER + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 4 * MAX_PAYLOAD {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(frame))
    }

    /// At the end of the link: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), MuxError> {
        let rest = &self.buf[self.start..];
        match rest.len() {
            0 => Ok(()),
            n if n < HEADER => Err(MuxError::TruncatedHeader),
            _ => Err(MuxError::TruncatedPayload {
                stream: u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]),
            }),
        }
    }
}

fn parse_header(header: &[u8; HEADER]) -> Result<(u32, Kind, usize), MuxError> {
    let stream = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let kind = Kind::from_u8(header[4]).ok_or(MuxError::UnknownKind {
        stream,
        kind: header[4],
    })?;
    let len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(MuxError::TooLarge { stream, len });
    }
    Ok((stream, kind, len))
}

/// Reads from a blocking stream until the peer's hello; `false` at end of input. (The tests'
/// blocking reader; the link's drivers feed a `Session`.)
#[cfg(test)]
pub fn find_hello(r: &mut impl Read) -> Result<bool, MuxError> {
    let mut scanner = HelloScanner::new();
    let mut byte = [0u8; 1];
    loop {
        if read_some(r, &mut byte)? == 0 {
            return Ok(false);
        }
        if scanner.scan(&byte).is_some() {
            return Ok(true);
        }
    }
}

#[cfg(test)]
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// The next frame from a blocking stream; `None` at a clean end of input between frames.
#[cfg(test)]
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, MuxError> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        let n = read_some(r, &mut header[got..])?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(MuxError::TruncatedHeader)
            };
        }
        got += n;
    }
    let (stream, kind, len) = parse_header(&header)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => MuxError::TruncatedPayload { stream },
        _ => MuxError::Io(e),
    })?;
    Ok(Some(Frame {
        stream,
        kind,
        payload,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let mut stream = encode(1, Kind::Open, &1024u32.to_le_bytes());
        stream.extend(encode(1, Kind::Data, b"hello"));
        stream.extend(encode(1, Kind::Close, &[]));
        for cut in 0..stream.len() {
            let mut d = Decoder::new();
            let mut frames = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                d.push(part);
                while let Some(f) = d.next_frame().unwrap() {
                    frames.push(f);
                }
            }
            let kinds: Vec<Kind> = frames.iter().map(|f| f.kind).collect();
            assert_eq!(kinds, [Kind::Open, Kind::Data, Kind::Close], "cut at {cut}");
            assert_eq!(frames[0].u32_payload().unwrap(), 1024);
            assert_eq!(frames[1].payload, b"hello");
            assert_eq!(d.pending(), 0);
            d.finish().unwrap();
        }
    }

    #[test]
    fn an_unknown_kind_is_named_with_its_stream() {
        let mut d = Decoder::new();
        d.push(b"\x07\x00\x00\x00\x63\x00\x00\x00\x00");
        let e = d.next_frame().unwrap_err();
        assert!(matches!(
            e,
            MuxError::UnknownKind {
                stream: 7,
                kind: 99
            }
        ));
        assert_eq!(e.to_string(), "frame on stream 7 has unknown frame kind 99");
        let mut r: &[u8] = b"\x01\x00\x00\x00\x63\x00\x00\x00\x00";
        let e = read_frame(&mut r).unwrap_err();
        assert!(e.to_string().contains("unknown frame kind 99"), "{e}");
    }

    #[test]
    fn an_oversized_payload_is_refused_from_the_header_alone() {
        let mut huge = encode(3, Kind::Data, &[]);
        huge[5..9].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        let mut d = Decoder::new();
        d.push(&huge);
        let e = d.next_frame().unwrap_err();
        assert!(matches!(e, MuxError::TooLarge { stream: 3, len } if len == MAX_PAYLOAD + 1));
        assert!(e.to_string().contains("over the 32768-byte limit"), "{e}");
        let e = read_frame(&mut huge.as_slice()).unwrap_err();
        assert!(matches!(e, MuxError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn a_link_ending_inside_a_frame_is_named() {
        let mut short: &[u8] = b"\x01\x00";
        let e = read_frame(&mut short).unwrap_err();
        assert_eq!(e.to_string(), "the link ended inside a frame header");
        let cut = encode(5, Kind::Data, b"abc");
        let e = read_frame(&mut &cut[..HEADER + 1]).unwrap_err();
        assert!(matches!(e, MuxError::TruncatedPayload { stream: 5 }), "{e}");
        let mut d = Decoder::new();
        d.push(&cut[..HEADER + 1]);
        assert!(d.next_frame().unwrap().is_none());
        assert!(matches!(
            d.finish(),
            Err(MuxError::TruncatedPayload { stream: 5 })
        ));
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty).unwrap().is_none());
    }

    #[test]
    fn a_short_open_or_credit_payload_is_named() {
        let f = Frame {
            stream: 2,
            kind: Kind::Credit,
            payload: vec![1, 2],
        };
        let e = f.u32_payload().unwrap_err();
        assert_eq!(
            e.to_string(),
            "the credit frame on stream 2 needs 4 bytes, not 2"
        );
    }

    #[test]
    fn the_hello_is_found_after_any_garbage_and_split_anywhere() {
        let mut input = b"\x07\x00\x00\x00\x04\xff\xff vmpod".to_vec();
        let garbage = input.len();
        input.extend(hello());
        input.extend(b"after");
        for cut in 0..input.len() {
            let mut s = HelloScanner::new();
            let found = match s.scan(&input[..cut]) {
                Some(n) => n,
                None => cut + s.scan(&input[cut..]).expect("the hello"),
            };
            assert_eq!(found, garbage + HELLO_LEN, "cut at {cut}");
        }
        let mut r = input.as_slice();
        assert!(find_hello(&mut r).unwrap());
        assert_eq!(r, b"after");
        assert!(!find_hello(&mut &b"no hello here"[..]).unwrap());
    }
}
