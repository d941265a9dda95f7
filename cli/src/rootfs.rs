//! `--rootfs DIR` as a read-only erofs layer, built once per version of the directory and
//! cached under /var/cache/vmpod/rootfs.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

const CACHE: &str = "/var/cache/vmpod/rootfs";

/// A key that changes when any entry's name, size, mode or mtime does.
fn fingerprint(dir: &Path) -> std::io::Result<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut hasher);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let meta = e.path().symlink_metadata()?;
            use std::os::unix::fs::MetadataExt;
            (
                e.path(),
                meta.len(),
                meta.mode(),
                meta.mtime(),
                meta.mtime_nsec(),
            )
                .hash(&mut hasher);
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(hasher.finish())
}

pub fn layer_for(dir: &Path) -> Result<PathBuf, String> {
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("--rootfs {}: {e}", dir.display()))?;
    if !dir.is_dir() {
        return Err(format!("--rootfs {}: not a directory", dir.display()));
    }
    let key = fingerprint(&dir).map_err(|e| format!("--rootfs {}: {e}", dir.display()))?;
    let image = Path::new(CACHE).join(format!("{key:016x}.erofs"));
    if image.is_file() {
        return Ok(image);
    }
    std::fs::create_dir_all(CACHE).map_err(|e| format!("create {CACHE}: {e}"))?;
    // Built aside and renamed: a concurrent run sees the whole image or none.
    let tmp = Path::new(CACHE).join(format!(".{key:016x}.{}.tmp", std::process::id()));
    let output = Command::new("mkfs.erofs")
        .args(["--quiet", "-T0"])
        .arg(&tmp)
        .arg(&dir)
        .output()
        .map_err(|e| format!("run mkfs.erofs (apt-get install erofs-utils): {e}"))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "mkfs.erofs of {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    std::fs::rename(&tmp, &image).map_err(|e| format!("store {}: {e}", image.display()))?;
    Ok(image)
}
