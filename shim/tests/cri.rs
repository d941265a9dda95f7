//! Pods through the CRI, as a kubelet runs them, against a real containerd 1.6 with its CRI
//! plugin on (one per test binary, in a network namespace of its own; see cri/containerd.rs).
//! Every check is written once and run for each handler: `runc` proves the test itself, `vmpod`
//! holds the shim to the same behaviour.
//!
//! (Over 600 lines: one test binary, so that every test shares its one containerd.)

#[path = "../../tests/support/mod.rs"]
mod support;

#[path = "cri/client.rs"]
mod client;
#[path = "cri/containerd.rs"]
mod containerd;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "cri/images.rs"]
mod images;
#[path = "cri/kubelet.rs"]
mod kubelet;
#[path = "cri/leftovers.rs"]
mod leftovers;
#[path = "cri/pod.rs"]
mod pod;
#[path = "cri/stream.rs"]
mod stream;

use containerd::{RUNC, VMPOD};
use images::{IMAGE_A, IMAGE_B, INDEX_HTML};
use k8s_cri::v1::NamespaceMode;
use kubelet::{mount, ContainerSpec, TOKEN_MOUNT};
use pod::Pod;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn container<'a>(name: &'a str, image: &'a str, script: &str) -> ContainerSpec<'a> {
    ContainerSpec {
        name,
        image,
        command: sh(script),
        mounts: vec![],
        memory_limit: 0,
        pid: NamespaceMode::Container,
        interactive: false,
    }
}

/// Polls `probe` until it returns true.
fn eventually(what: &str, within: Duration, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !probe() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The pod of a small web app: an init container filling an emptyDir, an httpd app with
/// kubelet's volumes (configMap, service-account token, emptyDir, hostPath, termination log,
/// etc-hosts), and a sidecar writing into the emptyDir.
struct WebPod {
    pod: Pod,
    init: String,
    app: String,
    sidecar: String,
    config: PathBuf,
    hosts: PathBuf,
    host_dir: PathBuf,
}

fn start_web_pod(node: &containerd::Shared, handler: &str) -> WebPod {
    let pod = Pod::run(node, handler, "web", NamespaceMode::Container);
    let dirs = &pod.dirs;
    let config = dirs.configmap("web-config", &[("greeting", "hello v1\n")]);
    let token = dirs.kube_api_access();
    let data = dirs.empty_dir("data");
    let host_dir = node.dir.join(format!("hostpath-{}", &dirs.uid[..8]));
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("from-host"), "written by the node\n").unwrap();
    let hosts = dirs.etc_hosts(&pod.ip, &pod.hostname);
    let kubelet_mounts = |name: &str| {
        vec![
            mount(&data, "/data", false),
            mount(&hosts, "/etc/hosts", false),
            mount(&dirs.termination_log(name), "/dev/termination-log", false),
            mount(&token, TOKEN_MOUNT, true),
        ]
    };

    // The init container runs to completion first.
    let mut init = container("init", IMAGE_B, "echo written by init > /data/init.txt");
    init.mounts = kubelet_mounts("init");
    let init = pod.start(init);
    let status = pod.wait_exited(&init, Duration::from_secs(60));
    assert_eq!(status.exit_code, 0, "init: {status:?}");

    let mut app = container(
        "app",
        IMAGE_A,
        "echo app starting; exec httpd -f -p 80 -h /www",
    );
    app.mounts = kubelet_mounts("app");
    app.mounts.push(mount(&config, "/etc/config", true));
    app.mounts.push(mount(&host_dir, "/host", false));
    let app = pod.start(app);
    pod.wait_running(&app);
    let mut sidecar = container(
        "sidecar",
        IMAGE_B,
        "echo sidecar starting; i=0; while :; do i=$((i+1)); echo $i > /data/sidecar.txt; sleep 1; done",
    );
    sidecar.mounts = kubelet_mounts("sidecar");
    let sidecar = pod.start(sidecar);
    pod.wait_running(&sidecar);
    WebPod {
        pod,
        init,
        app,
        sidecar,
        config,
        hosts,
        host_dir,
    }
}

/// The node reaches the pod's IP; the sidecar reaches the app on localhost.
fn check_network(node: &containerd::Shared, web: &WebPod) {
    let pod = &web.pod;
    eventually("the node reaches the app", Duration::from_secs(20), || {
        let out = node.in_node_netns(
            "curl",
            &["-s", "-m", "5", &format!("http://{}/index.html", pod.ip)],
        );
        containerd::text(&out.stdout) == INDEX_HTML
    });
    assert_eq!(
        pod.sh(&web.sidecar, "wget -q -O- http://127.0.0.1/index.html"),
        INDEX_HTML
    );
}

/// One hostname, one UTS, IPC and network namespace for the pod (and one /dev/shm); a PID
/// namespace per container.
fn check_namespaces(web: &WebPod) {
    let (pod, app, sidecar) = (&web.pod, web.app.as_str(), web.sidecar.as_str());
    for id in [app, sidecar] {
        assert_eq!(pod.sh(id, "hostname"), format!("{}\n", pod.hostname));
    }
    let ns = |id: &str, kind: &str| pod.sh(id, &format!("readlink /proc/self/ns/{kind}"));
    for kind in ["uts", "ipc", "net"] {
        assert_eq!(ns(app, kind), ns(sidecar, kind), "{kind} namespace");
    }
    assert_ne!(ns(app, "pid"), ns(sidecar, "pid"), "pid namespace");
    assert_eq!(pod.sh(app, "cat /proc/1/comm"), "httpd\n");
    pod.sh(sidecar, "echo shared memory > /dev/shm/ipc-test");
    assert_eq!(pod.sh(app, "cat /dev/shm/ipc-test"), "shared memory\n");
}

/// The configMap and its update through the atomic writer, the token read-only, the emptyDir
/// shared with the init container and the sidecar, hostPath both ways.
fn check_volumes(web: &WebPod) {
    let (pod, app) = (&web.pod, web.app.as_str());
    assert_eq!(pod.sh(app, "cat /etc/config/greeting"), "hello v1\n");
    kubelet::atomic_write(&web.config, &[("greeting", "hello v2\n")]);
    eventually(
        "the configMap update shows",
        Duration::from_secs(10),
        || pod.sh(app, "cat /etc/config/greeting") == "hello v2\n",
    );
    assert_eq!(
        pod.sh(app, &format!("cat {TOKEN_MOUNT}/token")),
        kubelet::TOKEN
    );
    assert_eq!(
        pod.sh(app, &format!("cat {TOKEN_MOUNT}/namespace")),
        "default"
    );
    let write = pod.exec(app, &format!("echo x > {TOKEN_MOUNT}/token"));
    assert_ne!(write.code, 0, "the token is writable: {write:?}");
    assert_eq!(pod.sh(app, "cat /data/init.txt"), "written by init\n");
    eventually(
        "the sidecar's writes show in the app",
        Duration::from_secs(10),
        || {
            pod.sh(app, "cat /data/sidecar.txt")
                .trim()
                .parse::<u32>()
                .is_ok_and(|n| n >= 2)
        },
    );
    assert_eq!(pod.sh(app, "cat /host/from-host"), "written by the node\n");
    pod.sh(app, "echo written by the app > /host/from-app");
    assert_eq!(
        std::fs::read_to_string(web.host_dir.join("from-app")).unwrap(),
        "written by the app\n"
    );
}

/// /etc/hosts is kubelet's file, /etc/resolv.conf the sandbox's DNS config, in every container.
fn check_hosts_and_dns(web: &WebPod) {
    let pod = &web.pod;
    assert_eq!(
        pod.sh(&web.app, "cat /etc/hosts"),
        std::fs::read_to_string(&web.hosts).unwrap()
    );
    let resolv = pod.sh(&web.sidecar, "cat /etc/resolv.conf");
    assert!(
        resolv.contains(&format!("nameserver {}", kubelet::DNS_SERVER))
            && resolv.contains(&format!("search {}", kubelet::DNS_SEARCHES.join(" ")))
            && resolv.contains("options ndots:5"),
        "{resolv}"
    );
    assert_eq!(resolv, pod.sh(&web.app, "cat /etc/resolv.conf"));
}

/// ExecSync passes exit codes and both streams.
fn check_exec(web: &WebPod) {
    let r = web.pod.exec(&web.app, "echo out; echo err >&2; exit 7");
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (7, "out\n", "err\n")
    );
    assert_eq!(web.pod.exec(&web.app, "true").code, 0);
}

/// Stats for one container and for the pod's (the exited init container included).
fn check_stats(web: &WebPod) {
    let pod = &web.pod;
    let stats = pod.cri.container_stats(&web.app).expect("ContainerStats");
    let memory = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    assert!(memory.is_some_and(|m| m > 0), "app memory: {memory:?}");
    let cpu = stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value);
    assert!(cpu.is_some_and(|c| c > 0), "app cpu: {cpu:?}");
    let all = pod
        .cri
        .list_container_stats(&pod.id)
        .expect("ListContainerStats");
    let mut listed: Vec<String> = all
        .iter()
        .filter_map(|s| s.attributes.as_ref().map(|a| a.id.clone()))
        .collect();
    listed.sort();
    let mut expected = vec![web.init.clone(), web.app.clone(), web.sidecar.clone()];
    expected.sort();
    assert_eq!(listed, expected, "ListContainerStats of the pod");
}

/// containerd's timestamps: RFC 3339 with nanoseconds, `2026-12-02T16:30:00.123456789Z`.
fn is_rfc3339_nano(stamp: &str) -> bool {
    let b = stamp.as_bytes();
    b.len() >= 21
        && (b[4], b[7], b[10], b[13], b[16], b[19]) == (b'-', b'-', b'T', b':', b':', b'.')
        && (stamp.ends_with('Z') || stamp[19..].contains(['+', '-']))
}

/// The CRI log files (the sandbox's log directory + the container's log path) hold CRI-format
/// lines: `<RFC3339Nano> stdout F <text>`.
fn check_logs(web: &WebPod) {
    for (name, line) in [("app", "app starting"), ("sidecar", "sidecar starting")] {
        let log = web.pod.dirs.log_dir.join(format!("{name}/0.log"));
        let text =
            std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let first = text.lines().next().unwrap_or_default();
        let fields: Vec<&str> = first.splitn(4, ' ').collect();
        assert!(
            fields.len() == 4 && is_rfc3339_nano(fields[0]) && fields[1..] == ["stdout", "F", line],
            "{}: {text:?}",
            log.display()
        );
    }
}

/// The web pod, every check, then StopPodSandbox and RemovePodSandbox leave nothing.
fn a_kubelet_style_pod_works(handler: &str) {
    let node = containerd::shared();
    let mut web = start_web_pod(&node, handler);
    if let Some(dir) = std::env::var_os("VMPOD_CRI_SPECS") {
        save_specs(&node, &web.pod, &web.app, Path::new(&dir));
    }
    check_network(&node, &web);
    check_namespaces(&web);
    check_volumes(&web);
    check_hosts_and_dns(&web);
    check_exec(&web);
    check_stats(&web);
    check_logs(&web);
    let traces = leftovers::Traces::of(&node, &web.pod);
    web.pod.remove();
    traces.check_gone(&node);
    let _ = std::fs::remove_dir_all(&web.host_dir);
}

/// With VMPOD_CRI_SPECS=DIR, the OCI specs containerd's CRI wrote for the sandbox and the app
/// (sandbox.json, app.json, `ctr containers info` beside them) and its config, for reference.
fn save_specs(node: &containerd::Shared, pod: &Pod, app: &str, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, id) in [("sandbox", pod.id.as_str()), ("app", app)] {
        let bundle = node
            .dir
            .join("state/io.containerd.runtime.v2.task/k8s.io")
            .join(id);
        std::fs::copy(bundle.join("config.json"), dir.join(format!("{name}.json"))).unwrap();
        let info = node.ctr(&["containers", "info", id]);
        std::fs::write(dir.join(format!("{name}-info.json")), info.stdout).unwrap();
    }
    std::fs::copy(node.dir.join("config.toml"), dir.join("config.toml")).unwrap();
    std::fs::copy(
        node.dir.join("cni/net.d/10-vmpod-cri.conflist"),
        dir.join("10-vmpod-cri.conflist"),
    )
    .unwrap();
}

/// Containers that end: an OOM kill, a termination message, and StopContainer's grace period
/// (SIGTERM honoured; SIGTERM ignored, then SIGKILL).
fn containers_end_as_kubelet_expects(handler: &str) {
    let node = containerd::shared();
    let mut pod = Pod::run(&node, handler, "ends", NamespaceMode::Container);

    let mut hog = container(
        "hog",
        IMAGE_B,
        "x=0123456789abcdef; while :; do x=$x$x; done",
    );
    hog.memory_limit = 32 << 20;
    let hog = pod.start(hog);

    let message_file = pod.dirs.termination_log("finisher");
    let mut finisher = container(
        "finisher",
        IMAGE_B,
        "echo the end > /dev/termination-log; exit 3",
    );
    finisher.mounts = vec![mount(&message_file, "/dev/termination-log", false)];
    let finisher = pod.start(finisher);

    let polite = pod.start(container(
        "polite",
        IMAGE_B,
        "trap 'echo got TERM; exit 0' TERM; echo ready; while :; do sleep 1 & wait; done",
    ));
    let stubborn = pod.start(container(
        "stubborn",
        IMAGE_B,
        "trap '' TERM; echo ready; while :; do sleep 1; done",
    ));

    let status = pod.wait_exited(&hog, Duration::from_secs(60));
    assert_eq!(
        (status.reason.as_str(), status.exit_code),
        ("OOMKilled", 137),
        "{status:?}"
    );
    let status = pod.wait_exited(&finisher, Duration::from_secs(30));
    assert_eq!(status.exit_code, 3, "{status:?}");
    assert_eq!(std::fs::read_to_string(&message_file).unwrap(), "the end\n");

    pod.wait_running(&polite);
    pod.wait_running(&stubborn);
    let polite_log = pod.dirs.log_dir.join("polite/0.log");
    eventually(
        "the polite container is ready",
        Duration::from_secs(10),
        || std::fs::read_to_string(&polite_log).is_ok_and(|l| l.contains("ready")),
    );
    let started = Instant::now();
    pod.cri.stop_container(&polite, 30).expect("StopContainer");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "SIGTERM was not sent"
    );
    let status = pod.wait_exited(&polite, Duration::from_secs(5));
    assert_eq!(status.exit_code, 0, "{status:?}");
    let log = std::fs::read_to_string(&polite_log).unwrap();
    assert!(log.contains(" stdout F got TERM"), "{log}");

    let started = Instant::now();
    pod.cri.stop_container(&stubborn, 2).expect("StopContainer");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "killed before the grace period: {took:?}"
    );
    assert!(
        took < Duration::from_secs(15),
        "not killed after the grace period: {took:?}"
    );
    let status = pod.wait_exited(&stubborn, Duration::from_secs(5));
    assert_eq!(status.exit_code, 137, "{status:?}");

    let traces = leftovers::Traces::of(&node, &pod);
    pod.remove();
    traces.check_gone(&node);
}

/// With pid POD, the pod's containers share one PID namespace whose first process is the
/// sandbox's.
fn a_pod_shares_its_pid_namespace_when_asked(handler: &str) {
    let node = containerd::shared();
    let mut pod = Pod::run(&node, handler, "pidpod", NamespaceMode::Pod);
    let mut one = container("one", IMAGE_B, "while :; do sleep 1; done");
    one.pid = NamespaceMode::Pod;
    let mut two = container("two", IMAGE_A, "exec httpd -f -p 8080 -h /www");
    two.pid = NamespaceMode::Pod;
    let one = pod.start(one);
    let two = pod.start(two);
    pod.wait_running(&one);
    pod.wait_running(&two);
    let ns = |id: &str| pod.sh(id, "readlink /proc/self/ns/pid");
    assert_eq!(ns(&one), ns(&two));
    // PID 1 is the sandbox's process (the pause), neither container's.
    let init = pod.sh(&one, "tr '\\0' ' ' < /proc/1/cmdline");
    assert!(
        !init.is_empty() && !init.contains("while") && !init.contains("httpd"),
        "PID 1 is a container's: {init:?}"
    );
    assert!(
        pod.sh(&one, "cat /proc/[0-9]*/comm").contains("httpd"),
        "the other container's processes are seen"
    );
    assert_eq!(
        pod.sh(&one, "wget -q -O- http://127.0.0.1:8080/index.html"),
        INDEX_HTML
    );
    let traces = leftovers::Traces::of(&node, &pod);
    pod.remove();
    traces.check_gone(&node);
}

/// The pod's host cgroup (cgroupfs: kubelet's parent, then the sandbox's id) in the memory
/// hierarchy.
fn host_cgroup(pod: &Pod) -> PathBuf {
    let parent = pod.dirs.cgroup_parent();
    Path::new("/sys/fs/cgroup/memory")
        .join(parent.trim_start_matches('/'))
        .join(&pod.id)
}

fn comm(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A line for an interactive shell that runs `script` once its terminal has a size.
fn once_sized(script: &str) -> String {
    format!("while [ \"$(stty size)\" = \"0 0\" ]; do sleep 0.1; done; {script}\n")
}

/// What kubelet does to running containers beyond exec: resource updates reach the
/// container's cgroup, a streaming exec gets a terminal that resizes, an exited container
/// reports its times, and the node's cgroup for the pod holds what the pod runs on the host.
fn containers_take_updates_and_a_terminal(handler: &str) {
    let node = containerd::shared();
    let mut pod = Pod::run(&node, handler, "tty", NamespaceMode::Container);

    // The pod's host cgroup holds the pause process under runc, the VM under vmpod.
    let cgroup = host_cgroup(&pod);
    let mut procs = std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_else(|e| panic!("{}: {e}", cgroup.display()));
    // A jailed VM is in its sandbox's own cgroup, `vmpod-<id>` in the pod's.
    for sandbox in std::fs::read_dir(&cgroup).unwrap().flatten() {
        if sandbox.file_name().to_string_lossy().starts_with("vmpod-") {
            procs += &std::fs::read_to_string(sandbox.path().join("cgroup.procs")).unwrap();
        }
    }
    let comms: Vec<String> = procs.lines().map(comm).collect();
    if handler == VMPOD {
        assert!(
            comms
                .iter()
                .any(|c| c.starts_with("qemu-system") || c == "vmpod-vmm"),
            "no VMM in the pod's cgroup: {comms:?}"
        );
    } else {
        let pause = pod.info()["pid"].to_string();
        assert!(procs.lines().any(|p| p == pause), "{pause} not in {procs}");
    }
    let usage = std::fs::read_to_string(cgroup.join("memory.usage_in_bytes")).unwrap();
    let usage: u64 = usage.trim().parse().unwrap();
    assert!(usage > 0, "the pod's memory is not counted on the node");

    let app = pod.start(container("app", IMAGE_B, "exec sleep 1000"));
    pod.wait_running(&app);

    // containerd passes on the sandbox the pod's resources kubelet sent (256 MiB, one CPU);
    // vmpod sizes the VM from them (that memory and the guest's 96 MiB), runc has the host's.
    let annotations = &pod.info()["runtimeSpec"]["annotations"];
    assert_eq!(
        annotations["io.kubernetes.cri.sandbox-memory"], "268435456",
        "{annotations}"
    );
    let mem_total = pod.sh(&app, "awk '/^MemTotal/ {print $2}' /proc/meminfo");
    let mem_total_mib = mem_total.trim().parse::<u64>().unwrap() >> 10;
    if handler == VMPOD {
        assert!((256..=352).contains(&mem_total_mib), "{mem_total_mib} MiB");
    } else {
        assert!(mem_total_mib > 1024, "{mem_total_mib} MiB");
    }

    // UpdateContainerResources reaches the container's own cgroup.
    let limit = 48 << 20;
    pod.cri
        .update_container_resources(
            &app,
            k8s_cri::v1::LinuxContainerResources {
                memory_limit_in_bytes: limit,
                cpu_period: 100_000,
                cpu_quota: 50_000,
                ..Default::default()
            },
        )
        .expect("UpdateContainerResources");
    let memory = pod.sh(
        &app,
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    );
    assert_eq!(memory.trim(), limit.to_string());
    let cpu = pod.sh(
        &app,
        "cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    );
    assert_eq!(cpu.split_whitespace().next(), Some("50000"), "{cpu}");

    // A streaming exec with a terminal, resized as kubectl does before it writes. containerd
    // copies stdin into the process as soon as its FIFOs exist but sends the size only once
    // Start has returned, so a shell can read its first line before it has a size (under either
    // runtime; a slower start makes it likely): the script waits for the size, which proves
    // the resize reaches the process's terminal.
    let url = pod.cri.exec(&app, &["sh"], true).expect("Exec");
    let session = stream::run(
        &node.netns_path(),
        &url,
        40,
        100,
        &once_sized("stty size; tty; echo $((6*7)); exit 5"),
    );
    for expected in ["40 100", "/dev/pts/", "42"] {
        assert!(
            session.stdout.contains(expected),
            "{expected} not in {:?}",
            session.stdout
        );
    }
    assert!(
        session
            .status
            .contains(r#""reason":"ExitCode","message":"5""#),
        "{session:?}"
    );

    // Attach to a container started with a terminal and stdin (`kubectl run -it`): what is
    // typed reaches its shell, its output comes back, and its exit is the container's.
    let mut shell = container("shell", IMAGE_B, "exec sh");
    shell.command = vec!["sh".into()];
    shell.interactive = true;
    let shell = pod.start(shell);
    pod.wait_running(&shell);
    let url = pod.cri.attach(&shell).expect("Attach");
    let session = stream::run(
        &node.netns_path(),
        &url,
        30,
        90,
        &once_sized("echo attached $(stty size) $((6*7)); exit 3"),
    );
    assert!(
        session.stdout.contains("attached 30 90 42"),
        "{:?}",
        session.stdout
    );
    let status = pod.wait_exited(&shell, Duration::from_secs(30));
    assert_eq!(status.exit_code, 3, "{status:?}");

    // An exited container reports when it was created, started and finished.
    let quick = pod.start(container("quick", IMAGE_B, "sleep 1; exit 0"));
    let status = pod.wait_exited(&quick, Duration::from_secs(30));
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert!(
        0 < status.created_at
            && status.created_at <= status.started_at
            && status.started_at + 900_000_000 <= status.finished_at,
        "{status:?}"
    );

    let traces = leftovers::Traces::of(&node, &pod);
    pod.remove();
    traces.check_gone(&node);
    assert!(!cgroup.exists(), "{} stayed", cgroup.display());
}

/// A shim killed with SIGKILL (the node's OOM killer, an operator) takes its pod's processes
/// down (runc's containers when containerd cleans up after it, vmpod's VM at once); kubelet
/// then sees the sandbox not ready, and stopping and removing it leaves nothing behind.
fn a_killed_shim_leaves_nothing_behind(handler: &str) {
    let node = containerd::shared();
    let mut pod = Pod::run(&node, handler, "killed", NamespaceMode::Container);
    let app = pod.start(container("app", IMAGE_A, "exec sleep 1000"));
    pod.wait_running(&app);
    let cgroup = host_cgroup(&pod);
    let traces = leftovers::Traces::of(&node, &pod);
    let shims: Vec<i32> = containerd::processes()
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains("containerd-shim") && cmdline.contains(&pod.id))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(shims.len(), 1, "the pod's shim");
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(shims[0], libc::SIGKILL) }, 0);

    eventually("the sandbox is not ready", Duration::from_secs(30), || {
        let state = pod
            .cri
            .pod_sandbox_status(&pod.id)
            .ok()
            .and_then(|s| s.status)
            .map(|s| s.state);
        state == Some(k8s_cri::v1::PodSandboxState::SandboxNotready as i32)
    });
    eventually("the app is not running", Duration::from_secs(30), || {
        pod.status(&app).state != k8s_cri::v1::ContainerState::ContainerRunning as i32
    });
    pod.remove();
    traces.check_gone(&node);
    assert!(!cgroup.exists(), "{} stayed", cgroup.display());
}

#[test]
fn a_kubelet_style_pod_works_under_runc() {
    a_kubelet_style_pod_works(RUNC);
}

#[test]
fn containers_end_as_kubelet_expects_under_runc() {
    containers_end_as_kubelet_expects(RUNC);
}

#[test]
fn a_pod_shares_its_pid_namespace_when_asked_under_runc() {
    a_pod_shares_its_pid_namespace_when_asked(RUNC);
}

#[test]
fn a_kubelet_style_pod_works_under_vmpod() {
    a_kubelet_style_pod_works(VMPOD);
}

#[test]
fn containers_end_as_kubelet_expects_under_vmpod() {
    containers_end_as_kubelet_expects(VMPOD);
}

#[test]
fn a_pod_shares_its_pid_namespace_when_asked_under_vmpod() {
    a_pod_shares_its_pid_namespace_when_asked(VMPOD);
}

#[test]
fn the_atomic_writer_lays_out_and_swaps_a_volume_as_kubelet_does() {
    let dir = support::Scratch::new("cri-atomic-writer");
    let volume = dir.path("kubernetes.io~configmap/cfg");
    let payloads = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&volume)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != "..data")
            .collect();
        names.sort();
        names
    };
    kubelet::atomic_write(&volume, &[("a", "1\n"), ("b", "2\n")]);
    let first = payloads();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].starts_with("..20"),
        "a ..<timestamp> directory: {first:?}"
    );
    let link = |name: &str| std::fs::read_link(volume.join(name)).unwrap();
    assert_eq!(link("..data"), Path::new(&first[0]));
    assert_eq!(link("a"), Path::new("..data/a"));
    assert_eq!(std::fs::read_to_string(volume.join("b")).unwrap(), "2\n");

    kubelet::atomic_write(&volume, &[("a", "one\n"), ("b", "two\n")]);
    let second = payloads();
    assert_eq!(second.len(), 1, "the old payload is removed: {second:?}");
    assert_ne!(second, first);
    assert_eq!(link("..data"), Path::new(&second[0]));
    assert_eq!(std::fs::read_to_string(volume.join("a")).unwrap(), "one\n");
    assert!(!volume.join("..data_tmp").exists());
}

#[test]
fn containers_take_updates_and_a_terminal_under_runc() {
    containers_take_updates_and_a_terminal(RUNC);
}

#[test]
fn containers_take_updates_and_a_terminal_under_vmpod() {
    containers_take_updates_and_a_terminal(VMPOD);
}

#[test]
fn a_killed_shim_leaves_nothing_behind_under_runc() {
    a_killed_shim_leaves_nothing_behind(RUNC);
}

#[test]
fn a_killed_shim_leaves_nothing_behind_under_vmpod() {
    a_killed_shim_leaves_nothing_behind(VMPOD);
}
