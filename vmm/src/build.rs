//! The two ways a VM comes to be: booted from a kernel, or restored from a snapshot. Each
//! builds the guest memory, the KVM VM and its vCPUs; `run` (lib.rs) adds devices and threads,
//! which both share.

use std::sync::Arc;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;
use vm_memory::GuestMemoryMmap;

use crate::boot::{self, BootSpec};
use crate::config::{self, SnapshotFiles, VmConfig};
use crate::cpuid::{self, CpuFeature};
use crate::devices::persist::Persist;
use crate::error::VmmError;
use crate::memory;
use crate::snapshot::{self, Snapshot};
use crate::virtio::Attached;
use crate::vstate;
use crate::vstate::vcpu::Vcpu;
use crate::vstate::vm::Vm;

/// A VM's memory, its KVM VM and its vCPUs, before devices and threads.
pub struct Machine {
    pub mem: GuestMemoryMmap,
    pub vm: Arc<Vm>,
    pub vcpus: Vec<Vcpu>,
}

/// /dev/kvm, or the descriptor the config names (`fd:N`, a jailed VMM's).
pub fn open_kvm(config: &VmConfig) -> Result<Kvm, VmmError> {
    let Some(path) = &config.kvm else {
        return Kvm::new().map_err(VmmError::Kvm);
    };
    let device = config::open_file(path, std::fs::OpenOptions::new().read(true).write(true))
        .map_err(|e| {
            VmmError::Kvm(vmm_sys_util::errno::Error::new(
                e.raw_os_error().unwrap_or(libc::EBADF),
            ))
        })?;
    // SAFETY: the descriptor is a freshly duplicated, owned handle on the KVM device.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(device)) })
}

/// What KVM supports, less the features hidden from the guest: each vCPU's CPUID is this,
/// customized for its index.
pub struct CpuidTemplate {
    supported: CpuId,
    hidden: Vec<CpuFeature>,
}

impl CpuidTemplate {
    pub fn new(kvm: &Kvm, hidden: Vec<CpuFeature>) -> Result<CpuidTemplate, VmmError> {
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmmError::SupportedCpuid)?;
        Ok(CpuidTemplate { supported, hidden })
    }

    fn of(&self, index: u8, cpus: u8) -> CpuId {
        let mut cpuid = self.supported.clone();
        cpuid::customize(cpuid.as_mut_slice(), index, cpus, &self.hidden);
        cpuid
    }
}

/// Fresh memory with the kernel (and initrd) loaded, and vCPUs at its entry point.
pub fn boot(
    kvm: &Kvm,
    config: &VmConfig,
    cmdline: &str,
    cpuid: &CpuidTemplate,
) -> Result<Machine, VmmError> {
    let cpus = config.cpus as u8;
    let mem = memory::create_guest_memory(config.memory_bytes())?;
    let entry = boot::load(
        &mem,
        &BootSpec {
            kernel: &config.kernel,
            initrd: config.initrd.as_deref(),
            cmdline,
            cpus,
            memory_bytes: config.memory_bytes(),
        },
    )?;
    let vm = Arc::new(Vm::new(kvm, &mem)?);
    let mut vcpus = Vec::with_capacity(cpus as usize);
    for index in 0..cpus {
        let vcpu = Vcpu::new(vm.fd(), index)?;
        vcpu.configure(&cpuid.of(index, cpus), (index == 0).then_some(entry))?;
        vcpus.push(vcpu);
    }
    Ok(Machine { mem, vm, vcpus })
}

/// The snapshot's memory mapped copy-on-write, its VM state and every vCPU put back.
pub fn restore(
    kvm: &Kvm,
    files: &SnapshotFiles,
    saved: &Snapshot,
    hidden: Vec<CpuFeature>,
) -> Result<Machine, VmmError> {
    let mem = snapshot::map_memory(&files.memory, saved.memory_mib)?;
    let vm = Arc::new(Vm::new(kvm, &mem)?);
    vstate::snapshot::restore_vm(vm.fd(), &saved.vm).map_err(VmmError::State)?;
    // The saved CPUID is the one restored; only a snapshot made before it was saved asks KVM
    // for this host's, as a boot does.
    let template = match saved.vcpus.iter().any(|state| state.cpuid.is_empty()) {
        true => Some(CpuidTemplate::new(kvm, hidden)?),
        false => None,
    };
    let count = saved.vcpus.len() as u8;
    let mut vcpus = Vec::with_capacity(saved.vcpus.len());
    for (index, state) in saved.vcpus.iter().enumerate() {
        let vcpu = Vcpu::new(vm.fd(), index as u8)?;
        let fallback = template.as_ref().map(|t| t.of(index as u8, count));
        vstate::snapshot::restore_vcpu(vcpu.fd(), fallback.as_ref(), state)
            .map_err(VmmError::State)?;
        vcpus.push(vcpu);
    }
    Ok(Machine { mem, vm, vcpus })
}

/// Puts each virtio transport back as saved, then has every driver reread its device's
/// configuration: the host sides are this config's (a clone's disks fill the template's
/// empty slots).
pub fn restore_devices(attached: &[Attached], saved: &Snapshot) -> Result<(), VmmError> {
    if saved.devices.virtio.len() != attached.len() {
        return Err(VmmError::Restore(format!(
            "the snapshot has {} virtio devices, the config {}",
            saved.devices.virtio.len(),
            attached.len()
        )));
    }
    for (device, state) in attached.iter().zip(&saved.devices.virtio) {
        device
            .transport
            .lock()
            .map_err(|_| VmmError::Restore("a device's lock is poisoned".into()))?
            .restore(state)
            .map_err(|e| VmmError::Restore(e.to_string()))?;
    }
    for device in attached {
        if let Ok(transport) = device.transport.lock() {
            transport.announce_config_change();
        }
    }
    Ok(())
}
