//! `vmpod pull`: an image from a registry into the store, with `oci-client` speaking the
//! distribution protocol. Docker's names (`alpine` is docker.io/library/alpine:latest), a
//! multi-arch index resolved to linux/amd64, credentials from `~/.docker/config.json`, plain
//! HTTP for localhost and the `insecure_registries` of vmpod.toml.
//!
//! Layers download in parallel into the store's temporary directory, each checked against its
//! digest as it arrives, then take the importer's path to an erofs image (diff_id checked too);
//! a layer the store already has is not fetched. SIGINT or SIGTERM stops the downloads and waits
//! for the conversions in flight (each ends with a whole layer renamed into place), so an
//! interrupted pull leaves no temporary file and no half-made layer.

use super::credentials::{credentials, CredentialsError};
use super::import::{checked_config, ensure_layer, record};
use super::layer::hex;
use super::{normalize, Image, ImageError, Store};
use oci_client::client::{linux_amd64_resolver, ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use tokio::signal::unix::{signal, SignalKind};

/// Layers downloading at once (docker's default).
const PARALLEL_DOWNLOADS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("'{reference}' is not an image reference")]
    BadReference {
        reference: String,
        #[source]
        source: oci_client::ParseError,
    },
    #[error("cannot reach the registry {registry}")]
    Unreachable {
        registry: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("the registry {registry} refused access ({hint})")]
    Unauthorized {
        registry: String,
        hint: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("the registry has no image {reference}")]
    NotFound {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("layer {index} ({digest}): the blob the registry sent does not match its digest")]
    Digest {
        index: usize,
        digest: String,
        #[source]
        source: DigestError,
    },
    #[error("{what}")]
    Registry {
        what: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("the image config {digest} the registry sent does not match its digest")]
    ConfigDigest { digest: String },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("write {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
    #[error("a download task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// What happens to one layer, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerEvent {
    /// The store has it: nothing to fetch.
    Cached,
    Waiting,
    Downloading {
        done: u64,
        total: u64,
    },
    Extracting,
    Done,
}

/// Called with a layer's position in the image (from 0), its blob digest and what it is doing.
pub type Progress = dyn Fn(usize, &str, LayerEvent) + Send + Sync;

/// Where a pull goes and how.
pub struct PullOptions {
    /// Registries spoken to over plain HTTP besides localhost's.
    pub insecure_registries: Vec<String>,
    /// docker's client config: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
}

impl PullOptions {
    /// The host's: vmpod.toml's `insecure_registries`, docker's usual config file.
    pub fn from_host() -> Result<PullOptions, ImageError> {
        let config = &crate::host_config::get()?.config;
        let docker_config = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
            .map(|dir| dir.join("config.json"));
        Ok(PullOptions {
            insecure_registries: config.insecure_registries.clone().unwrap_or_default(),
            docker_config,
        })
    }
}

/// The name the store keeps a pulled image under, docker's familiar form: `alpine:latest`,
/// `team/app:1`, `localhost:5000/app:latest`, `app@sha256:…`.
pub fn store_name(reference: &Reference) -> Result<String, ImageError> {
    let repository = reference.repository();
    let repo = if reference.registry() == "docker.io" {
        repository
            .strip_prefix("library/")
            .unwrap_or(repository)
            .to_string()
    } else {
        format!("{}/{repository}", reference.registry())
    };
    match (reference.digest(), reference.tag()) {
        (Some(digest), _) => normalize(&format!("{repo}@{digest}")),
        (None, Some(tag)) => normalize(&format!("{repo}:{tag}")),
        (None, None) => normalize(&repo),
    }
}

pub fn parse_reference(reference: &str) -> Result<Reference, PullError> {
    reference
        .parse::<Reference>()
        .map_err(|source| PullError::BadReference {
            reference: reference.to_string(),
            source,
        })
}

/// Docker's rule: localhost and the loopback addresses may be spoken to without TLS.
fn is_insecure(registry: &str, listed: &[String]) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => registry.split(':').next().unwrap_or(registry),
    };
    host == "localhost"
        || host == "::1"
        || host.starts_with("127.")
        || listed.iter().any(|r| r == registry || r == host)
}

fn envelope_has(envelope: &OciEnvelope, codes: &[OciErrorCode]) -> bool {
    envelope.errors.iter().any(|e| codes.contains(&e.code))
}

/// The registry's failure as the user's problem: unreachable, refused, no such image, or else.
fn classify(
    source: OciDistributionError,
    registry: &str,
    name: &str,
    auth: &RegistryAuth,
    what: impl FnOnce() -> String,
) -> PullError {
    use OciDistributionError as E;
    let refused = match &source {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => true,
        E::ServerError { code, .. } => *code == 401 || *code == 403,
        E::RegistryError { envelope, .. } => envelope_has(
            envelope,
            &[OciErrorCode::Unauthorized, OciErrorCode::Denied],
        ),
        _ => false,
    };
    let missing = match &source {
        E::ImageManifestNotFoundError(_) => true,
        E::ServerError { code, .. } => *code == 404,
        E::RegistryError { envelope, .. } => envelope_has(
            envelope,
            &[
                OciErrorCode::ManifestUnknown,
                OciErrorCode::NameUnknown,
                OciErrorCode::NotFound,
            ],
        ),
        _ => false,
    };
    let unreachable = matches!(&source, E::RequestError(e) if e.is_connect() || e.is_timeout());
    if unreachable {
        PullError::Unreachable {
            registry: registry.into(),
            source,
        }
    } else if refused {
        let hint = match auth {
            RegistryAuth::Anonymous => "no credentials for it in the docker config".to_string(),
            _ => "the credentials in the docker config were refused".to_string(),
        };
        PullError::Unauthorized {
            registry: registry.into(),
            hint,
            source,
        }
    } else if missing {
        PullError::NotFound {
            reference: name.into(),
            source,
        }
    } else {
        PullError::Registry {
            what: what(),
            source,
        }
    }
}

/// A file a blob is written to, counting the bytes for the progress display.
struct CountingFile {
    file: tokio::fs::File,
    done: u64,
    total: u64,
    report: Box<dyn Fn(u64, u64) + Send>,
}

impl AsyncWrite for CountingFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.file).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.done += n as u64;
            (this.report)(this.done, this.total);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

/// What every layer's task shares.
struct Shared {
    client: Client,
    reference: Reference,
    registry: String,
    name: String,
    auth: RegistryAuth,
    store: Store,
    progress: Arc<Progress>,
    downloads: tokio::sync::Semaphore,
    cancel: tokio::sync::watch::Receiver<bool>,
}

/// Downloads one layer's blob into a temporary directory and turns it into the store's erofs
/// image; stops at once when the pull is cancelled.
async fn fetch_layer(
    shared: Arc<Shared>,
    index: usize,
    blob: OciDescriptor,
    diff_id: String,
) -> Result<(), PullError> {
    let mut cancel = shared.cancel.clone();
    let progress = shared.progress.clone();
    let digest = blob.digest.clone();
    let work = shared.store.temp_dir()?;
    let path = work.path().join("blob");
    let download = async {
        let _permit = shared
            .downloads
            .acquire()
            .await
            .map_err(|_| PullError::Interrupted)?;
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|source| PullError::Io {
                what: path.display().to_string(),
                source,
            })?;
        let report_digest = digest.clone();
        let report_progress = progress.clone();
        let writer = CountingFile {
            file,
            done: 0,
            total: u64::try_from(blob.size).unwrap_or(0),
            report: Box::new(move |done, total| {
                report_progress(
                    index,
                    &report_digest,
                    LayerEvent::Downloading { done, total },
                )
            }),
        };
        shared
            .client
            .pull_blob(&shared.reference, &blob, writer)
            .await
            .map_err(|source| match source {
                OciDistributionError::DigestError(source) => PullError::Digest {
                    index: index + 1,
                    digest: digest.clone(),
                    source,
                },
                source => classify(source, &shared.registry, &shared.name, &shared.auth, || {
                    format!("download layer {} ({digest})", index + 1)
                }),
            })
    };
    tokio::select! {
        done = download => done?,
        _ = cancel.wait_for(|cancelled| *cancelled) => return Err(PullError::Interrupted),
    }
    progress(index, &digest, LayerEvent::Extracting);
    let store = shared.store.clone();
    let name = shared.name.clone();
    tokio::task::spawn_blocking(move || {
        let source = PathBuf::from(&name);
        ensure_layer(&store, work.path(), index, &path, None, &diff_id, &source)
    })
    .await
    .map_err(PullError::Task)??;
    progress(index, &digest, LayerEvent::Done);
    Ok(())
}

/// Pulls `reference` into the store and records it under [`store_name`].
pub fn pull(
    store: &Store,
    reference: &str,
    options: &PullOptions,
    progress: Arc<Progress>,
) -> Result<Image, PullError> {
    let parsed = parse_reference(reference)?;
    let name = store_name(&parsed)?;
    let registry = parsed.registry().to_string();
    let protocol = if is_insecure(&registry, &options.insecure_registries) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    let auth = credentials(options.docker_config.as_deref(), &registry)?;
    let client = Client::new(ClientConfig {
        protocol,
        platform_resolver: Some(Box::new(linux_amd64_resolver)),
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        ..Default::default()
    });
    let _layers = store.layers_lock(false)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| PullError::Io {
            what: "start the download runtime".into(),
            source,
        })?;
    let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
    let shared = Shared {
        client,
        reference: parsed,
        registry,
        name,
        auth,
        store: store.clone(),
        progress,
        downloads: tokio::sync::Semaphore::new(PARALLEL_DOWNLOADS),
        cancel,
    };
    let saved = SavedSignals::save();
    let pulled = runtime.block_on(pull_async(shared, cancel_tx));
    drop(runtime);
    drop(saved);
    pulled
}

/// SIGINT's and SIGTERM's dispositions before the pull, put back after it: the runtime's
/// handlers outlive it, and a caller (`vmpod run`) must die of Ctrl-C again, or catch it itself.
struct SavedSignals(Vec<(libc::c_int, libc::sigaction)>);

impl SavedSignals {
    fn save() -> SavedSignals {
        let saved = [libc::SIGINT, libc::SIGTERM]
            .into_iter()
            .filter_map(|signal| {
                // SAFETY: sigaction(2) with a null new action only reads the current one into
                // a zeroed struct we own.
                unsafe {
                    let mut old: libc::sigaction = std::mem::zeroed();
                    (libc::sigaction(signal, std::ptr::null(), &mut old) == 0)
                        .then_some((signal, old))
                }
            })
            .collect();
        SavedSignals(saved)
    }
}

impl Drop for SavedSignals {
    fn drop(&mut self) {
        for (signal, old) in &self.0 {
            // SAFETY: restores a disposition sigaction(2) returned for this signal.
            unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
        }
    }
}

async fn pull_async(
    shared: Shared,
    cancel: tokio::sync::watch::Sender<bool>,
) -> Result<Image, PullError> {
    let signal_error = |source| PullError::Io {
        what: "catch SIGINT and SIGTERM".into(),
        source,
    };
    let mut sigint = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(signal_error)?;
    let fetched = tokio::select! {
        fetched = shared.client.pull_manifest_and_config(&shared.reference, &shared.auth) => fetched,
        _ = sigint.recv() => return Err(PullError::Interrupted),
        _ = sigterm.recv() => return Err(PullError::Interrupted),
    };
    let (manifest, _, config) = fetched.map_err(|source| {
        classify(source, &shared.registry, &shared.name, &shared.auth, || {
            "read the image manifest".into()
        })
    })?;
    let config = config.into_bytes();
    if format!("sha256:{}", hex(&Sha256::digest(&config))) != manifest.config.digest {
        return Err(PullError::ConfigDigest {
            digest: manifest.config.digest,
        });
    }
    let source = PathBuf::from(&shared.name);
    let image_config = checked_config(&config, manifest.layers.len(), &source)?;
    let diff_ids = image_config.rootfs().diff_ids().clone();
    let shared = Arc::new(shared);
    let mut tasks = tokio::task::JoinSet::new();
    let mut seen = std::collections::HashSet::new();
    for (index, (blob, diff_id)) in manifest.layers.into_iter().zip(diff_ids).enumerate() {
        if shared.store.layer_path(&diff_id).is_file() || !seen.insert(diff_id.clone()) {
            (shared.progress)(index, &blob.digest, LayerEvent::Cached);
            continue;
        }
        (shared.progress)(index, &blob.digest, LayerEvent::Waiting);
        tasks.spawn(fetch_layer(shared.clone(), index, blob, diff_id));
    }
    let mut failure = None;
    let mut interrupted = false;
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    failure.get_or_insert(e);
                    let _ = cancel.send(true);
                }
                Some(Err(e)) => {
                    failure.get_or_insert(PullError::Task(e));
                    let _ = cancel.send(true);
                }
            },
            _ = sigint.recv() => {
                interrupted = true;
                let _ = cancel.send(true);
            }
            _ = sigterm.recv() => {
                interrupted = true;
                let _ = cancel.send(true);
            }
        }
    }
    if interrupted {
        return Err(PullError::Interrupted);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let image = record(shared.name.clone(), &config, &image_config);
    shared.store.insert(image.clone())?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(reference: &str) -> String {
        store_name(&parse_reference(reference).unwrap()).unwrap()
    }

    #[test]
    fn references_follow_dockers_naming_rules() {
        assert_eq!(named("alpine"), "alpine:latest");
        assert_eq!(named("docker.io/library/alpine:3.19"), "alpine:3.19");
        assert_eq!(named("user/x"), "user/x:latest");
        assert_eq!(named("localhost:5000/x:tag"), "localhost:5000/x:tag");
        assert_eq!(named("quay.io/team/app"), "quay.io/team/app:latest");
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            named(&format!("alpine@{digest}")),
            format!("alpine@{digest}")
        );
        let parsed = parse_reference("alpine").unwrap();
        assert_eq!(parsed.registry(), "docker.io");
        assert_eq!(parsed.repository(), "library/alpine");
        assert!(parse_reference("Alpine").is_err());
        assert!(parse_reference("alpine:bad tag").is_err());
    }

    #[test]
    fn localhost_and_listed_registries_are_spoken_to_over_http() {
        let listed = vec!["registry.lan:5000".to_string()];
        for insecure in [
            "localhost:5000",
            "127.0.0.1:41000",
            "[::1]:5000",
            "registry.lan:5000",
        ] {
            assert!(is_insecure(insecure, &listed), "{insecure}");
        }
        for secure in [
            "docker.io",
            "quay.io",
            "registry.lan:6000",
            "localhost.example.com",
        ] {
            assert!(!is_insecure(secure, &listed), "{secure}");
        }
    }
}
