//! A pod run through the CRI as kubelet runs one: RunPodSandbox, then containers created and
//! started one by one, waited for by polling ContainerStatus. Dropping it stops and removes the
//! sandbox (and the pod cgroup kubelet would remove), so a failed check leaves nothing.

use super::client::Cri;
use super::containerd::Shared;
use super::kubelet::{self, ContainerSpec, PodDirs};
use k8s_cri::v1::{ContainerState, ContainerStatus, NamespaceMode, PodSandboxConfig};
use std::time::{Duration, Instant};

pub struct Pod {
    pub cri: Cri,
    pub handler: String,
    pub dirs: PodDirs,
    pub config: PodSandboxConfig,
    pub id: String,
    pub ip: String,
    pub hostname: String,
    removed: bool,
}

/// ExecSync's answer, as text.
#[derive(Debug)]
pub struct Exec {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Pod {
    /// RunPodSandbox with `handler`; panics with containerd's words if it fails.
    pub fn run(node: &Shared, handler: &str, name: &str, pid: NamespaceMode) -> Pod {
        Pod::try_run(node, handler, name, pid).unwrap_or_else(|e| {
            super::containerd::note_failure();
            panic!("{e}")
        })
    }

    /// RunPodSandbox with `handler` and the sandbox's IP, or why not.
    pub fn try_run(
        node: &Shared,
        handler: &str,
        name: &str,
        pid: NamespaceMode,
    ) -> Result<Pod, String> {
        let cri = Cri::connect(&node.socket())
            .map_err(|e| format!("connect to containerd's CRI socket: {e}"))?;
        let dirs = PodDirs::new(&node.kubelet_root(), name);
        let hostname = format!("{name}-{}", &dirs.uid[..8]);
        let config = kubelet::sandbox_config(&dirs, &hostname, pid);
        let id = match cri.run_pod_sandbox(config.clone(), handler) {
            Ok(id) => id,
            Err(e) => {
                dirs.remove_cgroups();
                return Err(format!(
                    "RunPodSandbox ({handler}): {}\ncontainerd: {}",
                    e.message(),
                    node.errors()
                ));
            }
        };
        let mut pod = Pod {
            cri,
            handler: handler.into(),
            dirs,
            config,
            id,
            ip: String::new(),
            hostname,
            removed: false,
        };
        let status = pod
            .cri
            .pod_sandbox_status(&pod.id)
            .map_err(|e| format!("PodSandboxStatus: {}", e.message()))?;
        pod.ip = status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        if pod.ip.is_empty() {
            return Err("the sandbox has no IP".into());
        }
        Ok(pod)
    }

    /// The sandbox's verbose info (containerd's JSON: runtime spec, netns path, pid ...).
    pub fn info(&self) -> serde_json::Value {
        let status = self
            .cri
            .pod_sandbox_status(&self.id)
            .expect("PodSandboxStatus");
        status
            .info
            .get("info")
            .map(|s| serde_json::from_str(s).expect("the sandbox's info is JSON"))
            .unwrap_or_default()
    }

    /// CreateContainer + StartContainer; panics with containerd's words if either fails.
    pub fn start(&self, spec: ContainerSpec) -> String {
        self.try_start(spec).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(&self, spec: ContainerSpec) -> Result<String, String> {
        let name = spec.name.to_string();
        let handler = &self.handler;
        let config = kubelet::container_config(&self.dirs, spec);
        let id = self
            .cri
            .create_container(&self.id, config, &self.config)
            .map_err(|e| format!("CreateContainer {name} ({handler}): {}", e.message()))?;
        self.cri
            .start_container(&id)
            .map_err(|e| format!("StartContainer {name} ({handler}): {}", e.message()))?;
        Ok(id)
    }

    pub fn status(&self, id: &str) -> ContainerStatus {
        self.cri.container_status(id).expect("ContainerStatus")
    }

    /// Polls ContainerStatus until the container has exited, as kubelet's PLEG would.
    pub fn wait_exited(&self, id: &str, within: Duration) -> ContainerStatus {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status(id);
            if status.state == ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_running(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status(id);
            if status.state == ContainerState::ContainerRunning as i32 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} is not running: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn exec(&self, id: &str, script: &str) -> Exec {
        let r = self
            .cri
            .exec_sync(id, &["sh", "-c", script], 30)
            .unwrap_or_else(|e| panic!("ExecSync {script:?}: {}", e.message()));
        Exec {
            code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        }
    }

    /// `script`'s stdout, which must succeed.
    pub fn sh(&self, id: &str, script: &str) -> String {
        let r = self.exec(id, script);
        assert_eq!(r.code, 0, "{script:?} in {id}: {r:?}");
        r.stdout
    }

    /// StopPodSandbox + RemovePodSandbox, as kubelet does when the pod is deleted.
    pub fn remove(&mut self) {
        self.cri
            .stop_pod_sandbox(&self.id)
            .unwrap_or_else(|e| panic!("StopPodSandbox: {}", e.message()));
        self.cri
            .remove_pod_sandbox(&self.id)
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {}", e.message()));
        self.dirs.remove_cgroups();
        self.removed = true;
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            super::containerd::note_failure();
        }
        if !self.removed {
            let _ = self.cri.stop_pod_sandbox(&self.id);
            let _ = self.cri.remove_pod_sandbox(&self.id);
            self.dirs.remove_cgroups();
        }
    }
}
