//! What the task service needs of the host to make the pod's VM: layer images for a rootfs, a
//! booted VM with its agent and shared directory. [`SandboxHost`] makes real ones (erofs
//! images, [`Vm::boot`]); tests put a fake behind [`VmHost`] and never boot.

use crate::agent::{Agent, EndpointAgent};
use crate::error::TaskError;
use crate::spec::{Knobs, VmPlan};
use crate::vm::Vm;
use crate::{binds, rootfs};
use oci_spec::runtime::Spec;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub trait VmHost: Send + Sync {
    /// Each rootfs directory (lowest first) as a disk image the VM can attach.
    fn layer_images(&self, dirs: &[PathBuf]) -> Result<Vec<PathBuf>, TaskError>;
    /// Boots the pod's VM and returns once its agent answers.
    fn boot(&self, plan: VmPlan) -> Result<Box<dyn PodVm>, TaskError>;
}

/// A running VM of the pod. Dropping it stops the VM (and waits until it is down).
pub trait PodVm: Send {
    fn agent(&self) -> Arc<dyn Agent>;
    /// The sandbox's state directory, noted in bundles for `delete` after a crash.
    fn state_dir(&self) -> &Path;
    /// The serial under which the guest sees `image`, when it was attached at boot.
    fn layer_serial(&self, image: &Path) -> Option<String>;
    /// Attaches a layer image to a spare disk slot of the running VM; the guest's serial.
    fn insert_layer(&self, image: &Path) -> Result<String, String>;
    /// Empties the slot again, once no container in the guest uses it.
    fn eject_layer(&self, serial: &str);
    /// Shares the spec's host binds with the guest and points the spec at them; the guest's
    /// paths, to unshare when the container goes. On failure nothing stays shared.
    fn share_host_binds(&self, spec: &mut Spec) -> Result<Vec<String>, String>;
    fn unshare(&self, guest_paths: &[String]);
}

/// VMs as the environment's knobs ask for them.
pub struct SandboxHost {
    knobs: Knobs,
}

impl SandboxHost {
    pub fn new(knobs: Knobs) -> SandboxHost {
        SandboxHost { knobs }
    }
}

impl VmHost for SandboxHost {
    fn layer_images(&self, dirs: &[PathBuf]) -> Result<Vec<PathBuf>, TaskError> {
        rootfs::layer_images(dirs).map_err(TaskError::Layers)
    }

    fn boot(&self, plan: VmPlan) -> Result<Box<dyn PodVm>, TaskError> {
        let config = self.knobs.sandbox_config(plan)?;
        let vm = Vm::boot(config).map_err(TaskError::Boot)?;
        let agent = Arc::new(EndpointAgent::new(vm.endpoint.clone()));
        Ok(Box::new(BootedVm { vm, agent }))
    }
}

struct BootedVm {
    vm: Vm,
    agent: Arc<EndpointAgent>,
}

impl PodVm for BootedVm {
    fn agent(&self) -> Arc<dyn Agent> {
        self.agent.clone()
    }

    fn state_dir(&self) -> &Path {
        &self.vm.state_dir
    }

    fn layer_serial(&self, image: &Path) -> Option<String> {
        self.vm
            .disks
            .iter()
            .find(|(path, _)| path == image)
            .map(|(_, serial)| serial.clone())
    }

    fn insert_layer(&self, image: &Path) -> Result<String, String> {
        self.vm
            .slots
            .insert(image)
            .map_err(|e| vmpod_sandbox::error::chain(&e))
    }

    fn eject_layer(&self, serial: &str) {
        if let Err(e) = self.vm.slots.eject(serial) {
            log::warn!(
                "empty the disk slot {serial}: {}",
                vmpod_sandbox::error::chain(&e)
            );
        }
    }

    fn share_host_binds(&self, spec: &mut Spec) -> Result<Vec<String>, String> {
        binds::share_host_binds(spec, &self.vm.shared)
    }

    fn unshare(&self, guest_paths: &[String]) {
        binds::unshare(&self.vm.shared, guest_paths)
    }
}
