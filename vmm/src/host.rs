//! Facts about the host's KVM that change how a guest must be started.

use std::path::Path;

use crate::cpuid::CpuFeature;

/// kvm-pvm ("pagetable-based VM") runs a non-PVM guest by emulating its kernel-mode code; the
/// guest needs CPUID masking and our kernel's workarounds there (guest-kernel/README.md).
pub fn is_kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Command-line options our guest kernel needs on kvm-pvm: features whose instructions its
/// emulator lacks cleared in the kernel's own view (kvm-pvm passes most CPUID bits through from
/// the host, so the CPUID table alone cannot hide them), no speculation mitigations, and our
/// patches' switches (the last one has APs started through the VMM's AP start port).
pub fn kvm_pvm_cmdline(hidden: &[CpuFeature]) -> String {
    let mut cmdline = String::from(
        "noxsave mitigations=off vmpod_no_int3_selftest vmpod_no_fpu_drop_fwait \
         vmpod_syscall_fault_fallback vmpod_ap_start_port",
    );
    if hidden.iter().any(|f| f.linux_name().is_some()) {
        let names: Vec<&str> = hidden.iter().filter_map(|f| f.linux_name()).collect();
        cmdline.push_str(" clearcpuid=");
        cmdline.push_str(&names.join(","));
    }
    cmdline
}

/// What the machine model itself needs: reboot through the i8042 (there is no ACPI), a panic
/// flagged as a warm reboot so the VMM can tell it from a normal stop, and no PCI probing.
pub const MACHINE_CMDLINE: &str = "reboot=k,panic_warm panic=-1 pci=off";
