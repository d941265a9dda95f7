//! The host kernel's FUSE as a second transport for `FuseServer`: a server mounted on a host
//! directory through /dev/fuse, so tests (and benchmarks) can drive it with ordinary file
//! operations. Needs root.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::request::MAX_REQUEST;
use super::server::{FuseServer, MAX_REPLY};

/// How often the serving thread looks for the stop flag while idle.
const POLL_MS: i32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum FuseDevError {
    #[error("cannot open /dev/fuse: {0}")]
    Open(io::Error),
    #[error("cannot mount on {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("cannot start the serving thread: {0}")]
    Thread(io::Error),
}

/// A mounted server; unmounted (lazily) and stopped when dropped.
pub struct FuseMount {
    mountpoint: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FuseMount {
    /// Mounts `server` on `mountpoint` and serves it on a thread of its own.
    pub fn mount(server: FuseServer, mountpoint: &Path) -> Result<FuseMount, FuseDevError> {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/fuse")
            .map_err(FuseDevError::Open)?;
        let mount_err = |source| FuseDevError::Mount {
            path: mountpoint.to_path_buf(),
            source,
        };
        let target = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
            .map_err(|_| mount_err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let options = std::ffi::CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
            dev.as_raw_fd()
        ))
        .map_err(|_| mount_err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: every string is NUL-terminated and outlives the call.
        let ret = unsafe {
            libc::mount(
                c"vmpod-fuse".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            )
        };
        if ret != 0 {
            return Err(mount_err(io::Error::last_os_error()));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mut mount = FuseMount {
            mountpoint: mountpoint.to_path_buf(),
            stop,
            thread: None,
        };
        // From here on, dropping `mount` unmounts even if the thread cannot start.
        let thread = std::thread::Builder::new()
            .name("fusedev".into())
            .spawn(move || serve(dev, server, &flag))
            .map_err(FuseDevError::Thread)?;
        mount.thread = Some(thread);
        Ok(mount)
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if let Ok(target) = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes()) {
            // SAFETY: `target` is NUL-terminated.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads requests from the device and writes the server's replies until the connection ends
/// or `stop` is set. Closing the device (when this returns) aborts whatever is still pending.
fn serve(dev: File, mut server: FuseServer, stop: &AtomicBool) {
    let mut request = vec![0u8; MAX_REQUEST];
    let mut reply = Vec::with_capacity(MAX_REPLY);
    while !stop.load(Ordering::Acquire) {
        let mut pollfd = libc::pollfd {
            fd: dev.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pollfd, 1, POLL_MS) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: `request` is writable for its length.
        let n = unsafe { libc::read(dev.as_raw_fd(), request.as_mut_ptr().cast(), request.len()) };
        if n < 0 {
            match io::Error::last_os_error().raw_os_error() {
                // Interrupted, or a request the kernel withdrew: take the next one.
                Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                // ENODEV: unmounted.
                _ => return,
            }
        }
        let len = server.handle(&request[..n as usize], MAX_REPLY, &mut reply);
        if len > 0 {
            // SAFETY: `reply` holds at least `len` bytes. A failed write (ENOENT: the request
            // was interrupted meanwhile) concerns that request only.
            unsafe { libc::write(dev.as_raw_fd(), reply.as_ptr().cast(), len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// Why the end-to-end test cannot run here, if it cannot.
    fn cannot_mount() -> Option<&'static str> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root");
        }
        if !Path::new("/dev/fuse").exists() {
            return Some("no /dev/fuse");
        }
        None
    }

    #[test]
    fn real_file_operations_through_dev_fuse_stay_inside_the_share() {
        if let Some(reason) = cannot_mount() {
            eprintln!("skipped: {reason}");
            return;
        }
        // <scratch>/outside is the host's; the mount sits one level deeper than the share, so
        // "../outside" from inside the mount names nothing.
        let scratch = tempfile::tempdir().unwrap();
        let share = scratch.path().join("share");
        let mnt = scratch.path().join("m/mnt");
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::write(scratch.path().join("outside"), b"host secret").unwrap();
        let mount = FuseMount::mount(FuseServer::new(&share).unwrap(), &mnt).unwrap();
        let m = mount.path();

        let data: Vec<u8> = (0..8usize << 20)
            .map(|i| (i * 31 + i / 4096) as u8)
            .collect();
        std::fs::write(m.join("big"), &data).unwrap();
        assert!(
            std::fs::read(m.join("big")).unwrap() == data,
            "8 MiB read back"
        );
        assert!(
            std::fs::read(share.join("big")).unwrap() == data,
            "8 MiB on the host"
        );

        std::fs::create_dir(m.join("many")).unwrap();
        for i in 0..1000 {
            std::fs::write(m.join(format!("many/f{i}")), i.to_string()).unwrap();
        }
        assert_eq!(std::fs::read_dir(m.join("many")).unwrap().count(), 1000);

        std::fs::rename(m.join("many/f7"), m.join("seven")).unwrap();
        assert_eq!(std::fs::read_to_string(share.join("seven")).unwrap(), "7");
        std::fs::remove_file(m.join("many/f8")).unwrap();
        assert!(!share.join("many/f8").exists());

        std::fs::set_permissions(m.join("seven"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(m.join("seven"), Some(4242), Some(4343)).unwrap();
        let meta = std::fs::metadata(share.join("seven")).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (0o600, 4242, 4343)
        );

        std::os::unix::fs::symlink("../outside", m.join("out")).unwrap();
        assert_eq!(
            std::fs::read_link(share.join("out")).unwrap(),
            Path::new("../outside")
        );
        let err = std::fs::read(m.join("out")).unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::NotFound,
            "not followed out of the share"
        );
        let nofollow = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(m.join("out"));
        assert_eq!(nofollow.unwrap_err().raw_os_error(), Some(libc::ELOOP));
        assert_eq!(
            std::fs::read(scratch.path().join("outside")).unwrap(),
            b"host secret"
        );

        drop(mount);
        assert!(
            std::fs::read_dir(&mnt).unwrap().next().is_none(),
            "unmounted"
        );
    }
}
