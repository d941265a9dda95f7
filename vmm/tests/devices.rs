//! Our virtio devices against a real Linux guest on vmpod-vmm: disks and rng in one boot, vsock
//! and the network in others (about a minute each on kvm-pvm hosts).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;

/// A VM config for the Linux test guest in test-init mode `mode`, with `devices` (JSON fields)
/// added; written into `scratch`. Returns the config's and the console's paths.
fn linux_config(scratch: &Scratch, mode: &str, devices: &str) -> (PathBuf, PathBuf) {
    let (kernel, initrd) = linux_guest();
    let console = scratch.path("console.log");
    let config = scratch.path("vm.json");
    let json = format!(
        r#"{{"kernel": "{}", "initrd": "{}", "memory_mib": 256, "console": "{}",
            "cmdline": "console=ttyS0 vmpod.test={mode}", {devices}}}"#,
        kernel.display(),
        initrd.display(),
        console.display(),
    );
    std::fs::write(&config, json).unwrap();
    (config, console)
}

/// Runs the VM to its end; it must stop cleanly. Returns the console.
fn run_to_end(config: &std::path::Path, console: &std::path::Path) -> String {
    let output = run_vmm(&["--config", config.to_str().unwrap()]);
    let text = std::fs::read_to_string(console).unwrap_or_default();
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}\n{text}",
        stderr(&output)
    );
    text
}

#[test]
fn guest_reads_erofs_writes_scratch_disk_cannot_write_read_only_disk_and_reads_hwrng() {
    require_kvm();
    let scratch = Scratch::new("devices");
    let disks = DiskFixture::new(&scratch);
    let devices = format!(
        r#""rng": true, "disks": [{{"path": "{}", "read_only": true, "serial": "layer0"}},
                                   {{"path": "{}", "serial": "scratch"}}]"#,
        disks.erofs.display(),
        disks.scratch.display()
    );
    let (config, console) = linux_config(&scratch, "devices", &devices);
    disks.check(&run_to_end(&config, &console));
}

#[test]
fn vsock_carries_guest_and_host_initiated_streams_byte_exact() {
    require_kvm();
    let scratch = Scratch::new("vsock");
    let uds = scratch.path("vsock.sock");
    let exercise = VsockExercise::listen_for_guest(&uds);
    let devices = format!(
        r#""vsock": {{"guest_cid": 3, "uds_path": "{}"}}"#,
        uds.display()
    );
    let (config, console) = linux_config(&scratch, "vsock", &devices);
    let mut child = Command::new(vmm_binary())
        .args(["--config", config.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmpod-vmm");
    exercise.echo_through_guest(&uds, &console, &mut child);
    let output = child.wait_with_output().unwrap();
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}\n{text}",
        stderr(&output)
    );
    exercise.check(&text);
    assert!(!uds.exists(), "vsock socket left behind");
}

#[test]
fn guest_on_a_tap_in_a_netns_pings_the_host_and_fetches_a_file_byte_exact() {
    require_kvm();
    let scratch = Scratch::new("net");
    let mut net = NetFixture::new("net");
    let devices = format!(
        r#""net": {{"tap": "{}", "netns": "{}", "mac": "06:00:ac:10:00:02"}}"#,
        net.tap,
        net.netns_path().display()
    );
    let (config, console) = linux_config(&scratch, "net", &devices);
    net.check(&run_to_end(&config, &console));
}

/// A config naming a broken device: one line on stderr naming it, exit 1, nothing created.
fn assert_device_refused(name: &str, devices: &str, expected: &str) {
    let scratch = Scratch::new(name);
    let config = scratch.path("vm.json");
    let json = format!(
        r#"{{"kernel": "{}", "memory_mib": 16, "console": "{}", {devices}}}"#,
        tiny_guest().display(),
        scratch.path("console.log").display()
    );
    std::fs::write(&config, json).unwrap();
    let before = scratch.entries();
    require_kvm();
    let output = run_vmm(&["--config", config.to_str().unwrap()]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(expected), "expected {expected:?} in: {err}");
    assert_eq!(scratch.entries(), before);
}

#[test]
fn missing_disk_image_is_named_and_nothing_is_left_behind() {
    assert_device_refused(
        "nodisk",
        r#""disks": [{"path": "/nonexistent/nope.img"}]"#,
        "disk /nonexistent/nope.img: No such file or directory",
    );
}

#[test]
fn tap_in_a_missing_netns_is_named_and_nothing_is_left_behind() {
    assert_device_refused(
        "nonetns",
        r#""net": {"tap": "vmtap0", "netns": "/run/netns/vmpod-no-such-ns"}"#,
        "network namespace /run/netns/vmpod-no-such-ns: No such file",
    );
}

#[test]
fn vsock_socket_in_a_missing_directory_is_named() {
    assert_device_refused(
        "novsockdir",
        r#""vsock": {"guest_cid": 3, "uds_path": "/nonexistent/dir/v.sock"}"#,
        "vsock socket /nonexistent/dir/v.sock: No such file or directory",
    );
}
