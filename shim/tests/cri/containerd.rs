//! One containerd with its CRI plugin on, shared by every test of the binary: started on first
//! use inside a network namespace of its own (a node's network: the CNI bridge lives there),
//! with its own root, state and socket under a scratch directory, the build's binaries first on
//! its PATH, and the test images imported into `k8s.io`. Stopped at the process's exit.

use super::daemon;
pub use super::daemon::{guest_dir, text};
use super::images;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The handler names the CRI config declares, as a kubelet's RuntimeClass would name them.
pub const RUNC: &str = "runc";
pub const VMPOD: &str = "vmpod";

/// The pods' CNI network (bridge + host-local); the bridge is the node's side, its gateway.
pub const POD_SUBNET: &str = "10.88.77.0/24";
pub const BRIDGE: &str = "vmpodcri0";

pub struct CriContainerd {
    /// Scratch root: config.toml, root/, state/, the socket, cni/, images/, kubelet/.
    pub dir: PathBuf,
    /// The node's network namespace (`ip netns` name) containerd runs in.
    pub netns: String,
    daemon: Option<Child>,
}

static SHARED: OnceLock<Mutex<Option<CriContainerd>>> = OnceLock::new();

/// Set when a test failed with a pod up: containerd's log (the shims' lines in it) is kept.
static FAILED: AtomicBool = AtomicBool::new(false);

pub fn note_failure() {
    FAILED.store(true, Ordering::Relaxed);
}

/// Stops the shared containerd (and removes what it made); a later `shared()` panics.
pub fn stop_shared() {
    if let Some(shared) = SHARED.get() {
        let taken = shared.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(taken);
    }
}

extern "C" fn stop_shared_at_exit() {
    // On a thread of its own: the exiting thread's thread-locals (tokio's context among them)
    // may be gone already, and a panic must not unwind into C.
    let _ = std::thread::spawn(stop_shared).join();
}

/// The write end of the pipe the signal handler pokes.
static INTERRUPT_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    let byte = 1u8;
    // SAFETY: write(2) is async-signal-safe; the pipe lives as long as the process.
    unsafe {
        libc::write(
            INTERRUPT_PIPE.load(Ordering::Relaxed),
            (&byte as *const u8).cast(),
            1,
        )
    };
}

/// Ctrl-C (or SIGTERM, SIGHUP) ends the process through exit(3), so the pods and containerd are
/// removed as at a normal end: the handler only writes to a pipe, a thread reads it and exits.
fn exit_cleanly_on_interrupt() {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a two-int array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return;
    }
    INTERRUPT_PIPE.store(fds[1], Ordering::Relaxed);
    std::thread::spawn(move || {
        let mut byte = 0u8;
        // SAFETY: read(2) of one byte into a local from the pipe made above.
        if unsafe { libc::read(fds[0], (&mut byte as *mut u8).cast(), 1) } == 1 {
            eprintln!("interrupted: removing the pods and stopping containerd");
            std::process::exit(130);
        }
    });
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only calls write(2).
        unsafe { libc::signal(signal, on_interrupt as *const () as libc::sighandler_t) };
    }
}

/// The binary's containerd, started by the first test that asks; what a test needs of it is
/// its socket, paths and netns, all fixed once started.
pub fn shared() -> Shared {
    let cell = SHARED.get_or_init(|| {
        // SAFETY: registers a plain extern "C" function with no arguments, run once at exit.
        unsafe { libc::atexit(stop_shared_at_exit) };
        exit_cleanly_on_interrupt();
        Mutex::new(Some(CriContainerd::start()))
    });
    let guard = cell.lock().unwrap_or_else(|e| e.into_inner());
    let c = guard.as_ref().expect("containerd already stopped");
    Shared {
        dir: c.dir.clone(),
        netns: c.netns.clone(),
    }
}

/// What tests see of the shared containerd.
#[derive(Clone)]
pub struct Shared {
    pub dir: PathBuf,
    pub netns: String,
}

impl Shared {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }

    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// containerd's error lines, for a failure's message.
    pub fn errors(&self) -> String {
        self.log()
            .lines()
            .filter(|l| l.contains("level=error"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `ctr -n k8s.io ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Runs `program ARGS` in the node's network namespace (nsenter: `ip netns exec` would
    /// remount /sys).
    pub fn in_node_netns(&self, program: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path().display()))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// containerd's config: CRI on, runc and vmpod handlers, CNI from Debian's plugins with the
/// test's own conf dir, the local pause image, no OOM score below containerd's own.
pub fn config_toml(dir: &Path) -> String {
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # root here lacks CAP_SYS_RESOURCE: no score below containerd's own.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.vmpod]
      runtime_type = "io.containerd.vmpod.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1
"#,
        d = dir.display(),
        pause = images::PAUSE,
    )
}

/// The pods' network: a bridge in the node's netns (the gateway) and host-local addresses
/// kept in the scratch dir.
pub fn cni_conflist(dir: &Path) -> String {
    format!(
        r#"{{
  "cniVersion": "0.4.0",
  "name": "vmpod-cri",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{ "subnet": "{POD_SUBNET}" }}]],
        "routes": [{{ "dst": "0.0.0.0/0" }}],
        "dataDir": "{d}/cni/ipam"
      }}
    }}
  ]
}}
"#,
        d = dir.display()
    )
}

impl CriContainerd {
    fn start() -> CriContainerd {
        let dir = std::env::temp_dir().join(format!("vmpod-test-cri-{}", std::process::id()));
        let netns = format!("vmpod-cri-{}", std::process::id());
        // What an earlier, killed run with the same pid left would be in the way.
        let _ = run("ip", &["netns", "del", &netns]);
        unmount_under(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cni/net.d")).unwrap();
        std::fs::create_dir_all(dir.join("kubelet/pods")).unwrap();
        ok("ip", &["netns", "add", &netns]);
        let mut c = CriContainerd {
            dir,
            netns,
            daemon: None,
        };
        // The CRI's stream server listens on 127.0.0.1.
        ok("ip", &["-n", &c.netns, "link", "set", "lo", "up"]);
        std::fs::write(c.dir.join("config.toml"), config_toml(&c.dir)).unwrap();
        std::fs::write(
            c.dir.join("cni/net.d/10-vmpod-cri.conflist"),
            cni_conflist(&c.dir),
        )
        .unwrap();
        c.launch();
        let shared = Shared {
            dir: c.dir.clone(),
            netns: c.netns.clone(),
        };
        for archive in images::build(&c.dir.join("images")) {
            let out = shared.ctr(&["images", "import", archive.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "ctr images import {}: {}",
                archive.display(),
                text(&out.stderr)
            );
        }
        // The CRI learns of images from containerd's events: wait until it sees them all.
        let cri = super::client::Cri::connect(&shared.socket()).expect("connect to the CRI");
        let deadline = Instant::now() + Duration::from_secs(30);
        for name in [images::PAUSE, images::IMAGE_A, images::IMAGE_B] {
            while cri.image_status(name).map_or(true, |s| s.image.is_none()) {
                assert!(
                    Instant::now() < deadline,
                    "the CRI does not see {name}: {}",
                    shared.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        c
    }

    fn launch(&mut self) {
        self.daemon = Some(daemon::start(&self.dir, Some(&self.netns)));
    }

    fn shims(&self) -> Vec<i32> {
        let socket = self.dir.join("containerd.sock").display().to_string();
        processes()
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains("containerd-shim") && cmdline.contains(&socket))
            .map(|(pid, _)| pid)
            .collect()
    }
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        // Pods a failed test left: stop and remove them through the CRI while containerd runs.
        let shared = Shared {
            dir: self.dir.clone(),
            netns: self.netns.clone(),
        };
        if let Ok(cri) = super::client::Cri::connect(&shared.socket()) {
            for id in cri.pod_ids().unwrap_or_default() {
                let _ = cri.stop_pod_sandbox(&id);
                let _ = cri.remove_pod_sandbox(&id);
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            // SAFETY: kill(2) of the containerd this fixture started.
            unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // Shims outlive containerd by design; one a failure left is killed (a runc shim's
        // container goes with its cgroup below, a vmpod shim's VM with the shim).
        for pid in self.shims() {
            // SAFETY: kill(2) of a shim this fixture's containerd started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = run("ip", &["netns", "del", &self.netns]);
        if FAILED.load(Ordering::Relaxed) {
            let kept = std::env::temp_dir()
                .join(format!("vmpod-cri-{}-containerd.log", std::process::id()));
            if std::fs::copy(self.dir.join("containerd.log"), &kept).is_ok() {
                eprintln!("containerd's log (with the shims'): {}", kept.display());
            }
        }
        unmount_under(&self.dir);
        // remove_dir_all would walk into a mount left behind: only once nothing is mounted.
        if mounts_under(&self.dir).is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("{} kept: mounts remain", self.dir.display());
        }
    }
}

/// Every process as (pid, cmdline with spaces).
pub fn processes() -> Vec<(i32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            Some((pid, text(&cmdline).replace('\0', " ")))
        })
        .collect()
}

/// The host's mount points under `dir` (this process's mount namespace), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    let mut found: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found
}

fn unmount_under(dir: &Path) {
    for mount in mounts_under(dir) {
        let _ = run("umount", &["--lazy", &mount]);
    }
}
