//! Our virtio devices against a real Linux guest on vmpod-vmm: a read-only erofs disk, a raw
//! scratch disk and the rng in one boot, vsock in another (about a minute each on kvm-pvm).

mod common;

use std::process::{Command, Stdio};

use common::*;

#[test]
fn guest_reads_erofs_writes_scratch_disk_cannot_write_read_only_disk_and_reads_hwrng() {
    require_kvm();
    let (kernel, initrd) = linux_guest();
    let scratch = Scratch::new("devices");
    let disks = DiskFixture::new(&scratch);
    let console = scratch.path("console.log");
    let config = scratch.path("vm.json");
    let json = format!(
        r#"{{"kernel": "{}", "initrd": "{}", "cpus": 1, "memory_mib": 256,
            "cmdline": "console=ttyS0 vmpod.test=devices", "console": "{}", "rng": true,
            "disks": [{{"path": "{}", "read_only": true, "serial": "layer0"}},
                      {{"path": "{}", "serial": "scratch"}}]}}"#,
        kernel.display(),
        initrd.display(),
        console.display(),
        disks.erofs.display(),
        disks.scratch.display()
    );
    std::fs::write(&config, json).unwrap();
    let output = run_vmm(&["--config", config.to_str().unwrap()]);
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}\n{text}",
        stderr(&output)
    );
    disks.check(&text);
}

#[test]
fn vsock_carries_guest_and_host_initiated_streams_byte_exact() {
    require_kvm();
    let (kernel, initrd) = linux_guest();
    let scratch = Scratch::new("vsock");
    let uds = scratch.path("vsock.sock");
    let console = scratch.path("console.log");
    let exercise = VsockExercise::listen_for_guest(&uds);
    let config = scratch.path("vm.json");
    let json = format!(
        r#"{{"kernel": "{}", "initrd": "{}", "memory_mib": 256,
            "cmdline": "console=ttyS0 vmpod.test=vsock", "console": "{}",
            "vsock": {{"guest_cid": 3, "uds_path": "{}"}}}}"#,
        kernel.display(),
        initrd.display(),
        console.display(),
        uds.display()
    );
    std::fs::write(&config, json).unwrap();
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
fn missing_disk_image_is_named_and_nothing_is_left_behind() {
    let scratch = Scratch::new("nodisk");
    let config = scratch.path("vm.json");
    let missing = scratch.path("nope.img");
    let json = format!(
        r#"{{"kernel": "{}", "memory_mib": 16, "console": "{}", "disks": [{{"path": "{}"}}]}}"#,
        tiny_guest().display(),
        scratch.path("console.log").display(),
        missing.display()
    );
    std::fs::write(&config, json).unwrap();
    let before = scratch.entries();
    require_kvm();
    let output = run_vmm(&["--config", config.to_str().unwrap()]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "disk {}: No such file or directory",
            missing.display()
        )),
        "{err}"
    );
    assert_eq!(scratch.entries(), before);
}

#[test]
fn guest_on_a_tap_in_a_netns_pings_the_host_and_fetches_a_file_byte_exact() {
    require_kvm();
    let (kernel, initrd) = linux_guest();
    let scratch = Scratch::new("net");
    let mut net = NetFixture::new("net");
    let console = scratch.path("console.log");
    let config = scratch.path("vm.json");
    let json = format!(
        r#"{{"kernel": "{}", "initrd": "{}", "memory_mib": 256,
            "cmdline": "console=ttyS0 vmpod.test=net", "console": "{}",
            "net": {{"tap": "{}", "netns": "{}", "mac": "06:00:ac:10:00:02"}}}}"#,
        kernel.display(),
        initrd.display(),
        console.display(),
        net.tap,
        net.netns_path().display()
    );
    std::fs::write(&config, json).unwrap();
    let output = run_vmm(&["--config", config.to_str().unwrap()]);
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}\n{text}",
        stderr(&output)
    );
    net.check(&text);
}

#[test]
fn tap_in_a_missing_netns_is_named_and_nothing_is_left_behind() {
    let scratch = Scratch::new("nonetns");
    let config = scratch.path("vm.json");
    let json = format!(
        r#"{{"kernel": "{}", "memory_mib": 16, "console": "{}",
            "net": {{"tap": "vmtap0", "netns": "/run/netns/vmpod-no-such-ns"}}}}"#,
        tiny_guest().display(),
        scratch.path("console.log").display()
    );
    std::fs::write(&config, json).unwrap();
    let before = scratch.entries();
    require_kvm();
    let output = run_vmm(&["--config", config.to_str().unwrap()]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("network namespace /run/netns/vmpod-no-such-ns: No such file"),
        "{err}"
    );
    assert_eq!(scratch.entries(), before);
}
