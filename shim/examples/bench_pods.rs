//! Pod start and stop through the CRI, as a kubelet drives them, per runtime handler: start is
//! RunPodSandbox until the app container (httpd, image A) runs; stop is StopContainer,
//! StopPodSandbox and RemovePodSandbox. Then the host memory of one idle pod: the PSS of its
//! shim and everything below it (runc: pause and app; vmpod: the VMM and its helpers, guest
//! memory included). Uses the CRI test's containerd, client and kubelet pieces
//! (shim/tests/cri/). Prints CSV lines for scripts/bench_pods.py:
//!
//!   time,HANDLER,RUN,START_MS,STOP_MS,STOP_CONTAINER_MS (STOP_MS includes it)
//!   memory,HANDLER,PSS_MIB
//!   skip,HANDLER,WHY
//!
//!   bench_pods [--runs N] [--handlers runc,vmpod]

#[path = "../../tests/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "../tests/cri/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../tests/cri/containerd.rs"]
mod containerd;
#[allow(dead_code)]
#[path = "../tests/common/daemon.rs"]
mod daemon;
#[allow(dead_code)]
#[path = "../tests/cri/images.rs"]
mod images;
#[allow(dead_code)]
#[path = "../tests/cri/kubelet.rs"]
mod kubelet;
#[allow(dead_code)]
#[path = "../tests/cri/pod.rs"]
mod pod;

use k8s_cri::v1::NamespaceMode;
use kubelet::ContainerSpec;
use pod::Pod;
use std::time::{Duration, Instant};

fn app() -> ContainerSpec<'static> {
    ContainerSpec {
        name: "app",
        image: images::IMAGE_A,
        // httpd as PID 1 would ignore SIGTERM and make every stop last the grace period.
        command: vec![
            "sh".into(),
            "-c".into(),
            "trap 'exit 0' TERM; echo ready; httpd -f -p 80 -h /www & wait".into(),
        ],
        mounts: vec![],
        memory_limit: 0,
        pid: NamespaceMode::Container,
        interactive: false,
    }
}

/// A pod with its app running, and how long that took.
fn try_start(node: &containerd::Shared, handler: &str) -> Result<(Pod, String, Duration), String> {
    let t0 = Instant::now();
    let pod = Pod::try_run(node, handler, "bench", NamespaceMode::Container)?;
    let app = pod.try_start(app())?;
    pod.wait_running(&app);
    Ok((pod, app, t0.elapsed()))
}

fn start(node: &containerd::Shared, handler: &str) -> (Pod, String, Duration) {
    try_start(node, handler).unwrap_or_else(|e| panic!("{e}"))
}

/// Stops and removes the pod; how long it all took, and how much of it StopContainer. The
/// app is first given the time to set its SIGTERM trap (its log says "ready"): a signal that
/// comes before it is ignored by a PID 1 with no handler, and the stop lasts the grace period.
fn stop(mut pod: Pod, app: &str) -> (Duration, Duration) {
    let log = pod.dirs.log_dir.join("app/0.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains(" ready")) {
        assert!(Instant::now() < deadline, "the app never said it was ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = Instant::now();
    pod.cri
        .stop_container(app, 10)
        .unwrap_or_else(|e| panic!("StopContainer: {}", e.message()));
    let container = t0.elapsed();
    pod.remove();
    (t0.elapsed(), container)
}

/// The PSS of `pid` and every process below it, in MiB.
fn tree_pss_mib(pid: i32) -> f64 {
    let mut children: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    for (child, _) in containerd::processes() {
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        {
            children.entry(ppid).or_default().push(child);
        }
    }
    let (mut stack, mut kib) = (vec![pid], 0u64);
    while let Some(p) = stack.pop() {
        let rollup = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
        kib += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        stack.extend(children.get(&p).into_iter().flatten());
    }
    kib as f64 / 1024.0
}

fn shim_of(sandbox: &str) -> Option<i32> {
    containerd::processes()
        .into_iter()
        .find(|(_, cmdline)| {
            cmdline.contains("containerd-shim") && cmdline.contains(&format!("-id {sandbox}"))
        })
        .map(|(pid, _)| pid)
}

fn main() {
    let mut runs = 10;
    let mut handlers = vec![containerd::RUNC.to_string(), containerd::VMPOD.to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N"),
            "--handlers" => {
                handlers = args
                    .next()
                    .expect("--handlers runc,vmpod")
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            other => panic!("unknown argument {other}"),
        }
    }
    // Release builds abort on panic, which runs no Drop: the hook removes the pods and stops
    // containerd first.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        containerd::stop_shared();
    }));
    let node = containerd::shared();

    // One untimed pod each: image layers converted, templates built. A handler whose pod
    // fails is skipped, saying why.
    handlers.retain(|handler| match try_start(&node, handler) {
        Ok((pod, app, _)) => {
            stop(pod, &app);
            true
        }
        Err(why) => {
            println!("skip,{handler},{}", why.replace('\n', " "));
            false
        }
    });

    for run in 0..runs {
        for handler in &handlers {
            let (pod, app, started) = start(&node, handler);
            let (stopped, container) = stop(pod, &app);
            println!(
                "time,{handler},{run},{:.1},{:.1},{:.1}",
                started.as_secs_f64() * 1e3,
                stopped.as_secs_f64() * 1e3,
                container.as_secs_f64() * 1e3
            );
        }
    }
    for handler in &handlers {
        let (pod, app, _) = start(&node, handler);
        // Let the pod settle (a VM's guest finishes its boot-time work).
        std::thread::sleep(Duration::from_secs(if handler == "vmpod" { 8 } else { 2 }));
        let pss = shim_of(&pod.id).map(tree_pss_mib).unwrap_or(0.0);
        println!("memory,{handler},{pss:.1}");
        stop(pod, &app);
    }
    containerd::stop_shared();
}
