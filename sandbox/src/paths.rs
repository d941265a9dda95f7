//! Where vmpod's programs and guest artefacts are: next to the running program (a build
//! tree's target/release), then the installed layout.

use crate::error::SandboxError;
use std::path::{Path, PathBuf};

pub const INSTALLED_SHARE: &str = "/usr/local/share/vmpod";
pub const STATE_ROOT: &str = "/run/vmpod";
/// The guest kernel and the initramfs with the agent, in the guest artefacts directory.
pub const KERNEL: &str = "vmlinux";
pub const INITRAMFS: &str = "initramfs.cpio";

/// A sibling program of the one running (vmpod-vmm, vmpod-vhost-user), else one on PATH.
pub fn program(name: &'static str) -> Result<PathBuf, SandboxError> {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        for candidate in [dir.join(name), dir.join("..").join(name)] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if dir.join(name).is_file() {
            return Ok(dir.join(name));
        }
    }
    Err(SandboxError::Missing {
        what: "program",
        path: PathBuf::from(name),
        hint: "`make build` builds it, `make install` puts it on PATH",
    })
}

/// The guest artefacts directory: $VMPOD_GUEST_DIR, the build tree's build/guest, or the
/// installed share directory.
pub fn guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VMPOD_GUEST_DIR") {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/release/vmpod → build/guest at the top of the tree.
        for up in exe.ancestors().skip(1).take(4) {
            let candidate = up.join("build/guest");
            if candidate.join(KERNEL).is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(INSTALLED_SHARE)
}

pub fn guest_file(name: &str) -> Result<PathBuf, SandboxError> {
    let path = guest_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(SandboxError::Missing {
            what: "guest artefact",
            path,
            hint: "`make guest` builds it, `make install` installs it",
        })
    }
}
