//! vmpod's virtio devices. Each device is plain logic over guest memory and a `virtio_queue`
//! queue: it knows nothing of MMIO registers, KVM or vhost-user, so vmpod-vmm's virtio-mmio
//! transport and a vhost-user backend serve the same code, and unit tests drive it with guest
//! memory and descriptor chains they build themselves.

pub mod block;
pub mod fs;
pub mod net;
pub mod rng;
#[cfg(feature = "seccomp")]
pub mod seccomp;
pub mod slot_command;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(feature = "vhost-user")]
pub mod vhost_user;
#[cfg(feature = "vhost-user")]
mod vhost_user_config;
#[cfg(feature = "vhost-user")]
mod vhost_user_device;
#[cfg(feature = "vhost-user")]
pub mod vhost_user_seccomp;
pub mod virtio;
pub mod vsock;
