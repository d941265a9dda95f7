//! vmpod-vmm against the tiny PVH test guest: real KVM, no Linux, milliseconds per test.

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BANNER: &str = "vmpod tiny guest: hello, serial! ~`!@#$%^&*()_+-=[]{}|;':\",./<>?\n";

fn boot_tiny(scratch: &Scratch, mode: &str) -> (std::process::Output, String) {
    require_kvm();
    let console = scratch.path("console.log");
    let output = run_vmm(&[
        "--kernel",
        tiny_guest().to_str().unwrap(),
        "--memory",
        "16",
        "--cmdline",
        &format!("tiny={mode}"),
        "--console",
        console.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    (output, text)
}

#[test]
fn serial_output_arrives_byte_exact_and_reset_exits_zero() {
    let scratch = Scratch::new("serial");
    let (output, console) = boot_tiny(&scratch, "reset");
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(console, format!("{BANNER}tiny: reset\n"));
}

/// The Linux 64-bit boot protocol: long mode, our page tables, the zero page with the command line.
fn boot_tiny64(file: &str) {
    require_kvm();
    let scratch = Scratch::new(&format!("tiny64-{file}"));
    let console = scratch.path("console.log");
    let output = run_vmm(&[
        "--kernel",
        tiny64_guest(file).to_str().unwrap(),
        "--memory",
        "16",
        "--cmdline",
        "console=ttyS0 tiny=reset",
        "--console",
        console.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}
{text}",
        stderr(&output)
    );
    assert!(
        text.starts_with("vmpod tiny64 guest: long mode\ntiny64: zero page ok, cmdline: "),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with(" console=ttyS0 tiny=reset"),
        "{text}"
    );
    assert!(stderr(&output).contains("guest boot done after"));
}

#[test]
fn bzimage_boots_through_the_64_bit_linux_boot_protocol() {
    boot_tiny64("tiny64-guest.bzImage");
}

#[test]
fn elf_without_pvh_note_boots_through_the_64_bit_linux_boot_protocol() {
    boot_tiny64("tiny64-guest.elf");
}

#[test]
fn boot_timer_byte_is_recorded() {
    let scratch = Scratch::new("boottimer");
    let (output, _) = boot_tiny(&scratch, "reset");
    let err = stderr(&output);
    let line = err
        .lines()
        .find(|l| l.contains("guest boot done after"))
        .unwrap_or_else(|| panic!("no boot-timer line in stderr: {err}"));
    let us: u64 = line
        .split_whitespace()
        .rev()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"));
    assert!(us > 0);
}

#[test]
fn guest_panic_flag_before_reset_exits_two() {
    let scratch = Scratch::new("panic");
    let (output, console) = boot_tiny(&scratch, "panic");
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(&output));
    assert!(stderr(&output).contains("guest kernel panicked"));
    assert!(console.contains("Kernel panic - not syncing"));
}

#[test]
fn guest_crash_exits_three_naming_the_guest_rip() {
    let scratch = Scratch::new("crash");
    let (output, _) = boot_tiny(&scratch, "triple");
    assert_eq!(output.status.code(), Some(3), "stderr: {}", stderr(&output));
    let err = stderr(&output);
    assert!(err.contains("guest crashed: vCPU 0:"), "{err}");
    assert!(err.contains("at guest RIP 0x1"), "{err}");
}

#[test]
fn sigterm_stops_a_running_guest_with_status_143() {
    require_kvm();
    let scratch = Scratch::new("sigterm");
    let console = scratch.path("console.log");
    let child = Command::new(vmm_binary())
        .args(["--kernel", tiny_guest().to_str().unwrap(), "--memory", "16"])
        .args([
            "--cmdline",
            "tiny=wait",
            "--console",
            console.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmpod-vmm");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("tiny: waiting")
    {
        assert!(
            Instant::now() < deadline,
            "guest never reached its wait loop"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child.wait_with_output().expect("wait for vmpod-vmm");
    assert_eq!(
        output.status.code(),
        Some(143),
        "{:?}",
        output.status.signal()
    );
    assert!(stderr(&output).contains("stopped by signal 15"));
}

#[test]
fn json_config_from_a_file_boots_the_guest() {
    let scratch = Scratch::new("jsonfile");
    let config = scratch.path("vm.json");
    let console = scratch.path("console.log");
    let json = format!(
        r#"{{"kernel": "{}", "memory_mib": 16, "cpus": 2, "cmdline": "tiny=reset", "console": "{}"}}"#,
        tiny_guest().display(),
        console.display()
    );
    std::fs::write(&config, json).unwrap();
    require_kvm();
    let output = run_vmm(&["--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert!(std::fs::read_to_string(&console)
        .unwrap()
        .ends_with("tiny: reset\n"));
}

#[test]
fn json_config_from_an_inherited_fd_boots_the_guest() {
    require_kvm();
    let scratch = Scratch::new("jsonfd");
    let console = scratch.path("console.log");
    let json = format!(
        r#"{{"kernel": "{}", "memory_mib": 16, "cmdline": "tiny=reset", "console": "{}"}}"#,
        tiny_guest().display(),
        console.display()
    );
    let mut pipe = [0i32; 2];
    // SAFETY: `pipe` has room for the two descriptors pipe(2) returns.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let (read_fd, write_fd) = (pipe[0], pipe[1]);
    {
        use std::os::fd::FromRawFd;
        // SAFETY: write_fd was just created and is owned here alone.
        let mut writer = unsafe { std::fs::File::from_raw_fd(write_fd) };
        writer.write_all(json.as_bytes()).unwrap();
    }
    let output = run_vmm(&["--config", &format!("fd:{read_fd}")]);
    // SAFETY: read_fd is ours; the child had its own copy.
    unsafe { libc::close(read_fd) };
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert!(std::fs::read_to_string(&console)
        .unwrap()
        .ends_with("tiny: reset\n"));
}

/// Bad input: one line on stderr naming the problem, exit 1, nothing created.
fn assert_refused(scratch: &Scratch, args: &[&str], expected: &str) {
    let before = scratch.entries();
    let output = run_vmm(args);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("vmpod-vmm: "), "{err}");
    assert!(
        lines[0].contains(expected),
        "expected {expected:?} in: {err}"
    );
    assert_eq!(scratch.entries(), before, "files left behind");
}

#[test]
fn missing_kernel_is_named() {
    let scratch = Scratch::new("nokernel");
    let missing = scratch.path("vmlinux");
    assert_refused(
        &scratch,
        &["--kernel", missing.to_str().unwrap()],
        &format!("kernel {}: no such file", missing.display()),
    );
}

#[test]
fn kernel_that_is_neither_elf_nor_bzimage_is_named() {
    require_kvm();
    let scratch = Scratch::new("notelf");
    let bogus = scratch.path("kernel.txt");
    std::fs::write(&bogus, "this is not a kernel\n".repeat(100)).unwrap();
    let console = scratch.path("console.log");
    assert_refused(
        &scratch,
        &[
            "--kernel",
            bogus.to_str().unwrap(),
            "--console",
            console.to_str().unwrap(),
        ],
        "not an ELF file or a bzImage",
    );
}

#[test]
fn initrd_larger_than_memory_is_refused() {
    require_kvm();
    let scratch = Scratch::new("biginitrd");
    let initrd = scratch.path("initrd.img");
    let file = std::fs::File::create(&initrd).unwrap();
    file.set_len(32 << 20).unwrap();
    let console = scratch.path("console.log");
    assert_refused(
        &scratch,
        &[
            "--kernel",
            tiny_guest().to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--memory",
            "16",
            "--console",
            console.to_str().unwrap(),
        ],
        "does not fit in guest memory",
    );
}

/// An xz-compressed initrd (our kernel has no xz decompressor) and a file that is no
/// initramfs at all are refused by name, before the guest runs.
#[test]
fn an_initrd_the_kernel_cannot_read_is_refused_by_name() {
    require_kvm();
    let scratch = Scratch::new("initrd-format");
    let console = scratch.path("console.log");
    for (name, bytes, why) in [
        (
            "initrd.xz",
            &[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 4][..],
            "xz data; the guest kernel reads a newc cpio archive, plain or gzip or zstd",
        ),
        ("initrd.txt", b"not an image\n", "not an initramfs"),
    ] {
        let initrd = scratch.path(name);
        std::fs::write(&initrd, bytes).unwrap();
        assert_refused(
            &scratch,
            &[
                "--kernel",
                tiny_guest().to_str().unwrap(),
                "--initrd",
                initrd.to_str().unwrap(),
                "--console",
                console.to_str().unwrap(),
            ],
            &format!("initrd {}: {why}", initrd.display()),
        );
    }
}

#[test]
fn zero_and_300_vcpus_are_refused() {
    let scratch = Scratch::new("cpus");
    let kernel = tiny_guest();
    for cpus in ["0", "300"] {
        assert_refused(
            &scratch,
            &["--kernel", kernel.to_str().unwrap(), "--cpus", cpus],
            &format!("cpus must be between 1 and 254, not {cpus}"),
        );
    }
}

#[test]
fn zero_memory_is_refused() {
    let scratch = Scratch::new("mem");
    assert_refused(
        &scratch,
        &["--kernel", tiny_guest().to_str().unwrap(), "--memory", "0"],
        "memory must be between 16 and",
    );
}

#[test]
fn malformed_json_config_is_named_with_its_position() {
    let scratch = Scratch::new("badjson");
    let config = scratch.path("vm.json");
    std::fs::write(&config, "{\"kernel\": \"/x\",\n \"cpus\": }").unwrap();
    assert_refused(
        &scratch,
        &["--config", config.to_str().unwrap()],
        &format!("config {}: expected value at line 2", config.display()),
    );
}

#[test]
fn unknown_config_field_is_named() {
    let scratch = Scratch::new("unknownfield");
    let config = scratch.path("vm.json");
    std::fs::write(&config, r#"{"kernel": "/x", "vcpus": 2}"#).unwrap();
    assert_refused(
        &scratch,
        &["--config", config.to_str().unwrap()],
        "unknown field `vcpus`",
    );
}

#[test]
fn cpuid_mask_hides_features_from_the_guest() {
    require_kvm();
    let scratch = Scratch::new("cpuid");
    let console = scratch.path("console.log");
    let config = scratch.path("vm.json");
    // cx16 is one of the bits even kvm-pvm takes from the VMM's table.
    let json = format!(
        r#"{{"kernel": "{}", "memory_mib": 16, "cmdline": "tiny=cpuid", "console": "{}", "cpuid_mask": ["cx16"]}}"#,
        tiny_guest().display(),
        console.display()
    );
    std::fs::write(&config, json).unwrap();
    let output = run_vmm(&["--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let text = std::fs::read_to_string(&console).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("tiny: cpuid"))
        .unwrap_or_else(|| panic!("no cpuid line: {text}"));
    let leaf1_ecx = u32::from_str_radix(
        line.split_whitespace()
            .nth(2)
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .expect("hex");
    assert_eq!(leaf1_ecx & (1 << 13), 0, "cx16 visible: {line}");
    assert_ne!(leaf1_ecx & (1 << 31), 0, "hypervisor bit missing: {line}");
}
