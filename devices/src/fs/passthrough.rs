//! The passthrough filesystem: FUSE operations carried out on one shared host directory, as
//! root, without ever leaving it.
//!
//! How it stays inside: every inode is an `O_PATH` descriptor, reached from its parent's
//! descriptor by one checked name component (never `.`, `..`, empty or containing `/`) opened
//! with RESOLVE_BENEATH and without following symlinks. Later operations go through that
//! descriptor (`AT_EMPTY_PATH`, or /proc/self/fd/N for calls that refuse O_PATH descriptors,
//! after checking the inode is not a symlink), so a symlink the guest planted is data to us,
//! never a path. There are no file handles exported, so a guest cannot name an inode it was
//! not given.
//!
//! Ownership of what the guest creates: files are created as root and then given the caller's
//! uid and gid (the parent's gid under a set-group-id directory) with fchownat. The guest
//! kernel mounts virtio-fs with default_permissions, so it has already checked the caller may
//! do this; switching the event-loop thread's fsuid per request would also work, but would
//! need capability juggling on a thread that serves other devices, for no gain in safety.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::abi::{self, fattr};
use super::handles::Handles;
use super::inodes::{Inode, Inodes};
use super::sys;

/// How long the guest may cache names and attributes. The host may change the share behind
/// the guest's back, so this is short, as virtiofsd's default (cache=auto).
const CACHE_TIMEOUT_SECS: u64 = 1;
/// Linux's NAME_MAX.
const NAME_MAX: usize = 255;
/// Linux's PATH_MAX: the longest symlink target.
const PATH_MAX: usize = 4096;

/// An errno for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

pub type FsResult<T> = Result<T, Errno>;

/// Who asked, from the request header.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

pub struct Passthrough {
    pub(super) inodes: Inodes,
    pub(super) handles: Handles,
    /// /proc/self/fd, to reach an O_PATH descriptor's inode where a call refuses O_PATH.
    pub(super) proc_fd: OwnedFd,
}

/// Refuses names that are not exactly one component of a directory.
pub fn component(name: &[u8]) -> FsResult<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(Errno(libc::EINVAL));
    }
    if name.len() > NAME_MAX {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    CString::new(name).map_err(|_| Errno(libc::EINVAL))
}

/// The open flags a guest may ask for on a regular file. O_PATH, O_CREAT, O_DIRECTORY,
/// O_NOFOLLOW and the like are ours to decide; O_DIRECT is dropped because data passes
/// through our unaligned buffers.
pub(super) fn io_flags(flags: u32) -> i32 {
    let allowed = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_TRUNC
        | libc::O_DSYNC
        | libc::O_SYNC
        | libc::O_NOATIME
        | libc::O_LARGEFILE;
    flags as i32 & allowed
}

pub fn attr_of(st: &libc::stat) -> abi::Attr {
    abi::Attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime as u64,
        mtime: st.st_mtime as u64,
        ctime: st.st_ctime as u64,
        atimensec: st.st_atime_nsec as u32,
        mtimensec: st.st_mtime_nsec as u32,
        ctimensec: st.st_ctime_nsec as u32,
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        // The kernel's new_encode_dev and glibc's dev_t agree in the low 32 bits.
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

pub fn attr_out(st: &libc::stat) -> abi::AttrOut {
    abi::AttrOut {
        attr_valid: CACHE_TIMEOUT_SECS,
        attr_valid_nsec: 0,
        dummy: 0,
        attr: attr_of(st),
    }
}

pub(super) fn kind_error(kind: u32) -> Errno {
    Errno(match kind {
        libc::S_IFDIR => libc::EISDIR,
        libc::S_IFLNK => libc::ELOOP,
        _ => libc::ENXIO,
    })
}

impl Passthrough {
    pub fn new(shared_dir: &Path) -> io::Result<Passthrough> {
        let root: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(shared_dir)?
            .into();
        let root_stat = sys::stat(root.as_fd())?;
        let proc_fd: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open("/proc/self/fd")?
            .into();
        Ok(Passthrough {
            inodes: Inodes::new(root, &root_stat),
            handles: Handles::default(),
            proc_fd,
        })
    }

    /// Forgets every inode (but the root) and closes every handle.
    pub fn clear(&mut self) {
        self.handles.clear();
        self.inodes.clear();
    }

    pub(super) fn inode(&self, id: u64) -> FsResult<&Inode> {
        self.inodes.get(id).ok_or(Errno(libc::EBADF))
    }

    /// A directory inode, for operations on names inside it.
    pub(super) fn dir(&self, id: u64) -> FsResult<&Inode> {
        let inode = self.inode(id)?;
        if inode.kind != libc::S_IFDIR {
            return Err(Errno(libc::ENOTDIR));
        }
        Ok(inode)
    }

    /// Counts a lookup of `fd` and describes it for the guest.
    pub(super) fn entry(&mut self, fd: OwnedFd) -> FsResult<abi::EntryOut> {
        let st = sys::stat(fd.as_fd())?;
        let nodeid = self
            .inodes
            .add_lookup(fd, &st)
            .map_err(|_| Errno(libc::ENFILE))?;
        Ok(abi::EntryOut {
            nodeid,
            generation: 0,
            entry_valid: CACHE_TIMEOUT_SECS,
            attr_valid: CACHE_TIMEOUT_SECS,
            entry_valid_nsec: 0,
            attr_valid_nsec: 0,
            attr: attr_of(&st),
        })
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> FsResult<abi::EntryOut> {
        let name = component(name)?;
        let fd = sys::open_path_beneath(self.dir(parent)?.fd(), &name)?;
        self.entry(fd)
    }

    pub fn forget(&mut self, id: u64, count: u64) {
        self.inodes.forget(id, count);
    }

    pub fn getattr(&self, id: u64) -> FsResult<abi::AttrOut> {
        Ok(attr_out(&sys::stat(self.inode(id)?.fd())?))
    }

    pub fn setattr(&mut self, id: u64, arg: &abi::SetattrIn) -> FsResult<abi::AttrOut> {
        let inode = self.inode(id)?;
        let fd = inode.fd();
        if arg.valid & (fattr::UID | fattr::GID) != 0 {
            let uid = if arg.valid & fattr::UID != 0 {
                arg.uid
            } else {
                u32::MAX
            };
            let gid = if arg.valid & fattr::GID != 0 {
                arg.gid
            } else {
                u32::MAX
            };
            sys::chown(fd, uid, gid)?;
        }
        if arg.valid & fattr::MODE != 0 {
            if inode.is_symlink() {
                return Err(Errno(libc::EOPNOTSUPP));
            }
            // Permission bits only: the file type is not the guest's to change.
            sys::chmod(self.proc_fd.as_fd(), fd, arg.mode & 0o7777)?;
        }
        if arg.valid & fattr::SIZE != 0 {
            if inode.kind != libc::S_IFREG {
                return Err(kind_error(inode.kind));
            }
            let handle = (arg.valid & fattr::FH != 0)
                .then(|| self.handles.get(arg.fh, false))
                .flatten();
            match handle {
                Some(handle) => sys::ftruncate(handle.file.as_fd(), arg.size)?,
                None => {
                    let file = sys::reopen(self.proc_fd.as_fd(), fd, libc::O_WRONLY)?;
                    sys::ftruncate(file.as_fd(), arg.size)?;
                }
            }
        }
        if arg.valid & (fattr::ATIME | fattr::MTIME) != 0 {
            let time = |set: u32, now: u32, secs: u64, nsecs: u32| libc::timespec {
                tv_sec: secs as libc::time_t,
                tv_nsec: if arg.valid & now != 0 {
                    libc::UTIME_NOW
                } else if arg.valid & set != 0 {
                    libc::c_long::from(nsecs)
                } else {
                    libc::UTIME_OMIT
                },
            };
            let times = [
                time(fattr::ATIME, fattr::ATIME_NOW, arg.atime, arg.atimensec),
                time(fattr::MTIME, fattr::MTIME_NOW, arg.mtime, arg.mtimensec),
            ];
            sys::utimens(fd, &times)?;
        }
        self.getattr(id)
    }

    pub fn readlink(&self, id: u64, out: &mut Vec<u8>) -> FsResult<()> {
        let inode = self.inode(id)?;
        if !inode.is_symlink() {
            return Err(Errno(libc::EINVAL));
        }
        let start = out.len();
        out.resize(start + PATH_MAX, 0);
        let n = sys::readlink(inode.fd(), &mut out[start..])?;
        out.truncate(start + n);
        Ok(())
    }

    /// Gives a new file the caller's ownership, and the exact permission bits asked for (our
    /// umask and chown's clearing of set-id bits would otherwise change them), then counts it
    /// as looked up.
    pub(super) fn adopt(
        &mut self,
        parent: u64,
        name: &CStr,
        caller: Caller,
        mode: Option<u32>,
    ) -> FsResult<abi::EntryOut> {
        let parent_inode = self.dir(parent)?;
        let parent_stat = sys::stat(parent_inode.fd())?;
        let fd = sys::open_path_beneath(parent_inode.fd(), name)?;
        let gid = if parent_stat.st_mode & libc::S_ISGID != 0 {
            parent_stat.st_gid
        } else {
            caller.gid
        };
        sys::chown(fd.as_fd(), caller.uid, gid)?;
        if let Some(mode) = mode {
            let st = sys::stat(fd.as_fd())?;
            let wanted = mode & 0o7777;
            // A directory under a set-group-id parent keeps the bit it inherits.
            let inherited = st.st_mode
                & libc::S_ISGID
                & if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    u32::MAX
                } else {
                    0
                };
            if st.st_mode & 0o7777 != wanted | inherited {
                sys::chmod(self.proc_fd.as_fd(), fd.as_fd(), wanted | inherited)?;
            }
        }
        self.entry(fd)
    }

    pub fn mkdir(
        &mut self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
    ) -> FsResult<abi::EntryOut> {
        let name = component(name)?;
        sys::mkdirat(self.dir(parent)?.fd(), &name, mode & 0o7777)?;
        self.adopt(parent, &name, caller, Some(mode))
    }

    pub fn mknod(
        &mut self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<abi::EntryOut> {
        let name = component(name)?;
        let kind = mode & libc::S_IFMT;
        if ![
            libc::S_IFREG,
            libc::S_IFIFO,
            libc::S_IFSOCK,
            libc::S_IFCHR,
            libc::S_IFBLK,
        ]
        .contains(&kind)
        {
            return Err(Errno(libc::EINVAL));
        }
        sys::mknodat(
            self.dir(parent)?.fd(),
            &name,
            kind | (mode & 0o7777),
            u64::from(rdev),
        )?;
        self.adopt(parent, &name, caller, Some(mode))
    }

    pub fn symlink(
        &mut self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<abi::EntryOut> {
        let name = component(name)?;
        if target.is_empty() || target.len() >= PATH_MAX {
            return Err(Errno(libc::EINVAL));
        }
        // The target is stored, never resolved by us.
        let target = CString::new(target).map_err(|_| Errno(libc::EINVAL))?;
        sys::symlinkat(&target, self.dir(parent)?.fd(), &name)?;
        self.adopt(parent, &name, caller, None)
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8], dir: bool) -> FsResult<()> {
        let name = component(name)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        Ok(sys::unlinkat(self.dir(parent)?.fd(), &name, flags)?)
    }

    pub fn rename(
        &mut self,
        parent: u64,
        old: &[u8],
        newdir: u64,
        new: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        if flags & !(abi::RENAME_NOREPLACE | abi::RENAME_EXCHANGE) != 0 {
            return Err(Errno(libc::EINVAL));
        }
        let (old, new) = (component(old)?, component(new)?);
        let from = self.dir(parent)?.fd();
        let to = self.dir(newdir)?.fd();
        Ok(sys::renameat2(from, &old, to, &new, flags)?)
    }

    pub fn link(&mut self, oldnodeid: u64, newparent: u64, name: &[u8]) -> FsResult<abi::EntryOut> {
        let name = component(name)?;
        let inode = self.inode(oldnodeid)?;
        if inode.kind == libc::S_IFDIR {
            return Err(Errno(libc::EPERM));
        }
        let dir = self.dir(newparent)?;
        sys::link(self.proc_fd.as_fd(), inode.fd(), dir.fd(), &name)?;
        let fd = sys::open_path_beneath(dir.fd(), &name)?;
        self.entry(fd)
    }

    pub fn statfs(&self, id: u64) -> FsResult<abi::StatfsOut> {
        let st = sys::statfs(self.inode(id)?.fd())?;
        Ok(abi::StatfsOut {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: st.f_namemax as u32,
            frsize: st.f_frsize as u32,
            padding: 0,
            spare: [0; 6],
        })
    }

    /// access(2) as the guest's caller would see it, from the inode's mode and owner.
    pub fn access(&self, caller: Caller, id: u64, mask: u32) -> FsResult<()> {
        let st = sys::stat(self.inode(id)?.fd())?;
        let mask = mask & 7;
        if mask == 0 {
            return Ok(());
        }
        let granted = if caller.uid == 0 {
            // Root may read and write anything, and execute what has any execute bit.
            let x = st.st_mode & 0o111 != 0 || st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            6 | u32::from(x)
        } else if st.st_uid == caller.uid {
            (st.st_mode >> 6) & 7
        } else if st.st_gid == caller.gid {
            (st.st_mode >> 3) & 7
        } else {
            st.st_mode & 7
        };
        if granted & mask == mask {
            Ok(())
        } else {
            Err(Errno(libc::EACCES))
        }
    }

    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    pub fn known_inodes(&self) -> usize {
        self.inodes.len()
    }
}
