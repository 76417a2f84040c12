//! `check-expansion`: what Teleport's check-expansion.sh did, over HTTP: resolve the tag's
//! digest with HEAD, then poll `GET /mount/v1/{repo}/_manifests/{digest}` until 200 (layers
//! ready), 404 (repository not teleport-enabled) or the deadline.

use crate::error::{Error, Result};
use std::time::{Duration, Instant};

/// The registry's answer about one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Expansion {
    /// 200: every layer expanded.
    Ready,
    /// 409 until the deadline.
    StillExpanding,
    /// 404: not teleport-enabled, or never expanded.
    NotEnabled,
}

impl std::fmt::Display for Expansion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Expansion::Ready => "layers ready",
            Expansion::StillExpanding => "expanding layers",
            Expansion::NotEnabled => "not enabled",
        })
    }
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// HEAD the manifest for `tag` and return its `Docker-Content-Digest`.
pub async fn resolve_digest(
    client: &reqwest::Client,
    registry_url: &str,
    repo: &str,
    tag: &str,
) -> Result<String> {
    let url = format!("{registry_url}/v2/{repo}/manifests/{tag}");
    let resp = client
        .head(&url)
        .header(reqwest::header::ACCEPT, MANIFEST_ACCEPT)
        .send()
        .await
        .map_err(|source| Error::Http {
            url: url.clone(),
            source,
        })?;
    if !resp.status().is_success() {
        return Err(Error::Registry {
            url,
            reason: format!("HEAD manifest: {}", resp.status()),
        });
    }
    resp.headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .filter(|d| d.starts_with("sha256:") && d.len() == 71)
        .map(str::to_string)
        .ok_or(Error::Registry {
            url,
            reason: "no valid Docker-Content-Digest header".into(),
        })
}

/// Poll `/mount` for `repo@digest` every `interval` until a final answer or `timeout`.
pub async fn wait_for_expansion(
    client: &reqwest::Client,
    registry_url: &str,
    repo: &str,
    digest: &str,
    interval: Duration,
    timeout: Duration,
) -> Result<Expansion> {
    let url = format!("{registry_url}/mount/v1/{repo}/_manifests/{digest}");
    let deadline = Instant::now() + timeout;
    loop {
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|source| Error::Http {
                url: url.clone(),
                source,
            })?;
        match resp.status().as_u16() {
            200 => return Ok(Expansion::Ready),
            404 => return Ok(Expansion::NotEnabled),
            409 => {
                tracing::debug!(repo, digest, "expanding layers");
            }
            other => {
                return Err(Error::Registry {
                    url,
                    reason: format!("GET /mount: unexpected status {other}"),
                })
            }
        }
        if Instant::now() >= deadline {
            return Ok(Expansion::StillExpanding);
        }
        tokio::time::sleep(interval).await; // poll interval; the loop re-checks the status
    }
}

/// Tag → digest → poll: the whole check-expansion flow.
pub async fn check_expansion(
    registry_url: &str,
    repo: &str,
    tag: &str,
    timeout: Duration,
) -> Result<(String, Expansion)> {
    let client = reqwest::Client::new();
    let digest = resolve_digest(&client, registry_url, repo, tag).await?;
    let state = wait_for_expansion(
        &client,
        registry_url,
        repo,
        &digest,
        Duration::from_millis(100),
        timeout,
    )
    .await?;
    Ok((digest, state))
}
