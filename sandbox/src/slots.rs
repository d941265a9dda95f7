//! A running sandbox's spare disk slots: images attached to the VM after it started (a pod's
//! later containers bring layers the VM did not boot with).
//!
//! Each slot is a read-only virtio-blk disk with a fixed serial (`slot<index>`); inserting an
//! image gives it the image's capacity and ejecting it capacity 0, each change announced to
//! the guest's driver with a config-change interrupt (Firecracker's "update a drive's backing
//! file"). The guest finds a disk by its serial (agent/src/rootfs.rs) and drops its cached
//! blocks before mounting it, so an image inserted where another was never reads stale data.
//! Who uses which image, and when a layer shared by several containers may go, is the
//! caller's to count.

use crate::error::{SandboxError, SlotError};
use crate::hypervisor::{slot_serial, SlotControl};
use std::path::Path;
use std::sync::{Arc, Mutex};
use vmpod_devices::slot_command::SlotCommand;

/// A handle to a sandbox's spare slots, for any thread (the shim's RPC threads); cloning it
/// shares the slots. Commands are carried out one at a time.
#[derive(Clone)]
pub struct DiskSlots {
    inner: Arc<Inner>,
}

struct Inner {
    sandbox: String,
    control: Arc<dyn SlotControl>,
    /// The index of the first spare slot among the VM's disks.
    first: usize,
    /// Which spare slots hold an image.
    in_use: Mutex<Vec<bool>>,
}

impl DiskSlots {
    /// `count` spare slots starting at disk `first` of the VM.
    pub(crate) fn new(
        sandbox: &str,
        control: Arc<dyn SlotControl>,
        first: usize,
        count: usize,
    ) -> DiskSlots {
        DiskSlots {
            inner: Arc::new(Inner {
                sandbox: sandbox.to_string(),
                control,
                first,
                in_use: Mutex::new(vec![false; count]),
            }),
        }
    }

    /// How many spare slots the VM has, used or not.
    pub fn capacity(&self) -> usize {
        self.in_use().len()
    }

    fn in_use(&self) -> std::sync::MutexGuard<'_, Vec<bool>> {
        self.inner.in_use.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches `image` read-only to a free slot; returns the serial the guest finds it by
    /// (a `Rootfs` layer of a container).
    pub fn insert(&self, image: &Path) -> Result<String, SandboxError> {
        check_image(image)?;
        let mut in_use = self.in_use();
        let sandbox = || self.inner.sandbox.clone();
        if in_use.is_empty() {
            return Err(SlotError::NoSpareSlots { sandbox: sandbox() }.into());
        }
        let free = in_use
            .iter()
            .position(|used| !used)
            .ok_or_else(|| SlotError::Full {
                sandbox: sandbox(),
                count: in_use.len(),
            })?;
        let slot = self.inner.first + free;
        self.inner.control.send(&SlotCommand::Insert {
            slot,
            image: image.to_path_buf(),
        })?;
        in_use[free] = true;
        Ok(slot_serial(slot))
    }

    /// Empties the slot `serial` names (as [`DiskSlots::insert`] returned it), for reuse. The
    /// guest must have stopped using the disk: its capacity drops to 0.
    pub fn eject(&self, serial: &str) -> Result<(), SandboxError> {
        let mut in_use = self.in_use();
        let unknown = || SlotError::UnknownSerial {
            sandbox: self.inner.sandbox.clone(),
            serial: serial.to_string(),
        };
        let slot: usize = serial
            .strip_prefix("slot")
            .and_then(|n| n.parse().ok())
            .filter(|n: &usize| n.to_string() == serial["slot".len()..])
            .ok_or_else(unknown)?;
        let index = slot
            .checked_sub(self.inner.first)
            .filter(|i| in_use.get(*i) == Some(&true))
            .ok_or_else(unknown)?;
        self.inner.control.send(&SlotCommand::Eject { slot })?;
        in_use[index] = false;
        Ok(())
    }
}

/// Refuses, by name, an image the backend could not open, before any slot is touched.
fn check_image(image: &Path) -> Result<(), SlotError> {
    use std::os::unix::fs::FileTypeExt;
    let error = |source| SlotError::Image {
        path: image.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(image).map_err(error)?;
    let kind = file.metadata().map_err(error)?.file_type();
    if kind.is_file() || kind.is_block_device() {
        Ok(())
    } else {
        Err(SlotError::NotADisk {
            path: image.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records commands; refuses an insert into slot `refuse`.
    struct Recorder {
        sent: Mutex<Vec<String>>,
        refuse: usize,
    }

    impl SlotControl for Recorder {
        fn send(&self, command: &SlotCommand) -> Result<(), SlotError> {
            let line = command.line().unwrap_or_default();
            self.sent.lock().unwrap().push(line.trim().to_string());
            match command {
                SlotCommand::Insert { slot, .. } if *slot == self.refuse => {
                    Err(SlotError::Refused {
                        command: line.trim().to_string(),
                        reason: "no".into(),
                    })
                }
                _ => Ok(()),
            }
        }
    }

    fn slots(count: usize, refuse: usize) -> (DiskSlots, Arc<Recorder>) {
        let recorder = Arc::new(Recorder {
            sent: Mutex::new(Vec::new()),
            refuse,
        });
        (
            DiskSlots::new("0123abcd", recorder.clone(), 2, count),
            recorder,
        )
    }

    #[test]
    fn slots_fill_in_order_are_reused_after_eject_and_run_out_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("l.erofs");
        std::fs::write(&image, b"erofs").unwrap();
        let (slots, recorder) = slots(2, usize::MAX);
        assert_eq!(slots.insert(&image).unwrap(), "slot2");
        assert_eq!(slots.insert(&image).unwrap(), "slot3");
        let full = slots.insert(&image).unwrap_err().to_string();
        assert_eq!(
            full,
            "all 2 spare disk slots of sandbox 0123abcd are in use"
        );
        slots.eject("slot2").unwrap();
        assert_eq!(slots.clone().insert(&image).unwrap(), "slot2");
        let sent = recorder.sent.lock().unwrap().clone();
        let insert = format!("insert 2 {}", image.display());
        assert_eq!(sent[0], insert);
        assert_eq!(sent[2], "eject 2");
    }

    #[test]
    fn unknown_serials_and_bad_images_are_refused_without_a_command() {
        let dir = tempfile::tempdir().unwrap();
        let (slots, recorder) = slots(2, usize::MAX);
        for serial in ["slot2", "slot1", "slot9", "layer0", "slot02", "slot"] {
            let err = slots.eject(serial).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("sandbox 0123abcd has no inserted disk with serial {serial:?}")
            );
        }
        let missing = dir.path().join("gone.erofs");
        let err = slots.insert(&missing).unwrap_err();
        assert_eq!(
            crate::error::chain(&err),
            format!(
                "disk image {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
        let err = slots.insert(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("is not a regular file or block device"),
            "{err}"
        );
        assert!(recorder.sent.lock().unwrap().is_empty());
    }

    #[test]
    fn a_vm_without_spare_slots_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (slots, _) = slots(0, usize::MAX);
        let err = slots.insert(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("is not a regular file or block device"),
            "{err}"
        );
        let image = dir.path().join("l.erofs");
        std::fs::write(&image, b"erofs").unwrap();
        let err = slots.insert(&image).unwrap_err().to_string();
        assert_eq!(
            err,
            "sandbox 0123abcd has no spare disk slots (its VM's other devices left no room)"
        );
    }

    #[test]
    fn a_refused_insert_leaves_the_slot_free() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("l.erofs");
        std::fs::write(&image, b"erofs").unwrap();
        let (slots, _) = slots(1, 2);
        let err = slots.insert(&image).unwrap_err().to_string();
        assert!(
            err.starts_with("the VM's disk backend refused `insert 2 "),
            "{err}"
        );
        let err = slots.insert(&image).unwrap_err().to_string();
        assert!(err.contains("refused"), "still free, tried again: {err}");
    }
}
