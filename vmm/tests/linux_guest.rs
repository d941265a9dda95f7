//! Our guest kernel and the test initramfs, end to end: on vmpod-vmm (real KVM) and on QEMU's
//! TCG through the launcher the next layers reuse. On kvm-pvm hosts the vmpod-vmm boot takes
//! about a minute (guest kernel code is emulated there); it stays in the suite as a smoke test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// The line the test initramfs's /init prints: `vmpod-init: cpus=N ram_mib=M kernel=...`.
fn init_report(console: &str) -> (u32, u64) {
    let line = console
        .lines()
        .find(|l| l.starts_with("vmpod-init: cpus="))
        .unwrap_or_else(|| panic!("init never reported; console:\n{console}"));
    let field = |name: &str| -> &str {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    (
        field("cpus=").parse().expect("cpus"),
        field("ram_mib=").parse().expect("ram_mib"),
    )
}

/// The test initramfs compressed by `compressor` (`gzip`, `zstd`) into `scratch`: most
/// distributions ship theirs so, and the guest kernel unpacks both.
fn compressed_initrd(scratch: &Scratch, compressor: &str) -> PathBuf {
    let (_, initrd) = linux_guest();
    let out = scratch.path(&format!("initramfs.cpio.{compressor}"));
    let status = Command::new(compressor)
        .arg("-c")
        .arg(&initrd)
        .stdout(std::fs::File::create(&out).unwrap())
        .status()
        .unwrap_or_else(|e| panic!("run {compressor}: {e}"));
    assert!(status.success(), "{compressor} {}", initrd.display());
    out
}

fn boot_on_vmm(cpus: u32, memory_mib: u32, cmdline: &str, console: &Path) -> Output {
    let (kernel, initrd) = linux_guest();
    let (cpus, memory) = (cpus.to_string(), memory_mib.to_string());
    run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cpus",
        &cpus,
        "--memory",
        &memory,
        "--cmdline",
        cmdline,
        "--console",
        console.to_str().unwrap(),
    ])
}

/// kvm-pvm now and then starts a process with a wrong FS base, which dies at its first TLS
/// access (guest-kernel/README.md). When that process is init itself, the guest panics before
/// the test's init has run a line: only such a boot is tried again, and it is said.
fn kvm_pvm_killed_init(console: &str) -> bool {
    is_kvm_pvm()
        && console.contains("init[1]: segfault at ")
        && console.contains("Attempted to kill init!")
}

#[test]
fn linux_guest_on_vmpod_vmm_reaches_user_space_with_2_vcpus_and_256_mib() {
    require_kvm();
    let scratch = Scratch::new("linux-vmm");
    let console = scratch.path("console.log");
    let mut tries = 1;
    let (output, text) = loop {
        let output = boot_on_vmm(2, 256, "console=ttyS0", &console);
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if tries < 3 && kvm_pvm_killed_init(&text) {
            eprintln!("kvm-pvm killed init at its first TLS access (try {tries}); booting again");
            tries += 1;
            continue;
        }
        break (output, text);
    };
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}\nconsole:\n{text}",
        stderr(&output)
    );
    assert_eq!(init_report(&text), (2, 256));
    assert!(
        stderr(&output).contains("guest boot done after"),
        "init's boot-timer byte never arrived: {}",
        stderr(&output)
    );
}

/// The guest kernel unpacks the compressed initramfs images distributions ship. Booted on QEMU:
/// on kvm-pvm the guest kernel's own code is emulated, and inflating a few megabytes there
/// takes many minutes; vmpod-vmm loads an initrd's bytes whatever their format, after checking
/// it is one the kernel reads (tiny_guest.rs).
#[test]
fn linux_guest_under_qemu_tcg_reaches_user_space_from_gzip_and_zstd_initramfs_with_2_vcpus() {
    let scratch = Scratch::new("linux-qemu");
    let (kernel, _) = linux_guest();
    for compressor in ["gzip", "zstd"] {
        let initrd = compressed_initrd(&scratch, compressor);
        let output = Command::new(repo_root().join("scripts/qemu-microvm.sh"))
            .args(["--accel", "tcg", "--cpus", "2", "--memory", "256"])
            .arg("--kernel")
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initrd)
            .output()
            .expect("run scripts/qemu-microvm.sh");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "qemu failed ({compressor}): {}\n{text}",
            stderr(&output)
        );
        assert_eq!(init_report(&text), (2, 256), "{compressor}");
    }
}

#[test]
fn linux_guest_panic_exits_2_with_the_panic_in_the_console() {
    require_kvm();
    let scratch = Scratch::new("linux-panic");
    let console = scratch.path("console.log");
    let output = boot_on_vmm(1, 128, "console=ttyS0 vmpod.test=panic", &console);
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(&output));
    assert!(
        text.contains("Kernel panic - not syncing: Attempted to kill init!"),
        "console:\n{text}"
    );
}
