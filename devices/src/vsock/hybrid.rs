//! The hybrid vsock handshake on the host's Unix socket (Firecracker's convention): a host
//! client writes `CONNECT <port>\n`, and once the guest accepts it reads `OK <port>\n`; after
//! that the stream is raw bytes. Only the line format lives here, as plain functions over
//! bytes, so the device (muxer.rs), vmpod-sandbox's client and its serial-mux server agree on
//! one format and one length limit.

use std::io::Read;

/// The longest handshake line, newline included. `CONNECT 4294967295\r\n` is 20 bytes; a line
/// this long without a newline is not a handshake, and the reader stops there instead of
/// buffering whatever a confused client sends.
pub const MAX_LINE: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// The line is over MAX_LINE bytes.
    #[error("handshake line longer than {MAX_LINE} bytes")]
    TooLong,
    /// Ended (or reached the limit) before its newline.
    #[error("handshake line without a newline")]
    NoNewline,
    /// Not the expected `CONNECT ` or `OK ` line.
    #[error("not a {0:?} line")]
    WrongVerb(&'static str),
    /// The port is not a number in u32's range.
    #[error("port {0:?} is not a number from 0 to 4294967295")]
    BadPort(String),
}

/// `CONNECT <port>\n`, what a host client sends.
pub fn connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// `OK <port>\n`, the answer once the guest accepted.
pub fn ok_line(port: u32) -> String {
    format!("OK {port}\n")
}

/// The guest port of a host client's `CONNECT <port>\n`.
pub fn parse_connect(line: &[u8]) -> Result<u32, HandshakeError> {
    parse(line, "CONNECT ")
}

/// The port of the device's `OK <port>\n` answer.
pub fn parse_ok(line: &[u8]) -> Result<u32, HandshakeError> {
    parse(line, "OK ")
}

/// One line, newline included, read byte by byte: what follows it belongs to the caller.
/// Stops at MAX_LINE bytes (the parse then refuses it); `None` on end of stream or an error,
/// a read timeout included.
pub fn read_line(stream: &mut impl Read) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') && line.len() < MAX_LINE {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    Some(line)
}

fn parse(line: &[u8], verb: &'static str) -> Result<u32, HandshakeError> {
    if line.len() > MAX_LINE {
        return Err(HandshakeError::TooLong);
    }
    let line = line.strip_suffix(b"\n").ok_or(HandshakeError::NoNewline)?;
    // Tolerated for clients that end lines the network way.
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let port = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.strip_prefix(verb))
        .ok_or(HandshakeError::WrongVerb(verb.trim_end()))?;
    port.parse::<u32>()
        .map_err(|_| HandshakeError::BadPort(port.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_lines_give_their_port_and_round_trip() {
        assert_eq!(parse_connect(b"CONNECT 52\n"), Ok(52));
        assert_eq!(parse_connect(b"CONNECT 52\r\n"), Ok(52));
        assert_eq!(parse_ok(b"OK 1073741824\n"), Ok(1 << 30));
        assert_eq!(
            parse_connect(connect_line(u32::MAX).as_bytes()),
            Ok(u32::MAX)
        );
        assert_eq!(parse_ok(ok_line(0).as_bytes()), Ok(0));
    }

    #[test]
    fn a_line_without_its_newline_is_refused_even_within_the_limit() {
        assert_eq!(parse_connect(b"CONNECT 52"), Err(HandshakeError::NoNewline));
        assert_eq!(parse_ok(b"OK 52"), Err(HandshakeError::NoNewline));
    }

    #[test]
    fn an_over_long_line_is_refused() {
        let long = format!("CONNECT {}\n", "0".repeat(MAX_LINE));
        assert_eq!(parse_connect(long.as_bytes()), Err(HandshakeError::TooLong));
        // The reader stops at the limit, so a flood is never buffered and never parses.
        let flood = [b'A'; 100];
        let line = read_line(&mut &flood[..]).unwrap();
        assert_eq!(line.len(), MAX_LINE);
        assert_eq!(parse_connect(&line), Err(HandshakeError::NoNewline));
    }

    #[test]
    fn a_non_numeric_port_is_refused() {
        assert!(matches!(
            parse_connect(b"CONNECT x\n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert!(matches!(
            parse_ok(b"OK \n"),
            Err(HandshakeError::BadPort(_))
        ));
    }

    #[test]
    fn a_port_beyond_u32_is_refused() {
        assert!(matches!(
            parse_connect(b"CONNECT 4294967296\n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert!(matches!(
            parse_ok(b"OK -1\n"),
            Err(HandshakeError::BadPort(_))
        ));
    }

    #[test]
    fn trailing_junk_or_the_wrong_verb_is_refused() {
        assert!(matches!(
            parse_connect(b"CONNECT 52 x\n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert!(matches!(
            parse_connect(b"CONNECT 52 \n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert_eq!(
            parse_connect(b"HELLO 52\n"),
            Err(HandshakeError::WrongVerb("CONNECT"))
        );
        assert_eq!(
            parse_ok(b"CONNECT 52\n"),
            Err(HandshakeError::WrongVerb("OK"))
        );
    }

    #[test]
    fn read_line_leaves_what_follows_the_newline_to_the_caller() {
        let mut input = &b"OK 7\nraw bytes"[..];
        assert_eq!(read_line(&mut input).as_deref(), Some(&b"OK 7\n"[..]));
        assert_eq!(input, b"raw bytes");
        assert_eq!(read_line(&mut &b"OK"[..]), None);
    }
}
