//! Live shared volumes through `vmpod run` (`-v`, `--mount`, `--tmpfs`): real microVMs on the
//! backend this host runs, restored from templates unless a test boots cold. The guest side
//! runs as root in the container; every check of what the guest must not reach is made on
//! the host.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A background container removed however the test ends.
struct Running(String);

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        Running(ok(&all).trim().to_string())
    }

    fn exec(&self, script: &str) -> Output {
        vmpod(&["exec", &self.0, "sh", "-c", script], None)
    }

    /// Runs `script` in the container; it must succeed. Its stdout.
    fn sh(&self, script: &str) -> String {
        let out = self.exec(script);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{script}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = vmpod(&["rm", "-f", &self.0], None);
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The mount options of the host mount at `point`, from /proc/self/mountinfo.
fn mount_options(point: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (Path::new(fields.get(4)?) == point).then(|| fields[5].to_string())
    })
}

/// Host mounts under the sandboxes' state root.
fn sandbox_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p.starts_with("/run/vmpod/"))
        .collect()
}

#[test]
fn a_volume_is_live_both_ways_for_data_names_modes_and_owners() {
    let _serial = serial();
    let before = (leftovers(), sandbox_mounts());
    let rw = support::Scratch::new("volume-rw");
    let ro = support::Scratch::new("volume-ro");
    std::fs::write(ro.path("kept"), "host data\n").unwrap();
    let rw_spec = format!("{}:/data", rw.0.display());
    let ro_mount = format!("type=bind,source={},target=/ro,readonly", ro.0.display());
    let c = Running::start(&[
        "-v",
        &rw_spec,
        "--mount",
        &ro_mount,
        "--tmpfs",
        "/scratch:size=1m",
        "busybox",
        "sleep",
        "3600",
    ]);

    // Host to guest, then guest to host: data, names, modes and owners.
    std::fs::write(rw.path("from-host"), "1\n").unwrap();
    assert_eq!(c.sh("cat /data/from-host"), "1\n");
    c.sh("echo 2 > /data/from-guest && chmod 640 /data/from-guest && chown 1234:5678 /data/from-guest && mkdir /data/dir && mv /data/from-host /data/renamed");
    assert_eq!(
        std::fs::read_to_string(rw.path("from-guest")).unwrap(),
        "2\n"
    );
    let meta = std::fs::metadata(rw.path("from-guest")).unwrap();
    assert_eq!(
        (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid()),
        (0o640, 1234, 5678)
    );
    assert!(rw.path("dir").is_dir() && rw.path("renamed").is_file());
    assert!(!rw.path("from-host").exists());
    std::fs::rename(rw.path("renamed"), rw.path("again")).unwrap();
    std::fs::remove_file(rw.path("from-guest")).unwrap();
    std::fs::set_permissions(rw.path("dir"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(rw.path("dir"), Some(42), Some(43)).unwrap();
    assert_eq!(
        c.sh("ls /data; stat -c '%a %u %g' /data/dir"),
        "again\ndir\n700 42 43\n"
    );
    // Deleted in the guest, gone on the host.
    c.sh("rm /data/again && rmdir /data/dir");
    assert!(rw.entries().is_empty(), "{:?}", rw.entries());

    // 64 MiB each way, byte-equal.
    let big = rw.path("big-host");
    let status = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=64", "status=none"])
        .arg(format!("of={}", big.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let guest_sum = c.sh("sha256sum /data/big-host");
    assert!(guest_sum.starts_with(&sha256(&big)), "{guest_sum}");
    let guest_sum = c.sh("dd if=/dev/urandom of=/data/big-guest bs=1M count=64 2>/dev/null && sha256sum /data/big-guest");
    assert!(
        guest_sum.starts_with(&sha256(&rw.path("big-guest"))),
        "{guest_sum}"
    );
    c.sh("rm /data/big-host /data/big-guest");

    // A directory of 1,000 files lists the same on both sides.
    let listed = c.sh(
        "mkdir /data/many && cd /data/many && i=0; while [ $i -lt 1000 ]; do : > f$i; i=$((i+1)); done; ls -1 /data/many",
    );
    let mut guest: Vec<&str> = listed.lines().collect();
    let mut host: Vec<String> = std::fs::read_dir(rw.path("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    guest.sort_unstable();
    host.sort_unstable();
    assert_eq!(guest.len(), 1000);
    assert_eq!(guest, host);

    // Read-only: EROFS in the container, the host file unchanged.
    let out = c.exec("echo changed > /ro/kept");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(ro.path("kept")).unwrap(),
        "host data\n"
    );
    // --tmpfs: in the guest, with docker's options and the size asked for.
    let mounts = c.sh("grep ' /scratch ' /proc/mounts");
    assert!(
        mounts.contains("tmpfs") && mounts.contains("nosuid") && mounts.contains("noexec"),
        "{mounts}"
    );

    // The host side: each volume's bind is nosuid and nodev, a read-only one read-only.
    let dir = state_dirs()
        .into_iter()
        .map(|d| PathBuf::from("/run/vmpod").join(d))
        .find(|d| d.join("shared/v0").exists())
        .expect("the sandbox's shared directory");
    for (name, read_only) in [("v0", false), ("v1", true)] {
        let options = mount_options(&dir.join("shared").join(name)).expect("a bind mount");
        assert!(
            options.contains("nosuid") && options.contains("nodev"),
            "{options}"
        );
        assert_eq!(
            options.split(',').any(|o| o == "ro"),
            read_only,
            "{options}"
        );
    }
    drop(c);
    assert_eq!(
        (leftovers(), sandbox_mounts()),
        before,
        "a container with volumes left something behind"
    );
    assert_eq!(
        std::fs::read_to_string(ro.path("kept")).unwrap(),
        "host data\n"
    );
}

#[test]
fn the_guest_cannot_reach_outside_its_volume() {
    let _serial = serial();
    let base = support::Scratch::new("volume-escape");
    let volume = base.path("volume");
    let other = base.path("other");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    let outside = base.path("outside");
    std::fs::write(&outside, "untouched\n").unwrap();
    std::fs::write(other.join("secret"), "other volume\n").unwrap();
    let spec = format!("{}:/data", volume.display());
    let other_spec = format!("{}:/other:ro", other.display());
    let script = format!(
        r#"
        echo pwned > /data/../outside 2>/dev/null
        ln -s {outside} /data/abs; echo pwned > /data/abs 2>/dev/null
        ln -s ../outside /data/rel; echo pwned > /data/rel 2>/dev/null
        ln -s ../../.. /data/up; echo pwned > /data/up/outside 2>/dev/null
        ln /other/secret /data/hard 2>/dev/null && echo linked
        mknod /data/null c 1 3 && echo made-node
        cp /bin/busybox /data/suid && chmod 4755 /data/suid && echo made-suid
        true
        "#,
        outside = outside.display()
    );
    let c = Running::start(&["-v", &spec, "-v", &other_spec, "busybox", "sleep", "3600"]);
    let said = c.sh(&script);
    // A hard link across volumes fails: each is its own mount.
    assert!(!said.contains("linked"), "{said}");
    // Device nodes (and FIFOs) cannot be made through the share at all: QEMU's 9p refuses
    // special files. A setuid file can be made, but the share's binds are nosuid.
    assert!(!said.contains("made-node"), "{said}");
    assert!(!volume.join("null").exists());
    assert!(said.contains("made-suid"), "{said}");
    let dir = state_dirs()
        .into_iter()
        .map(|d| PathBuf::from("/run/vmpod").join(d))
        .find(|d| d.join("shared/v0/suid").exists())
        .expect("the sandbox's shared directory");
    let options = mount_options(&dir.join("shared/v0")).expect("the volume's bind");
    assert!(
        options.contains("nosuid") && options.contains("nodev"),
        "{options}"
    );
    drop(c);
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "untouched\n");
    assert_eq!(
        std::fs::read_to_string(other.join("secret")).unwrap(),
        "other volume\n"
    );
    // The guest's symlinks stay symlinks on the host, never followed by the file server.
    for link in ["abs", "rel", "up"] {
        let meta = std::fs::symlink_metadata(volume.join(link)).unwrap();
        assert!(meta.file_type().is_symlink(), "{link}");
    }
    assert!(!volume.join("hard").exists());
    let entries: Vec<String> = std::fs::read_dir(base.0.clone())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut entries = entries;
    entries.sort();
    assert_eq!(
        entries,
        ["other", "outside", "volume"],
        "a file appeared beside the volume"
    );
}

/// An extended attribute of a host file, without following a symlink; None when absent.
fn host_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: both strings are NUL-terminated and the buffer is as long as said.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[test]
fn a_privileged_guest_gets_user_xattrs_only_and_no_file_handles() {
    let _serial = serial();
    let base = support::Scratch::new("volume-xattr");
    let volume = base.path("volume");
    std::fs::create_dir_all(&volume).unwrap();
    // The busybox image has no setfattr: a static probe, run from the volume itself.
    let probe = volume.join("xattr-probe");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/xattr-probe.c");
    let built = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&probe)
        .arg(&source)
        .output()
        .expect("run gcc");
    assert!(built.status.success(), "{}", text(&built.stderr));
    let file = volume.join("f");
    std::fs::write(&file, "data\n").unwrap();
    // A trusted.* attribute the host set: the guest must not read it.
    let c_file = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated strings and a value of the length given.
    let set = unsafe {
        libc::setxattr(
            c_file.as_ptr(),
            c"trusted.host".as_ptr(),
            b"host secret".as_ptr().cast(),
            11,
            0,
        )
    };
    assert_eq!(set, 0, "the host's own trusted.* attribute");

    let spec = format!("{}:/data", volume.display());
    let c = Running::start(&["--privileged", "-v", &spec, "busybox", "sleep", "3600"]);
    let said = c.sh("/data/xattr-probe /data/f");
    let result = |what: &str| {
        said.lines()
            .find_map(|l| l.strip_prefix(&format!("{what} ")))
            .unwrap_or_else(|| panic!("no {what} in: {said}"))
            .to_string()
    };
    // user.* round-trips, and the host sees what the guest wrote.
    assert_eq!(result("set-user"), "ok", "{said}");
    assert_eq!(result("user-value"), "guest", "{said}");
    // trusted.* and security.* (file capabilities included) are refused, and the host's own
    // trusted attribute stays unread; no file handle that open_by_handle_at could use.
    for refused in [
        "set-trusted",
        "set-security",
        "set-capability",
        "get-trusted-host",
        "name-to-handle",
    ] {
        assert_ne!(result(refused), "ok", "{refused}: {said}");
    }
    drop(c);
    assert_eq!(
        host_xattr(&file, "user.vmpod").as_deref(),
        Some(&b"guest"[..])
    );
    for name in ["trusted.vmpod", "security.vmpod", "security.capability"] {
        assert_eq!(host_xattr(&file, name), None, "{name} reached the host");
    }
    assert_eq!(
        host_xattr(&file, "trusted.host").as_deref(),
        Some(&b"host secret"[..])
    );
}

#[test]
fn ten_templated_sandboxes_at_once_each_see_only_their_own_volume() {
    let _serial = serial();
    let before = (leftovers(), sandbox_mounts());
    let dirs: Vec<support::Scratch> = (0..10)
        .map(|i| {
            let dir = support::Scratch::new(&format!("volume-clone{i}"));
            std::fs::write(dir.path(&format!("mine-{i}")), format!("{i}\n")).unwrap();
            dir
        })
        .collect();
    let children: Vec<_> = dirs
        .iter()
        .map(|dir| {
            let spec = format!("{}:/data", dir.0.display());
            Command::new(env!("CARGO_BIN_EXE_vmpod"))
                .args(["run", "--rm", "-v", &spec, "busybox", "sh", "-c"])
                .arg("ls /data; cat /data/mine-*; echo written > /data/by-guest")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            text(&out.stdout),
            format!("mine-{i}\n{i}\n"),
            "clone {i}: {}",
            text(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(dirs[i].path("by-guest")).unwrap(),
            "written\n"
        );
        assert_eq!(dirs[i].entries().len(), 2, "clone {i}");
    }
    assert_eq!((leftovers(), sandbox_mounts()), before);
}

#[test]
fn a_cold_booted_sandbox_shares_volumes_too_and_kill_9_of_the_cli_leaves_no_mount() {
    let _serial = serial();
    let before = (leftovers(), sandbox_mounts());
    let dir = support::Scratch::new("volume-kill");
    std::fs::write(dir.path("precious"), "keep me\n").unwrap();
    let spec = format!("{}:/data", dir.0.display());
    let out = vmpod(
        &[
            "run",
            "--rm",
            "--cold-boot",
            "-v",
            &spec,
            "busybox",
            "cat",
            "/data/precious",
        ],
        None,
    );
    assert_eq!(text(&out.stdout), "keep me\n", "{}", text(&out.stderr));

    let mut cli = Command::new(env!("CARGO_BIN_EXE_vmpod"))
        .args(["run", "--rm", "-v", &spec, "busybox", "sh", "-c"])
        .arg("echo up > /data/up; sleep 600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !dir.path("up").exists() {
        assert!(Instant::now() < deadline, "the container never wrote");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sandbox_mounts().len() > before.1.len());
    cli.kill().unwrap();
    cli.wait().unwrap();
    // The janitor unbinds, then removes the state directory; the volume stays whole.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (leftovers(), sandbox_mounts()) != before {
        assert!(
            Instant::now() < deadline,
            "left behind after kill -9: {:?}",
            (leftovers(), sandbox_mounts())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read_to_string(dir.path("precious")).unwrap(),
        "keep me\n"
    );
    assert_eq!(std::fs::read_to_string(dir.path("up")).unwrap(), "up\n");
}
