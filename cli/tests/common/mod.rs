//! What the CLI's end-to-end tests share: running the vmpod binary, the busybox tree, and
//! finding what a run left behind.
#![allow(dead_code)]

#[path = "../../../tests/support/mod.rs"]
pub mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
// Each test crate uses its own part of them.
#[allow(unused_imports)]
pub use support::{guest_dir, processes_mentioning, repo_root};

/// One run at a time, so that what a test finds left behind is its own.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn rootfs() -> PathBuf {
    let dir = guest_dir().join("busybox-rootfs");
    assert!(
        dir.is_dir(),
        "{} is missing: run `make guest` first",
        dir.display()
    );
    dir
}

pub fn vmpod(args: &[&str], stdin: Option<&[u8]>) -> Output {
    vmpod_env(args, stdin, &[])
}

/// `vmpod ARGS` with more environment (e.g. its own VMPOD_GUEST_DIR).
pub fn vmpod_env(args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &Path)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmpod"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmpod");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    child.wait_with_output().expect("wait for vmpod")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `vmpod ARGS` must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    ok_env(args, &[])
}

pub fn ok_env(args: &[&str], env: &[(&str, &Path)]) -> String {
    succeeded(args, vmpod_env(args, None, env))
}

/// The stdout of `vmpod ARGS`, which must have exited 0.
pub fn succeeded(args: &[&str], out: Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "vmpod {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The names in a directory, sorted; none when it is missing.
pub fn entries(dir: impl AsRef<Path>) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// This test binary's sandboxes: state directories under /run/vmpod and their processes.
pub fn leftovers() -> (usize, usize) {
    let dirs = state_dirs().len() + records().len();
    let procs = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().nth(1))
                        .map(str::to_string)
                })
                .is_some_and(|ppid| ppid == std::process::id().to_string())
        })
        .count();
    (dirs, procs)
}

/// The sandboxes' state directories under /run/vmpod.
pub fn state_dirs() -> Vec<String> {
    entries("/run/vmpod")
        .into_iter()
        // Records and sandbox uid claims live beside the state directories.
        .filter(|n| n != "containers" && n != "uids")
        .collect()
}

/// Background containers' records (and their name claims).
pub fn records() -> Vec<String> {
    entries("/run/vmpod/containers")
}
