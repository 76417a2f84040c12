//! Remote-layer decision (on whenever teleportd has `--registry`; `--no-remote` turns it off).
//!
//! On a layer's Prepare with CRI labels, ask the registry whether the image is expanded
//! (`/mount/v1/{repo}/_manifests/{digest}`), decide once per image (manifest digest) and, when
//! remote, have a [`LayerMounter`] make the layer available so the snapshotter can commit it under
//! the target chain ID and answer `AlreadyExists`. Once an image is remote a later layer never
//! falls back: containerd would then fetch that layer and every layer above it.

pub mod fuse;
pub mod http;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tracing::{info, warn};

use crate::fetch::{MountInfo, MountStatus};
use crate::snapshot::{
    Labels, SnapshotError, LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER_DIGEST, LABEL_CRI_MANIFEST_DIGEST,
    LABEL_TARGET_REF,
};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Registry(#[from] registry_client::Error),
    #[error("image reference {0:?} is not valid")]
    BadReference(String),
    #[error("layer {digest} of remote image {manifest}: {reason}")]
    Layer {
        digest: String,
        manifest: String,
        reason: String,
    },
    #[error(transparent)]
    Manager(Box<crate::manager::Error>),
}

pub type Result<T> = std::result::Result<T, RemoteError>;

/// Registry repository + manifest digest of the image being pulled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]` the image is pulled from.
    pub host: String,
    pub repo: String,
    pub manifest: String,
}

impl ImageRef {
    /// From `cri.image-ref` (`host/repo[:tag][@digest]`) and `cri.manifest-digest`.
    pub fn parse(image_ref: &str, manifest: &str) -> Result<Self> {
        let bad = || RemoteError::BadReference(image_ref.to_owned());
        let without_digest = image_ref.split('@').next().unwrap_or(image_ref);
        let (host, rest) = without_digest.split_once('/').ok_or_else(bad)?;
        // docker's rule: the first component is a host if it has '.' or ':' or is localhost.
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(bad());
        }
        let repo = match rest.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => rest,
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.split('/').all(|c| {
                    c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                        && c.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                        })
                })
        };
        let digest_ok = manifest.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        if !valid(repo) || !digest_ok {
            return Err(bad());
        }
        Ok(ImageRef {
            host: host.to_owned(),
            repo: repo.to_owned(),
            manifest: manifest.to_owned(),
        })
    }
}

/// One layer of a remote image, as a Prepare's labels name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    pub image: ImageRef,
    /// Compressed layer digest (`cri.layer-digest`).
    pub digest: String,
    /// The registry's `/mount` answer for the image.
    pub mount_info: Arc<MountInfo>,
}

impl LayerRef {
    /// This layer's entry in the registry's `/mount` answer.
    pub fn info(&self) -> Result<&crate::fetch::LayerInfo> {
        self.mount_info
            .layers
            .iter()
            .find(|l| l.digest.as_str() == self.digest)
            .ok_or_else(|| RemoteError::Layer {
                digest: self.digest.clone(),
                manifest: self.image.manifest.clone(),
                reason: "not in the registry's /mount answer".into(),
            })
    }
}

pub trait RemoteResolver: Send + Sync + 'static {
    /// The registry's `/mount` answer for `image` (after a bounded wait while it is 409).
    fn resolve<'a>(&'a self, image: &'a ImageRef) -> BoxFuture<'a, Result<MountStatus>>;
    /// Whether `layer` may be committed as snapshot `target` on `parent` (containerd's chain
    /// IDs): the image's config, fetched by digest and checked, must give the layer that chain
    /// ID on that parent, and must claim for it the diff ID the registry's `/mount` reports for
    /// its expanded content. `Err(why)` refuses the remote path for this layer. A resolver
    /// that cannot check anything (test doubles) accepts.
    fn verify<'a>(
        &'a self,
        _layer: &'a LayerRef,
        _target: &'a str,
        _parent: &'a str,
    ) -> BoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// containerd's chain IDs of layers with these diff IDs (bottom → top).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    use sha2::Digest as _;
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(sha2::Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

/// Makes a remote layer's tree appear at `target` (the committed snapshot's `fs` dir), and
/// takes it away again. [`fuse::FuseLayers`] does it with a per-layer FUSE mount.
pub trait LayerMounter: Send + Sync + 'static {
    /// Called once when an image is first found remote (at pull): start, in the background,
    /// what its first start will need — every layer's index and the replay of its learned start
    /// profile — so the work overlaps the rest of the pull and the sandbox start. Returns at
    /// once; failures only cost the head start.
    fn warm(&self, _layers: Vec<LayerRef>) {}
    /// Checked at pull time, without I/O, for a layer that will only be mounted on first use:
    /// by default the layer must be in the registry's `/mount` answer.
    fn validate(&self, layer: &LayerRef) -> Result<()> {
        layer.info().map(|_| ())
    }
    fn mount_layer<'a>(
        &'a self,
        layer: &'a LayerRef,
        target: &'a Path,
    ) -> BoxFuture<'a, Result<()>>;
    /// One mount at `target` presenting the merged tree of `layers` (bottom → top). Returns
    /// Ok without remounting when `target` is already mounted.
    fn mount_merged<'a>(
        &'a self,
        layers: &'a [LayerRef],
        target: &'a Path,
    ) -> BoxFuture<'a, Result<()>>;
    /// No-op when nothing is mounted at `target`.
    fn unmount_layer<'a>(&'a self, target: &'a Path) -> BoxFuture<'a, Result<()>>;
    /// Everything this mounter mounted (clean shutdown).
    fn unmount_all(&self) -> BoxFuture<'_, ()>;
    fn is_mounted<'a>(&'a self, target: &'a Path) -> BoxFuture<'a, bool>;
    /// Fetch counters of each live mount, for `/metrics`; an empty path carries work done
    /// ahead of any mount (see [`LayerMounter::warm`]).
    fn stats(&self) -> BoxFuture<'_, Vec<(std::path::PathBuf, crate::fetch::CountersSnapshot)>> {
        Box::pin(async { Vec::new() })
    }
}

pub enum RemoteOutcome {
    Local,
    Remote { target: String, layer: LayerRef },
}

#[derive(Clone)]
enum Cached {
    Remote(Arc<MountInfo>),
    /// Remembered for a while so one pull's layers agree and do not each wait out a 409.
    Local(Instant),
}

/// How long a "download it" decision is reused for an image.
const LOCAL_DECISION_TTL: Duration = Duration::from_secs(300);

pub struct RemoteLayers {
    resolver: Arc<dyn RemoteResolver>,
    mounter: Arc<dyn LayerMounter>,
    decisions: Mutex<HashMap<String, Cached>>,
    merged: bool,
    /// Serialises merged mounts so two Prepares do not mount the same image twice.
    merging: tokio::sync::Mutex<()>,
}

impl RemoteLayers {
    /// `merged`: present each image's remote layers as one merged mount (mounted when a
    /// container needs it) instead of one mount per layer.
    pub fn new(
        resolver: Arc<dyn RemoteResolver>,
        mounter: Arc<dyn LayerMounter>,
        merged: bool,
    ) -> Self {
        RemoteLayers {
            resolver,
            mounter,
            decisions: Mutex::new(HashMap::new()),
            merged,
            merging: tokio::sync::Mutex::new(()),
        }
    }

    pub fn merged(&self) -> bool {
        self.merged
    }

    /// Mounts one recorded remote layer at `target` unless it is mounted already.
    pub async fn ensure_layer(
        &self,
        labels: &Labels,
        target: &Path,
    ) -> std::result::Result<(), SnapshotError> {
        let _one_at_a_time = self.merging.lock().await;
        if self.mounter.is_mounted(target).await {
            return Ok(());
        }
        self.restore(labels, target).await
    }

    /// Mounts every `(target, labels)` layer not mounted yet, all at once (per-layer mode's
    /// attach on first use: one index round trip and one mount time for a whole image).
    pub async fn ensure_layers(
        &self,
        layers: &[(std::path::PathBuf, Labels)],
    ) -> std::result::Result<(), SnapshotError> {
        if layers.is_empty() {
            return Ok(());
        }
        let _one_at_a_time = self.merging.lock().await;
        let checks = layers.iter().map(|(dir, _)| self.mounter.is_mounted(dir));
        let mounted = futures::future::join_all(checks).await;
        let todo = layers
            .iter()
            .zip(mounted)
            .filter(|(_, m)| !m)
            .map(|((dir, labels), _)| self.restore(labels, dir));
        futures::future::try_join_all(todo).await?;
        Ok(())
    }

    /// Mounts the merged tree of the remote layers recorded with `labels` (bottom → top) at
    /// `target` unless it is mounted already.
    pub async fn ensure_merged(
        &self,
        labels: &[Labels],
        target: &Path,
    ) -> std::result::Result<(), SnapshotError> {
        let _one_at_a_time = self.merging.lock().await;
        let mut layers = Vec::with_capacity(labels.len());
        for l in labels {
            match self.decide(l).await {
                RemoteOutcome::Remote { layer, .. } => layers.push(layer),
                RemoteOutcome::Local => {
                    return Err(SnapshotError::FailedPrecondition(format!(
                        "remote layer {:?} is no longer available from the registry",
                        l.get(LABEL_CRI_LAYER_DIGEST)
                    )))
                }
            }
        }
        Ok(self.mounter.mount_merged(&layers, target).await?)
    }

    fn cached(&self, manifest: &str) -> Option<Cached> {
        let d = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        d.get(manifest).cloned()
    }

    fn remember(&self, manifest: &str, c: Cached) {
        let mut d = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        // Never demote a remote image to local.
        if !matches!(d.get(manifest), Some(Cached::Remote(_))) {
            d.insert(manifest.to_owned(), c);
        }
    }

    /// Remote or local for this Prepare. Errors before an image is known remote mean local;
    /// they are only logged.
    pub async fn decide(&self, labels: &Labels) -> RemoteOutcome {
        let (Some(target), Some(digest), Some(image_ref), Some(manifest)) = (
            labels.get(LABEL_TARGET_REF),
            labels.get(LABEL_CRI_LAYER_DIGEST),
            labels.get(LABEL_CRI_IMAGE_REF),
            labels.get(LABEL_CRI_MANIFEST_DIGEST),
        ) else {
            return RemoteOutcome::Local;
        };
        let image = match ImageRef::parse(image_ref, manifest) {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "not a teleport image reference; pulling normally");
                return RemoteOutcome::Local;
            }
        };
        // Per repository and digest: the same manifest pushed to a repo that is not
        // teleport-enabled must not reuse another repo's remote decision.
        let cache_key = format!("{}/{}@{}", image.host, image.repo, image.manifest);
        let info = match self.cached(&cache_key) {
            Some(Cached::Remote(info)) => info,
            Some(Cached::Local(at)) if at.elapsed() < LOCAL_DECISION_TTL => {
                return RemoteOutcome::Local
            }
            _ => match self.resolver.resolve(&image).await {
                Ok(MountStatus::Ready(info)) => {
                    info!(repo = %image.repo, %manifest, "image is expanded: mounting its layers");
                    self.remember(&cache_key, Cached::Remote(info.clone()));
                    let all = info
                        .layers
                        .iter()
                        .map(|l| LayerRef {
                            image: image.clone(),
                            digest: l.digest.to_string(),
                            mount_info: info.clone(),
                        })
                        .collect();
                    self.mounter.warm(all);
                    info
                }
                Ok(d) => {
                    info!(repo = %image.repo, %manifest, decision = ?d, "pulling normally");
                    self.remember(&cache_key, Cached::Local(Instant::now()));
                    return RemoteOutcome::Local;
                }
                Err(e) => {
                    warn!(repo = %image.repo, %manifest, error = %e, "registry check failed; pulling normally");
                    self.remember(&cache_key, Cached::Local(Instant::now()));
                    return RemoteOutcome::Local;
                }
            },
        };
        RemoteOutcome::Remote {
            target: target.clone(),
            layer: LayerRef {
                image,
                digest: digest.clone(),
                mount_info: info,
            },
        }
    }

    /// Pull-time check that `layer` is what containerd will take snapshot `target` on `parent`
    /// for; see [`RemoteResolver::verify`].
    pub async fn verify(
        &self,
        layer: &LayerRef,
        target: &str,
        parent: &str,
    ) -> std::result::Result<(), String> {
        self.resolver.verify(layer, target, parent).await
    }

    /// Pull-time check of a layer that is recorded now and mounted on first use.
    pub fn validate(&self, layer: &LayerRef) -> std::result::Result<(), SnapshotError> {
        Ok(self.mounter.validate(layer)?)
    }

    pub async fn mount_layer(
        &self,
        layer: &LayerRef,
        target: &Path,
    ) -> std::result::Result<(), SnapshotError> {
        Ok(self.mounter.mount_layer(layer, target).await?)
    }

    /// Re-mounts a remote snapshot recorded in metadata (after a restart) from its labels.
    pub async fn restore(
        &self,
        labels: &Labels,
        target: &Path,
    ) -> std::result::Result<(), SnapshotError> {
        match self.decide(labels).await {
            RemoteOutcome::Remote { layer, .. } => self.mount_layer(&layer, target).await,
            RemoteOutcome::Local => Err(SnapshotError::FailedPrecondition(format!(
                "remote snapshot at {target:?} is no longer available from the registry"
            ))),
        }
    }

    pub async fn unmount_layer(&self, target: &Path) -> std::result::Result<(), SnapshotError> {
        Ok(self.mounter.unmount_layer(target).await?)
    }

    pub async fn stats(&self) -> Vec<(std::path::PathBuf, crate::fetch::CountersSnapshot)> {
        self.mounter.stats().await
    }

    pub async fn unmount_all(&self) {
        self.mounter.unmount_all().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        // sha256("sha256:aaa… sha256:bbb…"), computed independently with sha256sum.
        let want = {
            let out = std::process::Command::new("sha256sum")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut p| {
                    use std::io::Write;
                    p.stdin
                        .take()
                        .unwrap()
                        .write_all(format!("{a} {b}").as_bytes())?;
                    p.wait_with_output()
                })
                .unwrap();
            String::from_utf8(out.stdout).unwrap()[..64].to_string()
        };
        assert_eq!(c[1], format!("sha256:{want}"));
    }

    #[test]
    fn image_refs() {
        let i = ImageRef::parse("127.0.0.1:5000/team/app:v1", D).unwrap();
        assert_eq!(
            (i.host.as_str(), i.repo.as_str()),
            ("127.0.0.1:5000", "team/app")
        );
        let i = ImageRef::parse(&format!("localhost/app@{D}"), D).unwrap();
        assert_eq!(i.repo, "app");
        assert!(ImageRef::parse("docker.io/library/x:1", D).is_ok());
        for bad in ["app:v1", "h.io/", "h.io/UPPER", "h.io/a//b", "h.io/../x"] {
            assert!(ImageRef::parse(bad, D).is_err(), "{bad}");
        }
        assert!(ImageRef::parse("h.io/a", "sha256:xyz").is_err());
    }
}
