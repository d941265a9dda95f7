//! Our devices served over vhost-user to QEMU (microvm, TCG) with a real Linux guest: the path
//! the full stack takes on hosts whose KVM cannot run the guest at speed.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// A `vmpod-vhost-user` process serving one device; killed if the test ends early.
struct Backend(Child);

impl Backend {
    fn start(socket: &Path, device_args: &[&str]) -> Backend {
        let child = die_with_parent(&mut Command::new(env!("CARGO_BIN_EXE_vmpod-vhost-user")))
            .arg("--socket")
            .arg(socket)
            .args(device_args)
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
        Backend(child)
    }

    /// The backend serves one front end and exits when it goes away.
    fn wait(mut self) -> std::process::ExitStatus {
        let status = self.0.wait().expect("wait for the backend");
        std::mem::forget(self);
        status
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `-chardev`/`-device` pairs for QEMU, one per (socket, device model).
fn vhost_user_args(devices: &[(&Path, &str)]) -> Vec<String> {
    let mut args = Vec::new();
    for (i, (socket, model)) in devices.iter().enumerate() {
        args.push("-chardev".to_string());
        args.push(format!("socket,id=vu{i},path={}", socket.display()));
        args.push("-device".to_string());
        args.push(format!("{model},chardev=vu{i}"));
    }
    args
}

fn qemu(cmdline: &str, console: &Path, extra: &[String]) -> Command {
    let (kernel, initrd) = linux_guest();
    let mut cmd = Command::new(repo_root().join("scripts/qemu-microvm.sh"));
    // A failed assertion must not leave the guest running (the script execs QEMU).
    die_with_parent(&mut cmd);
    cmd.args(["--accel", "tcg", "--memory", "256", "--cmdline", cmdline])
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .arg("--console")
        .arg(console)
        .arg("--")
        .args(extra)
        .stdin(Stdio::null());
    cmd
}

fn finish(output: Output, console: &Path) -> String {
    let text = std::fs::read_to_string(console).unwrap_or_default();
    assert!(output.status.success(), "qemu: {}\n{text}", stderr(&output));
    text
}

#[test]
fn blk_and_rng_over_vhost_user_serve_a_qemu_guest() {
    let scratch = Scratch::new("vu-blk");
    let disks = DiskFixture::new(&scratch);
    let sockets: Vec<PathBuf> = ["layer.sock", "scratch.sock", "rng.sock"]
        .iter()
        .map(|s| scratch.path(s))
        .collect();
    let layer_spec = format!("{},ro,serial=layer0", disks.erofs.display());
    let scratch_spec = format!("{},serial=scratch", disks.scratch.display());
    let backends = [
        Backend::start(&sockets[0], &["--blk", &layer_spec]),
        Backend::start(&sockets[1], &["--blk", &scratch_spec]),
        Backend::start(&sockets[2], &["--rng"]),
    ];
    let console = scratch.path("console.log");
    let extra = vhost_user_args(&[
        (&sockets[0], "vhost-user-blk"),
        (&sockets[1], "vhost-user-blk"),
        (&sockets[2], "vhost-user-rng"),
    ]);
    let output = qemu("console=ttyS0 vmpod.test=devices", &console, &extra)
        .output()
        .expect("run qemu");
    let text = finish(output, &console);
    disks.check(&text);
    for backend in backends {
        assert!(backend.wait().success(), "a backend failed");
    }
}

#[test]
fn vsock_over_vhost_user_carries_both_directions() {
    let scratch = Scratch::new("vu-vsock");
    let socket = scratch.path("vhost-vsock.sock");
    let uds = scratch.path("vsock.sock");
    let exercise = VsockExercise::listen_for_guest(&uds);
    let backend = Backend::start(&socket, &["--vsock", &format!("3,{}", uds.display())]);
    let console = scratch.path("console.log");
    let extra = vhost_user_args(&[(&socket, "vhost-user-vsock-device")]);
    let mut child = qemu("console=ttyS0 vmpod.test=vsock", &console, &extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run qemu");
    exercise.echo_through_guest(&uds, &console, &mut child);
    let text = finish(child.wait_with_output().unwrap(), &console);
    exercise.check(&text);
    assert!(backend.wait().success());
    assert!(!uds.exists(), "vsock socket left behind");
}

#[test]
fn vsock_over_vhost_user_moves_64_mib_each_way_and_32_concurrent_streams() {
    let scratch = Scratch::new("vu-bulk");
    let socket = scratch.path("vhost-vsock.sock");
    let uds = scratch.path("vsock.sock");
    let backend = Backend::start(&socket, &["--vsock", &format!("3,{}", uds.display())]);
    let console = scratch.path("console.log");
    let extra = vhost_user_args(&[(&socket, "vhost-user-vsock-device")]);
    let mut child = qemu("console=ttyS0 vmpod.test=vsock-bulk", &console, &extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run qemu");
    wait_for_guest_listener(&console, &mut child);
    let started = Instant::now();
    echo_stream(&uds, 64 << 20, 0);
    eprintln!("64 MiB echoed (each way) in {:?}", started.elapsed());
    let streams: Vec<_> = (1..=32u64)
        .map(|seed| {
            let uds = uds.clone();
            std::thread::spawn(move || echo_stream(&uds, 64 << 10, seed))
        })
        .collect();
    for stream in streams {
        stream.join().expect("a concurrent stream failed");
    }
    let text = finish(child.wait_with_output().unwrap(), &console);
    let total = (64u64 << 20) + 32 * (64 << 10);
    assert!(
        text.contains(&format!("echoed {total} bytes on 33 connections")),
        "{text}"
    );
    assert!(backend.wait().success());
}

#[test]
fn a_file_written_to_an_ext4_disk_survives_a_reboot() {
    let scratch = Scratch::new("vu-ext4");
    let image = scratch.path("data.ext4");
    std::fs::write(&image, vec![0u8; 16 << 20]).unwrap();
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image)
        .status()
        .expect("run mkfs.ext4 (e2fsprogs)");
    assert!(status.success());
    let mut reports = Vec::new();
    for mode in ["ext4-write", "ext4-read"] {
        let socket = scratch.path(&format!("{mode}.sock"));
        let backend = Backend::start(&socket, &["--blk", image.to_str().unwrap()]);
        let console = scratch.path(&format!("{mode}.log"));
        let extra = vhost_user_args(&[(&socket, "vhost-user-blk")]);
        let output = qemu(
            &format!("console=ttyS0 vmpod.test={mode}"),
            &console,
            &extra,
        )
        .output()
        .expect("run qemu");
        reports.push(finish(output, &console));
        assert!(backend.wait().success());
    }
    assert!(
        report(&reports[0], "ext4 written").is_some(),
        "{}",
        reports[0]
    );
    assert_eq!(
        report(&reports[1], "ext4 note: "),
        Some("survives a reboot"),
        "{}",
        reports[1]
    );
}
