//! An flock on a file, held until dropped: how vmpod processes share the image and template
//! stores.

use std::os::fd::AsRawFd;
use std::path::Path;

pub struct Lock {
    _file: std::fs::File,
}

impl Lock {
    pub fn take(path: &Path, exclusive: bool) -> std::io::Result<Lock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock(2) on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Lock { _file: file })
    }
}
