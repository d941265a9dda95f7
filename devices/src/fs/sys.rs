//! Thin wrappers over the *at(2) system calls the passthrough filesystem is built from: each
//! takes descriptors and one path component, never a host path the guest could steer.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

const EMPTY: &CStr = c"";

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens `name`, one component under `dir`, as an `O_PATH` descriptor without following a
/// symlink. openat2 with RESOLVE_BENEATH refuses anything that would leave `dir` (kernels
/// before 5.6 lack it; there O_NOFOLLOW on a single checked component is the same guarantee).
pub fn open_path_beneath(dir: BorrowedFd, name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let how = OpenHow {
            flags: flags as u64,
            mode: 0,
            resolve: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS,
        };
        // SAFETY: `name` is NUL-terminated, `how` is a valid open_how of the size we pass, and
        // the kernel only reads both.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                name.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match check_long(ret) {
            Ok(fd) => return owned(fd as libc::c_int),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    openat(dir, name, flags, 0)
}

/// openat(2); callers add O_NOFOLLOW where a name could be a symlink.
pub fn openat(dir: BorrowedFd, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the result is checked before use.
    owned(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })
}

/// The /proc/self/fd entry for `fd`, to reach the inode it names through a magic link.
pub fn proc_name(fd: RawFd) -> std::ffi::CString {
    std::ffi::CString::new(fd.to_string()).unwrap_or_default()
}

/// Opens the inode behind an `O_PATH` descriptor for I/O through /proc/self/fd/N (O_PATH
/// descriptors cannot read or write). The caller has checked it is not a symlink.
pub fn reopen(proc_fd: BorrowedFd, fd: BorrowedFd, flags: i32) -> io::Result<OwnedFd> {
    openat(
        proc_fd,
        &proc_name(fd.as_raw_fd()),
        flags & !libc::O_NOFOLLOW,
        0,
    )
}

pub fn stat(fd: BorrowedFd) -> io::Result<libc::stat> {
    // SAFETY: all-zero is a valid `stat` (plain integers).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; the empty path names `fd` itself.
    check(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

pub fn statfs(fd: BorrowedFd) -> io::Result<libc::statvfs> {
    // SAFETY: all-zero is a valid `statvfs`.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

pub fn mkdirat(dir: BorrowedFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub fn unlinkat(dir: BorrowedFd, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(
    old_dir: BorrowedFd,
    old: &CStr,
    new_dir: BorrowedFd,
    new: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; renameat2 only reads them.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// Links the inode behind `fd` as `name` in `dir`, reaching it through /proc/self/fd/N:
/// AT_SYMLINK_FOLLOW follows only that magic link, to the inode itself.
pub fn link(proc_fd: BorrowedFd, fd: BorrowedFd, dir: BorrowedFd, name: &CStr) -> io::Result<()> {
    let source = proc_name(fd.as_raw_fd());
    // SAFETY: both names are NUL-terminated.
    check(unsafe {
        libc::linkat(
            proc_fd.as_raw_fd(),
            source.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

/// The target of the symlink `fd` names, into `buf`; returns its length.
pub fn readlink(fd: BorrowedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length; the empty path names `fd` itself.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    check_long(n as libc::c_long).map(|n| n as usize)
}

/// Owner change of the inode `fd` names (symlinks included, never followed). `u32::MAX`
/// (-1) leaves that id unchanged.
pub fn chown(fd: BorrowedFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: the empty path names `fd` itself.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Mode change through /proc/self/fd/N (fchmod refuses O_PATH descriptors); the caller has
/// checked the inode is not a symlink, so the magic link leads to the inode itself.
pub fn chmod(proc_fd: BorrowedFd, fd: BorrowedFd, mode: u32) -> io::Result<()> {
    let name = proc_name(fd.as_raw_fd());
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::fchmodat(proc_fd.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

pub fn utimens(fd: BorrowedFd, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: `times` points at two timespecs; the empty path names `fd` itself.
    check(unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn ftruncate(fd: BorrowedFd, size: u64) -> io::Result<()> {
    let size = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain syscall on a descriptor we own.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }).map(drop)
}

pub fn fsync(fd: BorrowedFd, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscalls on a descriptor we own.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

pub fn fallocate(fd: BorrowedFd, mode: u32, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: plain syscall on a descriptor we own.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode as i32, offset, len) }).map(drop)
}

pub fn lseek(fd: BorrowedFd, offset: u64, whence: u32) -> io::Result<u64> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain syscall on a descriptor we own.
    let ret = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence as i32) };
    check_long(ret).map(|n| n as u64)
}

/// Raw linux_dirent64 records of the directory `fd` from its current position.
pub fn getdents(fd: BorrowedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    check_long(n).map(|n| n as usize)
}

/// Extended attribute calls on "/proc/self/fd/N", the path form that reaches an O_PATH
/// descriptor's inode (the f*xattr calls refuse O_PATH descriptors).
pub fn xattr_path(fd: BorrowedFd) -> std::ffi::CString {
    std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

pub fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: strings are NUL-terminated, `buf` is writable for its length (may be empty).
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    check_long(n as libc::c_long).map(|n| n as usize)
}

pub fn listxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `path` is NUL-terminated, `buf` is writable for its length (may be empty).
    let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    check_long(n as libc::c_long).map(|n| n as usize)
}

pub fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
    // SAFETY: strings are NUL-terminated, `value` is readable for its length.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags as i32,
        )
    })
    .map(drop)
}

pub fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}
