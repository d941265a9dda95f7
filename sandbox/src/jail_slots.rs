//! Disk slots of a jailed VM: the process serving the disks cannot open an image by its host
//! path, so each inserted image is bound read-only at `<state dir>/slot-images/<slot>`, a
//! mount of its own that the jail sees at `/slots` (the jail's copy of it receives what the
//! host binds there later), and the backend is told that path instead.

use crate::error::{io, SandboxError, SlotError};
use crate::hypervisor::SlotControl;
use crate::shared::{bind, detach, mount};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmpod_devices::slot_command::SlotCommand;

/// Where the jailed disk server sees the slot images.
pub const INSIDE: &str = "/slots";

/// The host's directory of a sandbox's slot images.
pub fn host_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("slot-images")
}

/// Makes the directory a mount whose later binds reach the jails' copies, and nothing else.
pub fn create(state_dir: &Path) -> Result<PathBuf, SandboxError> {
    let dir = host_dir(state_dir);
    std::fs::create_dir(&dir).map_err(io(format!("create {}", dir.display())))?;
    // Writable on the host (the images' mount points are made in it); the jail's view of it is
    // read-only.
    bind(&dir, &dir, false)
        .and_then(|()| mount(None, &dir, None, libc::MS_SHARED))
        .map_err(io(format!("make {} a mount of its own", dir.display())))?;
    Ok(dir)
}

/// Detaches every image and the directory's own mount.
pub fn teardown(state_dir: &Path) {
    detach(&host_dir(state_dir));
}

/// What the janitor runs if the owner dies first.
pub fn cleanup_command(state_dir: &Path) -> String {
    format!(
        "umount --recursive --lazy '{}' 2>/dev/null",
        host_dir(state_dir).display()
    )
}

/// A backend's slot commands with host image paths turned into the jail's.
pub struct JailedSlots {
    dir: PathBuf,
    backend: Arc<dyn SlotControl>,
}

impl JailedSlots {
    pub fn new(state_dir: &Path, backend: Arc<dyn SlotControl>) -> JailedSlots {
        JailedSlots {
            dir: host_dir(state_dir),
            backend,
        }
    }

    fn unbind(&self, slot: usize) {
        let point = self.dir.join(slot.to_string());
        detach(&point);
        let _ = std::fs::remove_file(&point);
    }
}

impl SlotControl for JailedSlots {
    fn send(&self, command: &SlotCommand) -> Result<(), SlotError> {
        match command {
            SlotCommand::Insert { slot, image } => {
                let point = self.dir.join(slot.to_string());
                self.unbind(*slot);
                // The mount point is gone with the sandbox: its backend is, too.
                std::fs::File::create(&point).map_err(SlotError::Backend)?;
                bind(image, &point, true).map_err(|source| SlotError::Image {
                    path: image.clone(),
                    source,
                })?;
                let inside = Path::new(INSIDE).join(slot.to_string());
                let sent = self.backend.send(&SlotCommand::Insert {
                    slot: *slot,
                    image: inside,
                });
                if sent.is_err() {
                    self.unbind(*slot);
                }
                sent
            }
            SlotCommand::Eject { slot } => {
                let sent = self.backend.send(command);
                if sent.is_ok() {
                    self.unbind(*slot);
                }
                sent
            }
        }
    }
}
