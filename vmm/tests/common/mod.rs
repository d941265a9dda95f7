//! What the VMM's integration tests share: the binary and the tiny guests, plus the helpers
//! of every crate's end-to-end tests (tests/support).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../../tests/support/mod.rs"]
mod support;
pub use support::*;

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

pub fn run_vmm(args: &[&str]) -> Output {
    Command::new(vmm_binary())
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("spawn vmpod-vmm")
}
