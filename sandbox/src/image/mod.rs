//! Images imported from oci-archive / docker-archive tarballs and OCI layout directories, or
//! pulled from a registry (`pull`, the `pull` feature), into a local store. Each layer becomes one erofs image, cached by its
//! diff_id (the digest of its uncompressed tar) and shared by every image and sandbox that
//! uses it; the guest stacks them with overlayfs.
//!
//! Layout under /var/lib/vmpod/images: `layers/<hex>.erofs`, `images.json` (name → layers and
//! config), `tmp/` (unpacking in progress, swept of dead importers' leftovers).

#[cfg(feature = "pull")]
pub mod credentials;
mod import;
pub mod layer;
#[cfg(feature = "pull")]
pub mod pull;

pub use import::import;

use crate::lock::Lock;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const IMAGE_ROOT: &str = "/var/lib/vmpod/images";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no image '{0}' (`vmpod pull` or `vmpod image import FILE NAME` brings one; `vmpod images` lists them)")]
    NotFound(String),
    #[error(
        "'{0}' is not an image name (NAME[:TAG], lowercase letters, digits, '.', '_', '-', '/')"
    )]
    BadName(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::host_config::ConfigError),
    #[error("build the erofs image of {what}")]
    Erofs {
        what: String,
        #[source]
        source: crate::SandboxError,
    },
}

impl ImageError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ImageError::Io {
            what: what.into(),
            source,
        }
    }
}

/// What `vmpod run` needs of an image: its layers and the process defaults of its config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Image {
    /// `name:tag`.
    pub name: String,
    /// The config's digest, as docker shows an image ID.
    pub id: String,
    /// diff_ids, lowest layer first.
    pub layers: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
}

/// `busybox` → `busybox:latest`; a tag is what follows the last ':' after the last '/'.
/// Docker Hub's names are kept in docker's familiar form: `docker.io/library/busybox` is
/// `busybox`, `docker.io/team/app` is `team/app`. A digest (`NAME@sha256:…`) replaces the tag.
pub fn normalize(reference: &str) -> Result<String, ImageError> {
    let bad = || ImageError::BadName(reference.to_string());
    if let Some((name, digest)) = reference.split_once('@') {
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        let hex_ok = hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        let named = normalize(name).map_err(|_| bad())?;
        let repo = named.rsplit_once(':').map_or(named.as_str(), |(r, _)| r);
        return if hex_ok {
            Ok(format!("{repo}@{digest}"))
        } else {
            Err(bad())
        };
    }
    let reference = [
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
    ]
    .iter()
    .find_map(|hub| reference.strip_prefix(hub))
    .unwrap_or(reference);
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match reference[last_slash..].rfind(':') {
        Some(i) => reference.split_at(last_slash + i),
        None => (reference, ":latest"),
    };
    let tag = &tag[1..];
    let repo_ok = !repo.is_empty()
        && repo.len() <= 255
        && repo
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c))
        && repo.split('/').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
        });
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if repo_ok && tag_ok {
        Ok(format!("{repo}:{tag}"))
    } else {
        Err(bad())
    }
}

#[derive(Clone)]
pub struct Store {
    root: PathBuf,
}

/// The store's flock, with the error naming the lock file.
fn lock(path: &Path, exclusive: bool) -> Result<Lock, ImageError> {
    Lock::take(path, exclusive).map_err(|e| ImageError::io(format!("lock {}", path.display()), e))
}

impl Store {
    /// The host's store: `image_store` in vmpod.toml, else [`IMAGE_ROOT`].
    pub fn open() -> Result<Store, ImageError> {
        let configured = crate::host_config::get()?.config.image_store.clone();
        Store::at(configured.unwrap_or_else(|| IMAGE_ROOT.into()))
    }

    pub fn at(root: impl Into<PathBuf>) -> Result<Store, ImageError> {
        let root = root.into();
        for dir in [root.join("layers"), root.join("tmp")] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| ImageError::io(format!("create {}", dir.display()), e))?;
        }
        Ok(Store { root })
    }

    /// The erofs image of a layer, by diff_id.
    pub fn layer_path(&self, diff_id: &str) -> PathBuf {
        let hex = diff_id.split_once(':').map_or(diff_id, |(_, h)| h);
        self.root.join("layers").join(format!("{hex}.erofs"))
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    /// Importers hold it shared, `image rm` exclusive: a layer being imported is never
    /// collected as unused.
    fn layers_lock(&self, exclusive: bool) -> Result<Lock, ImageError> {
        lock(&self.root.join("layers.lock"), exclusive)
    }

    fn index_lock(&self) -> Result<Lock, ImageError> {
        lock(&self.root.join("images.lock"), true)
    }

    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let path = self.index_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ImageError::Corrupt(format!(
                    "{}: {e} (remove it and import the images again)",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ImageError::io(format!("read {}", path.display()), e)),
        }
    }

    fn write(&self, images: &[Image]) -> Result<(), ImageError> {
        let path = self.index_path();
        let tmp = self
            .root
            .join(format!(".images.json.{}.tmp", std::process::id()));
        let bytes = serde_json::to_vec_pretty(images)
            .map_err(|e| ImageError::Corrupt(format!("encode the image index: {e}")))?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                ImageError::io(format!("write {}", path.display()), e)
            })
    }

    /// Finds an image by name (`busybox` means `busybox:latest`) or by a prefix of its ID.
    pub fn get(&self, reference: &str) -> Result<Image, ImageError> {
        let images = self.list()?;
        if let Ok(name) = normalize(reference) {
            if let Some(image) = images.iter().find(|i| i.name == name) {
                return Ok(image.clone());
            }
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() >= 4 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            let matching: Vec<_> = images
                .iter()
                .filter(|i| i.id.trim_start_matches("sha256:").starts_with(hex))
                .collect();
            if let [one] = matching[..] {
                return Ok(one.clone());
            }
        }
        Err(ImageError::NotFound(reference.to_string()))
    }

    /// Records an image under its name, replacing an older one of that name.
    pub fn insert(&self, image: Image) -> Result<(), ImageError> {
        let _lock = self.index_lock()?;
        let mut images = self.list()?;
        images.retain(|i| i.name != image.name);
        images.push(image);
        images.sort_by(|a, b| a.name.cmp(&b.name));
        self.write(&images)
    }

    /// Forgets an image's name and deletes the layers no other image uses. Sandboxes already
    /// running keep theirs: their VMs hold the files open.
    pub fn remove(&self, reference: &str) -> Result<Image, ImageError> {
        let _layers = self.layers_lock(true)?;
        let _lock = self.index_lock()?;
        let image = self.get(reference)?;
        let mut images = self.list()?;
        images.retain(|i| i.name != image.name);
        self.write(&images)?;
        // Every unused layer goes, also those an importer killed mid-way left behind.
        let used: std::collections::HashSet<PathBuf> = images
            .iter()
            .flat_map(|i| i.layers.iter().map(|l| self.layer_path(l)))
            .collect();
        if let Ok(entries) = std::fs::read_dir(self.root.join("layers")) {
            for entry in entries.flatten() {
                if !used.contains(&entry.path()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(image)
    }

    /// Bytes of an image's layer files as stored.
    pub fn size(&self, image: &Image) -> u64 {
        image
            .layers
            .iter()
            .filter_map(|l| std::fs::metadata(self.layer_path(l)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// A fresh directory under tmp/ removed on drop; leftovers of importers that died
    /// (`kill -9`) are removed first.
    fn temp_dir(&self) -> Result<TempDir, ImageError> {
        let tmp = self.root.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pid = name.split('-').next().and_then(|p| p.parse::<i32>().ok());
                if let Some(pid) = pid {
                    // SAFETY: kill(pid, 0) only probes whether the process exists.
                    let alive = unsafe { libc::kill(pid, 0) } == 0
                        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
                    if !alive {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
        }
        for n in 0..1000u32 {
            let dir = tmp.join(format!("{}-{n}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(TempDir(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ImageError::io(format!("create {}", dir.display()), e)),
            }
        }
        Err(ImageError::Corrupt(format!(
            "no free temporary directory under {}",
            tmp.display()
        )))
    }
}

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_as_docker_does() {
        assert_eq!(normalize("busybox").unwrap(), "busybox:latest");
        assert_eq!(normalize("busybox:1.36").unwrap(), "busybox:1.36");
        assert_eq!(
            normalize("localhost:5000/team/app").unwrap(),
            "localhost:5000/team/app:latest"
        );
        assert_eq!(
            normalize("docker.io/library/debian:bookworm").unwrap(),
            "debian:bookworm"
        );
        assert_eq!(normalize("docker.io/team/app:1").unwrap(), "team/app:1");
        assert_eq!(
            normalize("quay.io/team/app").unwrap(),
            "quay.io/team/app:latest"
        );
        let digest = format!("sha256:{}", "0f".repeat(32));
        assert_eq!(
            normalize(&format!("docker.io/library/alpine:3@{digest}")).unwrap(),
            format!("alpine@{digest}")
        );
        assert!(normalize("alpine@sha256:0f").is_err());
        for bad in [
            "", "Busybox", "bb:", ":tag", "a b", "x:y:z/", "/abs", "bb:t@g",
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_index_round_trips_and_rm_collects_unused_layers() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::at(root.path()).unwrap();
        let image = |name: &str, layers: &[&str]| Image {
            name: name.into(),
            id: format!("sha256:{:0>64}", name.len()),
            layers: layers.iter().map(|s| s.to_string()).collect(),
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec![],
            working_dir: None,
            user: None,
            created: None,
        };
        for l in ["sha256:aa", "sha256:bb", "sha256:orphan"] {
            std::fs::write(store.layer_path(l), b"x").unwrap();
        }
        store.insert(image("a:latest", &["sha256:aa"])).unwrap();
        store
            .insert(image("bbb:latest", &["sha256:aa", "sha256:bb"]))
            .unwrap();
        assert_eq!(store.get("a").unwrap().layers, vec!["sha256:aa"]);
        assert!(matches!(store.get("zzz"), Err(ImageError::NotFound(_))));
        store.remove("bbb").unwrap();
        assert!(store.layer_path("sha256:aa").exists(), "still used by a");
        assert!(!store.layer_path("sha256:bb").exists());
        assert!(!store.layer_path("sha256:orphan").exists());
        assert_eq!(store.list().unwrap().len(), 1);
    }
}
