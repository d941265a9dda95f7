//! A real guest running vmpod-agent as PID 1, driven from the host: QEMU microvm on TCG with
//! our vhost-user vsock and block backends (the path this kind of host runs the full stack on).
#![allow(dead_code)]

#[path = "../../../tests/support/mod.rs"]
pub mod support;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{die_with_parent, repo_root, Scratch};
use vmpod_protocol::{Client, StdStream, AGENT_PORT};

pub fn guest_dir() -> PathBuf {
    std::env::var_os("VMPOD_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/guest"))
}

fn guest_file(name: &str) -> PathBuf {
    let path = guest_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make guest` (or `make test`) first",
        path.display()
    );
    path
}

fn backend_binary() -> PathBuf {
    let path = repo_root().join("target/release/vmpod-vhost-user");
    assert!(
        path.is_file(),
        "{} is missing: run `make build` first",
        path.display()
    );
    path
}

/// A disk for the guest: an image and the serial the agent finds it by.
pub struct Disk<'a> {
    pub path: &'a Path,
    pub serial: &'a str,
    pub read_only: bool,
}

/// One booted guest with its backends; everything is killed and removed on drop.
pub struct AgentVm {
    pub scratch: Scratch,
    pub uds: PathBuf,
    pub console: PathBuf,
    qemu: Child,
    backends: Vec<Child>,
}

fn start_backend(socket: &Path, args: &[String]) -> Child {
    let child = die_with_parent(&mut Command::new(backend_binary()))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn vmpod-vhost-user");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "backend never created {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

impl AgentVm {
    /// Boots the agent's initramfs with the busybox layer (serial "busybox") and `disks`.
    pub fn boot(name: &str, disks: &[Disk]) -> AgentVm {
        let scratch = Scratch::new(name);
        let uds = scratch.path("vsock.sock");
        let console = scratch.path("console.log");
        let busybox = guest_file("busybox.erofs");
        let mut all = vec![Disk {
            path: &busybox,
            serial: "busybox",
            read_only: true,
        }];
        all.extend(disks.iter().map(|d| Disk { ..*d }));
        let mut backends = Vec::new();
        let mut extra = Vec::new();
        let vsock_sock = scratch.path("vu-vsock.sock");
        backends.push(start_backend(
            &vsock_sock,
            &["--vsock".into(), format!("3,{}", uds.display())],
        ));
        extra.extend([
            "-chardev".to_string(),
            format!("socket,id=vs,path={}", vsock_sock.display()),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vs".into(),
        ]);
        for (i, disk) in all.iter().enumerate() {
            let sock = scratch.path(&format!("vu-blk{i}.sock"));
            let mut spec = format!("{},serial={}", disk.path.display(), disk.serial);
            if disk.read_only {
                spec += ",ro";
            }
            backends.push(start_backend(&sock, &["--blk".into(), spec]));
            extra.extend([
                "-chardev".to_string(),
                format!("socket,id=blk{i},path={}", sock.display()),
                "-device".into(),
                format!("vhost-user-blk,chardev=blk{i}"),
            ]);
        }
        let qemu = die_with_parent(&mut Command::new(
            repo_root().join("scripts/qemu-microvm.sh"),
        ))
        .args([
            "--accel",
            "tcg",
            "--cpus",
            "2",
            "--memory",
            "512",
            "--cmdline",
            "console=ttyS0 quiet vmpod.debug",
        ])
        .arg("--kernel")
        .arg(guest_file("vmlinux"))
        .arg("--initrd")
        .arg(guest_file("initramfs.cpio"))
        .arg("--console")
        .arg(&console)
        .arg("--")
        .args(&extra)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn qemu-microvm.sh");
        let mut vm = AgentVm {
            scratch,
            uds,
            console,
            qemu,
            backends,
        };
        vm.wait_for_console("vmpod-agent: ready", Duration::from_secs(120));
        vm
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    pub fn wait_for_console(&mut self, marker: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console_text().contains(marker) {
                return;
            }
            if let Ok(Some(status)) = self.qemu.try_wait() {
                panic!(
                    "the VM ended ({status}) before '{marker}'; console:\n{}",
                    self.console_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no '{marker}' within {timeout:?}; console:\n{}",
                self.console_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A connection to a guest port through the hybrid vsock socket.
    pub fn connect(&self, port: u32) -> UnixStream {
        vmpod_sandbox::vsock::connect(&self.uds, port)
            .unwrap_or_else(|| panic!("the guest did not accept a connection to port {port}"))
    }

    pub fn client(&self) -> Client<UnixStream> {
        Client::handshake(self.connect(AGENT_PORT)).expect("hello to the agent")
    }

    /// Opens one stdio stream of a process.
    pub fn stream(&self, container: &str, exec: Option<&str>, stream: StdStream) -> UnixStream {
        vmpod_sandbox::Endpoint::new(&self.uds)
            .stream(container, exec, stream)
            .expect("open a stdio stream")
    }

    /// Asks the agent to power off and waits for QEMU to exit.
    pub fn shutdown(mut self, client: &mut Client<UnixStream>) {
        client
            .call_done(vmpod_protocol::RequestBody::Shutdown)
            .expect("shutdown");
        // The agent powers off once its clients hang up.
        let _ = client.stream().shutdown(std::net::Shutdown::Both);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.qemu.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the VM did not stop after shutdown"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentVm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        for b in &mut self.backends {
            let _ = b.kill();
            let _ = b.wait();
        }
    }
}

pub fn read_all(mut s: UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read a stdio stream");
    out
}
