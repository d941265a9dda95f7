//! VM templates through `vmpod run`, on the backend this host runs (QEMU with TCG on kvm-pvm).
//! Each test boots from its own copy of the guest kernel and initramfs, so its templates are
//! its own: what it breaks or rebuilds touches no other test.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const TEMPLATES: &str = "/var/lib/vmpod/templates";

/// A private guest directory: copies of the kernel and initramfs, and the templates made from
/// them (removed with it).
struct Guest {
    scratch: support::Scratch,
}

impl Guest {
    fn new(tag: &str) -> Guest {
        let scratch = support::Scratch::new(&format!("templates-{tag}"));
        for file in ["vmlinux", "initramfs.cpio"] {
            std::fs::copy(guest_dir().join(file), scratch.path(file)).unwrap();
        }
        Guest { scratch }
    }

    fn dir(&self) -> PathBuf {
        self.scratch.0.clone()
    }

    fn vmpod(&self, args: &[&str]) -> Output {
        vmpod_env(args, None, &[("VMPOD_GUEST_DIR", &self.dir())])
    }

    fn ok(&self, args: &[&str]) -> String {
        ok_env(args, &[("VMPOD_GUEST_DIR", &self.dir())])
    }

    /// This guest's templates: (key, directory), by key.
    fn templates(&self) -> Vec<(String, PathBuf)> {
        let kernel = self.dir().join("vmlinux");
        let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(TEMPLATES)
            .map(|d| d.flatten().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|e| {
                let meta = std::fs::read(e.path().join("meta.json")).unwrap_or_default();
                let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap_or_default();
                meta["wanted"]["kernel"]["path"].as_str() == kernel.to_str()
            })
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        found.sort();
        found
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        for (_, dir) in self.templates() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn nothing_left() {
    let (dirs, procs) = leftovers();
    assert_eq!((dirs, procs), (0, 0), "left behind: {:?}", state_dirs());
}

fn template_build_time(dir: &Path) -> u64 {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    meta["created_unix"].as_u64().unwrap()
}

#[test]
fn ten_clones_at_once_are_independent_and_leave_the_template_as_it_was() {
    let _serial = serial();
    let guest = Guest::new("ten");
    let key = guest
        .ok(&["template", "build", "busybox"])
        .trim()
        .to_string();
    assert_eq!(guest.templates().len(), 1, "one template, {key}");
    let memory = guest.templates()[0].1.join("memory");
    let memory_before = std::fs::read(&memory).unwrap();
    // Ten sandboxes restored from it at the same time, each left running.
    let starts: Vec<_> = (0..10)
        .map(|i| {
            let dir = guest.dir();
            std::thread::spawn(move || {
                let out = Command::new(env!("CARGO_BIN_EXE_vmpod"))
                    .args(["run", "-d", "--name", &format!("clone{i}"), "busybox"])
                    .args(["sleep", "600"])
                    .env("VMPOD_GUEST_DIR", dir)
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            })
        })
        .collect();
    for s in starts {
        s.join().unwrap();
    }
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut randoms = Vec::new();
    for i in 0..10 {
        let name = format!("clone{i}");
        // What an earlier clone wrote must not be here; then this clone writes its own.
        let script = format!(
            "cat /tmp/mark 2>/dev/null || echo none; echo {name} > /tmp/mark; \
             head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s"
        );
        let out = guest.ok(&["exec", &name, "sh", "-c", &script]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{name}: {out}");
        assert_eq!(lines[0], "none", "{name} sees another clone's file");
        assert_eq!(lines[1].len(), 32, "{name}: {out}");
        randoms.push(lines[1].to_string());
        let guest_now: i64 = lines[2].parse().unwrap();
        assert!(
            (guest_now - host_now).abs() < 120,
            "{name}'s clock says {guest_now}, the host {host_now}"
        );
    }
    randoms.sort();
    randoms.dedup();
    assert_eq!(randoms.len(), 10, "clones handed out the same random bytes");
    // Each clone still has its own file.
    for i in [0, 9] {
        let name = format!("clone{i}");
        assert_eq!(guest.ok(&["exec", &name, "cat", "/tmp/mark"]).trim(), name);
    }
    let names: Vec<String> = (0..10).map(|i| format!("clone{i}")).collect();
    let mut args = vec!["rm", "-f"];
    args.extend(names.iter().map(String::as_str));
    guest.ok(&args);
    assert!(
        std::fs::read(&memory).unwrap() == memory_before,
        "a clone wrote the template's memory"
    );
    nothing_left();
}

#[test]
fn a_restore_leaves_a_running_sandbox_undisturbed() {
    let _serial = serial();
    let guest = Guest::new("undisturbed");
    let counter = "i=0; while [ $i -lt 100000 ]; do echo $i; i=$((i+1)); sleep 0.05; done";
    guest.ok(&[
        "run", "-d", "--name", "steady", "busybox", "sh", "-c", counter,
    ]);
    for _ in 0..3 {
        assert_eq!(
            guest.ok(&["run", "--rm", "busybox", "echo", "x"]).trim(),
            "x"
        );
    }
    assert!(guest.ok(&["ps"]).contains("steady"));
    let logs = guest.ok(&["logs", "steady"]);
    let numbers: Vec<u64> = logs.lines().map(|l| l.parse().unwrap()).collect();
    assert!(numbers.len() > 3, "{logs}");
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "the counter skipped or repeated: {logs}"
    );
    guest.ok(&["rm", "-f", "steady"]);
    nothing_left();
}

#[test]
fn templates_persist_and_are_rebuilt_when_the_guest_changes() {
    let _serial = serial();
    let guest = Guest::new("persist");
    assert_eq!(
        guest.ok(&["run", "--rm", "busybox", "echo", "one"]).trim(),
        "one"
    );
    let first = guest.templates();
    assert_eq!(first.len(), 1, "the first run builds its template");
    let built = template_build_time(&first[0].1);
    assert_eq!(
        guest.ok(&["run", "--rm", "busybox", "echo", "two"]).trim(),
        "two"
    );
    assert_eq!(
        guest.templates(),
        first,
        "the second run restores the same one"
    );
    assert_eq!(template_build_time(&first[0].1), built);
    // A rebuilt initramfs (here: a new modification time) makes the template stale.
    let initramfs = std::fs::File::options()
        .write(true)
        .open(guest.dir().join("initramfs.cpio"))
        .unwrap();
    initramfs
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(initramfs);
    assert_eq!(
        guest
            .ok(&["run", "--rm", "busybox", "echo", "three"])
            .trim(),
        "three"
    );
    let second = guest.templates();
    assert_eq!(second.len(), 1, "the stale template is pruned: {second:?}");
    assert_ne!(second[0].0, first[0].0, "a new key for the new initramfs");
    // ls, rm, and --cold-boot that makes none.
    let key = second[0].0.clone();
    assert!(guest.ok(&["template", "ls"]).contains(&key));
    guest.ok(&["template", "rm", &key]);
    assert!(guest.templates().is_empty());
    let out = guest.vmpod(&["template", "rm", &key]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains(&format!("no template '{key}'")));
    assert_eq!(
        guest
            .ok(&["run", "--rm", "--cold-boot", "busybox", "echo", "four"])
            .trim(),
        "four"
    );
    assert!(guest.templates().is_empty(), "--cold-boot made a template");
    nothing_left();
}

/// Runs `vmpod run --rm [extra] busybox true`, which must fail with 125 and `needle`.
fn refused(guest: &Guest, extra: &[&str], needle: &str) {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(extra);
    args.extend(["busybox", "true"]);
    let out = guest.vmpod(&args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains(needle), "wanted {needle:?} in: {err}");
    nothing_left();
}

#[test]
fn a_template_for_another_shape_or_with_a_broken_state_is_refused() {
    let _serial = serial();
    let guest = Guest::new("refused");
    guest.ok(&["template", "build", "busybox"]);
    guest.ok(&["template", "build", "--memory", "384m", "busybox"]);
    let templates = guest.templates();
    assert_eq!(templates.len(), 2);
    let meta_of = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap()
    };
    let (small, large) = {
        let a = &templates[0].1;
        let b = &templates[1].1;
        if meta_of(a)["wanted"]["layout"]["memory_mib"].as_u64()
            < meta_of(b)["wanted"]["layout"]["memory_mib"].as_u64()
        {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        }
    };
    // The large sandbox's key holding the small one's record: another memory size.
    let large_meta = std::fs::read(large.join("meta.json")).unwrap();
    std::fs::copy(small.join("meta.json"), large.join("meta.json")).unwrap();
    refused(&guest, &["--memory", "384m"], "was made for memory (MiB)");
    std::fs::write(large.join("meta.json"), &large_meta).unwrap();
    // A record naming another kernel.
    let mut meta = meta_of(&large);
    meta["wanted"]["kernel"]["size"] = serde_json::json!(1);
    std::fs::write(large.join("meta.json"), meta.to_string()).unwrap();
    refused(&guest, &["--memory", "384m"], "was made for kernel");
    std::fs::write(large.join("meta.json"), &large_meta).unwrap();
    // A truncated state, then one that is not QEMU's stream at all.
    let state = small.join("state");
    let saved = std::fs::read(&state).unwrap();
    std::fs::write(&state, &saved[..saved.len() / 2]).unwrap();
    refused(&guest, &[], "truncated");
    let mut garbage = saved.clone();
    garbage[..4].copy_from_slice(b"XXXX");
    std::fs::write(&state, &garbage).unwrap();
    refused(&guest, &[], "QEMU said");
    // Put back, both work again.
    std::fs::write(&state, &saved).unwrap();
    assert_eq!(
        guest.ok(&["run", "--rm", "busybox", "echo", "ok"]).trim(),
        "ok"
    );
    assert_eq!(
        guest
            .ok(&["run", "--rm", "--memory", "384m", "busybox", "echo", "ok"])
            .trim(),
        "ok"
    );
    nothing_left();
}

#[test]
fn a_vmm_template_is_saved_at_agent_ready_and_restored() {
    // The product path; on kvm-pvm hosts the template's boot takes most of a minute.
    support::require_kvm();
    let _serial = serial();
    let guest = Guest::new("vmm");
    // The clone mounts its own shared directory (virtio-fs) after the restore.
    let volume = support::Scratch::new("vmm-template-volume");
    let spec = format!("{}:/data", volume.0.display());
    for word in ["built", "restored"] {
        std::fs::write(volume.path("word"), word).unwrap();
        let out = guest.ok(&[
            "run",
            "--hypervisor",
            "vmm",
            "--rm",
            "-v",
            &spec,
            "busybox",
            "sh",
            "-c",
            "cat /data/word; echo; echo seen > /data/back",
        ]);
        assert_eq!(out.trim(), word);
        assert_eq!(
            std::fs::read_to_string(volume.path("back")).unwrap(),
            "seen\n"
        );
        std::fs::remove_file(volume.path("back")).unwrap();
    }
    let templates = guest.templates();
    assert_eq!(templates.len(), 1, "{templates:?}");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(templates[0].1.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["wanted"]["layout"]["backend"], "vmm");
    nothing_left();
}
