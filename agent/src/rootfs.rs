//! A container's root filesystem from the VM's disks: read-only erofs layers (each mounted
//! once, shared by every container that uses it) joined by overlayfs over a writable upper.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vmpod_protocol::{Rootfs, Upper};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("no disk with serial '{0}' in the VM")]
    NoSuchDisk(String),
    #[error("volume destination '{0}' must be an absolute path other than /")]
    BadDestination(String),
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
}

/// Where the disks' block devices are found by their virtio serial.
const SYS_BLOCK: &str = "/sys/block";

fn disk_by_serial(serial: &str) -> Result<PathBuf, RootfsError> {
    if serial.is_empty()
        || !serial
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(RootfsError::BadSerial(serial.to_string()));
    }
    let entries =
        std::fs::read_dir(SYS_BLOCK).map_err(|_| RootfsError::NoSuchDisk(serial.into()))?;
    for entry in entries.flatten() {
        let found = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
        if found.trim() == serial {
            return Ok(Path::new("/dev").join(entry.file_name()));
        }
    }
    Err(RootfsError::NoSuchDisk(serial.to_string()))
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
    /// Read-only volumes as (mounted layer, destination in the container).
    pub volumes: Vec<(PathBuf, String)>,
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

    /// Mounts the layers and the overlay under `dir`; on failure, undoes what it did.
    pub fn assemble(&mut self, spec: &Rootfs, dir: &Path) -> Result<Assembled, RootfsError> {
        if spec.layers.is_empty() {
            return Err(RootfsError::NoLayers);
        }
        if let Some(bad) = spec
            .volumes
            .iter()
            .find(|v| !v.destination.starts_with('/') || v.destination.trim_matches('/').is_empty())
        {
            return Err(RootfsError::BadDestination(bad.destination.clone()));
        }
        let mut done = Assembled {
            rootfs: dir.join("rootfs"),
            volumes: Vec::new(),
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
        for volume in &spec.volumes {
            let source = self.acquire(&volume.serial)?;
            done.layers.push(volume.serial.clone());
            done.volumes.push((source, volume.destination.clone()));
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
            volumes: vec![],
        };
        assert!(matches!(
            layers.assemble(&spec, Path::new("/nonexistent/c")),
            Err(RootfsError::NoLayers)
        ));
        let spec = Rootfs {
            layers: vec!["rootfs".into()],
            upper: Upper::Tmpfs,
            volumes: vec![vmpod_protocol::Volume {
                serial: "vol0".into(),
                destination: "data".into(),
            }],
        };
        assert!(matches!(
            layers.assemble(&spec, Path::new("/nonexistent/c")),
            Err(RootfsError::BadDestination(_))
        ));
    }
}
