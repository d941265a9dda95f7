//! A test containerd, started the one way both containerd suites need: the build's binaries
//! (shim, vmpod-vmm, vmpod-vhost-user) first on its PATH, the guest files named to the shim,
//! its output in `containerd.log` beside its config, and ready once it has booted.

use super::support::repo_root;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Where the build put the shim (and vmpod-vmm, vmpod-vhost-user): cargo names it to tests;
/// an example (shim/examples/bench_pods.rs) runs from `<profile>/examples/`.
pub fn bin_dir() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_containerd-shim-vmpod-v2") {
        Some(shim) => Path::new(shim).parent().unwrap().to_path_buf(),
        None => std::env::current_exe()
            .unwrap()
            .ancestors()
            .nth(2)
            .unwrap()
            .to_path_buf(),
    }
}

pub fn guest_dir() -> PathBuf {
    std::env::var_os("VMPOD_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/guest"))
}

/// Starts containerd on `dir/config.toml` (inside the network namespace `netns` if given) and
/// waits until it serves `dir/containerd.sock`. VMPOD_* (hypervisor, debug, ...) pass through
/// to the shim.
pub fn start(dir: &Path, netns: Option<&str>) -> Child {
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    // nsenter, not `ip netns exec`: that one remounts /sys, which hides the cgroup mounts
    // runc needs.
    let mut command = match netns {
        Some(netns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{netns}")).arg("containerd");
            c
        }
        None => Command::new("containerd"),
    };
    let mut daemon = command
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", path)
        .env("VMPOD_GUEST_DIR", guest_dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start containerd (apt-get install containerd)");
    if let Err(log) = booted(dir) {
        let _ = daemon.kill();
        let _ = daemon.wait();
        panic!("containerd did not start: {log}");
    }
    daemon
}

/// Waits until containerd serves its socket and says it booted; its log if it does not.
fn booted(dir: &Path) -> Result<(), String> {
    let socket = dir.join("containerd.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
        if socket.exists() && log.contains("containerd successfully booted") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(log);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
