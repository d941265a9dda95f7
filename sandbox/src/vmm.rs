//! The vmpod-vmm backend: one process, our devices in it, configured by its own typed config
//! (`vmpod_vmm::config::VmConfig`) serialised to JSON on a file.

use crate::error::{io, SandboxError};
use crate::hypervisor::{slot_serial, Hypervisor, SlotControl, TemplateRole, VmSpec};
use crate::jail::Launch;
use crate::paths;
use crate::slot_control::LineControl;
use std::fs::File;
use std::io::{Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmpod_vmm::config::{
    Console, DiskConfig, FsConfig, NetConfig, SnapshotFiles, VmConfig, VsockConfig,
};

#[derive(Default)]
pub struct VmpodVmm {
    uds: PathBuf,
    console: PathBuf,
    child: Option<Child>,
    /// Where vmpod-vmm writes the state of a VM booted as a template (it saves the VM itself
    /// when the agent is ready, then exits; jailed, into a file the sandbox created).
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
        let mut launch = vm.launch();
        launch.serves_files().serves_slots();
        launch.file_size_limit((u64::from(vm.memory_mib) << 20) + (1 << 30));
        let mut files = PassedFiles::new(vm.jail.is_some());
        let (uds, uds_inside) = vm.socket("vsock.sock");
        self.uds = uds;
        self.console = vm.state_dir.join("console.log");
        let mut disks = Vec::with_capacity(vm.disks.len() + vm.spare_slots);
        for d in &vm.disks {
            disks.push(DiskConfig {
                path: Some(files.open(&mut launch, &d.path, !d.read_only)?),
                read_only: d.read_only,
                serial: Some(d.serial.clone()),
            });
        }
        let count = disks.len() + vm.spare_slots;
        disks.extend((vm.disks.len()..count).map(|i| DiskConfig {
            path: None,
            read_only: true,
            serial: Some(slot_serial(i)),
        }));
        let (control, control_inside) = vm.socket("disks.sock");
        let shared_dir = launch.file(&vm.shared_dir, "/shared", true);
        let mut config = VmConfig {
            kernel: files.open(&mut launch, &vm.kernel, false)?,
            initrd: Some(files.open(&mut launch, &vm.initrd, false)?),
            cpus: vm.cpus.into(),
            memory_mib: vm.memory_mib.into(),
            console: Console::File(files.create(&mut launch, &self.console)?),
            cmdline: format!("console=ttyS0 quiet {}", vm.cmdline),
            disks,
            vsock: Some(VsockConfig {
                guest_cid: 3,
                uds_path: uds_inside,
            }),
            fs: Some(FsConfig {
                tag: vmpod_protocol::SHARED_FS_TAG.into(),
                shared_dir,
            }),
            disk_control: Some(control_inside),
            ..VmConfig::default()
        };
        if let Some(net) = &vm.net {
            launch.fd(net.tap_fd);
            config.net = Some(NetConfig {
                tap: None,
                fd: Some(net.tap_fd),
                netns: None,
                mac: Some(net.mac.clone()),
            });
        }
        if vm.jail.is_some() {
            config.kvm = Some(files.device(&mut launch, Path::new("/dev/kvm"))?);
            // vmpod-vmm looks here to know kvm-pvm's needs.
            let pvm = Path::new("/sys/module/kvm_pvm");
            if pvm.exists() {
                launch.file(pvm, "/sys/module/kvm_pvm", false);
            }
        }
        match &vm.template {
            None => {}
            Some(TemplateRole::Build { memory }) => {
                // The sandbox creates both files (root's) and vmpod-vmm only writes into
                // them; moving the state into place stays the sandbox's (`save`).
                let state = vm.state_dir.join("template-state");
                config.snapshot = Some(SnapshotFiles {
                    state: files.create(&mut launch, &state)?,
                    memory: files.create(&mut launch, memory)?,
                });
                self.saving_to = Some(state);
            }
            Some(TemplateRole::Restore { state, memory }) => {
                // Every clone maps the template's memory privately: read-only is enough.
                config.restore = Some(SnapshotFiles {
                    state: files.open(&mut launch, state, false)?,
                    memory: files.open(&mut launch, memory, false)?,
                });
            }
        }
        let path = vm.state_dir.join("vm.json");
        let json = serde_json::to_vec(&config)
            .map_err(|e| SandboxError::Invalid(format!("vmpod-vmm's config: {e}")))?;
        // One open: vmpod-vmm reads the descriptor it inherits from the start (its offset is
        // shared, hence the rewind).
        let config_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut file| {
                file.write_all(&json)?;
                file.rewind()?;
                Ok(file)
            })
            .map_err(io(format!("write {}", path.display())))?;
        launch.fd(config_file.as_raw_fd());
        let child = launch
            .command(
                &paths::program("vmpod-vmm")?,
                [
                    "--config".to_string(),
                    format!("fd:{}", config_file.as_raw_fd()),
                ],
            )?
            .stdin(Stdio::null())
            .spawn()
            .map_err(io("start vmpod-vmm"))?;
        drop(files);
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

/// The files a jailed vmpod-vmm gets as descriptors, held until it has started; it opens them
/// again through its own /proc (read-only ones) or takes them as `fd:N` (the config's
/// fields its `open_file` reads). Unjailed, it opens the paths itself.
struct PassedFiles {
    jailed: bool,
    held: Vec<File>,
}

impl PassedFiles {
    fn new(jailed: bool) -> PassedFiles {
        PassedFiles {
            jailed,
            held: Vec::new(),
        }
    }

    fn keep(&mut self, launch: &mut Launch, file: File) -> i32 {
        let fd = file.as_raw_fd();
        launch.fd(fd);
        self.held.push(file);
        fd
    }

    /// A file vmpod-vmm reads (or writes, when `writable`) by the path returned.
    fn open(
        &mut self,
        launch: &mut Launch,
        path: &Path,
        writable: bool,
    ) -> Result<PathBuf, SandboxError> {
        if !self.jailed {
            return Ok(path.to_path_buf());
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(io(format!("open {}", path.display())))?;
        Ok(PathBuf::from(format!(
            "/proc/self/fd/{}",
            self.keep(launch, file)
        )))
    }

    /// A file vmpod-vmm writes, created here.
    fn create(&mut self, launch: &mut Launch, path: &Path) -> Result<PathBuf, SandboxError> {
        if !self.jailed {
            return Ok(path.to_path_buf());
        }
        let file = File::create(path).map_err(io(format!("create {}", path.display())))?;
        Ok(PathBuf::from(format!("fd:{}", self.keep(launch, file))))
    }

    /// A device vmpod-vmm uses, as `fd:N`.
    fn device(&mut self, launch: &mut Launch, path: &Path) -> Result<PathBuf, SandboxError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(format!("open {}", path.display())))?;
        Ok(PathBuf::from(format!("fd:{}", self.keep(launch, file))))
    }
}
