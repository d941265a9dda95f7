//! The inodes the guest knows: each an `O_PATH` descriptor of a host file under the shared
//! directory, named to the guest by a node id of ours and counted by the guest's lookups.
//!
//! Node ids are our own counter, never host pointers or handles, so a guest can only name an
//! inode it was given; the same host file (by device and inode number) always gets the same
//! node id while the guest holds it.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::abi::ROOT_ID;

/// At most this many inodes are held for the guest; more lookups fail with ENFILE.
pub const MAX_INODES: usize = 1 << 20;

pub struct Inode {
    fd: OwnedFd,
    key: InodeKey,
    /// The file type bits (S_IFMT) of the host inode, which never change.
    pub kind: u32,
    lookups: u64,
}

impl Inode {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn is_symlink(&self) -> bool {
        self.kind == libc::S_IFLNK
    }
}

/// A host file's identity: (st_dev, st_ino).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
}

impl InodeKey {
    pub fn of(st: &libc::stat) -> InodeKey {
        InodeKey {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("inode table is full ({MAX_INODES} entries)")]
pub struct TableFull;

pub struct Inodes {
    by_id: HashMap<u64, Inode>,
    by_key: HashMap<InodeKey, u64>,
    next_id: u64,
    limit: usize,
}

impl Inodes {
    /// A table holding only the root, which is never forgotten.
    pub fn new(root: OwnedFd, root_stat: &libc::stat) -> Inodes {
        Self::with_limit(root, root_stat, MAX_INODES)
    }

    pub fn with_limit(root: OwnedFd, root_stat: &libc::stat, limit: usize) -> Inodes {
        let key = InodeKey::of(root_stat);
        let mut by_id = HashMap::new();
        by_id.insert(
            ROOT_ID,
            Inode {
                fd: root,
                key,
                kind: root_stat.st_mode & libc::S_IFMT,
                // The root is pinned: forgets of it are counted but never drop it.
                lookups: u64::MAX / 2,
            },
        );
        Inodes {
            by_id,
            by_key: HashMap::from([(key, ROOT_ID)]),
            next_id: ROOT_ID + 1,
            limit,
        }
    }

    pub fn get(&self, id: u64) -> Option<&Inode> {
        self.by_id.get(&id)
    }

    /// Counts one more lookup of the host file `fd` (whose stat is `st`), reusing its node id
    /// if the guest already holds it (then `fd` is closed, the held one stays).
    pub fn add_lookup(&mut self, fd: OwnedFd, st: &libc::stat) -> Result<u64, TableFull> {
        let key = InodeKey::of(st);
        if let Some(&id) = self.by_key.get(&key) {
            if let Some(inode) = self.by_id.get_mut(&id) {
                inode.lookups = inode.lookups.saturating_add(1);
                return Ok(id);
            }
        }
        if self.by_id.len() >= self.limit {
            return Err(TableFull);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_id.insert(
            id,
            Inode {
                fd,
                key,
                kind: st.st_mode & libc::S_IFMT,
                lookups: 1,
            },
        );
        self.by_key.insert(key, id);
        Ok(id)
    }

    /// The guest forgot `count` lookups of `id`; at zero the descriptor is closed. Unknown ids
    /// and excess counts are ignored (a guest cannot make us forget what others hold).
    pub fn forget(&mut self, id: u64, count: u64) {
        if id == ROOT_ID {
            return;
        }
        let Some(inode) = self.by_id.get_mut(&id) else {
            return;
        };
        inode.lookups = inode.lookups.saturating_sub(count);
        if inode.lookups == 0 {
            if let Some(inode) = self.by_id.remove(&id) {
                self.by_key.remove(&inode.key);
            }
        }
    }

    /// Drops every inode but the root (the guest's DESTROY or a device reset).
    pub fn clear(&mut self) {
        self.by_id.retain(|&id, _| id == ROOT_ID);
        self.by_key.retain(|_, &mut id| id == ROOT_ID);
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::sys;

    fn open(path: &std::path::Path) -> (OwnedFd, libc::stat) {
        let fd: OwnedFd = std::fs::File::open(path).unwrap().into();
        let st = sys::stat(fd.as_fd()).unwrap();
        (fd, st)
    }

    #[test]
    fn the_same_host_file_keeps_its_node_id_until_every_lookup_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let (root, root_st) = open(dir.path());
        let mut inodes = Inodes::new(root, &root_st);
        let (a, st) = open(&dir.path().join("f"));
        let (b, _) = open(&dir.path().join("f"));
        let id = inodes.add_lookup(a, &st).unwrap();
        assert_eq!(inodes.add_lookup(b, &st).unwrap(), id);
        inodes.forget(id, 1);
        assert!(inodes.get(id).is_some());
        inodes.forget(id, 1);
        assert!(inodes.get(id).is_none());
        inodes.forget(ROOT_ID, u64::MAX);
        assert!(inodes.get(ROOT_ID).is_some(), "the root is pinned");
    }

    #[test]
    fn a_full_table_refuses_new_inodes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let (root, root_st) = open(dir.path());
        let mut inodes = Inodes::with_limit(root, &root_st, 1);
        let (fd, st) = open(&dir.path().join("f"));
        assert_eq!(inodes.add_lookup(fd, &st), Err(TableFull));
    }
}
