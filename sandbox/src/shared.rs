//! A sandbox's shared directory: the one host directory its VM sees as a filesystem (virtio-fs
//! on vmpod-vmm, 9p on QEMU), mounted by the agent at `SHARED_FS_DIR`. Each volume is a bind
//! mount of its host source at `shared/<name>`; the guest reaches nothing else.
//!
//! `points/` is where the mount points are made; `shared/` is `points/` bound read-only,
//! nosuid and nodev, so the guest can neither write the shared root nor use a device node or a
//! setuid file it finds or makes in a volume against the host. A read-only volume is read-only
//! in its host bind mount too, whatever the guest sends. Every mount is private, so none
//! propagates to the host's other mount namespaces.

use crate::error::{io, SandboxError};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use vmpod_protocol::SHARED_FS_DIR;

/// A volume's host source, bound into the shared directory under a name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedVolume {
    pub source: PathBuf,
    pub read_only: bool,
}

pub struct SharedDir {
    points: PathBuf,
    root: PathBuf,
    /// Bound names, in the order they were bound.
    names: Vec<String>,
    next: u64,
}

fn cstring(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

pub(crate) fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> std::io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    let fstype = fstype
        .map(|t| CString::new(t).map_err(std::io::Error::other))
        .transpose()?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
    let rc = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Detaches the mount at `target` (and what is mounted under it); a path that is not a mount
/// is fine.
pub(crate) fn detach(target: &Path) {
    if let Ok(target) = cstring(target) {
        // SAFETY: a NUL-terminated path; MNT_DETACH never blocks.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Binds `source` at `target` (made private), read-only, nosuid and nodev where asked. The
/// flags only apply on a remount of the new bind, so that is a second call.
pub(crate) fn bind(source: &Path, target: &Path, read_only: bool) -> std::io::Result<()> {
    mount(Some(source), target, None, libc::MS_BIND | libc::MS_REC)?;
    let result = mount(None, target, None, libc::MS_PRIVATE | libc::MS_REC).and_then(|()| {
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
        if read_only {
            flags |= libc::MS_RDONLY;
        }
        mount(None, target, None, flags)
    });
    if result.is_err() {
        detach(target);
    }
    result
}

/// The shared directory behind its lock; a thread that panicked holding it left it whole
/// (every change is one mount call), so the poison is ignored.
pub fn lock(shared: &std::sync::Mutex<SharedDir>) -> std::sync::MutexGuard<'_, SharedDir> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the guest sees the `index`-th volume bound into a sandbox's shared directory.
pub fn guest_path(index: u64) -> String {
    format!("{SHARED_FS_DIR}/v{index}")
}

impl SharedDir {
    /// Makes `state_dir/shared`, empty. Undo with [`SharedDir::teardown`] (or the clean-up
    /// line, when the owner is killed).
    pub fn create(state_dir: &Path) -> Result<SharedDir, SandboxError> {
        let points = state_dir.join("shared-points");
        let root = state_dir.join("shared");
        for dir in [&points, &root] {
            std::fs::create_dir(dir).map_err(io(format!("create {}", dir.display())))?;
        }
        bind(&points, &root, true)
            // A peer group of its own: the volumes bound in later reach a jailed VM's copy
            // of the root (jailer/root.rs), and nothing else.
            .and_then(|()| mount(None, &root, None, libc::MS_SHARED))
            .map_err(io(format!(
                "bind {} read-only at {}",
                points.display(),
                root.display()
            )))?;
        Ok(SharedDir {
            points,
            root,
            names: Vec::new(),
            next: 0,
        })
    }

    /// The directory the VMM serves to the guest.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Binds a volume's host source (a directory or a file) into the shared directory and
    /// returns the path the guest sees it at.
    pub fn add(&mut self, volume: &SharedVolume) -> Result<String, SandboxError> {
        let meta = std::fs::metadata(&volume.source)
            .map_err(io(format!("volume source {}", volume.source.display())))?;
        let name = format!("v{}", self.next);
        self.next += 1;
        let point = self.points.join(&name);
        let made = if meta.is_dir() {
            std::fs::create_dir(&point)
        } else {
            std::fs::File::create(&point).map(drop)
        };
        made.map_err(io(format!("create {}", point.display())))?;
        let target = self.root.join(&name);
        if let Err(e) = bind(&volume.source, &target, volume.read_only) {
            let _ = std::fs::remove_dir(&point).or_else(|_| std::fs::remove_file(&point));
            return Err(SandboxError::Io {
                what: format!(
                    "bind volume {} into {}",
                    volume.source.display(),
                    self.root.display()
                ),
                source: e,
            });
        }
        self.names.push(name);
        Ok(guest_path(self.next - 1))
    }

    /// Unbinds a volume `add` returned (by the path it returned).
    pub fn remove(&mut self, guest_path: &str) {
        let Some(name) = guest_path
            .strip_prefix(SHARED_FS_DIR)
            .map(|n| n.trim_start_matches('/').to_string())
        else {
            return;
        };
        if let Some(i) = self.names.iter().position(|n| *n == name) {
            self.names.remove(i);
            detach(&self.root.join(&name));
            let point = self.points.join(&name);
            let _ = std::fs::remove_dir(&point).or_else(|_| std::fs::remove_file(&point));
        }
    }

    /// What the janitor runs when the owner dies without tearing down: every bind goes.
    pub fn cleanup_command(&self) -> String {
        format!(
            "umount --recursive --lazy '{}' 2>/dev/null",
            self.root.display()
        )
    }

    /// Detaches every bind and the shared root. After this nothing under the state directory
    /// leads to a host volume, so removing the directory cannot touch one.
    pub fn teardown(&mut self) {
        for name in self.names.drain(..).rev() {
            detach(&self.root.join(name));
        }
        detach(&self.root);
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Whether any mount lies at or under `dir` (read from /proc/self/mountinfo): then removing
/// `dir` recursively would reach into it.
pub fn has_mounts_under(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .any(|point| Path::new(&point).starts_with(dir))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn am_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn mountinfo_escapes_are_read_back() {
        assert_eq!(unescape_mountinfo(r"/run/a\040b"), "/run/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn volumes_are_bound_read_only_where_asked_and_gone_after_teardown() {
        if !am_root() {
            eprintln!("skipped: binding needs root");
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let base = scratch.path();
        let (state, rw, ro) = (base.join("state"), base.join("rw"), base.join("ro"));
        for d in [&state, &rw, &ro] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(ro.join("kept"), b"host").unwrap();
        let mut shared = SharedDir::create(&state).unwrap();
        let rw_path = shared
            .add(&SharedVolume {
                source: rw.clone(),
                read_only: false,
            })
            .unwrap();
        let ro_path = shared
            .add(&SharedVolume {
                source: ro.clone(),
                read_only: true,
            })
            .unwrap();
        assert_eq!(rw_path, format!("{SHARED_FS_DIR}/v0"));
        assert_eq!(ro_path, format!("{SHARED_FS_DIR}/v1"));
        let root = shared.root().to_path_buf();
        std::fs::write(root.join("v0/new"), b"guest").unwrap();
        assert_eq!(std::fs::read(rw.join("new")).unwrap(), b"guest");
        let refused = std::fs::write(root.join("v1/kept"), b"changed").unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EROFS));
        let refused = std::fs::write(root.join("stray"), b"x").unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EROFS));
        assert!(has_mounts_under(&state));
        drop(shared);
        assert!(!has_mounts_under(&state));
        assert_eq!(std::fs::read(ro.join("kept")).unwrap(), b"host");
    }
}
