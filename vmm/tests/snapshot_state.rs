//! Saving a vCPU's and a VM's KVM state and putting it into fresh ones, on the real KVM: what
//! every restored clone of a template relies on.

mod common;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;
use vm_memory::GuestMemoryMmap;
use vmpod_vmm::memory::create_guest_memory;
use vmpod_vmm::vstate::snapshot::{
    readable_msrs, restore_vcpu, restore_vm, save_vcpu, save_vm, VcpuState, VmState,
};
use vmpod_vmm::vstate::vcpu::Vcpu;
use vmpod_vmm::vstate::vm::Vm;

/// A VM of one configured vCPU on the real KVM, and what a second one needs.
struct Fresh {
    kvm: Kvm,
    cpuid: CpuId,
    mem: GuestMemoryMmap,
    vm: Vm,
    vcpu: Vcpu,
}

fn fresh() -> Fresh {
    common::require_kvm();
    let kvm = Kvm::new().expect("open /dev/kvm");
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported CPUID");
    let mem = create_guest_memory(16 << 20).expect("guest memory");
    let vm = Vm::new(&kvm, &mem).expect("VM");
    let vcpu = Vcpu::new(vm.fd(), 0).expect("vCPU");
    vcpu.configure(&cpuid, None).expect("configure");
    Fresh {
        kvm,
        cpuid,
        mem,
        vm,
        vcpu,
    }
}

#[test]
fn vcpu_and_vm_state_round_trip_into_a_fresh_vm() {
    let Fresh {
        kvm,
        cpuid,
        mem,
        vm,
        vcpu,
    } = fresh();
    let mut regs = vcpu.fd().get_regs().unwrap();
    regs.rax = 0x1234_5678_9abc_def0;
    regs.rbx = 42;
    regs.rip = 0x10_0000;
    regs.rflags = 0x2;
    vcpu.fd().set_regs(&regs).unwrap();
    let msrs = readable_msrs(&kvm, vcpu.fd()).expect("readable MSRs");
    assert!(!msrs.is_empty());
    let saved = save_vcpu(vcpu.fd(), &msrs).expect("save the vCPU");
    let saved_vm = save_vm(vm.fd()).expect("save the VM");

    // Through the snapshot's encoding, as a clone reads it.
    let saved: VcpuState = serde_json::from_slice(&serde_json::to_vec(&saved).unwrap()).unwrap();
    let saved_vm: VmState =
        serde_json::from_slice(&serde_json::to_vec(&saved_vm).unwrap()).unwrap();

    let clone_vm = Vm::new(&kvm, &mem).expect("second VM");
    let clone = Vcpu::new(clone_vm.fd(), 0).expect("second vCPU");
    restore_vm(clone_vm.fd(), &saved_vm).expect("restore the VM");
    restore_vcpu(clone.fd(), Some(&cpuid), &saved).expect("restore the vCPU");

    let again = save_vcpu(clone.fd(), &msrs).expect("save the clone");
    assert_eq!(again.regs.rax, 0x1234_5678_9abc_def0);
    assert_eq!(again.regs.rbx, 42);
    assert_eq!(again.regs.rip, 0x10_0000);
    assert_eq!(again.sregs.cr0, saved.sregs.cr0);
    assert_eq!(again.sregs.apic_base, saved.sregs.apic_base);
    assert_eq!(again.lapic.regs[..], saved.lapic.regs[..]);
    assert_eq!(again.mp_state.mp_state, saved.mp_state.mp_state);
    // The CPUID travels with the snapshot: the clone's vCPU has the entries the saved one had.
    assert!(!saved.cpuid.is_empty());
    assert_eq!(again.cpuid.len(), saved.cpuid.len());
    for (x, y) in again.cpuid.iter().zip(&saved.cpuid) {
        assert_eq!(
            (x.function, x.index, x.eax, x.ebx, x.ecx),
            (y.function, y.index, y.eax, y.ebx, y.ecx)
        );
    }
    let clone_state = save_vm(clone_vm.fd()).expect("save the clone VM");
    assert_eq!(clone_state.ioapic.chip_id, saved_vm.ioapic.chip_id);
    // SAFETY: reading the union's IOAPIC variant of chips saved as IOAPICs.
    let (a, b) = unsafe { (clone_state.ioapic.chip.ioapic, saved_vm.ioapic.chip.ioapic) };
    assert_eq!(a.base_address, b.base_address);
    // MSRs other than the time stamp counter (which moves on) come back as saved.
    const MSR_IA32_TSC: u32 = 0x10;
    for (x, y) in again.msrs.iter().zip(&saved.msrs) {
        assert_eq!(x.index, y.index);
        if x.index != MSR_IA32_TSC {
            assert_eq!(x.data, y.data, "MSR {:#x}", x.index);
        }
    }
}

#[test]
fn more_msrs_than_one_kvm_call_carries_are_saved_and_restored_in_chunks() {
    let Fresh {
        kvm,
        cpuid,
        mem,
        vm,
        vcpu,
    } = fresh();
    let readable = readable_msrs(&kvm, vcpu.fd()).expect("readable MSRs");
    // The readable list, repeated past the 255 entries KVM takes per call: a host with that many
    // MSRs (hardware KVM lists more every few kernels) must not fail the save.
    let wanted: Vec<u32> = readable.iter().copied().cycle().take(300).collect();
    let saved = save_vcpu(vcpu.fd(), &wanted).expect("save 300 MSRs");
    assert_eq!(saved.msrs.len(), 300);
    assert!(saved.msrs.iter().zip(&wanted).all(|(m, &i)| m.index == i));
    let clone_vm = Vm::new(&kvm, &mem).expect("second VM");
    let clone = Vcpu::new(clone_vm.fd(), 0).expect("second vCPU");
    restore_vm(clone_vm.fd(), &save_vm(vm.fd()).expect("save the VM")).expect("restore VM");
    restore_vcpu(clone.fd(), Some(&cpuid), &saved).expect("restore 300 MSRs");
}

fn vmm_with_config(
    scratch: &common::Scratch,
    name: &str,
    config: serde_json::Value,
) -> std::process::Child {
    let path = scratch.path(&format!("{name}.json"));
    std::fs::write(&path, config.to_string()).unwrap();
    std::process::Command::new(common::vmm_binary())
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vmpod-vmm")
}

/// Runs vmpod-vmm with `config` to its end.
fn finished(
    scratch: &common::Scratch,
    name: &str,
    config: serde_json::Value,
) -> std::process::Output {
    vmm_with_config(scratch, name, config)
        .wait_with_output()
        .unwrap()
}

fn assert_exit_0(out: &std::process::Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_counting_guest_continues_where_its_snapshot_left_it_in_ten_copies() {
    common::require_kvm();
    let scratch = common::Scratch::new("snapshot");
    let (state, memory) = (scratch.path("state.json"), scratch.path("memory"));
    let out = finished(
        &scratch,
        "template",
        serde_json::json!({
            "kernel": common::tiny_guest(),
            "cmdline": "tiny=snap",
            "memory_mib": 16,
            "console": scratch.path("template.log"),
            "snapshot": {"state": state, "memory": memory},
        }),
    );
    assert_exit_0(&out);
    assert_eq!(
        std::fs::read_to_string(scratch.path("template.log")).unwrap(),
        "0\n1\n2\n3\n4\n"
    );
    let template_memory = std::fs::read(&memory).unwrap();

    let clones: Vec<_> = (0..10)
        .map(|i| {
            vmm_with_config(
                &scratch,
                &format!("clone{i}"),
                serde_json::json!({
                    "console": scratch.path(&format!("clone{i}.log")),
                    "restore": {"state": state, "memory": memory},
                }),
            )
        })
        .collect();
    for (i, clone) in clones.into_iter().enumerate() {
        let out = clone.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "clone {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(scratch.path(&format!("clone{i}.log"))).unwrap(),
            "5\n6\n7\n8\n9\nK\ntiny: reset\n",
            "clone {i}"
        );
    }
    // Clones write their own copies of the pages; the template stays as saved.
    assert!(
        std::fs::read(&memory).unwrap() == template_memory,
        "a clone wrote the template"
    );

    // A damaged or foreign snapshot is refused by name, before any guest runs.
    let text = std::fs::read_to_string(&state).unwrap();
    let cases = [
        (
            "truncated",
            text[..text.len() / 2].to_string(),
            "not a vmpod-vmm snapshot",
        ),
        (
            "version",
            text.replacen("\"version\":1", "\"version\":99", 1),
            "version 99",
        ),
        (
            "fifo",
            text.replacen(
                "\"in_buffer\":[]",
                &format!("\"in_buffer\":{:?}", [7u8; 100]),
                1,
            ),
            "more than a UART's 64",
        ),
        (
            "foreign",
            "{\"format\":\"other\"}".to_string(),
            "not a vmpod-vmm snapshot",
        ),
    ];
    for (name, content, needle) in cases {
        let bad = scratch.path(&format!("{name}.json.state"));
        std::fs::write(&bad, content).unwrap();
        let out = finished(
            &scratch,
            name,
            serde_json::json!({"console": "off", "restore": {"state": bad, "memory": memory}}),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
    }
    // The devices come back as the snapshot has them, and must be the ones it has.
    let with_rng = scratch.path("rng-state.json");
    let rng_memory = scratch.path("rng-memory");
    let out = finished(
        &scratch,
        "rng-template",
        serde_json::json!({
            "kernel": common::tiny_guest(), "cmdline": "tiny=snap", "memory_mib": 16,
            "console": "off", "rng": true,
            "snapshot": {"state": with_rng, "memory": rng_memory},
        }),
    );
    assert_exit_0(&out);
    let out = finished(
        &scratch,
        "rng-clone",
        serde_json::json!({
            "console": scratch.path("rng-clone.log"), "rng": true,
            "restore": {"state": with_rng, "memory": rng_memory},
        }),
    );
    assert_exit_0(&out);
    assert!(std::fs::read_to_string(scratch.path("rng-clone.log"))
        .unwrap()
        .starts_with("5\n"));
    let out = finished(
        &scratch,
        "rng-missing",
        serde_json::json!({"console": "off", "restore": {"state": with_rng, "memory": rng_memory}}),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the snapshot has 1 virtio devices, the config 0"),
        "{stderr}"
    );

    let short = scratch.path("short-memory");
    std::fs::write(&short, &template_memory[..4096]).unwrap();
    let out = finished(
        &scratch,
        "short",
        serde_json::json!({"console": "off", "restore": {"state": state, "memory": short}}),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds 4096 bytes"), "{stderr}");
}
