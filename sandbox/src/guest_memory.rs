//! A QEMU template's guest memory as a file: saved next to its state (QEMU's migration stream
//! then leaves RAM out, `x-ignore-shared`), made sparse once, and copied into a fresh memfd for
//! every clone. The clone must own a shared, writable copy: the vhost-user device backends map
//! guest memory shared, so a private copy-on-write mapping of the template would hide the
//! guest's writes from them.

use crate::error::{io, SandboxError};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

const BLOCK: usize = 4096;
const CHUNK: usize = 1 << 20;

fn cvt(ret: i64) -> std::io::Result<i64> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Punches a hole in every all-zero block of `path`, so copies read only what the guest wrote.
pub fn sparsify(path: &Path) -> Result<(), SandboxError> {
    let what = || format!("make {} sparse", path.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(what()))?;
    let size = file.metadata().map_err(io(what()))?.len();
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < size {
        let n = file.read_at(&mut buf, offset).map_err(io(what()))?;
        if n == 0 {
            break;
        }
        for (i, block) in buf[..n].chunks(BLOCK).enumerate() {
            if block.iter().all(|b| *b == 0) {
                let at = offset + (i * BLOCK) as u64;
                // SAFETY: fallocate(2) on a file we own; it changes no memory of ours.
                cvt(i64::from(unsafe {
                    libc::fallocate(
                        file.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        at as i64,
                        block.len() as i64,
                    )
                }))
                .map_err(io(what()))?;
            }
        }
        offset += n as u64;
    }
    Ok(())
}

/// A new memfd holding a copy of `template` (its data extents only; holes stay holes).
pub fn clone_into_memfd(template: &Path) -> Result<OwnedFd, SandboxError> {
    let what = || format!("copy the template memory {}", template.display());
    let src = File::open(template).map_err(io(what()))?;
    let size = src.metadata().map_err(io(what()))?.len();
    // SAFETY: memfd_create with a static NUL-terminated name; the fd is owned on success.
    let fd = cvt(i64::from(unsafe {
        libc::memfd_create(c"vmpod-guest-memory".as_ptr(), libc::MFD_CLOEXEC)
    }))
    .map_err(io(what()))?;
    // SAFETY: fd was just returned by memfd_create and is not owned elsewhere.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let dst = File::from(fd);
    dst.set_len(size).map_err(io(what()))?;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0i64;
    while (offset as u64) < size {
        // SAFETY: lseek(2) on a file we own.
        let data = unsafe { libc::lseek(src.as_raw_fd(), offset, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole is left.
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        let end = if hole < 0 { size as i64 } else { hole };
        let mut at = data;
        while at < end {
            let len = ((end - at) as usize).min(CHUNK);
            let n = src
                .read_at(&mut buf[..len], at as u64)
                .map_err(io(what()))?;
            if n == 0 {
                break;
            }
            dst.write_all_at(&buf[..n], at as u64).map_err(io(what()))?;
            at += n as i64;
        }
        offset = end;
    }
    Ok(OwnedFd::from(dst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_sparse_copy_has_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let mut data = vec![0u8; 64 * BLOCK];
        data[5 * BLOCK + 7] = 1;
        data[40 * BLOCK..41 * BLOCK].fill(0xab);
        *data.last_mut().unwrap() = 9;
        std::fs::write(&path, &data).unwrap();
        sparsify(&path).unwrap();
        let copy = File::from(clone_into_memfd(&path).unwrap());
        let mut back = Vec::new();
        (&copy).read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data, "the copy differs");
    }
}
