//! One vCPU: its initial state (CPUID, MSRs, registers, LAPIC) and its run loop, which hands
//! port I/O to the device bus and reports why the guest stopped.

use std::sync::mpsc::Receiver;
use std::sync::Arc;

use kvm_bindings::{
    kvm_fpu, kvm_mp_state, kvm_msr_entry, CpuId, Msrs, KVM_MP_STATE_RUNNABLE,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::boot::regs::{initial_regs, initial_sregs, ApStart, EntryPoint};
use crate::devices::boot_timer::BOOT_DONE;
use crate::devices::{Bus, BOOT_TIMER_PORT};
use crate::lifecycle::{ExitReason, Lifecycle};
use crate::seccomp::ThreadStart;
use crate::vstate::pause::Pause;
use crate::vstate::snapshot as snapshot_state;

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default type write-back: without it guest RAM would be uncacheable on
/// hardware that honours guest MTRRs.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;
/// x87 control word and MXCSR after FNINIT / reset.
const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {index}: {source}")]
    Create {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("cannot set up vCPU {index}: {what}: {source}")]
    Configure {
        index: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot set up vCPU {index}: KVM took only {set} of {wanted} MSRs")]
    Msrs {
        index: u8,
        set: usize,
        wanted: usize,
    },
    #[error("cannot start the thread of vCPU {index}: {source}")]
    Spawn { index: u8, source: std::io::Error },
}

pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    /// Shared by every vCPU of a VM that is saved at the guest's ready byte.
    pause: Option<Arc<Pause>>,
}

impl Vcpu {
    pub fn new(vm: &VmFd, index: u8) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Vcpu {
            index,
            fd,
            pause: None,
        })
    }

    /// Makes this vCPU take part in saving the VM at the guest's ready byte: it leads if it
    /// sees the byte, and parks when the leader pulls it out.
    pub fn snapshot_when_ready(&mut self, pause: Arc<Pause>) {
        self.pause = Some(pause);
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    /// The KVM vCPU, for saving and restoring its state while it is out of KVM_RUN.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Sets the state every vCPU starts with, and for the boot vCPU (`entry` given) the boot
    /// protocol's registers. The other vCPUs wait for the guest's INIT/SIPI.
    pub fn configure(&self, cpuid: &CpuId, entry: Option<EntryPoint>) -> Result<(), VcpuError> {
        let index = self.index;
        let err = |what| self.error(what);
        self.fd.set_cpuid2(cpuid).map_err(err("CPUID"))?;

        let msrs = [
            (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
            (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
        ];
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Msrs {
            index,
            set: 0,
            wanted: entries.len(),
        })?;
        let set = self.fd.set_msrs(&msrs).map_err(err("MSRs"))?;
        if set != entries.len() {
            return Err(VcpuError::Msrs {
                index,
                set,
                wanted: entries.len(),
            });
        }

        let mut lapic = self.fd.get_lapic().map_err(err("reading the LAPIC"))?;
        set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
        self.fd.set_lapic(&lapic).map_err(err("LAPIC"))?;

        if let Some(entry) = entry {
            let fpu = kvm_fpu {
                fcw: FPU_CONTROL_WORD,
                mxcsr: MXCSR_DEFAULT,
                ..Default::default()
            };
            self.fd.set_fpu(&fpu).map_err(err("FPU"))?;
            self.set_entry_registers(entry)?;
        }
        Ok(())
    }

    /// Runs the vCPU on its own thread until the guest stops it; the reason goes to `lifecycle`.
    /// The thread confines itself and waits for the others first (`thread_start`).
    /// With `start_request`, the thread first waits for the guest to ask (through the AP start
    /// port) for this vCPU to start, and enters 64-bit mode at the address it names.
    pub fn start(
        mut self,
        bus: Arc<Bus>,
        lifecycle: Arc<Lifecycle>,
        start_request: Option<Receiver<ApStart>>,
        thread_start: ThreadStart,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                if let Some(reason) = self.run_thread(&bus, thread_start, start_request) {
                    lifecycle.stop(reason);
                }
                // The devices' last reference must not be dropped here: their drops remove
                // host sockets, which this thread's filter forbids (a SIGSYS would kill the
                // VMM as it exits). The event loop cleans up; the process's exit frees the rest.
                std::mem::forget(bus);
            })
            .map(|_| ())
            .map_err(|source| VcpuError::Spawn { index, source })
    }

    /// The thread's life: confined, started (an AP waits for the guest's request), then the
    /// guest runs. `None` when the VM ended before this vCPU was needed.
    fn run_thread(
        &mut self,
        bus: &Bus,
        thread_start: ThreadStart,
        start_request: Option<Receiver<ApStart>>,
    ) -> Option<ExitReason> {
        let index = self.index;
        match thread_start.enter() {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => return Some(ExitReason::ThreadFailed(format!("vCPU {index}: {e}"))),
        }
        if let Some(request) = start_request {
            // No request before the VM ends: the sender is gone and so is the thread.
            let start = request.recv().ok()?;
            if let Err(e) = self.enter_64bit(start) {
                return Some(ExitReason::GuestCrash(e.to_string()));
            }
        }
        Some(self.run_loop(bus))
    }

    /// Puts an application processor straight into 64-bit mode where the guest asked and makes
    /// it runnable, instead of the real-mode INIT/SIPI start.
    fn enter_64bit(&self, start: ApStart) -> Result<(), VcpuError> {
        self.set_entry_registers(EntryPoint::Ap64(start))?;
        let runnable = kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        };
        self.fd
            .set_mp_state(runnable)
            .map_err(self.error("MP state"))
    }

    fn set_entry_registers(&self, entry: EntryPoint) -> Result<(), VcpuError> {
        let mut sregs = self.fd.get_sregs().map_err(self.error("reading sregs"))?;
        initial_sregs(entry, &mut sregs);
        self.fd.set_sregs(&sregs).map_err(self.error("sregs"))?;
        self.fd
            .set_regs(&initial_regs(entry))
            .map_err(self.error("registers"))
    }

    fn error(&self, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuError {
        let index = self.index;
        move |source| VcpuError::Configure {
            index,
            what,
            source,
        }
    }

    fn run_loop(&mut self, bus: &Bus) -> ExitReason {
        if let Some(pause) = &self.pause {
            pause.register(usize::from(self.index), self.fd.get_kvm_run());
        }
        loop {
            match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    let ready = port == BOOT_TIMER_PORT && data.first() == Some(&BOOT_DONE);
                    bus.pio_write(port, data);
                    if ready {
                        if let Some(pause) = self.pause.clone() {
                            if pause.lead() {
                                return self.lead_pause(&pause);
                            }
                        }
                    }
                }
                Ok(VcpuExit::IoIn(port, data)) => bus.pio_read(port, data),
                Ok(VcpuExit::MmioRead(addr, data)) => bus.mmio_read(addr, data),
                Ok(VcpuExit::MmioWrite(addr, data)) => bus.mmio_write(addr, data),
                Ok(VcpuExit::SystemEvent(kind, _))
                    if kind == KVM_SYSTEM_EVENT_RESET || kind == KVM_SYSTEM_EVENT_SHUTDOWN =>
                {
                    return ExitReason::GuestReset
                }
                Ok(VcpuExit::Shutdown) => return self.crash("triple fault"),
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: KVM filled the `internal` member of the exit union for this exit.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    return self.crash(&format!("KVM internal error (suberror {suberror})"));
                }
                Ok(VcpuExit::FailEntry(reason, _)) => {
                    return self.crash(&format!("KVM entry failed (hardware reason {reason:#x})"))
                }
                Ok(VcpuExit::Hlt) => return self.crash("halted with no interrupt controller"),
                Ok(other) => {
                    let what = format!("unexpected exit {other:?}");
                    return self.crash(&what);
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    if let Some(pause) = self.pause.clone() {
                        if pause.pausing() {
                            return self.park(&pause);
                        }
                    }
                }
                Err(e) => return self.crash(&format!("KVM_RUN failed: {e}")),
            }
        }
    }

    /// A kicked vCPU: KVM has completed whatever access it was in (the kick's immediate_exit
    /// returns only after that), so its registers are consistent to save.
    fn park(&mut self, pause: &Pause) -> ExitReason {
        let state = snapshot_state::save_vcpu(&self.fd, &pause.msrs).map_err(|e| e.to_string());
        pause.park(usize::from(self.index), state)
    }

    /// Stops every vCPU and hands their states to the event loop, which saves the VM
    /// (`ExitReason::Paused`); a failure here is the verdict at once.
    fn lead_pause(&mut self, pause: &Pause) -> ExitReason {
        match self.stop_all(pause) {
            Ok(states) => {
                pause.hand_over(states);
                ExitReason::Paused
            }
            Err(why) => {
                let outcome = ExitReason::SnapshotFailed(why);
                pause.finish(outcome.clone());
                outcome
            }
        }
    }

    fn stop_all(&mut self, pause: &Pause) -> Result<Vec<snapshot_state::VcpuState>, String> {
        // KVM finishes the port write only on the next KVM_RUN; with immediate_exit it does
        // that and returns at once, leaving a consistent state to save.
        self.fd.set_kvm_immediate_exit(1);
        let finished = self.fd.run().map(|_| ());
        self.fd.set_kvm_immediate_exit(0);
        match finished {
            Err(e) if e.errno() == libc::EINTR => {}
            Ok(()) => return Err("the vCPU did not stop".into()),
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        }
        pause.kick_others(usize::from(self.index));
        let own = snapshot_state::save_vcpu(&self.fd, &pause.msrs).map_err(|e| e.to_string())?;
        pause.collect(usize::from(self.index), own)
    }

    fn crash(&self, what: &str) -> ExitReason {
        let rip = match self.fd.get_regs() {
            Ok(regs) => format!("{:#x}", regs.rip),
            Err(_) => "unknown".to_string(),
        };
        ExitReason::GuestCrash(format!("vCPU {}: {what} at guest RIP {rip}", self.index))
    }
}

/// Sets the delivery mode (bits 8..11) of a local vector table entry in the LAPIC register page.
fn set_lvt_mode(regs: &mut [libc::c_char; 1024], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as libc::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_mode_replaces_only_the_delivery_mode_bits() {
        let mut regs = [0 as libc::c_char; 1024];
        regs[APIC_LVT0] = 0x30;
        regs[APIC_LVT0 + 1] = 0x05;
        regs[APIC_LVT0 + 2] = 0x01;
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0] as u8, 0x30);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT0 + 2] as u8, 0x01);
    }
}
