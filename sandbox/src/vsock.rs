//! The host end of hybrid vsock: a Unix socket per VM, `CONNECT <port>` to reach a guest port.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A connection to guest `port` through the VM's hybrid vsock socket; `None` while nothing in
/// the guest listens there (the device then closes the connection instead of answering OK).
pub fn connect(uds: &Path, port: u32) -> Option<UnixStream> {
    let mut stream = UnixStream::connect(uds).ok()?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .ok()?;
    // Byte by byte: what follows the line belongs to the caller.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') && line.len() < 64 {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    line.starts_with(b"OK ").then_some(stream)
}
