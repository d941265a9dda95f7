//! The KVM state of a paused VM and its vCPUs, as a snapshot holds it, and the order it must
//! be put back in. What a template saves and every clone restores; devices and memory are
//! saved beside it.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{action} {what}: {source}")]
    Kvm {
        action: &'static str,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM took {set} of the {wanted} saved MSRs (from index {first_refused:#x} on)")]
    Msrs {
        set: usize,
        wanted: usize,
        first_refused: u32,
    },
    #[error("the saved CPUID has {len} entries, more than KVM's {max}")]
    Cpuid { len: usize, max: usize },
    #[error("the snapshot has no CPUID for a vCPU and none was given")]
    NoCpuid,
    #[error("an MSR list of {len} entries is longer than KVM's {max} per call")]
    MsrChunk { len: usize, max: usize },
}

fn save(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Kvm {
        action: "save",
        what,
        source,
    }
}

fn restore(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Kvm {
        action: "restore",
        what,
        source,
    }
}

/// One vCPU, out of KVM_RUN.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub msrs: Vec<kvm_msr_entry>,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub vcpu_events: kvm_vcpu_events,
    pub debugregs: kvm_debugregs,
    /// The CPUID the guest ran with: a clone gets exactly the features its kernel saw at
    /// boot, whatever this host's KVM would offer now. Empty in snapshots older than this.
    #[serde(default)]
    pub cpuid: Vec<kvm_cpuid_entry2>,
}

/// The VM's in-kernel devices and clock.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// The most MSRs one KVM_GET_MSRS or KVM_SET_MSRS carries; longer lists go in chunks. KVM
/// refuses `nmsrs >= 256` with E2BIG, one less than kvm-bindings' list capacity.
const MSR_CHUNK: usize = kvm_bindings::KVM_MAX_MSR_ENTRIES - 1;

/// A KVM MSR list of `entries`, at most MSR_CHUNK of them.
fn msr_list(entries: &[kvm_msr_entry]) -> Result<Msrs, StateError> {
    Msrs::from_entries(entries).map_err(|_| StateError::MsrChunk {
        len: entries.len(),
        max: MSR_CHUNK,
    })
}

/// A KVM MSR list asking for `indices`, at most MSR_CHUNK of them.
fn msr_request(indices: &[u32]) -> Result<Msrs, StateError> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    msr_list(&entries)
}

/// Reads the MSRs `indices` in chunks KVM accepts; an error names the first one refused.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut out = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(MSR_CHUNK) {
        let mut msrs = msr_request(chunk)?;
        let read = vcpu.get_msrs(&mut msrs).map_err(save("MSRs"))?;
        if read != chunk.len() {
            return Err(StateError::Msrs {
                set: out.len() + read,
                wanted: indices.len(),
                first_refused: chunk[read],
            });
        }
        out.extend_from_slice(msrs.as_slice());
    }
    Ok(out)
}

/// The MSRs worth saving: those KVM lists that this vCPU lets us read. Some hosts list MSRs
/// they then refuse (kvm-pvm exposes few), so each refused one is left out.
pub fn readable_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<u32>, StateError> {
    let listed = kvm
        .get_msr_index_list()
        .map_err(save("the MSR index list"))?;
    let mut readable = Vec::new();
    let mut rest: Vec<u32> = listed.as_slice().to_vec();
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let mut msrs = msr_request(chunk)?;
        // KVM reads in order and stops at the first MSR it refuses, which is left out.
        let read = vcpu.get_msrs(&mut msrs).map_err(save("MSRs"))?;
        readable.extend_from_slice(&chunk[..read]);
        let done = if read < chunk.len() { read + 1 } else { read };
        rest.drain(..done);
    }
    Ok(readable)
}

pub fn save_vcpu(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, StateError> {
    // The mp_state first: reading it settles pending APIC events into the state.
    let mp_state = vcpu.get_mp_state().map_err(save("the MP state"))?;
    let regs = vcpu.get_regs().map_err(save("registers"))?;
    let sregs = vcpu.get_sregs().map_err(save("special registers"))?;
    let xsave = vcpu.get_xsave().map_err(save("XSAVE state"))?;
    let xcrs = vcpu.get_xcrs().map_err(save("XCRs"))?;
    let debugregs = vcpu.get_debug_regs().map_err(save("debug registers"))?;
    let lapic = vcpu.get_lapic().map_err(save("the LAPIC"))?;
    let cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(save("CPUID"))?;
    let msrs = read_msrs(vcpu, msr_indices)?;
    // Last: the events pending at the moment of the snapshot.
    let vcpu_events = vcpu.get_vcpu_events().map_err(save("vCPU events"))?;
    Ok(VcpuState {
        regs,
        sregs,
        xsave,
        xcrs,
        msrs,
        cpuid: cpuid.as_slice().to_vec(),
        lapic,
        mp_state,
        vcpu_events,
        debugregs,
    })
}

/// Puts a saved vCPU back, in the order KVM needs: CPUID before anything that depends on the
/// features it grants; special registers before the LAPIC (the APIC base MSR lives there) and
/// the LAPIC before the MSRs (TSC deadline needs the LAPIC mode); events last. The saved CPUID
/// is used; `fallback` only for a snapshot that has none.
pub fn restore_vcpu(
    vcpu: &VcpuFd,
    fallback: Option<&CpuId>,
    state: &VcpuState,
) -> Result<(), StateError> {
    let saved;
    let cpuid = if state.cpuid.is_empty() {
        fallback.ok_or(StateError::NoCpuid)?
    } else {
        saved = CpuId::from_entries(&state.cpuid).map_err(|_| StateError::Cpuid {
            len: state.cpuid.len(),
            max: KVM_MAX_CPUID_ENTRIES,
        })?;
        &saved
    };
    vcpu.set_cpuid2(cpuid).map_err(restore("CPUID"))?;
    vcpu.set_mp_state(state.mp_state)
        .map_err(restore("the MP state"))?;
    vcpu.set_regs(&state.regs).map_err(restore("registers"))?;
    vcpu.set_sregs(&state.sregs)
        .map_err(restore("special registers"))?;
    // SAFETY: the XSAVE area was saved by KVM for a vCPU of the same CPUID.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(restore("XSAVE state"))?;
    vcpu.set_xcrs(&state.xcrs).map_err(restore("XCRs"))?;
    vcpu.set_debug_regs(&state.debugregs)
        .map_err(restore("debug registers"))?;
    vcpu.set_lapic(&state.lapic).map_err(restore("the LAPIC"))?;
    let mut done = 0;
    for chunk in state.msrs.chunks(MSR_CHUNK) {
        let set = vcpu.set_msrs(&msr_list(chunk)?).map_err(restore("MSRs"))?;
        if set != chunk.len() {
            return Err(StateError::Msrs {
                set: done + set,
                wanted: state.msrs.len(),
                first_refused: chunk[set].index,
            });
        }
        done += set;
    }
    vcpu.set_vcpu_events(&state.vcpu_events)
        .map_err(restore("vCPU events"))?;
    Ok(())
}

fn irqchip(vm: &VmFd, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, StateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(save(what))?;
    Ok(chip)
}

pub fn save_vm(vm: &VmFd) -> Result<VmState, StateError> {
    Ok(VmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER, "the master PIC")?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE, "the slave PIC")?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC, "the IOAPIC")?,
        pit: vm.get_pit2().map_err(save("the PIT"))?,
        clock: vm.get_clock().map_err(save("the clock"))?,
    })
}

/// Puts the VM's devices and clock back; the irqchip and PIT must exist already.
pub fn restore_vm(vm: &VmFd, state: &VmState) -> Result<(), StateError> {
    vm.set_pit2(&state.pit).map_err(restore("the PIT"))?;
    // The clock continues from the snapshot's time, not from whenever it was saved in
    // wall-clock terms: the guest is told the real time by the agent after a restore.
    let mut clock = state.clock;
    clock.flags = 0;
    vm.set_clock(&clock).map_err(restore("the clock"))?;
    vm.set_irqchip(&state.pic_master)
        .map_err(restore("the master PIC"))?;
    vm.set_irqchip(&state.pic_slave)
        .map_err(restore("the slave PIC"))?;
    vm.set_irqchip(&state.ioapic)
        .map_err(restore("the IOAPIC"))?;
    Ok(())
}
