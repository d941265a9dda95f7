//! Open files and directories the guest holds, by handle numbers of ours.

use std::collections::HashMap;
use std::fs::File;

/// At most this many handles are open for the guest; more opens fail with ENFILE.
pub const MAX_HANDLES: usize = 1 << 16;

pub struct Handle {
    pub file: File,
    pub is_dir: bool,
}

pub struct Handles {
    open: HashMap<u64, Handle>,
    next: u64,
    limit: usize,
}

impl Default for Handles {
    fn default() -> Self {
        Handles::with_limit(MAX_HANDLES)
    }
}

impl Handles {
    pub fn with_limit(limit: usize) -> Handles {
        Handles {
            open: HashMap::new(),
            next: 1,
            limit,
        }
    }

    /// Stores `handle`; `None` when the table is full (the file is closed).
    pub fn insert(&mut self, handle: Handle) -> Option<u64> {
        if self.open.len() >= self.limit {
            return None;
        }
        let fh = self.next;
        self.next = self.next.wrapping_add(1).max(1);
        self.open.insert(fh, handle);
        Some(fh)
    }

    /// The handle `fh` if it is open and of the kind asked for (a directory handle cannot be
    /// read as a file, nor the other way round).
    pub fn get(&self, fh: u64, dir: bool) -> Option<&Handle> {
        self.open.get(&fh).filter(|h| h.is_dir == dir)
    }

    pub fn remove(&mut self, fh: u64, dir: bool) -> Option<Handle> {
        self.get(fh, dir)?;
        self.open.remove(&fh)
    }

    pub fn clear(&mut self) {
        self.open.clear();
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(is_dir: bool) -> Handle {
        Handle {
            file: File::open("/").unwrap(),
            is_dir,
        }
    }

    #[test]
    fn a_handle_is_found_only_as_the_kind_it_was_opened_as() {
        let mut handles = Handles::default();
        let fh = handles.insert(handle(true)).unwrap();
        assert!(handles.get(fh, false).is_none());
        assert!(handles.remove(fh, false).is_none());
        assert!(handles.remove(fh, true).is_some());
        assert_eq!(handles.len(), 0);
    }

    #[test]
    fn a_full_table_refuses_more_handles() {
        let mut handles = Handles::with_limit(1);
        assert!(handles.insert(handle(false)).is_some());
        assert!(handles.insert(handle(false)).is_none());
    }
}
