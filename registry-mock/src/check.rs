//! `check-expansion`: what ACR's `check-expansion.sh` did, as a library call. Token (basic auth,
//! pull scope) → `HEAD /v2/REPO/manifests/TAG` for `Docker-Content-Digest` → poll
//! `/mount/v1/REPO/_manifests/DIGEST` until 200 (ready), 404 (not enabled) or the timeout.

use std::time::Duration;

use emulator::oci::{MT_DOCKER_MANIFEST, MT_OCI_MANIFEST};
use tokio::time::Instant;

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// `http://127.0.0.1:PORT`
    pub registry: String,
    pub repo: String,
    pub tag: String,
    pub user: Option<(String, String)>,
    pub timeout: Duration,
    pub interval: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// 200: every layer expanded.
    Ready { digest: String },
    /// 404: repository not teleport-enabled (or image never queued).
    NotEnabled { digest: String },
    /// Still 409 at the deadline.
    TimedOut { digest: String },
    /// 500 from `/mount`: a layer failed to expand.
    Failed { digest: String, message: String },
}

impl CheckOutcome {
    /// The process exit code the CLI uses.
    pub fn exit_code(&self) -> i32 {
        match self {
            CheckOutcome::Ready { .. } => 0,
            CheckOutcome::Failed { .. } => 1,
            CheckOutcome::NotEnabled { .. } => 2,
            CheckOutcome::TimedOut { .. } => 3,
        }
    }
}

fn client_err(e: reqwest::Error) -> Error {
    Error::Client(e.to_string())
}

/// Run the check. `progress` receives each line the script would print.
pub async fn check_expansion(
    opts: &CheckOptions,
    mut progress: impl FnMut(&str),
) -> Result<CheckOutcome> {
    let base = opts.registry.trim_end_matches('/');
    let host = base.split("://").nth(1).unwrap_or(base);
    let c = reqwest::Client::builder().build().map_err(client_err)?;
    let mut req = c.get(format!("{base}/oauth2/token")).query(&[
        ("service", host.to_string()),
        ("scope", format!("repository:{}:pull", opts.repo)),
    ]);
    if let Some((u, p)) = &opts.user {
        req = req.basic_auth(u, Some(p));
    }
    let resp = req.send().await.map_err(client_err)?;
    if !resp.status().is_success() {
        return Err(Error::Client(format!(
            "token request failed: HTTP {}",
            resp.status()
        )));
    }
    let v: serde_json::Value = resp.json().await.map_err(client_err)?;
    let token = v["access_token"]
        .as_str()
        .ok_or_else(|| Error::Client("token response without access_token".into()))?
        .to_string();

    let resp = c
        .head(format!("{base}/v2/{}/manifests/{}", opts.repo, opts.tag))
        .bearer_auth(&token)
        .header("accept", MT_DOCKER_MANIFEST)
        .header("accept", MT_OCI_MANIFEST)
        .send()
        .await
        .map_err(client_err)?;
    if !resp.status().is_success() {
        return Err(Error::Client(format!(
            "manifest {}:{}: HTTP {}",
            opts.repo,
            opts.tag,
            resp.status()
        )));
    }
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .filter(|d| d.starts_with("sha256:") && d.len() == 71)
        .ok_or_else(|| Error::Client("no Docker-Content-Digest header".into()))?
        .to_string();
    progress(&format!("digest: {digest}"));

    let deadline = Instant::now() + opts.timeout;
    loop {
        let resp = c
            .get(format!("{base}/mount/v1/{}/_manifests/{digest}", opts.repo))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(client_err)?;
        match resp.status().as_u16() {
            200 => {
                progress("layers ready");
                return Ok(CheckOutcome::Ready { digest });
            }
            404 => {
                progress("not enabled");
                return Ok(CheckOutcome::NotEnabled { digest });
            }
            409 => progress("expanding layers"),
            s => {
                let body = resp.text().await.unwrap_or_default();
                if s >= 500 {
                    progress(&format!("expansion failed: {body}"));
                    return Ok(CheckOutcome::Failed {
                        digest,
                        message: body,
                    });
                }
                return Err(Error::Client(format!("/mount answered HTTP {s}: {body}")));
            }
        }
        if Instant::now() + opts.interval > deadline {
            progress("timed out waiting for expansion");
            return Ok(CheckOutcome::TimedOut { digest });
        }
        tokio::time::sleep(opts.interval).await;
    }
}
