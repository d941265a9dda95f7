//! `vmpod run` end to end: real microVMs through `--hypervisor auto` (QEMU with TCG on hosts
//! whose KVM cannot run the guest at speed), the busybox tree `make guest` builds.
//!
//! (Over 600 lines: one test binary for `vmpod run`'s flags, whose tests share its helpers.)

mod common;

use common::*;
use std::process::{Command, Stdio};

fn run(extra: &[&str], command: &[&str]) -> std::process::Output {
    let root = rootfs();
    let mut args = vec!["run", "--rm", "--rootfs", root.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(command);
    vmpod(&args, None)
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
    // One allocation larger than the VM: the container's limit decides (an OOM kill, as under
    // runc), not the guest's overcommit guess (ENOMEM, exit 1); one under the limit succeeds.
    let dd = |size: &str| {
        run(
            &["--memory", "64m"],
            &[
                "dd",
                "if=/dev/zero",
                "of=/dev/null",
                &format!("bs={size}"),
                "count=1",
            ],
        )
    };
    let out = dd("200M");
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    let out = dd("60M");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The same two under runc, on the same busybox tree: what the checks above hold vmpod to.
    assert_eq!(dd_under_runc("200M"), Some(137));
    assert_eq!(dd_under_runc("60M"), Some(0));
}

/// `dd bs=SIZE count=1` from /dev/zero in a runc container limited to 64 MiB; its exit code.
fn dd_under_runc(size: &str) -> Option<i32> {
    let bundle = common::support::Scratch::new(&format!("runc-dd-{size}"));
    let out = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&bundle.0)
        .output()
        .expect("runc spec (apt-get install runc)");
    assert!(out.status.success(), "runc spec: {}", text(&out.stderr));
    let config = bundle.path("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    spec["root"] = serde_json::json!({"path": rootfs(), "readonly": true});
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!([
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        format!("bs={size}"),
        "count=1"
    ]);
    spec["linux"]["resources"]["memory"] = serde_json::json!({"limit": 64 << 20, "swap": 64 << 20});
    std::fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
    let id = format!("vmpod-test-dd-{}-{size}", std::process::id());
    let out = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(&bundle.0)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .expect("runc run");
    let _ = Command::new("runc")
        .args(["delete", "--force", &id])
        .output();
    out.status.code()
}

#[test]
fn bad_input_exits_125_or_127_naming_the_problem_and_leaves_nothing() {
    let _serial = serial();
    let before = leftovers();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["run", "--bogus", "x"], 125, "--bogus"),
        // An absent image is pulled first: from a loopback port nothing listens on.
        (
            &["run", "--rm", "127.0.0.1:1/no-such-image", "true"],
            125,
            "cannot reach the registry 127.0.0.1:1",
        ),
        (&["run", "--rm", "Bad:Name:", "true"], 125, "Bad:Name:"),
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
            &[
                "run",
                "--mount",
                "type=bind,source=/no/such/dir,target=/data",
                "busybox",
                "true",
            ],
            125,
            "bind source path does not exist: /no/such/dir",
        ),
        (
            &["run", "-v", "named:/data", "busybox", "true"],
            125,
            "named volumes are not supported",
        ),
        (
            &["run", "-v", "/tmp:data:ro", "busybox", "true"],
            125,
            "'data' must be absolute",
        ),
        (
            &["run", "-d", "-t", "busybox", "sh"],
            125,
            "-d cannot be combined",
        ),
        (
            &["run", "--name", "x", "busybox", "true"],
            125,
            "--name is for background",
        ),
        (
            &["run", "-d", "--name", "a/b", "busybox", "true"],
            125,
            "--name 'a/b'",
        ),
        (
            &["exec", "no-such-container", "true"],
            125,
            "no such container",
        ),
        (&["kill", "-s", "BOGUS", "x"], 125, "-s 'BOGUS'"),
        (&["rm", "no-such-container"], 125, "no such container"),
        (&["logs", "no-such-container"], 125, "no such container"),
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

/// The processes whose parent is `parent`, with their command lines.
fn children_of(parent: i32) -> Vec<(i32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: i32 = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (ppid == parent).then_some((pid, cmdline))
        })
        .collect()
}

#[test]
fn a_vm_that_dies_under_a_run_ends_it_with_125_and_nothing_left() {
    let _serial = serial();
    let (cli, dir) = sleeping_run();
    // A jailed VM names only paths in its jail: its jailer names the state directory.
    let vm: Vec<(i32, String)> = processes_mentioning(&dir)
        .into_iter()
        .filter(|(_, c)| c.contains("qemu-system") || c.contains("vmpod-vmm"))
        .flat_map(|(pid, c)| match c.contains("vmpod-jailer") {
            true => children_of(pid),
            false => vec![(pid, c)],
        })
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
    // A full boot: templates on vmpod-vmm have their own test (templates.rs). The volume
    // reaches the guest through vmpod-vmm's virtio-fs device, both ways.
    let volume = support::Scratch::new("vmm-volume");
    std::fs::write(volume.path("f"), "from the host\n").unwrap();
    let spec = format!("{}:/data", volume.0.display());
    let out = run(
        &["--hypervisor", "vmm", "--cold-boot", "-v", &spec],
        &[
            "sh",
            "-c",
            "echo hello; cat /data/f; grep -c ' /data virtiofs ' /proc/mounts; echo back > /data/g; exit 3",
        ],
    );
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(3), "hello\nfrom the host\n1\n"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(volume.path("g")).unwrap(), "back\n");
}

/// Ctrl-C in a terminal signals the whole foreground process group, as `timeout(1)` and other
/// supervisors do: SIGINT, SIGTERM and SIGHUP to the group of a CLI in its own session reach
/// the container's process (whose trap decides the exit), no helper of the VM hears them, and
/// the VM is gone afterwards. A second Ctrl-C soon after the first kills a container that
/// ignores it, as with `docker run`.
#[test]
fn signals_to_the_clis_process_group_go_to_the_container() {
    let _serial = serial();
    let before = leftovers();
    for (signals, name, code, said) in [
        (&[libc::SIGINT][..], "INT", 7, "got-INT\n"),
        (&[libc::SIGTERM], "TERM", 8, "got-TERM\n"),
        (&[libc::SIGHUP], "HUP", 9, "got-HUP\n"),
        (&[libc::SIGINT, libc::SIGINT], "INT", 137, "got-INT\n"),
    ] {
        // The last case's trap ignores the signal: only the second Ctrl-C ends it.
        let exit = if code == 137 {
            String::new()
        } else {
            format!("exit {code}")
        };
        let script = format!(
            "trap 'echo got-{name}; {exit}' {name}; echo ready; while :; do sleep 0.1; done"
        );
        let (code_seen, rest, stderr) = signal_a_session(&script, signals);
        assert_eq!(
            (code_seen, rest.as_str()),
            (Some(code), said),
            "{signals:?}: {stderr}"
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while leftovers() != before {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {:?}",
            state_dirs()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs `script` under `vmpod run` in a session of its own, sends `signals` to its process
/// group once the container says "ready" (each after the container has answered the one
/// before), and returns the exit code, the rest of stdout and stderr.
fn signal_a_session(script: &str, signals: &[libc::c_int]) -> (Option<i32>, String, String) {
    use std::io::{BufRead, Read};
    use std::os::unix::process::CommandExt;
    let root = rootfs();
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmpod"));
    command
        .args([
            "run",
            "--rm",
            "--rootfs",
            root.to_str().unwrap(),
            "sh",
            "-c",
        ])
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = command.spawn().expect("spawn vmpod");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("the container says ready");
    assert_eq!(line, "ready\n");
    let mut rest = String::new();
    for (i, &signal) in signals.iter().enumerate() {
        // SAFETY: kill(2) of our own child's process group (it leads its session).
        unsafe { libc::kill(-(child.id() as i32), signal) };
        if i + 1 < signals.len() {
            stdout.read_line(&mut rest).expect("the container answers");
        }
    }
    stdout.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        rest,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_guest_kernel_panic_ends_the_run_with_125_and_its_console() {
    let _serial = serial();
    let before = leftovers();
    // An initramfs init that does not exist: the guest kernel panics during boot.
    let out = vmpod(
        &[
            "run",
            "--rm",
            "--kernel-args",
            "rdinit=/nonexistent",
            "busybox",
            "true",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the VM ended before its agent was ready")
            && stderr.contains("Kernel panic"),
        "{stderr}"
    );
    assert_eq!(leftovers(), before, "left behind after a guest panic");
}

#[test]
fn images_run_with_their_config_and_read_only_volumes_are_read_only() {
    let _serial = serial();
    // busybox's config: Cmd sh, WorkingDir /; -w, -u by name and -e override it.
    let out = vmpod(
        &["run", "--rm", "-i", "busybox"],
        Some(b"echo from-stdin $(pwd)\n"),
    );
    assert_eq!(text(&out.stdout), "from-stdin /\n", "{}", text(&out.stderr));
    let out = vmpod(
        &[
            "run",
            "--rm",
            "-w",
            "/tmp",
            "-u",
            "nobody",
            "-e",
            "A=1",
            "busybox",
            "sh",
            "-c",
            "echo $A $(pwd) $(id -un) $(id -u)",
        ],
        None,
    );
    assert_eq!(
        text(&out.stdout),
        "1 /tmp nobody 65534\n",
        "{}",
        text(&out.stderr)
    );
    let out = vmpod(&["run", "--rm", "-u", "ghost", "busybox", "true"], None);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("user 'ghost'"),
        "{}",
        text(&out.stderr)
    );

    let dir = support::Scratch::new("volume");
    std::fs::write(dir.path("f"), "in the volume\n").unwrap();
    let volume = format!("{}:/data:ro", dir.0.display());
    let script = "cat /data/f; echo x > /data/g 2>/dev/null || echo read-only";
    let out = vmpod(
        &["run", "--rm", "-v", &volume, "busybox", "sh", "-c", script],
        None,
    );
    assert_eq!(
        text(&out.stdout),
        "in the volume\nread-only\n",
        "{}",
        text(&out.stderr)
    );
    // Shared, not copied: a later run sees what the host changed since.
    std::fs::write(dir.path("f"), "changed\n").unwrap();
    let out = vmpod(
        &["run", "--rm", "-v", &volume, "busybox", "cat", "/data/f"],
        None,
    );
    assert_eq!(text(&out.stdout), "changed\n");
}

#[test]
fn background_containers_ps_exec_logs_kill_rm() {
    let _serial = serial();
    let before = leftovers();
    let id = ok(&[
        "run",
        "-d",
        "--name",
        "vmpod-test-bg",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; trap 'echo term; exit 3' TERM; while :; do sleep 0.1; done",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 12, "{id}");
    let out = vmpod(
        &["run", "-d", "--name", "vmpod-test-bg", "busybox", "true"],
        None,
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("is in use by container"),
        "{}",
        text(&out.stderr)
    );

    let ps = ok(&["ps"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with(id) && l.contains("vmpod-test-bg") && l.contains("Up")),
        "{ps}"
    );
    // exec: the container's files, its pid namespace, its own exit status, stdin.
    let out = vmpod(
        &[
            "exec",
            "-i",
            "vmpod-test-bg",
            "sh",
            "-c",
            "cat; cat /proc/1/cmdline | tr '\\0' ' '; exit 4",
        ],
        Some(b"piped "),
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("piped sh -c echo out"),
        "{}",
        text(&out.stdout)
    );
    let out = vmpod(&["exec", &id[..6], "/no/such/program"], None);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));

    let out = vmpod(&["logs", "vmpod-test-bg"], None);
    assert_eq!(
        (text(&out.stdout).as_str(), text(&out.stderr).as_str()),
        ("out\n", "err\n")
    );
    let out = vmpod(&["rm", "vmpod-test-bg"], None);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("is running"),
        "{}",
        text(&out.stderr)
    );

    ok(&["kill", "-s", "TERM", id]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ok(&["ps", "-a"]).contains("Exited (3)") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            ok(&["ps", "-a"])
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !ok(&["ps"]).contains(id),
        "ps without -a lists running ones only"
    );
    assert_eq!(text(&vmpod(&["logs", id], None).stdout), "out\nterm\n");
    let out = vmpod(&["exec", id, "true"], None);
    assert!(
        text(&out.stderr).contains("not running"),
        "{}",
        text(&out.stderr)
    );
    ok(&["rm", id]);
    assert!(!ok(&["ps", "-a"]).contains(id));

    // An OOM kill shows as docker's OOMKilled.
    let id = ok(&[
        "run",
        "-d",
        "--memory",
        "64m",
        "busybox",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=200M",
        "count=1",
    ]);
    let id = id.trim();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ok(&["ps", "-a"])
        .lines()
        .any(|l| l.starts_with(id) && l.ends_with("Exited (137) OOMKilled"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            ok(&["ps", "-a"])
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ok(&["rm", id]);

    // rm -f of a running one, and -d --rm, leave nothing either.
    let id = ok(&["run", "-d", "busybox", "sleep", "1000"]);
    let sandbox_processes = |dirs: &[String]| -> usize {
        dirs.iter()
            .map(|d| processes_mentioning(&format!("/run/vmpod/{d}")).len())
            .sum()
    };
    assert!(sandbox_processes(&state_dirs()) > 0, "the VM runs");
    ok(&["rm", "-f", id.trim()]);
    let id = ok(&["run", "-d", "--rm", "busybox", "true"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while ok(&["ps", "-a"]).contains(id.trim()) || leftovers() != before {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {:?} {:?} {:?}",
            state_dirs(),
            records(),
            leftovers()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn kill_9_of_a_monitor_takes_its_vm_and_sandbox_with_it() {
    let _serial = serial();
    let id = ok(&["run", "-d", "busybox", "sleep", "1000"]);
    let id = id.trim();
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("/run/vmpod/containers/{id}/record.json")).unwrap(),
    )
    .unwrap();
    let monitor = record["monitor_pid"].as_i64().unwrap() as i32;
    let vsock = record["vsock"].as_str().unwrap().to_string();
    let sandbox_dir = std::path::Path::new(&vsock)
        .parent()
        .unwrap()
        .display()
        .to_string();
    // SAFETY: kill(2) of the monitor this test started.
    unsafe { libc::kill(monitor, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::path::Path::new(&sandbox_dir).exists()
        || !processes_mentioning(&sandbox_dir).is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {:?}",
            processes_mentioning(&sandbox_dir)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(ok(&["ps", "-a"]).contains("Exited (125)"));
    ok(&["rm", id]);
}

#[test]
fn a_pod_netns_gives_the_vm_its_ip_and_is_left_as_found() {
    let _serial = serial();
    let before = leftovers();
    let ns = support::PodNetns::new("cli", true);
    let clean = ns.state();
    let server = support::FileServer::start(
        "www",
        "10.203.0.1:18765",
        "hello.txt",
        "served by the host\n",
    );
    let out = vmpod(
        &[
            "run", "--rm", "--netns", &ns.path(), "busybox", "sh", "-c",
            "ip -4 -o addr show eth0 | grep -o 'inet [0-9./]*'; ping -c1 -W5 10.203.0.1 >/dev/null && echo ping-ok; wget -q -O- http://10.203.0.1:18765/hello.txt",
        ],
        None,
    );
    drop(server);
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "inet 10.203.0.2/24\nping-ok\nserved by the host\n"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(ns.state(), clean, "the tap or the tc mirroring stayed");

    // Refused: no namespace there; a namespace without an IPv4 interface.
    let out = vmpod(
        &[
            "run",
            "--rm",
            "--netns",
            "/run/netns/vmpod-none",
            "busybox",
            "true",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("no such network namespace"),
        "{}",
        text(&out.stderr)
    );
    let bare = support::PodNetns::new("cli", false);
    let bare_clean = bare.state();
    let out = vmpod(
        &["run", "--rm", "--netns", &bare.path(), "busybox", "true"],
        None,
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("no Ethernet interface with an IPv4 address"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(bare.state(), bare_clean);
    assert_eq!(leftovers(), before);
}

#[test]
fn a_terminal_run_gets_the_window_size_and_its_changes() {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let _serial = serial();
    let (mut master, mut slave) = (-1, -1);
    let mut size = libc::winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty(3) fills two fds; the winsize is read.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: both fds were just opened and are owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let script =
        "stty size; trap 'stty size; exit 5' WINCH; echo ready; while :; do sleep 0.1; done";
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmpod"))
        .args(["run", "--rm", "-t", "busybox", "sh", "-c", script])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmpod");
    drop(slave);
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("ready") {
        let n = reader.read(&mut buf).expect("read the terminal");
        assert!(n > 0, "the terminal closed: {seen:?}");
        seen += &String::from_utf8_lossy(&buf[..n]);
    }
    assert!(seen.contains("30 100"), "{seen:?}");
    size.ws_row = 40;
    size.ws_col = 120;
    // SAFETY: TIOCSWINSZ reads one winsize; kill(2) of our own child, as a terminal would.
    unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&master),
            libc::TIOCSWINSZ,
            &size,
        );
        libc::kill(child.id() as i32, libc::SIGWINCH);
    }
    let status = child.wait().unwrap();
    // What the container wrote after the resize (the master reads until EIO once closed).
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen += &String::from_utf8_lossy(&buf[..n]);
    }
    assert_eq!(status.code(), Some(5), "{seen:?}");
    assert!(seen.contains("40 120"), "{seen:?}");
}
