//! The host end of hybrid vsock: a Unix socket per VM, `CONNECT <port>` to reach a guest port.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long the device may take to answer a CONNECT. A guest that never answers (a request
/// that raced with its listener coming up) must not hang the caller: it retries instead.
const CONNECT_REPLY: Duration = Duration::from_secs(5);

/// A connection to guest `port` through the VM's hybrid vsock socket; `None` while nothing in
/// the guest listens there (the device then closes the connection instead of answering OK).
pub fn connect(uds: &Path, port: u32) -> Option<UnixStream> {
    let mut stream = UnixStream::connect(uds).ok()?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .ok()?;
    stream.set_read_timeout(Some(CONNECT_REPLY)).ok()?;
    // Byte by byte: what follows the line belongs to the caller.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') && line.len() < 64 {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    stream.set_read_timeout(None).ok()?;
    line.starts_with(b"OK ").then_some(stream)
}
