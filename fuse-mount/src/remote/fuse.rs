//! [`LayerMounter`] over the lazy FUSE filesystem (`crate::fs`): per-layer mode, one FUSE mount of
//! the layer in overlayfs form at the committed snapshot's `fs` dir, so containerd's overlay
//! stacks it like any unpacked layer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::future::BoxFuture;
use tracing::{info, warn};

use super::{LayerMounter, LayerRef, RemoteError, Result};
use crate::fetch::Client;
use crate::fs::{self, MountHandle, MountOptions};

pub struct FuseLayers {
    client: Client,
    opts: MountOptions,
    mounts: Mutex<HashMap<PathBuf, MountHandle>>,
}

impl FuseLayers {
    pub fn new(client: Client, opts: MountOptions) -> Self {
        FuseLayers {
            client,
            opts,
            mounts: Mutex::new(HashMap::new()),
        }
    }

    /// The registry client the mounts read through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Every mount point this instance serves.
    pub fn mountpoints(&self) -> Vec<PathBuf> {
        let m = self.mounts.lock().unwrap_or_else(|p| p.into_inner());
        m.keys().cloned().collect()
    }

    fn take(&self, target: &Path) -> Option<MountHandle> {
        let mut m = self.mounts.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(target)
    }
}

fn layer_err(layer: &LayerRef, reason: impl ToString) -> RemoteError {
    RemoteError::Layer {
        digest: layer.digest.clone(),
        manifest: layer.image.manifest.clone(),
        reason: reason.to_string(),
    }
}

async fn unmount(h: MountHandle) {
    let mp = h.mountpoint().to_owned();
    match tokio::task::spawn_blocking(move || h.unmount()).await {
        Ok(Ok(())) => info!(mountpoint = %mp.display(), "layer unmounted"),
        Ok(Err(e)) => warn!(mountpoint = %mp.display(), error = %e, "unmount"),
        Err(e) => warn!(mountpoint = %mp.display(), error = %e, "unmount task"),
    }
}

impl LayerMounter for FuseLayers {
    fn mount_layer<'a>(
        &'a self,
        layer: &'a LayerRef,
        target: &'a Path,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let info = layer
                .mount_info
                .layers
                .iter()
                .find(|l| l.digest.as_str() == layer.digest)
                .ok_or_else(|| layer_err(layer, "not in the registry's /mount answer"))?;
            let handle = self
                .client
                .open_layer(&layer.image.repo, info)
                .await
                .map_err(|e| layer_err(layer, e))?;
            let (t, opts) = (target.to_owned(), self.opts.clone());
            let mounted = tokio::task::spawn_blocking(move || fs::mount_layer(&t, handle, &opts))
                .await
                .map_err(|e| layer_err(layer, e))?
                .map_err(|e| layer_err(layer, e))?;
            info!(layer = %layer.digest, mountpoint = %target.display(), "layer mounted");
            let old = {
                let mut m = self.mounts.lock().unwrap_or_else(|p| p.into_inner());
                m.insert(target.to_owned(), mounted)
            };
            if let Some(old) = old {
                unmount(old).await;
            }
            Ok(())
        })
    }

    fn mount_merged<'a>(
        &'a self,
        layers: &'a [LayerRef],
        target: &'a Path,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if self
                .mounts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(target)
            {
                return Ok(());
            }
            // Every layer's index at once: one round trip for the stack, not one per layer.
            let opens = layers.iter().map(|layer| async move {
                let info = layer
                    .mount_info
                    .layers
                    .iter()
                    .find(|l| l.digest.as_str() == layer.digest)
                    .ok_or_else(|| layer_err(layer, "not in the registry's /mount answer"))?;
                self.client
                    .open_layer(&layer.image.repo, info)
                    .await
                    .map_err(|e| layer_err(layer, e))
            });
            let handles = futures::future::try_join_all(opens).await?;
            let Some(top) = layers.last() else {
                return Ok(());
            };
            let (t, opts) = (target.to_owned(), self.opts.clone());
            let mounted = tokio::task::spawn_blocking(move || fs::mount_merged(&t, handles, &opts))
                .await
                .map_err(|e| layer_err(top, e))?
                .map_err(|e| layer_err(top, e))?;
            info!(layers = layers.len(), mountpoint = %target.display(), "merged layers mounted");
            self.mounts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(target.to_owned(), mounted);
            Ok(())
        })
    }

    fn unmount_layer<'a>(&'a self, target: &'a Path) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if let Some(h) = self.take(target) {
                unmount(h).await;
            }
            Ok(())
        })
    }

    fn is_mounted<'a>(&'a self, target: &'a Path) -> BoxFuture<'a, bool> {
        let m = self.mounts.lock().unwrap_or_else(|p| p.into_inner());
        let mounted = m.contains_key(target);
        Box::pin(async move { mounted })
    }

    fn stats(&self) -> BoxFuture<'_, Vec<(PathBuf, crate::fetch::CountersSnapshot)>> {
        let m = self.mounts.lock().unwrap_or_else(|p| p.into_inner());
        let stats = m
            .iter()
            .map(|(p, h)| (p.clone(), h.counters().snapshot()))
            .collect();
        Box::pin(async move { stats })
    }

    fn unmount_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let all: Vec<MountHandle> = {
                let mut m = self.mounts.lock().unwrap_or_else(|p| p.into_inner());
                m.drain().map(|(_, h)| h).collect()
            };
            for h in all {
                unmount(h).await;
            }
        })
    }
}
