//! The hypervisor seam: what the sandbox needs of a VMM (which one runs here is backend.rs). Both
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
/// containers of shared base layers; QEMU's microvm has room for fewer (`Backend::spare_slots`,
/// backend.rs).
pub const SPARE_SLOTS: usize = 8;

/// The guest kernel, the agent and page cache need this much beside a container's (or a
/// pod's) memory limit.
pub const VM_OVERHEAD_MIB: u64 = 96;
/// A container's VM when it sets no memory limit and vmpod.toml no `memory_mib`.
pub const DEFAULT_VM_MIB: u64 = 256;
/// A Kubernetes pod's VM when containerd does not pass the pod's resources (1.6 does not) and
/// neither the shim's VMPOD_POD_MEMORY_MIB nor vmpod.toml's `memory_mib` says.
pub const DEFAULT_POD_MIB: u64 = 512;

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
