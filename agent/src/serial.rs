//! The agent's channel where the VM has a virtio-serial port named [`PORT_NAME`] instead of a
//! vsock device (a QEMU template: its vsock could not be saved). The server listens on three Unix
//! sockets of its own as usual, and a thread bridges each stream the host opens over the port
//! (vmpod_protocol::mux) to one of them, so the server cannot tell the channels apart.

use std::io::BufReader;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmpod_protocol::mux::GuestMux;
use vmpod_protocol::{AGENT_PORT, FORWARD_PORT, STDIO_PORT};

pub const PORT_NAME: &str = "vmpod.agent";
const CONTROL_SOCKET: &str = "/run/vmpod-agent/control.sock";
const STDIO_SOCKET: &str = "/run/vmpod-agent/stdio.sock";
const FORWARD_SOCKET: &str = "/run/vmpod-agent/forward.sock";

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

fn listener(path: &str) -> std::io::Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener.into())
}

/// The server's listeners, and the bridge from `port` to them on a thread.
pub fn listen(port: &Path) -> std::io::Result<(OwnedFd, OwnedFd, Option<OwnedFd>)> {
    std::fs::create_dir_all("/run/vmpod-agent")?;
    let control = listener(CONTROL_SOCKET)?;
    let stdio = listener(STDIO_SOCKET)?;
    let forward = listener(FORWARD_SOCKET)?;
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(port)?;
    let writer = device.try_clone()?;
    std::thread::spawn(move || bridge(device, writer));
    Ok((control, stdio, Some(forward)))
}

fn bridge(device: std::fs::File, writer: std::fs::File) {
    let mux = GuestMux::new(Box::new(writer));
    let open = |port: u32| match port {
        AGENT_PORT => UnixStream::connect(CONTROL_SOCKET),
        STDIO_PORT => UnixStream::connect(STDIO_SOCKET),
        FORWARD_PORT => UnixStream::connect(FORWARD_SOCKET),
        other => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("nothing listens on port {other}"),
        )),
    };
    let mut reader = BufReader::new(device);
    loop {
        if let Err(e) = mux.serve(&mut reader, &open) {
            eprintln!("vmpod-agent: serial channel: {e}; waiting for the host to start over");
        }
        // While no host is connected a read returns at once with nothing: a new host (a
        // restored clone's) shows up as data again.
        std::thread::sleep(Duration::from_millis(2));
    }
}
