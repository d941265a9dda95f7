//! VM templates: a VM booted once to the point where its agent answers, saved, and restored
//! for every later sandbox of the same shape instead of booting again.
//!
//! A template is keyed by everything its saved state depends on: the backend, the kernel, the
//! initramfs, the hypervisor binary, the vmpod version, vCPUs, memory, the kernel command line
//! and the number of disk slots (for the container's layers, and spare ones). A change to any of them gives another key, so a stale
//! template is never restored; it is pruned when its successor is built. Each lives in
//! `/var/lib/vmpod/templates/<key>/` as `meta.json` and `state`.

use crate::backend::Backend;
use crate::error::{io, SandboxError};
use crate::lock::Lock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const ROOT: &str = "/var/lib/vmpod/templates";
const FORMAT: &str = "vmpod template";
const VERSION: u32 = 1;

/// What a sandbox asks of the VM, as far as a template depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub backend: String,
    pub cpus: u8,
    pub memory_mib: u32,
    /// Read-only disk slots the container's layers are inserted into.
    pub slots: usize,
    /// Empty disk slots after those, for images attached while the clone runs.
    #[serde(default)]
    pub spare_slots: usize,
    /// A NIC, whose tap and address each clone brings.
    #[serde(default)]
    pub nic: bool,
    pub cmdline: String,
}

/// A file as it is now: any rebuild changes one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub path: PathBuf,
    pub size: u64,
    pub inode: u64,
    pub mtime_ns: i64,
}

impl Fingerprint {
    fn of(path: &Path) -> Result<Fingerprint, SandboxError> {
        let m = std::fs::metadata(path).map_err(io(format!("stat {}", path.display())))?;
        Ok(Fingerprint {
            path: path.to_path_buf(),
            size: m.len(),
            inode: m.ino(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        })
    }
}

/// Everything a template's state depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wanted {
    pub layout: Layout,
    pub vmpod: String,
    pub kernel: Fingerprint,
    pub initrd: Fingerprint,
    pub hypervisor: Fingerprint,
}

impl Wanted {
    pub fn new(
        backend: Backend,
        layout: Layout,
        kernel: &Path,
        initrd: &Path,
    ) -> Result<Wanted, SandboxError> {
        let hypervisor = match backend {
            Backend::Vmm => crate::paths::program("vmpod-vmm")?,
            Backend::Qemu { .. } => which("qemu-system-x86_64")?,
        };
        Ok(Wanted {
            layout,
            vmpod: env!("CARGO_PKG_VERSION").to_string(),
            kernel: Fingerprint::of(kernel)?,
            initrd: Fingerprint::of(initrd)?,
            hypervisor: Fingerprint::of(&hypervisor)?,
        })
    }

    pub fn key(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(json);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `self` is an older build of `current`'s files: the same backend, kernel and
    /// initramfs paths, but one of them, the hypervisor or vmpod changed since. Templates of other
    /// guest directories (another installation, a test's copy) are not touched.
    fn superseded_by(&self, current: &Wanted) -> bool {
        self.layout.backend == current.layout.backend
            && self.kernel.path == current.kernel.path
            && self.initrd.path == current.initrd.path
            && (self.vmpod != current.vmpod
                || self.kernel != current.kernel
                || self.initrd != current.initrd
                || self.hypervisor != current.hypervisor)
    }
}

fn which(name: &str) -> Result<PathBuf, SandboxError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(SandboxError::Missing {
            what: "program",
            path: PathBuf::from(name),
            hint: "apt-get install qemu-system-x86",
        })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub format: String,
    pub version: u32,
    pub wanted: Wanted,
    pub state_bytes: u64,
    pub created_unix: u64,
    pub build_ms: u64,
}

/// One stored template, for `vmpod template ls`.
#[derive(Debug, Clone)]
pub struct Template {
    pub key: String,
    pub dir: PathBuf,
    pub meta: Meta,
}

impl Template {
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Guest memory, where the backend keeps it apart from the state (QEMU).
    pub fn memory(&self) -> PathBuf {
        self.dir.join("memory")
    }
}

pub struct Store {
    root: PathBuf,
}

fn invalid(what: String) -> SandboxError {
    SandboxError::Invalid(what)
}

impl Store {
    /// The host's store: `template_store` in vmpod.toml, else [`ROOT`].
    pub fn open() -> Result<Store, SandboxError> {
        let configured = crate::host_config::get()?.config.template_store.clone();
        Store::at(configured.unwrap_or_else(|| ROOT.into()))
    }

    pub fn at(root: impl Into<PathBuf>) -> Result<Store, SandboxError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io(format!("create {}", root.display())))?;
        Ok(Store { root })
    }

    fn lock(&self) -> Result<Lock, SandboxError> {
        let path = self.root.join(".lock");
        Lock::take(&path, true).map_err(io(format!("lock {}", path.display())))
    }

    /// The template at `key`, checked against `wanted` and its own record: a template made
    /// for something else, or whose state is not the size it was saved at, is refused.
    pub fn load(&self, key: &str, wanted: &Wanted) -> Result<Option<Template>, SandboxError> {
        let dir = self.root.join(key);
        let meta_path = dir.join("meta.json");
        let text = match std::fs::read(&meta_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(format!("read {}", meta_path.display()))(e)),
        };
        let meta: Meta = serde_json::from_slice(&text).map_err(|e| {
            invalid(format!(
                "template {}: meta.json is not a template record ({e}); remove it with \
                 `vmpod template rm {key}`",
                dir.display()
            ))
        })?;
        if meta.format != FORMAT || meta.version != VERSION {
            return Err(invalid(format!(
                "template {}: format {:?} version {} is not {FORMAT:?} version {VERSION}; \
                 remove it with `vmpod template rm {key}`",
                dir.display(),
                meta.format,
                meta.version
            )));
        }
        if let Some(diff) = difference(&meta.wanted, wanted) {
            return Err(invalid(format!(
                "template {} was made for {diff}; remove it with `vmpod template rm {key}` \
                 or start with --cold-boot",
                dir.display()
            )));
        }
        let template = Template {
            key: key.to_string(),
            dir,
            meta,
        };
        let state = template.state();
        let size = std::fs::metadata(&state)
            .map_err(io(format!("stat {}", state.display())))?
            .len();
        let memory = template.memory();
        let memory_bytes = std::fs::metadata(&memory).map(|m| m.len()).unwrap_or(0);
        let wanted_bytes = u64::from(template.meta.wanted.layout.memory_mib) << 20;
        if memory_bytes != wanted_bytes {
            return Err(invalid(format!(
                "template memory {} is {memory_bytes} bytes, not the {wanted_bytes} of the \
                 VM it was saved from; remove it with `vmpod template rm {key}`",
                memory.display()
            )));
        }
        if size != template.meta.state_bytes {
            return Err(invalid(format!(
                "template state {} is {size} bytes, but {} were saved (truncated or \
                 overwritten); remove it with `vmpod template rm {key}`",
                state.display(),
                template.meta.state_bytes
            )));
        }
        Ok(Some(template))
    }

    /// The template for `wanted`, built by `build(state_path)` first if there is none.
    /// Concurrent callers wait for one build.
    pub fn ensure(
        &self,
        wanted: &Wanted,
        build: impl FnOnce(&Path) -> Result<(), SandboxError>,
    ) -> Result<Template, SandboxError> {
        let key = wanted.key();
        if let Some(t) = self.load(&key, wanted)? {
            return Ok(t);
        }
        let _lock = self.lock()?;
        if let Some(t) = self.load(&key, wanted)? {
            return Ok(t);
        }
        self.remove_abandoned_builds();
        let tmp = self
            .root
            .join(format!(".build-{key}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        let built = self.build_into(&tmp, wanted, build);
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let dir = self.root.join(&key);
        // A directory without a readable record (a removal cut short) is no template.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            io(format!("move the template into {}", dir.display()))(e)
        })?;
        self.prune_stale(wanted);
        self.load(&key, wanted)?
            .ok_or_else(|| invalid(format!("template {} vanished", dir.display())))
    }

    fn build_into(
        &self,
        tmp: &Path,
        wanted: &Wanted,
        build: impl FnOnce(&Path) -> Result<(), SandboxError>,
    ) -> Result<(), SandboxError> {
        let started = std::time::Instant::now();
        let state = tmp.join("state");
        build(&state)?;
        let state_bytes = std::fs::metadata(&state)
            .map_err(io(format!("stat {}", state.display())))?
            .len();
        let meta = Meta {
            format: FORMAT.into(),
            version: VERSION,
            wanted: wanted.clone(),
            state_bytes,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            build_ms: started.elapsed().as_millis() as u64,
        };
        let path = tmp.join("meta.json");
        let text = serde_json::to_vec_pretty(&meta)
            .map_err(|e| invalid(format!("encode {}: {e}", path.display())))?;
        std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))
    }

    /// Removes what builders killed mid-build left (`.build-<key>-<pid>` of a dead pid); the
    /// store's lock is held, so no live build is touched.
    fn remove_abandoned_builds(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(".build-")
                .and_then(|rest| rest.rsplit('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Removes templates `current` supersedes, and those whose kernel or initramfs is gone
    /// (a build tree removed): they can never be restored again.
    fn prune_stale(&self, current: &Wanted) {
        let key = current.key();
        for t in self.list() {
            let w = &t.meta.wanted;
            let gone = !w.kernel.path.exists() || !w.initrd.path.exists();
            if t.key != key && (w.superseded_by(current) || gone) {
                let _ = std::fs::remove_dir_all(&t.dir);
            }
        }
    }

    /// Every template with a readable record.
    pub fn list(&self) -> Vec<Template> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let key = entry.file_name().to_string_lossy().to_string();
            if key.starts_with('.') {
                continue;
            }
            let meta = std::fs::read(entry.path().join("meta.json"))
                .ok()
                .and_then(|t| serde_json::from_slice::<Meta>(&t).ok());
            if let Some(meta) = meta {
                out.push(Template {
                    key,
                    dir: entry.path(),
                    meta,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Removes the template `key` (a directory of the store, record readable or not).
    pub fn remove(&self, key: &str) -> Result<(), SandboxError> {
        let valid = !key.is_empty() && key.chars().all(|c| c.is_ascii_hexdigit());
        let dir = self.root.join(key);
        if !valid || !dir.is_dir() {
            return Err(invalid(format!(
                "no template '{key}' (`vmpod template ls` lists them)"
            )));
        }
        let _lock = self.lock()?;
        std::fs::remove_dir_all(&dir).map_err(io(format!("remove {}", dir.display())))
    }
}

/// The first field in which `saved` differs from `wanted`, as a user reads it.
fn difference(saved: &Wanted, wanted: &Wanted) -> Option<String> {
    let (s, w) = (&saved.layout, &wanted.layout);
    let field = |name: &str, a: String, b: String| {
        (a != b).then(|| format!("{name} {a}, not this sandbox's {b}"))
    };
    let path_fp = |f: &Fingerprint| {
        format!(
            "{} ({} bytes, modified {})",
            f.path.display(),
            f.size,
            f.mtime_ns
        )
    };
    field("backend", s.backend.clone(), w.backend.clone())
        .or_else(|| {
            field(
                "memory (MiB)",
                s.memory_mib.to_string(),
                w.memory_mib.to_string(),
            )
        })
        .or_else(|| field("vCPUs", s.cpus.to_string(), w.cpus.to_string()))
        .or_else(|| field("disk slots", s.slots.to_string(), w.slots.to_string()))
        .or_else(|| {
            field(
                "spare disk slots",
                s.spare_slots.to_string(),
                w.spare_slots.to_string(),
            )
        })
        .or_else(|| field("NIC", s.nic.to_string(), w.nic.to_string()))
        .or_else(|| field("kernel command line", s.cmdline.clone(), w.cmdline.clone()))
        .or_else(|| field("kernel", path_fp(&saved.kernel), path_fp(&wanted.kernel)))
        .or_else(|| field("initramfs", path_fp(&saved.initrd), path_fp(&wanted.initrd)))
        .or_else(|| {
            field(
                "hypervisor",
                path_fp(&saved.hypervisor),
                path_fp(&wanted.hypervisor),
            )
        })
        .or_else(|| field("vmpod", saved.vmpod.clone(), wanted.vmpod.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(dir: &Path) -> Wanted {
        let file = |name: &str| Fingerprint {
            path: dir.join(name),
            size: 1,
            inode: 2,
            mtime_ns: 3,
        };
        Wanted {
            layout: Layout {
                backend: "qemu".into(),
                cpus: 1,
                memory_mib: 1,
                slots: 2,
                spare_slots: 8,
                nic: false,
                cmdline: String::new(),
            },
            vmpod: "test".into(),
            kernel: file(crate::paths::KERNEL),
            initrd: file(crate::paths::INITRAMFS),
            hypervisor: file("qemu"),
        }
    }

    /// A scratch store directory, removed however the test ends.
    struct Root(PathBuf);

    impl Root {
        fn new(tag: &str) -> Root {
            let root = std::env::temp_dir().join(format!("vmpod-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            Root(root)
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A build that writes what a real one leaves: a state and 1 MiB of memory.
    fn build(state: &Path) -> Result<(), SandboxError> {
        std::fs::write(state, b"state").unwrap();
        std::fs::write(state.with_file_name("memory"), vec![0u8; 1 << 20]).unwrap();
        Ok(())
    }

    #[test]
    fn leftovers_of_killed_builds_go_and_a_damaged_template_is_refused() {
        let scratch = Root::new("templates");
        let root = scratch.0.clone();
        let store = Store::at(&root).unwrap();
        let w = wanted(&root);
        // A builder killed mid-build (no such pid), and a template whose removal was cut short.
        std::fs::create_dir_all(root.join(".build-0123-4000000000")).unwrap();
        std::fs::create_dir_all(root.join(w.key())).unwrap();
        let t = store.ensure(&w, build).unwrap();
        assert!(!root.join(".build-0123-4000000000").exists());
        assert_eq!(store.list().len(), 1);
        // The same again: restored, not rebuilt.
        store.ensure(&w, |_| panic!("built twice")).unwrap();
        // Memory of the wrong size, then a truncated state.
        std::fs::write(t.memory(), b"short").unwrap();
        let e = store.load(&t.key, &w).unwrap_err().to_string();
        assert!(e.contains("not the 1048576 of the VM"), "{e}");
        std::fs::write(t.memory(), vec![0u8; 1 << 20]).unwrap();
        std::fs::write(t.state(), b"st").unwrap();
        let e = store.load(&t.key, &w).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        // Another shape under this key.
        let mut other = w.clone();
        other.layout.memory_mib = 2;
        let e = store.load(&t.key, &other).unwrap_err().to_string();
        assert!(e.contains("memory (MiB) 1, not this sandbox's 2"), "{e}");
        store.remove(&t.key).unwrap();
        assert!(store.remove(&t.key).is_err());
        assert!(store.remove("../etc").is_err());
    }

    #[test]
    fn a_new_build_prunes_only_what_it_supersedes() {
        let scratch = Root::new("prune");
        let root = scratch.0.clone();
        let store = Store::at(&root).unwrap();
        let old = wanted(&root);
        let mut vmm = old.clone();
        vmm.layout.backend = "vmm".into();
        let mut elsewhere = old.clone();
        elsewhere.kernel.path = root.join("other/vmlinux");
        let mut gone = old.clone();
        gone.kernel.path = root.join("removed/vmlinux");
        for dir in ["other", "removed"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for file in [&old.kernel.path, &old.initrd.path, &elsewhere.kernel.path] {
            std::fs::write(file, b"").unwrap();
        }
        for w in [&old, &vmm, &elsewhere, &gone] {
            store.ensure(w, build).unwrap();
        }
        let mut new = old.clone();
        new.initrd.mtime_ns += 1;
        store.ensure(&new, build).unwrap();
        let keys: Vec<String> = store.list().into_iter().map(|t| t.key).collect();
        assert!(!keys.contains(&old.key()), "the superseded template stayed");
        assert!(
            !keys.contains(&gone.key()),
            "a template of a removed kernel stayed"
        );
        for kept in [&vmm, &elsewhere, &new] {
            assert!(keys.contains(&kept.key()), "{keys:?}");
        }
    }
}
