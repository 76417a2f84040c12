//! HTTP side of the remote decision: ACR-style token + `/mount/v1/{repo}/_manifests/{digest}`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;
use tracing::debug;

use crate::fetch::{read_capped, CappedError, MountInfo, MOUNT_BODY_MAX};

use super::{Decision, ImageRef, RemoteError, RemoteResolver, Result};

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
}

#[derive(Deserialize)]
struct TokenResponse {
    /// ACR/OAuth2 name; Docker token servers send `token` (often both).
    access_token: Option<String>,
    token: Option<String>,
}

impl HttpResolver {
    pub fn new(cfg: HttpResolverConfig) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .build()
            .map_err(|source| RemoteError::Http {
                url: cfg.registry.clone(),
                source,
            })?;
        Ok(HttpResolver { cfg, client })
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
}
