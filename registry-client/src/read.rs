//! Reads: `/mount` (one answer, or polled until final), tag → digest, manifests and blobs by
//! digest (verified), ranged and whole reads with bounded retries, start profiles.

use std::time::{Duration, Instant};

use emulator::mount::{MountStatus, MOUNT_BODY_MAX};
use emulator::Digest;
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Response, StatusCode};

use crate::{Error, RegistryClient, Result};

/// Largest start profile accepted (`emulator::profile::MAX_RANGES` ranges fit easily).
pub const PROFILE_BODY_MAX: u64 = 8 << 20;
/// Largest error body kept (a 500's reason).
const ERROR_BODY_MAX: u64 = 64 << 10;

/// The manifest media types a tag lookup accepts.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// Reads a response body of at most `max` bytes: a larger one (by `Content-Length` or while
/// streaming) is refused without buffering it.
pub(crate) async fn read_capped(
    mut resp: Response,
    max: u64,
    url: &str,
) -> std::result::Result<Vec<u8>, CappedError> {
    let too_large = || {
        CappedError::TooLarge(Error::TooLarge {
            url: url.to_string(),
            max,
        })
    };
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(
        usize::try_from(resp.content_length().unwrap_or(0).min(max)).unwrap_or(0),
    );
    while let Some(chunk) = resp.chunk().await.map_err(CappedError::Http)? {
        if out.len() as u64 + chunk.len() as u64 > max {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Why [`read_capped`] failed: the transfer (retryable) or the size (final).
#[derive(Debug)]
pub(crate) enum CappedError {
    Http(reqwest::Error),
    TooLarge(Error),
}

impl CappedError {
    pub(crate) fn into_error(self, url: &str) -> Error {
        match self {
            CappedError::Http(source) => Error::Http {
                url: url.to_string(),
                source,
            },
            CappedError::TooLarge(e) => e,
        }
    }
}

/// Whether a `Content-Range: bytes a-b/total` header answers exactly `a..=b`.
fn content_range_is(h: Option<&HeaderValue>, (a, b): (u64, u64)) -> bool {
    let Some(v) = h.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some((span, _total)) = v.strip_prefix("bytes ").and_then(|r| r.split_once('/')) else {
        return false;
    };
    span.split_once('-')
        .and_then(|(x, y)| Some((x.trim().parse::<u64>().ok()?, y.trim().parse::<u64>().ok()?)))
        == Some((a, b))
}

/// A retryable failure (network, 5xx, 429) vs. a final one.
enum Attempt<T> {
    Done(T),
    Retry(String),
}

impl RegistryClient {
    /// Reads a body of at most `max` bytes.
    pub(crate) async fn body(
        &self,
        resp: Response,
        max: u64,
        url: &reqwest::Url,
    ) -> Result<Vec<u8>> {
        read_capped(resp, max, url.as_str())
            .await
            .map_err(|e| e.into_error(url.as_str()))
    }

    /// `GET /mount/v1/{repo}/_manifests/{digest}`: the registry's one answer about an image.
    pub async fn mount_status(&self, repo: &str, manifest: &Digest) -> Result<MountStatus> {
        let url = self.url(&format!("/mount/v1/{repo}/_manifests/{manifest}"))?;
        let resp = self
            .send(repo, "pull", &url, || Ok(self.inner.http.get(url.clone())))
            .await?;
        let status = resp.status().as_u16();
        let body = match status {
            200 => self.body(resp, MOUNT_BODY_MAX, &url).await?,
            500 => self.body(resp, ERROR_BODY_MAX, &url).await?,
            _ => Vec::new(),
        };
        MountStatus::from_answer(status, &body).map_err(|source| Error::Mount {
            url: url.to_string(),
            source,
        })
    }

    /// [`RegistryClient::mount_status`] every `interval` while it answers 409, until `timeout`
    /// (then [`MountStatus::Expanding`]).
    pub async fn wait_for_expansion(
        &self,
        repo: &str,
        manifest: &Digest,
        interval: Duration,
        timeout: Duration,
    ) -> Result<MountStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.mount_status(repo, manifest).await?;
            if s.is_final() || tokio::time::Instant::now() + interval > deadline {
                return Ok(s);
            }
            tracing::debug!(repo, %manifest, "expanding layers");
            // Polling the registry, as ACR's check-expansion.sh did.
            tokio::time::sleep(interval).await;
        }
    }

    /// `HEAD /v2/{repo}/manifests/{tag}`: the tag's `Docker-Content-Digest`.
    pub async fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Digest> {
        let url = self.url(&format!("/v2/{repo}/manifests/{tag}"))?;
        let resp = self
            .send(repo, "pull", &url, || {
                Ok(self
                    .inner
                    .http
                    .head(url.clone())
                    .header(ACCEPT, MANIFEST_ACCEPT))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(Error::Status {
                url: url.to_string(),
                status: resp.status().as_u16(),
            });
        }
        resp.headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|d| d.parse::<Digest>().ok())
            .ok_or_else(|| Error::Body {
                url: url.to_string(),
                reason: "no valid Docker-Content-Digest header".into(),
            })
    }

    /// ACR's `check-expansion.sh`: tag → digest → poll `/mount` until a final answer or
    /// `timeout`. `progress` gets each line the script printed.
    pub async fn check_expansion(
        &self,
        repo: &str,
        tag: &str,
        interval: Duration,
        timeout: Duration,
        mut progress: impl FnMut(&str),
    ) -> Result<(Digest, MountStatus)> {
        let digest = self.resolve_tag(repo, tag).await?;
        progress(&format!("digest: {digest}"));
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.mount_status(repo, &digest).await?;
            progress(&s.to_string());
            if s.is_final() {
                return Ok((digest, s));
            }
            if tokio::time::Instant::now() + interval > deadline {
                progress("timed out waiting for expansion");
                return Ok((digest, s));
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// `GET path` (a manifest or blob named by `digest`), at most `max` bytes, whose sha256 must
    /// be `digest`. One attempt.
    pub async fn get_verified(
        &self,
        repo: &str,
        path: &str,
        accept: &str,
        digest: &Digest,
        max: u64,
    ) -> Result<Vec<u8>> {
        let url = self.url(path)?;
        let resp = self
            .send(repo, "pull", &url, || {
                Ok(self.inner.http.get(url.clone()).header(ACCEPT, accept))
            })
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(Error::Status {
                url: url.to_string(),
                status: resp.status().as_u16(),
            });
        }
        let bytes = self.body(resp, max, &url).await?;
        let got = Digest::sha256_of(&bytes);
        if got != *digest {
            return Err(Error::DigestMismatch {
                url: url.to_string(),
                expected: digest.clone(),
                actual: got,
            });
        }
        Ok(bytes)
    }

    /// The image manifest `repo@digest`, verified, at most `max` bytes.
    pub async fn get_manifest(&self, repo: &str, digest: &Digest, max: u64) -> Result<Vec<u8>> {
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
        self.get_verified(
            repo,
            &format!("/v2/{repo}/manifests/{digest}"),
            accept,
            digest,
            max,
        )
        .await
    }

    /// The blob `repo@digest`, verified, at most `max` bytes.
    pub async fn get_blob(&self, repo: &str, digest: &Digest, max: u64) -> Result<Vec<u8>> {
        self.get_verified(
            repo,
            &format!("/v2/{repo}/blobs/{digest}"),
            "*/*",
            digest,
            max,
        )
        .await
    }

    fn profile_url(&self, repo: &str, layer: &Digest) -> Result<reqwest::Url> {
        self.url(&format!("/mount/v1/{repo}/_profiles/{layer}"))
    }

    /// The learned start profile of `layer` (`None`: the registry has none).
    pub async fn get_profile(
        &self,
        repo: &str,
        layer: &Digest,
    ) -> Result<Option<emulator::profile::Profile>> {
        let url = self.profile_url(repo, layer)?;
        let resp = self
            .send(repo, "pull", &url, || Ok(self.inner.http.get(url.clone())))
            .await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            s => {
                return Err(Error::Status {
                    url: url.to_string(),
                    status: s.as_u16(),
                })
            }
        }
        let bytes = self.body(resp, PROFILE_BODY_MAX, &url).await?;
        // The node knows the data size only later (replay skips ranges outside the index).
        let doc =
            emulator::profile::Profile::decode(&bytes, u64::MAX).map_err(|e| Error::Profile {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Some(doc))
    }

    /// Upload a start profile of `layer` (needs push rights on `repo`). 201: stored; 200: the
    /// registry already had one and kept it (first writer wins).
    pub async fn put_profile(
        &self,
        repo: &str,
        layer: &Digest,
        profile: &emulator::profile::Profile,
    ) -> Result<()> {
        let url = self.profile_url(repo, layer)?;
        let body = profile.encode();
        let resp = self
            .send(repo, "pull,push", &url, || {
                Ok(self
                    .inner
                    .http
                    .put(url.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone()))
            })
            .await?;
        match resp.status() {
            StatusCode::OK | StatusCode::CREATED => Ok(()),
            s => Err(Error::Status {
                url: url.to_string(),
                status: s.as_u16(),
            }),
        }
    }

    /// GET the whole of `path`, at most `max` bytes; see [`RegistryClient::get_range`].
    pub async fn get_whole(
        &self,
        repo: &str,
        path: &str,
        max: u64,
        deadline: Instant,
    ) -> Result<Vec<u8>> {
        self.get(repo, path, Err(max), deadline).await
    }

    /// GET the inclusive byte range `range` of `path`, retrying network errors, 5xx and 429
    /// with exponential backoff until `deadline` or `max_attempts`. The answer must be exactly
    /// that range (`Content-Range` and body length).
    pub async fn get_range(
        &self,
        repo: &str,
        path: &str,
        range: (u64, u64),
        deadline: Instant,
    ) -> Result<Vec<u8>> {
        self.get(repo, path, Ok(range), deadline).await
    }

    /// `what`: a byte range, or the whole body capped at a size.
    async fn get(
        &self,
        repo: &str,
        path: &str,
        what: std::result::Result<(u64, u64), u64>,
        deadline: Instant,
    ) -> Result<Vec<u8>> {
        let url = self.url(path)?;
        let opts = &self.inner.opts;
        let mut backoff = opts.retry_backoff;
        let mut attempts = 0u32;
        let mut last;
        loop {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                last = "deadline passed".to_string();
                break;
            }
            let timeout = remaining.min(opts.request_timeout);
            match self.attempt(repo, &url, what, timeout).await? {
                Attempt::Done(b) => return Ok(b),
                Attempt::Retry(why) => last = why,
            }
            tracing::debug!(url = %url, attempts, error = %last, "range fetch failed, retrying");
            if attempts >= opts.max_attempts {
                break;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining <= backoff {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
        Err(Error::GaveUp {
            url: url.to_string(),
            attempts,
            last,
        })
    }

    async fn attempt(
        &self,
        repo: &str,
        url: &reqwest::Url,
        what: std::result::Result<(u64, u64), u64>,
        timeout: Duration,
    ) -> Result<Attempt<Vec<u8>>> {
        let range = what.ok();
        let build = || {
            let r = self.inner.http.get(url.clone());
            Ok(match range {
                Some((a, b)) => r.header(RANGE, format!("bytes={a}-{b}")),
                None => r,
            })
        };
        let resp = match self.send_scoped(repo, "pull", timeout, build).await? {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Retry(e.to_string())),
        };
        let status = resp.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Ok(Attempt::Retry(format!("status {status}")));
        }
        let partial = status == StatusCode::PARTIAL_CONTENT;
        let refuse = || Error::Status {
            url: url.to_string(),
            status: status.as_u16(),
        };
        if !(status == StatusCode::OK || partial) {
            return Err(refuse());
        }
        match (range, partial) {
            // A 200 to a Range request is only usable when it is exactly the range asked for
            // (the whole blob); never buffer a whole large blob to cut a chunk out of it.
            (Some((a, b)), false) => {
                let want = b.saturating_sub(a).saturating_add(1);
                if a != 0 || resp.content_length() != Some(want) {
                    return Err(refuse());
                }
            }
            (Some((a, b)), true) => {
                if !content_range_is(resp.headers().get(CONTENT_RANGE), (a, b)) {
                    return Err(Error::BadContentRange {
                        url: url.to_string(),
                        got: resp
                            .headers()
                            .get(CONTENT_RANGE)
                            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
                        want: format!("{a}-{b}"),
                    });
                }
            }
            // A partial answer to a request for the whole body.
            (None, true) => return Err(refuse()),
            (None, false) => {}
        }
        let max = match what {
            Ok((a, b)) => b.saturating_sub(a).saturating_add(1),
            Err(max) => max,
        };
        let body = match read_capped(resp, max, url.as_str()).await {
            Ok(b) => b,
            Err(CappedError::Http(e)) => return Ok(Attempt::Retry(e.to_string())),
            Err(CappedError::TooLarge(e)) => return Err(e),
        };
        if let Some((a, b)) = range {
            let want = b.saturating_sub(a).saturating_add(1);
            if body.len() as u64 != want {
                return Ok(Attempt::Retry(
                    Error::ShortBody {
                        url: url.to_string(),
                        got: body.len() as u64,
                        want,
                    }
                    .to_string(),
                ));
            }
        }
        Ok(Attempt::Done(body))
    }
}
