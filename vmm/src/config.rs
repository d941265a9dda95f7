//! The VM's configuration: one JSON document (file or fd), overridable from the command line,
//! validated once before anything is created.
//!
//! (Over 600 lines with its unit tests; the config itself is about 400.)

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cpuid::CpuFeature;

/// Guests address vCPUs by 8-bit APIC ids in the MP table, and id 255 is broadcast.
pub const MAX_VCPUS: u8 = 254;
/// Below this the fixed low-memory layout (boot structures, kernel at 1 MiB) does not fit.
pub const MIN_MEMORY_MIB: u64 = 16;
/// virtio devices take IOAPIC lines 5..=23 (4 is the serial port).
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// A sanity bound, not a KVM limit: a typo of a few zeros should fail here, not in mmap.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("snapshot file {0} is missing")]
    SnapshotMissing(PathBuf),
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("no kernel given (--kernel or \"kernel\" in the config)")]
    NoKernel,
    #[error("cpus must be between 1 and {MAX_VCPUS}, not {0}")]
    Cpus(u64),
    #[error("memory must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, not {0}")]
    Memory(u64),
    #[error("kernel {0}: no such file")]
    KernelMissing(PathBuf),
    #[error("initrd {0}: no such file")]
    InitrdMissing(PathBuf),
    #[error("vsock guest_cid must be 3 or more, not {0}")]
    GuestCid(u32),
    #[error("net needs exactly one of \"tap\" (a name) or \"fd\"")]
    NetBackend,
    #[error("net mac {0:?} is not of the form aa:bb:cc:dd:ee:ff")]
    Mac(String),
    #[error("fs tag {0:?} must be 1 to 36 bytes")]
    FsTag(String),
    #[error("fs shared_dir {0}: not an existing directory")]
    FsSharedDir(PathBuf),
    #[error("at most {MAX_VIRTIO_DEVICES} virtio devices fit the interrupt lines; {0} asked for")]
    TooManyDevices(usize),
    #[error("disk {0} has no image: an empty slot must be read_only")]
    WritableEmptySlot(usize),
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Console {
    #[default]
    Stdout,
    /// Console output is discarded.
    Off,
    #[serde(untagged)]
    File(PathBuf),
}

impl Console {
    pub fn parse(value: &str) -> Console {
        match value {
            "stdout" => Console::Stdout,
            "off" => Console::Off,
            path => Console::File(PathBuf::from(path)),
        }
    }
}

/// Which CPUID features the guest must not see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CpuidMask {
    /// The kvm-pvm workaround list when the host is kvm-pvm, nothing otherwise.
    #[default]
    Auto,
    None,
    #[serde(untagged)]
    Hide(Vec<CpuFeature>),
}

/// Host-specific guest command-line workarounds (see guest-kernel/README.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Workarounds {
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(default)]
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default = "default_cpus")]
    pub cpus: u64,
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    #[serde(default)]
    pub console: Console,
    #[serde(default)]
    pub cpuid_mask: CpuidMask,
    #[serde(default)]
    pub pvm_workarounds: Workarounds,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// A virtio-rng device fed from the host's getrandom.
    #[serde(default)]
    pub rng: bool,
    /// A virtio-vsock device, reachable from the host through a Unix socket.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// A virtio-net device on a tap.
    #[serde(default)]
    pub net: Option<NetConfig>,
    /// A virtio-fs device sharing a host directory (the guest mounts it by its tag).
    #[serde(default)]
    pub fs: Option<FsConfig>,
    /// Save the VM when the guest says it is ready (the boot-timer byte), then exit: a template.
    #[serde(default)]
    pub snapshot: Option<SnapshotFiles>,
    /// Start from a saved VM instead of booting a kernel.
    #[serde(default)]
    pub restore: Option<SnapshotFiles>,
    /// A Unix socket (created, must not exist) taking disk-slot commands while the VM runs:
    /// `insert SLOT PATH` and `eject SLOT`, a slot being a disk's index in `disks`
    /// (vmpod_devices::slot_command).
    #[serde(default)]
    pub disk_control: Option<PathBuf>,
    /// The KVM device: `fd:N` for one the parent opened (a jailed VMM has no /dev); default
    /// /dev/kvm.
    #[serde(default)]
    pub kvm: Option<PathBuf>,
}

/// A snapshot: the VM's state (versioned JSON) and its memory (a raw image, mapped
/// copy-on-write by every VM restored from it). A snapshot being written may name each as
/// `fd:N`, an empty file the parent created ([`open_file`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFiles {
    pub state: PathBuf,
    pub memory: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap to attach to, by name (created if missing)...
    #[serde(default)]
    pub tap: Option<String>,
    /// ...or an fd of an attached tap the VMM inherited.
    #[serde(default)]
    pub fd: Option<i32>,
    /// The network namespace the named tap lives in (e.g. /run/netns/pod1).
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The guest's MAC, `aa:bb:cc:dd:ee:ff`; default 06:00:ac:10:00:02.
    #[serde(default)]
    pub mac: Option<String>,
}

pub const DEFAULT_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];

impl NetConfig {
    pub fn mac(&self) -> Result<[u8; 6], ConfigError> {
        match &self.mac {
            None => Ok(DEFAULT_MAC),
            Some(text) => {
                vmpod_devices::net::parse_mac(text).ok_or_else(|| ConfigError::Mac(text.clone()))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id: 3 or more (0-2 are reserved).
    pub guest_cid: u32,
    /// The host end (hybrid vsock): `CONNECT <port>` here reaches the guest; the guest's
    /// connections to port P arrive at `<uds_path>_P`. Must not exist yet.
    pub uds_path: PathBuf,
}

/// A host directory shared with the guest over virtio-fs: `mount -t virtiofs <tag> DIR`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The name the guest mounts: 1 to 36 bytes.
    pub tag: String,
    /// An existing directory; the guest can reach nothing outside it.
    pub shared_dir: PathBuf,
}

impl FsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tag.is_empty() || self.tag.len() > vmpod_devices::fs::TAG_LEN {
            return Err(ConfigError::FsTag(self.tag.clone()));
        }
        if !self.shared_dir.is_dir() {
            return Err(ConfigError::FsSharedDir(self.shared_dir.clone()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The image; none for an empty slot (read-only, capacity 0 until an image is inserted).
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub read_only: bool,
    /// What the guest reads as the disk's serial (at most 20 bytes).
    #[serde(default)]
    pub serial: Option<String>,
}

fn default_cmdline() -> String {
    "console=ttyS0".to_string()
}
fn default_cpus() -> u64 {
    1
}
fn default_memory() -> u64 {
    128
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: default_cmdline(),
            cpus: default_cpus(),
            memory_mib: default_memory(),
            console: Console::default(),
            cpuid_mask: CpuidMask::default(),
            pvm_workarounds: Workarounds::default(),
            disks: Vec::new(),
            rng: false,
            vsock: None,
            net: None,
            fs: None,
            snapshot: None,
            restore: None,
            disk_control: None,
            kvm: None,
        }
    }
}

/// Opens a file the config names: `fd:N` is a descriptor the parent passed (a jailed VMM
/// reaches no path outside its jail), duplicated so the field can be opened again; anything
/// else is a path, opened with `options`.
pub fn open_file(path: &Path, options: &OpenOptions) -> std::io::Result<File> {
    match path.to_str().and_then(|p| p.strip_prefix("fd:")) {
        Some(number) => {
            let fd = number
                .parse::<RawFd>()
                .ok()
                .filter(|fd| *fd > 2)
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
            // SAFETY: F_GETFD only checks that the number is an open descriptor.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: the descriptor is open (checked above) and only borrowed to be duplicated.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            borrowed.try_clone_to_owned().map(File::from)
        }
        None => options.open(path),
    }
}

impl VmConfig {
    pub fn from_json(text: &str, origin: &str) -> Result<VmConfig, ConfigError> {
        serde_json::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_string(),
            source,
        })
    }

    /// Reads `PATH`, or `fd:N` for a descriptor the parent passed us.
    pub fn from_source(source: &str) -> Result<VmConfig, ConfigError> {
        let read_err = |err| ConfigError::Read {
            path: source.to_string(),
            source: err,
        };
        let mut text = String::new();
        match source.strip_prefix("fd:").map(str::parse::<i32>) {
            Some(Ok(fd)) if fd > 2 => {
                // SAFETY: the caller handed us this descriptor for exactly this purpose; we take
                // ownership and close it after reading.
                let mut file = unsafe { File::from_raw_fd(fd) };
                file.read_to_string(&mut text).map_err(read_err)?;
            }
            _ => {
                File::open(source)
                    .and_then(|mut f| f.read_to_string(&mut text))
                    .map_err(read_err)?;
            }
        }
        Self::from_json(&text, source)
    }

    /// Checks everything that can be checked before touching KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(restore) = &self.restore {
            return self.validate_restore(restore);
        }
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        if self.cpus == 0 || self.cpus > u64::from(MAX_VCPUS) {
            return Err(ConfigError::Cpus(self.cpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        if !self.kernel.is_file() {
            return Err(ConfigError::KernelMissing(self.kernel.clone()));
        }
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < 3 {
                return Err(ConfigError::GuestCid(vsock.guest_cid));
            }
        }
        if let Some(net) = &self.net {
            if net.tap.is_some() == net.fd.is_some() {
                return Err(ConfigError::NetBackend);
            }
            net.mac()?;
        }
        if let Some(fs) = &self.fs {
            fs.validate()?;
        }
        self.validate_disks()?;
        let devices = self.disks.len()
            + usize::from(self.rng)
            + usize::from(self.vsock.is_some())
            + usize::from(self.net.is_some())
            + usize::from(self.fs.is_some());
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(devices));
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.is_file() {
                return Err(ConfigError::InitrdMissing(initrd.clone()));
            }
        }
        Ok(())
    }

    /// A restored VM takes its CPUs, memory and guest from the snapshot; devices are not
    /// restored yet, so a config asking for them is refused rather than half honoured.
    fn validate_restore(&self, restore: &SnapshotFiles) -> Result<(), ConfigError> {
        for path in [&restore.state, &restore.memory] {
            if !path.is_file() {
                return Err(ConfigError::SnapshotMissing(path.clone()));
            }
        }
        if let Some(fs) = &self.fs {
            fs.validate()?;
        }
        self.validate_disks()?;
        if self.snapshot.is_some() {
            return Err(ConfigError::Unsupported(
                "a restored VM cannot be snapshotted again yet".into(),
            ));
        }
        Ok(())
    }

    fn validate_disks(&self) -> Result<(), ConfigError> {
        match self
            .disks
            .iter()
            .position(|d| d.path.is_none() && !d.read_only)
        {
            Some(index) => Err(ConfigError::WritableEmptySlot(index)),
            None => Ok(()),
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sandbox writes this type serialised (sandbox/src/vmm.rs): what it writes, every
    /// field set as it sets them, must read back the same.
    #[test]
    fn a_serialised_config_reads_back_the_same() {
        let config = VmConfig {
            kernel: "/proc/self/fd/5".into(),
            initrd: Some("/guest/initrd".into()),
            cpus: 2,
            memory_mib: 256,
            console: Console::File("fd:7".into()),
            cmdline: "console=ttyS0 quiet".into(),
            disks: vec![
                DiskConfig {
                    path: Some("/disks/0".into()),
                    read_only: true,
                    serial: Some("rootfs".into()),
                },
                DiskConfig {
                    path: None,
                    read_only: true,
                    serial: Some("slot1".into()),
                },
            ],
            vsock: Some(VsockConfig {
                guest_cid: 3,
                uds_path: "/vsock.sock".into(),
            }),
            net: Some(NetConfig {
                tap: None,
                fd: Some(9),
                netns: None,
                mac: Some("06:00:ac:10:00:02".into()),
            }),
            fs: Some(FsConfig {
                tag: "vmpod".into(),
                shared_dir: "/shared".into(),
            }),
            snapshot: Some(SnapshotFiles {
                state: "fd:10".into(),
                memory: "fd:11".into(),
            }),
            disk_control: Some("/disks.sock".into()),
            kvm: Some("fd:4".into()),
            ..VmConfig::default()
        };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            VmConfig::from_json(&json, "test").unwrap(),
            config,
            "{json}"
        );
        // An unset console or mask reads back as itself, not as a file named "stdout".
        let plain = serde_json::to_string(&VmConfig::default()).unwrap();
        assert_eq!(
            VmConfig::from_json(&plain, "test").unwrap(),
            VmConfig::default()
        );
    }

    #[test]
    fn json_fields_have_documented_defaults() {
        let config = VmConfig::from_json(r#"{"kernel": "/k"}"#, "test").unwrap();
        assert_eq!(config.cpus, 1);
        assert_eq!(config.memory_mib, 128);
        assert_eq!(config.console, Console::Stdout);
        assert_eq!(config.cpuid_mask, CpuidMask::Auto);
        assert_eq!(config.cmdline, "console=ttyS0");
    }

    #[test]
    fn console_accepts_stdout_off_or_a_path() {
        let config =
            VmConfig::from_json(r#"{"kernel": "/k", "console": "/tmp/c.log"}"#, "t").unwrap();
        assert_eq!(config.console, Console::File("/tmp/c.log".into()));
        assert_eq!(Console::parse("off"), Console::Off);
    }

    #[test]
    fn cpuid_mask_takes_a_feature_list() {
        let config =
            VmConfig::from_json(r#"{"kernel": "/k", "cpuid_mask": ["cx16", "avx2"]}"#, "t")
                .unwrap();
        assert_eq!(
            config.cpuid_mask,
            CpuidMask::Hide(vec![CpuFeature::Cx16, CpuFeature::Avx2])
        );
    }

    #[test]
    fn unknown_field_is_named_in_the_error() {
        let err = VmConfig::from_json(r#"{"kernel": "/k", "cpu": 2}"#, "vm.json").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("config vm.json: unknown field `cpu`"),
            "{text}"
        );
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let err = VmConfig::from_json("{\"kernel\": ", "vm.json").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn zero_and_too_many_cpus_are_refused() {
        let mut config = VmConfig {
            kernel: "/proc/self/exe".into(),
            ..VmConfig::default()
        };
        config.cpus = 0;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "cpus must be between 1 and 254, not 0"
        );
        config.cpus = 300;
        assert!(matches!(config.validate(), Err(ConfigError::Cpus(300))));
    }

    #[test]
    fn disks_and_rng_come_from_json() {
        let config = VmConfig::from_json(
            r#"{"kernel": "/k", "rng": true,
                "disks": [{"path": "/l.erofs", "read_only": true, "serial": "layer0"},
                          {"path": "/scratch.ext4"}]}"#,
            "t",
        )
        .unwrap();
        assert!(config.rng);
        assert_eq!(config.disks.len(), 2);
        assert!(config.disks[0].read_only && !config.disks[1].read_only);
        assert_eq!(config.disks[0].serial.as_deref(), Some("layer0"));
    }

    #[test]
    fn a_disk_without_an_image_is_a_read_only_slot() {
        let config = VmConfig::from_json(
            r#"{"kernel": "/proc/self/exe", "disk_control": "/run/x/disks.sock",
                "disks": [{"read_only": true, "serial": "slot0"}, {"serial": "slot1"}]}"#,
            "t",
        )
        .unwrap();
        assert_eq!(config.disks[0].path, None);
        assert_eq!(
            config.disk_control,
            Some(PathBuf::from("/run/x/disks.sock"))
        );
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "disk 1 has no image: an empty slot must be read_only"
        );
    }

    #[test]
    fn snapshots_take_any_vcpu_count_and_restores_need_their_files() {
        let kernel = std::env::current_exe().unwrap();
        let files = SnapshotFiles {
            state: kernel.clone(),
            memory: kernel.clone(),
        };
        let mut config = VmConfig {
            kernel: kernel.clone(),
            cpus: 2,
            snapshot: Some(files.clone()),
            ..VmConfig::default()
        };
        assert!(config.validate().is_ok());
        config.cpus = 1;
        assert!(config.validate().is_ok());
        let restore = VmConfig {
            restore: Some(SnapshotFiles {
                state: "/nonexistent/state".into(),
                memory: kernel.clone(),
            }),
            ..VmConfig::default()
        };
        assert_eq!(
            restore.validate().unwrap_err().to_string(),
            "snapshot file /nonexistent/state is missing"
        );
        let with_device = VmConfig {
            restore: Some(files),
            rng: true,
            ..VmConfig::default()
        };
        assert!(with_device.validate().is_ok(), "devices are restored too");
    }

    #[test]
    fn net_needs_one_backend_and_a_well_formed_mac() {
        let mut config = VmConfig {
            kernel: "/proc/self/exe".into(),
            net: Some(NetConfig {
                tap: None,
                fd: None,
                netns: None,
                mac: None,
            }),
            ..VmConfig::default()
        };
        assert!(matches!(config.validate(), Err(ConfigError::NetBackend)));
        let net = config.net.as_mut().unwrap();
        net.tap = Some("tap0".into());
        net.mac = Some("06:00:ac:10:00".into());
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "net mac \"06:00:ac:10:00\" is not of the form aa:bb:cc:dd:ee:ff"
        );
        config.net.as_mut().unwrap().mac = None;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn more_devices_than_interrupt_lines_are_refused() {
        let disk = DiskConfig {
            path: Some("/d".into()),
            read_only: true,
            serial: None,
        };
        let config = VmConfig {
            kernel: "/proc/self/exe".into(),
            disks: vec![disk; 19],
            rng: true,
            ..VmConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "at most 19 virtio devices fit the interrupt lines; 20 asked for"
        );
    }

    #[test]
    fn fs_comes_from_json_and_bad_tags_or_dirs_are_refused_by_name() {
        let config = VmConfig::from_json(
            r#"{"kernel": "/proc/self/exe", "fs": {"tag": "vmpod", "shared_dir": "/tmp"}}"#,
            "t",
        )
        .unwrap();
        assert!(config.validate().is_ok());
        let unknown = VmConfig::from_json(
            r#"{"kernel": "/k", "fs": {"tag": "v", "shared_dir": "/tmp", "ro": true}}"#,
            "vm.json",
        );
        assert!(unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `ro`"));
        let with = |tag: &str, dir: &str| VmConfig {
            kernel: "/proc/self/exe".into(),
            fs: Some(FsConfig {
                tag: tag.into(),
                shared_dir: dir.into(),
            }),
            ..VmConfig::default()
        };
        assert_eq!(
            with("", "/tmp").validate().unwrap_err().to_string(),
            "fs tag \"\" must be 1 to 36 bytes"
        );
        assert!(matches!(
            with(&"t".repeat(37), "/tmp").validate(),
            Err(ConfigError::FsTag(_))
        ));
        assert_eq!(
            with("vmpod", "/nonexistent/share")
                .validate()
                .unwrap_err()
                .to_string(),
            "fs shared_dir /nonexistent/share: not an existing directory"
        );
        assert!(matches!(
            with("vmpod", "/proc/self/exe").validate(),
            Err(ConfigError::FsSharedDir(_))
        ));
    }

    #[test]
    fn zero_memory_is_refused() {
        let config = VmConfig {
            kernel: "/proc/self/exe".into(),
            memory_mib: 0,
            ..VmConfig::default()
        };
        assert!(matches!(config.validate(), Err(ConfigError::Memory(0))));
    }
}
