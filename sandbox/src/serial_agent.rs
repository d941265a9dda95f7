//! The host end of the agent's serial channel (a QEMU template's VM has no vsock device, see
//! vmpod_protocol::mux): QEMU's chardev connects to a socket of ours, and the VM's usual
//! hybrid vsock socket is served on top of it, so `Endpoint` and every client work unchanged.

use crate::error::{io, SandboxError};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmpod_devices::vsock::hybrid;
use vmpod_protocol::mux::HostMux;

/// The virtio-serial port's name, which the agent looks for.
pub const PORT_NAME: &str = "vmpod.agent";

/// How long the guest may take to accept a stream. Its agent answers from the one event loop
/// that also creates containers, so an open that arrives during a create waits for it (on
/// TCG, seconds); a port nobody listens on is refused at once all the same.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct SerialAgent {
    chardev: PathBuf,
    uds: PathBuf,
    mux: Arc<Mutex<Option<HostMux>>>,
    stopping: Arc<AtomicBool>,
}

impl SerialAgent {
    /// Listens on `chardev` (for QEMU) and `uds` (for clients) before QEMU starts.
    pub fn listen(chardev: &Path, uds: &Path) -> Result<SerialAgent, SandboxError> {
        let qemu_side =
            UnixListener::bind(chardev).map_err(io(format!("listen on {}", chardev.display())))?;
        let clients =
            UnixListener::bind(uds).map_err(io(format!("listen on {}", uds.display())))?;
        let agent = SerialAgent {
            chardev: chardev.to_path_buf(),
            uds: uds.to_path_buf(),
            mux: Arc::new(Mutex::new(None)),
            stopping: Arc::new(AtomicBool::new(false)),
        };
        let (mux, stopping) = (Arc::clone(&agent.mux), Arc::clone(&agent.stopping));
        std::thread::spawn(move || {
            // QEMU connects once, as it starts.
            let Ok((link, _)) = qemu_side.accept() else {
                return;
            };
            if stopping.load(Ordering::Acquire) {
                return;
            }
            if let Ok(m) = HostMux::start(link) {
                *mux.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
            }
        });
        let (mux, stopping) = (Arc::clone(&agent.mux), Arc::clone(&agent.stopping));
        std::thread::spawn(move || {
            for client in clients.incoming() {
                if stopping.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                let mux = Arc::clone(&mux);
                std::thread::spawn(move || serve_client(client, &mux));
            }
        });
        Ok(agent)
    }

    /// Waits for the open streams to end and hangs up on the guest: the quiet state a template
    /// is saved in (the agent forgets every stream; a clone's new host starts afresh).
    pub fn hang_up(&self) -> Result<(), SandboxError> {
        let mux = self.mux.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mux) = mux else {
            return Err(SandboxError::Invalid(
                "QEMU never connected the agent's serial port".into(),
            ));
        };
        if !mux.wait_idle(Duration::from_secs(5)) {
            return Err(SandboxError::Invalid(format!(
                "{} agent stream(s) stayed open; a template must be saved without any",
                mux.streams()
            )));
        }
        mux.shut_down();
        Ok(())
    }

    fn stop(&self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(mux) = self.mux.lock().unwrap_or_else(|p| p.into_inner()).take() {
            mux.shut_down();
        }
        // Wake both accept loops so their threads end and the listeners close.
        let _ = UnixStream::connect(&self.chardev);
        let _ = UnixStream::connect(&self.uds);
    }
}

impl Drop for SerialAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One client of the hybrid vsock socket: `CONNECT <port>\n`, then `OK <n>\n` and the stream.
fn serve_client(mut client: UnixStream, mux: &Mutex<Option<HostMux>>) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let Some(line) = hybrid::read_line(&mut client) else {
        return;
    };
    let Ok(port) = hybrid::parse_connect(&line) else {
        return;
    };
    let _ = client.set_read_timeout(None);
    let Some(m) = mux.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
        return;
    };
    let Ok(ours) = client.try_clone() else { return };
    if let Ok(true) = m.open(port, ours, OPEN_TIMEOUT) {
        let _ = client.write_all(hybrid::ok_line(port).as_bytes());
    }
}
