//! Framing: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! The same [`FrameDecoder`] runs on both sides, so a bound or a check added here protects the
//! agent from the host and the host from a guest it must not trust.

use serde::{de::DeserializeOwned, Serialize};
use std::io::{Read, Write};

/// The largest frame either side accepts. An OCI spec is a few KiB; this leaves room for big
/// environments while keeping one frame's buffer bounded.
pub const MAX_FRAME: usize = 1 << 20;
const HEADER: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("malformed message")]
    Malformed(#[source] serde_json::Error),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("connection I/O")]
    Io(#[from] std::io::Error),
}

/// Encodes one message as a frame.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER];
    serde_json::to_writer(&mut out, message).map_err(FrameError::Malformed)?;
    let len = out.len() - HEADER;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    out[..HEADER].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes one frame's payload.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(FrameError::Malformed)
}

/// Accumulates bytes from a non-blocking stream and yields whole frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a returned frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// How many more bytes the decoder may need before it can return a frame; a reader uses
    /// this to never pull more than one frame (and its header) into memory.
    pub fn wanted(&self) -> usize {
        match self.header_len() {
            Some(len) => (HEADER + len).saturating_sub(self.buf.len()).max(1),
            None => HEADER - self.buf.len(),
        }
    }

    fn header_len(&self) -> Option<usize> {
        let header: [u8; HEADER] = self.buf.get(..HEADER)?.try_into().ok()?;
        Some(u32::from_be_bytes(header) as usize)
    }

    /// The next whole frame's payload, if one is buffered. An oversized or empty length is an
    /// error as soon as its header arrives: the peer is broken and the stream is unusable.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(len) = self.header_len() else {
            return Ok(None);
        };
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let rest = self.buf.split_off(HEADER + len);
        let mut frame = std::mem::replace(&mut self.buf, rest);
        frame.drain(..HEADER);
        Ok(Some(frame))
    }
}

/// Reads one frame from a blocking stream; `None` on a clean end of stream between frames.
pub fn read_frame<R: Read>(reader: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match reader.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let mut payload = vec![0u8; len];
    reader
        .read_exact(&mut payload)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })?;
    Ok(Some(payload))
}

/// Writes one message as a frame to a blocking stream.
pub fn write_frame<W: Write, T: Serialize>(writer: &mut W, message: &T) -> Result<(), FrameError> {
    writer.write_all(&encode(message)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let a = encode(&"first").unwrap();
        let b = encode(&vec![1, 2, 3]).unwrap();
        let stream: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        for cut in 0..stream.len() {
            let mut d = FrameDecoder::new();
            let mut frames = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                d.push(part);
                while let Some(f) = d.next_frame().unwrap() {
                    frames.push(f);
                }
            }
            assert_eq!(decode::<String>(&frames[0]).unwrap(), "first");
            assert_eq!(decode::<Vec<i32>>(&frames[1]).unwrap(), vec![1, 2, 3]);
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn oversized_length_is_refused_from_the_header_alone() {
        let mut d = FrameDecoder::new();
        d.push(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge(_))));
        let mut r: &[u8] = &u32::MAX.to_be_bytes();
        assert!(matches!(read_frame(&mut r), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn empty_and_truncated_frames_are_errors() {
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 0, 0]);
        assert!(matches!(d.next_frame(), Err(FrameError::Empty)));
        let mut r: &[u8] = &[0, 0, 0, 9, b'{'];
        assert!(matches!(read_frame(&mut r), Err(FrameError::Truncated)));
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(read_frame(&mut r), Err(FrameError::Truncated)));
        let mut r: &[u8] = &[];
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn wanted_never_asks_past_the_current_frame() {
        let mut d = FrameDecoder::new();
        assert_eq!(d.wanted(), 4);
        d.push(&[0, 0, 0, 3]);
        assert_eq!(d.wanted(), 3);
        d.push(b"\"a");
        assert_eq!(d.wanted(), 1);
    }

    #[test]
    fn malformed_json_is_named() {
        let err = decode::<u32>(b"{nope").unwrap_err();
        assert_eq!(err.to_string(), "malformed message");
        assert!(
            std::error::Error::source(&err).is_some(),
            "the JSON error is kept as the cause"
        );
    }
}
