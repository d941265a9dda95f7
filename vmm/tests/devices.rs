//! Our virtio devices against a real Linux guest on vmpod-vmm: a read-only erofs disk, a raw
//! scratch disk and the rng, in one boot (about a minute on kvm-pvm hosts).

mod common;

use std::process::Command;

use common::*;

fn sha256_hex(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

fn report<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|l| l.strip_prefix("vmpod-init: ")?.strip_prefix(key))
        .map(str::trim)
}

#[test]
fn guest_reads_erofs_writes_scratch_disk_cannot_write_read_only_disk_and_reads_hwrng() {
    require_kvm();
    let (kernel, initrd) = linux_guest();
    let scratch = Scratch::new("devices");

    // An erofs image with 1 MiB of pseudo-random bytes, made the way image layers will be.
    let tree = scratch.path("tree");
    std::fs::create_dir(&tree).unwrap();
    let payload: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(tree.join("payload.bin"), &payload).unwrap();
    let erofs = scratch.path("layer.erofs");
    let status = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&erofs)
        .arg(&tree)
        .status()
        .expect("run mkfs.erofs (erofs-utils)");
    assert!(status.success());
    let erofs_before = std::fs::read(&erofs).unwrap();
    let raw = scratch.path("scratch.img");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();

    let console = scratch.path("console.log");
    let config = scratch.path("vm.json");
    let json = format!(
        r#"{{"kernel": "{}", "initrd": "{}", "cpus": 1, "memory_mib": 256,
            "cmdline": "console=ttyS0 vmpod.test=devices", "console": "{}", "rng": true,
            "disks": [{{"path": "{}", "read_only": true, "serial": "layer0"}},
                      {{"path": "{}"}}]}}"#,
        kernel.display(),
        initrd.display(),
        console.display(),
        erofs.display(),
        raw.display()
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

    let expected = sha256_hex(&tree.join("payload.bin"));
    let erofs_line =
        report(&text, "erofs sha256 ").unwrap_or_else(|| panic!("no erofs line:\n{text}"));
    assert!(
        erofs_line.starts_with(&expected),
        "{erofs_line} != {expected}"
    );

    let hwrng = report(&text, "hwrng ").unwrap_or_else(|| panic!("no hwrng line:\n{text}"));
    assert_eq!(hwrng.len(), 32, "16 bytes in hex: {hwrng}");
    assert_ne!(hwrng, "0".repeat(32));

    assert!(report(&text, "vdb written").is_some(), "{text}");
    let written = std::fs::read(&raw).unwrap();
    assert_eq!(&written[..21], b"written by the guest\n");
    assert!(written[21..512].iter().all(|&b| b == 0));

    assert!(report(&text, "vda write refused").is_some(), "{text}");
    assert_eq!(
        std::fs::read(&erofs).unwrap(),
        erofs_before,
        "read-only disk changed"
    );
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
