//! A hostile guest trying to reach past the shared directory. Each test ends by checking the
//! file next to the share is as it was.

use std::os::unix::fs::MetadataExt;

use vm_memory::ByteValued;

use super::abi::{self, opcode, ROOT_ID};
use super::tests::{Session, SECRET};

#[test]
fn lookup_of_dotdot_dot_empty_or_slashed_names_is_refused() {
    let mut s = Session::new();
    for name in ["..", ".", "", "../outside", "a/b", "/etc"] {
        assert_eq!(
            s.lookup(ROOT_ID, name).unwrap_err(),
            libc::EINVAL,
            "{name:?}"
        );
    }
    s.assert_outside_untouched();
}

#[test]
fn symlink_to_etc_is_not_followed_by_lookup_or_open() {
    let mut s = Session::new();
    let link = s.symlink(ROOT_ID, "etc", "/etc");
    // Looking up through the link: its node is a symlink, not a directory.
    assert_eq!(s.lookup(link.nodeid, "passwd").unwrap_err(), libc::ENOTDIR);
    assert_eq!(
        s.open(link.nodeid, libc::O_RDONLY).unwrap_err(),
        libc::ELOOP
    );
    assert_eq!(
        s.call(opcode::OPENDIR, link.nodeid, &[&[0; 8]]).error,
        libc::ENOTDIR
    );
    s.assert_outside_untouched();
}

#[test]
fn symlink_to_the_outside_file_cannot_be_read_written_or_truncated() {
    let mut s = Session::new();
    let link = s.symlink(ROOT_ID, "out", "../outside");
    assert_eq!(s.open(link.nodeid, libc::O_RDWR).unwrap_err(), libc::ELOOP);
    let truncate = abi::SetattrIn {
        valid: abi::fattr::SIZE,
        size: 0,
        ..Default::default()
    };
    assert_eq!(
        s.call(opcode::SETATTR, link.nodeid, &[truncate.as_slice()])
            .error,
        libc::ELOOP
    );
    let chmod = abi::SetattrIn {
        valid: abi::fattr::MODE,
        mode: 0o777,
        ..Default::default()
    };
    assert_ne!(
        s.call(opcode::SETATTR, link.nodeid, &[chmod.as_slice()])
            .error,
        0
    );
    let chown = abi::SetattrIn {
        valid: abi::fattr::UID,
        uid: 4242,
        ..Default::default()
    };
    assert_eq!(
        s.call(opcode::SETATTR, link.nodeid, &[chown.as_slice()])
            .error,
        0
    );
    assert_ne!(
        std::fs::metadata(s.outside()).unwrap().uid(),
        4242,
        "only the link changed"
    );
    // CREATE over the link's name neither follows it nor truncates the target.
    let create = abi::CreateIn {
        flags: (libc::O_RDWR | libc::O_TRUNC) as u32,
        mode: 0o644,
        ..Default::default()
    };
    let answer = s.call(opcode::CREATE, ROOT_ID, &[create.as_slice(), b"out\0"]);
    assert_eq!(answer.error, libc::ELOOP);
    s.assert_outside_untouched();
}

#[test]
fn relative_symlink_chain_is_never_resolved_on_the_host() {
    let mut s = Session::new();
    let dir = s.mkdir(ROOT_ID, "d");
    s.symlink(dir.nodeid, "up", "..");
    s.symlink(ROOT_ID, "a", "d/up/../outside");
    let up = s.lookup(dir.nodeid, "up").unwrap();
    assert_eq!(s.lookup(up.nodeid, "outside").unwrap_err(), libc::ENOTDIR);
    let a = s.lookup(ROOT_ID, "a").unwrap();
    assert_eq!(s.open(a.nodeid, libc::O_RDONLY).unwrap_err(), libc::ELOOP);
    let readlink = s.call(opcode::READLINK, a.nodeid, &[]);
    assert_eq!(readlink.body, b"d/up/../outside", "read as data only");
    s.assert_outside_untouched();
}

#[test]
fn hard_link_of_an_outside_file_is_not_reachable() {
    let mut s = Session::new();
    // The guest can only name inodes it was given: a node id it made up is refused.
    for node in [0, 2, 999, u64::MAX] {
        let arg = abi::LinkIn { oldnodeid: node };
        let answer = s.call(opcode::LINK, ROOT_ID, &[arg.as_slice(), b"stolen\0"]);
        assert_eq!(answer.error, libc::EBADF, "node {node}");
    }
    // Linking through a symlink to the outside links the symlink, not its target.
    let link = s.symlink(ROOT_ID, "out", "../outside");
    let arg = abi::LinkIn {
        oldnodeid: link.nodeid,
    };
    let answer = s.call(opcode::LINK, ROOT_ID, &[arg.as_slice(), b"hard\0"]);
    assert_eq!(answer.error, 0);
    let meta = std::fs::symlink_metadata(s.share().join("hard")).unwrap();
    assert!(meta.file_type().is_symlink());
    s.assert_outside_untouched();
}

#[test]
fn trusted_and_security_xattrs_are_refused_and_hidden() {
    let mut s = Session::new();
    let (entry, _) = s.create(ROOT_ID, "f", 0o644);
    let path = s.share().join("f");
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // The host sets one of each (root may); the guest must see neither.
    for name in [c"trusted.overlay.opaque", c"security.vmpod"] {
        // SAFETY: NUL-terminated strings and a 1-byte value.
        let ret =
            unsafe { libc::setxattr(c_path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        assert_eq!(ret, 0, "{name:?}: {}", std::io::Error::last_os_error());
    }
    for name in [
        "trusted.overlay.opaque",
        "security.capability",
        "security.vmpod",
    ] {
        let arg = abi::SetxattrIn { size: 1, flags: 0 };
        let name0 = format!("{name}\0");
        let set = s.call(
            opcode::SETXATTR,
            entry.nodeid,
            &[arg.as_slice(), name0.as_bytes(), b"x"],
        );
        assert_eq!(set.error, libc::EPERM, "set {name}");
        let get_arg = abi::GetxattrIn {
            size: 64,
            padding: 0,
        };
        let get = s.call(
            opcode::GETXATTR,
            entry.nodeid,
            &[get_arg.as_slice(), name0.as_bytes()],
        );
        assert_eq!(get.error, libc::ENODATA, "get {name}");
        let remove = s.call(opcode::REMOVEXATTR, entry.nodeid, &[name0.as_bytes()]);
        assert_eq!(remove.error, libc::EPERM, "remove {name}");
    }
    let list_arg = abi::GetxattrIn {
        size: 0,
        padding: 0,
    };
    let size: abi::GetxattrOut = s
        .call(opcode::LISTXATTR, entry.nodeid, &[list_arg.as_slice()])
        .get();
    assert_eq!(
        size.size, 0,
        "trusted.* and security.* are filtered from the list"
    );
    let mut value = [0u8; 8];
    // SAFETY: NUL-terminated strings and a writable buffer.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            c"security.vmpod".as_ptr(),
            value.as_mut_ptr().cast(),
            8,
        )
    };
    assert_eq!(
        &value[..n as usize],
        b"y",
        "the host's attribute is untouched"
    );
}

#[test]
fn rename_cannot_move_anything_outside_the_share() {
    let mut s = Session::new();
    let dir = s.mkdir(ROOT_ID, "d");
    let (file, _) = s.create(dir.nodeid, "f", 0o644);
    for new in ["../escaped", "../../escaped", "/tmp/escaped", ".."] {
        let arg = abi::RenameIn { newdir: ROOT_ID };
        let new = format!("{new}\0");
        let parts: Vec<u8> = [arg.as_slice(), b"d\0", new.as_bytes()].concat();
        assert_eq!(
            s.call(opcode::RENAME, ROOT_ID, &[&parts]).error,
            libc::EINVAL,
            "{new}"
        );
    }
    // Renaming the directory away while the guest holds its inode: lookups through the held
    // node stay inside it, wherever it now is.
    std::fs::rename(s.share().join("d"), s.share().join("moved")).unwrap();
    let again = s.lookup(dir.nodeid, "f").unwrap();
    assert_eq!(again.nodeid, file.nodeid);
    assert_eq!(s.lookup(dir.nodeid, "..").unwrap_err(), libc::EINVAL);
    assert!(!s.scratch.path().join("escaped").exists());
    s.assert_outside_untouched();
    assert_eq!(std::fs::read(s.outside()).unwrap(), SECRET);
}

#[test]
fn mknod_of_a_directory_type_or_garbage_mode_is_refused() {
    let mut s = Session::new();
    for mode in [
        libc::S_IFDIR | 0o755,
        libc::S_IFLNK | 0o777,
        0o170000 | 0o644,
    ] {
        let arg = abi::MknodIn {
            mode,
            ..Default::default()
        };
        assert_eq!(
            s.call(opcode::MKNOD, ROOT_ID, &[arg.as_slice(), b"n\0"])
                .error,
            libc::EINVAL
        );
    }
}
