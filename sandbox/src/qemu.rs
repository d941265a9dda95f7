//! The QEMU backend: microvm, our blk and vsock devices as vmpod-vhost-user backends (one
//! process for every disk, spare slots included, and one for vsock), guest memory a shared
//! memfd so the backends can map it.
//!
//! Templates: QEMU's own migration stream, saved to a file from a stopped VM and loaded with
//! `-incoming`. QEMU refuses to migrate a vhost-user-vsock device, so a template's agent talks
//! over a virtio-serial port instead (serial_agent.rs). Guest memory travels in the stream
//! rather than being mapped from a shared file: the vhost-user backends must map guest memory
//! shared, which a private copy-on-write mapping of the template could not give them.

use crate::error::{io, SandboxError};
use crate::hypervisor::{slot_serial, Hypervisor, SlotControl, TemplateRole, VmSpec};
use crate::jail::Launch;
use crate::paths;
use crate::qmp::Qmp;
use crate::serial_agent::SerialAgent;
use crate::slot_control::LineControl;
use serde_json::json;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmpod_devices::slot_command::SlotCommand;

pub struct Qemu {
    kvm: bool,
    uds: PathBuf,
    console: PathBuf,
    /// QEMU's stderr, kept for errors when a template is built or restored.
    log: Option<PathBuf>,
    qemu: Option<Child>,
    backends: Vec<Child>,
    serial: Option<SerialAgent>,
    qmp: Option<Qmp>,
    /// The disks' backend's commands (stdin and stdout of its vmpod-vhost-user).
    disks: Option<Arc<LineControl>>,
    /// The images a restored VM's slots get once it runs, as its disks' backend opens them.
    restored_images: Vec<PathBuf>,
    /// A template's guest memory while it is built, given back to root once saved: a file
    /// every clone maps must not stay writable by the sandbox that made it.
    building_memory: Option<PathBuf>,
}

impl Qemu {
    pub fn new(kvm: bool) -> Qemu {
        Qemu {
            kvm,
            uds: PathBuf::new(),
            console: PathBuf::new(),
            log: None,
            qemu: None,
            backends: Vec::new(),
            serial: None,
            qmp: None,
            disks: None,
            restored_images: Vec::new(),
            building_memory: None,
        }
    }

    /// Starts a vmpod-vhost-user serving `sockets`; its stdin and stdout are ours when
    /// `commands` (the disks' slot commands). Returns once every socket exists.
    fn backend(
        &mut self,
        launch: Launch,
        args: &[String],
        sockets: &[PathBuf],
        commands: bool,
    ) -> Result<Option<LineControl>, SandboxError> {
        let piped = || {
            if commands {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        let mut child = launch
            .command(&paths::program("vmpod-vhost-user")?, args)?
            .stdin(piped())
            .stdout(piped())
            .spawn()
            .map_err(io("start vmpod-vhost-user"))?;
        let control = match (child.stdin.take(), child.stdout.take()) {
            (Some(to), Some(from)) => Some(LineControl::pipe(to, from)),
            _ => None,
        };
        self.backends.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(socket) = sockets.iter().find(|s| !s.exists()) {
            if let Some(ended) = self.ended() {
                return Err(SandboxError::Invalid(format!(
                    "vmpod-vhost-user {args:?} ended: {ended}"
                )));
            }
            if Instant::now() > deadline {
                return Err(SandboxError::Invalid(format!(
                    "vmpod-vhost-user never created {}",
                    socket.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(control)
    }

    /// One vmpod-vhost-user for every disk: those given, then the empty spare slots. A
    /// restored VM's disks start empty, as the template saw them, and are inserted once it
    /// runs. Returns QEMU's arguments for them.
    fn disks(&mut self, vm: &VmSpec, restoring: bool) -> Result<Vec<String>, SandboxError> {
        let count = vm.disks.len() + vm.spare_slots;
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut args = Vec::with_capacity(2 * count);
        let mut sockets = Vec::with_capacity(count);
        let mut devices = Vec::with_capacity(4 * count);
        let mut launch = vm.launch();
        launch.serves_slots();
        for i in 0..count {
            let (socket, inside) = vm.socket(&format!("vu-blk{i}.sock"));
            let image = vm
                .disks
                .get(i)
                .map(|disk| launch.file(&disk.path, &format!("/disks/{i}"), !disk.read_only));
            let spec = match (vm.disks.get(i), &image) {
                (Some(disk), Some(image)) if restoring => {
                    self.restored_images.push(image.clone());
                    format!(",ro,serial={}", disk.serial)
                }
                (Some(disk), Some(image)) if disk.read_only => {
                    format!("{},ro,serial={}", image.display(), disk.serial)
                }
                (Some(disk), Some(image)) => format!("{},serial={}", image.display(), disk.serial),
                _ => format!(",ro,serial={}", slot_serial(i)),
            };
            args.extend([
                "--blk".to_string(),
                format!("{spec},socket={}", inside.display()),
            ]);
            devices.extend([
                "-chardev".to_string(),
                format!("socket,id=blk{i},path={}", inside.display()),
                "-device".into(),
                format!("vhost-user-blk,chardev=blk{i}"),
            ]);
            sockets.push(socket);
        }
        self.disks = self.backend(launch, &args, &sockets, true)?.map(Arc::new);
        Ok(devices)
    }
    fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .map(|t| format!(" (QEMU said: {t})"))
            .unwrap_or_default()
    }

    /// Loads the template's state into the QEMU started with `-incoming defer`, runs it, and
    /// hands the disks to their slots: each backend then announces a configuration change,
    /// and the guest's driver reads the disk's real size.
    fn restore(&mut self, state: &Path) -> Result<(), SandboxError> {
        let fail = |this: &mut Qemu, what: String| {
            let said = this.log_text();
            SandboxError::Invalid(format!("restore {}: {what}{said}", state.display()))
        };
        let qmp = self.qmp.as_mut().ok_or_else(|| {
            SandboxError::Invalid("QEMU was started without its QMP socket".into())
        })?;
        // QEMU would announce the template's MAC on the clone's network after loading; the
        // agent gives the NIC the pod's address instead.
        if let Err(e) = qmp.execute("migrate-set-parameters", json!({ "announce-rounds": 0 })) {
            return Err(fail(self, e.to_string()));
        }
        let Some(qmp) = self.qmp.as_mut() else {
            return Err(SandboxError::Invalid("QEMU's QMP socket is gone".into()));
        };
        let stream = std::fs::File::open(state).map_err(io(format!("open {}", state.display())))?;
        if let Err(e) = qmp.pass_fd(STREAM_FD, stream.as_fd()) {
            return Err(fail(self, e.to_string()));
        }
        let Some(qmp) = self.qmp.as_mut() else {
            return Err(SandboxError::Invalid("QEMU's QMP socket is gone".into()));
        };
        let uri = format!("fd:{STREAM_FD}");
        if let Err(e) = qmp.execute("migrate-incoming", json!({ "uri": uri })) {
            return Err(fail(self, e.to_string()));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = match self.qmp.as_mut().map(Qmp::status) {
                Some(Ok(s)) => s,
                Some(Err(e)) => return Err(fail(self, e.to_string())),
                None => unreachable!("checked above"),
            };
            match status.as_str() {
                "inmigrate" if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                "paused" | "running" => break,
                other => return Err(fail(self, format!("QEMU's VM is {other}"))),
            }
        }
        if let Some(qmp) = self.qmp.as_mut() {
            qmp.execute("cont", json!({}))?;
        }
        if let Some(control) = &self.disks {
            for (slot, image) in self.restored_images.iter().enumerate() {
                control.send(&SlotCommand::Insert {
                    slot,
                    image: image.clone(),
                })?;
            }
        }
        Ok(())
    }
}

/// The name a migration stream's descriptor has in QEMU (QMP `getfd`); QEMU's sandbox forbids
/// the `exec:` URIs that would need a shell.
const STREAM_FD: &str = "stream";

/// QEMU's own seccomp filter: no obsolete system calls, no change of uid, no new processes
/// or programs, no change of scheduling or resource limits.
const QEMU_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The descriptor set QEMU's console file is passed in (`-add-fd`): a jailed QEMU cannot open
/// a file of the state directory by path.
const CONSOLE_FDSET: u32 = 1;

/// CPU features kvm-pvm cannot give a guest, as vmpod-vmm hides them (guest-kernel/README.md).
const KVM_PVM_HIDDEN: &str =
    "cx16 popcnt xsave avx rdrand fsgsbase bmi1 avx2 bmi2 invpcid rdseed smap pku";

impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        if self.kvm {
            "qemu (kvm)"
        } else {
            "qemu (tcg)"
        }
    }

    fn start(&mut self, vm: &VmSpec) -> Result<(), SandboxError> {
        let (uds, uds_inside) = vm.socket("vsock.sock");
        self.uds = uds;
        self.console = vm.state_dir.join("console.log");
        let mut devices = Vec::new();
        if vm.template.is_some() {
            let (chardev, inside) = vm.socket("agent-serial.sock");
            self.serial = Some(SerialAgent::listen(&chardev, &self.uds)?);
            if let Some(jail) = &vm.jail {
                // QEMU, the sandbox's uid, connects to it.
                std::os::unix::fs::chown(&chardev, Some(jail.uid()), Some(jail.uid())).map_err(
                    io(format!("give {} to the sandbox's uid", chardev.display())),
                )?;
            }
            devices.extend([
                "-device".to_string(),
                "virtio-serial-device,max_ports=2".into(),
                "-chardev".into(),
                format!("socket,id=agent,path={}", inside.display()),
                "-device".into(),
                format!(
                    "virtserialport,chardev=agent,name={}",
                    crate::serial_agent::PORT_NAME
                ),
            ]);
        } else {
            let (vsock_sock, inside) = vm.socket("vu-vsock.sock");
            let mut launch = vm.launch();
            // It writes no file but its log, on the owner's stderr (SIGXFSZ past the limit).
            launch.file_size_limit(64 << 20);
            self.backend(
                launch,
                &[
                    "--socket".into(),
                    inside.display().to_string(),
                    "--vsock".into(),
                    format!("3,{}", uds_inside.display()),
                ],
                std::slice::from_ref(&vsock_sock),
                false,
            )?;
            devices.extend([
                "-chardev".to_string(),
                format!("socket,id=vs,path={}", inside.display()),
                "-device".into(),
                "vhost-user-vsock-device,chardev=vs".into(),
            ]);
        }
        let restoring = matches!(vm.template, Some(TemplateRole::Restore { .. }));
        devices.extend(self.disks(vm, restoring)?);
        let (qmp_sock, qmp_inside) = vm.socket("qmp.sock");
        if vm.template.is_some() {
            devices.extend([
                "-qmp".to_string(),
                format!("unix:{},server=on,wait=off", qmp_inside.display()),
            ]);
        }
        if let (true, Some(jail)) = (self.kvm, &vm.jail) {
            // QEMU opens /dev/kvm by path.
            jail.device_node(Path::new("/dev/kvm"))?;
        }
        let mut launch = vm.launch();
        launch.serves_files();
        // The largest files QEMU writes are a template's memory and its state stream.
        launch.file_size_limit((u64::from(vm.memory_mib) << 20) + (1 << 30));
        let shared_dir = launch.file(&vm.shared_dir, "/shared", true);
        if restoring {
            devices.extend(["-incoming".to_string(), "defer".into()]);
        }
        // QEMU's own 9p server (virtio-fs over vhost-user cannot be migrated by QEMU 7.2, 9p can
        // while the guest has not mounted it, which a template never does). passthrough keeps
        // the guest's owners and modes on the host files and refuses every xattr but user.*
        // and ACLs; remap keeps inode numbers unique across the volumes' file systems.
        devices.extend([
            "-fsdev".to_string(),
            format!(
                "local,id=shared,path={},security_model=passthrough,multidevs=remap",
                shared_dir.display()
            ),
            "-device".into(),
            format!(
                "virtio-9p-device,fsdev=shared,mount_tag={}",
                vmpod_protocol::SHARED_FS_TAG
            ),
        ]);
        if let Some(net) = &vm.net {
            devices.extend([
                "-netdev".to_string(),
                format!("tap,id=net0,fd={}", launch.fd(net.tap_fd).last_fd()),
                "-device".into(),
                format!("virtio-net-device,netdev=net0,mac={}", net.mac),
            ]);
        }
        let mut cmdline = format!(
            "reboot=t panic=-1 pci=off console=ttyS0 quiet {}",
            vm.cmdline
        );
        let cpu = if self.kvm {
            let mut cpu = "host,-arch-capabilities".to_string();
            if Path::new("/sys/module/kvm_pvm").exists() {
                for f in KVM_PVM_HIDDEN.split(' ') {
                    cpu += &format!(",-{f}");
                }
                cmdline += &format!(" noxsave mitigations=off vmpod_no_int3_selftest vmpod_no_fpu_drop_fwait vmpod_syscall_fault_fallback clearcpuid={}", KVM_PVM_HIDDEN.replace(' ', ","));
            }
            cpu
        } else {
            "max".to_string()
        };
        let memory = format!("{}M", vm.memory_mib);
        let stderr = if vm.template.is_some() {
            let log = vm.state_dir.join("qemu.log");
            let file =
                std::fs::File::create(&log).map_err(io(format!("create {}", log.display())))?;
            self.log = Some(log);
            Stdio::from(file)
        } else {
            Stdio::inherit()
        };
        // Held until QEMU has opened it (its own copy lives on in QEMU).
        let mut clone_memory = None;
        let memory_backend = match &vm.template {
            None => format!("memory-backend-memfd,id=mem,size={memory},share=on"),
            Some(TemplateRole::Build { memory: file }) => {
                std::fs::File::create(file).map_err(io(format!("create {}", file.display())))?;
                if let Some(jail) = &vm.jail {
                    std::os::unix::fs::chown(file, Some(jail.uid()), Some(jail.uid()))
                        .map_err(io(format!("give {} to the sandbox's uid", file.display())))?;
                }
                self.building_memory = Some(file.clone());
                format!(
                    "memory-backend-file,id=mem,size={memory},share=on,mem-path={}",
                    launch.file(file, "/memory", true).display()
                )
            }
            Some(TemplateRole::Restore { memory: file, .. }) => {
                let fd = crate::guest_memory::clone_into_memfd(file)?;
                launch.fd(fd.as_raw_fd());
                let backend = format!(
                    "memory-backend-file,id=mem,size={memory},share=on,mem-path=/proc/self/fd/{}",
                    fd.as_raw_fd()
                );
                clone_memory = Some(fd);
                backend
            }
        };
        let kernel = launch.file(&vm.kernel, "/guest/vmlinux", false);
        let initrd = launch.file(&vm.initrd, "/guest/initrd", false);
        let console = std::fs::File::create(&self.console)
            .map_err(io(format!("create {}", self.console.display())))?;
        launch.fd(console.as_raw_fd());
        let mut qemu =
            launch.command(&paths::program("qemu-system-x86_64")?, Vec::<String>::new())?;
        let child = qemu
            .args(["-sandbox", QEMU_SANDBOX])
            .args([
                "-M",
                "microvm,acpi=off,x-option-roms=off,memory-backend=mem",
            ])
            .args([
                "-accel",
                if self.kvm { "kvm" } else { "tcg" },
                "-cpu",
                &cpu,
                "-smp",
                &vm.cpus.to_string(),
            ])
            .args(["-object", &memory_backend, "-m", &memory])
            .args([
                "-global",
                "virtio-mmio.force-legacy=false",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
            ])
            .arg("-add-fd")
            .arg(format!("fd={},set={CONSOLE_FDSET}", console.as_raw_fd()))
            .arg("-serial")
            .arg(format!("file:/dev/fdset/{CONSOLE_FDSET}"))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &cmdline])
            .args(&devices)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(io(
                "start qemu-system-x86_64 (apt-get install qemu-system-x86)",
            ))?;
        drop(console);
        self.qemu = Some(child);
        if vm.template.is_some() {
            // Guest memory is a file of its own (or a clone's copy of it): the stream
            // leaves it out.
            let ignore_shared = json!({"capabilities": [
                {"capability": "x-ignore-shared", "state": true}
            ]});
            self.qmp = Some(
                Qmp::connect(&qmp_sock, Duration::from_secs(10)).map_err(|e| {
                    let said = self.log_text();
                    SandboxError::Invalid(format!("{}{said}", crate::error::chain(&e)))
                })?,
            );
            drop(clone_memory);
            if let Some(qmp) = self.qmp.as_mut() {
                qmp.execute("migrate-set-capabilities", ignore_shared)?;
            }
        }
        if let Some(TemplateRole::Restore { state, .. }) = &vm.template {
            self.restore(state)?;
        }
        Ok(())
    }

    fn save(&mut self, state: &Path) -> Result<(), SandboxError> {
        let serial = self.serial.as_ref().ok_or_else(|| {
            SandboxError::Invalid("only a VM booted as a template can be saved".into())
        })?;
        serial.hang_up()?;
        let qmp = self
            .qmp
            .as_mut()
            .ok_or_else(|| SandboxError::Invalid("QEMU has no QMP socket".into()))?;
        qmp.execute("stop", json!({}))?;
        // The stream goes to a local file: QEMU's network-sized default bandwidth cap only
        // slows it down.
        qmp.execute(
            "migrate-set-parameters",
            json!({ "max-bandwidth": 1u64 << 40 }),
        )?;
        let stream =
            std::fs::File::create(state).map_err(io(format!("create {}", state.display())))?;
        qmp.pass_fd(STREAM_FD, stream.as_fd())?;
        qmp.execute("migrate", json!({ "uri": format!("fd:{STREAM_FD}") }))?;
        qmp.wait_for_migration(Duration::from_secs(120))
            .map_err(|e| SandboxError::Invalid(format!("save {}: {e}", state.display())))?;
        if let Some(memory) = self.building_memory.take() {
            std::os::unix::fs::chown(&memory, Some(0), Some(0))
                .and_then(|()| {
                    std::fs::set_permissions(&memory, std::fs::Permissions::from_mode(0o644))
                })
                .map_err(io(format!("give {} back to root", memory.display())))?;
        }
        Ok(())
    }

    fn vsock_uds(&self) -> &Path {
        &self.uds
    }

    fn console(&self) -> &Path {
        &self.console
    }

    fn ended(&mut self) -> Option<String> {
        if let Some(q) = self.qemu.as_mut() {
            if let Ok(Some(status)) = q.try_wait() {
                return Some(format!("QEMU {status}"));
            }
        }
        for b in &mut self.backends {
            if let Ok(Some(status)) = b.try_wait() {
                // A backend ends when QEMU closes its socket: QEMU's own end is the cause then.
                if let Some(q) = self.qemu.as_mut() {
                    if let Ok(Some(qemu_status)) = q.wait_timeout_ms(200) {
                        return Some(format!("QEMU {qemu_status}"));
                    }
                }
                return Some(format!("a device backend {status}"));
            }
        }
        None
    }

    fn slot_control(&self) -> Option<Arc<dyn SlotControl>> {
        self.disks
            .clone()
            .map(|control| control as Arc<dyn SlotControl>)
    }

    fn kill(&mut self) {
        self.disks = None;
        self.qmp = None;
        self.serial = None;
        for child in self.qemu.iter_mut().chain(self.backends.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.qemu = None;
        self.backends.clear();
    }
}

trait WaitTimeout {
    fn wait_timeout_ms(&mut self, ms: u64) -> std::io::Result<Option<std::process::ExitStatus>>;
}

impl WaitTimeout for std::process::Child {
    fn wait_timeout_ms(&mut self, ms: u64) -> std::io::Result<Option<std::process::ExitStatus>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if std::time::Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}
