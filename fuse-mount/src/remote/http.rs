//! HTTP side of the remote decision: ACR-style token + `/mount/v1/{repo}/_manifests/{digest}`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;
use tracing::debug;

use crate::fetch::{read_capped, CappedError, MountInfo, MOUNT_BODY_MAX};

use super::{Decision, ImageRef, LayerRef, RemoteError, RemoteResolver, Result};

#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

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
    client: reqwest::Client,
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

#[derive(Deserialize)]
struct TokenResponse {
    /// ACR/OAuth2 name; Docker token servers send `token` (often both).
    access_token: Option<String>,
    token: Option<String>,
}

impl HttpResolver {
    pub fn new(cfg: HttpResolverConfig) -> Result<Self> {
        let client = crate::config::client_builder()
            .timeout(cfg.request_timeout)
            .build()
            .map_err(|source| RemoteError::Http {
                url: cfg.registry.clone(),
                source,
            })?;
        Ok(HttpResolver {
            cfg,
            client,
            chains: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The registry host[:port] this resolver talks to (images from elsewhere stay local).
    pub fn registry_host(&self) -> &str {
        let r = self.cfg.registry.as_str();
        let r = r.split_once("://").map_or(r, |(_, rest)| rest);
        r.trim_end_matches('/')
    }

    async fn token(&self, repo: &str) -> Result<Option<String>> {
        let Some(c) = &self.cfg.credentials else {
            return Ok(None);
        };
        let url = format!("{}/oauth2/token", self.cfg.registry.trim_end_matches('/'));
        let http = |source| RemoteError::Http {
            url: url.clone(),
            source,
        };
        let resp = self
            .client
            .get(&url)
            .query(&[
                ("service", self.registry_host()),
                ("scope", &format!("repository:{repo}:pull")),
            ])
            .basic_auth(&c.user, Some(&c.password))
            .send()
            .await
            .map_err(http)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            crate::config::AUTH_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if !resp.status().is_success() {
            return Err(RemoteError::Status {
                url,
                status: resp.status().as_u16(),
            });
        }
        let t: TokenResponse = read_json(resp, 256 << 10, &url).await?;
        match t.access_token.or(t.token) {
            Some(t) => Ok(Some(t)),
            None => Err(RemoteError::Status { url, status: 200 }),
        }
    }

    /// GET `path` of the registry with `token`, at most `max` bytes, whose sha256 must be
    /// `digest`.
    async fn get_verified(
        &self,
        path: &str,
        token: Option<&str>,
        accept: &str,
        digest: &str,
        max: u64,
    ) -> std::result::Result<Vec<u8>, String> {
        use sha2::Digest as _;
        let url = format!("{}{path}", self.cfg.registry.trim_end_matches('/'));
        let mut req = self
            .client
            .get(&url)
            .header(reqwest::header::ACCEPT, accept);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("{url}: status {}", resp.status()));
        }
        let bytes = read_capped(resp, max, &url).await.map_err(|e| match e {
            CappedError::Http(e) => format!("{url}: {e}"),
            CappedError::TooLarge(e) => e.to_string(),
        })?;
        let got = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        if got != digest {
            return Err(format!("{url}: content is {got}, not {digest}"));
        }
        Ok(bytes)
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
        let token = self.token(&image.repo).await.map_err(|e| e.to_string())?;
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
        let m = self
            .get_verified(
                &format!("/v2/{}/manifests/{}", image.repo, image.manifest),
                token.as_deref(),
                accept,
                &image.manifest,
                MANIFEST_MAX,
            )
            .await?;
        let m: emulator::oci::Manifest =
            serde_json::from_slice(&m).map_err(|e| format!("manifest: {e}"))?;
        if m.config.size > CONFIG_MAX {
            return Err(format!("config of {} bytes", m.config.size));
        }
        let c = self
            .get_verified(
                &format!("/v2/{}/blobs/{}", image.repo, m.config.digest),
                token.as_deref(),
                "*/*",
                m.config.digest.as_str(),
                m.config.size,
            )
            .await?;
        let c: emulator::oci::ImageConfig =
            serde_json::from_slice(&c).map_err(|e| format!("config: {e}"))?;
        if c.rootfs.diff_ids.len() != m.layers.len() {
            return Err(format!(
                "config lists {} diff IDs for {} layers",
                c.rootfs.diff_ids.len(),
                m.layers.len()
            ));
        }
        let diff_ids: Vec<String> = c.rootfs.diff_ids.iter().map(|d| d.to_string()).collect();
        let chain = Arc::new(ImageChain {
            layers: m.layers.iter().map(|d| d.digest.to_string()).collect(),
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

    pub async fn check(&self, image: &ImageRef) -> Result<Decision> {
        if image.host != self.registry_host() {
            debug!(host = %image.host, "image not from the teleport registry");
            return Ok(Decision::NotEnabled);
        }
        let token = self.token(&image.repo).await?;
        let url = format!(
            "{}/mount/v1/{}/_manifests/{}",
            self.cfg.registry.trim_end_matches('/'),
            image.repo,
            image.manifest
        );
        let deadline = tokio::time::Instant::now() + self.cfg.expansion_wait;
        loop {
            let http = |source| RemoteError::Http {
                url: url.clone(),
                source,
            };
            let mut req = self.client.get(&url);
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(http)?;
            match resp.status() {
                StatusCode::OK => {
                    let body: MountInfo = read_json(resp, MOUNT_BODY_MAX, &url).await?;
                    return Ok(Decision::Remote(Arc::new(body)));
                }
                StatusCode::NOT_FOUND => return Ok(Decision::NotEnabled),
                StatusCode::CONFLICT => {
                    if tokio::time::Instant::now() + self.cfg.poll_interval > deadline {
                        return Ok(Decision::Expanding);
                    }
                    // Polling the registry (as ACR's check-expansion.sh does), not test sync.
                    tokio::time::sleep(self.cfg.poll_interval).await;
                }
                s => {
                    return Err(RemoteError::Status {
                        url,
                        status: s.as_u16(),
                    })
                }
            }
        }
    }
}

/// A JSON body of at most `max` bytes (a hostile registry cannot make the node buffer more).
async fn read_json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    max: u64,
    url: &str,
) -> Result<T> {
    let bytes = read_capped(resp, max, url).await.map_err(|e| match e {
        CappedError::Http(source) => RemoteError::Http {
            url: url.to_owned(),
            source,
        },
        CappedError::TooLarge(e) => RemoteError::Body {
            url: url.to_owned(),
            reason: e.to_string(),
        },
    })?;
    serde_json::from_slice(&bytes).map_err(|e| RemoteError::Body {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

impl RemoteResolver for HttpResolver {
    fn resolve<'a>(&'a self, image: &'a ImageRef) -> BoxFuture<'a, Result<Decision>> {
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
