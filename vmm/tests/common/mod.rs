//! What the VMM's integration tests share: the binary, the guests, KVM, and a scratch directory
//! that is removed even when a test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn vmm_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmpod-vmm"))
}

/// The 32-bit PVH tiny guest (tiny.S).
pub fn tiny_guest() -> PathBuf {
    Path::new(env!("VMPOD_TINY_GUEST_DIR")).join("tiny-guest.elf")
}

/// The 64-bit tiny guest (tiny64.S) as `tiny64-guest.elf` or `tiny64-guest.bzImage`.
pub fn tiny64_guest(file: &str) -> PathBuf {
    Path::new(env!("VMPOD_TINY_GUEST_DIR")).join(file)
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The guest kernel and test initramfs, as `make` builds them into build/guest.
pub fn linux_guest() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("VMPOD_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/guest"));
    let kernel = dir.join("vmlinux");
    let initrd = dir.join("test-initramfs.cpio");
    assert!(
        kernel.is_file() && initrd.is_file(),
        "the Linux guest is missing from {}: run `make guest` (or `make test`) first",
        dir.display()
    );
    (kernel, initrd)
}

/// These tests boot real VMs; a machine without KVM must fail them loudly, never skip them.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("this test boots a real VM and needs /dev/kvm, which cannot be opened: {e}");
    }
}

pub fn is_kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// A directory under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("vmpod-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("read scratch dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run_vmm(args: &[&str]) -> Output {
    Command::new(vmm_binary())
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("spawn vmpod-vmm")
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
