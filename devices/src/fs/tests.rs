//! The FUSE server's operations on a scratch share, through `FuseServer::handle` as a
//! transport would call it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use vm_memory::ByteValued;

use super::abi::{self, opcode, read_struct, ROOT_ID};
use super::request::tests::request;
use super::*;

/// A server over `<scratch>/share`, with `<scratch>/outside` next to the share holding a
/// secret no request may reach.
pub struct Session {
    pub scratch: tempfile::TempDir,
    pub server: FuseServer,
}

/// A reply split into its errno (0 for success) and body.
pub struct Answer {
    pub error: i32,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn get<T: ByteValued + Default>(&self) -> T {
        assert_eq!(self.error, 0, "request failed with errno {}", -self.error);
        read_struct(&self.body).unwrap()
    }
}

pub const SECRET: &[u8] = b"host secret";

impl Session {
    pub fn new() -> Session {
        let scratch = tempfile::tempdir().unwrap();
        std::fs::create_dir(scratch.path().join("share")).unwrap();
        std::fs::write(scratch.path().join("outside"), SECRET).unwrap();
        let server = FuseServer::new(&scratch.path().join("share")).unwrap();
        let mut session = Session { scratch, server };
        let init = abi::InitIn {
            major: 7,
            minor: 36,
            max_readahead: 1 << 17,
            flags: abi::init_flags::DO_READDIRPLUS | abi::init_flags::MAX_PAGES,
        };
        assert_eq!(session.call(opcode::INIT, 0, &[init.as_slice()]).error, 0);
        session
    }

    pub fn share(&self) -> PathBuf {
        self.scratch.path().join("share")
    }

    pub fn outside(&self) -> PathBuf {
        self.scratch.path().join("outside")
    }

    pub fn assert_outside_untouched(&self) {
        assert_eq!(std::fs::read(self.outside()).unwrap(), SECRET);
        let meta = std::fs::metadata(self.outside()).unwrap();
        assert_eq!(meta.nlink(), 1, "no link to the outside file was made");
    }

    pub fn call(&mut self, opcode: u32, node: u64, parts: &[&[u8]]) -> Answer {
        let req = request(opcode, node, parts);
        let mut reply = Vec::new();
        let n = self.server.handle(&req, server::MAX_REPLY, &mut reply);
        assert!(n >= 16, "opcode {opcode} got no reply");
        let header: abi::OutHeader = read_struct(&reply).unwrap();
        assert_eq!((header.len as usize, header.unique), (n, 0x1234));
        Answer {
            error: -header.error,
            body: reply[16..n].to_vec(),
        }
    }

    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<abi::EntryOut, i32> {
        let answer = self.call(opcode::LOOKUP, parent, &[name.as_bytes(), b"\0"]);
        match answer.error {
            0 => Ok(answer.get()),
            e => Err(e),
        }
    }

    pub fn create(&mut self, parent: u64, name: &str, mode: u32) -> (abi::EntryOut, u64) {
        let arg = abi::CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | mode,
            umask: 0,
            open_flags: 0,
        };
        let answer = self.call(
            opcode::CREATE,
            parent,
            &[arg.as_slice(), name.as_bytes(), b"\0"],
        );
        let entry: abi::EntryOut = answer.get();
        let open: abi::OpenOut = read_struct(&answer.body[128..]).unwrap();
        (entry, open.fh)
    }

    pub fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        let arg = abi::OpenIn {
            flags: flags as u32,
            open_flags: 0,
        };
        let answer = self.call(opcode::OPEN, node, &[arg.as_slice()]);
        match answer.error {
            0 => Ok(answer.get::<abi::OpenOut>().fh),
            e => Err(e),
        }
    }

    pub fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> u32 {
        let arg = abi::WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        self.call(opcode::WRITE, node, &[arg.as_slice(), data])
            .get::<abi::WriteOut>()
            .size
    }

    pub fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Vec<u8> {
        let arg = abi::ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let answer = self.call(opcode::READ, node, &[arg.as_slice()]);
        assert_eq!(answer.error, 0);
        answer.body
    }

    pub fn mkdir(&mut self, parent: u64, name: &str) -> abi::EntryOut {
        let arg = abi::MkdirIn {
            mode: 0o755,
            umask: 0,
        };
        self.call(
            opcode::MKDIR,
            parent,
            &[arg.as_slice(), name.as_bytes(), b"\0"],
        )
        .get()
    }

    pub fn symlink(&mut self, parent: u64, name: &str, target: &str) -> abi::EntryOut {
        let parts: [&[u8]; 4] = [name.as_bytes(), b"\0", target.as_bytes(), b"\0"];
        self.call(opcode::SYMLINK, parent, &parts).get()
    }

    /// Names in a READDIR(PLUS) answer, with the node ids READDIRPLUS gave them.
    pub fn readdir(&mut self, dir: u64, plus: bool) -> Vec<(String, u64)> {
        let fh = self
            .call(opcode::OPENDIR, dir, &[abi::OpenIn::default().as_slice()])
            .get::<abi::OpenOut>()
            .fh;
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let arg = abi::ReadIn {
                fh,
                offset,
                size: 4096,
                ..Default::default()
            };
            let op = if plus {
                opcode::READDIRPLUS
            } else {
                opcode::READDIR
            };
            let answer = self.call(op, dir, &[arg.as_slice()]);
            assert_eq!(answer.error, 0);
            if answer.body.is_empty() {
                break;
            }
            let mut rest = &answer.body[..];
            while !rest.is_empty() {
                let mut node = 0;
                if plus {
                    node = read_struct::<abi::EntryOut>(rest).unwrap().nodeid;
                    rest = &rest[128..];
                }
                let dirent: abi::Dirent = read_struct(rest).unwrap();
                let name = &rest[24..24 + dirent.namelen as usize];
                names.push((String::from_utf8(name.to_vec()).unwrap(), node));
                offset = dirent.off;
                rest = &rest[abi::dirent_size(dirent.namelen as usize)..];
            }
        }
        let release = abi::ReleaseIn {
            fh,
            ..Default::default()
        };
        assert_eq!(
            self.call(opcode::RELEASEDIR, dir, &[release.as_slice()])
                .error,
            0
        );
        names
    }
}

#[test]
fn init_answers_the_lower_minor_and_only_flags_the_guest_offered() {
    let mut session = Session::new();
    let init = abi::InitIn {
        major: 7,
        minor: 41,
        max_readahead: 4096,
        flags: abi::init_flags::MAX_PAGES | abi::init_flags::ASYNC_READ | (1 << 16),
    };
    let out: abi::InitOut = session.call(opcode::INIT, 0, &[init.as_slice()]).get();
    assert_eq!((out.major, out.minor), (7, 36));
    assert_eq!(
        out.flags,
        abi::init_flags::MAX_PAGES | abi::init_flags::ASYNC_READ
    );
    assert_eq!((out.max_write, out.max_pages), (1 << 20, 256));
    let older = abi::InitIn { minor: 31, ..init };
    let out: abi::InitOut = session.call(opcode::INIT, 0, &[older.as_slice()]).get();
    assert_eq!(out.minor, 31);
    let ancient = abi::InitIn { minor: 12, ..init };
    assert_eq!(
        session.call(opcode::INIT, 0, &[ancient.as_slice()]).error,
        libc::EPROTO
    );
}

#[test]
fn requests_before_init_fail_with_eio() {
    let scratch = tempfile::tempdir().unwrap();
    let mut server = FuseServer::new(scratch.path()).unwrap();
    let mut reply = Vec::new();
    let n = server.handle(
        &request(opcode::GETATTR, ROOT_ID, &[&[0; 16]]),
        4096,
        &mut reply,
    );
    let header: abi::OutHeader = read_struct(&reply[..n]).unwrap();
    assert_eq!(header.error, -libc::EIO);
}

#[test]
fn create_write_read_back_and_the_file_lands_in_the_share() {
    let mut s = Session::new();
    let (entry, fh) = s.create(ROOT_ID, "hello.txt", 0o640);
    assert_eq!(entry.attr.mode, libc::S_IFREG | 0o640);
    assert_eq!(s.write(entry.nodeid, fh, 0, b"hello, "), 7);
    assert_eq!(s.write(entry.nodeid, fh, 7, b"world"), 5);
    assert_eq!(s.read(entry.nodeid, fh, 0, 4096), b"hello, world");
    assert_eq!(s.read(entry.nodeid, fh, 7, 3), b"wor");
    let meta = std::fs::metadata(s.share().join("hello.txt")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (1000, 1000),
        "owned by the caller"
    );
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(
        std::fs::read(s.share().join("hello.txt")).unwrap(),
        b"hello, world"
    );
    assert_eq!(s.lookup(ROOT_ID, "hello.txt").unwrap().nodeid, entry.nodeid);
    let release = abi::ReleaseIn {
        fh,
        ..Default::default()
    };
    assert_eq!(
        s.call(opcode::RELEASE, entry.nodeid, &[release.as_slice()])
            .error,
        0
    );
    assert_eq!(s.server.filesystem().open_handles(), 0);
}

#[test]
fn lookup_of_a_missing_name_is_enoent_and_forget_drops_the_inode() {
    let mut s = Session::new();
    assert_eq!(s.lookup(ROOT_ID, "nope").unwrap_err(), libc::ENOENT);
    std::fs::write(s.share().join("f"), b"x").unwrap();
    let entry = s.lookup(ROOT_ID, "f").unwrap();
    s.lookup(ROOT_ID, "f").unwrap();
    assert_eq!(s.server.filesystem().known_inodes(), 2);
    let forget = abi::ForgetIn { nlookup: 2 };
    let mut reply = Vec::new();
    let req = request(opcode::FORGET, entry.nodeid, &[forget.as_slice()]);
    assert_eq!(
        s.server.handle(&req, 4096, &mut reply),
        0,
        "FORGET has no reply"
    );
    assert_eq!(s.server.filesystem().known_inodes(), 1);
}

#[test]
fn batch_forget_drops_every_listed_inode() {
    let mut s = Session::new();
    let mut parts = Vec::new();
    for name in ["a", "b"] {
        std::fs::write(s.share().join(name), b"x").unwrap();
        let entry = s.lookup(ROOT_ID, name).unwrap();
        parts.extend_from_slice(
            abi::ForgetOne {
                nodeid: entry.nodeid,
                nlookup: 1,
            }
            .as_slice(),
        );
    }
    let head = abi::BatchForgetIn { count: 2, dummy: 0 };
    let mut reply = Vec::new();
    let req = request(opcode::BATCH_FORGET, 0, &[head.as_slice(), &parts]);
    assert_eq!(s.server.handle(&req, 4096, &mut reply), 0);
    assert_eq!(s.server.filesystem().known_inodes(), 1);
}

#[test]
fn mkdir_rmdir_unlink_and_rename_change_the_share() {
    let mut s = Session::new();
    let dir = s.mkdir(ROOT_ID, "d");
    assert_eq!(dir.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    let (file, _) = s.create(dir.nodeid, "f", 0o644);
    let rename = abi::RenameIn { newdir: ROOT_ID };
    let answer = s.call(opcode::RENAME, dir.nodeid, &[rename.as_slice(), b"f\0g\0"]);
    assert_eq!(answer.error, 0);
    assert!(s.share().join("g").is_file() && !s.share().join("d/f").exists());
    assert_eq!(
        s.lookup(ROOT_ID, "g").unwrap().nodeid,
        file.nodeid,
        "same inode"
    );
    assert_eq!(
        s.call(opcode::RMDIR, ROOT_ID, &[b"g\0"]).error,
        libc::ENOTDIR
    );
    assert_eq!(s.call(opcode::UNLINK, ROOT_ID, &[b"g\0"]).error, 0);
    assert_eq!(s.call(opcode::RMDIR, ROOT_ID, &[b"d\0"]).error, 0);
    assert_eq!(std::fs::read_dir(s.share()).unwrap().count(), 0);
}

#[test]
fn rename2_noreplace_refuses_and_exchange_swaps() {
    let mut s = Session::new();
    std::fs::write(s.share().join("a"), b"A").unwrap();
    std::fs::write(s.share().join("b"), b"B").unwrap();
    let mut call = |flags| {
        let arg = abi::Rename2In {
            newdir: ROOT_ID,
            flags,
            padding: 0,
        };
        s.call(opcode::RENAME2, ROOT_ID, &[arg.as_slice(), b"a\0b\0"])
            .error
    };
    assert_eq!(call(abi::RENAME_NOREPLACE), libc::EEXIST);
    assert_eq!(call(abi::RENAME_EXCHANGE), 0);
    assert_eq!(call(4), libc::EINVAL, "whiteouts are not ours to make");
    assert_eq!(std::fs::read(s.share().join("a")).unwrap(), b"B");
    assert_eq!(std::fs::read(s.share().join("b")).unwrap(), b"A");
}

#[test]
fn symlink_is_stored_and_readlink_returns_its_target() {
    let mut s = Session::new();
    let link = s.symlink(ROOT_ID, "l", "some/where");
    assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    let target = std::fs::read_link(s.share().join("l")).unwrap();
    assert_eq!(target, PathBuf::from("some/where"));
    let answer = s.call(opcode::READLINK, link.nodeid, &[]);
    assert_eq!((answer.error, &answer.body[..]), (0, &b"some/where"[..]));
    let meta = std::fs::symlink_metadata(s.share().join("l")).unwrap();
    assert_eq!(meta.uid(), 1000, "the link itself was given to the caller");
}

#[test]
fn readdir_and_readdirplus_list_every_entry_across_requests() {
    let mut s = Session::new();
    for i in 0..200 {
        std::fs::write(s.share().join(format!("file-{i:03}")), b"").unwrap();
    }
    let mut names: Vec<String> = s.readdir(ROOT_ID, false).into_iter().map(|e| e.0).collect();
    names.sort();
    assert_eq!(names.len(), 202);
    assert_eq!(&names[..3], [".", "..", "file-000"]);
    let plus = s.readdir(ROOT_ID, true);
    assert_eq!(plus.len(), 202);
    for (name, node) in &plus {
        let dot = name == "." || name == "..";
        assert_eq!(*node == 0, dot, "{name}: node {node}");
    }
    assert_eq!(
        s.server.filesystem().known_inodes(),
        201,
        "each entry looked up once"
    );
}

#[test]
fn setattr_changes_mode_owner_size_and_times_including_now() {
    let mut s = Session::new();
    let (entry, _) = s.create(ROOT_ID, "f", 0o644);
    std::fs::write(s.share().join("f"), b"0123456789").unwrap();
    let arg = abi::SetattrIn {
        valid: abi::fattr::MODE
            | abi::fattr::UID
            | abi::fattr::GID
            | abi::fattr::SIZE
            | abi::fattr::ATIME
            | abi::fattr::MTIME_NOW,
        mode: 0o600,
        uid: 4242,
        gid: 4343,
        size: 4,
        atime: 1_000_000,
        atimensec: 5,
        ..Default::default()
    };
    let out: abi::AttrOut = s
        .call(opcode::SETATTR, entry.nodeid, &[arg.as_slice()])
        .get();
    assert_eq!(out.attr.mode, libc::S_IFREG | 0o600);
    let meta = std::fs::metadata(s.share().join("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.len()), (4242, 4343, 4));
    assert_eq!((meta.atime(), meta.atime_nsec()), (1_000_000, 5));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((meta.mtime() - now).abs() < 60, "mtime set to now");
    let type_change = abi::SetattrIn {
        valid: abi::fattr::MODE,
        mode: libc::S_IFDIR | 0o4755,
        ..Default::default()
    };
    s.call(opcode::SETATTR, entry.nodeid, &[type_change.as_slice()]);
    let mode = std::fs::metadata(s.share().join("f")).unwrap().mode();
    assert_eq!(
        mode,
        libc::S_IFREG | 0o4755,
        "the type bits are not the guest's"
    );
}

#[test]
fn statfs_reports_the_host_filesystem() {
    let mut s = Session::new();
    let out: abi::StatfsOut = s.call(opcode::STATFS, ROOT_ID, &[]).get();
    assert!(out.bsize > 0 && out.namelen >= 255);
}

#[test]
fn user_xattrs_round_trip_and_list() {
    let mut s = Session::new();
    let (entry, _) = s.create(ROOT_ID, "f", 0o644);
    let arg = abi::SetxattrIn { size: 3, flags: 0 };
    let answer = s.call(
        opcode::SETXATTR,
        entry.nodeid,
        &[arg.as_slice(), b"user.k\0", b"v42"],
    );
    assert_eq!(answer.error, 0);
    let size = abi::GetxattrIn {
        size: 0,
        padding: 0,
    };
    let out: abi::GetxattrOut = s
        .call(
            opcode::GETXATTR,
            entry.nodeid,
            &[size.as_slice(), b"user.k\0"],
        )
        .get();
    assert_eq!(out.size, 3);
    let room = abi::GetxattrIn {
        size: 64,
        padding: 0,
    };
    let answer = s.call(
        opcode::GETXATTR,
        entry.nodeid,
        &[room.as_slice(), b"user.k\0"],
    );
    assert_eq!(answer.body, b"v42");
    let answer = s.call(opcode::LISTXATTR, entry.nodeid, &[room.as_slice()]);
    assert_eq!(answer.body, b"user.k\0");
    assert_eq!(
        s.call(opcode::REMOVEXATTR, entry.nodeid, &[b"user.k\0"])
            .error,
        0
    );
}

#[test]
fn unknown_and_unsupported_opcodes_answer_enosys() {
    let mut s = Session::new();
    assert_eq!(s.call(9999, ROOT_ID, &[]).error, libc::ENOSYS);
    assert_eq!(
        s.call(31 /* GETLK */, ROOT_ID, &[&[0; 64]]).error,
        libc::ENOSYS
    );
}

#[test]
fn fallocate_lseek_fsync_flush_and_access_work_on_an_open_file() {
    let mut s = Session::new();
    let (entry, fh) = s.create(ROOT_ID, "f", 0o644);
    let arg = abi::FallocateIn {
        fh,
        offset: 0,
        length: 8192,
        mode: 0,
        padding: 0,
    };
    assert_eq!(
        s.call(opcode::FALLOCATE, entry.nodeid, &[arg.as_slice()])
            .error,
        0
    );
    assert_eq!(std::fs::metadata(s.share().join("f")).unwrap().len(), 8192);
    let seek = abi::LseekIn {
        fh,
        offset: 0,
        whence: libc::SEEK_END as u32,
        padding: 0,
    };
    let out: abi::LseekOut = s
        .call(opcode::LSEEK, entry.nodeid, &[seek.as_slice()])
        .get();
    assert_eq!(out.offset, 8192);
    let fsync = abi::FsyncIn {
        fh,
        fsync_flags: 1,
        padding: 0,
    };
    assert_eq!(
        s.call(opcode::FSYNC, entry.nodeid, &[fsync.as_slice()])
            .error,
        0
    );
    let flush = abi::FlushIn {
        fh,
        ..Default::default()
    };
    assert_eq!(
        s.call(opcode::FLUSH, entry.nodeid, &[flush.as_slice()])
            .error,
        0
    );
    let exec = abi::AccessIn {
        mask: libc::X_OK as u32,
        padding: 0,
    };
    assert_eq!(
        s.call(opcode::ACCESS, entry.nodeid, &[exec.as_slice()])
            .error,
        libc::EACCES
    );
}

#[test]
fn opening_a_fifo_is_refused_instead_of_blocking() {
    let mut s = Session::new();
    let arg = abi::MknodIn {
        mode: libc::S_IFIFO | 0o644,
        ..Default::default()
    };
    let fifo: abi::EntryOut = s
        .call(opcode::MKNOD, ROOT_ID, &[arg.as_slice(), b"p\0"])
        .get();
    assert_eq!(
        s.open(fifo.nodeid, libc::O_RDONLY).unwrap_err(),
        libc::ENXIO
    );
}

#[test]
fn destroy_and_reset_forget_every_inode_and_handle() {
    let mut s = Session::new();
    let (_, _) = s.create(ROOT_ID, "f", 0o644);
    assert_eq!(s.server.filesystem().open_handles(), 1);
    assert_eq!(s.call(opcode::DESTROY, 0, &[]).error, 0);
    assert_eq!(s.server.filesystem().open_handles(), 0);
    assert_eq!(s.server.filesystem().known_inodes(), 1);
    assert_eq!(
        s.call(opcode::GETATTR, ROOT_ID, &[&[0; 16]]).error,
        libc::EIO,
        "needs INIT again"
    );
}
