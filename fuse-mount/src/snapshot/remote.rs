//! The snapshotter's remote-layer policy: on a layer's Prepare with CRI labels, decide once per
//! image (through a [`RemoteResolver`]) whether its layers are mounted from the registry's
//! expanded copy instead of downloaded, and have a [`LayerMounter`] attach them. Once an image is
//! remote a later layer never falls back: containerd would then fetch that layer and every layer
//! above it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::SnapshotError;
use crate::fetch::{MountInfo, MountStatus};
use crate::labels::{
    Labels, LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER_DIGEST, LABEL_CRI_MANIFEST_DIGEST,
    LABEL_TARGET_REF,
};
use crate::remote::{ImageRef, LayerMounter, LayerRef, RemoteResolver};

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

    pub async fn timings(&self) -> String {
        self.mounter.timings().await
    }

    pub async fn stats(&self) -> Vec<(std::path::PathBuf, crate::fetch::CountersSnapshot)> {
        self.mounter.stats().await
    }

    pub async fn unmount_all(&self) {
        self.mounter.unmount_all().await
    }
}
