//! The agent's serial channel, end to end: a QEMU template's clone has no vsock device, so the
//! host reaches its agent over the virtio-serial port (serial_agent.rs, protocol's mux). The
//! agent serves that port from its one epoll loop: it stays one thread while containers start
//! (libcontainer clones from it, and another thread's lock would stay held in the child), and
//! container after container starts on one clone without a hang.

#[path = "../../tests/support/mod.rs"]
mod support;

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vmpod_protocol::{CreateContainer, RequestBody, Rootfs, StdStream, StdioWiring, Upper};
use vmpod_sandbox::hypervisor::Disk;
use vmpod_sandbox::{Backend, Boot, Sandbox, SandboxConfig};

/// Containers started, one after the other, on one clone.
const STARTS: usize = 200;
/// The longest one container's create, start, exit and removal, and any one read in them, may
/// take; far above what they take on TCG, so only a hang reaches it.
const PER_START: Duration = Duration::from_secs(120);

fn busybox_layer() -> PathBuf {
    let image = support::guest_dir().join("busybox.erofs");
    assert!(
        image.is_file(),
        "{} is missing: run `make guest` first",
        image.display()
    );
    image
}

fn templated_qemu_sandbox() -> Sandbox {
    Sandbox::start(SandboxConfig {
        backend: Backend::Qemu { kvm: false },
        boot: Boot::Template,
        cpus: 1,
        memory_mib: 256,
        disks: vec![Disk {
            path: busybox_layer(),
            serial: "busybox".into(),
            read_only: true,
        }],
        shared: Vec::new(),
        debug: false,
        kernel_args: String::new(),
        netns: None,
    })
    .expect("start the sandbox")
}

fn console(sandbox: &Sandbox) -> String {
    std::fs::read_to_string(sandbox.state_dir.join("console.log")).unwrap_or_default()
}

/// Runs `sh -c script` in a container that shares the VM's PID namespace (so its /proc/1 is
/// the agent); returns its status and stdout.
fn run(sandbox: &mut Sandbox, id: &str, script: &str) -> (i32, String) {
    let mut spec = Spec::default();
    let mut process = spec.process().clone().expect("a default process");
    process.set_args(Some(vec!["sh".into(), "-c".into(), script.into()]));
    spec.set_process(Some(process));
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
    sandbox
        .agent()
        .call(RequestBody::CreateContainer(CreateContainer::new(
            id,
            spec,
            rootfs,
            StdioWiring::STDOUT_ONLY,
        )))
        .unwrap_or_else(|e| panic!("create {id}: {e}\nconsole:\n{}", console(sandbox)));
    let mut out = sandbox.stream(id, None, StdStream::Stdout).unwrap();
    out.set_read_timeout(Some(PER_START)).unwrap();
    sandbox
        .agent()
        .call(RequestBody::StartContainer {
            container_id: id.into(),
        })
        .unwrap_or_else(|e| panic!("start {id}: {e}\nconsole:\n{}", console(sandbox)));
    let mut stdout = String::new();
    out.read_to_string(&mut stdout)
        .unwrap_or_else(|e| panic!("{id}'s stdout: {e}\nconsole:\n{}", console(sandbox)));
    let exit = sandbox
        .agent()
        .wait(id, None)
        .unwrap_or_else(|e| panic!("wait for {id}: {e}\nconsole:\n{}", console(sandbox)));
    sandbox
        .agent()
        .call_done(RequestBody::RemoveContainer {
            container_id: id.into(),
        })
        .unwrap_or_else(|e| panic!("remove {id}: {e}\nconsole:\n{}", console(sandbox)));
    (exit.status, stdout)
}

#[test]
fn a_templated_qemu_agent_is_one_thread_through_200_container_starts() {
    let mut sandbox = templated_qemu_sandbox();
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
