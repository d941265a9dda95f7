//! Assembles the tiny test guests so `cargo test` needs nothing prepared beforehand.

use std::process::Command;

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let script = "../scripts/build-tiny-guest.sh";
    println!("cargo:rerun-if-changed={script}");
    println!("cargo:rerun-if-changed=tests/guest");
    let status = Command::new("bash").arg(script).arg(&out).status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            panic!("building the tiny test guest failed ({other:?}); binutils (as, ld) are needed")
        }
    }
    println!("cargo:rustc-env=VMPOD_TINY_GUEST_DIR={out}");
}
