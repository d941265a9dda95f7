//! Open files and directories: OPEN, CREATE and OPENDIR give the guest a handle; READ,
//! WRITE and the other per-handle calls use it. Only regular files are opened for I/O (a FIFO
//! would block the event loop, a device node would reach host hardware, a symlink would be
//! followed), by reopening the inode's O_PATH descriptor through /proc/self/fd.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;

use super::abi;
use super::handles::Handle;
use super::passthrough::{component, io_flags, kind_error, Caller, Errno, FsResult, Passthrough};
use super::sys;

impl Passthrough {
    /// Opens a regular file for I/O; anything else (a FIFO whose open would block us, a
    /// device node, a symlink) is refused.
    pub fn open(&mut self, id: u64, flags: u32) -> FsResult<abi::OpenOut> {
        let inode = self.inode(id)?;
        if inode.kind != libc::S_IFREG {
            return Err(kind_error(inode.kind));
        }
        let file = sys::reopen(self.proc_fd.as_fd(), inode.fd(), io_flags(flags))?;
        self.add_handle(file.into(), false)
    }

    fn add_handle(&mut self, file: File, is_dir: bool) -> FsResult<abi::OpenOut> {
        let fh = self
            .handles
            .insert(Handle { file, is_dir })
            .ok_or(Errno(libc::ENFILE))?;
        Ok(abi::OpenOut {
            fh,
            open_flags: 0,
            padding: 0,
        })
    }

    pub fn create(
        &mut self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        flags: u32,
        mode: u32,
    ) -> FsResult<(abi::EntryOut, abi::OpenOut)> {
        let name = component(name)?;
        let dir = self.dir(parent)?.fd();
        let io = io_flags(flags);
        let created = sys::openat(
            dir,
            &name,
            io | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            mode & 0o7777,
        );
        let (file, entry) = match created {
            Ok(file) => {
                let entry = self.adopt(parent, &name, caller, Some(mode))?;
                // The name could have been replaced on the host between the two opens.
                match sys::stat(file.as_fd()) {
                    Ok(st) if st.st_ino == entry.attr.ino => {}
                    _ => {
                        self.forget(entry.nodeid, 1);
                        return Err(Errno(libc::EIO));
                    }
                }
                (file, entry)
            }
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL as u32 == 0 =>
            {
                // An existing name is opened like OPEN would: as a regular file or not at all.
                let entry = self.lookup(parent, name.as_bytes())?;
                match self.open(entry.nodeid, flags) {
                    Ok(open) => return Ok((entry, open)),
                    Err(e) => {
                        self.forget(entry.nodeid, 1);
                        return Err(e);
                    }
                }
            }
            Err(e) => return Err(e.into()),
        };
        match self.add_handle(file.into(), false) {
            Ok(open) => Ok((entry, open)),
            Err(e) => {
                self.forget(entry.nodeid, 1);
                Err(e)
            }
        }
    }

    /// Reads at `offset` into `buf` until it is full or the file ends (a short FUSE read means
    /// end of file); returns the bytes read.
    pub fn read(&self, fh: u64, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let handle = self.handles.get(fh, false).ok_or(Errno(libc::EBADF))?;
        let mut done = 0;
        while done < buf.len() {
            match handle.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if done == 0 => return Err(e.into()),
                Err(_) => break,
            }
        }
        Ok(done)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        let handle = self.handles.get(fh, false).ok_or(Errno(libc::EBADF))?;
        offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= i64::MAX as u64)
            .ok_or(Errno(libc::EFBIG))?;
        handle.file.write_all_at(data, offset)?;
        Ok(data.len())
    }

    pub fn release(&mut self, fh: u64, dir: bool) -> FsResult<()> {
        self.handles
            .remove(fh, dir)
            .map(drop)
            .ok_or(Errno(libc::EBADF))
    }

    pub fn fsync(&self, fh: u64, datasync: bool, dir: bool) -> FsResult<()> {
        let handle = self.handles.get(fh, dir).ok_or(Errno(libc::EBADF))?;
        Ok(sys::fsync(handle.file.as_fd(), datasync)?)
    }

    /// FLUSH is the guest's close(2) of one of its descriptors; the file stays open until
    /// RELEASE and we hold no locks for it, so there is nothing to do but check the handle.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        self.handles
            .get(fh, false)
            .map(drop)
            .ok_or(Errno(libc::EBADF))
    }

    pub fn opendir(&mut self, id: u64) -> FsResult<abi::OpenOut> {
        // "." under the directory's own descriptor: no name the guest could have swapped.
        let dir = sys::openat(
            self.dir(id)?.fd(),
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        self.add_handle(dir.into(), true)
    }

    pub fn fallocate(&self, fh: u64, mode: u32, offset: u64, length: u64) -> FsResult<()> {
        let handle = self.handles.get(fh, false).ok_or(Errno(libc::EBADF))?;
        Ok(sys::fallocate(handle.file.as_fd(), mode, offset, length)?)
    }

    pub fn lseek(&self, fh: u64, offset: u64, whence: u32) -> FsResult<u64> {
        if ![
            libc::SEEK_SET,
            libc::SEEK_CUR,
            libc::SEEK_END,
            libc::SEEK_DATA,
            libc::SEEK_HOLE,
        ]
        .contains(&(whence as i32))
        {
            return Err(Errno(libc::EINVAL));
        }
        let handle = self.handles.get(fh, false).ok_or(Errno(libc::EBADF))?;
        Ok(sys::lseek(handle.file.as_fd(), offset, whence)?)
    }

    pub(super) fn dir_handle(&self, fh: u64) -> FsResult<BorrowedFd<'_>> {
        let handle = self.handles.get(fh, true).ok_or(Errno(libc::EBADF))?;
        Ok(handle.file.as_fd())
    }
}
