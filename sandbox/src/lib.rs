//! vmpod-sandbox: one pod's microVM from the host side. A [`Sandbox`] owns a state directory
//! under /run/vmpod, the VM (through the [`hypervisor`] seam: vmpod-vmm or QEMU), the
//! connection to the agent inside it, and the clean-up of all of them.

pub mod backend;
pub mod endpoint;
pub mod erofs;
pub mod error;
mod guest_memory;
pub mod host_config;
pub mod hypervisor;
pub mod image;
pub mod jail;
mod jail_slots;
pub mod jailer;
mod lock;
pub mod network;
pub mod paths;
mod process;
pub mod qemu;
mod qmp;
pub mod sandbox;
mod serial_agent;
pub mod shared;
mod slot_control;
pub mod slots;
pub mod template;
mod vm_cgroup;
pub mod vmm;
pub mod vsock;

pub use backend::Backend;
pub use endpoint::Endpoint;
pub use error::{SandboxError, SlotError};
pub use hypervisor::{Hypervisor, VmSpec, SPARE_SLOTS};
pub use sandbox::{ensure_template, kernel_cmdline, Boot, Sandbox, SandboxConfig};
pub use shared::SharedVolume;
pub use slots::DiskSlots;
