//! The VM's shared filesystem: the sandbox's shared directory, offered by the VMM as one
//! virtio-fs (vmpod-vmm) or 9p (QEMU) filesystem, mounted once at `SHARED_FS_DIR` the first
//! time a container binds from it. A template never mounts it, so no state of the file server
//! is saved with one, and a clone reaches its own directory.

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Spec;
use std::path::{Path, PathBuf};
use vmpod_protocol::{SHARED_FS_DIR, SHARED_FS_TAG};

/// Where the 9p transport lists its devices; each has a `mount_tag` file.
const NINEP_DRIVER: &str = "/sys/bus/virtio/drivers/9pnet_virtio";

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("bind source {0} leaves the shared filesystem")]
    Outside(String),
    #[error("create {0}")]
    Dir(PathBuf, #[source] std::io::Error),
    #[error("mount the shared filesystem '{tag}' ({fstype}) at {dir}")]
    Mount {
        tag: &'static str,
        fstype: &'static str,
        dir: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// Whether the shared filesystem is mounted yet.
#[derive(Debug, Default)]
pub struct SharedFs {
    mounted: bool,
}

impl SharedFs {
    /// Mounts the shared filesystem if `spec` binds from it and it is not mounted yet.
    pub fn prepare_for(&mut self, spec: &Spec) -> Result<(), SharedError> {
        let mut uses = false;
        for source in spec
            .mounts()
            .iter()
            .flatten()
            .filter_map(|m| m.source().as_deref())
        {
            if let Ok(rest) = source.strip_prefix(SHARED_FS_DIR) {
                // The host names one volume's directory; a `..` could reach the agent's own.
                if rest
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
                {
                    return Err(SharedError::Outside(source.display().to_string()));
                }
                uses = true;
            }
        }
        if uses && !self.mounted {
            mount_shared()?;
            self.mounted = true;
        }
        Ok(())
    }
}

/// 9p where the VMM offers the tag on a 9p device (QEMU), virtio-fs otherwise (vmpod-vmm).
fn fstype() -> &'static str {
    let offers_9p = std::fs::read_dir(NINEP_DRIVER)
        .into_iter()
        .flatten()
        .flatten()
        .any(|device| {
            std::fs::read(device.path().join("mount_tag"))
                .map(|tag| tag.split(|b| *b == 0).next() == Some(SHARED_FS_TAG.as_bytes()))
                .unwrap_or(false)
        });
    if offers_9p {
        "9p"
    } else {
        "virtiofs"
    }
}

fn mount_shared() -> Result<(), SharedError> {
    std::fs::create_dir_all(SHARED_FS_DIR)
        .map_err(|e| SharedError::Dir(PathBuf::from(SHARED_FS_DIR), e))?;
    let fstype = fstype();
    // cache=mmap: no page cache but for mmap'd files (executables), so either side sees the
    // other's changes at once; 9p2000.L carries owners, modes and xattrs.
    let options = match fstype {
        "9p" => Some("trans=virtio,version=9p2000.L,msize=262144,cache=mmap"),
        _ => None,
    };
    mount(
        Some(SHARED_FS_TAG),
        Path::new(SHARED_FS_DIR),
        Some(fstype),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        options,
    )
    .map_err(|source| SharedError::Mount {
        tag: SHARED_FS_TAG,
        fstype,
        dir: SHARED_FS_DIR,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{MountBuilder, SpecBuilder};

    fn spec_binding(source: &str) -> Spec {
        SpecBuilder::default()
            .mounts(vec![MountBuilder::default()
                .destination("/data")
                .typ("bind")
                .source(source)
                .options(vec!["rbind".to_string()])
                .build()
                .unwrap()])
            .build()
            .unwrap()
    }

    #[test]
    fn a_spec_without_shared_binds_mounts_nothing() {
        let mut shared = SharedFs::default();
        shared.prepare_for(&spec_binding("/proc")).unwrap();
        assert!(!shared.mounted);
    }

    #[test]
    fn a_bind_source_that_climbs_out_of_the_share_is_refused() {
        let mut shared = SharedFs::default();
        let err = shared
            .prepare_for(&spec_binding("/run/vmpod/shared/v0/../../layers"))
            .unwrap_err();
        assert!(
            err.to_string().contains("leaves the shared filesystem"),
            "{err}"
        );
        assert!(!shared.mounted);
    }
}
