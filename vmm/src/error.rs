//! Why the VMM could not build or run a VM: each cause kept, for the caller's one-line report.

use crate::boot::BootError;
use crate::memory::MemoryError;
use crate::vstate::vcpu::VcpuError;
use crate::vstate::vm::VmError;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    Kvm(kvm_ioctls::Error),
    #[error("cannot read the CPUID KVM supports: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("cannot boot: {0}")]
    Boot(#[from] BootError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Virtio(#[from] crate::virtio::VirtioError),
    #[error("console {path}: {source}")]
    Console {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot watch for stop signals: {0}")]
    Signals(std::io::Error),
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("KVM state: {0}")]
    State(crate::vstate::snapshot::StateError),
    #[error("cannot restore the VM: {0}")]
    Restore(String),
    #[error(transparent)]
    DiskControl(#[from] crate::disk_control::DiskControlError),
    #[error(transparent)]
    Seccomp(#[from] vmpod_devices::seccomp::SeccompError),
    #[error("cannot start the virtio-fs thread: {0}")]
    FsThread(std::io::Error),
}
