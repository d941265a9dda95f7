//! The KVM VM: memory slots, in-kernel interrupt controllers and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Three pages below 4 GiB that VMX needs for its real-mode TSS; outside our RAM and MMIO.
const TSS_ADDR: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot create the KVM VM: {0}")]
    Create(kvm_ioctls::Error),
    #[error("cannot set the TSS address: {0}")]
    TssAddress(kvm_ioctls::Error),
    #[error("cannot create the in-kernel interrupt controllers: {0}")]
    IrqChip(kvm_ioctls::Error),
    #[error("cannot create the in-kernel PIT: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("cannot register guest memory with KVM: {0}")]
    MemorySlot(kvm_ioctls::Error),
    #[error("cannot route IRQ {gsi} to an eventfd: {source}")]
    Irqfd { gsi: u32, source: kvm_ioctls::Error },
}

pub struct Vm {
    fd: VmFd,
}

impl Vm {
    pub fn new(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<Vm, VmError> {
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        fd.set_tss_address(TSS_ADDR).map_err(VmError::TssAddress)?;
        fd.create_irq_chip().map_err(VmError::IrqChip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        for (slot, region) in mem.iter().enumerate() {
            let slot_region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mapping of exactly `len` bytes owned by `mem`, which
            // the caller keeps alive for as long as the VM runs (it outlives the vCPU threads).
            unsafe { fd.set_user_memory_region(slot_region) }.map_err(VmError::MemorySlot)?;
        }
        Ok(Vm { fd })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Makes every write to `event` raise interrupt line `gsi` in the guest.
    pub fn register_irq(&self, event: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(event, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }
}
