//! From `vmpod run`'s flags and an image (or `--rootfs DIR`) to everything a sandbox and its
//! container need, checked before any VM starts: bad input fails here, with nothing to undo.

use crate::publish::PortSpec;
use crate::{notice, publish, rootfs, volumes, Failure};
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
    LinuxResourcesBuilder, Spec,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use vmpod_protocol::{Rootfs, Upper};
use vmpod_sandbox::backend;
use vmpod_sandbox::hypervisor::{DEFAULT_VM_MIB, VM_OVERHEAD_MIB};
use vmpod_sandbox::image::{ImageError, Store};
use vmpod_sandbox::{host_config, Backend, SharedVolume};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the container's ID.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep stdin open and pass it to the container.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the container a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable (K=V).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Read environment variables from a file (K=V lines).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// USER[:GROUP], by name (from the image's /etc/passwd) or number.
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    /// A name for a background container (`vmpod exec NAME …`).
    #[arg(long)]
    pub name: Option<String>,
    /// Overrides the image's entrypoint ("" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// vCPUs of the VM and the container's CPU quota (default: `cpus` in vmpod.toml, else 1).
    #[arg(long)]
    pub cpus: Option<String>,
    /// The container's memory limit (e.g. 256m, 1g); the VM gets it plus the agent's share.
    #[arg(long, short = 'm')]
    pub memory: Option<String>,
    /// Bind a host directory or file, live (a missing directory is created).
    #[arg(short = 'v', long = "volume", value_name = "HOST:CTR[:ro|:rw]")]
    pub volume: Vec<String>,
    /// type=bind,source=HOST,target=CTR[,readonly] or type=tmpfs,target=CTR[,tmpfs-size=N].
    #[arg(long = "mount", value_name = "SPEC")]
    pub mount: Vec<String>,
    /// A tmpfs in the VM's memory at PATH.
    #[arg(long = "tmpfs", value_name = "PATH[:OPTIONS]")]
    pub tmpfs: Vec<String>,
    /// A network namespace (as a CNI plugin made it) whose interface and IP the VM takes over.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Publish a container's TCP port on the host (over vsock: no tap, no NAT).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[HOSTIP:]HOSTPORT:CTRPORT[/tcp]"
    )]
    pub publish: Vec<String>,
    /// Make the container's root filesystem read-only.
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Every capability and no masked or read-only /proc and /sys paths, as docker's
    /// --privileged: root's full powers over the VM's kernel, never over the host's.
    #[arg(long)]
    pub privileged: bool,
    /// The most processes the container may have at once (its pids cgroup; -1: no limit).
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// auto, vmm or qemu (default: `hypervisor` in vmpod.toml, else auto).
    #[arg(long)]
    pub hypervisor: Option<String>,
    /// Boot the VM's kernel instead of restoring the VM template of its shape.
    #[arg(long = "cold-boot")]
    pub cold_boot: bool,
    /// Run this directory as the root filesystem instead of an image.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// The agent narrates on the VM's console (kept in the state directory while it runs).
    #[arg(long, hide = true)]
    pub debug: bool,
    /// Appended to the guest kernel's command line (diagnosis and tests).
    #[arg(long, hide = true, default_value = "")]
    pub kernel_args: String,
    /// The image (or, with --rootfs, the command), then the command and its arguments.
    #[arg(trailing_var_arg = true)]
    pub args: Vec<String>,
}

/// Everything a run needs, decided: what the background monitor receives as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct Prepared {
    pub spec: Spec,
    pub rootfs: Rootfs,
    /// Read-only layer disks: (erofs image, serial).
    pub layers: Vec<(PathBuf, String)>,
    /// Host paths shared live with the guest, in the order the spec's binds name them.
    pub shared: Vec<SharedVolume>,
    pub user: Option<String>,
    pub cpus: u8,
    pub memory_mib: u32,
    /// Chosen once, here: a background monitor boots with the same backend.
    pub hypervisor: Backend,
    pub cold_boot: bool,
    pub debug: bool,
    pub kernel_args: String,
    pub netns: Option<PathBuf>,
    /// Host ports to publish, bound by whoever owns the sandbox before it starts.
    pub publish: Vec<PortSpec>,
    pub interactive: bool,
    pub tty: bool,
    /// What `vmpod ps` shows.
    pub image: String,
    pub command: Vec<String>,
}

fn runtime(message: impl Into<String>) -> Failure {
    Failure::runtime(message)
}

/// "512m", "1g", "1048576" (bytes) → bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text.as_str(), ""),
    };
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// docker's default capability set, so programs behave as under `docker run` (ping needs
/// NET_RAW, package managers CHOWN and SETUID...). The VM is the isolation boundary; these
/// are root's powers inside it, within the container's namespaces.
pub fn docker_capabilities() -> oci_spec::runtime::LinuxCapabilities {
    use oci_spec::runtime::Capability::*;
    let set: oci_spec::runtime::Capabilities = [
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Mknod,
        NetRaw,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ]
    .into_iter()
    .collect();
    let mut caps = oci_spec::runtime::LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    caps.set_inheritable(None);
    caps.set_ambient(None);
    caps
}

/// Every capability the OCI spec names: what `--privileged` grants (docker's, likewise).
pub fn all_capabilities() -> LinuxCapabilities {
    const NAMES: &str =
        "AUDIT_CONTROL AUDIT_READ AUDIT_WRITE BLOCK_SUSPEND BPF CHECKPOINT_RESTORE \
        CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID IPC_LOCK IPC_OWNER KILL LEASE \
        LINUX_IMMUTABLE MAC_ADMIN MAC_OVERRIDE MKNOD NET_ADMIN NET_BIND_SERVICE NET_BROADCAST \
        NET_RAW PERFMON SETGID SETFCAP SETPCAP SETUID SYS_ADMIN SYS_BOOT SYS_CHROOT SYS_MODULE \
        SYS_NICE SYS_PACCT SYS_PTRACE SYS_RAWIO SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG SYSLOG \
        WAKE_ALARM";
    let set: oci_spec::runtime::Capabilities = NAMES
        .split_whitespace()
        .map(|name| {
            serde_json::from_value::<Capability>(format!("CAP_{name}").into())
                .expect("a capability the OCI spec names")
        })
        .collect();
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    caps.set_inheritable(None);
    caps.set_ambient(None);
    caps
}

/// `K=V` entries in order, a later key replacing an earlier one in place (docker's merge of
/// image, --env-file and -e).
fn merge_env(layers: impl IntoIterator<Item = String>) -> Result<Vec<String>, Failure> {
    let mut env: Vec<String> = Vec::new();
    for entry in layers {
        let Some((key, _)) = entry.split_once('=') else {
            return Err(runtime(format!("environment entry '{entry}' is not K=V")));
        };
        match env
            .iter_mut()
            .find(|e| e.split_once('=').map(|(k, _)| k) == Some(key))
        {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    }
    Ok(env)
}

pub fn prepare(args: &RunArgs) -> Result<Prepared, Failure> {
    let host = host_config::get().map_err(|e| runtime(e.to_string()))?;
    let publish = args
        .publish
        .iter()
        .map(|spec| publish::parse(spec))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| runtime(e.to_string()))?;
    let cpus: f64 = match &args.cpus {
        Some(text) => text
            .parse()
            .ok()
            .filter(|c: &f64| *c > 0.0 && *c <= 64.0)
            .ok_or_else(|| {
                runtime(format!(
                    "--cpus '{text}' must be a number above 0 and at most 64"
                ))
            })?,
        None => f64::from(host.config.cpus.unwrap_or(1)),
    };
    let limit = match &args.memory {
        Some(m) => Some(parse_size(m).filter(|b| *b >= 4 << 20).ok_or_else(|| {
            runtime(format!(
                "--memory '{m}' must be a size of at least 4m (like 512m or 1g)"
            ))
        })?),
        None => None,
    };
    if let Some(dir) = &args.workdir {
        if !dir.starts_with('/') {
            return Err(runtime(format!(
                "--workdir '{dir}' must be an absolute path"
            )));
        }
    }
    if let Some(name) = &args.name {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(runtime(format!(
                "--name '{name}' may only hold letters, digits, '_', '.' and '-'"
            )));
        }
    }
    let mut user_mounts = Vec::new();
    for v in &args.volume {
        user_mounts.push(volumes::parse_volume(v)?);
    }
    for m in &args.mount {
        user_mounts.push(volumes::parse_mount(m)?);
    }
    for t in &args.tmpfs {
        user_mounts.push(volumes::parse_tmpfs(t)?);
    }
    let (shared, extra_mounts) = volumes::plan(user_mounts)?;
    if let Some(netns) = &args.netns {
        if !netns.exists() {
            return Err(runtime(format!(
                "--netns {}: no such network namespace",
                netns.display()
            )));
        }
    }
    let choice = backend::choose_for_host(
        args.hypervisor
            .as_deref()
            .map(|name| ("--hypervisor", name)),
    )
    .map_err(|e| runtime(e.to_string()))?;
    if choice.auto {
        notice::backend_fallback_once();
    }
    let backend = choice.backend;

    // The image's defaults, then what the flags say.
    let (image_name, layers, mut command, image_env, image_workdir, image_user) = match &args.rootfs
    {
        Some(dir) => {
            let layer = rootfs::layer_for(dir).map_err(runtime)?;
            (
                format!("--rootfs {}", dir.display()),
                vec![layer],
                args.args.clone(),
                Vec::new(),
                None,
                None,
            )
        }
        None => {
            let Some(reference) = args.args.first() else {
                return Err(runtime(
                        "no image given: vmpod run [OPTIONS] IMAGE [CMD [ARG...]] (or --rootfs DIR CMD)",
                    ));
            };
            let store = Store::open().map_err(|e| runtime(crate::chain(&e)))?;
            let image = match store.get(reference) {
                Ok(image) => image,
                // docker's habit: an image the store lacks is pulled first.
                Err(ImageError::NotFound(_)) => {
                    eprintln!("Unable to find image '{reference}' locally");
                    crate::pull::pull(reference)?
                }
                Err(e) => {
                    return Err(runtime(format!(
                        "image '{reference}': {}",
                        crate::chain(&e)
                    )))
                }
            };
            let mut paths = Vec::new();
            for diff_id in &image.layers {
                let path = store.layer_path(diff_id);
                if !path.is_file() {
                    return Err(runtime(format!(
                            "image '{reference}': layer {diff_id} is missing from the store ({}); import the image again",
                            path.display()
                        )));
                }
                paths.push(path);
            }
            let mut command = match &args.entrypoint {
                Some(e) if e.is_empty() => Vec::new(),
                Some(e) => vec![e.clone()],
                None => image.entrypoint.clone(),
            };
            let rest = &args.args[1..];
            if rest.is_empty() && args.entrypoint.is_none() {
                command.extend(image.cmd.iter().cloned());
            } else {
                command.extend(rest.iter().cloned());
            }
            (
                image.name.clone(),
                paths,
                command,
                image.env.clone(),
                image.working_dir.clone(),
                image.user.clone(),
            )
        }
    };
    if let (Some(e), Some(_)) = (&args.entrypoint, &args.rootfs) {
        command.insert(0, e.clone());
    }
    if command.is_empty() {
        return Err(runtime(format!(
            "no command: {image_name} has no Entrypoint or Cmd, and none was given"
        )));
    }

    let mut env_sources = vec![DEFAULT_PATH.to_string()];
    env_sources.extend(image_env);
    for file in &args.env_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| runtime(format!("--env-file {}: {e}", file.display())))?;
        env_sources.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    env_sources.extend(args.env.iter().cloned());
    if args.tty {
        env_sources.push("TERM=xterm".into());
    }
    let env = merge_env(env_sources)?;

    let mut spec = Spec::default();
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(command.clone()));
    process.set_terminal(Some(args.tty));
    process.set_env(Some(env));
    process.set_capabilities(Some(if args.privileged {
        all_capabilities()
    } else {
        docker_capabilities()
    }));
    if let Some(dir) = args.workdir.clone().or(image_workdir) {
        process.set_cwd(dir.into());
    }
    spec.set_process(Some(process));
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_readonly(Some(args.read_only));
    spec.set_root(Some(root));
    if let Some(h) = &args.hostname {
        spec.set_hostname(Some(h.clone()));
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.extend(extra_mounts);
    spec.set_mounts(Some(mounts));
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(bytes) = limit {
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes as i64)
                .build()
                .map_err(|e| runtime(e.to_string()))?,
        );
    }
    if cpus.fract() != 0.0 {
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota((cpus * 100_000.0) as i64)
                .period(100_000u64)
                .build()
                .map_err(|e| runtime(e.to_string()))?,
        );
    }
    if let Some(limit) = args.pids_limit {
        if limit == 0 || limit < -1 {
            return Err(runtime(format!(
                "--pids-limit {limit} must be a positive number (or -1: no limit)"
            )));
        }
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(limit)
                .build()
                .map_err(|e| runtime(e.to_string()))?,
        );
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    if args.privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    }
    linux.set_resources(Some(resources.build().map_err(|e| runtime(e.to_string()))?));
    spec.set_linux(Some(linux));

    let layers: Vec<(PathBuf, String)> = layers
        .into_iter()
        .enumerate()
        .map(|(i, path)| (path, format!("layer{i}")))
        .collect();
    let rootfs = Rootfs {
        layers: layers.iter().map(|(_, s)| s.clone()).collect(),
        upper: Upper::Tmpfs,
    };
    let memory_mib = limit
        .map(|b| (b >> 20) + VM_OVERHEAD_MIB)
        .unwrap_or_else(|| host.config.memory_mib.map_or(DEFAULT_VM_MIB, u64::from));
    Ok(Prepared {
        spec,
        rootfs,
        layers,
        shared,
        user: args.user.clone().or(image_user),
        cpus: cpus.ceil() as u8,
        memory_mib: memory_mib.min(u64::from(u32::MAX)) as u32,
        hypervisor: backend,
        cold_boot: args.cold_boot,
        debug: args.debug || host.debug(),
        kernel_args: args.kernel_args.clone(),
        netns: args.netns.clone(),
        publish,
        interactive: args.interactive,
        tty: args.tty,
        image: image_name,
        command,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_docker_reads_them() {
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("64MB"), Some(64 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        for bad in ["", "m", "12x", "-1m"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn privileged_grants_every_capability_the_spec_names() {
        let caps = all_capabilities();
        let bounding = caps.bounding().as_ref().unwrap();
        assert_eq!(bounding.len(), 41);
        assert!(bounding.contains(&Capability::SysAdmin));
        assert!(bounding.is_superset(&docker_capabilities().bounding().clone().unwrap()));
    }

    #[test]
    fn later_env_entries_replace_earlier_ones_in_place() {
        let env = merge_env(["A=1", "B=2", "A=3", "C="].map(String::from)).unwrap();
        assert_eq!(env, ["A=3", "B=2", "C="]);
        assert!(merge_env(["NOEQUALS".to_string()]).is_err());
    }
}
