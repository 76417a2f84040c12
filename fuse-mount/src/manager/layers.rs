//! [`LayerMounter`] over the lazy FUSE filesystem (`crate::fs`): per-layer mode, one FUSE mount of
//! the layer in overlayfs form at the committed snapshot's `fs` dir, so containerd's overlay
//! stacks it like any unpacked layer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tracing::{debug, info, warn};

use crate::fetch::{Client, Counters, LayerHandle};
use crate::fs::{self, MountHandle, MountOptions};
use crate::remote::{LayerMounter, LayerRef, RemoteError, Result};

pub struct FuseLayers {
    client: Client,
    opts: MountOptions,
    mounts: Mutex<HashMap<PathBuf, MountHandle>>,
    /// Layers opened ahead by [`LayerMounter::warm`] (index read, profile replay started),
    /// taken by the mount that needs them.
    warmed: Arc<Mutex<HashMap<String, LayerHandle>>>,
    /// Fetch counters of warm-up work done before any mount exists.
    warm_counters: Arc<Counters>,
}

/// Warmed handles kept at most (an image pulled but never run must not pin memory forever).
const WARMED_MAX: usize = 1024;

impl FuseLayers {
    pub fn new(client: Client, opts: MountOptions) -> Self {
        FuseLayers {
            client,
            opts,
            mounts: Mutex::new(HashMap::new()),
            warmed: Arc::new(Mutex::new(HashMap::new())),
            warm_counters: Arc::new(Counters::default()),
        }
    }

    fn warmed_handle(&self, layer: &LayerRef) -> Option<LayerHandle> {
        let mut w = self.warmed.lock().unwrap_or_else(|p| p.into_inner());
        w.remove(&warm_key(layer))
    }

    /// The layer's handle: warmed ahead at pull, or opened now (index from cache or registry).
    async fn open(&self, layer: &LayerRef) -> Result<LayerHandle> {
        if let Some(h) = self.warmed_handle(layer) {
            return Ok(h);
        }
        self.client
            .open_layer(&layer.image.repo, layer.info()?)
            .await
            .map_err(|e| layer_err(layer, e))
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

    /// Unmounts every mount not in use; returns the mount points left because they are.
    pub async fn unmount_idle(&self) -> Vec<PathBuf> {
        let all: Vec<MountHandle> = {
            let mut m = self.mounts.lock().unwrap_or_else(|p| p.into_inner());
            m.drain().map(|(_, h)| h).collect()
        };
        let mut busy = Vec::new();
        let lowers = tokio::task::spawn_blocking(super::overlay_lowers)
            .await
            .unwrap_or_default();
        for h in all {
            let mp = h.mountpoint().to_owned();
            let stacked = lowers.contains(&mp);
            let res = if stacked {
                Ok(Err(h))
            } else {
                tokio::task::spawn_blocking(move || h.unmount_if_idle()).await
            };
            match res {
                Ok(Ok(())) => info!(mountpoint = %mp.display(), "layer unmounted"),
                Ok(Err(h)) => {
                    busy.push(mp.clone());
                    self.mounts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(mp, h);
                }
                Err(e) => warn!(mountpoint = %mp.display(), error = %e, "unmount task"),
            }
        }
        busy
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

/// Same repository and layer: the handle (index, data URL) is the same.
fn warm_key(layer: &LayerRef) -> String {
    format!("{}/{}@{}", layer.image.host, layer.image.repo, layer.digest)
}

impl LayerMounter for FuseLayers {
    fn warm(&self, layers: Vec<LayerRef>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for layer in layers {
            let (client, warmed) = (self.client.clone(), Arc::clone(&self.warmed));
            let counters = Arc::clone(&self.warm_counters);
            rt.spawn(async move {
                let key = warm_key(&layer);
                let Ok(info) = layer.info() else {
                    return;
                };
                match client.open_layer(&layer.image.repo, info).await {
                    Ok(h) => {
                        h.start_profile(&counters);
                        let mut w = warmed.lock().unwrap_or_else(|p| p.into_inner());
                        if w.len() >= WARMED_MAX {
                            w.clear();
                        }
                        w.insert(key, h);
                    }
                    // The mount will try again and report it.
                    Err(e) => debug!(layer = %layer.digest, error = %e, "warm-up"),
                }
            });
        }
    }

    fn mount_layer<'a>(
        &'a self,
        layer: &'a LayerRef,
        target: &'a Path,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let handle = self.open(layer).await?;
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
            let opens = layers.iter().map(|layer| self.open(layer));
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
        let mut stats: Vec<_> = m
            .iter()
            .map(|(p, h)| (p.clone(), h.counters().snapshot()))
            .collect();
        // Work done ahead of any mount (pull-time warm-up), under an empty path.
        stats.push((PathBuf::new(), self.warm_counters.snapshot()));
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
