//! What a kubelet does around the CRI, reduced to what the tests need: the pod's directories
//! under its root laid out as kubelet lays them out (volumes written by its atomic writer,
//! termination-log files, etc-hosts, the log directory), and the sandbox and container configs
//! it sends, with its labels, annotations, cgroup parent and namespace options.

use k8s_cri::v1::*;
use std::collections::HashMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

pub const POD_NAMESPACE: &str = "default";
/// The cluster DNS a kubelet hands every ClusterFirst pod.
pub const DNS_SERVER: &str = "10.96.0.10";
pub const DNS_SEARCHES: [&str; 3] = [
    "default.svc.cluster.local",
    "svc.cluster.local",
    "cluster.local",
];

/// The service-account token the projected volume holds.
pub const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.test-token.signature";

/// Where kubelet mounts a pod's service-account token.
pub const TOKEN_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A pod UID as the API server makes them (a UUID).
pub fn new_pod_uid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Writes `files` into `dir` as kubelet's atomic writer does: a fresh `..<timestamp>` directory
/// holding the files, a `..data_tmp` symlink to it renamed over `..data`, one `key ->
/// ..data/key` symlink per key, and the previous timestamped directory removed. The first
/// write and every update go through here.
pub fn atomic_write(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    // kubelet: os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05.")).
    let date = std::process::Command::new("date")
        .args(["-u", "+..%Y_%m_%d_%H_%M_%S."])
        .output()
        .expect("run date");
    let stamp = format!(
        "{}{}",
        String::from_utf8_lossy(&date.stdout).trim(),
        random_hex(5)
    );
    let payload = dir.join(&stamp);
    std::fs::create_dir(&payload).unwrap();
    std::fs::set_permissions(&payload, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (key, content) in files {
        let path = payload.join(key);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (key, _) in files {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(key), &link).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// One pod's directories under the kubelet root.
pub struct PodDirs {
    pub uid: String,
    pub name: String,
    /// `<root>/pods/<uid>`
    pub dir: PathBuf,
    /// `<root>/logs/pods/<namespace>_<name>_<uid>` (kubelet's /var/log/pods/...).
    pub log_dir: PathBuf,
}

impl PodDirs {
    pub fn new(kubelet_root: &Path, name: &str) -> PodDirs {
        let uid = new_pod_uid();
        let dir = kubelet_root.join("pods").join(&uid);
        let log_dir = kubelet_root
            .join("logs/pods")
            .join(format!("{POD_NAMESPACE}_{name}_{uid}"));
        std::fs::create_dir_all(dir.join("volumes")).unwrap();
        std::fs::create_dir_all(dir.join("plugins")).unwrap();
        std::fs::create_dir_all(&log_dir).unwrap();
        PodDirs {
            uid,
            name: name.into(),
            dir,
            log_dir,
        }
    }

    fn volume(&self, plugin: &str, name: &str) -> PathBuf {
        self.dir
            .join("volumes")
            .join(format!("kubernetes.io~{plugin}"))
            .join(name)
    }

    pub fn configmap(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.volume("configmap", name);
        atomic_write(&dir, files);
        dir
    }

    /// The service-account volume: token, ca.crt and namespace, projected.
    pub fn kube_api_access(&self) -> PathBuf {
        let dir = self.volume(
            "projected",
            &format!("kube-api-access-{}", &random_hex(3)[..5]),
        );
        atomic_write(
            &dir,
            &[
                ("token", TOKEN),
                (
                    "ca.crt",
                    "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n",
                ),
                ("namespace", POD_NAMESPACE),
            ],
        );
        dir
    }

    pub fn empty_dir(&self, name: &str) -> PathBuf {
        let dir = self.volume("empty-dir", name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        dir
    }

    /// `<pod>/containers/<name>/<random>`, the empty file kubelet mounts at
    /// /dev/termination-log.
    pub fn termination_log(&self, container: &str) -> PathBuf {
        let dir = self.dir.join("containers").join(container);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(random_hex(4));
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        file
    }

    /// kubelet's managed /etc/hosts, written once the sandbox has its IP.
    pub fn etc_hosts(&self, ip: &str, hostname: &str) -> PathBuf {
        let file = self.dir.join("etc-hosts");
        std::fs::write(
            &file,
            format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n\
                 ::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
                 fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
                 {ip}\t{hostname}\n"
            ),
        )
        .unwrap();
        file
    }

    /// The cgroupfs driver's pod cgroup.
    pub fn cgroup_parent(&self) -> String {
        format!("/kubepods/burstable/pod{}", self.uid)
    }

    /// Removes the pod cgroup a cgroupfs kubelet would remove (runc leaves the parent).
    pub fn remove_cgroups(&self) {
        let parent = self.cgroup_parent();
        for controller in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let base = controller.path();
            for dir in [parent.as_str(), "/kubepods/burstable", "/kubepods"] {
                let _ = std::fs::remove_dir(base.join(dir.trim_start_matches('/')));
            }
        }
    }

    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            ("io.kubernetes.pod.name".into(), self.name.clone()),
            ("io.kubernetes.pod.namespace".into(), POD_NAMESPACE.into()),
            ("io.kubernetes.pod.uid".into(), self.uid.clone()),
            ("app".into(), self.name.clone()),
        ])
    }
}

pub fn namespaces(pid: NamespaceMode) -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: pid as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The sandbox config kubelet sends for a pod with the pod network.
pub fn sandbox_config(pod: &PodDirs, hostname: &str, pid: NamespaceMode) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            namespace: POD_NAMESPACE.into(),
            attempt: 0,
        }),
        hostname: hostname.into(),
        log_directory: pod.log_dir.display().to_string(),
        dns_config: Some(DnsConfig {
            servers: vec![DNS_SERVER.into()],
            searches: DNS_SEARCHES.iter().map(|s| s.to_string()).collect(),
            options: vec!["ndots:5".into()],
        }),
        port_mappings: vec![],
        labels: pod.labels(),
        annotations: HashMap::from([
            ("kubernetes.io/config.source".into(), "api".into()),
            (
                "kubernetes.io/config.seen".into(),
                "2026-12-02T16:00:00.000000000Z".into(),
            ),
        ]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: pod.cgroup_parent(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(pid)),
                ..Default::default()
            }),
            // kubelet (1.24 on) sends the pod's summed limits, for runtimes that size a VM.
            resources: Some(LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 100_000,
                cpu_shares: 1024,
                memory_limit_in_bytes: 256 << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
        windows: None,
    }
}

/// A kubelet-style bind: private propagation, no relabel.
pub fn mount(host: &Path, container: &str, readonly: bool) -> Mount {
    Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    }
}

/// The paths kubelet masks and makes read-only in every unprivileged container.
const MASKED: [&str; 9] = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
const READONLY: [&str; 6] = [
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What a container of the pod asks for beyond its name, image and command.
pub struct ContainerSpec<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub command: Vec<String>,
    pub mounts: Vec<Mount>,
    pub memory_limit: i64,
    pub pid: NamespaceMode,
    /// `stdin: true, tty: true`, as `kubectl run -it` asks, so the container can be attached to.
    pub interactive: bool,
}

/// The container config kubelet sends (`generateContainerConfig`).
pub fn container_config(pod: &PodDirs, spec: ContainerSpec) -> ContainerConfig {
    let mut labels = pod.labels();
    labels.remove("app");
    labels.insert("io.kubernetes.container.name".into(), spec.name.into());
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: spec.name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: spec.image.into(),
            ..Default::default()
        }),
        command: spec.command,
        args: vec![],
        working_dir: String::new(),
        envs: vec![
            KeyValue {
                key: "KUBERNETES_SERVICE_HOST".into(),
                value: "10.96.0.1".into(),
            },
            KeyValue {
                key: "KUBERNETES_SERVICE_PORT".into(),
                value: "443".into(),
            },
        ],
        mounts: spec.mounts,
        stdin: spec.interactive,
        tty: spec.interactive,
        log_path: format!("{}/0.log", spec.name),
        labels,
        annotations: HashMap::from([
            ("io.kubernetes.container.hash".into(), "1a2b3c4d".into()),
            ("io.kubernetes.container.restartCount".into(), "0".into()),
            (
                "io.kubernetes.container.terminationMessagePath".into(),
                "/dev/termination-log".into(),
            ),
            (
                "io.kubernetes.container.terminationMessagePolicy".into(),
                "File".into(),
            ),
            (
                "io.kubernetes.pod.terminationGracePeriod".into(),
                "30".into(),
            ),
        ]),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 50_000,
                cpu_shares: 512,
                memory_limit_in_bytes: spec.memory_limit,
                oom_score_adj: 999,
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(spec.pid)),
                masked_paths: MASKED.iter().map(|s| s.to_string()).collect(),
                readonly_paths: READONLY.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}
