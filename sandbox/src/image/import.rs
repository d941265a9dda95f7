//! `vmpod image import`: an OCI layout directory, an oci-archive (a tar of one) or a
//! docker-archive (`docker save`), each blob checked against its digest, each new layer
//! unpacked once and turned into erofs.

use super::layer::{self, hex, DigestReader};
use super::{normalize, Image, ImageError, Store, TempDir};
use crate::erofs;
use oci_spec::image::{Arch, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The layout's annotations naming an image: containerd's full name, then OCI's ref name
/// (which skopeo and umoci set to the tag alone, or to a full reference).
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One image found in the source: its config and its layers' blobs, lowest first, with the
/// compressed digest to check where the format has one.
struct Found {
    name: Option<String>,
    config: Vec<u8>,
    layers: Vec<(PathBuf, Option<String>)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn corrupt(source: &Path, what: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt(format!("{}: {what}", source.display()))
}

/// A path inside the source directory named by the source itself, kept inside it.
fn inside(dir: &Path, name: &str, source: &Path) -> Result<PathBuf, ImageError> {
    let rel = Path::new(name);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(corrupt(
            source,
            format!("'{name}' points outside the image"),
        ));
    }
    Ok(dir.join(rel))
}

/// Opens a file of the source, refusing one that a symlink leads out of it: an archive must
/// not make the importer read the host's files into an image.
fn open_inside(dir: &Path, path: &Path, source: &Path) -> Result<File, ImageError> {
    let missing = |e: std::io::Error| {
        let rel = path.strip_prefix(dir).unwrap_or(path);
        corrupt(source, format!("{} is missing ({e})", rel.display()))
    };
    let real = path.canonicalize().map_err(missing)?;
    let root = dir.canonicalize().map_err(missing)?;
    if !real.starts_with(&root) {
        return Err(corrupt(
            source,
            format!("{} leads outside the image", path.display()),
        ));
    }
    File::open(&real).map_err(missing)
}

fn read_inside(dir: &Path, path: &Path, source: &Path) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut open_inside(dir, path, source)?, &mut bytes)
        .map_err(|e| corrupt(source, format!("read {}: {e}", path.display())))?;
    Ok(bytes)
}

fn blob_path(dir: &Path, digest: &oci_spec::image::Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm().to_string())
        .join(digest.digest())
}

/// A small blob (index, manifest, config) read whole and checked against its digest.
fn read_blob(
    dir: &Path,
    digest: &oci_spec::image::Digest,
    source: &Path,
) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(dir, digest);
    let bytes = read_inside(dir, &path, source)?;
    let actual = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
    if digest.algorithm().to_string() != "sha256" || actual != digest.to_string() {
        return Err(corrupt(
            source,
            format!("blob {digest} does not match its digest (it hashes to {actual})"),
        ));
    }
    Ok(bytes)
}

fn is_amd64_linux(platform: Option<&oci_spec::image::Platform>) -> bool {
    platform.is_none_or(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
}

/// The image manifests an index leads to (nested indexes followed, other platforms skipped),
/// with the name its annotations give.
fn manifests(
    dir: &Path,
    index: &ImageIndex,
    source: &Path,
    depth: u32,
) -> Result<Vec<(ImageManifest, Option<String>)>, ImageError> {
    if depth > 4 {
        return Err(corrupt(source, "image indexes nest too deep"));
    }
    let mut out = Vec::new();
    for descriptor in index.manifests() {
        if !is_amd64_linux(descriptor.platform().as_ref()) {
            continue;
        }
        let annotations = descriptor.annotations().clone().unwrap_or_default();
        let name = annotations
            .get(CONTAINERD_NAME)
            .or_else(|| annotations.get(OCI_REF_NAME))
            .cloned();
        let bytes = read_blob(dir, descriptor.digest(), source)?;
        match descriptor.media_type() {
            MediaType::ImageIndex => {
                let nested = ImageIndex::from_reader(&bytes[..])
                    .map_err(|e| corrupt(source, format!("index {}: {e}", descriptor.digest())))?;
                out.extend(manifests(dir, &nested, source, depth + 1)?);
            }
            _ => {
                let manifest = ImageManifest::from_reader(&bytes[..]).map_err(|e| {
                    corrupt(source, format!("manifest {}: {e}", descriptor.digest()))
                })?;
                out.push((manifest, name));
            }
        }
    }
    Ok(out)
}

/// `name` given by the user picks among several images by tag or full name.
fn pick<T>(
    mut found: Vec<(T, Option<String>)>,
    wanted: Option<&str>,
    source: &Path,
) -> Result<(T, Option<String>), ImageError> {
    if found.len() > 1 {
        if let Some(wanted) = wanted {
            let tag = wanted.rsplit(':').next().unwrap_or(wanted);
            if let Some(i) = found.iter().position(|(_, n)| {
                n.as_deref().is_some_and(|n| {
                    n == wanted || n == tag || normalize(n).ok().as_deref() == Some(wanted)
                })
            }) {
                return Ok(found.swap_remove(i));
            }
        }
        let names: Vec<String> = found
            .iter()
            .map(|(_, n)| n.clone().unwrap_or_else(|| "(unnamed)".into()))
            .collect();
        return Err(corrupt(
            source,
            format!(
                "holds {} images ({}); name the one to import",
                found.len(),
                names.join(", ")
            ),
        ));
    }
    found
        .pop()
        .ok_or_else(|| corrupt(source, "holds no linux/amd64 image"))
}

fn from_oci_layout(dir: &Path, wanted: Option<&str>, source: &Path) -> Result<Found, ImageError> {
    let index = ImageIndex::from_reader(&read_inside(dir, &dir.join("index.json"), source)?[..])
        .map_err(|e| corrupt(source, format!("index.json: {e}")))?;
    let (manifest, name) = pick(manifests(dir, &index, source, 0)?, wanted, source)?;
    let config = read_blob(dir, manifest.config().digest(), source)?;
    let layers = manifest
        .layers()
        .iter()
        .map(|l| (blob_path(dir, l.digest()), Some(l.digest().to_string())))
        .collect();
    Ok(Found {
        name,
        config,
        layers,
    })
}

fn from_docker_archive(
    dir: &Path,
    wanted: Option<&str>,
    source: &Path,
) -> Result<Found, ImageError> {
    let text = read_inside(dir, &dir.join("manifest.json"), source)?;
    let entries: Vec<DockerManifest> = serde_json::from_slice(&text)
        .map_err(|e| corrupt(source, format!("manifest.json: {e}")))?;
    let found = entries
        .into_iter()
        .map(|m| {
            let name = m.repo_tags.as_ref().and_then(|t| t.first().cloned());
            (m, name)
        })
        .collect();
    let (manifest, name) = pick(found, wanted, source)?;
    let config_path = inside(dir, &manifest.config, source)?;
    let config = read_inside(dir, &config_path, source)?;
    let layers = manifest
        .layers
        .iter()
        .map(|l| Ok((inside(dir, l, source)?, None)))
        .collect::<Result<_, ImageError>>()?;
    Ok(Found {
        name,
        config,
        layers,
    })
}

/// A tarball (maybe gzip-compressed) unpacked into `into`.
fn unpack_archive(file: &Path, into: &Path) -> Result<(), ImageError> {
    let f = File::open(file).map_err(|e| ImageError::io(format!("open {}", file.display()), e))?;
    let reader = layer::decompress(f, &file.display().to_string())?;
    let mut archive = tar::Archive::new(reader);
    archive
        .unpack(into)
        .map_err(|e| corrupt(file, format!("not a readable tar archive: {e}")))
}

/// Unpacks and converts one layer unless the store already has it (a registry pull calls it
/// with the blob it downloaded into a temporary directory).
pub(super) fn ensure_layer(
    store: &Store,
    dir: &Path,
    index: usize,
    blob: &Path,
    blob_digest: Option<&str>,
    diff_id: &str,
    source: &Path,
) -> Result<(), ImageError> {
    let target = store.layer_path(diff_id);
    if target.is_file() {
        return Ok(());
    }
    let what = format!("{}: layer {} ({diff_id})", source.display(), index + 1);
    // The blob's digest first: a damaged archive is named as such, not as a bad tar.
    if let Some(expected) = blob_digest {
        let actual = DigestReader::new(open_inside(dir, blob, source)?)
            .finish()
            .map_err(|e| ImageError::Corrupt(format!("{what}: {e}")))?;
        if actual != expected {
            return Err(ImageError::Corrupt(format!(
                "{what}: the blob does not match its digest {expected} (it hashes to {actual})"
            )));
        }
    }
    let file = open_inside(dir, blob, source)?;
    let work = store.temp_dir()?;
    let root = work.path().join("rootfs");
    std::fs::create_dir(&root)
        .map_err(|e| ImageError::io(format!("create {}", root.display()), e))?;
    let mut inner = DigestReader::new(layer::decompress(file, &what)?);
    layer::unpack(&mut inner, &root, &what)?;
    let uncompressed = inner
        .finish()
        .map_err(|e| ImageError::Corrupt(format!("{what}: {e}")))?;
    if uncompressed != diff_id {
        return Err(ImageError::Corrupt(format!(
            "{what}: its content hashes to {uncompressed}, which does not match the diff_id the image config gives"
        )));
    }
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755));
    erofs::build(&root, &target, &["--preserve-mtime"]).map_err(|e| ImageError::Erofs {
        what: what.clone(),
        source: e,
    })
}

/// Imports the image in `source` under `name` (else the name the source gives) and returns it.
pub fn import(store: &Store, source: &Path, name: Option<&str>) -> Result<Image, ImageError> {
    let wanted = name.map(normalize).transpose()?;
    let meta = std::fs::metadata(source)
        .map_err(|e| ImageError::io(format!("import {}", source.display()), e))?;
    let _layers = store.layers_lock(false)?;
    let unpacked: Option<TempDir>;
    let dir = if meta.is_dir() {
        unpacked = None;
        source.to_path_buf()
    } else {
        let work = store.temp_dir()?;
        unpack_archive(source, work.path())?;
        let dir = work.path().to_path_buf();
        unpacked = Some(work);
        dir
    };
    let found = if dir.join("index.json").is_file() {
        from_oci_layout(&dir, wanted.as_deref(), source)?
    } else if dir.join("manifest.json").is_file() {
        from_docker_archive(&dir, wanted.as_deref(), source)?
    } else {
        return Err(corrupt(
            source,
            "is neither an OCI layout or oci-archive (no index.json) nor a docker-archive (no manifest.json)",
        ));
    };
    let config = checked_config(&found.config, found.layers.len(), source)?;
    let diff_ids = config.rootfs().diff_ids();
    let image_name = match wanted {
        Some(n) => n,
        None => {
            let given = found.name.clone().ok_or_else(|| {
                ImageError::Unsupported(format!(
                    "{} does not name its image; give a NAME[:TAG]",
                    source.display()
                ))
            })?;
            // OCI's ref name is often the tag alone ("latest"), which names no image.
            if !given.contains(':') && !given.contains('/') {
                return Err(ImageError::Unsupported(format!(
                    "{} names only the tag '{given}'; give a NAME[:TAG]",
                    source.display()
                )));
            }
            normalize(&given)?
        }
    };
    for (i, ((blob, digest), diff_id)) in found.layers.iter().zip(diff_ids).enumerate() {
        ensure_layer(store, &dir, i, blob, digest.as_deref(), diff_id, source)?;
    }
    drop(unpacked);
    let image = record(image_name, &found.config, &config);
    store.insert(image.clone())?;
    Ok(image)
}

/// The image config, checked for what vmpod runs: linux/amd64, one sha256 diff_id per layer.
pub(super) fn checked_config(
    bytes: &[u8],
    layers: usize,
    source: &Path,
) -> Result<ImageConfiguration, ImageError> {
    let config = ImageConfiguration::from_reader(bytes)
        .map_err(|e| corrupt(source, format!("image config: {e}")))?;
    if *config.os() != Os::Linux || *config.architecture() != Arch::Amd64 {
        return Err(ImageError::Unsupported(format!(
            "{}: the image is for {}/{}; vmpod runs linux/amd64 guests",
            source.display(),
            config.os(),
            config.architecture()
        )));
    }
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layers {
        return Err(corrupt(
            source,
            format!(
                "the manifest lists {layers} layers but the config {} diff_ids",
                diff_ids.len()
            ),
        ));
    }
    if diff_ids.is_empty() {
        return Err(corrupt(source, "the image has no layers"));
    }
    if let Some(bad) = diff_ids.iter().find(|d| !d.starts_with("sha256:")) {
        return Err(corrupt(source, format!("diff_id '{bad}' is not sha256")));
    }
    Ok(config)
}

/// What the store keeps of an image named `name` with this config.
pub(super) fn record(name: String, config_bytes: &[u8], config: &ImageConfiguration) -> Image {
    let process = config.config().clone().unwrap_or_default();
    Image {
        name,
        id: format!("sha256:{}", hex(&Sha256::digest(config_bytes))),
        layers: config.rootfs().diff_ids().clone(),
        entrypoint: process.entrypoint().clone().unwrap_or_default(),
        cmd: process.cmd().clone().unwrap_or_default(),
        env: process.env().clone().unwrap_or_default(),
        working_dir: process.working_dir().clone().filter(|w| !w.is_empty()),
        user: process.user().clone().filter(|u| !u.is_empty()),
        created: config.created().clone(),
    }
}
