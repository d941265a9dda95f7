//! The disk-slot control socket (`disk_control` in the config): `insert SLOT PATH` and
//! `eject SLOT` lines (vmpod_devices::slot_command), each answered with `ok` or `error: ...`
//! once the slot holds its new image and the guest's driver has been sent a config-change
//! interrupt, so it reads the new capacity (0 after an eject).
//!
//! Served on the event-loop thread: a command costs opening and measuring one file; nothing
//! here waits on a client (sockets are non-blocking, a client that does not read its answers
//! is dropped).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmpod_devices::block::DiskSlot;
use vmpod_devices::slot_command::{reply, SlotCommand};

use crate::devices::virtio_mmio::MmioTransport;

/// A command line longer than this is no command: its client is dropped.
const MAX_LINE: usize = 8192;

#[derive(Debug, thiserror::Error)]
#[error("disk control socket {path}")]
pub struct DiskControlError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// One disk: the handle to its image and the transport that tells the driver of a change.
pub struct ControlledDisk {
    pub slot: Option<DiskSlot>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

pub struct DiskControl {
    path: PathBuf,
    listener: UnixListener,
    slots: Vec<Option<DiskSlot>>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    clients: HashMap<RawFd, Client>,
}

struct Client {
    stream: UnixStream,
    pending: Vec<u8>,
}

impl DiskControl {
    /// Listens on `path` (which must not exist).
    pub fn bind(path: &Path, disks: Vec<ControlledDisk>) -> Result<DiskControl, DiskControlError> {
        let error = |source| DiskControlError {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(error)?;
        listener.set_nonblocking(true).map_err(error)?;
        let (slots, transports) = disks.into_iter().map(|d| (d.slot, d.transport)).unzip();
        Ok(DiskControl {
            path: path.to_path_buf(),
            listener,
            slots,
            transports,
            clients: HashMap::new(),
        })
    }

    fn execute(&self, line: &str) -> String {
        let result = SlotCommand::parse(line).and_then(|command| {
            command.apply(&self.slots)?;
            self.transports[command.slot()]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .announce_config_change();
            Ok(())
        });
        reply(&result)
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if let Err(e) = ops.add(Events::new(&stream, EventSet::IN)) {
                        tracing::warn!("disk control: cannot watch a client: {e:?}");
                        continue;
                    }
                    self.clients.insert(
                        stream.as_raw_fd(),
                        Client {
                            stream,
                            pending: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Reads what a client sent and answers each complete line; false when it is to go.
    fn serve(&mut self, fd: RawFd) -> bool {
        let Some(mut client) = self.clients.remove(&fd) else {
            return true;
        };
        let keep = self.serve_client(&mut client);
        // Closed only after the caller has stopped watching it.
        self.clients.insert(fd, client);
        keep
    }

    fn serve_client(&self, client: &mut Client) -> bool {
        let mut buf = [0u8; 1024];
        let open = loop {
            match client.stream.read(&mut buf) {
                Ok(0) => break false,
                Ok(n) => client.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
                Err(_) => break false,
            }
        };
        while let Some(end) = client.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = client.pending.drain(..=end).collect();
            let answer = match std::str::from_utf8(&line) {
                Ok(text) => self.execute(text),
                Err(_) => "error: a command must be UTF-8\n".to_string(),
            };
            // An answer is a few bytes, which an empty socket buffer always takes; a client
            // whose buffer is full does not read its answers and is dropped.
            if client.stream.write_all(answer.as_bytes()).is_err() {
                return false;
            }
        }
        open && client.pending.len() <= MAX_LINE
    }
}

impl Drop for DiskControl {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl MutEventSubscriber for DiskControl {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
        } else if !self.serve(fd) || events.event_set().contains(EventSet::HANG_UP) {
            let _ = ops.remove(Events::new_raw(fd, EventSet::IN));
            self.clients.remove(&fd);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            tracing::error!("disk control: cannot watch the socket: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;
    use vmpod_devices::block::Block;

    fn capacity(transport: &Arc<Mutex<MmioTransport>>) -> u64 {
        let mut bytes = [0u8; 8];
        for (i, chunk) in bytes.chunks_mut(4).enumerate() {
            transport.lock().unwrap().read(0x100 + 4 * i as u64, chunk);
        }
        u64::from_le_bytes(bytes)
    }

    #[test]
    fn commands_change_the_slot_behind_the_transport_and_bad_ones_are_answered() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("layer.erofs");
        std::fs::write(&image, [1u8; 8192]).unwrap();
        let block = Block::empty(Some("slot0")).unwrap();
        let slot = block.slot();
        let mem = crate::memory::create_guest_memory(16 << 20).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let transport = Arc::new(Mutex::new(MmioTransport::new(Box::new(block), mem, irq)));
        let socket = dir.path().join("disks.sock");
        let control = DiskControl::bind(
            &socket,
            vec![ControlledDisk {
                slot: Some(slot),
                transport: transport.clone(),
            }],
        )
        .unwrap();
        assert_eq!(capacity(&transport), 0);
        let insert = format!("insert 0 {}\n", image.display());
        assert_eq!(control.execute(&insert), "ok\n");
        assert_eq!(capacity(&transport), 16);
        assert_eq!(control.execute("eject 0\n"), "ok\n");
        assert_eq!(capacity(&transport), 0);
        assert_eq!(
            control.execute("eject 1\n"),
            "error: no disk slot 1: the VM has 1\n"
        );
        assert!(control
            .execute("insert 0\n")
            .starts_with("error: insert 0 needs"));
        assert!(socket.exists());
        drop(control);
        assert!(!socket.exists(), "the socket goes with the control");
    }
}
