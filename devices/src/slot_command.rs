//! The disk-slot commands both transports take (vmpod-vhost-user on stdin, vmpod-vmm on its
//! control socket), one per line, each answered with one line:
//!
//!   insert SLOT PATH   puts the image PATH in disk SLOT (its index among the VM's disks)
//!   eject SLOT         empties disk SLOT
//!
//! answered `ok`, or `error: ` and why. PATH is the rest of the line, spaces included.

use std::path::{Path, PathBuf};

use crate::block::{BlockError, DiskSlot};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotCommand {
    Insert { slot: usize, image: PathBuf },
    Eject { slot: usize },
}

#[derive(Debug, thiserror::Error)]
pub enum SlotCommandError {
    #[error("empty command (insert SLOT PATH, eject SLOT)")]
    Empty,
    #[error("unknown command {0:?} (insert SLOT PATH, eject SLOT)")]
    Unknown(String),
    #[error("{0} needs a slot number")]
    MissingSlot(&'static str),
    #[error("slot {0:?} is not a number")]
    BadSlot(String),
    #[error("insert {0} needs the image's path")]
    MissingPath(usize),
    #[error("eject takes only a slot, not {0:?}")]
    Extra(String),
    #[error("no disk slot {slot}: the VM has {count}")]
    UnknownSlot { slot: usize, count: usize },
    #[error("disk {0} is writable, not a slot")]
    NotASlot(usize),
    #[error("insert {0} came without the image's open file (send it with SCM_RIGHTS)")]
    NoImageFile(usize),
    #[error("slot {slot}")]
    Image {
        slot: usize,
        #[source]
        source: BlockError,
    },
}

impl SlotCommand {
    pub fn parse(line: &str) -> Result<SlotCommand, SlotCommandError> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, rest) = line
            .trim_start()
            .split_once(' ')
            .unwrap_or((line.trim(), ""));
        let name = match verb {
            "" => return Err(SlotCommandError::Empty),
            "insert" => "insert",
            "eject" => "eject",
            other => return Err(SlotCommandError::Unknown(other.to_string())),
        };
        let (slot, rest) = rest
            .trim_start()
            .split_once(' ')
            .unwrap_or((rest.trim(), ""));
        if slot.is_empty() {
            return Err(SlotCommandError::MissingSlot(name));
        }
        let slot: usize = slot
            .parse()
            .map_err(|_| SlotCommandError::BadSlot(slot.to_string()))?;
        match name {
            "insert" if rest.trim().is_empty() => Err(SlotCommandError::MissingPath(slot)),
            "insert" => Ok(SlotCommand::Insert {
                slot,
                image: PathBuf::from(rest),
            }),
            _ if !rest.trim().is_empty() => Err(SlotCommandError::Extra(rest.to_string())),
            _ => Ok(SlotCommand::Eject { slot }),
        }
    }

    /// The command as one line (newline included); `None` for a path no line can carry.
    pub fn line(&self) -> Option<String> {
        match self {
            SlotCommand::Insert { slot, image } => {
                let path = image.to_str().filter(|p| !p.contains('\n'))?;
                Some(format!("insert {slot} {path}\n"))
            }
            SlotCommand::Eject { slot } => Some(format!("eject {slot}\n")),
        }
    }

    pub fn slot(&self) -> usize {
        match self {
            SlotCommand::Insert { slot, .. } | SlotCommand::Eject { slot } => *slot,
        }
    }

    /// As [`SlotCommand::apply`], for a backend that opens no files: an insert's image is
    /// the file that came with the command (SCM_RIGHTS), its PATH only names it.
    pub fn apply_received(
        &self,
        slots: &[Option<DiskSlot>],
        image_file: Option<std::fs::File>,
    ) -> Result<(), SlotCommandError> {
        match self {
            SlotCommand::Insert { slot: index, image } => {
                let file = image_file.ok_or(SlotCommandError::NoImageFile(*index))?;
                self.slot_of(slots)?
                    .insert_file(file, image)
                    .map(|_| ())
                    .map_err(|source| SlotCommandError::Image {
                        slot: *index,
                        source,
                    })
            }
            SlotCommand::Eject { .. } => self.apply(slots),
        }
    }

    fn slot_of<'s>(&self, slots: &'s [Option<DiskSlot>]) -> Result<&'s DiskSlot, SlotCommandError> {
        let index = self.slot();
        slots
            .get(index)
            .ok_or(SlotCommandError::UnknownSlot {
                slot: index,
                count: slots.len(),
            })?
            .as_ref()
            .ok_or(SlotCommandError::NotASlot(index))
    }

    /// Carries the command out on `slots` (one entry per disk, `None` for a writable one).
    /// The caller then announces the configuration change of disk [`SlotCommand::slot`].
    pub fn apply(&self, slots: &[Option<DiskSlot>]) -> Result<(), SlotCommandError> {
        let index = self.slot();
        let slot = self.slot_of(slots)?;
        match self {
            SlotCommand::Insert { image, .. } => {
                slot.insert(image)
                    .map(|_| ())
                    .map_err(|source| SlotCommandError::Image {
                        slot: index,
                        source,
                    })
            }
            SlotCommand::Eject { .. } => {
                slot.eject();
                Ok(())
            }
        }
    }
}

/// The answer line to a command (newline included): `ok`, or `error: ` and the whole cause.
pub fn reply(result: &Result<(), SlotCommandError>) -> String {
    match result {
        Ok(()) => "ok\n".to_string(),
        Err(e) => {
            let mut text = format!("error: {e}");
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                // Some causes are already part of their parent's message.
                let said = c.to_string();
                if !text.ends_with(&said) {
                    text += &format!(": {said}");
                }
                cause = c.source();
            }
            text.replace('\n', " ") + "\n"
        }
    }
}

/// What a reply line means: `Ok` for `ok`, the reason otherwise.
pub fn parse_reply(line: &str) -> Result<(), String> {
    match line.trim_end() {
        "ok" => Ok(()),
        other => Err(other.strip_prefix("error: ").unwrap_or(other).to_string()),
    }
}

/// Whether `path` can travel in a command line.
pub fn fits_a_line(path: &Path) -> bool {
    path.to_str().is_some_and(|p| !p.contains('\n'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Block;

    #[test]
    fn insert_and_eject_parse_with_the_path_as_the_rest_of_the_line() {
        assert_eq!(
            SlotCommand::parse("insert 3 /var/lib/my layer.erofs\n").unwrap(),
            SlotCommand::Insert {
                slot: 3,
                image: "/var/lib/my layer.erofs".into()
            }
        );
        assert_eq!(
            SlotCommand::parse("eject 11").unwrap(),
            SlotCommand::Eject { slot: 11 }
        );
        let line = SlotCommand::Insert {
            slot: 2,
            image: "/a b".into(),
        }
        .line()
        .unwrap();
        assert_eq!(SlotCommand::parse(&line).unwrap().slot(), 2);
    }

    #[test]
    fn bad_commands_say_what_is_wrong() {
        let err = |line: &str| SlotCommand::parse(line).unwrap_err().to_string();
        assert_eq!(err(""), "empty command (insert SLOT PATH, eject SLOT)");
        assert_eq!(
            err("mount 1 /x"),
            "unknown command \"mount\" (insert SLOT PATH, eject SLOT)"
        );
        assert_eq!(err("insert"), "insert needs a slot number");
        assert_eq!(err("eject x"), "slot \"x\" is not a number");
        assert_eq!(err("insert 2"), "insert 2 needs the image's path");
        assert_eq!(err("insert 2   "), "insert 2 needs the image's path");
        assert_eq!(err("eject 1 /x"), "eject takes only a slot, not \"/x\"");
    }

    #[test]
    fn unknown_slots_writable_disks_and_missing_images_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("layer.erofs");
        std::fs::write(&image, [7u8; 4096]).unwrap();
        let empty = Block::empty(Some("slot1")).unwrap();
        let slots = vec![None, Some(empty.slot())];
        let refused = |command: &str| {
            let result = SlotCommand::parse(command).unwrap().apply(&slots);
            reply(&result)
        };
        assert_eq!(refused("eject 5"), "error: no disk slot 5: the VM has 2\n");
        assert_eq!(
            refused("eject 0"),
            "error: disk 0 is writable, not a slot\n"
        );
        assert_eq!(
            refused("insert 1 /nonexistent/x.erofs"),
            "error: slot 1: disk /nonexistent/x.erofs: No such file or directory (os error 2)\n"
        );
        assert!(empty.slot().is_empty());
        let ok = format!("insert 1 {}", image.display());
        assert_eq!(refused(&ok), "ok\n");
        assert!(!empty.slot().is_empty());
        assert_eq!(refused("eject 1"), "ok\n");
        assert!(empty.slot().is_empty());
    }

    #[test]
    fn replies_read_back_as_what_they_said() {
        assert_eq!(parse_reply("ok\n"), Ok(()));
        assert_eq!(
            parse_reply("error: no disk slot 5: the VM has 2\n"),
            Err("no disk slot 5: the VM has 2".to_string())
        );
        assert!(!fits_a_line(Path::new("/a\nb")));
    }
}
