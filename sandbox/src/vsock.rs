//! The host end of hybrid vsock: a Unix socket per VM, `CONNECT <port>` to reach a guest port.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use vmpod_devices::vsock::hybrid;

/// How long the device may take to answer a CONNECT. A guest that never answers (a request
/// that raced with its listener coming up) must not hang the caller: it retries instead.
const CONNECT_REPLY: Duration = Duration::from_secs(5);

/// A connection to guest `port` through the VM's hybrid vsock socket; `None` while nothing in
/// the guest listens there (the device then closes the connection instead of answering OK).
pub fn connect(uds: &Path, port: u32) -> Option<UnixStream> {
    let mut stream = UnixStream::connect(uds).ok()?;
    stream
        .write_all(hybrid::connect_line(port).as_bytes())
        .ok()?;
    stream.set_read_timeout(Some(CONNECT_REPLY)).ok()?;
    let line = hybrid::read_line(&mut stream)?;
    stream.set_read_timeout(None).ok()?;
    hybrid::parse_ok(&line).is_ok().then_some(stream)
}
