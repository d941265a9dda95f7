//! `vmpod run` end to end: real microVMs through `--hypervisor auto` (QEMU with TCG on hosts
//! whose KVM cannot run the guest at speed), the busybox tree `make guest` builds.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use support::repo_root;

/// One run at a time, so that what a test finds left behind is its own.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn rootfs() -> PathBuf {
    let dir = std::env::var_os("VMPOD_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/guest"))
        .join("busybox-rootfs");
    assert!(
        dir.is_dir(),
        "{} is missing: run `make guest` first",
        dir.display()
    );
    dir
}

fn vmpod(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmpod"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmpod");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    child.wait_with_output().expect("wait for vmpod")
}

fn run(extra: &[&str], command: &[&str]) -> Output {
    let root = rootfs();
    let mut args = vec!["run", "--rm", "--rootfs", root.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(command);
    vmpod(&args, None)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn echo_exit_codes_env_workdir_user_and_cpus() {
    let _serial = serial();
    let out = run(&[], &["echo", "hello"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "hello\n"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("using QEMU with TCG")
            || !std::path::Path::new("/sys/module/kvm_pvm").exists()
    );
    assert_eq!(run(&[], &["sh", "-c", "exit 42"]).status.code(), Some(42));
    let out = run(
        &[
            "-e",
            "FOO=bar",
            "-w",
            "/tmp",
            "-u",
            "65534:65534",
            "--cpus",
            "2",
            "--hostname",
            "box",
        ],
        &[
            "sh",
            "-c",
            "echo $FOO $(pwd) $(id -u) $(nproc) $(hostname); echo err >&2",
        ],
    );
    assert_eq!(text(&out.stdout), "bar /tmp 65534 2 box\n");
    assert!(
        text(&out.stderr).ends_with("err\n"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn stdin_round_trip_and_oom() {
    let _serial = serial();
    let payload: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let root = rootfs();
    let out = vmpod(
        &[
            "run",
            "--rm",
            "-i",
            "--rootfs",
            root.to_str().unwrap(),
            "cat",
        ],
        Some(&payload),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        out.stdout == payload,
        "10 MiB came back with {} bytes, not equal",
        out.stdout.len()
    );
    let out = run(
        &["--memory", "32m"],
        &["sh", "-c", "x=0123456789abcdef; while :; do x=$x$x; done"],
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
}

#[test]
fn bad_input_exits_125_or_127_naming_the_problem_and_leaves_nothing() {
    let _serial = serial();
    let before = leftovers();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["run", "--bogus", "x"], 125, "--bogus"),
        (&["run", "--rm", "busybox", "true"], 125, "image 'busybox'"),
        (
            &["run", "--rootfs", "/no/such/dir", "true"],
            125,
            "/no/such/dir",
        ),
        (
            &["run", "--cpus", "0", "--rootfs", "/", "true"],
            125,
            "--cpus '0'",
        ),
        (
            &["run", "--memory", "0", "--rootfs", "/", "true"],
            125,
            "--memory '0'",
        ),
        (
            &["run", "-v", "/tmp:/tmp", "--rootfs", "/", "true"],
            125,
            "-v",
        ),
        (
            &["run", "--hypervisor", "xen", "--rootfs", "/tmp", "true"],
            125,
            "--hypervisor",
        ),
    ];
    for (args, code, needle) in cases {
        let out = vmpod(args, None);
        assert_eq!(
            out.status.code(),
            Some(*code),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?} should name {needle}: {}",
            text(&out.stderr)
        );
    }
    let out = run(&[], &["/no/such/program"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("/no/such/program"));
    assert_eq!(
        leftovers(),
        before,
        "state directories or processes left behind"
    );
}

/// This test binary's sandboxes: state directories under /run/vmpod and their processes.
fn leftovers() -> (usize, usize) {
    let dirs = std::fs::read_dir("/run/vmpod")
        .map(|d| d.count())
        .unwrap_or(0);
    let procs = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().nth(1))
                        .map(str::to_string)
                })
                .is_some_and(|ppid| ppid == std::process::id().to_string())
        })
        .count();
    (dirs, procs)
}

/// Processes whose command line mentions `needle` (a sandbox's state directory).
fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

/// The sandboxes' state directories under /run/vmpod.
fn state_dirs() -> Vec<String> {
    std::fs::read_dir("/run/vmpod")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `vmpod run ... sleep 1000` and returns it with its state directory once it exists.
// The child is handed to the caller, who waits for it.
#[allow(clippy::zombie_processes)]
fn sleeping_run() -> (std::process::Child, String) {
    let before = state_dirs();
    let root = rootfs();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmpod"))
        .args([
            "run",
            "--rm",
            "--rootfs",
            root.to_str().unwrap(),
            "sleep",
            "1000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmpod");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = state_dirs();
        if let Some(id) = now.into_iter().find(|n| !before.contains(n)) {
            let dir = format!("/run/vmpod/{id}");
            // Wait for the guest: the agent's socket is there once QEMU runs.
            std::thread::sleep(std::time::Duration::from_secs(3));
            return (child, dir);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output();
            panic!("no state directory appeared: {out:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn gone_within(dir: &str, seconds: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if !std::path::Path::new(dir).exists() && processes_mentioning(dir).is_empty() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[test]
fn kill_9_of_the_cli_takes_the_vm_and_its_state_with_it() {
    let _serial = serial();
    let (mut cli, dir) = sleeping_run();
    assert!(!processes_mentioning(&dir).is_empty(), "the VM runs");
    cli.kill().unwrap();
    cli.wait().unwrap();
    assert!(
        gone_within(&dir, 10),
        "left behind: {:?}",
        processes_mentioning(&dir)
    );
}

#[test]
fn a_vm_that_dies_under_a_run_ends_it_with_125_and_nothing_left() {
    let _serial = serial();
    let (cli, dir) = sleeping_run();
    let vm: Vec<(i32, String)> = processes_mentioning(&dir)
        .into_iter()
        .filter(|(_, c)| c.starts_with("qemu-system") || c.contains("vmpod-vmm"))
        .collect();
    assert_eq!(vm.len(), 1, "{vm:?}");
    // SAFETY: kill(2) of the VM process found above.
    unsafe { libc::kill(vm[0].0, libc::SIGKILL) };
    let out = cli.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("lost the container"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        gone_within(&dir, 10),
        "left behind: {:?}",
        processes_mentioning(&dir)
    );
}

#[test]
fn eight_runs_at_once_all_succeed() {
    let _serial = serial();
    let root = rootfs();
    let runs: Vec<_> = (0..8)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_vmpod"))
                .args(["run", "--rm", "--rootfs", root.to_str().unwrap(), "echo"])
                .arg(format!("run-{i}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn vmpod")
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.wait_with_output().unwrap();
        assert_eq!(
            (out.status.code(), text(&out.stdout)),
            (Some(0), format!("run-{i}\n")),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn smoke_on_vmpod_vmm() {
    // The product path; on kvm-pvm hosts the boot alone takes most of a minute.
    support::require_kvm();
    let _serial = serial();
    let out = run(
        &["--hypervisor", "vmm"],
        &["sh", "-c", "echo hello; exit 3"],
    );
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(3), "hello\n"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn ctrl_c_goes_to_the_container() {
    let _serial = serial();
    let root = rootfs();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmpod"))
        .args([
            "run",
            "--rm",
            "--rootfs",
            root.to_str().unwrap(),
            "sh",
            "-c",
        ])
        .arg("trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 0.1; done")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmpod");
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("the container says ready");
    assert_eq!(&first, b"ready\n");
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!((status.code(), rest.as_str()), (Some(7), "got-int\n"));
}
