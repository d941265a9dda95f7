//! The sandbox's end of a VM's disk-slot commands (vmpod_devices::slot_command): a line out,
//! a line back, over vmpod-vhost-user's stdin and stdout (QEMU) or vmpod-vmm's control socket.

use crate::error::SlotError;
use crate::hypervisor::SlotControl;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use vmpod_devices::slot_command::{parse_reply, SlotCommand};

/// How long a backend may take to answer: it opens one file and notifies the guest.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

type Ends = (Box<dyn Write + Send>, Box<dyn BufRead + Send>);

enum Channel {
    Open(Ends),
    /// A socket the backend creates while it starts, connected on the first command.
    Socket(PathBuf),
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
            channel: Mutex::new(Channel::Open((
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

fn connect(path: &PathBuf) -> std::io::Result<Ends> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(ANSWER_LIMIT))?;
    let reader = stream.try_clone()?;
    Ok((Box::new(stream), Box::new(BufReader::new(reader))))
}

impl SlotControl for LineControl {
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
            *channel = Channel::Open(connect(path).map_err(SlotError::Backend)?);
        }
        let Channel::Open((to, from)) = &mut *channel else {
            unreachable!("connected above");
        };
        to.write_all(line.as_bytes())
            .and_then(|()| to.flush())
            .map_err(SlotError::Backend)?;
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
}
