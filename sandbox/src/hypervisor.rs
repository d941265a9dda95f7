//! The hypervisor seam: what the sandbox needs of a VMM, and which one runs here. Both
//! backends serve the same guest (kernel, agent initramfs, our devices) and expose the agent
//! on a hybrid vsock Unix socket, so everything above this seam is shared.

use crate::error::{SandboxError, SlotError};
use crate::jail::{Jail, Launch};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmpod_devices::slot_command::SlotCommand;

/// Empty read-only disks every VM carries besides those it starts with, for images a running
/// pod needs later (a container the pod did not know at boot): each is a virtio-blk device
/// of capacity 0 until an image is inserted (slots.rs). 8 covers a pod's usual few app
/// containers of shared base layers; QEMU's microvm has room for fewer (`Backend::spare_slots`).
pub const SPARE_SLOTS: usize = 8;

/// vmpod-vmm's interrupt lines for virtio devices (vmm/src/config.rs, MAX_VIRTIO_DEVICES).
const VMM_DEVICES: usize = 19;
/// QEMU 7.2's microvm without ACPI (our guest kernel has none) has 8 virtio-mmio transports.
const QEMU_MICROVM_DEVICES: usize = 8;
/// The guest kernel, the agent and page cache need this much beside a container's (or a
/// pod's) memory limit.
pub const VM_OVERHEAD_MIB: u64 = 96;
/// A container's VM when it sets no memory limit and vmpod.toml no `memory_mib`.
pub const DEFAULT_VM_MIB: u64 = 256;
/// A Kubernetes pod's VM when containerd does not pass the pod's resources (1.6 does not) and
/// neither the shim's VMPOD_POD_MEMORY_MIB nor vmpod.toml's `memory_mib` says.
pub const DEFAULT_POD_MIB: u64 = 512;

/// Devices every VM has besides disks and a NIC: the agent's channel (vsock, or a
/// virtio-serial port in a template) and the shared filesystem.
const FIXED_DEVICES: usize = 2;

/// One VM as the sandbox wants it.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub cpus: u8,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra guest kernel command line (the backend adds its own console and machine options).
    pub cmdline: String,
    pub disks: Vec<Disk>,
    /// A virtio-net device on an attached tap.
    pub net: Option<NetAttachment>,
    /// The directory offered to the guest as its shared filesystem (tag `SHARED_FS_TAG`).
    pub shared_dir: PathBuf,
    /// Where the backend keeps its sockets and the console log.
    pub state_dir: PathBuf,
    /// Booted to become a template, or restored from one; `None` for a plain boot.
    pub template: Option<TemplateRole>,
    /// Empty read-only disks after `disks` (serials `slot<index>`), filled and emptied
    /// through [`Hypervisor::slot_control`] while the VM runs.
    pub spare_slots: usize,
    /// Where the VM's processes run, when jailed (jail.rs).
    pub jail: Option<Arc<Jail>>,
}

impl VmSpec {
    /// A socket of the VM: the host's path, and the path its processes use (in the jail's
    /// root when jailed, else in the state directory).
    pub fn socket(&self, name: &str) -> (PathBuf, PathBuf) {
        match &self.jail {
            Some(jail) => (jail.root().join(name), Path::new("/").join(name)),
            None => (self.state_dir.join(name), self.state_dir.join(name)),
        }
    }

    /// How one of the VM's processes starts (jailed or not).
    pub fn launch(&self) -> Launch<'_> {
        Launch::new(self.jail.as_deref())
    }
}

/// The serial of the disk at `index` (among all the VM's disks) when it is a slot.
pub fn slot_serial(index: usize) -> String {
    format!("slot{index}")
}

/// Changes the image of a running VM's disks by their index (a backend's slot commands).
pub trait SlotControl: Send + Sync {
    fn send(&self, command: &SlotCommand) -> Result<(), SlotError>;
    /// An insert's image travels open with its command (vmpod-vmm's socket), so a jailed disk
    /// server needs no path to it; otherwise it opens the path itself (vmpod-vhost-user).
    fn takes_open_files(&self) -> bool {
        false
    }
}

/// A template's part in a VM's start (template.rs).
#[derive(Debug, Clone)]
pub enum TemplateRole {
    /// Booted to be saved: the agent on a virtio-serial port (a vsock device cannot be saved),
    /// every disk an empty slot, guest memory in the file `memory`.
    Build { memory: PathBuf },
    /// Restored from a saved `state` and `memory`; the disks fill the template's slots, in
    /// order.
    Restore { state: PathBuf, memory: PathBuf },
}

/// A tap fd the VMM inherits (at the same number) and the guest NIC's MAC.
#[derive(Debug, Clone)]
pub struct NetAttachment {
    pub tap_fd: std::os::fd::RawFd,
    pub mac: String,
}

#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub serial: String,
    pub read_only: bool,
}

pub trait Hypervisor {
    fn name(&self) -> &'static str;
    /// Spawns the VM; it returns once the processes run (the guest then boots on its own).
    fn start(&mut self, vm: &VmSpec) -> Result<(), SandboxError>;
    /// The hybrid vsock socket of the running VM.
    fn vsock_uds(&self) -> &Path;
    fn console(&self) -> &Path;
    /// `Some(description)` once the VM has ended.
    fn ended(&mut self) -> Option<String>;
    /// Stops the VM and every helper process; idempotent.
    fn kill(&mut self);
    /// Fills and empties the running VM's disks, from any thread.
    fn slot_control(&self) -> Option<Arc<dyn SlotControl>>;
    /// Whether this VM, booted as a template, saves itself when its agent is ready (the host
    /// must not connect first) rather than when `save` asks.
    fn saves_when_ready(&self) -> bool {
        false
    }
    /// Saves the VM booted with [`TemplateRole::Build`] to `state` (its agent connections
    /// closed); the VM stays stopped.
    fn save(&mut self, state: &Path) -> Result<(), SandboxError> {
        Err(SandboxError::Invalid(format!(
            "{} cannot save a VM to {} yet",
            self.name(),
            state.display()
        )))
    }
}

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
