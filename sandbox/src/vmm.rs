//! The vmpod-vmm backend: one process, our devices in it, configured by JSON on a file.

use crate::error::{io, SandboxError};
use crate::hypervisor::{Hypervisor, VmSpec};
use crate::paths;
use crate::process::{die_with_parent, inherit_fd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[derive(Default)]
pub struct VmpodVmm {
    uds: PathBuf,
    console: PathBuf,
    child: Option<Child>,
}

impl Hypervisor for VmpodVmm {
    fn name(&self) -> &'static str {
        "vmpod-vmm"
    }

    fn start(&mut self, vm: &VmSpec) -> Result<(), SandboxError> {
        self.uds = vm.state_dir.join("vsock.sock");
        self.console = vm.state_dir.join("console.log");
        let disks: Vec<serde_json::Value> = vm
            .disks
            .iter()
            .map(|d| serde_json::json!({"path": d.path, "read_only": d.read_only, "serial": d.serial}))
            .collect();
        let mut config = serde_json::json!({
            "kernel": vm.kernel,
            "initrd": vm.initrd,
            "cpus": vm.cpus,
            "memory_mib": vm.memory_mib,
            "console": self.console,
            "cmdline": format!("console=ttyS0 quiet {}", vm.cmdline),
            "disks": disks,
            "vsock": {"guest_cid": 3, "uds_path": self.uds},
        });
        if let Some(net) = &vm.net {
            config["net"] = serde_json::json!({"fd": net.tap_fd, "mac": net.mac});
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
        Ok(())
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
