//! vmpod-agent on vmpod-vmm itself, with its in-process virtio devices: the product path. On
//! kvm-pvm hosts the guest kernel runs emulated (a boot takes most of a minute), so this is
//! one smoke case: one boot saved as a template, and VMs restored from it running an echo and
//! an exit code; the full behaviour is covered on QEMU.

mod common;

use common::support::{die_with_parent, is_kvm_pvm, repo_root, require_kvm, Scratch};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmpod_protocol::frame::write_frame;
use vmpod_protocol::{
    Client, CreateContainer, RequestBody, Rootfs, StdStream, StdioHello, StdioWiring, Upper,
    AGENT_PORT, STDIO_PORT,
};

/// Kills the VMM if the test fails half-way.
struct Vmm(std::process::Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connect(uds: &std::path::Path, port: u32) -> UnixStream {
    let stream = vmpod_sandbox::vsock::connect(uds, port)
        .unwrap_or_else(|| panic!("the guest did not accept a connection to port {port}"));
    with_deadline(stream)
}

/// A guest that stops answering fails the test with its console, instead of hanging it: on
/// kvm-pvm a container's start and wait take seconds, never minutes.
fn with_deadline(stream: UnixStream) -> UnixStream {
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .expect("a read timeout on a vsock stream");
    stream
}

fn vm_config(
    guest: &std::path::Path,
    console: &std::path::Path,
    uds: &std::path::Path,
    tail: &str,
) -> String {
    format!(
        r#"{{"cpus": 2, "memory_mib": 256, "console": "{}",
            "cmdline": "console=ttyS0 quiet",
            "disks": [{{"path": "{}", "read_only": true, "serial": "busybox"}}],
            "vsock": {{"guest_cid": 3, "uds_path": "{}"}}, {tail}}}"#,
        console.display(),
        guest.join("busybox.erofs").display(),
        uds.display()
    )
}

/// The VMM dies with the test thread that started it, even when another thread's failure
/// ends the test before this one's `Vmm` is dropped.
fn spawn_vmm(config: &std::path::Path) -> Vmm {
    let mut command = Command::new(repo_root().join("target/release/vmpod-vmm"));
    command.arg("--config").arg(config).stdin(Stdio::null());
    Vmm(die_with_parent(&mut command)
        .spawn()
        .expect("spawn vmpod-vmm"))
}

/// The boot once, as a template of two vCPUs: vmpod-vmm saves the VM when the agent says it
/// is ready (the boot-timer byte), pulling the other vCPU out of the guest, and exits. Then two VMs restored from it at once, each running an
/// echo and an exit code, then powering off.
#[test]
fn containers_run_in_vms_restored_from_a_template_on_vmpod_vmm() {
    require_kvm();
    let scratch = Scratch::new("agent-vmm");
    let guest = common::guest_dir();
    let (state, memory) = (scratch.path("state.json"), scratch.path("memory"));
    let snapshot = format!(
        r#""snapshot": {{"state": "{}", "memory": "{}"}}"#,
        state.display(),
        memory.display()
    );
    let config = scratch.path("template.json");
    let console = scratch.path("template.log");
    let tail = format!(
        r#""kernel": "{}", "initrd": "{}", {snapshot}"#,
        guest.join("vmlinux").display(),
        guest.join("initramfs.cpio").display()
    );
    std::fs::write(
        &config,
        vm_config(&guest, &console, &scratch.path("t.sock"), &tail),
    )
    .unwrap();
    let mut template = spawn_vmm(&config);
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = template.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no template after 600 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "the template VM ended badly:\n{log}"
    );
    assert!(state.is_file() && memory.is_file(), "{log}");

    let restore = format!(
        r#""restore": {{"state": "{}", "memory": "{}"}}"#,
        state.display(),
        memory.display()
    );
    let clones: Vec<_> = (0..2)
        .map(|i| {
            let uds = scratch.path(&format!("clone{i}.sock"));
            let console = scratch.path(&format!("clone{i}.log"));
            let config = scratch.path(&format!("clone{i}.json"));
            std::fs::write(&config, vm_config(&guest, &console, &uds, &restore)).unwrap();
            let vmm = spawn_vmm(&config);
            std::thread::spawn(move || run_two_containers(vmm, &uds, &console))
        })
        .collect();
    for clone in clones {
        clone.join().expect("a restored VM ran its containers");
    }
}

fn run_two_containers(mut vmm: Vmm, uds: &std::path::Path, console: &std::path::Path) {
    let text = || std::fs::read_to_string(console).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let stream = loop {
        if let Some(s) = vmpod_sandbox::vsock::connect(uds, AGENT_PORT) {
            break s;
        }
        if let Some(status) = vmm.0.try_wait().unwrap() {
            panic!("the restored VM ended ({status}):\n{}", text());
        }
        assert!(
            Instant::now() < deadline,
            "no agent in the restored VM:\n{}",
            text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut client = Client::handshake(with_deadline(stream)).expect("hello");
    for (name, script, code, output) in [
        // Both vCPUs came back: the template was saved with its AP parked mid-flight.
        ("echo", "echo hello; nproc", 0, "hello\n2\n"),
        ("code", "exit 42", 42, ""),
    ] {
        // kvm-pvm now and then starts a process with a wrong FS base, which dies at its first
        // TLS access (guest-kernel/README.md): a container whose shell (or init) died so,
        // before printing a byte, is run again under a new id, and it is said.
        let mut tries = 1;
        loop {
            let id = format!("{name}{tries}");
            let (status, out) = run_container(&mut client, uds, &id, script, &text);
            // The kernel's "segfault at 0" line is KERN_INFO, which `quiet` keeps off the
            // console, so the signature is the status and the silence; a real crash repeats
            // and fails on the last try.
            let flake = status == 139 && out.is_empty() && is_kvm_pvm();
            if flake && tries < 3 {
                eprintln!("kvm-pvm killed {id}'s shell at its first TLS access; running it again");
                tries += 1;
                continue;
            }
            assert_eq!((status, out.as_str()), (code, output), "{}", text());
            break;
        }
    }
    client.call_done(RequestBody::Shutdown).expect("shutdown");
    drop(client);
    let status = vmm.0.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "vmpod-vmm exits 0 when the agent powers off:\n{}",
        text()
    );
}

/// Creates, starts and waits for one container running `script`; its exit status and stdout.
fn run_container(
    client: &mut Client<UnixStream>,
    uds: &std::path::Path,
    id: &str,
    script: &str,
    text: &dyn Fn() -> String,
) -> (i32, String) {
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().unwrap();
    process.set_args(Some(vec!["sh".into(), "-c".into(), script.into()]));
    spec.set_process(Some(process));
    client
        .call(RequestBody::CreateContainer(CreateContainer::new(
            id,
            spec,
            Rootfs {
                layers: vec!["busybox".into()],
                upper: Upper::Tmpfs,
            },
            StdioWiring::STDOUT_ONLY,
        )))
        .unwrap_or_else(|e| panic!("create {id}: {e}\n{}", text()));
    let mut stdout = connect(uds, STDIO_PORT);
    write_frame(
        &mut stdout,
        &StdioHello {
            container_id: id.into(),
            exec_id: None,
            stream: StdStream::Stdout,
        },
    )
    .unwrap();
    let started = client.call(RequestBody::StartContainer {
        container_id: id.into(),
    });
    if let Err(e) = started {
        // The same kvm-pvm flake can kill the container's first process (the runtime's own
        // init, before it runs the shell): the container is stopped before its start. Said
        // as the flake's signature, 139 and no output, so the caller runs it again.
        if is_kvm_pvm() && format!("{e:?}").contains("`Stopped`") {
            client
                .call_done(RequestBody::RemoveContainer {
                    container_id: id.into(),
                })
                .expect("remove");
            return (139, String::new());
        }
        panic!("start {id}: {e:?}\n{}", text());
    }
    let mut out = String::new();
    stdout
        .read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("{id}'s stdout: {e}\n{}", text()));
    let exit = client
        .wait(id, None)
        .unwrap_or_else(|e| panic!("wait for {id}: {e}\n{}", text()));
    client
        .call_done(RequestBody::RemoveContainer {
            container_id: id.into(),
        })
        .expect("remove");
    (exit.status, out)
}
