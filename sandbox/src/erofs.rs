//! Directory trees as erofs images: the form every read-only layer reaches the guest in (an
//! image layer, `--rootfs DIR`, a `:ro` volume).

use crate::error::{io, SandboxError};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `image` from `dir`. The image is written aside and renamed into place, so a
/// concurrent reader sees the whole image or none.
pub fn build(dir: &Path, image: &Path, extra: &[&str]) -> Result<(), SandboxError> {
    let parent = image.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let output = Command::new("mkfs.erofs")
        .arg("--quiet")
        .args(extra)
        .arg(&tmp)
        .arg(dir)
        .output()
        .map_err(io("run mkfs.erofs (apt-get install erofs-utils)"))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(SandboxError::Invalid(format!(
            "mkfs.erofs of {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    std::fs::rename(&tmp, image).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(format!("store {}", image.display()))(e)
    })
}

/// A key that changes when any entry's name, size, mode or mtime does.
fn fingerprint(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut hasher);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let meta = e.path().symlink_metadata()?;
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

/// `dir` as an erofs image in `cache`, built once per version of the directory (its
/// fingerprint names the file) and shared by every sandbox that uses that version.
pub fn cached_layer(dir: &Path, cache: &Path) -> Result<PathBuf, SandboxError> {
    let dir = dir
        .canonicalize()
        .map_err(io(format!("{}", dir.display())))?;
    if !dir.is_dir() {
        return Err(SandboxError::Invalid(format!(
            "{}: not a directory",
            dir.display()
        )));
    }
    let key = fingerprint(&dir).map_err(io(format!("read {}", dir.display())))?;
    let image = cache.join(format!("{key:016x}.erofs"));
    if !image.is_file() {
        build(&dir, &image, &["-T0"])?;
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_build_leaves_no_file() {
        let out = tempfile::tempdir().unwrap();
        let image = out.path().join("x.erofs");
        let err = build(Path::new("/nonexistent/vmpod"), &image, &[]).unwrap_err();
        assert!(err.to_string().contains("mkfs.erofs"), "{err}");
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    }
}
