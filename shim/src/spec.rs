//! A bundle's spec as the guest sees it, and the VM sized for it. The shim's environment knobs
//! (VMPOD_HYPERVISOR, VMPOD_COLD_BOOT, VMPOD_DEBUG, VMPOD_POD_CPUS, VMPOD_POD_MEMORY_MIB) are
//! read here and nowhere else; they win over the host's vmpod.toml, whose `hypervisor`,
//! `memory_mib`, `cpus` and `log_level` apply where they are unset.

use crate::cri;
use crate::error::TaskError;
use oci_spec::runtime::Spec;
use std::path::{Path, PathBuf};
use vmpod_sandbox::backend;
use vmpod_sandbox::host_config::{self, HostConfig};
use vmpod_sandbox::hypervisor::Disk;
use vmpod_sandbox::{Boot, SandboxConfig};

/// Where the shim notes the VM's state directory in each bundle, for `delete` after a crash.
pub const SANDBOX_NOTE: &str = "vmpod-sandbox";
pub use vmpod_sandbox::hypervisor::{DEFAULT_POD_MIB, DEFAULT_VM_MIB, VM_OVERHEAD_MIB};
pub const DEFAULT_POD_CPUS: u8 = 1;

/// How the shim's environment asks VMs to be made.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// `auto`, `vmm` or `qemu` (VMPOD_HYPERVISOR; vmpod.toml's or `auto` when unset).
    pub hypervisor: Option<String>,
    /// Boot cold instead of restoring from a template (VMPOD_COLD_BOOT set).
    pub cold_boot: bool,
    /// The guest's console and the VMM's log kept verbose (VMPOD_DEBUG set).
    pub debug: bool,
    /// VMPOD_POD_CPUS and VMPOD_POD_MEMORY_MIB as given, read when a pod's VM is sized.
    pub pod_cpus: Option<String>,
    pub pod_memory_mib: Option<String>,
}

fn knob<T: std::str::FromStr + PartialOrd>(
    variable: &'static str,
    value: &Option<String>,
    default: T,
    range: (T, T),
    expected: &'static str,
) -> Result<T, TaskError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.trim().parse::<T>() {
        Ok(v) if v >= range.0 && v <= range.1 => Ok(v),
        _ => Err(TaskError::Knob {
            variable,
            value: value.clone(),
            expected,
        }),
    }
}

impl Knobs {
    pub fn from_env() -> Knobs {
        Knobs {
            hypervisor: std::env::var("VMPOD_HYPERVISOR").ok(),
            cold_boot: std::env::var_os("VMPOD_COLD_BOOT").is_some(),
            debug: std::env::var_os("VMPOD_DEBUG").is_some(),
            pod_cpus: std::env::var("VMPOD_POD_CPUS").ok(),
            pod_memory_mib: std::env::var("VMPOD_POD_MEMORY_MIB").ok(),
        }
    }

    /// The sandbox that runs `plan`.
    pub fn sandbox_config(&self, plan: VmPlan) -> Result<SandboxConfig, TaskError> {
        let host = host_config::get().map_err(|e| TaskError::Hypervisor(e.into()))?;
        let backend = backend::choose_for_host(
            self.hypervisor
                .as_deref()
                .map(|name| ("VMPOD_HYPERVISOR", name)),
        )
        .map_err(TaskError::Hypervisor)?
        .backend;
        let (cpus, memory_mib) = self.size(&plan, &host.config)?;
        // Restored from a template unless the environment asks for a cold boot.
        let boot = if self.cold_boot {
            Boot::Cold
        } else {
            Boot::Template
        };
        Ok(SandboxConfig {
            boot,
            backend,
            cpus,
            memory_mib,
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
            debug: self.debug || host.debug(),
            kernel_args: String::new(),
            netns: plan.netns,
        })
    }

    /// What the plan asks for, or the defaults: a pod's from the knobs, then the host's.
    fn size(&self, plan: &VmPlan, host: &HostConfig) -> Result<(u8, u32), TaskError> {
        let host_cpus = host.cpus.unwrap_or(1);
        let host_mib = |default| host.memory_mib.map_or(default, u64::from);
        let (default_cpus, default_mib) = if plan.pod {
            (
                knob(
                    "VMPOD_POD_CPUS",
                    &self.pod_cpus,
                    host.cpus.unwrap_or(DEFAULT_POD_CPUS),
                    (1, 64),
                    "a number of vCPUs from 1 to 64",
                )?,
                knob(
                    "VMPOD_POD_MEMORY_MIB",
                    &self.pod_memory_mib,
                    host_mib(DEFAULT_POD_MIB),
                    (128, 1 << 20),
                    "MiB of guest memory, at least 128",
                )?,
            )
        } else {
            (host_cpus, host_mib(DEFAULT_VM_MIB))
        };
        let memory = plan
            .memory_mib
            .map(|m| m + VM_OVERHEAD_MIB)
            .unwrap_or(default_mib);
        Ok((
            plan.cpus.unwrap_or(default_cpus),
            memory.min(u64::from(u32::MAX)) as u32,
        ))
    }
}

/// The VM as the container that boots it asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmPlan {
    /// A Kubernetes pod's VM (booted by its sandbox), or a plain container's.
    pub pod: bool,
    pub cpus: Option<u8>,
    /// The containers' memory limit (MiB), to which the guest's overhead is added.
    pub memory_mib: Option<u64>,
    /// Layer images, lowest first: attached as disks at boot.
    pub layers: Vec<PathBuf>,
    /// The network namespace the VM is wired into.
    pub netns: Option<PathBuf>,
}

impl VmPlan {
    /// A plain container's VM: its limits, and its layers at boot.
    pub fn for_container(spec: &Spec, layers: Vec<PathBuf>, netns: Option<PathBuf>) -> VmPlan {
        let (cpus, memory_mib) = container_limits(spec);
        VmPlan {
            pod: false,
            cpus,
            memory_mib,
            layers,
            netns,
        }
    }

    /// A pod's VM, booted by its sandbox: the pod's resources when containerd passes them.
    /// Its containers' layers come later, into spare disk slots.
    pub fn for_pod(sandbox: &Spec, netns: Option<PathBuf>) -> VmPlan {
        let (cpus, memory_mib) = cri::pod_resources(sandbox);
        VmPlan {
            pod: true,
            cpus,
            memory_mib,
            layers: Vec::new(),
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

/// A container's own memory limit (MiB) and the vCPUs its CPU quota asks for.
fn container_limits(spec: &Spec) -> (Option<u8>, Option<u64>) {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let memory = resources
        .as_ref()
        .and_then(|r| r.memory().as_ref().and_then(|m| m.limit()))
        .filter(|l| *l > 0)
        .map(|l| l as u64 >> 20);
    let cpus = resources
        .as_ref()
        .and_then(|r| r.cpu().clone())
        .and_then(|c| Some((c.quota()?, c.period()?)))
        .filter(|(q, p)| *q > 0 && *p > 0)
        .map(|(q, p)| (q as u64).div_ceil(p).clamp(1, 64) as u8);
    (cpus, memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    fn knobs() -> Knobs {
        Knobs {
            hypervisor: Some("qemu".into()),
            cold_boot: true,
            debug: true,
            pod_cpus: None,
            pod_memory_mib: None,
        }
    }

    #[test]
    fn a_containers_vm_is_sized_from_its_resources() {
        let none = HostConfig::default();
        let plain = VmPlan::for_container(&Spec::default(), Vec::new(), None);
        assert_eq!(
            knobs().size(&plain, &none).unwrap(),
            (1, DEFAULT_VM_MIB as u32)
        );
        let s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"resources":{"memory":{"limit":536870912},"cpu":{"quota":150000,"period":100000}}}}"#,
        );
        let plan = VmPlan::for_container(&s, Vec::new(), None);
        assert_eq!(
            knobs().size(&plan, &none).unwrap(),
            (2, 512 + VM_OVERHEAD_MIB as u32)
        );
    }

    #[test]
    fn a_pods_vm_takes_the_knobs_defaults_unless_the_sandbox_says_more() {
        let none = HostConfig::default();
        let plan = VmPlan::for_pod(&Spec::default(), None);
        assert!(plan.pod && plan.layers.is_empty());
        assert_eq!(
            knobs().size(&plan, &none).unwrap(),
            (DEFAULT_POD_CPUS, DEFAULT_POD_MIB as u32)
        );
        let set = Knobs {
            pod_cpus: Some("2".into()),
            pod_memory_mib: Some("1024".into()),
            ..knobs()
        };
        assert_eq!(set.size(&plan, &none).unwrap(), (2, 1024));
        let annotated = spec(
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.sandbox-memory":"268435456"}}"#,
        );
        let plan = VmPlan::for_pod(&annotated, None);
        assert_eq!(
            set.size(&plan, &none).unwrap(),
            (2, 256 + VM_OVERHEAD_MIB as u32)
        );
        for (cpus, memory, named) in [
            ("0", "512", "VMPOD_POD_CPUS=0"),
            ("1", "64", "VMPOD_POD_MEMORY_MIB=64"),
            ("one", "512", "VMPOD_POD_CPUS=one"),
        ] {
            let bad = Knobs {
                pod_cpus: Some(cpus.into()),
                pod_memory_mib: Some(memory.into()),
                ..knobs()
            };
            let err = bad.size(&plan, &none).unwrap_err().to_string();
            assert!(err.starts_with(named), "{err}");
        }
    }

    #[test]
    fn the_knobs_choose_how_the_vm_boots_and_its_layers_become_read_only_disks() {
        let plan = VmPlan {
            pod: false,
            cpus: Some(2),
            memory_mib: Some(256),
            layers: vec!["/c/a.erofs".into(), "/c/b.erofs".into()],
            netns: Some("/var/run/netns/cni-1".into()),
        };
        let config = knobs().sandbox_config(plan).unwrap();
        assert!(matches!(config.boot, Boot::Cold));
        assert!(matches!(
            config.backend,
            vmpod_sandbox::Backend::Qemu { .. }
        ));
        assert!(config.debug);
        assert_eq!((config.cpus, config.memory_mib), (2, 352));
        let serials: Vec<_> = config.disks.iter().map(|d| d.serial.as_str()).collect();
        assert_eq!(serials, ["layer0", "layer1"]);
        assert!(config.disks.iter().all(|d| d.read_only));

        let unknown = Knobs {
            hypervisor: Some("xen".into()),
            ..knobs()
        };
        let plan = VmPlan::for_container(&Spec::default(), Vec::new(), None);
        let Err(err) = unknown.sandbox_config(plan) else {
            panic!("an unknown hypervisor was taken");
        };
        assert!(err.to_string().contains("not 'xen'"), "{err}");
    }
}
