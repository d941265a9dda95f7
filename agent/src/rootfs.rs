//! A container's root filesystem from the VM's disks: read-only erofs layers (each mounted
//! once, shared by every container that uses it) joined by overlayfs over a writable upper.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmpod_protocol::{Rootfs, Upper};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("no disk with serial '{0}' in the VM")]
    NoSuchDisk(String),
    #[error("a container needs at least one layer")]
    NoLayers,
    #[error("serial '{0}' may only hold letters, digits, '-', '_' and '.'")]
    BadSerial(String),
    #[error("mount {what} at {target}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("create {0}")]
    Dir(PathBuf, #[source] std::io::Error),
    #[error("probe the disk slot again through {0}")]
    Reprobe(PathBuf, #[source] std::io::Error),
    #[error("the disk with serial '{0}' is empty even after probing it again")]
    EmptyDisk(String),
    #[error("drop cached blocks of {0}")]
    Flush(PathBuf, #[source] std::io::Error),
}

/// Where the disks' block devices are found by their virtio serial.
const SYS_BLOCK: &str = "/sys/block";
const VIRTIO_BLK_DRIVER: &str = "/sys/bus/virtio/drivers/virtio_blk";

fn disk_by_serial(serial: &str) -> Result<PathBuf, RootfsError> {
    if serial.is_empty()
        || !serial
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(RootfsError::BadSerial(serial.to_string()));
    }
    match find_disk(serial)? {
        // A disk slot of a restored template: the guest probed it while it was empty, and its
        // disk came only with this clone. The VMM announces it with a configuration change
        // (the driver then reads the new size); where that does not come, probing the device
        // again reads the size too. Nothing of the empty slot was ever cached.
        (name, 0) => {
            if let Some(size) = wait_for_size(&name, Duration::from_secs(1)) {
                if size > 0 {
                    return Ok(Path::new("/dev").join(name));
                }
            }
            crate::debug!("disk {serial} is still empty: probing it again");
            reprobe(&name)?;
            match find_disk(serial)? {
                (name, size) if size > 0 => Ok(Path::new("/dev").join(name)),
                _ => Err(RootfsError::EmptyDisk(serial.to_string())),
            }
        }
        (name, _) => Ok(Path::new("/dev").join(name)),
    }
}

/// The block device with this serial and its size in sectors.
fn find_disk(serial: &str) -> Result<(std::ffi::OsString, u64), RootfsError> {
    let entries =
        std::fs::read_dir(SYS_BLOCK).map_err(|_| RootfsError::NoSuchDisk(serial.into()))?;
    for entry in entries.flatten() {
        let found = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
        if found.trim() == serial {
            let size = std::fs::read_to_string(entry.path().join("size"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            return Ok((entry.file_name(), size));
        }
    }
    Err(RootfsError::NoSuchDisk(serial.to_string()))
}

/// The disk's size once it is not 0, within `limit`.
fn wait_for_size(name: &std::ffi::OsStr, limit: Duration) -> Option<u64> {
    let path = Path::new(SYS_BLOCK).join(name).join("size");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let size: u64 = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
        if size > 0 {
            return Some(size);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// Unbinds the disk's virtio device from its driver and binds it again.
fn reprobe(name: &std::ffi::OsStr) -> Result<(), RootfsError> {
    let device = Path::new(SYS_BLOCK).join(name).join("device");
    let virtio = std::fs::read_link(&device)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
        .ok_or_else(|| RootfsError::Reprobe(device.clone(), std::io::ErrorKind::NotFound.into()))?;
    let driver = Path::new(VIRTIO_BLK_DRIVER);
    for action in ["unbind", "bind"] {
        std::fs::write(driver.join(action), &virtio)
            .map_err(|e| RootfsError::Reprobe(driver.join(action), e))?;
    }
    Ok(())
}

/// Drops the page cache of a disk: a slot the host emptied and filled with another image keeps
/// the blocks the guest read from the previous one.
fn flush_cached_blocks(device: &Path) -> Result<(), RootfsError> {
    // _IO(0x12, 97), <linux/fs.h>.
    const BLKFLSBUF: libc::c_ulong = 0x1261;
    let disk = std::fs::File::open(device).map_err(|e| RootfsError::Flush(device.into(), e))?;
    // SAFETY: BLKFLSBUF takes no argument; the fd is open for the call.
    if unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&disk), BLKFLSBUF, 0) } < 0 {
        return Err(RootfsError::Flush(
            device.into(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(path).map_err(|e| RootfsError::Dir(path.to_path_buf(), e))
}

fn mount_at(
    source: &Path,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    mkdir(target)?;
    mount(Some(source), target, Some(fstype), flags, data).map_err(|e| RootfsError::Mount {
        what: format!("{} ({fstype})", source.display()),
        target: target.to_path_buf(),
        source: e,
    })
}

/// Layer mounts shared between containers, counted so the last user unmounts.
#[derive(Debug)]
pub struct Layers {
    dir: PathBuf,
    users: HashMap<String, usize>,
}

/// What one container's rootfs holds mounted, undone by [`Layers::release`].
#[derive(Debug)]
pub struct Assembled {
    pub rootfs: PathBuf,
    layers: Vec<String>,
    mounts: Vec<PathBuf>,
}

impl Layers {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Layers {
            dir: dir.into(),
            users: HashMap::new(),
        }
    }

    fn acquire(&mut self, serial: &str) -> Result<PathBuf, RootfsError> {
        let target = self.dir.join(serial);
        if let Some(n) = self.users.get_mut(serial) {
            *n += 1;
            return Ok(target);
        }
        let device = disk_by_serial(serial)?;
        flush_cached_blocks(&device)?;
        mount_at(&device, &target, "erofs", MsFlags::MS_RDONLY, None)?;
        self.users.insert(serial.to_string(), 1);
        Ok(target)
    }

    fn drop_layer(&mut self, serial: &str) {
        let Some(n) = self.users.get_mut(serial) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.users.remove(serial);
            let target = self.dir.join(serial);
            if let Err(e) = umount2(&target, MntFlags::MNT_DETACH) {
                eprintln!("vmpod-agent: unmount layer {}: {e}", target.display());
            }
            let _ = std::fs::remove_dir(&target);
        }
    }

    /// An empty root for the pod's sandbox, which brings no image: a tmpfs at `dir/rootfs`.
    pub fn empty_root(&mut self, dir: &Path) -> Result<Assembled, RootfsError> {
        let rootfs = dir.join("rootfs");
        mount_at(
            Path::new("tmpfs"),
            &rootfs,
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755,size=1m"),
        )?;
        Ok(Assembled {
            mounts: vec![rootfs.clone()],
            rootfs,
            layers: Vec::new(),
        })
    }

    /// Mounts the layers and the overlay under `dir`; on failure, undoes what it did.
    pub fn assemble(&mut self, spec: &Rootfs, dir: &Path) -> Result<Assembled, RootfsError> {
        if spec.layers.is_empty() {
            return Err(RootfsError::NoLayers);
        }
        let mut done = Assembled {
            rootfs: dir.join("rootfs"),
            layers: Vec::new(),
            mounts: Vec::new(),
        };
        match self.assemble_into(spec, dir, &mut done) {
            Ok(()) => Ok(done),
            Err(e) => {
                self.release(done);
                Err(e)
            }
        }
    }

    fn assemble_into(
        &mut self,
        spec: &Rootfs,
        dir: &Path,
        done: &mut Assembled,
    ) -> Result<(), RootfsError> {
        let mut lower = Vec::new();
        for serial in &spec.layers {
            lower.push(self.acquire(serial)?);
            done.layers.push(serial.clone());
        }
        let scratch = dir.join("scratch");
        match &spec.upper {
            Upper::Tmpfs => mount_at(
                Path::new("tmpfs"),
                &scratch,
                "tmpfs",
                MsFlags::MS_NOSUID,
                Some("mode=0755"),
            )?,
            Upper::Disk { serial } => {
                let device = disk_by_serial(serial)?;
                mount_at(&device, &scratch, "ext4", MsFlags::MS_NOSUID, None)?;
            }
        }
        done.mounts.push(scratch.clone());
        let (upper, work) = (scratch.join("upper"), scratch.join("work"));
        mkdir(&upper)?;
        mkdir(&work)?;
        // overlayfs lists the top layer first.
        let lowerdir: Vec<String> = lower
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            upper.display(),
            work.display()
        );
        mount_at(
            Path::new("overlay"),
            &done.rootfs,
            "overlay",
            MsFlags::empty(),
            Some(&options),
        )?;
        done.mounts.push(done.rootfs.clone());
        Ok(())
    }

    pub fn release(&mut self, assembled: Assembled) {
        for target in assembled.mounts.iter().rev() {
            if let Err(e) = umount2(target, MntFlags::MNT_DETACH) {
                eprintln!("vmpod-agent: unmount {}: {e}", target.display());
            }
        }
        for serial in &assembled.layers {
            self.drop_layer(serial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_that_could_name_a_path_are_refused() {
        for bad in ["", "../sda", "a/b", "x y"] {
            assert!(
                matches!(disk_by_serial(bad), Err(RootfsError::BadSerial(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn no_layers_is_refused_before_mounting_anything() {
        let mut layers = Layers::new("/nonexistent");
        let spec = Rootfs {
            layers: vec![],
            upper: Upper::Tmpfs,
        };
        assert!(matches!(
            layers.assemble(&spec, Path::new("/nonexistent/c")),
            Err(RootfsError::NoLayers)
        ));
    }
}
