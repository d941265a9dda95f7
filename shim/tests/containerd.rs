//! The shim under a real containerd (Debian's 1.6), started by each test with its own root,
//! state and socket, and the build's binaries first on its PATH; `ctr` drives it.
//!
//! (Over 600 lines: one test binary, whose tests share its containerd helpers.)

#[path = "../../tests/support/mod.rs"]
mod support;

#[path = "common/daemon.rs"]
mod daemon;

use daemon::{bin_dir, guest_dir, text};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RUNTIME: &str = "io.containerd.vmpod.v2";
const IMAGE: &str = "docker.io/library/busybox:latest";

/// One test at a time: what a test finds left behind is its own.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Containerd {
    dir: support::Scratch,
    daemon: Option<Child>,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = support::Scratch::new("containerd");
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{0}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{0}/containerd.sock.ttrpc\"\n",
            dir.0.display()
        );
        std::fs::write(dir.path("config.toml"), config).unwrap();
        let mut c = Containerd { dir, daemon: None };
        c.launch();
        // The busybox image `make guest` builds, as a docker-archive containerd imports.
        let archive = c.dir.path("busybox.tar");
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q"])
            .arg(format!(
                "oci:{}:latest",
                guest_dir().join("busybox-oci").display()
            ))
            .arg(format!("docker-archive:{}:{IMAGE}", archive.display()))
            .output()
            .expect("run skopeo");
        assert!(out.status.success(), "skopeo: {}", text(&out.stderr));
        c.ok(&["images", "import", archive.to_str().unwrap()]);
        c
    }

    fn launch(&mut self) {
        self.daemon = Some(daemon::start(&self.dir.0, None));
    }

    fn kill_9(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = std::fs::remove_file(self.dir.path("containerd.sock"));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(self.dir.path("containerd.sock"))
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.ctr(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `ctr task ls` as (id, pid, status).
    fn tasks(&self) -> Vec<(String, String, String)> {
        self.ok(&["task", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.first()?.to_string(),
                    f.get(1)?.to_string(),
                    f.get(2)?.to_string(),
                ))
            })
            .collect()
    }

    fn status_of(&self, id: &str) -> Option<String> {
        self.tasks().into_iter().find(|t| t.0 == id).map(|t| t.2)
    }

    fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.status_of(id).as_deref() != Some(status) {
            assert!(
                Instant::now() < deadline,
                "{id} never became {status}: {:?}",
                self.tasks()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn remove(&self, id: &str) {
        let _ = self.run(&["task", "kill", "-a", "-s", "KILL", id]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(
            self.status_of(id).as_deref(),
            Some("RUNNING" | "PAUSED" | "CREATED")
        ) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.run(&["task", "delete", id]);
        let _ = self.run(&["container", "rm", id]);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let tasks = if self.run(&["task", "ls"]).status.success() {
            self.tasks()
        } else {
            Vec::new()
        };
        for (id, _, _) in tasks {
            self.remove(&id);
        }
        self.kill_9();
        // Shims outlive containerd by design; a test that failed half-way may leave one (its
        // VM dies with it).
        let socket = self.dir.path("containerd.sock").display().to_string();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = text(&cmdline);
            if cmdline.contains("containerd-shim-vmpod-v2") && cmdline.contains(&socket) {
                // SAFETY: kill(2) of a shim this fixture's containerd started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Processes and state a shim could leave: shims, VMs, sandbox directories.
fn leftovers() -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir("/run/vmpod")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // Records and sandbox uid claims live beside the state directories.
                .filter(|n| n != "containers" && n != "uids")
                .map(|n| format!("/run/vmpod/{n}"))
                .collect()
        })
        .unwrap_or_default();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = text(&cmdline).replace('\0', " ");
        if cmdline.starts_with(bin_dir().join("containerd-shim-vmpod-v2").to_str().unwrap())
            || cmdline.contains("/run/vmpod/")
        {
            found.push(cmdline);
        }
    }
    found
}

/// A VM a sandbox started (other QEMUs on the host are not ours): a jailed VM's own command
/// line names only paths in its jail, so it is found as its jailer's, whose end ends it.
fn is_sandbox_vm(cmdline: &str) -> bool {
    let jailed_qemu = cmdline.contains("vmpod-jailer") && cmdline.contains("qemu-system");
    // Another build's vmpod-vmm or jailer on this host is not this test's.
    let this_build = cmdline.starts_with("qemu-system")
        || cmdline.starts_with(bin_dir().to_str().unwrap_or_default());
    (cmdline.starts_with("qemu-system") || cmdline.contains("vmpod-vmm") || jailed_qemu)
        && cmdline.contains("/run/vmpod/")
        && this_build
}

fn nothing_left_within(seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !leftovers().is_empty() {
        assert!(Instant::now() < deadline, "left behind: {:?}", leftovers());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ctr run --rm --log-uri URI ... sh -c SCRIPT`.
fn run_logged(c: &Containerd, uri: &str, id: &str, script: &str) -> Output {
    c.run(&[
        "run",
        "--rm",
        "--log-uri",
        uri,
        "--runtime",
        RUNTIME,
        IMAGE,
        id,
        "sh",
        "-c",
        script,
    ])
}

fn run_rm(c: &Containerd, id: &str, command: &[&str]) -> Output {
    let mut args = vec!["run", "--rm", "--runtime", RUNTIME, IMAGE, id];
    args.extend_from_slice(command);
    c.run(&args)
}

#[test]
fn ctr_run_rm_passes_output_and_exit_codes() {
    let _serial = serial();
    let c = Containerd::start();
    let out = run_rm(&c, "echo", &["echo", "hello from a vmpod VM"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "hello from a vmpod VM\n"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        run_rm(&c, "code42", &["sh", "-c", "exit 42"]).status.code(),
        Some(42)
    );
    // A shell that is PID 1 ignores its own SIGKILL, as under runc: the status of a child
    // killed with it is passed on instead.
    assert_eq!(
        run_rm(
            &c,
            "killed",
            &["sh", "-c", "sleep 100 & kill -9 $!; wait $!"]
        )
        .status
        .code(),
        Some(137)
    );
    let out = run_rm(&c, "stderr", &["sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(
        (text(&out.stdout).as_str(), text(&out.stderr).as_str()),
        ("out\n", "err\n")
    );
    // A file:// log URI takes both streams.
    let log = c.dir.path("logs/task.log");
    let uri = format!("file://{}", log.display());
    let out = run_logged(&c, &uri, "logged", "echo to-file; echo err-to-file >&2");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("to-file\n") && logged.contains("err-to-file\n"),
        "{logged:?}"
    );
    // A binary:// logger gets stdout on fd 3 and stderr on fd 4, and says it is ready on fd 5.
    let logger = c.dir.path("logger.sh");
    std::fs::write(
        &logger,
        format!(
            "#!/bin/sh\ncat <&3 > {0}/bin.out & cat <&4 > {0}/bin.err & printf x >&5; exec 5>&-; wait\n",
            c.dir.0.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&logger, std::fs::Permissions::from_mode(0o755)).unwrap();
    let uri = format!("binary://{}", logger.display());
    let out = run_logged(
        &c,
        &uri,
        "binlog",
        "echo via-binary; echo err-via-binary >&2",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let read = |name: &str| std::fs::read_to_string(c.dir.path(name)).unwrap_or_default();
    assert_eq!(
        (read("bin.out"), read("bin.err")),
        ("via-binary\n".into(), "err-via-binary\n".into())
    );
    // Host bind mounts reach the guest live through the sandbox's shared directory: a
    // read-write one both ways, a read-only one refusing writes; nothing left after.
    let rw = c.dir.path("bind-rw");
    let ro = c.dir.path("bind-ro");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(rw.join("f"), "from the host\n").unwrap();
    std::fs::write(ro.join("kept"), "kept\n").unwrap();
    let rw_mount = format!("type=bind,src={},dst=/rw,options=rbind:rw", rw.display());
    let ro_mount = format!("type=bind,src={},dst=/ro,options=rbind:ro", ro.display());
    let out = c.run(&[
        "run",
        "--rm",
        "--mount",
        &rw_mount,
        "--mount",
        &ro_mount,
        "--runtime",
        RUNTIME,
        IMAGE,
        "bind",
        "sh",
        "-c",
        "cat /rw/f; echo back > /rw/g; echo no > /ro/kept || echo read-only",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "from the host\nread-only\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(rw.join("g")).unwrap(), "back\n");
    assert_eq!(std::fs::read_to_string(ro.join("kept")).unwrap(), "kept\n");
    let _ = c.run(&["container", "rm", "bind"]);
    nothing_left_within(15);
}

/// `ctr events` in the background, collecting topics and their container ids.
struct EventLog {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl EventLog {
    fn start(c: &Containerd) -> EventLog {
        let mut child = c
            .ctr(&["events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        EventLog { child, lines }
    }

    /// The /tasks/... topics seen, in order.
    fn topics(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_detached_task_execs_lists_pauses_reports_metrics_and_is_killed_in_order() {
    let _serial = serial();
    let c = Containerd::start();
    let events = EventLog::start(&c);
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "bg",
        "sh",
        "-c",
        "sleep 1000 & while :; do sleep 1; done",
    ]);
    c.wait_status("bg", "RUNNING");
    let out = c.run(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "bg",
        "sh",
        "-c",
        "echo from-exec; ls /proc | grep -c '^[0-9]'; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("from-exec\n"),
        "{}",
        text(&out.stdout)
    );

    // The container's processes, as the guest's cgroup lists them: sh and two sleeps at most
    // settle to at least sh and the background sleep.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ps = c.ok(&["task", "ps", "bg"]);
        if ps.lines().skip(1).count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{ps}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // ctr 1.6 has no `task update`: the task API is called directly, as the CRI would.
    update_memory_limit(&c, "bg", 268_435_456);
    let metrics = c.ok(&["task", "metrics", "bg"]);
    assert!(metrics.contains("268435456"), "the new limit: {metrics}");
    c.ok(&["task", "pause", "bg"]);
    assert_eq!(c.status_of("bg").as_deref(), Some("PAUSED"));
    c.ok(&["task", "resume", "bg"]);
    assert_eq!(c.status_of("bg").as_deref(), Some("RUNNING"));
    let metrics = c.ok(&["task", "metrics", "bg"]);
    assert!(
        metrics.contains("memory.usage") && metrics.contains("pids.current"),
        "{metrics}"
    );
    let pids: u64 = metrics
        .lines()
        .find(|l| l.starts_with("pids.current"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    assert!(pids >= 2, "{metrics}");

    // SIGTERM is ignored by a shell that is PID 1, as under runc; KILL is not.
    c.ok(&["task", "kill", "-s", "KILL", "bg"]);
    c.wait_status("bg", "STOPPED");
    let out = c.run(&["task", "delete", "bg"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    c.ok(&["container", "rm", "bg"]);
    nothing_left_within(15);
    std::thread::sleep(Duration::from_millis(500));
    let topics = events.topics();
    let expected = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let mut at = 0;
    for topic in &topics {
        if at < expected.len() && topic == expected[at] {
            at += 1;
        }
    }
    assert_eq!(at, expected.len(), "events out of order: {topics:?}");
}

/// The Update call on the task's shim, through its address file.
/// A task API client of the shim serving `id`, found through its bundle's address file.
fn task_client(c: &Containerd, id: &str) -> containerd_shim::protos::shim_sync::TaskClient {
    let address = std::fs::read_to_string(c.dir.path(&format!(
        "state/io.containerd.runtime.v2.task/default/{id}/address"
    )))
    .expect("the shim's address file");
    let client = containerd_shim::protos::ttrpc::Client::connect(address.trim()).unwrap();
    containerd_shim::protos::shim_sync::TaskClient::new(client)
}

fn ttrpc_timeout(seconds: i64) -> containerd_shim::protos::ttrpc::context::Context {
    containerd_shim::protos::ttrpc::context::with_timeout(seconds * 1_000_000_000)
}

fn update_memory_limit(c: &Containerd, id: &str, bytes: u64) {
    use containerd_shim::protos::protobuf::well_known_types::any::Any;
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    any.value = format!("{{\"memory\":{{\"limit\":{bytes}}}}}").into_bytes();
    let mut req = containerd_shim::api::UpdateTaskRequest::new();
    req.id = id.into();
    req.resources = containerd_shim::protos::protobuf::MessageField::some(any);
    task_client(c, id)
        .update(ttrpc_timeout(10), &req)
        .expect("update");
}

#[test]
fn a_tty_run_gets_a_terminal() {
    let _serial = serial();
    let c = Containerd::start();
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty(3) fills two fds; the winsize is read.
    assert_eq!(
        unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        },
        0
    );
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: both fds were just opened and are owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = c
        .ctr(&[
            "run",
            "--rm",
            "-t",
            "--runtime",
            RUNTIME,
            IMAGE,
            "tty",
            "sh",
            "-c",
            "tty; stty size; exit 7",
        ])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap())
        .spawn()
        .unwrap();
    drop(slave);
    let status = child.wait().unwrap();
    let mut reader = std::fs::File::from(master);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let seen = text(&seen);
    assert_eq!(status.code(), Some(7), "{seen}");
    assert!(
        seen.contains("/dev/pts/") && seen.contains("33 101"),
        "{seen:?}"
    );
    nothing_left_within(15);
}

#[test]
fn tasks_survive_a_containerd_restart_and_a_dead_shim_is_cleaned_up() {
    let _serial = serial();
    let mut c = Containerd::start();
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "survivor",
        "sleep",
        "1000",
    ]);
    c.wait_status("survivor", "RUNNING");
    c.kill_9();
    c.launch();
    // containerd finds the shim again through the bundle's address file.
    c.wait_status("survivor", "RUNNING");
    let out = c.run(&[
        "task",
        "exec",
        "--exec-id",
        "after",
        "survivor",
        "echo",
        "still-here",
    ]);
    assert_eq!(text(&out.stdout), "still-here\n", "{}", text(&out.stderr));

    // kill -9 of the shim: its VM dies with it, the task exits, `delete` cleans up.
    let shim: i32 = leftovers()
        .iter()
        .find(|l| l.contains("containerd-shim-vmpod-v2"))
        .and_then(|_| {
            std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                (text(&cmd).contains("containerd-shim-vmpod-v2") && text(&cmd).contains("survivor"))
                    .then_some(pid)
            })
        })
        .expect("the shim runs");
    // SAFETY: kill(2) of the shim this test started through containerd.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    // containerd runs the shim's `delete` and drops the task.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.status_of("survivor").as_deref() == Some("RUNNING") {
        assert!(Instant::now() < deadline, "{:?}", c.tasks());
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.run(&["task", "delete", "survivor"]);
    c.ok(&["container", "rm", "survivor"]);
    nothing_left_within(15);
    assert!(c.log().contains("cleaning up dead shim"), "{}", c.log());
}

#[test]
fn a_vm_that_dies_ends_its_task_with_an_exit() {
    let _serial = serial();
    let c = Containerd::start();
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "doomed",
        "sleep",
        "1000",
    ]);
    c.wait_status("doomed", "RUNNING");
    let vm: i32 = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = text(&std::fs::read(e.path().join("cmdline")).ok()?);
            (is_sandbox_vm(&cmd)).then_some(pid)
        })
        .expect("the VM runs");
    // SAFETY: kill(2) of the VM this test started through containerd.
    unsafe { libc::kill(vm, libc::SIGKILL) };
    c.wait_status("doomed", "STOPPED");
    let out = c.run(&["task", "delete", "doomed"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    c.ok(&["container", "rm", "doomed"]);
    nothing_left_within(15);
}

#[test]
fn containers_with_one_sandbox_id_share_one_vm() {
    let _serial = serial();
    let c = Containerd::start();
    let annotation = "io.kubernetes.cri.sandbox-id=pod-1";
    c.ok(&[
        "run",
        "-d",
        "--annotation",
        annotation,
        "--runtime",
        RUNTIME,
        IMAGE,
        "pod-1",
        "sh",
        "-c",
        "echo first > /tmp/mark; nc -l -p 7777 -e echo pong; sleep 1000",
    ]);
    c.wait_status("pod-1", "RUNNING");
    c.ok(&[
        "run",
        "-d",
        "--annotation",
        annotation,
        "--runtime",
        RUNTIME,
        IMAGE,
        "app",
        "sleep",
        "1000",
    ]);
    c.wait_status("app", "RUNNING");
    let vms = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| is_sandbox_vm(&text(&c)))
                .unwrap_or(false)
        })
        .count();
    assert_eq!(vms, 1, "one VM for the pod");
    // Same network (the VM's), own filesystem.
    let out = c.run(&[
        "task",
        "exec",
        "--exec-id",
        "probe",
        "app",
        "sh",
        "-c",
        "cat /tmp/mark 2>/dev/null || echo no-mark; echo | nc 127.0.0.1 7777",
    ]);
    assert_eq!(
        text(&out.stdout),
        "no-mark\npong\n",
        "{}",
        text(&out.stderr)
    );
    c.remove("app");
    assert_eq!(
        c.status_of("pod-1").as_deref(),
        Some("RUNNING"),
        "the pod lives on"
    );
    c.remove("pod-1");
    nothing_left_within(15);
}

#[test]
fn a_pod_netns_from_the_spec_gives_the_vm_its_ip() {
    let _serial = serial();
    let c = Containerd::start();
    let ns = support::PodNetns::new("shim", true);
    let clean = ns.state();
    let server = support::FileServer::start(
        "shim-www",
        "10.203.0.1:18766",
        "hello.txt",
        "served by the host\n",
    );
    let with_ns = format!("network:{}", ns.path());
    let out = c.run(&[
        "run", "--rm", "--with-ns", &with_ns, "--runtime", RUNTIME, IMAGE, "net", "sh", "-c",
        "ip -4 -o addr show eth0 | grep -o 'inet [0-9./]*'; wget -q -O- http://10.203.0.1:18766/hello.txt",
    ]);
    drop(server);
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "inet 10.203.0.2/24\nserved by the host\n"),
        "{}",
        text(&out.stderr)
    );
    nothing_left_within(15);
    assert_eq!(ns.state(), clean, "the tap or the tc mirroring stayed");
}

#[test]
fn an_oom_kill_is_reported_as_an_event_and_status_137() {
    let _serial = serial();
    let c = Containerd::start();
    let events = EventLog::start(&c);
    let out = c.run(&[
        "run",
        "--rm",
        "--memory-limit",
        "33554432",
        "--runtime",
        RUNTIME,
        IMAGE,
        "hog",
        "sh",
        "-c",
        "x=0123456789abcdef; while :; do x=$x$x; done",
    ]);
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        events.topics().iter().any(|t| t == "/tasks/oom"),
        "{:?}",
        events.topics()
    );
    nothing_left_within(15);
}

#[test]
fn a_task_killed_before_start_still_exits_and_is_deleted() {
    // What the CRI does when a start fails: Kill, Wait, Delete of a created task. ctr cannot
    // create without starting, so the second container of the pod is created through the
    // task API, on the first one's image layers.
    let _serial = serial();
    let c = Containerd::start();
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "first",
        "sleep",
        "1000",
    ]);
    c.wait_status("first", "RUNNING");
    let mounts = c.ok(&["snapshots", "mounts", "/unused", "first"]);
    let lowerdir = mounts
        .split([',', ' ', '\n'])
        .find_map(|o| o.strip_prefix("lowerdir="))
        .expect("the overlay's lowerdir")
        .to_string();
    let bundle = c.dir.path("second-bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    let first_spec = c
        .dir
        .path("state/io.containerd.runtime.v2.task/default/first/config.json");
    std::fs::copy(first_spec, bundle.join("config.json")).unwrap();
    let client = task_client(&c, "first");
    let mut mount = containerd_shim::protos::types::mount::Mount::new();
    mount.type_ = "overlay".into();
    mount.source = "overlay".into();
    mount.options = vec![format!("lowerdir={lowerdir}")];
    let mut create = containerd_shim::api::CreateTaskRequest::new();
    create.id = "second".into();
    create.bundle = bundle.display().to_string();
    create.rootfs = vec![mount];
    client.create(ttrpc_timeout(60), &create).expect("create");
    let mut kill = containerd_shim::api::KillRequest::new();
    kill.id = "second".into();
    kill.signal = libc::SIGKILL as u32;
    client.kill(ttrpc_timeout(10), &kill).expect("kill");
    let mut wait = containerd_shim::api::WaitRequest::new();
    wait.id = "second".into();
    let exited = client.wait(ttrpc_timeout(30), &wait).expect("wait returns");
    assert_eq!(exited.exit_status, 137);
    let mut delete = containerd_shim::api::DeleteRequest::new();
    delete.id = "second".into();
    client.delete(ttrpc_timeout(10), &delete).expect("delete");
    c.remove("first");
    nothing_left_within(15);
}
