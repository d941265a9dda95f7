//! `--rootfs DIR` as a read-only erofs layer, built once per version of the directory and
//! cached under /var/cache/vmpod/rootfs.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

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
    vmpod_sandbox::erofs::build(&dir, &image, &["-T0"])
        .map_err(|e| format!("--rootfs {}: {}", dir.display(), crate::chain(&e)))?;
    Ok(image)
}
