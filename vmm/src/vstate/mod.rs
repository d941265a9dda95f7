//! KVM state: the VM (memory slots, in-kernel irqchip and PIT) and its vCPUs, kept apart from
//! the devices.

pub mod pause;
pub mod snapshot;
pub mod vcpu;
pub mod vm;
