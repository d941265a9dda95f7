//! The disk-slot control socket (`disk_control` in the config): `insert SLOT PATH` and
//! `eject SLOT` lines (vmpod_devices::slot_command), each answered with `ok` or `error: ...`
//! once the slot holds its new image and the guest's driver has been sent a config-change
//! interrupt, so it reads the new capacity (0 after an eject).
//!
//! An insert's image comes as an open file with its line (SCM_RIGHTS, in the same sendmsg as
//! the line's first byte); PATH only names it. The VMM opens no file once the guest runs (its
//! seccomp filter, and a jail where the path would not exist), so an insert without a file
//! is refused by name.
//!
//! Served on the event-loop thread: a command costs measuring one file; nothing here waits on
//! a client (sockets are non-blocking, a client that does not read its answers is dropped).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
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
    /// Files received, each with the offset in `pending` of a byte of the line it came with.
    files: VecDeque<(usize, File)>,
}

impl Client {
    /// Takes the line ending at `end` (inclusive) and the file that came with it, if any.
    fn take_line(&mut self, end: usize) -> (Vec<u8>, Option<File>) {
        let line: Vec<u8> = self.pending.drain(..=end).collect();
        let mut file = None;
        while self.files.front().is_some_and(|(at, _)| *at <= end) {
            // A second file for one line is the client's mistake: it is closed unused.
            let (_, received) = self.files.pop_front().expect("front exists");
            file.get_or_insert(received);
        }
        for (at, _) in &mut self.files {
            *at -= end + 1;
        }
        (line, file)
    }
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

    fn execute(&self, line: &str, image: Option<File>) -> String {
        let result = SlotCommand::parse(line).and_then(|command| {
            command.apply_received(&self.slots, image)?;
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
                            files: VecDeque::new(),
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
            // A stream socket ends a read right after the message that carries a file (its
            // earlier messages may come in the same read), so the file belongs to the line
            // holding the last byte read with it.
            match client.stream.recv_with_fd(&mut buf) {
                Ok((0, _)) => break false,
                Ok((n, file)) => {
                    client.pending.extend_from_slice(&buf[..n]);
                    if let Some(file) = file {
                        client.files.push_back((client.pending.len() - 1, file));
                    }
                }
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) if e.errno() == libc::EAGAIN => break true,
                Err(_) => break false,
            }
        };
        while let Some(end) = client.pending.iter().position(|b| *b == b'\n') {
            let (line, file) = client.take_line(end);
            let answer = match std::str::from_utf8(&line) {
                Ok(text) => self.execute(text, file),
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
        let file = File::open(&image).unwrap();
        assert_eq!(control.execute(&insert, Some(file)), "ok\n");
        assert_eq!(capacity(&transport), 16);
        assert_eq!(control.execute("eject 0\n", None), "ok\n");
        assert_eq!(capacity(&transport), 0);
        assert_eq!(
            control.execute(&insert, None),
            "error: insert 0 came without the image's open file (send it with SCM_RIGHTS)\n"
        );
        assert_eq!(capacity(&transport), 0);
        assert_eq!(
            control.execute("eject 1\n", None),
            "error: no disk slot 1: the VM has 1\n"
        );
        assert!(control
            .execute("insert 0\n", None)
            .starts_with("error: insert 0 needs"));
        assert!(socket.exists());
        drop(control);
        assert!(!socket.exists(), "the socket goes with the control");
    }

    #[test]
    fn a_file_sent_with_its_line_fills_that_slot_and_a_line_without_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("layer.erofs");
        std::fs::write(&image, [1u8; 4096]).unwrap();
        let block = Block::empty(Some("slot0")).unwrap();
        let slot = block.slot();
        let mem = crate::memory::create_guest_memory(16 << 20).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let transport = Arc::new(Mutex::new(MmioTransport::new(Box::new(block), mem, irq)));
        let control = DiskControl::bind(
            &dir.path().join("disks.sock"),
            vec![ControlledDisk {
                slot: Some(slot),
                transport: transport.clone(),
            }],
        )
        .unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut client = Client {
            stream: ours,
            pending: Vec::new(),
            files: VecDeque::new(),
        };
        // An insert without a file, then one with it, read in one go: the file is the
        // second line's.
        let line = format!("insert 0 {}\n", image.display());
        (&theirs).write_all(line.as_bytes()).unwrap();
        let file = File::open(&image).unwrap();
        let sent = theirs
            .send_with_fd(line.as_bytes(), file.as_raw_fd())
            .unwrap();
        assert_eq!(sent, line.len());
        drop(file);
        assert!(control.serve_client(&mut client));
        let mut answers = String::new();
        theirs.set_nonblocking(true).unwrap();
        let _ = std::io::Read::read_to_string(&mut &theirs, &mut answers);
        assert_eq!(
            answers,
            "error: insert 0 came without the image's open file (send it with SCM_RIGHTS)\nok\n"
        );
        assert_eq!(capacity(&transport), 8);
    }
}
