//! `vmpod info`: what this host's vmpod would use and why: the config file, KVM, the backend
//! and what chose it, the guest's kernel and initramfs, the stores, the default VM.

use crate::Failure;
use vmpod_sandbox::backend::{self, Backend};
use vmpod_sandbox::hypervisor::{DEFAULT_POD_MIB, DEFAULT_VM_MIB};
use vmpod_sandbox::{host_config, image, paths, template};

pub fn info() -> Result<i32, Failure> {
    let host = host_config::get().map_err(|e| Failure::runtime(e.to_string()))?;
    let choice = backend::choose_for_host(None).map_err(|e| Failure::runtime(e.to_string()))?;
    let config = if host.found {
        host.path.display().to_string()
    } else {
        format!("{} (none: built-in defaults)", host.path.display())
    };
    let backend = match choice.backend {
        Backend::Vmm => "vmm (vmpod-vmm on KVM)",
        Backend::Qemu { kvm: true } => "qemu (QEMU microvm on KVM)",
        Backend::Qemu { kvm: false } => "qemu (QEMU microvm on TCG)",
    };
    let why = match (choice.auto, backend::auto_fallback()) {
        (true, Some(fallback)) => format!("auto: {fallback}"),
        (true, None) => "auto: KVM runs guests at speed".into(),
        (false, _) => choice.source.clone(),
    };
    let guest_file = |name| match paths::guest_file(name) {
        Ok(path) => path.display().to_string(),
        Err(e) => e.to_string(),
    };
    let store = |configured: &Option<std::path::PathBuf>, default: &str| {
        configured
            .as_ref()
            .map_or(default.to_string(), |p| p.display().to_string())
    };
    let level = match host.config.log_level {
        Some(level) => format!("{level:?}").to_lowercase(),
        None => "warn".into(),
    };
    let rows = [
        ("config", config),
        ("kvm", backend::kvm_kind().to_string()),
        ("backend", format!("{backend}, chosen by {why}")),
        ("kernel", guest_file(paths::KERNEL)),
        ("initramfs", guest_file(paths::INITRAMFS)),
        (
            "image store",
            store(&host.config.image_store, image::IMAGE_ROOT),
        ),
        (
            "template store",
            store(&host.config.template_store, template::ROOT),
        ),
        (
            "default VM",
            match host.config.memory_mib {
                Some(mib) => format!("{} vCPU, {mib} MiB", host.config.cpus.unwrap_or(1)),
                None => format!(
                    "{} vCPU, {DEFAULT_VM_MIB} MiB (a pod's: {DEFAULT_POD_MIB} MiB)",
                    host.config.cpus.unwrap_or(1)
                ),
            },
        ),
        ("log level", level),
        (
            "plain HTTP",
            std::iter::once("localhost, 127.0.0.0/8".to_string())
                .chain(host.config.insecure_registries.iter().flatten().cloned())
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ];
    for (name, value) in rows {
        println!("{:<15} {value}", format!("{name}:"));
    }
    Ok(0)
}
