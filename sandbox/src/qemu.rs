//! The QEMU backend: microvm, our blk and vsock devices as vmpod-vhost-user backends (one
//! process each), guest memory a shared memfd so the backends can map it.

use crate::error::{io, SandboxError};
use crate::hypervisor::{Hypervisor, VmSpec};
use crate::paths;
use crate::process::{die_with_parent, inherit_fd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Qemu {
    kvm: bool,
    uds: PathBuf,
    console: PathBuf,
    qemu: Option<Child>,
    backends: Vec<Child>,
}

impl Qemu {
    pub fn new(kvm: bool) -> Qemu {
        Qemu {
            kvm,
            uds: PathBuf::new(),
            console: PathBuf::new(),
            qemu: None,
            backends: Vec::new(),
        }
    }

    fn backend(&mut self, socket: &Path, args: &[String]) -> Result<(), SandboxError> {
        let child = die_with_parent(
            Command::new(paths::program("vmpod-vhost-user")?)
                .arg("--socket")
                .arg(socket)
                .args(args),
        )
        .stdin(Stdio::null())
        .spawn()
        .map_err(io("start vmpod-vhost-user"))?;
        self.backends.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
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
        Ok(())
    }
}

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
        self.uds = vm.state_dir.join("vsock.sock");
        self.console = vm.state_dir.join("console.log");
        let mut devices = Vec::new();
        let vsock_sock = vm.state_dir.join("vu-vsock.sock");
        self.backend(
            &vsock_sock,
            &["--vsock".into(), format!("3,{}", self.uds.display())],
        )?;
        devices.extend([
            "-chardev".to_string(),
            format!("socket,id=vs,path={}", vsock_sock.display()),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vs".into(),
        ]);
        for (i, disk) in vm.disks.iter().enumerate() {
            let sock = vm.state_dir.join(format!("vu-blk{i}.sock"));
            let mut spec = format!("{},serial={}", disk.path.display(), disk.serial);
            if disk.read_only {
                spec += ",ro";
            }
            self.backend(&sock, &["--blk".into(), spec])?;
            devices.extend([
                "-chardev".to_string(),
                format!("socket,id=blk{i},path={}", sock.display()),
                "-device".into(),
                format!("vhost-user-blk,chardev=blk{i}"),
            ]);
        }
        if let Some(net) = &vm.net {
            devices.extend([
                "-netdev".to_string(),
                format!("tap,id=net0,fd={}", net.tap_fd),
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
        let mut qemu = Command::new("qemu-system-x86_64");
        if let Some(net) = &vm.net {
            inherit_fd(&mut qemu, net.tap_fd);
        }
        let child = die_with_parent(
            qemu.args([
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
            .args([
                "-object",
                &format!("memory-backend-memfd,id=mem,size={memory},share=on"),
                "-m",
                &memory,
            ])
            .args([
                "-global",
                "virtio-mmio.force-legacy=false",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", self.console.display()))
            .arg("-kernel")
            .arg(&vm.kernel)
            .arg("-initrd")
            .arg(&vm.initrd)
            .args(["-append", &cmdline])
            .args(&devices),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(io(
            "start qemu-system-x86_64 (apt-get install qemu-system-x86)",
        ))?;
        self.qemu = Some(child);
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

    fn kill(&mut self) {
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
