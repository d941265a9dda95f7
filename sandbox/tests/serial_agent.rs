//! The agent's serial channel, end to end: a QEMU template's clone has no vsock device, so the
//! host reaches its agent over the virtio-serial port (serial_agent.rs, protocol's mux). The
//! agent serves that port from its one epoll loop: it stays one thread while containers start
//! (libcontainer clones from it, and another thread's lock would stay held in the child), and
//! container after container starts on one clone without a hang.

mod common;

use common::{busybox_sandbox, run_container, shell_spec};
use oci_spec::runtime::LinuxNamespaceType;
use std::time::{Duration, Instant};
use vmpod_protocol::{Rootfs, Upper};
use vmpod_sandbox::{Backend, Boot, Sandbox};

/// Containers started, one after the other, on one clone.
const STARTS: usize = 200;
/// The longest one container's create, start, exit and removal, and any one read in them, may
/// take; far above what they take on TCG, so only a hang reaches it.
const PER_START: Duration = Duration::from_secs(120);

/// Runs `sh -c script` in a container that shares the VM's PID namespace (so its /proc/1 is
/// the agent); returns its status and stdout.
fn run(sandbox: &mut Sandbox, id: &str, script: &str) -> (i32, String) {
    let mut spec = shell_spec(script);
    let mut linux = spec.linux().clone().expect("a default linux section");
    let namespaces = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns.typ() != LinuxNamespaceType::Pid)
        .collect();
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
    let rootfs = Rootfs {
        layers: vec!["busybox".into()],
        upper: Upper::Tmpfs,
    };
    run_container(sandbox, id, spec, rootfs, PER_START)
}

#[test]
fn a_templated_qemu_agent_is_one_thread_through_200_container_starts() {
    let mut sandbox = busybox_sandbox(Backend::Qemu { kvm: false }, Boot::Template, 256);
    let state_dir = sandbox.state_dir.clone();
    // Every read from the agent gives up after PER_START: a hang fails the test instead of
    // hanging it.
    sandbox
        .agent()
        .stream()
        .set_read_timeout(Some(PER_START))
        .unwrap();
    for i in 0..STARTS {
        let started = Instant::now();
        let (status, threads) = run(&mut sandbox, &format!("c{i}"), "ls /proc/1/task | wc -l");
        let took = started.elapsed();
        assert!(took < PER_START, "container start {i} took {took:?}");
        assert_eq!(status, 0, "container {i}");
        assert_eq!(
            threads.trim(),
            "1",
            "the agent had {} threads at container start {i}",
            threads.trim()
        );
    }
    drop(sandbox);
    assert!(!state_dir.exists(), "{} is left", state_dir.display());
}
