//! The host's vmpod configuration, `/etc/vmpod/vmpod.toml` (or `$VMPOD_CONFIG`): defaults a
//! host wants for every run and every pod. Every key is optional; a missing file means the
//! built-in defaults. Flags and the shim's environment (VMPOD_*) still win over the file.
//!
//! ```toml
//! hypervisor = "auto"        # auto | vmm | qemu
//! memory_mib = 256           # default VM memory (vmpod run without --memory; pods not sized by containerd)
//! cpus = 1                   # default vCPUs of those VMs
//! image_store = "/var/lib/vmpod/images"
//! template_store = "/var/lib/vmpod/templates"
//! log_level = "warn"         # error | warn | info quiet; debug: verbose guest console and VMM log
//! insecure_registries = ["registry.lan:5000"]  # pulled over plain HTTP (localhost always is)
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const CONFIG_PATH: &str = "/etc/vmpod/vmpod.toml";
/// Names another file (tests, a second installation).
pub const CONFIG_ENV: &str = "VMPOD_CONFIG";

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("config {path} line {line}: {why}")]
    Parse {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("config {path}: {key} {why}")]
    Value {
        path: PathBuf,
        key: &'static str,
        why: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// `auto`, `vmm` or `qemu`, as `--hypervisor` takes it.
    pub hypervisor: Option<String>,
    pub memory_mib: Option<u32>,
    pub cpus: Option<u8>,
    pub image_store: Option<PathBuf>,
    pub template_store: Option<PathBuf>,
    pub log_level: Option<LogLevel>,
    /// Registries (`HOST[:PORT]`) `vmpod pull` speaks plain HTTP to, besides localhost's.
    pub insecure_registries: Option<Vec<String>>,
}

/// The configuration in effect and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    /// False when no file is there: every value is the built-in default.
    pub found: bool,
    pub config: HostConfig,
}

impl Loaded {
    /// `debug`: the guest's console and the VMM's log verbose.
    pub fn debug(&self) -> bool {
        self.config.log_level == Some(LogLevel::Debug)
    }
}

/// The host's configuration, read once per process.
pub fn get() -> Result<&'static Loaded, ConfigError> {
    static LOADED: OnceLock<Result<Loaded, ConfigError>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = std::env::var_os(CONFIG_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(CONFIG_PATH));
            load(&path)
        })
        .as_ref()
        .map_err(Clone::clone)
}

pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Loaded {
                path: path.to_path_buf(),
                found: false,
                config: HostConfig::default(),
            })
        }
        Err(e) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                why: e.to_string(),
            })
        }
    };
    let config = parse(&text).map_err(|(line, why)| ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        why,
    })?;
    check(&config).map_err(|(key, why)| ConfigError::Value {
        path: path.to_path_buf(),
        key,
        why,
    })?;
    Ok(Loaded {
        path: path.to_path_buf(),
        found: true,
        config,
    })
}

/// The file's keys, or the line of the first problem and what it is, in one line.
fn parse(text: &str) -> Result<HostConfig, (usize, String)> {
    toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |span| span.start);
        let line = text[..offset.min(text.len())].matches('\n').count() + 1;
        let why = e
            .message()
            .lines()
            .next()
            .unwrap_or("malformed")
            .to_string();
        (line, why)
    })
}

fn check(config: &HostConfig) -> Result<(), (&'static str, String)> {
    if let Some(h) = config.hypervisor.as_deref() {
        if !matches!(h, "auto" | "vmm" | "qemu") {
            return Err((
                "hypervisor",
                format!("must be auto, vmm or qemu, not '{h}'"),
            ));
        }
    }
    if let Some(m) = config.memory_mib {
        if m < 128 {
            return Err(("memory_mib", format!("must be at least 128, not {m}")));
        }
    }
    if let Some(c) = config.cpus {
        if !(1..=64).contains(&c) {
            return Err(("cpus", format!("must be between 1 and 64, not {c}")));
        }
    }
    for (key, dir) in [
        ("image_store", &config.image_store),
        ("template_store", &config.template_store),
    ] {
        if dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err((key, "must be an absolute path".into()));
        }
    }
    for registry in config.insecure_registries.iter().flatten() {
        let host_port =
            !registry.is_empty() && !registry.contains(['/', ' ']) && !registry.contains("://");
        if !host_port {
            return Err((
                "insecure_registries",
                format!("must name registries as HOST[:PORT], not '{registry}'"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_read() {
        let config = parse(
            "hypervisor = \"qemu\"\nmemory_mib = 300\ncpus = 2\n\
             image_store = \"/srv/images\"\ntemplate_store = \"/srv/templates\"\n\
             log_level = \"debug\"\ninsecure_registries = [\"registry.lan:5000\"]\n",
        )
        .unwrap();
        assert_eq!(
            config,
            HostConfig {
                hypervisor: Some("qemu".into()),
                memory_mib: Some(300),
                cpus: Some(2),
                image_store: Some("/srv/images".into()),
                template_store: Some("/srv/templates".into()),
                log_level: Some(LogLevel::Debug),
                insecure_registries: Some(vec!["registry.lan:5000".into()]),
            }
        );
        assert_eq!(parse("# nothing\n").unwrap(), HostConfig::default());
    }

    #[test]
    fn an_unknown_key_or_a_malformed_line_is_named_by_its_line() {
        let (line, why) = parse("cpus = 1\n\nmemroy_mib = 300\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(why.contains("unknown field `memroy_mib`"), "{why}");
        let (line, why) = parse("cpus = 1\nhypervisor = qemu\n").unwrap_err();
        assert_eq!(line, 2, "{why}");
        let (line, why) = parse("memory_mib = \"lots\"\n").unwrap_err();
        assert_eq!(line, 1, "{why}");
        let (line, why) = parse("log_level = \"loud\"\n").unwrap_err();
        assert_eq!((line, why.contains("loud")), (1, true), "{why}");
        assert!(!why.contains('\n'));
    }

    #[test]
    fn values_out_of_range_name_their_key() {
        for (text, key) in [
            ("hypervisor = \"kvm\"", "hypervisor"),
            ("memory_mib = 16", "memory_mib"),
            ("cpus = 0", "cpus"),
            ("image_store = \"images\"", "image_store"),
            (
                "insecure_registries = [\"http://registry.lan\"]",
                "insecure_registries",
            ),
        ] {
            let config = parse(text).unwrap();
            assert_eq!(check(&config).unwrap_err().0, key, "{text}");
        }
    }

    #[test]
    fn a_missing_file_is_the_defaults_and_an_unreadable_one_an_error() {
        let loaded = load(Path::new("/nonexistent/vmpod.toml")).unwrap();
        assert!(!loaded.found);
        assert_eq!(loaded.config, HostConfig::default());
        let err = load(Path::new("/proc/self/mem")).unwrap_err();
        assert!(
            err.to_string().starts_with("config /proc/self/mem: "),
            "{err}"
        );
    }
}
