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

#[test]
fn vsock_carries_guest_and_host_initiated_streams_byte_exact() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::{Duration, Instant};

    require_kvm();
    let (kernel, initrd) = linux_guest();
    let scratch = Scratch::new("vsock");
    let uds = scratch.path("vsock.sock");
    let console = scratch.path("console.log");

    // The guest connects to host port 5000 first.
    let guest_port = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    let guest_side = std::thread::spawn(move || {
        let (mut stream, _) = guest_port.accept().expect("guest connection");
        let mut message = String::new();
        stream.read_to_string(&mut message).expect("guest message");
        stream.write_all(b"hello from the host").unwrap();
        message
    });

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
    let child = Command::new(vmm_binary())
        .args(["--config", config.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vmpod-vmm");

    let deadline = Instant::now() + Duration::from_secs(600);
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("vsock-test: listening on 1024")
    {
        assert!(
            Instant::now() < deadline,
            "guest never listened on vsock port 1024"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut stream = UnixStream::connect(&uds).expect("connect to the VM's vsock socket");
    stream.write_all(b"CONNECT 1024\n").unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK "), "handshake answer: {ok:?}");
    let payload: Vec<u8> = (0..64u32 << 10).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let payload = payload.clone();
        std::thread::spawn(move || {
            stream.write_all(&payload).unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut echoed = Vec::new();
    reader.read_to_end(&mut echoed).unwrap();
    writer.join().unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echo differs");

    let output = child.wait_with_output().unwrap();
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}\n{text}",
        stderr(&output)
    );
    assert_eq!(guest_side.join().unwrap(), "hello from the guest");
    assert!(
        text.contains("vsock-test: received hello from the host"),
        "{text}"
    );
    assert!(text.contains("vsock-test: echoed 65536 bytes"), "{text}");
    assert!(!uds.exists(), "vsock socket left behind");
}
