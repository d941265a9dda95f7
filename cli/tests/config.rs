//! The host's vmpod.toml (`$VMPOD_CONFIG` names a test's own): each key takes effect, `vmpod
//! info` says what was chosen and why, a bad file is one line naming its line, and the
//! backend notice of `auto` is said once per host.

mod common;

use common::support::{is_kvm_pvm, Scratch};
use common::*;
use std::path::Path;

fn config(scratch: &Scratch, text: &str) -> std::path::PathBuf {
    let path = scratch.path("vmpod.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_key_takes_effect_and_vmpod_info_says_so() {
    let _serial = serial();
    let scratch = Scratch::new("config-keys");
    let (images, templates) = (scratch.path("images"), scratch.path("templates"));
    let path = config(
        &scratch,
        &format!(
            "# a host's defaults\nhypervisor = \"qemu\"\nmemory_mib = 300\ncpus = 2\n\
             image_store = \"{}\"\ntemplate_store = \"{}\"\nlog_level = \"debug\"\n\
             insecure_registries = [\"registry.lan:5000\"]\n",
            images.display(),
            templates.display()
        ),
    );
    let env = [("VMPOD_CONFIG", path.as_path())];
    let info = ok_env(&["info"], &env);
    for expected in [
        format!("config:         {}\n", path.display()),
        format!("chosen by hypervisor in {}\n", path.display()),
        format!("image store:    {}\n", images.display()),
        format!("template store: {}\n", templates.display()),
        "default VM:     2 vCPU, 300 MiB\n".into(),
        "log level:      debug\n".into(),
        "plain HTTP:     localhost, 127.0.0.0/8, registry.lan:5000\n".into(),
        format!(
            "kernel:         {}\n",
            guest_dir().join("vmlinux").display()
        ),
    ] {
        assert!(info.contains(&expected), "{expected:?} not in:\n{info}");
    }
    assert!(
        info.contains("backend:        qemu (QEMU microvm on "),
        "{info}"
    );

    // The image store: an import lands there, and only there.
    let oci = guest_dir().join("busybox-oci");
    ok_env(
        &["image", "import", oci.to_str().unwrap(), "cfgbox:1"],
        &env,
    );
    assert!(images.join("images.json").is_file());
    assert!(ok_env(&["images"], &env).contains("cfgbox"));
    assert!(!ok(&["images"]).contains("cfgbox"));

    // The VM's size and the template store: the run's template is built there.
    let out = vmpod_env(
        &[
            "run",
            "--rm",
            "cfgbox:1",
            "sh",
            "-c",
            "nproc; awk '/^MemTotal/ {print int($2 / 1024)}' /proc/meminfo",
        ],
        None,
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"2"), "{stdout}");
    let mem_total: u64 = lines[1].parse().unwrap();
    assert!((240..=300).contains(&mem_total), "{mem_total} MiB");
    let built = std::fs::read_dir(&templates).map_or(0, |d| d.count());
    assert!(built > 0, "no template in {}", templates.display());

    // log_level = "debug": the agent narrates on the VM's console.
    let id = ok_env(&["run", "-d", "cfgbox:1", "sleep", "100"], &env);
    let narrated = state_dirs().iter().any(|dir| {
        std::fs::read_to_string(Path::new("/run/vmpod").join(dir).join("console.log"))
            .is_ok_and(|console| console.contains("vmpod-agent: "))
    });
    ok(&["rm", "-f", id.trim()]);
    assert!(narrated, "no agent narration on any console");
}

#[test]
fn a_bad_config_is_one_line_naming_its_line_or_key() {
    let _serial = serial();
    let before = leftovers();
    let scratch = Scratch::new("config-bad");
    let root = rootfs();
    for (text_of_file, expected) in [
        (
            "cpus = 1\n\nmemroy_mib = 300\n",
            "line 3: unknown field `memroy_mib`",
        ),
        ("hypervisor = qemu\n", "line 1: "),
        ("memory_mib = \"lots\"\n", "line 1: "),
        ("cpus = 0\n", ": cpus must be between 1 and 64, not 0"),
        (
            "hypervisor = \"xen\"\n",
            ": hypervisor must be auto, vmm or qemu, not 'xen'",
        ),
    ] {
        let path = config(&scratch, text_of_file);
        let env = [("VMPOD_CONFIG", path.as_path())];
        for args in [
            &["run", "--rm", "--rootfs", root.to_str().unwrap(), "true"][..],
            &["info"],
        ] {
            let out = vmpod_env(args, None, &env);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(125), "{text_of_file:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            let prefix = format!("vmpod: config {}", path.display());
            assert!(
                stderr.starts_with(&prefix) && stderr.contains(expected),
                "{text_of_file:?}: {expected:?} not in {stderr:?}"
            );
        }
    }
    assert_eq!(leftovers(), before, "{:?}", state_dirs());
}

/// Where `auto` falls back to QEMU with TCG (kvm-pvm, no usable KVM), it says so once per
/// host, not on every run; a chosen backend says nothing.
#[test]
fn the_backend_notice_of_auto_is_said_once_per_host() {
    let _serial = serial();
    let falls_back = is_kvm_pvm()
        || std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err();
    let env = [("VMPOD_CONFIG", Path::new("/nonexistent/vmpod.toml"))];
    let root = rootfs();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--rm", "--rootfs", root.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push("true");
        let out = vmpod_env(&args, None, &env);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let _ = std::fs::remove_file("/var/lib/vmpod/notices/auto-backend");
    assert_eq!(run(&["--hypervisor", "qemu"]), "", "a chosen backend");
    let first = run(&[]);
    if falls_back {
        assert!(
            first.contains("using QEMU with TCG (said once per host"),
            "{first:?}"
        );
    } else {
        assert_eq!(first, "");
    }
    assert_eq!(run(&[]), "", "said again");
}
