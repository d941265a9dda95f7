//! The jail, end to end on QEMU (TCG): every process of a running sandbox is its own
//! unprivileged uid in its own namespaces and root, holds only the descriptors it needs, cannot
//! write what sandboxes share, and goes with its owner's kill -9, leaving nothing behind.
//!
//! (Over 600 lines: one test binary, whose tests share the jail's probes.)

mod common;

use common::support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmpod_sandbox::jailer::FILE_CAPS;
use vmpod_sandbox::{Backend, Boot, Sandbox};

fn sandbox() -> Sandbox {
    common::busybox_sandbox(Backend::Qemu { kvm: false }, Boot::Cold, 128)
}

/// The sandbox's uid: its jail's owner.
fn uid_of(state_dir: &Path) -> u32 {
    let uid = std::fs::metadata(state_dir.join("jail"))
        .expect("the jail")
        .uid();
    assert!(
        uid >= vmpod_sandbox::jail::UID_BASE,
        "uid {uid} is outside the range"
    );
    uid
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Processes running as `uid`, by pid (a zombie waiting for its reaper runs no more).
fn processes_of(uid: u32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("list /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let zombie = status_field(&status, "State").starts_with('Z');
        if !zombie
            && status_field(&status, "Uid").split_whitespace().next() == Some(&uid.to_string())
        {
            found.push(pid);
        }
    }
    found
}

fn program(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[test]
fn every_process_of_a_jailed_sandbox_is_its_uid_without_privileges_in_its_own_root() {
    let sandbox = sandbox();
    let uid = uid_of(&sandbox.state_dir);
    let jail = std::fs::metadata(sandbox.state_dir.join("jail")).expect("the jail");
    let pids = processes_of(uid);
    let programs: Vec<String> = pids.iter().map(|p| program(*p)).collect();
    assert_eq!(pids.len(), 3, "QEMU and two vmpod-vhost-user: {programs:?}");
    let mut pid_namespaces = std::collections::HashSet::new();
    for pid in pids {
        let name = program(pid);
        let qemu = name.contains("qemu");
        let caps = if qemu {
            format!("{:016x}", FILE_CAPS.iter().fold(0u64, |m, c| m | 1 << c))
        } else {
            "0".repeat(16)
        };
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("tasks")
            .flatten()
        {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let me = format!("{name} task {:?}", task.file_name());
            assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{me}");
            for id in ["Uid", "Gid"] {
                let ids: Vec<String> = status_field(&status, id)
                    .split_whitespace()
                    .map(String::from)
                    .collect();
                assert_eq!(ids, vec![uid.to_string(); 4], "{me}: {id}");
            }
            assert_eq!(status_field(&status, "Groups"), "", "{me}");
            // QEMU serves the shared directory's files with their guest owners: it keeps
            // only what that takes; the backends keep nothing.
            for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
                assert_eq!(status_field(&status, set), caps, "{me}: {set}");
            }
        }
        let root = std::fs::metadata(format!("/proc/{pid}/root/")).expect("its root");
        assert_eq!(
            (root.dev(), root.ino()),
            (jail.dev(), jail.ino()),
            "{name}'s root"
        );
        // A dumpable process's /proc files are its uid's, a non-dumpable one's root's. QEMU
        // cannot be made non-dumpable from outside after its exec, and is not: what keeps
        // others from tracing it is its uid (another sandbox's is not it) and its pid
        // namespace (its own backends, the same uid, see none of its pids).
        let status = std::fs::metadata(format!("/proc/{pid}/status")).expect("its status");
        let owner = if qemu { uid } else { 0 };
        assert_eq!(
            status.uid(),
            owner,
            "{name}: dumpable is {}",
            status.uid() != 0
        );
        let pid_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("its pid ns");
        assert!(
            pid_namespaces.insert(pid_ns),
            "{name} shares a pid namespace"
        );
        for ns in ["mnt", "pid", "ipc", "uts"] {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("its ns");
            let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("our ns");
            assert_ne!(theirs, ours, "{name} shares the host's {ns} namespace");
        }
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
        let core = limits.lines().find(|l| l.starts_with("Max core file size"));
        assert!(
            core.is_some_and(|l| l.split_whitespace().nth(4) == Some("0")),
            "{limits}"
        );
        check_descriptors(pid, &name, &sandbox.state_dir);
        // On this kind of host (cgroup v1 memory and pids, or v2) the VM has its own cgroup.
        let cgroups = vm_cgroups(pid);
        assert!(!cgroups.is_empty(), "{name} is in no cgroup of its sandbox");
        assert!(cgroups.iter().all(|d| d.is_dir()), "{cgroups:?}");
    }
}

/// What this test's own stdout and stderr are: a VM process's standard streams are its
/// owner's (a terminal, a pipe, or the file a harness writes its log to).
fn owners_streams() -> Vec<String> {
    [1, 2]
        .iter()
        .filter_map(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok())
        .map(|t| t.display().to_string())
        .collect()
}

/// Each descriptor is a socket, pipe, eventfd-like inode, guest memory, /dev/null, the owner's
/// own streams, or a file of the sandbox; regular files are read-only but the console and
/// QEMU's log.
fn check_descriptors(pid: i32, name: &str, state_dir: &Path) {
    let guest = support::guest_dir();
    let owners = owners_streams();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
    {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        let text = target.display().to_string();
        let kind_ok = ["socket:", "pipe:", "anon_inode:", "/memfd:", "/dev/null"]
            .iter()
            .any(|p| text.starts_with(p));
        let standard = fd
            .file_name()
            .to_str()
            .is_some_and(|n| n == "1" || n == "2");
        if kind_ok || (standard && owners.contains(&text)) {
            continue;
        }
        // Paths in the jail's own mounts read as the jail sees them.
        let in_jail = [
            "/disks/", "/slots/", "/guest/", "/shared", "/memory", "/proc/",
        ]
        .iter()
        .any(|p| text.starts_with(p));
        let ours = in_jail || target.starts_with(state_dir) || target.starts_with(&guest);
        assert!(ours, "{name} holds {text}");
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = u32::from_str_radix(&status_field(&info, "flags"), 8).unwrap_or(u32::MAX);
        let writes = flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32;
        let may_write = text.ends_with("console.log") || text.ends_with("qemu.log");
        assert!(!writes || may_write, "{name} holds {text} writable");
    }
}

/// Whether `uid` may open `path` for writing (or create a file in it, for a directory).
fn can_write_as(uid: u32, path: &Path) -> bool {
    let script = if path.is_dir() {
        format!("touch '{}/x'", path.display())
    } else {
        format!("exec 3>>'{}'", path.display())
    };
    Command::new("/bin/sh")
        .args(["-c", &script])
        .uid(uid)
        .gid(uid)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why `uid` may not open the existing file `path` for writing (O_WRONLY|O_APPEND, never a
/// truncation), as the shell reports it; empty when it may.
fn write_refusal_as(uid: u32, path: &Path) -> String {
    let out = Command::new("/bin/sh")
        .args(["-c", "exec 3>>\"$1\"", "sh"])
        .arg(path)
        .uid(uid)
        .gid(uid)
        .output()
        .expect("run sh as the sandbox uid");
    match out.status.success() {
        true => String::new(),
        false => String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Files every sandbox shares, as this host has them: the guest's kernel and initramfs, the
/// test layer, the image store's layers, every template's state and memory.
fn shared_files() -> Vec<PathBuf> {
    let guest = support::guest_dir();
    let mut files: Vec<PathBuf> = ["vmlinux", "initramfs.cpio", "busybox.erofs"]
        .iter()
        .map(|name| guest.join(name))
        .collect();
    let listed = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let layers = Path::new(vmpod_sandbox::image::IMAGE_ROOT).join("layers");
    files.extend(listed(&layers));
    for template in listed(Path::new(vmpod_sandbox::template::ROOT)) {
        files.extend([template.join("state"), template.join("memory")]);
    }
    files.retain(|f| f.is_file());
    files
}

#[test]
fn a_sandbox_uid_cannot_write_a_layer_a_template_or_another_sandbox_jail() {
    let first = sandbox();
    let second = sandbox();
    let (a, b) = (uid_of(&first.state_dir), uid_of(&second.state_dir));
    assert_ne!(a, b, "two live sandboxes share a uid");
    assert!(!can_write_as(a, &second.state_dir.join("jail")));
    assert!(!can_write_as(a, &second.state_dir));
    let shared = shared_files();
    assert!(shared.len() >= 3, "{shared:?}");
    for file in &shared {
        let refusal = write_refusal_as(a, file);
        assert!(
            refusal.contains("Permission denied") || refusal.contains("Read-only file system"),
            "uid {a} opening {} for writing: {refusal:?}",
            file.display()
        );
    }
    // The uid can write its own jail: that is where its sockets are.
    assert!(can_write_as(a, &first.state_dir.join("jail")));
}

/// Run by the next test as the sandbox's owner, which it kills.
#[test]
#[ignore = "the owner process of kill_9_of_the_owner_takes_the_jailed_vm_with_it"]
fn jailed_sandbox_owner() {
    if std::env::var_os("VMPOD_TEST_JAIL_OWNER").is_none() {
        return;
    }
    let sandbox = sandbox();
    println!("state {}", sandbox.state_dir.display());
    std::thread::sleep(Duration::from_secs(600));
}

/// The sandbox's own cgroups `pid` is in (vm_cgroup.rs), as host directories.
fn vm_cgroups(pid: i32) -> Vec<PathBuf> {
    let listing = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            path.rsplit('/').next()?.starts_with("vmpod-").then(|| {
                Path::new("/sys/fs/cgroup")
                    .join(controllers.split(',').next().unwrap_or_default())
                    .join(path.trim_start_matches('/'))
            })
        })
        .collect()
}

#[test]
fn kill_9_of_the_owner_takes_the_jailed_vm_with_it() {
    let mut owner = Command::new(std::env::current_exe().expect("this test binary"));
    owner
        .args([
            "--ignored",
            "--exact",
            "jailed_sandbox_owner",
            "--nocapture",
        ])
        .env("VMPOD_TEST_JAIL_OWNER", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut owner = support::die_with_parent(&mut owner)
        .spawn()
        .expect("start the owner");
    let stdout = owner.stdout.take().expect("its stdout");
    let state_dir = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("state ").map(PathBuf::from))
        .expect("the owner's sandbox");
    let uid = uid_of(&state_dir);
    let pids = processes_of(uid);
    assert_eq!(pids.len(), 3);
    let cgroups = vm_cgroups(pids[0]);
    owner.kill().expect("kill -9 the owner");
    owner.wait().expect("reap the owner");
    let killed = Instant::now();
    while !processes_of(uid).is_empty() {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "still running a second after its owner: {:?}",
            processes_of(uid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let claim = Path::new(vmpod_sandbox::paths::STATE_ROOT)
        .join("uids")
        .join(uid.to_string());
    let state = state_dir.display().to_string();
    let mounts = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&state))
            .count()
    };
    let cgroups_left = || cgroups.iter().filter(|d| d.exists()).count();
    while state_dir.exists() || claim.exists() || mounts() > 0 || cgroups_left() > 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "left behind: state dir {}, uid claim {}, {} mounts, {} cgroups",
            state_dir.exists(),
            claim.exists(),
            mounts(),
            cgroups_left()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(support::processes_mentioning(&state), Vec::new());
}

/// vmpod-vmm's jail on real KVM, with the tiny test guest (a Linux guest takes minutes on
/// kvm-pvm): the same steps vmm.rs takes, checked on the running VMM, then its run to the end.
#[test]
fn a_jailed_vmpod_vmm_runs_a_guest_from_passed_descriptors_without_privileges() {
    use std::os::fd::AsRawFd;
    let kernel_path = support::guest_dir().join("tiny-guest.elf");
    assert!(
        kernel_path.is_file(),
        "{} is missing",
        kernel_path.display()
    );
    let state_dir = Path::new(vmpod_sandbox::paths::STATE_ROOT)
        .join(format!("{:012x}", std::process::id() as u64 * 7919));
    std::fs::create_dir_all(&state_dir).expect("a state dir");
    // Declared before the jail, so dropped after it, on a failed check too.
    let _state = RemovedOnDrop(state_dir.clone());
    let jail = vmpod_sandbox::jail::Jail::create(&state_dir, 64 << 20).expect("a jail");
    let kernel = std::fs::File::open(&kernel_path).expect("the kernel");
    let console_path = state_dir.join("console.log");
    let console = std::fs::File::create(&console_path).expect("the console");
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .expect("/dev/kvm");
    let config = format!(
        r#"{{"kernel": "/proc/self/fd/{}", "memory_mib": 16, "cmdline": "tiny=wait",
            "console": "fd:{}", "kvm": "fd:{}"}}"#,
        kernel.as_raw_fd(),
        console.as_raw_fd(),
        kvm.as_raw_fd()
    );
    std::fs::write(state_dir.join("vm.json"), config).expect("the config");
    let config = std::fs::File::open(state_dir.join("vm.json")).expect("the config");
    let mut launch = vmpod_sandbox::jail::Launch::new(Some(&jail));
    for fd in [&kernel, &console, &kvm, &config] {
        launch.fd(fd.as_raw_fd());
    }
    let pvm = Path::new("/sys/module/kvm_pvm");
    if pvm.exists() {
        launch.file(pvm, "/sys/module/kvm_pvm", false);
    }
    let vmm = vmpod_sandbox::paths::program("vmpod-vmm").expect("vmpod-vmm");
    let mut child = launch
        .command(
            &vmm,
            ["--config".to_string(), format!("fd:{}", config.as_raw_fd())],
        )
        .expect("the jailed command")
        .stdin(Stdio::null())
        .spawn()
        .expect("start vmpod-vmm");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&console_path)
        .unwrap_or_default()
        .contains("tiny: waiting")
    {
        assert!(Instant::now() < deadline, "the tiny guest never ran");
        assert!(child.try_wait().expect("wait").is_none(), "vmpod-vmm ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = processes_of(jail.uid());
    assert_eq!(pids.len(), 1, "{pids:?}");
    let pid = pids[0];
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        assert_eq!(status_field(&status, "NoNewPrivs"), "1");
        let uids = status_field(&status, "Uid");
        assert_eq!(
            uids.split_whitespace().collect::<Vec<_>>(),
            vec![jail.uid().to_string(); 4]
        );
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(status_field(&status, set), "0".repeat(16), "{set}");
        }
    }
    // Not dumpable: its /proc files are root's, not its uid's.
    let status = std::fs::metadata(format!("/proc/{pid}/status")).expect("its status");
    assert_eq!(status.uid(), 0, "vmpod-vmm is dumpable");
    let root = std::fs::metadata(format!("/proc/{pid}/root/")).expect("its root");
    let jail_dir = std::fs::metadata(jail.root()).expect("the jail");
    assert_eq!((root.dev(), root.ino()), (jail_dir.dev(), jail_dir.ino()));
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
        .map(|fd| {
            std::fs::read_link(fd.path())
                .unwrap_or_default()
                .display()
                .to_string()
        })
        .collect();
    let owners = owners_streams();
    for fd in &fds {
        let allowed = [
            "anon_inode:",
            "socket:",
            "pipe:",
            "/dev/null",
            "/dev/kvm",
            "/proc/",
        ]
        .iter()
        .any(|p| fd.starts_with(p))
            || *fd == kernel_path.display().to_string()
            || *fd == console_path.display().to_string()
            || owners.contains(fd);
        assert!(allowed, "vmpod-vmm holds {fd}: {fds:?}");
    }
    // SAFETY: SIGTERM to the jailer, which hands it to vmpod-vmm.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("vmpod-vmm's end");
    assert_eq!(status.code(), Some(143), "{status}");
    drop(jail);
}

/// A jailed vmpod-vmm started the way vmm.rs starts it: `config` (JSON) on a passed descriptor,
/// with `files` passed too.
fn jailed_vmm(
    jail: &vmpod_sandbox::jail::Jail,
    state_dir: &Path,
    name: &str,
    config: String,
    files: &[&std::fs::File],
) -> std::process::Child {
    use std::os::fd::AsRawFd;
    let path = state_dir.join(format!("{name}.json"));
    std::fs::write(&path, config).expect("the config");
    let config = std::fs::File::open(&path).expect("the config");
    let mut launch = vmpod_sandbox::jail::Launch::new(Some(jail));
    launch.file_size_limit(1 << 30);
    for fd in files.iter().copied().chain([&config]) {
        launch.fd(fd.as_raw_fd());
    }
    let pvm = Path::new("/sys/module/kvm_pvm");
    if pvm.exists() {
        launch.file(pvm, "/sys/module/kvm_pvm", false);
    }
    let vmm = vmpod_sandbox::paths::program("vmpod-vmm").expect("vmpod-vmm");
    launch
        .command(
            &vmm,
            ["--config".to_string(), format!("fd:{}", config.as_raw_fd())],
        )
        .expect("the jailed command")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmpod-vmm")
}

/// A template's build as vmm.rs runs it: the sandbox creates the state and memory files (root's)
/// and passes them; the jailed, filtered vmpod-vmm only writes into them. A jailed clone then
/// runs from them, read-only.
#[test]
fn a_jailed_vmpod_vmm_builds_a_template_into_passed_files_and_a_clone_runs_from_it() {
    use std::os::fd::AsRawFd;
    let kernel_path = support::guest_dir().join("tiny-guest.elf");
    let state_dir = Path::new(vmpod_sandbox::paths::STATE_ROOT)
        .join(format!("{:012x}", std::process::id() as u64 * 7927));
    std::fs::create_dir_all(&state_dir).expect("a state dir");
    let _state = RemovedOnDrop(state_dir.clone());
    let jail = vmpod_sandbox::jail::Jail::create(&state_dir, 1 << 30).expect("a jail");
    let kernel = std::fs::File::open(&kernel_path).expect("the kernel");
    let kvm = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .expect("/dev/kvm")
    };
    let (state_path, memory_path) = (state_dir.join("state"), state_dir.join("memory"));
    let state = std::fs::File::create(&state_path).expect("the state file");
    let memory = std::fs::File::create(&memory_path).expect("the memory file");
    let console_path = state_dir.join("build.log");
    let console = std::fs::File::create(&console_path).expect("the console");
    let build_kvm = kvm();
    // Guest memory large enough that saving it outlasts the checks below.
    let build = jailed_vmm(
        &jail,
        &state_dir,
        "build",
        format!(
            r#"{{"kernel": "/proc/self/fd/{}", "memory_mib": 256, "cmdline": "tiny=snap",
                "console": "fd:{}", "kvm": "fd:{}",
                "snapshot": {{"state": "fd:{}", "memory": "fd:{}"}}}}"#,
            kernel.as_raw_fd(),
            console.as_raw_fd(),
            build_kvm.as_raw_fd(),
            state.as_raw_fd(),
            memory.as_raw_fd()
        ),
        &[&kernel, &console, &build_kvm, &state, &memory],
    );
    // The guest's first line: every thread of the VMM confined itself before the guest ran.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pid = None;
    while !std::fs::read_to_string(&console_path)
        .unwrap_or_default()
        .starts_with('0')
    {
        assert!(Instant::now() < deadline, "the tiny guest never ran");
        pid = pid.or_else(|| processes_of(jail.uid()).first().copied());
    }
    let pid = pid.expect("the jailed vmpod-vmm, seen before its guest ran");
    // SAFETY: SIGSTOP holds the VMM (pid 1 of its namespace, stoppable from outside it) while
    // its threads are read; SIGCONT below lets it go on.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGSTOP) },
        0,
        "vmpod-vmm ended too soon"
    );
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let uids = status_field(&status, "Uid");
        assert_eq!(
            uids.split_whitespace().collect::<Vec<_>>(),
            vec![jail.uid().to_string(); 4]
        );
        assert_eq!(status_field(&status, "Seccomp"), "2", "{status}");
        assert_eq!(status_field(&status, "NoNewPrivs"), "1");
        threads += 1;
    }
    assert!(threads >= 2, "only {threads} threads: no vCPU");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let out = build.wait_with_output().expect("the build's end");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&console_path).unwrap(),
        "0\n1\n2\n3\n4\n"
    );
    assert_eq!(std::fs::metadata(&memory_path).unwrap().len(), 256 << 20);
    for file in [&state_path, &memory_path] {
        let meta = std::fs::metadata(file).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o022),
            (0, 0),
            "{}",
            file.display()
        );
        assert!(
            !can_write_as(jail.uid(), file),
            "{} is writable",
            file.display()
        );
    }
    drop((state, memory, console, build_kvm));

    let state = std::fs::File::open(&state_path).expect("the state");
    let memory = std::fs::File::open(&memory_path).expect("the memory");
    let console_path = state_dir.join("clone.log");
    let console = std::fs::File::create(&console_path).expect("the console");
    let clone_kvm = kvm();
    let clone = jailed_vmm(
        &jail,
        &state_dir,
        "clone",
        format!(
            r#"{{"console": "fd:{}", "kvm": "fd:{}",
                "restore": {{"state": "/proc/self/fd/{}", "memory": "/proc/self/fd/{}"}}}}"#,
            console.as_raw_fd(),
            clone_kvm.as_raw_fd(),
            state.as_raw_fd(),
            memory.as_raw_fd()
        ),
        &[&console, &clone_kvm, &state, &memory],
    );
    let out = clone.wait_with_output().expect("the clone's end");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&console_path).unwrap(),
        "5\n6\n7\n8\n9\nK\ntiny: reset\n"
    );
    drop(jail);
}

/// A directory the test made, removed however the test ends.
struct RemovedOnDrop(std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
