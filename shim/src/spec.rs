//! A bundle's spec as the guest sees it, and the VM sized for it. The shim's environment knobs
//! (VMPOD_HYPERVISOR, VMPOD_COLD_BOOT, VMPOD_DEBUG) are read here and nowhere else.

use crate::error::TaskError;
use oci_spec::runtime::Spec;
use std::path::{Path, PathBuf};
use vmpod_sandbox::hypervisor::Disk;
use vmpod_sandbox::{Backend, Boot, SandboxConfig};

/// Where the shim notes the VM's state directory in each bundle, for `delete` after a crash.
pub const SANDBOX_NOTE: &str = "vmpod-sandbox";
/// The guest kernel, agent and page cache need this beside the containers' memory limit.
pub const VM_OVERHEAD_MIB: u64 = 96;
pub const DEFAULT_VM_MIB: u64 = 256;

/// How the shim's environment asks VMs to be made.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// `auto`, `vmm` or `qemu` (VMPOD_HYPERVISOR; `auto` when unset).
    pub hypervisor: String,
    /// Boot cold instead of restoring from a template (VMPOD_COLD_BOOT set).
    pub cold_boot: bool,
    /// The guest's console and the VMM's log kept verbose (VMPOD_DEBUG set).
    pub debug: bool,
}

impl Knobs {
    pub fn from_env() -> Knobs {
        Knobs {
            hypervisor: std::env::var("VMPOD_HYPERVISOR").unwrap_or_else(|_| "auto".into()),
            cold_boot: std::env::var_os("VMPOD_COLD_BOOT").is_some(),
            debug: std::env::var_os("VMPOD_DEBUG").is_some(),
        }
    }

    /// The sandbox that runs `plan`.
    pub fn sandbox_config(&self, plan: VmPlan) -> Result<SandboxConfig, TaskError> {
        let backend = Backend::choose(&self.hypervisor).map_err(TaskError::Hypervisor)?;
        // Restored from a template unless the environment asks for a cold boot.
        let boot = if self.cold_boot {
            Boot::Cold
        } else {
            Boot::Template
        };
        Ok(SandboxConfig {
            boot,
            backend,
            cpus: plan.cpus,
            memory_mib: plan.memory_mib,
            disks: plan
                .layers
                .iter()
                .enumerate()
                .map(|(i, path)| Disk {
                    path: path.clone(),
                    serial: format!("layer{i}"),
                    read_only: true,
                })
                .collect(),
            shared: Vec::new(),
            debug: self.debug,
            kernel_args: String::new(),
            netns: plan.netns,
        })
    }
}

/// The pod's VM as the first container asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmPlan {
    pub cpus: u8,
    pub memory_mib: u32,
    /// Layer images, lowest first: attached as disks at boot.
    pub layers: Vec<PathBuf>,
    /// The network namespace the VM is wired into.
    pub netns: Option<PathBuf>,
}

impl VmPlan {
    pub fn new(spec: &Spec, layers: Vec<PathBuf>, netns: Option<PathBuf>) -> VmPlan {
        let (cpus, memory_mib) = vm_size(spec);
        VmPlan {
            cpus,
            memory_mib,
            layers,
            netns,
        }
    }
}

/// The bundle's `config.json`.
pub fn read_spec(bundle: &Path) -> Result<Spec, TaskError> {
    let path = bundle.join("config.json");
    let parsed = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.into()),
        Err(e) => Err(e.into()),
    };
    parsed.map_err(|source| TaskError::Spec { path, source })
}

/// The spec's process gets containerd's terminal setting.
pub fn set_terminal(spec: &mut Spec, terminal: bool) {
    if let Some(mut process) = spec.process().clone() {
        process.set_terminal(Some(terminal));
        spec.set_process(Some(process));
    }
}

/// The VM's size from the first container's resources: its memory limit plus the overhead,
/// and as many vCPUs as its CPU quota asks for.
pub fn vm_size(spec: &Spec) -> (u8, u32) {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let memory = resources
        .as_ref()
        .and_then(|r| r.memory().as_ref().and_then(|m| m.limit()))
        .filter(|l| *l > 0)
        .map(|l| (l as u64 >> 20) + VM_OVERHEAD_MIB)
        .unwrap_or(DEFAULT_VM_MIB);
    let cpus = resources
        .as_ref()
        .and_then(|r| r.cpu().clone())
        .and_then(|c| Some((c.quota()?, c.period()?)))
        .filter(|(q, p)| *q > 0 && *p > 0)
        .map(|(q, p)| (q as u64).div_ceil(p).clamp(1, 64) as u8)
        .unwrap_or(1);
    (cpus, memory.min(u64::from(u32::MAX)) as u32)
}

/// The spec as the guest sees it: namespace paths name the host's (a CRI pod's pause
/// container, the CNI's netns), which the VM replaces; the network one is returned so the
/// sandbox wires it to the VM. Bind mounts of host paths are shared when the VM runs
/// (binds.rs).
pub fn adapt_spec(spec: &mut Spec) -> Result<Option<PathBuf>, String> {
    let mut netns = None;
    if let Some(mut linux) = spec.linux().clone() {
        if let Some(namespaces) = linux.namespaces().clone() {
            let mut kept = Vec::new();
            for mut ns in namespaces {
                if let Some(path) = ns.path().clone() {
                    if ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network {
                        netns = Some(path);
                    }
                    ns.set_path(None);
                }
                kept.push(ns);
            }
            linux.set_namespaces(Some(kept));
        }
        spec.set_linux(Some(linux));
    }
    Ok(netns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_vm_is_sized_from_the_first_containers_resources() {
        assert_eq!(vm_size(&Spec::default()), (1, DEFAULT_VM_MIB as u32));
        let s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"resources":{"memory":{"limit":536870912},"cpu":{"quota":150000,"period":100000}}}}"#,
        );
        assert_eq!(vm_size(&s), (2, 512 + VM_OVERHEAD_MIB as u32));
    }

    #[test]
    fn host_namespace_paths_are_dropped_and_the_netns_kept_for_the_vm() {
        let mut s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1"},{"type":"ipc","path":"/proc/42/ns/ipc"}]}}"#,
        );
        assert_eq!(
            adapt_spec(&mut s).unwrap(),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        let namespaces = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(namespaces.iter().all(|n| n.path().is_none()));
        assert_eq!(namespaces.len(), 3);
    }

    #[test]
    fn the_knobs_choose_how_the_vm_boots_and_its_layers_become_read_only_disks() {
        let knobs = Knobs {
            hypervisor: "qemu".into(),
            cold_boot: true,
            debug: true,
        };
        let plan = VmPlan {
            cpus: 2,
            memory_mib: 352,
            layers: vec!["/c/a.erofs".into(), "/c/b.erofs".into()],
            netns: Some("/var/run/netns/cni-1".into()),
        };
        let config = knobs.sandbox_config(plan).unwrap();
        assert!(matches!(config.boot, Boot::Cold));
        assert!(matches!(config.backend, Backend::Qemu { .. }));
        assert!(config.debug);
        assert_eq!((config.cpus, config.memory_mib), (2, 352));
        let serials: Vec<_> = config.disks.iter().map(|d| d.serial.as_str()).collect();
        assert_eq!(serials, ["layer0", "layer1"]);
        assert!(config.disks.iter().all(|d| d.read_only));

        let unknown = Knobs {
            hypervisor: "xen".into(),
            ..knobs
        };
        let plan = VmPlan::new(&Spec::default(), Vec::new(), None);
        let Err(err) = unknown.sandbox_config(plan) else {
            panic!("an unknown hypervisor was taken");
        };
        assert!(err.to_string().contains("not 'xen'"), "{err}");
    }
}
