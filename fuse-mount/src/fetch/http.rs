//! HTTP side of the client: bearer tokens (401 → fetch/refresh), `/mount`, whole blobs and
//! Range requests with bounded retries.

use std::time::{Duration, Instant};

use emulator::Digest;
use reqwest::header::{HeaderValue, RANGE, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};

use super::layer::{LayerHandle, Source};
use super::{Client, Error, LayerInfo, MountInfo, MountStatus, Result};

/// The parts of a `WWW-Authenticate: Bearer realm=..,service=..` challenge we use.
#[derive(Debug, Default, PartialEq, Eq)]
struct Challenge {
    realm: Option<String>,
    service: Option<String>,
}

fn parse_challenge(h: Option<&HeaderValue>) -> Challenge {
    let mut c = Challenge::default();
    let Some(s) = h.and_then(|h| h.to_str().ok()) else {
        return c;
    };
    let Some(rest) = s
        .strip_prefix("Bearer ")
        .or_else(|| s.strip_prefix("bearer "))
    else {
        return c;
    };
    for part in rest.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "realm" => c.realm = Some(v),
            "service" => c.service = Some(v),
            _ => {}
        }
    }
    c
}

#[derive(serde::Deserialize)]
struct TokenBody {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

/// A retryable failure (network, 5xx, 429) vs. a final one.
enum Attempt<T> {
    Done(T),
    Retry(String),
}

impl Client {
    fn url(&self, path: &str) -> Result<reqwest::Url> {
        self.inner.base.join(path).map_err(|e| Error::Url {
            url: path.to_string(),
            reason: e.to_string(),
        })
    }

    async fn fetch_token(&self, repo: &str, actions: &str, ch: &Challenge) -> Result<String> {
        let auth_err = |reason: String| Error::Auth {
            repo: repo.to_string(),
            reason,
        };
        let realm = match &ch.realm {
            Some(r) => reqwest::Url::parse(r).map_err(|e| auth_err(format!("realm {r:?}: {e}")))?,
            None => self.url("/oauth2/token")?,
        };
        let service = ch
            .service
            .clone()
            .or_else(|| self.inner.base.host_str().map(str::to_string))
            .unwrap_or_default();
        let scope = format!("repository:{repo}:{actions}");
        let mut req = self
            .inner
            .http
            .get(realm.clone())
            .query(&[("service", service.as_str()), ("scope", scope.as_str())])
            .timeout(self.inner.opts.request_timeout);
        if let Some(c) = &self.inner.creds {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().await.map_err(|e| auth_err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(auth_err(format!("token endpoint said {}", resp.status())));
        }
        let body: TokenBody = resp.json().await.map_err(|e| auth_err(e.to_string()))?;
        body.access_token
            .or(body.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| auth_err("no token in response".into()))
    }

    /// Send with the cached token for `repo`; on 401 get a fresh token once and resend.
    async fn send_authed(
        &self,
        repo: &str,
        timeout: Duration,
        build: impl Fn() -> RequestBuilder,
    ) -> std::result::Result<Response, reqwest::Error> {
        self.send_scoped(repo, "pull", timeout, build).await
    }

    /// [`Client::send_authed`] with a token for `actions` (`pull`, or `pull,push` for writes).
    async fn send_scoped(
        &self,
        repo: &str,
        actions: &str,
        timeout: Duration,
        build: impl Fn() -> RequestBuilder,
    ) -> std::result::Result<Response, reqwest::Error> {
        // Pull tokens keep the plain repository key; other scopes get their own entry so a
        // push token never replaces (or is replaced by) the pull token reads use.
        let key = if actions == "pull" {
            repo.to_string()
        } else {
            format!("{repo}#{actions}")
        };
        let cached = self
            .inner
            .tokens
            .lock()
            .ok()
            .and_then(|t| t.get(&key).cloned());
        let with = |tok: Option<&String>| {
            let r = build().timeout(timeout);
            match tok {
                Some(t) => r.bearer_auth(t),
                None => r,
            }
        };
        let resp = with(cached.as_ref()).send().await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let ch = parse_challenge(resp.headers().get(WWW_AUTHENTICATE));
        match self.fetch_token(repo, actions, &ch).await {
            Ok(tok) => {
                if let Ok(mut t) = self.inner.tokens.lock() {
                    t.insert(key, tok.clone());
                }
                with(Some(&tok)).send().await
            }
            Err(e) => {
                tracing::warn!(repo, error = %e, "token refresh failed");
                Ok(resp)
            }
        }
    }

    pub(crate) async fn resolve_async(
        &self,
        repo: &str,
        manifest_digest: &Digest,
    ) -> Result<MountStatus> {
        let url = self.url(&format!("/mount/v1/{repo}/_manifests/{manifest_digest}"))?;
        let timeout = self.inner.opts.request_timeout;
        let resp = self
            .send_authed(repo, timeout, || self.inner.http.get(url.clone()))
            .await
            .map_err(|source| Error::Http {
                url: url.to_string(),
                source,
            })?;
        match resp.status() {
            StatusCode::OK => {
                let bytes = resp.bytes().await.map_err(|source| Error::Http {
                    url: url.to_string(),
                    source,
                })?;
                let info: MountInfo =
                    serde_json::from_slice(&bytes).map_err(|source| Error::MountJson {
                        url: url.to_string(),
                        source,
                    })?;
                Ok(MountStatus::Ready(info))
            }
            StatusCode::CONFLICT => Ok(MountStatus::Expanding),
            StatusCode::NOT_FOUND => Ok(MountStatus::NotEnabled),
            s => Err(Error::Status {
                url: url.to_string(),
                status: s.as_u16(),
            }),
        }
    }

    pub(crate) async fn open_layer_async(
        &self,
        repo: &str,
        layer: &LayerInfo,
    ) -> Result<LayerHandle> {
        let want = &layer.index.digest;
        let bytes = match self.inner.cache.get_index(want) {
            Some(b) => b,
            None => {
                let deadline = Instant::now() + self.inner.opts.read_deadline;
                let b = self
                    .get_range(repo, &layer.index.url, None, deadline)
                    .await?;
                let got = Digest::sha256_of(&b);
                if got != *want {
                    return Err(Error::DigestMismatch {
                        expected: want.clone(),
                        actual: got,
                    });
                }
                self.inner.cache.put_index(want, &b)?;
                b
            }
        };
        let index = emulator::Index::decode(&bytes).map_err(|source| Error::Index {
            layer: layer.digest.to_string(),
            source,
        })?;
        let mismatch = |reason: String| Error::IndexMismatch {
            layer: layer.digest.to_string(),
            reason,
        };
        if index.data_size != layer.data.size {
            return Err(mismatch(format!(
                "data size {} vs {}",
                index.data_size, layer.data.size
            )));
        }
        if index.data_digest != layer.data.digest {
            return Err(mismatch(format!(
                "data digest {} vs {}",
                index.data_digest, layer.data.digest
            )));
        }
        Ok(LayerHandle::new(
            self.clone(),
            index,
            Source::Remote {
                repo: repo.to_string(),
                url: layer.data.url.clone(),
                layer: layer.digest.clone(),
            },
        ))
    }

    fn profile_url(&self, repo: &str, layer: &Digest) -> Result<reqwest::Url> {
        self.url(&format!("/mount/v1/{repo}/_profiles/{layer}"))
    }

    /// The learned start profile of `layer` (`None`: the registry has none).
    pub(crate) async fn get_profile(
        &self,
        repo: &str,
        layer: &Digest,
    ) -> Result<Option<Vec<(u64, u64)>>> {
        let url = self.profile_url(repo, layer)?;
        let http_err = |source| Error::Http {
            url: url.to_string(),
            source,
        };
        let resp = self
            .send_authed(repo, self.inner.opts.request_timeout, || {
                self.inner.http.get(url.clone())
            })
            .await
            .map_err(http_err)?;
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
        let bytes = resp.bytes().await.map_err(http_err)?;
        // The node knows the data size only later (replay skips ranges outside the index).
        let doc =
            emulator::profile::Profile::decode(&bytes, u64::MAX).map_err(|e| Error::Profile {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Some(doc.ranges))
    }

    /// Upload a recorded start profile of `layer` (needs push rights on `repo`).
    pub(crate) async fn put_profile(
        &self,
        repo: &str,
        layer: &Digest,
        ranges: Vec<(u64, u64)>,
    ) -> Result<()> {
        let url = self.profile_url(repo, layer)?;
        let body = emulator::profile::Profile {
            schema_version: emulator::profile::PROFILE_SCHEMA_VERSION,
            ranges,
        }
        .encode();
        let resp = self
            .send_scoped(repo, "pull,push", self.inner.opts.request_timeout, || {
                self.inner
                    .http
                    .put(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await
            .map_err(|source| Error::Http {
                url: url.to_string(),
                source,
            })?;
        // 201: stored; 200: the registry already had one and kept it (first writer wins).
        match resp.status() {
            StatusCode::OK | StatusCode::CREATED => Ok(()),
            s => Err(Error::Status {
                url: url.to_string(),
                status: s.as_u16(),
            }),
        }
    }

    /// GET `path` (whole, or `range` = inclusive byte range), retrying network errors, 5xx and
    /// 429 with exponential backoff until `deadline` or `max_attempts`.
    pub(crate) async fn get_range(
        &self,
        repo: &str,
        path: &str,
        range: Option<(u64, u64)>,
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
            match self.attempt(repo, &url, range, timeout).await? {
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
        range: Option<(u64, u64)>,
        timeout: Duration,
    ) -> Result<Attempt<Vec<u8>>> {
        let build = || {
            let r = self.inner.http.get(url.clone());
            match range {
                Some((a, b)) => r.header(RANGE, format!("bytes={a}-{b}")),
                None => r,
            }
        };
        let resp = match self.send_authed(repo, timeout, build).await {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Retry(e.to_string())),
        };
        let status = resp.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Ok(Attempt::Retry(format!("status {status}")));
        }
        let partial = status == StatusCode::PARTIAL_CONTENT;
        if !(status == StatusCode::OK || partial) {
            return Err(Error::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        if let (Some((a, b)), false) = (range, partial) {
            // A 200 to a Range request is only usable when it is exactly the range asked for
            // (the whole blob); never buffer a whole large blob to cut a chunk out of it.
            let want = b.saturating_sub(a).saturating_add(1);
            if a != 0 || resp.content_length() != Some(want) {
                return Err(Error::Status {
                    url: url.to_string(),
                    status: status.as_u16(),
                });
            }
        }
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Ok(Attempt::Retry(e.to_string())),
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
        // Usually reuses the buffer instead of copying.
        Ok(Attempt::Done(Vec::from(body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server answering every request with `status`; counts requests.
    fn fake_server(status: &'static str) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
        use std::io::{BufRead, BufReader, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let n = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let count = n.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if line == "\r\n" {
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                        if s.write_all(resp.as_bytes()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        (url, n)
    }

    #[test]
    fn server_errors_are_retried_a_bounded_number_of_times() {
        let (url, n) = fake_server("503 Service Unavailable");
        let dir = tempfile::tempdir().unwrap();
        let opts = super::super::ClientOptions {
            max_attempts: 3,
            retry_backoff: Duration::from_millis(1),
            ..Default::default()
        };
        let c = Client::new(&url, None, dir.path(), opts).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let r = c.block_on(c.get_range("r", "/x", Some((0, 9)), deadline));
        assert!(matches!(r, Err(Error::GaveUp { attempts: 3, .. })), "{r:?}");
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 3);
        // Not retryable: a 404 fails at once.
        let (url, n) = fake_server("404 Not Found");
        let c = Client::new(&url, None, dir.path(), Default::default()).unwrap();
        let r = c.block_on(c.get_range("r", "/x", Some((0, 9)), deadline));
        assert!(matches!(r, Err(Error::Status { status: 404, .. })), "{r:?}");
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A 200 with the whole blob to a Range request is refused, not buffered.
        let (url, _) = fake_server("200 OK");
        let c = Client::new(&url, None, dir.path(), Default::default()).unwrap();
        let r = c.block_on(c.get_range("r", "/x", Some((5, 9)), deadline));
        assert!(matches!(r, Err(Error::Status { status: 200, .. })), "{r:?}");
    }

    #[test]
    fn challenge_parses_realm_and_service() {
        let h = HeaderValue::from_static(
            r#"Bearer realm="http://127.0.0.1:1/oauth2/token",service="reg",scope="repository:a:pull""#,
        );
        let c = parse_challenge(Some(&h));
        assert_eq!(c.realm.as_deref(), Some("http://127.0.0.1:1/oauth2/token"));
        assert_eq!(c.service.as_deref(), Some("reg"));
        assert_eq!(parse_challenge(None), Challenge::default());
    }
}
