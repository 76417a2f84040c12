//! HTTP side of the remote decision, through `registry_client`: `/mount/v1/{repo}/_manifests/{digest}`
//! and the image's manifest and config (verified by digest) for the layer check.

use std::sync::Arc;
use std::time::Duration;

use emulator::Digest;
use futures::future::BoxFuture;
use registry_client::{Credentials, MountStatus, RegistryClient};
use tracing::debug;

use super::{ImageRef, LayerRef, RemoteError, RemoteResolver, Result};

#[derive(Debug, Clone)]
pub struct HttpResolverConfig {
    /// Base URL, e.g. `http://127.0.0.1:5000`.
    pub registry: String,
    pub credentials: Option<Credentials>,
    /// Total time to wait while the registry answers 409 (expanding).
    pub expansion_wait: Duration,
    pub poll_interval: Duration,
    pub request_timeout: Duration,
}

pub struct HttpResolver {
    cfg: HttpResolverConfig,
    client: RegistryClient,
    /// `host[:port]` of the registry.
    host: String,
    /// Verified manifest layers and config diff IDs per image (host/repo@manifest).
    chains: std::sync::Mutex<std::collections::HashMap<String, Arc<ImageChain>>>,
}

/// What an image's manifest and config (both fetched by digest and checked) say its layers
/// are: the manifest's layer digests, the config's diff IDs and their chain IDs, bottom → top.
#[derive(Debug)]
struct ImageChain {
    layers: Vec<String>,
    diff_ids: Vec<String>,
    chain: Vec<String>,
}

/// Largest manifest / config accepted.
const MANIFEST_MAX: u64 = 4 << 20;
const CONFIG_MAX: u64 = 16 << 20;
/// Images whose chains are remembered (a pull asks once per layer).
const CHAINS_MAX: usize = 256;

impl HttpResolver {
    pub fn new(cfg: HttpResolverConfig) -> Result<Self> {
        let client = RegistryClient::new(
            &cfg.registry,
            cfg.credentials.clone(),
            registry_client::Options {
                request_timeout: cfg.request_timeout,
                extra_root: crate::config::extra_root(),
                ..Default::default()
            },
        )?;
        Ok(HttpResolver {
            host: client.host(),
            cfg,
            client,
            chains: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The registry host[:port] this resolver talks to (images from elsewhere stay local).
    pub fn registry_host(&self) -> &str {
        &self.host
    }

    /// The image's layers and diff IDs from its manifest and config, each checked against
    /// its digest.
    async fn image_chain(&self, image: &ImageRef) -> std::result::Result<Arc<ImageChain>, String> {
        let key = format!("{}/{}@{}", image.host, image.repo, image.manifest);
        if let Some(c) = self
            .chains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let manifest: Digest = image
            .manifest
            .parse()
            .map_err(|e| format!("manifest digest: {e}"))?;
        let m = self
            .client
            .get_manifest(&image.repo, &manifest, MANIFEST_MAX)
            .await
            .map_err(|e| e.to_string())?;
        let m: emulator::oci::ImageManifest =
            emulator::oci::from_json(&m).map_err(|e| format!("manifest: {e}"))?;
        let config_size = m.config().size();
        if config_size > CONFIG_MAX {
            return Err(format!("config of {config_size} bytes"));
        }
        let config_digest =
            emulator::oci::sha256(m.config()).map_err(|e| format!("config: {e}"))?;
        let c = self
            .client
            .get_blob(&image.repo, &config_digest, config_size)
            .await
            .map_err(|e| e.to_string())?;
        let c: emulator::oci::ImageConfiguration =
            emulator::oci::from_json(&c).map_err(|e| format!("config: {e}"))?;
        let diff_ids = emulator::oci::diff_ids(&c).map_err(|e| format!("config: {e}"))?;
        if diff_ids.len() != m.layers().len() {
            return Err(format!(
                "config lists {} diff IDs for {} layers",
                diff_ids.len(),
                m.layers().len()
            ));
        }
        let diff_ids: Vec<String> = diff_ids.iter().map(|d| d.to_string()).collect();
        let layers = m
            .layers()
            .iter()
            .map(|d| emulator::oci::sha256(d).map(|d| d.to_string()))
            .collect::<emulator::Result<Vec<String>>>()
            .map_err(|e| format!("manifest: {e}"))?;
        let chain = Arc::new(ImageChain {
            layers,
            chain: super::chain_ids(&diff_ids),
            diff_ids,
        });
        let mut chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        if chains.len() >= CHAINS_MAX {
            chains.clear();
        }
        chains.insert(key, chain.clone());
        Ok(chain)
    }

    /// See [`RemoteResolver::verify`].
    pub async fn verify_layer(
        &self,
        layer: &LayerRef,
        target: &str,
        parent: &str,
    ) -> std::result::Result<(), String> {
        let img = self.image_chain(&layer.image).await?;
        let mount_diff = layer.info().map_err(|e| e.to_string())?.diff_id.to_string();
        let Some(pos) = (0..img.layers.len()).find(|&i| {
            let parent_ok = match i {
                0 => parent.is_empty(),
                _ => parent == img.chain[i - 1],
            };
            img.layers[i] == layer.digest && img.chain[i] == target && parent_ok
        }) else {
            return Err(format!(
                "snapshot {target} on {parent:?} is not a chain ID the image's config gives layer {}",
                layer.digest
            ));
        };
        if img.diff_ids[pos] != mount_diff {
            return Err(format!(
                "the config claims diff ID {} for layer {}, the registry's expansion of it has {mount_diff}",
                img.diff_ids[pos], layer.digest
            ));
        }
        Ok(())
    }

    /// The registry's `/mount` answer for `image`, waiting up to `expansion_wait` while it
    /// says "expanding". Images of another registry are [`MountStatus::NotEnabled`].
    pub async fn check(&self, image: &ImageRef) -> Result<MountStatus> {
        if image.host != self.registry_host() {
            debug!(host = %image.host, "image not from the teleport registry");
            return Ok(MountStatus::NotEnabled);
        }
        let manifest: Digest = image
            .manifest
            .parse()
            .map_err(|_| RemoteError::BadReference(image.manifest.clone()))?;
        Ok(self
            .client
            .wait_for_expansion(
                &image.repo,
                &manifest,
                self.cfg.poll_interval,
                self.cfg.expansion_wait,
            )
            .await?)
    }
}

impl RemoteResolver for HttpResolver {
    fn resolve<'a>(&'a self, image: &'a ImageRef) -> BoxFuture<'a, Result<MountStatus>> {
        Box::pin(self.check(image))
    }

    fn verify<'a>(
        &'a self,
        layer: &'a LayerRef,
        target: &'a str,
        parent: &'a str,
    ) -> BoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(self.verify_layer(layer, target, parent))
    }
}
