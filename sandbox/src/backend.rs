//! Which VMM runs here and why: the backends, the choice among them (flag, variable,
//! vmpod.toml, `auto`) and the KVM probes behind `auto`. The factory lives here, above the
//! `Hypervisor` trait and its implementations, so that neither imports the other back.

use crate::error::SandboxError;
use crate::hypervisor::{Hypervisor, SPARE_SLOTS};
use std::path::Path;

/// vmpod-vmm's interrupt lines for virtio devices (vmm/src/config.rs, MAX_VIRTIO_DEVICES).
const VMM_DEVICES: usize = 19;
/// QEMU 7.2's microvm without ACPI (our guest kernel has none) has 8 virtio-mmio transports.
const QEMU_MICROVM_DEVICES: usize = 8;
/// Devices every VM has besides disks and a NIC: the agent's channel (vsock, or a
/// virtio-serial port in a template) and the shared filesystem.
const FIXED_DEVICES: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Backend {
    /// vmpod-vmm on KVM: the product path.
    Vmm,
    /// QEMU microvm with our devices over vhost-user, on TCG (or KVM with `kvm` true).
    Qemu { kvm: bool },
}

/// The backend a run or a pod gets, and what decided it.
#[derive(Debug, Clone)]
pub struct Choice {
    pub backend: Backend,
    /// `--hypervisor`, `VMPOD_HYPERVISOR`, `hypervisor in /etc/vmpod/vmpod.toml`, or `auto`.
    pub source: String,
    /// Nobody chose: `auto` looked at the host.
    pub auto: bool,
}

/// The backend from `explicit` (the flag or variable that names one, and its value), else the
/// host's vmpod.toml, else `auto`.
pub fn choose_for_host(explicit: Option<(&str, &str)>) -> Result<Choice, SandboxError> {
    let config = crate::host_config::get()?;
    let (name, source) = match (explicit, &config.config.hypervisor) {
        (Some((from, name)), _) => (name.to_string(), from.to_string()),
        (None, Some(name)) => (
            name.clone(),
            format!("hypervisor in {}", config.path.display()),
        ),
        (None, None) => ("auto".to_string(), "auto".to_string()),
    };
    Ok(Choice {
        backend: Backend::choose(&name)?,
        auto: name == "auto",
        source,
    })
}

impl Backend {
    /// `auto`, `vmm` or `qemu`, as `--hypervisor` takes it. [`auto_fallback`] says why `auto`
    /// did not choose vmpod-vmm.
    pub fn choose(name: &str) -> Result<Backend, SandboxError> {
        match name {
            "vmm" => Ok(Backend::Vmm),
            "qemu" => Ok(Backend::Qemu {
                kvm: kvm_runs_guests_at_speed(),
            }),
            "auto" => {
                if kvm_runs_guests_at_speed() {
                    Ok(Backend::Vmm)
                } else {
                    Ok(Backend::Qemu { kvm: false })
                }
            }
            other => Err(SandboxError::Invalid(format!(
                "--hypervisor must be auto, vmm or qemu, not '{other}'"
            ))),
        }
    }

    /// The backend's short name, as `--hypervisor` takes it.
    pub fn flag(self) -> &'static str {
        match self {
            Backend::Vmm => "vmm",
            Backend::Qemu { .. } => "qemu",
        }
    }

    /// How many of [`SPARE_SLOTS`] fit a VM of `disks` disks (and a NIC when `nic`) on this
    /// backend: all on vmpod-vmm while its interrupt lines last, what QEMU's microvm has left.
    pub fn spare_slots(self, disks: usize, nic: bool) -> usize {
        let room = match self {
            Backend::Vmm => VMM_DEVICES,
            Backend::Qemu { .. } => QEMU_MICROVM_DEVICES,
        };
        let used = disks + FIXED_DEVICES + usize::from(nic);
        room.saturating_sub(used).min(SPARE_SLOTS)
    }

    pub fn hypervisor(self) -> Box<dyn Hypervisor> {
        match self {
            Backend::Vmm => Box::new(crate::vmm::VmpodVmm::default()),
            Backend::Qemu { kvm } => Box::new(crate::qemu::Qemu::new(kvm)),
        }
    }
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// kvm-pvm runs a guest kernel's code emulated (a boot takes most of a minute): such a KVM
/// works but is no place for containers.
fn is_kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

pub fn kvm_runs_guests_at_speed() -> bool {
    kvm_usable() && !is_kvm_pvm()
}

/// What this host's KVM is, in a few words (`vmpod info`).
pub fn kvm_kind() -> &'static str {
    if !kvm_usable() {
        "none: /dev/kvm cannot be opened"
    } else if is_kvm_pvm() {
        "kvm-pvm: /dev/kvm emulates a guest kernel's code (no VT-x/AMD-V)"
    } else {
        "hardware"
    }
}

/// Why `auto` falls back to QEMU with TCG on this host, or None where it picks vmpod-vmm.
pub fn auto_fallback() -> Option<String> {
    if kvm_runs_guests_at_speed() {
        return None;
    }
    let why = if !kvm_usable() {
        "/dev/kvm cannot be opened"
    } else {
        "/dev/kvm is kvm-pvm, which emulates the guest kernel"
    };
    Some(format!("{why}; using QEMU with TCG"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_slots_are_all_eight_where_devices_fit_and_what_is_left_on_qemu() {
        assert_eq!(Backend::Vmm.spare_slots(1, true), SPARE_SLOTS);
        assert_eq!(Backend::Vmm.spare_slots(10, true), 6);
        let qemu = Backend::Qemu { kvm: false };
        assert_eq!(qemu.spare_slots(0, false), 6);
        assert_eq!(qemu.spare_slots(1, true), 4);
        assert_eq!(qemu.spare_slots(7, false), 0);
    }
}
