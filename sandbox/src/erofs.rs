//! Directory trees as erofs images: the form every read-only layer reaches the guest in (an
//! image layer, `--rootfs DIR`, a `:ro` volume).

use crate::error::{io, SandboxError};
use std::path::Path;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_build_leaves_no_file() {
        let out = std::env::temp_dir().join(format!("vmpod-erofs-test-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let image = out.join("x.erofs");
        let err = build(Path::new("/nonexistent/vmpod"), &image, &[]).unwrap_err();
        assert!(err.to_string().contains("mkfs.erofs"), "{err}");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
        std::fs::remove_dir_all(&out).unwrap();
    }
}
