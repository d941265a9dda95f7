//! The CPUID a vCPU sees: KVM's supported set, with per-vCPU topology filled in and a mask of
//! features the guest must not use.
//!
//! The mask exists for hosts whose KVM emulates guest kernel code (kvm-pvm running a non-PVM
//! kernel): its emulator lacks `cmpxchg16b`, `xrstor`, `popcnt` and friends, and a guest that
//! sees those bits uses them in kernel mode and dies with KVM_EXIT_INTERNAL_ERROR.
//!
//! kvm-pvm only lets the VMM's CPUID table decide the few bits it virtualises (cx16, osxsave,
//! x2apic, ...); the rest come from the host whatever the table says (measured with the tiny
//! guest's `tiny=cpuid`). So on kvm-pvm the same list also goes to the guest kernel as
//! `clearcpuid=` (see `host::kvm_pvm_cmdline`).

use kvm_bindings::kvm_cpuid_entry2;
use serde::{Deserialize, Serialize};

/// A CPUID feature bit, named as in /proc/cpuinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuFeature {
    Cx16,
    Popcnt,
    Xsave,
    Avx,
    Rdrand,
    Fsgsbase,
    Bmi1,
    Avx2,
    Bmi2,
    Invpcid,
    Rdseed,
    Smap,
    Pku,
    /// KVM paravirtual IPIs (a `vmcall` per IPI).
    PvSendIpi,
    /// KVM paravirtual yield to a preempted vCPU (a `vmcall`).
    PvSchedYield,
    /// KVM paravirtual spinlock kick (a `vmcall`).
    PvUnhalt,
}

/// Features hidden on kvm-pvm hosts; each one was seen to kill or stall a guest there (see
/// guest-kernel/README.md). Hiding xsave also hides the AVX family and the 0xd leaf. The KVM
/// paravirtual features that issue `vmcall`s go too: kvm-pvm livelocks on them (an SMP guest
/// hung in `__send_ipi_mask`).
pub const KVM_PVM_HIDDEN: &[CpuFeature] = &[
    CpuFeature::Cx16,
    CpuFeature::Popcnt,
    CpuFeature::Xsave,
    CpuFeature::Avx,
    CpuFeature::Rdrand,
    CpuFeature::Fsgsbase,
    CpuFeature::Bmi1,
    CpuFeature::Avx2,
    CpuFeature::Bmi2,
    CpuFeature::Invpcid,
    CpuFeature::Rdseed,
    CpuFeature::Smap,
    CpuFeature::Pku,
    CpuFeature::PvSendIpi,
    CpuFeature::PvSchedYield,
    CpuFeature::PvUnhalt,
];

/// KVM's paravirtual feature leaf (`KVM_CPUID_FEATURES`).
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;

#[derive(Clone, Copy)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
}

impl CpuFeature {
    /// The name Linux uses for the flag (/proc/cpuinfo, `clearcpuid=`); the KVM paravirtual
    /// features have none there.
    pub fn linux_name(self) -> Option<&'static str> {
        Some(match self {
            CpuFeature::Cx16 => "cx16",
            CpuFeature::Popcnt => "popcnt",
            CpuFeature::Xsave => "xsave",
            CpuFeature::Avx => "avx",
            CpuFeature::Rdrand => "rdrand",
            CpuFeature::Fsgsbase => "fsgsbase",
            CpuFeature::Bmi1 => "bmi1",
            CpuFeature::Avx2 => "avx2",
            CpuFeature::Bmi2 => "bmi2",
            CpuFeature::Invpcid => "invpcid",
            CpuFeature::Rdseed => "rdseed",
            CpuFeature::Smap => "smap",
            CpuFeature::Pku => "pku",
            CpuFeature::PvSendIpi | CpuFeature::PvSchedYield | CpuFeature::PvUnhalt => return None,
        })
    }

    /// (leaf, subleaf, register, bits) that carry this feature.
    fn location(self) -> (u32, u32, Reg, u32) {
        const OSXSAVE: u32 = 1 << 27;
        const OSPKE: u32 = 1 << 4;
        match self {
            CpuFeature::Cx16 => (1, 0, Reg::Ecx, 1 << 13),
            CpuFeature::Popcnt => (1, 0, Reg::Ecx, 1 << 23),
            CpuFeature::Xsave => (1, 0, Reg::Ecx, (1 << 26) | OSXSAVE),
            CpuFeature::Avx => (1, 0, Reg::Ecx, 1 << 28),
            CpuFeature::Rdrand => (1, 0, Reg::Ecx, 1 << 30),
            CpuFeature::Fsgsbase => (7, 0, Reg::Ebx, 1),
            CpuFeature::Bmi1 => (7, 0, Reg::Ebx, 1 << 3),
            CpuFeature::Avx2 => (7, 0, Reg::Ebx, 1 << 5),
            CpuFeature::Bmi2 => (7, 0, Reg::Ebx, 1 << 8),
            CpuFeature::Invpcid => (7, 0, Reg::Ebx, 1 << 10),
            CpuFeature::Rdseed => (7, 0, Reg::Ebx, 1 << 18),
            CpuFeature::Smap => (7, 0, Reg::Ebx, 1 << 20),
            CpuFeature::Pku => (7, 0, Reg::Ecx, (1 << 3) | OSPKE),
            CpuFeature::PvSendIpi => (KVM_FEATURES_LEAF, 0, Reg::Eax, 1 << 11),
            CpuFeature::PvSchedYield => (KVM_FEATURES_LEAF, 0, Reg::Eax, 1 << 13),
            CpuFeature::PvUnhalt => (KVM_FEATURES_LEAF, 0, Reg::Eax, 1 << 7),
        }
    }
}

/// Fills in what differs per vCPU and removes the hidden features.
pub fn customize(
    entries: &mut [kvm_cpuid_entry2],
    cpu_index: u8,
    cpu_count: u8,
    hide: &[CpuFeature],
) {
    const HTT: u32 = 1 << 28;
    const HYPERVISOR: u32 = 1 << 31;
    const XSAVE_LEAF: u32 = 0xd;

    let hides_xsave = hide.contains(&CpuFeature::Xsave);
    for entry in entries.iter_mut() {
        match entry.function {
            1 => {
                // Initial APIC id and logical processor count, which the guest uses for topology.
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(cpu_index) << 24)
                    | (u32::from(cpu_count) << 16);
                if cpu_count > 1 {
                    entry.edx |= HTT;
                } else {
                    entry.edx &= !HTT;
                }
                entry.ecx |= HYPERVISOR;
            }
            0xb | 0x1f => entry.edx = u32::from(cpu_index),
            XSAVE_LEAF if hides_xsave => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            _ => {}
        }
        for feature in hide {
            let (leaf, subleaf, reg, bits) = feature.location();
            if entry.function == leaf && entry.index == subleaf {
                match reg {
                    Reg::Eax => entry.eax &= !bits,
                    Reg::Ebx => entry.ebx &= !bits,
                    Reg::Ecx => entry.ecx &= !bits,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        }
    }

    #[test]
    fn pvm_mask_clears_every_listed_bit_and_nothing_else_in_leaf_1_ecx() {
        let mut entries = [
            entry(1, 0),
            entry(7, 0),
            entry(0xd, 0),
            entry(0xd, 1),
            entry(KVM_FEATURES_LEAF, 0),
        ];
        customize(&mut entries, 0, 1, KVM_PVM_HIDDEN);
        let ecx = entries[0].ecx;
        for bit in [13, 23, 26, 27, 28, 30] {
            assert_eq!(ecx & (1 << bit), 0, "leaf 1 ecx bit {bit} still set");
        }
        assert_ne!(ecx & (1 << 0), 0, "sse3 must stay");
        assert_ne!(ecx & (1 << 31), 0, "hypervisor bit must be set");
        for bit in [0, 3, 5, 8, 10, 18, 20] {
            assert_eq!(
                entries[1].ebx & (1 << bit),
                0,
                "leaf 7 ebx bit {bit} still set"
            );
        }
        assert_eq!(entries[1].ecx & 0b11000, 0, "pku/ospke still set");
        assert_eq!(
            (entries[2].eax, entries[3].eax),
            (0, 0),
            "xsave leaf not emptied"
        );
        let kvm = entries[4].eax;
        assert_eq!(
            kvm & ((1 << 7) | (1 << 11) | (1 << 13)),
            0,
            "PV vmcall features left"
        );
        assert_ne!(kvm & 1, 0, "kvmclock must stay");
    }

    #[test]
    fn each_vcpu_gets_its_own_apic_id_and_the_count() {
        let mut entries = [entry(1, 0), entry(0xb, 0)];
        customize(&mut entries, 3, 4, &[]);
        assert_eq!(entries[0].ebx >> 24, 3);
        assert_eq!((entries[0].ebx >> 16) & 0xff, 4);
        assert_eq!(entries[1].edx, 3);
        assert_ne!(
            entries[1].eax, 0,
            "nothing hidden, leaf 0xb untouched otherwise"
        );
    }

    #[test]
    fn empty_mask_leaves_features_alone() {
        let mut entries = [entry(7, 0)];
        customize(&mut entries, 0, 1, &[]);
        assert_eq!(entries[0].ebx, u32::MAX);
    }

    #[test]
    fn feature_names_are_cpuinfo_names() {
        let parsed: Vec<CpuFeature> =
            serde_json::from_str(r#"["cx16","rdseed","pku","pv_send_ipi"]"#).unwrap();
        assert_eq!(
            parsed,
            [
                CpuFeature::Cx16,
                CpuFeature::Rdseed,
                CpuFeature::Pku,
                CpuFeature::PvSendIpi
            ]
        );
    }
}
