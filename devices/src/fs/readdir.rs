//! READDIR and READDIRPLUS: a directory handle's entries from a given offset, encoded as FUSE
//! dirents into the room the guest gave.
//!
//! The offset the guest passes back is the `d_off` of the last entry it got, so each request
//! seeks the host directory there and stops at the first entry that does not fit: nothing is
//! kept between requests.

use std::mem::size_of;
use vm_memory::ByteValued;

use super::abi::{self, dirent_size};
use super::passthrough::{Errno, FsResult, Passthrough};
use super::sys;

/// Host directory entries are read this many bytes at a time.
const GETDENTS_BUFFER: usize = 32 << 10;
/// linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, then the name.
const LINUX_DIRENT_NAME: usize = 19;

struct HostEntry<'a> {
    ino: u64,
    off: u64,
    kind: u8,
    name: &'a [u8],
}

/// The entries of one getdents64 result; a malformed record ends the walk.
fn host_entries(buf: &[u8]) -> impl Iterator<Item = HostEntry<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let header = rest.get(..LINUX_DIRENT_NAME)?;
        let ino = u64::from_ne_bytes(header[0..8].try_into().ok()?);
        let off = u64::from_ne_bytes(header[8..16].try_into().ok()?);
        let reclen = u16::from_ne_bytes(header[16..18].try_into().ok()?) as usize;
        let kind = header[18];
        let record = rest.get(..reclen).filter(|_| reclen > LINUX_DIRENT_NAME)?;
        let name_field = &record[LINUX_DIRENT_NAME..];
        let name_len = name_field.iter().position(|&b| b == 0)?;
        rest = &rest[reclen..];
        Some(HostEntry {
            ino,
            off,
            kind,
            name: &name_field[..name_len],
        })
    })
}

impl Passthrough {
    /// Appends to `out` the entries of directory handle `fh` (of inode `dir`) from `offset`,
    /// at most `size` bytes of them. With `plus`, each entry but `.` and `..` is looked up
    /// (counted like a LOOKUP) and carries its attributes.
    pub fn readdir(
        &mut self,
        dir: u64,
        fh: u64,
        offset: u64,
        size: usize,
        plus: bool,
        out: &mut Vec<u8>,
    ) -> FsResult<()> {
        let start = out.len();
        let mut buf = vec![0u8; GETDENTS_BUFFER];
        {
            let handle = self.dir_handle(fh)?;
            sys::lseek(handle, offset, libc::SEEK_SET as u32)?;
        }
        loop {
            let n = sys::getdents(self.dir_handle(fh)?, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            for entry in host_entries(&buf[..n]) {
                let dot = entry.name == b"." || entry.name == b"..";
                let mut needed = dirent_size(entry.name.len());
                if plus {
                    needed += size_of::<abi::EntryOut>();
                }
                if out.len() - start + needed > size {
                    return Ok(());
                }
                if plus {
                    let looked_up = if dot {
                        // Node id 0: the kernel takes nothing from it (and counts no lookup).
                        abi::EntryOut::default()
                    } else {
                        match self.lookup(dir, entry.name) {
                            Ok(found) => found,
                            // Gone since getdents (or the table is full): leave it out.
                            Err(Errno(libc::ENOENT)) => continue,
                            Err(e) if out.len() == start => return Err(e),
                            Err(_) => return Ok(()),
                        }
                    };
                    out.extend_from_slice(looked_up.as_slice());
                }
                let dirent = abi::Dirent {
                    ino: entry.ino,
                    off: entry.off,
                    namelen: entry.name.len() as u32,
                    kind: u32::from(entry.kind),
                };
                let record_start = out.len();
                out.extend_from_slice(dirent.as_slice());
                out.extend_from_slice(entry.name);
                out.resize(record_start + dirent_size(entry.name.len()), 0);
            }
        }
    }
}
