//! Disk slots of a running sandbox, end to end: a real VM (QEMU on TCG here; vmpod-vmm where
//! KVM allows), images inserted after it booted, mounted by the agent as a container's layers,
//! ejected and replaced, and the slots running out.

mod common;

use common::support::{self, Scratch};
use common::{busybox_sandbox, run_container, shell_spec};
use std::path::PathBuf;
use std::time::Duration;
use vmpod_protocol::{Rootfs, Upper};
use vmpod_sandbox::{Backend, Boot, Sandbox};

/// An erofs image holding one file, `/<name>.txt`, that says `text`.
fn image(scratch: &Scratch, name: &str, text: &str) -> PathBuf {
    let tree = scratch.path(name);
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join(format!("{name}.txt")), text).unwrap();
    let image = scratch.path(&format!("{name}.erofs"));
    vmpod_sandbox::erofs::build(&tree, &image, &[]).unwrap();
    image
}

/// Runs `sh -c script` in a container of these layers (busybox first); returns its status
/// and stdout.
fn run(sandbox: &mut Sandbox, id: &str, layers: &[&str], script: &str) -> (i32, String) {
    let mut spec = shell_spec(script);
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let rootfs = Rootfs {
        layers: std::iter::once("busybox")
            .chain(layers.iter().copied())
            .map(String::from)
            .collect(),
        upper: Upper::Tmpfs,
    };
    // Far above a container's run on TCG: only a hang reaches it.
    run_container(sandbox, id, spec, rootfs, Duration::from_secs(300))
}

fn images_come_and_go_through_the_slots(backend: Backend, boot: Boot, tag: &str) {
    let scratch = Scratch::new(tag);
    let first = image(&scratch, "first", "from the first image\n");
    let second = image(&scratch, "second", "from the second image\n");
    let third = image(&scratch, "third", "from the third image\n");
    let mut sandbox = busybox_sandbox(backend, boot, 256);
    let state_dir = sandbox.state_dir.clone();
    let slots = sandbox.slots().unwrap();
    assert_eq!(slots.capacity(), backend.spare_slots(1, false));
    // Another thread, as the shim's RPC threads use it.
    let inserting = slots.clone();
    let (a, b) = std::thread::spawn(move || {
        (
            inserting.insert(&first).unwrap(),
            inserting.insert(&second).unwrap(),
        )
    })
    .join()
    .unwrap();
    assert_ne!(a, b);
    let (status, out) = run(
        &mut sandbox,
        "both",
        &[&a, &b],
        "cat /first.txt /second.txt",
    );
    assert_eq!(
        (status, out.as_str()),
        (0, "from the first image\nfrom the second image\n")
    );

    slots.eject(&a).unwrap();
    let c = slots.insert(&third).unwrap();
    assert_eq!(c, a, "the emptied slot is reused");
    let (status, out) = run(
        &mut sandbox,
        "third",
        &[&c],
        "cat /third.txt; test -e /first.txt && echo stale",
    );
    assert_eq!((status, out.as_str()), (1, "from the third image\n"));

    let mut filled = 2;
    while filled < slots.capacity() {
        slots.insert(&third).unwrap();
        filled += 1;
    }
    let err = slots.insert(&third).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "all {} spare disk slots of sandbox {} are in use",
            slots.capacity(),
            sandbox.id
        )
    );
    let err = slots.eject("slot99").unwrap_err().to_string();
    assert!(
        err.contains("no inserted disk with serial \"slot99\""),
        "{err}"
    );
    let missing = scratch.path("missing.erofs");
    slots.eject(&c).unwrap();
    let err = vmpod_sandbox::error::chain(&slots.insert(&missing).unwrap_err());
    assert!(
        err.starts_with(&format!("disk image {}: ", missing.display())),
        "{err}"
    );

    drop(sandbox);
    assert!(!state_dir.exists(), "{} is left", state_dir.display());
    let state = state_dir.display().to_string();
    assert_eq!(support::processes_mentioning(&state), Vec::new());
    let err = slots.insert(&third).unwrap_err().to_string();
    assert!(err.contains("disk backend"), "after the sandbox: {err}");
}

#[test]
fn qemu_slots_take_images_after_boot_and_give_them_back() {
    images_come_and_go_through_the_slots(
        Backend::Qemu { kvm: false },
        Boot::Template,
        "slots-qemu",
    );
}

#[test]
fn qemu_cold_boot_has_the_same_slots() {
    images_come_and_go_through_the_slots(
        Backend::Qemu { kvm: false },
        Boot::Cold,
        "slots-qemu-cold",
    );
}

/// vmpod-vmm on this host's KVM: slow on kvm-pvm (a boot is most of a minute), so one run.
#[test]
#[ignore = "boots vmpod-vmm on KVM: a minute or more on kvm-pvm; run with --ignored"]
fn vmm_slots_take_images_after_boot_and_give_them_back() {
    support::require_kvm();
    images_come_and_go_through_the_slots(Backend::Vmm, Boot::Cold, "slots-vmm");
}
