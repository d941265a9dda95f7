//! The sandbox's end of a VM's disk-slot commands (vmpod_devices::slot_command): a line out,
//! a line back, over vmpod-vhost-user's stdin and stdout (QEMU) or vmpod-vmm's control socket.
//! On the socket an insert's image travels open, with its line (SCM_RIGHTS): vmpod-vmm opens
//! no file once its guest runs.

use crate::error::SlotError;
use crate::hypervisor::SlotControl;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use vmpod_devices::slot_command::{parse_reply, SlotCommand};

/// How long a backend may take to answer: it opens one file and notifies the guest.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

type Ends = (Box<dyn Write + Send>, Box<dyn BufRead + Send>);

enum Channel {
    /// vmpod-vhost-user's stdin and stdout: an image goes by its path.
    Pipe(Ends),
    /// vmpod-vmm's socket, which it creates while it starts, connected on the first command.
    Socket(PathBuf),
    Connected {
        stream: UnixStream,
        answers: BufReader<UnixStream>,
    },
}

/// One command at a time: the lock keeps each answer with its command.
pub struct LineControl {
    channel: Mutex<Channel>,
}

impl LineControl {
    pub fn pipe(
        to: impl Write + Send + 'static,
        from: impl std::io::Read + Send + 'static,
    ) -> Self {
        LineControl {
            channel: Mutex::new(Channel::Pipe((
                Box::new(to),
                Box::new(BufReader::new(from)),
            ))),
        }
    }

    pub fn socket(path: PathBuf) -> Self {
        LineControl {
            channel: Mutex::new(Channel::Socket(path)),
        }
    }
}

fn connect(path: &PathBuf) -> std::io::Result<Channel> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(ANSWER_LIMIT))?;
    let answers = BufReader::new(stream.try_clone()?);
    Ok(Channel::Connected { stream, answers })
}

/// Sends `line` with `image` attached to it; the rest of a line the socket did not take at
/// once follows without it.
fn send_with_file(stream: &UnixStream, line: &[u8], image: &File) -> std::io::Result<()> {
    let sent = stream
        .send_with_fd(line, image.as_raw_fd())
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    (&mut &*stream).write_all(&line[sent..])
}

impl SlotControl for LineControl {
    fn takes_open_files(&self) -> bool {
        let channel = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        !matches!(*channel, Channel::Pipe(_))
    }

    fn send(&self, command: &SlotCommand) -> Result<(), SlotError> {
        let line = command.line().ok_or_else(|| match command {
            SlotCommand::Insert { image, .. } => SlotError::UnsendablePath {
                path: image.clone(),
            },
            SlotCommand::Eject { .. } => {
                SlotError::Backend(std::io::ErrorKind::InvalidInput.into())
            }
        })?;
        let mut channel = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        if let Channel::Socket(path) = &*channel {
            *channel = connect(path).map_err(SlotError::Backend)?;
        }
        let from: &mut dyn BufRead = match &mut *channel {
            Channel::Pipe((to, from)) => {
                to.write_all(line.as_bytes())
                    .and_then(|()| to.flush())
                    .map_err(SlotError::Backend)?;
                from
            }
            Channel::Connected { stream, answers } => {
                match command {
                    SlotCommand::Insert { image, .. } => {
                        let file = File::open(image).map_err(|source| SlotError::Image {
                            path: image.clone(),
                            source,
                        })?;
                        send_with_file(stream, line.as_bytes(), &file)
                    }
                    SlotCommand::Eject { .. } => (&mut &*stream).write_all(line.as_bytes()),
                }
                .map_err(SlotError::Backend)?;
                answers
            }
            Channel::Socket(_) => unreachable!("connected above"),
        };
        let mut answer = String::new();
        let read = from.read_line(&mut answer).map_err(SlotError::Backend)?;
        if read == 0 {
            return Err(SlotError::Backend(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "it closed its end (has the VM stopped?)",
            )));
        }
        parse_reply(&answer).map_err(|reason| SlotError::Refused {
            command: line.trim_end().to_string(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_read_back_and_a_refusal_names_the_command() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let backend = std::thread::spawn(move || {
            let mut lines = BufReader::new(theirs.try_clone().unwrap()).lines();
            let mut out = theirs;
            let first = lines.next().unwrap().unwrap();
            assert_eq!(first, "insert 2 /l.erofs");
            out.write_all(b"ok\n").unwrap();
            let second = lines.next().unwrap().unwrap();
            assert_eq!(second, "eject 9");
            out.write_all(b"error: no disk slot 9: the VM has 3\n")
                .unwrap();
        });
        let control = LineControl::pipe(ours.try_clone().unwrap(), ours);
        control
            .send(&SlotCommand::Insert {
                slot: 2,
                image: "/l.erofs".into(),
            })
            .unwrap();
        let err = control.send(&SlotCommand::Eject { slot: 9 }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the VM's disk backend refused `eject 9`: no disk slot 9: the VM has 3"
        );
        backend.join().unwrap();
        let err = control.send(&SlotCommand::Eject { slot: 1 }).unwrap_err();
        assert!(matches!(err, SlotError::Backend(_)), "{err}");
    }

    #[test]
    fn on_a_socket_an_insert_carries_its_image_open_and_an_eject_carries_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("layer.erofs");
        std::fs::write(&image, b"image bytes").unwrap();
        let socket = dir.path().join("disks.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let backend = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let (n, file) = stream.recv_with_fd(&mut buf).unwrap();
            let mut content = String::new();
            std::io::Read::read_to_string(&mut file.expect("an open image"), &mut content).unwrap();
            (&stream).write_all(b"ok\n").unwrap();
            let (m, none) = stream.recv_with_fd(&mut buf[n..]).unwrap();
            (&stream).write_all(b"ok\n").unwrap();
            (
                String::from_utf8_lossy(&buf[..n + m]).into_owned(),
                content,
                none.is_none(),
            )
        });
        let control = LineControl::socket(socket);
        control
            .send(&SlotCommand::Insert {
                slot: 1,
                image: image.clone(),
            })
            .unwrap();
        control.send(&SlotCommand::Eject { slot: 1 }).unwrap();
        let (lines, content, eject_without_file) = backend.join().unwrap();
        assert_eq!(lines, format!("insert 1 {}\neject 1\n", image.display()));
        assert_eq!(content, "image bytes");
        assert!(eject_without_file);
    }
}
