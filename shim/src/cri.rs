//! What containerd's CRI plugin (Kubernetes) puts in a pod's specs, and what the guest makes
//! of it: which container is the pod's sandbox, how big its VM is, which namespaces the pod's
//! containers share, and its /dev/shm.
//!
//! The sandbox's task pid is the guest pid of its pause process, so the `/proc/PID/ns/…` paths
//! CRI writes into the other containers' specs name the pause process inside the VM as well.

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::path::{Path, PathBuf};
use vmpod_protocol::POD_SHM_DIR;

pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The pod's resources, as containerd passes them on the sandbox when kubelet sends them
/// (`PodSandboxConfig.linux.resources`: the sum of its containers' limits and the overhead).
const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// A container's part in a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The pod's sandbox ("pause") container: it boots the VM.
    Sandbox,
    /// One of a CRI pod's containers.
    PodContainer,
    /// A container created without CRI (`ctr run`): the first boots the VM with its layers.
    Plain,
}

fn annotation<'a>(spec: &'a Spec, key: &str) -> Option<&'a str> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

pub fn role(spec: &Spec) -> Role {
    match annotation(spec, CONTAINER_TYPE) {
        Some("sandbox") => Role::Sandbox,
        Some(_) => Role::PodContainer,
        None => Role::Plain,
    }
}

/// The pod a CRI container belongs to.
pub fn sandbox_id(spec: &Spec) -> Option<String> {
    annotation(spec, SANDBOX_ID).map(str::to_string)
}

/// The pod's VM size when its sandbox's annotations carry the pod's resources: `(vCPUs,
/// memory MiB of the containers' limits)`, each `None` when not given.
pub fn pod_resources(spec: &Spec) -> (Option<u8>, Option<u64>) {
    let number = |key| annotation(spec, key).and_then(|v| v.trim().parse::<i64>().ok());
    let memory = number(SANDBOX_MEMORY)
        .filter(|m| *m > 0)
        .map(|m| m as u64 >> 20);
    let cpus = match (number(SANDBOX_CPU_QUOTA), number(SANDBOX_CPU_PERIOD)) {
        (Some(q), Some(p)) if q > 0 && p > 0 => {
            Some((q as u64).div_ceil(p as u64).clamp(1, 64) as u8)
        }
        _ => None,
    };
    (cpus, memory)
}

/// The pod's IPC, UTS and (when shared) PID namespaces live in its pause process: a path
/// naming `/proc/SANDBOX_PID/ns/…` is kept for the guest, every other host namespace path is
/// dropped (a new namespace in the guest). The network path is the host's netns, which the
/// VM's NIC replaces: it is returned for the sandbox to wire the VM into.
pub fn guest_namespaces(spec: &mut Spec, sandbox_pid: Option<u32>) -> Option<PathBuf> {
    let mut netns = None;
    let mut linux = spec.linux().clone()?;
    if let Some(namespaces) = linux.namespaces().clone() {
        let mut kept = Vec::new();
        for mut ns in namespaces {
            if let Some(path) = ns.path().clone() {
                if ns.typ() == LinuxNamespaceType::Network {
                    netns = Some(path.clone());
                }
                if !names_the_sandbox(&path, ns.typ(), sandbox_pid) {
                    ns.set_path(None);
                }
            }
            kept.push(ns);
        }
        linux.set_namespaces(Some(kept));
    }
    spec.set_linux(Some(linux));
    netns
}

fn names_the_sandbox(path: &Path, typ: LinuxNamespaceType, sandbox_pid: Option<u32>) -> bool {
    let (Some(pid), Some(name)) = (sandbox_pid, ns_file(typ)) else {
        return false;
    };
    path == Path::new(&format!("/proc/{pid}/ns/{name}"))
}

fn ns_file(typ: LinuxNamespaceType) -> Option<&'static str> {
    match typ {
        LinuxNamespaceType::Ipc => Some("ipc"),
        LinuxNamespaceType::Uts => Some("uts"),
        LinuxNamespaceType::Pid => Some("pid"),
        _ => None,
    }
}

/// A pod's /dev/shm is one tmpfs in the guest: CRI's bind of the host's per-sandbox shm
/// directory becomes a bind of the guest's, so it never crosses the shared filesystem.
pub fn guest_shm(spec: &mut Spec) {
    let Some(mut mounts) = spec.mounts().clone() else {
        return;
    };
    for m in mounts.iter_mut() {
        let bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if bind && m.destination() == Path::new("/dev/shm") {
            m.set_source(Some(PathBuf::from(POD_SHM_DIR)));
        }
    }
    spec.set_mounts(Some(mounts));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_container_type_annotation_names_the_sandbox() {
        let sandbox = spec(
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":"sandbox"}}"#,
        );
        let app = spec(
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":"container"}}"#,
        );
        assert_eq!(role(&sandbox), Role::Sandbox);
        assert_eq!(role(&app), Role::PodContainer);
        assert_eq!(role(&Spec::default()), Role::Plain);
    }

    #[test]
    fn the_pods_resources_come_from_the_sandbox_annotations_when_given() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.sandbox-memory":"536870912",
                "io.kubernetes.cri.sandbox-cpu-quota":"150000","io.kubernetes.cri.sandbox-cpu-period":"100000"}}"#,
        );
        assert_eq!(pod_resources(&s), (Some(2), Some(512)));
        let odd = spec(
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.sandbox-memory":"lots",
                "io.kubernetes.cri.sandbox-cpu-quota":"-1","io.kubernetes.cri.sandbox-cpu-period":"100000"}}"#,
        );
        assert_eq!(pod_resources(&odd), (None, None));
        assert_eq!(pod_resources(&Spec::default()), (None, None));
    }

    #[test]
    fn namespaces_of_the_sandboxs_pause_are_kept_and_host_ones_dropped() {
        let mut s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[
                {"type":"network","path":"/var/run/netns/cni-1"},
                {"type":"ipc","path":"/proc/42/ns/ipc"},
                {"type":"uts","path":"/proc/42/ns/uts"},
                {"type":"pid","path":"/proc/43/ns/pid"},
                {"type":"mount"}]}}"#,
        );
        assert_eq!(
            guest_namespaces(&mut s, Some(42)),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        let paths: Vec<_> = s
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap()
            .into_iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect();
        assert_eq!(
            paths,
            [
                (LinuxNamespaceType::Network, None),
                (LinuxNamespaceType::Ipc, Some("/proc/42/ns/ipc".into())),
                (LinuxNamespaceType::Uts, Some("/proc/42/ns/uts".into())),
                (LinuxNamespaceType::Pid, None),
                (LinuxNamespaceType::Mount, None),
            ]
        );
        let mut plain = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"ipc","path":"/proc/42/ns/ipc"}]}}"#,
        );
        assert_eq!(guest_namespaces(&mut plain, None), None);
        let ns = plain
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap();
        assert!(ns[0].path().is_none());
    }

    #[test]
    fn the_shm_bind_becomes_the_pods_guest_tmpfs() {
        let mut s = spec(
            r#"{"ociVersion":"1.0.2","mounts":[
                {"destination":"/dev/shm","type":"bind","source":"/var/lib/containerd/sandboxes/x/shm","options":["rbind","ro"]},
                {"destination":"/etc/hosts","type":"bind","source":"/var/lib/kubelet/pods/u/etc-hosts","options":["rbind"]}]}"#,
        );
        guest_shm(&mut s);
        let mounts = s.mounts().clone().unwrap();
        assert_eq!(mounts[0].source().as_deref(), Some(Path::new(POD_SHM_DIR)));
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(Path::new("/var/lib/kubelet/pods/u/etc-hosts"))
        );
    }
}
