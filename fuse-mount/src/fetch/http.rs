//! HTTP side of the client: bearer tokens (401 → fetch/refresh), `/mount`, whole blobs and
//! Range requests with bounded retries.

use std::time::{Duration, Instant};

use emulator::Digest;
use reqwest::header::{HeaderValue, CONTENT_RANGE, RANGE, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};

use super::layer::{LayerHandle, Source};
use super::{Client, Error, LayerInfo, MountInfo, MountStatus, Result};

/// Largest `/mount` answer accepted (a few hundred layers take well under 1 MiB).
pub(crate) const MOUNT_BODY_MAX: u64 = 8 << 20;
/// Largest start profile accepted (`emulator::profile::MAX_RANGES` ranges fit easily).
const PROFILE_BODY_MAX: u64 = 8 << 20;
/// Largest token answer accepted.
const TOKEN_BODY_MAX: u64 = 256 << 10;

/// True when `a` and `b` have the same scheme, host and port.
pub(crate) fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.origin() == b.origin()
}

/// Reads a response body of at most `max` bytes: a larger one (by `Content-Length` or while
/// streaming) is refused without buffering it.
pub(crate) async fn read_capped(
    mut resp: Response,
    max: u64,
    url: &str,
) -> std::result::Result<Vec<u8>, CappedError> {
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(CappedError::TooLarge(Error::TooLarge {
            url: url.to_string(),
            max,
        }));
    }
    let mut out = Vec::with_capacity(
        usize::try_from(resp.content_length().unwrap_or(0).min(max)).unwrap_or(0),
    );
    while let Some(chunk) = resp.chunk().await.map_err(CappedError::Http)? {
        if out.len() as u64 + chunk.len() as u64 > max {
            return Err(CappedError::TooLarge(Error::TooLarge {
                url: url.to_string(),
                max,
            }));
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
    fn into_error(self, url: &str) -> Error {
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
    /// `path` (from a registry answer) against the base URL. Only same-origin URLs: an
    /// absolute or `//host` URL elsewhere would receive the bearer token.
    fn url(&self, path: &str) -> Result<reqwest::Url> {
        let url = self.inner.base.join(path).map_err(|e| Error::Url {
            url: path.to_string(),
            reason: e.to_string(),
        })?;
        if !same_origin(&url, &self.inner.base) {
            return Err(Error::Url {
                url: path.to_string(),
                reason: "not on the registry's origin".into(),
            });
        }
        Ok(url)
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
        // The password goes only to the registry's own origin: a challenge naming another
        // realm (plain http or not) gets an anonymous token request.
        let creds = self
            .inner
            .creds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match &creds {
            Some(c) if same_origin(&realm, &self.inner.base) => {
                req = req.basic_auth(&c.username, Some(&c.password));
            }
            Some(_) => {
                tracing::warn!(realm = %realm.origin().ascii_serialization(), "token realm is on another origin: not sending credentials there");
            }
            None => {}
        }
        let resp = req.send().await.map_err(|e| auth_err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(auth_err(format!("token endpoint said {}", resp.status())));
        }
        let bytes = read_capped(resp, TOKEN_BODY_MAX, realm.as_str())
            .await
            .map_err(|e| auth_err(e.into_error(realm.as_str()).to_string()))?;
        let body: TokenBody =
            serde_json::from_slice(&bytes).map_err(|e| auth_err(e.to_string()))?;
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
                let bytes = read_capped(resp, MOUNT_BODY_MAX, url.as_str())
                    .await
                    .map_err(|e| e.into_error(url.as_str()))?;
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
                // The index's size is known from /mount: nothing larger is read.
                let b = self
                    .get_whole(repo, &layer.index.url, layer.index.size, deadline)
                    .await?;
                let got = Digest::sha256_of(&b);
                if got != *want {
                    return Err(Error::DigestMismatch {
                        expected: want.clone(),
                        actual: got,
                    });
                }
                // A cache that cannot take it (disk full) costs a re-fetch later, not the mount.
                if let Err(e) = self.inner.cache.put_index(want, &b) {
                    tracing::warn!(index = %want, error = %e, "layer index not cached");
                }
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
        if index.diff_id != layer.diff_id {
            return Err(mismatch(format!(
                "diff ID {} vs {}",
                index.diff_id, layer.diff_id
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
        let bytes = read_capped(resp, PROFILE_BODY_MAX, url.as_str())
            .await
            .map_err(|e| e.into_error(url.as_str()))?;
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

    /// GET the whole of `path`, at most `max` bytes; see [`Client::get_range`].
    pub(crate) async fn get_whole(
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
    pub(crate) async fn get_range(
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
        if let (Some((a, b)), true) = (range, partial) {
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
        if partial && range.is_none() {
            // A partial answer to a request for the whole body.
            return Err(Error::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
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
        let r = c.block_on(c.get_range("r", "/x", (0, 9), deadline));
        assert!(matches!(r, Err(Error::GaveUp { attempts: 3, .. })), "{r:?}");
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 3);
        // Not retryable: a 404 fails at once.
        let (url, n) = fake_server("404 Not Found");
        let c = Client::new(&url, None, dir.path(), Default::default()).unwrap();
        let r = c.block_on(c.get_range("r", "/x", (0, 9), deadline));
        assert!(matches!(r, Err(Error::Status { status: 404, .. })), "{r:?}");
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A 200 with the whole blob to a Range request is refused, not buffered.
        let (url, _) = fake_server("200 OK");
        let c = Client::new(&url, None, dir.path(), Default::default()).unwrap();
        let r = c.block_on(c.get_range("r", "/x", (5, 9), deadline));
        assert!(matches!(r, Err(Error::Status { status: 200, .. })), "{r:?}");
    }

    use super::super::testserver::{partial, range_of, respond, serve};
    use super::super::BlobRef;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn layer_info(index_url: &str, index: &[u8]) -> LayerInfo {
        let d = Digest::sha256_of(b"x");
        LayerInfo {
            digest: d.clone(),
            media_type: emulator::oci::MT_OCI_LAYER_TAR.into(),
            size: 1,
            diff_id: d.clone(),
            uncompressed_size: 1,
            index: BlobRef {
                url: index_url.into(),
                size: index.len() as u64,
                digest: Digest::sha256_of(index),
            },
            data: BlobRef {
                url: "/data".into(),
                size: 1,
                digest: d,
            },
            chunk_size: 16 << 10,
            entries: 1,
        }
    }

    #[test]
    fn hostile_registry_answers_are_capped_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opts = || super::super::ClientOptions {
            max_attempts: 1,
            ..Default::default()
        };
        // Another origin that records whether anything (and which credentials) reached it.
        let elsewhere_hits = Arc::new(AtomicU32::new(0));
        let hits = elsewhere_hits.clone();
        let elsewhere = serve(move |req| {
            hits.fetch_add(1, Ordering::SeqCst);
            let basic = req
                .headers()
                .get("authorization")
                .is_some_and(|h| h.as_bytes().starts_with(b"Basic "));
            let body = if basic {
                r#"{"token":"stolen"}"#
            } else {
                r#"{"token":"anon"}"#
            };
            respond(200, &[], body.as_bytes().to_vec())
        });
        let other = elsewhere.url.clone();
        let data: Vec<u8> = (0..100u8).collect();
        let token_seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = token_seen.clone();
        let (data2, other2) = (data.clone(), other.clone());
        let reg = serve(move |req| {
            let (data, other) = (&data2, &other2);
            let path = req.uri().path().to_string();
            if let Some(a) = req.headers().get("authorization") {
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(a.as_bytes()).into_owned());
            }
            match path.as_str() {
                // /mount: a body past the cap.
                p if p.starts_with("/mount/v1/big/_manifests/") => {
                    respond(200, &[], vec![b' '; (MOUNT_BODY_MAX + 1) as usize])
                }
                // The index is longer than /mount said.
                "/index" => respond(200, &[], vec![7u8; 4096]),
                p if p.starts_with("/mount/v1/r/_profiles/") => {
                    respond(200, &[], vec![b' '; (PROFILE_BODY_MAX + 1) as usize])
                }
                // Content-Range of another range than asked for.
                "/wrong-range" => {
                    let (a, b) = range_of(req).unwrap_or((0, 0));
                    let mut r = partial(data, (a + 1, b + 1));
                    *r.status_mut() = hyper::StatusCode::PARTIAL_CONTENT;
                    r
                }
                "/data" => match range_of(req) {
                    Some(r) => partial(data, r),
                    None => respond(400, &[], Vec::new()),
                },
                // Asks for a token from a realm on another origin.
                "/authed" => respond(
                    401,
                    &[(
                        "www-authenticate",
                        format!(r#"Bearer realm="{other}/token",service="x""#),
                    )],
                    Vec::new(),
                ),
                _ => respond(404, &[], Vec::new()),
            }
        });
        let creds = Some(super::super::Credentials {
            username: "u".into(),
            password: "secret".into(),
        });
        let c = Client::new(&reg.url, creds, dir.path().join("c"), opts()).unwrap();
        let d = Digest::sha256_of(b"m");
        let r = c.resolve_blocking("big", &d);
        assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
        let r = c.open_layer_blocking("r", &layer_info("/index", &[7u8; 100]));
        assert!(matches!(r, Err(Error::TooLarge { max: 100, .. })), "{r:?}");
        let r = c.block_on(c.get_profile("r", &d));
        assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let r = c.block_on(c.get_range("r", "/wrong-range", (10, 19), deadline));
        assert!(matches!(r, Err(Error::BadContentRange { .. })), "{r:?}");
        let r = c.block_on(c.get_range("r", "/data", (10, 19), deadline));
        assert_eq!(r.unwrap(), data[10..20]);
        // URLs off the registry's origin are never requested (the bearer token would follow).
        for url in [format!("{other}/index"), format!("//{}/index", &other[7..])] {
            let r = c.open_layer_blocking("r", &layer_info(&url, &[7u8; 100]));
            assert!(matches!(r, Err(Error::Url { .. })), "{url}: {r:?}");
        }
        assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0);
        // A token realm on another origin never gets the password.
        let _ = c.block_on(c.get_range("r", "/authed", (0, 9), deadline));
        assert_eq!(
            elsewhere_hits.load(Ordering::SeqCst),
            1,
            "anonymous token request"
        );
        let seen = token_seen.lock().unwrap();
        assert!(seen.iter().all(|a| !a.contains("stolen")), "{seen:?}");
        assert!(seen.iter().any(|a| a == "Bearer anon"), "{seen:?}");
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
