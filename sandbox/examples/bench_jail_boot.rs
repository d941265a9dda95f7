//! Spawn to ready of vmpod-vmm with the tiny test guest, jailed or not, filtered or not: the
//! steps vmm.rs takes (a jail with its uid claim, cgroup and slot directory; /dev/kvm, the
//! kernel, the console and the config passed as descriptors), timed from before the jail is
//! made to the guest's "tiny: waiting" on the console (its boot-timer byte is just before).
//! scripts/bench_jail.py runs it; prints one line per run, milliseconds.
//!
//!   bench_jail_boot [--no-jail] [--no-seccomp] [--runs N]

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use vmpod_sandbox::jail::{Jail, Launch};
use vmpod_vmm::config::{Console, VmConfig};

struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn boot_once(run: u64, jailed: bool, seccomp: bool) -> Result<f64, String> {
    let guest = std::env::var_os("VMPOD_GUEST_DIR").ok_or("VMPOD_GUEST_DIR is not set")?;
    let kernel_path = Path::new(&guest).join("tiny-guest.elf");
    let state_dir = Path::new(vmpod_sandbox::paths::STATE_ROOT).join(format!(
        "{:012x}",
        u64::from(std::process::id()) * 1_000 + run
    ));
    let started = Instant::now();
    std::fs::create_dir_all(&state_dir).map_err(|e| format!("state dir: {e}"))?;
    let _state = RemovedOnDrop(state_dir.clone());
    let jail = match jailed {
        true => Some(Jail::create(&state_dir, 1 << 30).map_err(|e| format!("jail: {e}"))?),
        false => None,
    };
    let open = |path: &Path, write: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let kernel = open(&kernel_path, false)?;
    let kvm = open(Path::new("/dev/kvm"), true)?;
    let console_path = state_dir.join("console.log");
    let console = std::fs::File::create(&console_path).map_err(|e| format!("console: {e}"))?;
    let config_path = state_dir.join("vm.json");
    let vm = VmConfig {
        kernel: format!("/proc/self/fd/{}", kernel.as_raw_fd()).into(),
        memory_mib: 16,
        cmdline: "tiny=wait".into(),
        console: Console::File(format!("fd:{}", console.as_raw_fd()).into()),
        kvm: Some(format!("fd:{}", kvm.as_raw_fd()).into()),
        ..VmConfig::default()
    };
    let json = serde_json::to_vec(&vm).map_err(|e| format!("config: {e}"))?;
    std::fs::write(&config_path, json).map_err(|e| format!("config: {e}"))?;
    let config = open(&config_path, false)?;
    let mut launch = Launch::new(jail.as_ref());
    for fd in [&kernel, &console, &kvm, &config] {
        launch.fd(fd.as_raw_fd());
    }
    let pvm = Path::new("/sys/module/kvm_pvm");
    if pvm.exists() {
        launch.file(pvm, "/sys/module/kvm_pvm", false);
    }
    let mut args = vec!["--config".to_string(), format!("fd:{}", config.as_raw_fd())];
    if !seccomp {
        args.push("--no-seccomp".into());
    }
    let vmm = vmpod_sandbox::paths::program("vmpod-vmm").map_err(|e| e.to_string())?;
    let mut child = launch
        .command(&vmm, args)
        .map_err(|e| e.to_string())?
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start vmpod-vmm: {e}"))?;
    let deadline = started + Duration::from_secs(60);
    let ready = loop {
        let text = std::fs::read_to_string(&console_path).unwrap_or_default();
        if text.contains("tiny: waiting") {
            break Ok(started.elapsed().as_secs_f64() * 1e3);
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            break Err(format!("the tiny guest never got ready: {text:?}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    // SAFETY: SIGTERM to our own child (the jailer hands it on).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    drop(jail);
    ready
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let jailed = !args.iter().any(|a| a == "--no-jail");
    let seccomp = !args.iter().any(|a| a == "--no-seccomp");
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(5u64);
    for run in 0..runs {
        match boot_once(run, jailed, seccomp) {
            Ok(ms) => println!("{ms:.2}"),
            Err(e) => {
                eprintln!("bench_jail_boot: {e}");
                std::process::exit(1);
            }
        }
    }
}
