//! What the sandbox's end-to-end tests share: a sandbox of the busybox layer, its console, and
//! one container run through the agent.

#![allow(dead_code)] // each test binary uses its own part

#[path = "../../../tests/support/mod.rs"]
pub mod support;

use oci_spec::runtime::Spec;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;
use vmpod_protocol::{CreateContainer, RequestBody, Rootfs, StdStream, StdioWiring};
use vmpod_sandbox::hypervisor::Disk;
use vmpod_sandbox::{Backend, Boot, Sandbox, SandboxConfig};

/// The busybox erofs layer `make guest` builds.
pub fn busybox_layer() -> PathBuf {
    let image = support::guest_dir().join("busybox.erofs");
    assert!(
        image.is_file(),
        "{} is missing: run `make guest` first",
        image.display()
    );
    image
}

/// A one-vCPU sandbox with the busybox layer as its only disk (serial `busybox`).
pub fn busybox_sandbox(backend: Backend, boot: Boot, memory_mib: u32) -> Sandbox {
    Sandbox::start(SandboxConfig {
        backend,
        boot,
        cpus: 1,
        memory_mib,
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

pub fn console(sandbox: &Sandbox) -> String {
    std::fs::read_to_string(sandbox.state_dir.join("console.log")).unwrap_or_default()
}

/// Creates, starts, waits for and removes one container of `spec` on `rootfs`; its exit
/// status and stdout. Each step's failure names the container and shows the console; no read
/// of its output waits longer than `limit`.
pub fn run_container(
    sandbox: &mut Sandbox,
    id: &str,
    spec: Spec,
    rootfs: Rootfs,
    limit: Duration,
) -> (i32, String) {
    let failed = |sandbox: &Sandbox, step: &str, e: &dyn std::fmt::Display| -> String {
        format!("{step} {id}: {e}\nconsole:\n{}", console(sandbox))
    };
    let created = sandbox
        .agent()
        .call(RequestBody::CreateContainer(CreateContainer::new(
            id,
            spec,
            rootfs,
            StdioWiring::STDOUT_ONLY,
        )));
    if let Err(e) = created {
        panic!("{}", failed(sandbox, "create", &e));
    }
    let mut out = sandbox.stream(id, None, StdStream::Stdout).unwrap();
    out.set_read_timeout(Some(limit)).unwrap();
    let started = sandbox.agent().call(RequestBody::StartContainer {
        container_id: id.into(),
    });
    if let Err(e) = started {
        panic!("{}", failed(sandbox, "start", &e));
    }
    let mut stdout = String::new();
    if let Err(e) = out.read_to_string(&mut stdout) {
        panic!("{}", failed(sandbox, "the stdout of", &e));
    }
    let exit = match sandbox.agent().wait(id, None) {
        Ok(exit) => exit,
        Err(e) => panic!("{}", failed(sandbox, "wait for", &e)),
    };
    let removed = sandbox.agent().call_done(RequestBody::RemoveContainer {
        container_id: id.into(),
    });
    if let Err(e) = removed {
        panic!("{}", failed(sandbox, "remove", &e));
    }
    (exit.status, stdout)
}

/// `sh -c script` as a default spec's process.
pub fn shell_spec(script: &str) -> Spec {
    let mut spec = Spec::default();
    let mut process = spec.process().clone().expect("a default process");
    process.set_args(Some(vec!["sh".into(), "-c".into(), script.into()]));
    spec.set_process(Some(process));
    spec
}
