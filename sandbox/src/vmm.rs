//! The vmpod-vmm backend: one process, our devices in it, configured by JSON on a file.

use crate::error::{io, SandboxError};
use crate::hypervisor::{slot_serial, Hypervisor, SlotControl, TemplateRole, VmSpec};
use crate::paths;
use crate::process::{die_with_parent, inherit_fd};
use crate::slot_control::LineControl;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct VmpodVmm {
    uds: PathBuf,
    console: PathBuf,
    child: Option<Child>,
    /// Where vmpod-vmm writes the state of a VM booted as a template (it saves the VM itself
    /// when the agent is ready, then exits).
    saving_to: Option<PathBuf>,
    /// Commands to vmpod-vmm's disk_control socket.
    disks: Option<Arc<LineControl>>,
}

/// How long a template's boot may take: most of a minute on kvm-pvm.
const SAVE_LIMIT: Duration = Duration::from_secs(600);

impl Hypervisor for VmpodVmm {
    fn name(&self) -> &'static str {
        "vmpod-vmm"
    }

    fn start(&mut self, vm: &VmSpec) -> Result<(), SandboxError> {
        self.uds = vm.state_dir.join("vsock.sock");
        self.console = vm.state_dir.join("console.log");
        let mut disks: Vec<serde_json::Value> = vm
            .disks
            .iter()
            .map(|d| serde_json::json!({"path": d.path, "read_only": d.read_only, "serial": d.serial}))
            .collect();
        let count = disks.len() + vm.spare_slots;
        disks.extend(
            (vm.disks.len()..count)
                .map(|i| serde_json::json!({"read_only": true, "serial": slot_serial(i)})),
        );
        let control = vm.state_dir.join("disks.sock");
        let mut config = serde_json::json!({
            "kernel": vm.kernel,
            "initrd": vm.initrd,
            "cpus": vm.cpus,
            "memory_mib": vm.memory_mib,
            "console": self.console,
            "cmdline": format!("console=ttyS0 quiet {}", vm.cmdline),
            "disks": disks,
            "vsock": {"guest_cid": 3, "uds_path": self.uds},
            "fs": {"tag": vmpod_protocol::SHARED_FS_TAG, "shared_dir": vm.shared_dir},
            "disk_control": control,
        });
        if let Some(net) = &vm.net {
            config["net"] = serde_json::json!({"fd": net.tap_fd, "mac": net.mac});
        }
        match &vm.template {
            None => {}
            Some(TemplateRole::Build { memory }) => {
                let state = vm.state_dir.join("template-state");
                config["snapshot"] = serde_json::json!({"state": state, "memory": memory});
                self.saving_to = Some(state);
            }
            Some(TemplateRole::Restore { state, memory }) => {
                config["restore"] = serde_json::json!({"state": state, "memory": memory});
            }
        }
        let path = vm.state_dir.join("vm.json");
        std::fs::write(&path, config.to_string())
            .map_err(io(format!("write {}", path.display())))?;
        let mut vmm = Command::new(paths::program("vmpod-vmm")?);
        if let Some(net) = &vm.net {
            inherit_fd(&mut vmm, net.tap_fd);
        }
        let child = die_with_parent(vmm.arg("--config").arg(&path))
            .stdin(Stdio::null())
            .spawn()
            .map_err(io("start vmpod-vmm"))?;
        self.child = Some(child);
        self.disks = Some(Arc::new(LineControl::socket(control)));
        Ok(())
    }

    fn slot_control(&self) -> Option<Arc<dyn SlotControl>> {
        self.disks
            .clone()
            .map(|control| control as Arc<dyn SlotControl>)
    }

    fn vsock_uds(&self) -> &Path {
        &self.uds
    }

    fn console(&self) -> &Path {
        &self.console
    }

    fn ended(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        Some(format!("vmpod-vmm {status}"))
    }

    fn saves_when_ready(&self) -> bool {
        self.saving_to.is_some()
    }

    fn save(&mut self, state: &Path) -> Result<(), SandboxError> {
        let saved = self.saving_to.take().ok_or_else(|| {
            SandboxError::Invalid("only a VM booted as a template can be saved".into())
        })?;
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| SandboxError::Invalid("vmpod-vmm is not running".into()))?;
        let deadline = Instant::now() + SAVE_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(io("wait for vmpod-vmm"))? {
                break status;
            }
            if Instant::now() > deadline {
                return Err(SandboxError::Invalid(format!(
                    "vmpod-vmm did not save the template within {} s",
                    SAVE_LIMIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.child = None;
        if !status.success() {
            let console = std::fs::read_to_string(&self.console).unwrap_or_default();
            return Err(SandboxError::VmEnded {
                status: format!("vmpod-vmm {status} instead of saving the template"),
                console,
            });
        }
        std::fs::rename(&saved, state).map_err(io(format!(
            "move {} to {}",
            saved.display(),
            state.display()
        )))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for VmpodVmm {
    fn drop(&mut self) {
        self.kill();
    }
}
