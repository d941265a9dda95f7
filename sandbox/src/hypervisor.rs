//! The hypervisor seam: what the sandbox needs of a VMM, and which one runs here. Both
//! backends serve the same guest (kernel, agent initramfs, our devices) and expose the agent
//! on a hybrid vsock Unix socket, so everything above this seam is shared.

use crate::error::SandboxError;
use std::path::{Path, PathBuf};

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

impl Backend {
    /// `auto`, `vmm` or `qemu`, as `--hypervisor` takes it. `auto` says on stderr what it chose
    /// when it is not vmpod-vmm.
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
                    eprintln!("vmpod: {}; using QEMU with TCG", why_not_kvm());
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

fn why_not_kvm() -> &'static str {
    if !kvm_usable() {
        "/dev/kvm cannot be opened"
    } else {
        "/dev/kvm is kvm-pvm, which emulates the guest kernel"
    }
}
