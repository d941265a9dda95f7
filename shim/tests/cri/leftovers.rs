//! What a pod leaves on the node while it runs, noted before it is removed and checked gone
//! after: its shim, its mounts (kubelet root, containerd's state and root), its network
//! namespace and host-side veth, its containerd containers and tasks, a VM's state directory.

use super::containerd::{mounts_under, processes, text, Shared};
use super::pod::Pod;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Traces {
    sandbox: String,
    pod_dir: PathBuf,
    containers: Vec<String>,
    netns: Option<String>,
    veths: Vec<String>,
    /// A vmpod pod's VM state directory (/run/vmpod/<id>), from the note its shim leaves in
    /// the sandbox's bundle.
    vm_state: Option<PathBuf>,
}

impl Traces {
    /// Noted just before the pod is removed, so that its containers are known.
    pub fn of(node: &Shared, pod: &Pod) -> Traces {
        let info = pod.info();
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .map(str::to_string);
        let veths = info["cniResult"]["Interfaces"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, _)| name.clone())
            .filter(|name| name.starts_with("veth"))
            .collect();
        let containers = pod
            .cri
            .containers_of(&pod.id)
            .expect("ListContainers")
            .into_iter()
            .map(|c| c.id)
            .collect();
        let vm_state = std::fs::read_to_string(
            node.dir
                .join("state/io.containerd.runtime.v2.task/k8s.io")
                .join(&pod.id)
                .join("vmpod-sandbox"),
        )
        .ok()
        .map(PathBuf::from);
        Traces {
            vm_state,
            sandbox: pod.id.clone(),
            containers,
            pod_dir: pod.dirs.dir.clone(),
            netns,
            veths,
        }
    }

    /// What remains, as sentences.
    fn remaining(&self, node: &Shared) -> Vec<String> {
        let containers = &self.containers;
        let mut found = Vec::new();
        for (pid, cmdline) in processes() {
            if cmdline.contains(&self.sandbox) {
                found.push(format!("process {pid}: {cmdline}"));
            }
        }
        for dir in [&self.pod_dir, &node.dir] {
            for mount in mounts_under(dir) {
                if dir == &self.pod_dir
                    || mount.contains(&self.sandbox)
                    || containers.iter().any(|c| mount.contains(c.as_str()))
                {
                    found.push(format!("mount {mount}"));
                }
            }
        }
        if let Some(vm) = self.vm_state.as_ref().filter(|d| d.exists()) {
            found.push(format!("VM state directory {}", vm.display()));
        }
        if let Some(netns) = &self.netns {
            if std::path::Path::new(netns).exists() {
                found.push(format!("netns {netns}"));
            }
        }
        let links = text(&node.in_node_netns("ip", &["-o", "link", "show"]).stdout);
        for veth in &self.veths {
            if links.contains(&format!(" {veth}@")) {
                found.push(format!("veth {veth}"));
            }
        }
        for tap in links.lines().filter(|l| l.contains("tap")) {
            found.push(format!("tap in the node's netns: {tap}"));
        }
        for what in ["tasks", "containers"] {
            let listed = text(&node.ctr(&[what, "ls", "-q"]).stdout);
            for id in listed.lines() {
                if id == self.sandbox || containers.iter().any(|c| c == id) {
                    found.push(format!("containerd {what}: {id}"));
                }
            }
        }
        found
    }

    /// Fails naming what the pod left, once a few seconds have passed.
    pub fn check_gone(&self, node: &Shared) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = self.remaining(node);
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "the removed pod left: {left:#?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
