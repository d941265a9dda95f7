//! Extended attributes of the passthrough filesystem, limited to the namespaces a guest may
//! own: `user.*` and POSIX ACLs. `trusted.*` and `security.*` are the host's (overlayfs
//! metadata, file capabilities, LSM labels) and never reach the guest either way.

use super::passthrough::{Errno, FsResult, Passthrough};
use super::request::MAX_XATTR;
use super::sys;

/// What the guest may read and write.
fn allowed(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// Namespaces that exist on the host but are hidden from the guest.
fn host_only(name: &[u8]) -> bool {
    name.starts_with(b"trusted.") || name.starts_with(b"security.")
}

fn c_name(name: &[u8]) -> FsResult<std::ffi::CString> {
    std::ffi::CString::new(name).map_err(|_| Errno(libc::EINVAL))
}

/// The answer to GETXATTR/LISTXATTR: the size asked about, or the bytes themselves.
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

impl Passthrough {
    /// The /proc path of a non-symlink inode; symlinks carry no user attributes on Linux, and
    /// the magic link must never be a way to reach past one.
    fn xattr_target(&self, id: u64, refused: i32) -> FsResult<std::ffi::CString> {
        let inode = self.inode(id)?;
        if inode.is_symlink() {
            return Err(Errno(refused));
        }
        Ok(sys::xattr_path(inode.fd()))
    }

    fn check_writable(name: &[u8]) -> FsResult<std::ffi::CString> {
        if host_only(name) {
            return Err(Errno(libc::EPERM));
        }
        if !allowed(name) {
            return Err(Errno(libc::EOPNOTSUPP));
        }
        c_name(name)
    }

    pub fn setxattr(&self, id: u64, name: &[u8], value: &[u8], flags: u32) -> FsResult<()> {
        let name = Self::check_writable(name)?;
        if value.len() > MAX_XATTR {
            return Err(Errno(libc::E2BIG));
        }
        let path = self.xattr_target(id, libc::EPERM)?;
        Ok(sys::setxattr(&path, &name, value, flags)?)
    }

    pub fn removexattr(&self, id: u64, name: &[u8]) -> FsResult<()> {
        let name = Self::check_writable(name)?;
        let path = self.xattr_target(id, libc::EPERM)?;
        Ok(sys::removexattr(&path, &name)?)
    }

    pub fn getxattr(&self, id: u64, name: &[u8], size: u32) -> FsResult<XattrReply> {
        if !allowed(name) {
            return Err(Errno(libc::ENODATA));
        }
        let name = c_name(name)?;
        let path = self.xattr_target(id, libc::ENODATA)?;
        if size == 0 {
            return Ok(XattrReply::Size(
                sys::getxattr(&path, &name, &mut [])? as u32
            ));
        }
        let mut value = vec![0u8; (size as usize).min(MAX_XATTR)];
        let n = sys::getxattr(&path, &name, &mut value)?;
        value.truncate(n);
        Ok(XattrReply::Data(value))
    }

    /// The names the guest may see, NUL-separated as listxattr(2) gives them.
    pub fn listxattr(&self, id: u64, size: u32) -> FsResult<XattrReply> {
        let path = match self.xattr_target(id, 0) {
            Ok(path) => path,
            Err(Errno(0)) if size == 0 => return Ok(XattrReply::Size(0)),
            Err(Errno(0)) => return Ok(XattrReply::Data(Vec::new())),
            Err(e) => return Err(e),
        };
        let mut names = vec![0u8; MAX_XATTR];
        let n = sys::listxattr(&path, &mut names)?;
        let visible: Vec<u8> = names[..n]
            .split_inclusive(|&b| b == 0)
            .filter(|name| allowed(name.strip_suffix(&[0]).unwrap_or(name)))
            .flatten()
            .copied()
            .collect();
        if size == 0 {
            Ok(XattrReply::Size(visible.len() as u32))
        } else if visible.len() > size as usize {
            Err(Errno(libc::ERANGE))
        } else {
            Ok(XattrReply::Data(visible))
        }
    }
}
