//! The jail's root: a mount namespace that propagates nothing back, the jail directory with
//! read-only system directories and the asked binds in it, a fresh /proc, pivot_root into it.

use std::ffi::CString;
use std::path::Path;

use super::error::{check, cstring, JailerError};
use super::spec::JailSpec;

/// System directories every dynamically linked program needs, read-only (symlinks such as
/// /lib → usr/lib are copied as symlinks).
const SYSTEM_PATHS: [&str; 6] = [
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
];

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> Result<(), JailerError> {
    crate::shared::mount(source, target, fstype, flags).map_err(|e| JailerError::Os {
        what: format!(
            "mount {} at {}",
            source.unwrap_or(Path::new("none")).display(),
            target.display()
        ),
        source: e,
    })
}

/// Binds `source` at `target` under the new root, read-only unless `writable`, never a device
/// or a set-uid program.
fn bind(root: &Path, source: &Path, target: &Path, writable: bool) -> Result<(), JailerError> {
    let inside = root.join(target.strip_prefix("/").unwrap_or(target));
    let meta = std::fs::symlink_metadata(source).map_err(|e| JailerError::Os {
        what: format!("bind {}", source.display()),
        source: e,
    })?;
    let made = |e| JailerError::Os {
        what: format!("make {}", inside.display()),
        source: e,
    };
    if let Some(parent) = inside.parent() {
        std::fs::create_dir_all(parent).map_err(made)?;
    }
    if meta.file_type().is_symlink() {
        let link = std::fs::read_link(source).map_err(made)?;
        if std::fs::symlink_metadata(&inside).is_err() {
            std::os::unix::fs::symlink(link, &inside).map_err(made)?;
        }
        return Ok(());
    }
    if meta.is_dir() {
        std::fs::create_dir_all(&inside).map_err(made)?;
    } else if std::fs::symlink_metadata(&inside).is_err() {
        std::fs::File::create(&inside).map_err(made)?;
    }
    mount(Some(source), &inside, None, libc::MS_BIND | libc::MS_REC)?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    if !writable {
        flags |= libc::MS_RDONLY;
    }
    mount(None, &inside, None, flags)
}

/// Mount namespace: nothing propagates back to the host, while what the host later binds
/// into a shared mount (volumes added to the shared directory, images put in a disk slot)
/// reaches the jail; the root becomes `spec.root` with
/// the system directories, the binds and a /proc of the new pid namespace; the old root goes.
pub fn enter_root(spec: &JailSpec) -> Result<(), JailerError> {
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_SLAVE)?;
    mount(
        Some(&spec.root),
        &spec.root,
        None,
        libc::MS_BIND | libc::MS_REC,
    )?;
    for path in SYSTEM_PATHS.iter().map(Path::new).filter(|p| p.exists()) {
        bind(&spec.root, path, path, false)?;
    }
    for b in &spec.binds {
        bind(&spec.root, &b.source, &b.target, b.writable)?;
    }
    let proc_dir = spec.root.join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(|e| JailerError::Os {
        what: format!("make {}", proc_dir.display()),
        source: e,
    })?;
    mount(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )?;
    let root = cstring(&spec.root)?;
    let dot = CString::new(".").unwrap_or_default();
    // SAFETY: chdir, pivot_root and umount2 take NUL-terminated paths that outlive the calls.
    unsafe {
        check(libc::chdir(root.as_ptr()), || {
            format!("enter {}", spec.root.display())
        })?;
        let rc = libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int;
        check(rc, || format!("pivot_root into {}", spec.root.display()))?;
        check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH), || {
            "detach the host's root".into()
        })?;
        let slash = CString::new("/").unwrap_or_default();
        check(libc::chdir(slash.as_ptr()), || {
            "enter the jail's root".into()
        })
    }
}
