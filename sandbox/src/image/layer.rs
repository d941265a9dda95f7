//! One image layer (a tar stream, maybe gzip-compressed) unpacked into an empty directory in
//! overlayfs's form: the OCI whiteout `.wh.NAME` becomes a 0:0 character device NAME and the
//! opaque marker `.wh..wh..opq` the `trusted.overlay.opaque` xattr on its directory. The guest
//! stacks the layers with overlayfs, which reads exactly those.

use super::ImageError;
use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Passes bytes through while hashing them (a digest is checked after the last byte).
pub struct DigestReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> DigestReader<R> {
    pub fn new(inner: R) -> Self {
        DigestReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads what is left (tar's trailing padding) and returns `sha256:<hex>`.
    pub fn finish(mut self) -> std::io::Result<String> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok(format!("sha256:{}", hex(&self.hasher.finalize())))
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The layer's bytes uncompressed, whatever the (supported) compression.
pub fn decompress<'a, R: Read + 'a>(
    reader: R,
    what: &str,
) -> Result<Box<dyn Read + 'a>, ImageError> {
    let mut reader = BufReader::new(reader);
    let head = reader
        .fill_buf()
        .map_err(|e| ImageError::io(format!("read {what}"), e))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(ImageError::Corrupt(format!(
            "{what} is zstd-compressed; vmpod reads uncompressed and gzip layers (re-save the image with gzip, e.g. skopeo copy --dest-compress-format gzip)"
        )))
    } else {
        Ok(Box::new(reader))
    }
}

/// The entry's path relative to the layer root, refused if it climbs out of it.
fn relative(path: &Path, what: &str) -> Result<PathBuf, ImageError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ImageError::Corrupt(format!(
                    "{what}: entry '{}' points outside the layer",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

/// `dir/parent` created if needed and checked to resolve inside `root`, so a symlink planted
/// by an earlier entry cannot carry a whiteout out of the layer.
fn parent_inside(root: &Path, parent: &Path, what: &str) -> Result<PathBuf, ImageError> {
    let dir = root.join(parent);
    std::fs::create_dir_all(&dir)
        .map_err(|e| ImageError::io(format!("{what}: create {}", dir.display()), e))?;
    let real = dir
        .canonicalize()
        .map_err(|e| ImageError::io(format!("{what}: resolve {}", dir.display()), e))?;
    let root = root
        .canonicalize()
        .map_err(|e| ImageError::io(format!("{what}: resolve {}", root.display()), e))?;
    if !real.starts_with(&root) {
        return Err(ImageError::Corrupt(format!(
            "{what}: '{}' leads outside the layer through a symlink",
            parent.display()
        )));
    }
    Ok(real)
}

fn cstring(path: &Path) -> Result<CString, ImageError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| ImageError::Corrupt(format!("path {} holds a NUL byte", path.display())))
}

fn whiteout(dir: &Path, name: &std::ffi::OsStr, what: &str) -> Result<(), ImageError> {
    let target = dir.join(name);
    let c = cstring(&target)?;
    // SAFETY: mknod(2) with a valid NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
        return Err(ImageError::io(
            format!("{what}: whiteout {}", target.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn opaque(dir: &Path, what: &str) -> Result<(), ImageError> {
    let c = cstring(dir)?;
    let (key, value) = (c"trusted.overlay.opaque", b"y");
    // SAFETY: lsetxattr(2) with valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(ImageError::io(
            format!("{what}: mark {} opaque", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Unpacks the tar stream `reader` into the empty directory `root`. `what` names the layer in
/// errors.
pub fn unpack(reader: impl Read, root: &Path, what: &str) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let corrupt = |e: std::io::Error| ImageError::Corrupt(format!("{what}: not a valid tar: {e}"));
    // A directory's mtime changes as entries land in it: set last, as tar(1) does.
    let mut dir_times = Vec::new();
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let path = relative(&entry.path().map_err(corrupt)?, what)?;
        if entry.header().entry_type().is_dir() {
            if let Ok(mtime) = entry.header().mtime() {
                dir_times.push((path.clone(), mtime));
            }
        }
        let Some(name) = path.file_name().map(|n| n.to_os_string()) else {
            continue; // the layer root itself
        };
        let parent = path.parent().unwrap_or(Path::new(""));
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE.as_bytes() {
            let dir = parent_inside(root, parent, what)?;
            opaque(&dir, what)?;
        } else if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT.as_bytes()) {
            if hidden.is_empty() {
                return Err(ImageError::Corrupt(format!(
                    "{what}: whiteout '{}' names nothing",
                    path.display()
                )));
            }
            let dir = parent_inside(root, parent, what)?;
            whiteout(&dir, std::ffi::OsStr::from_bytes(hidden), what)?;
        } else {
            let done = entry.unpack_in(root).map_err(|e| {
                // tar's message names the file; the reason is its source.
                let why = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string());
                ImageError::Corrupt(format!("{what}: {}: {why}", path.display()))
            })?;
            if !done {
                return Err(ImageError::Corrupt(format!(
                    "{what}: entry '{}' points outside the layer",
                    path.display()
                )));
            }
        }
    }
    for (path, mtime) in dir_times.iter().rev() {
        set_mtime(&root.join(path), *mtime);
    }
    Ok(())
}

fn set_mtime(path: &Path, mtime: u64) {
    let Ok(c) = cstring(path) else { return };
    let time = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [time, time];
    // SAFETY: utimensat(2) with a valid path and two timespecs; a symlinked directory entry
    // is left alone (AT_SYMLINK_NOFOLLOW).
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn temp(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("vmpod-layer-{name}-"))
            .tempdir()
            .unwrap()
    }

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            header.set_size(data.len() as u64);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1);
            if let Some(link) = link {
                header.set_link_name(link).unwrap();
            }
            // set_path would refuse `..`, which is what some tests need to write.
            let bytes = path.as_bytes();
            header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let root = temp("wh");
        let tar = tar_of(&[
            ("etc/", tar::EntryType::Directory, b"", None),
            ("etc/.wh.motd", tar::EntryType::Regular, b"", None),
            ("var/lib/.wh..wh..opq", tar::EntryType::Regular, b"", None),
            ("etc/hostname", tar::EntryType::Regular, b"box\n", None),
        ]);
        unpack(&tar[..], root.path(), "layer").unwrap();
        let motd = std::fs::symlink_metadata(root.path().join("etc/motd")).unwrap();
        assert!(motd.file_type().is_char_device());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(motd.rdev(), 0);
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/hostname")).unwrap(),
            "box\n"
        );
        let mut value = [0u8; 4];
        let c = cstring(&root.path().join("var/lib")).unwrap();
        // SAFETY: lgetxattr(2) into a buffer of the given length.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert_eq!(n, 1);
        assert_eq!(value[0], b'y');
    }

    #[test]
    fn entries_that_climb_out_are_refused() {
        let root = temp("climb");
        let tar = tar_of(&[("../escape", tar::EntryType::Regular, b"x", None)]);
        let err = unpack(&tar[..], root.path(), "layer sha256:ab").unwrap_err();
        assert!(err.to_string().contains("outside the layer"), "{err}");

        let root2 = temp("symlink");
        let tar = tar_of(&[
            ("out", tar::EntryType::Symlink, b"", Some("/tmp")),
            ("out/.wh.victim", tar::EntryType::Regular, b"", None),
        ]);
        let err = unpack(&tar[..], root2.path(), "layer").unwrap_err();
        assert!(err.to_string().contains("through a symlink"), "{err}");
    }

    #[test]
    fn garbage_is_not_a_tar() {
        let root = temp("garbage");
        let err = unpack(&[7u8; 1024][..], root.path(), "layer x").unwrap_err();
        assert!(err.to_string().contains("layer x"), "{err}");
    }

    #[test]
    fn digests_cover_every_byte() {
        let mut r = DigestReader::new(&b"abc"[..]);
        let mut first = [0u8; 1];
        r.read_exact(&mut first).unwrap();
        assert_eq!(
            r.finish().unwrap(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
