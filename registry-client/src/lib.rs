//! registry-client: the one async client of the registry API, used by the node (`fuse-mount`),
//! the pusher (`fixtures`), the bench (`testbed`) and `registry-mock check-expansion`.
//!
//! - [`Credentials`]: a login; `Debug` never shows the password.
//! - The challenge flow: a request goes out with the cached `Authorization` of its scope
//!   (`repository:REPO:pull`, or `pull,push` for writes); on 401 the `WWW-Authenticate`
//!   challenge is answered (a bearer token from its realm, or basic auth) and the request is
//!   sent once more. Tokens are cached per scope.
//! - Hardening: every body read is capped; URLs a registry hands out (`/mount` blob URLs, upload
//!   `Location`s) are followed only on the registry's own origin, so the token never goes
//!   elsewhere; the password goes only to the registry's origin, and over plain http only to a
//!   loopback host. TLS is rustls with an optional extra root (`--ca-file`).
//! - Calls: [`RegistryClient::mount_status`] (the typed `/mount` answer of
//!   [`emulator::mount`]), [`RegistryClient::check_expansion`], ranged and whole reads with
//!   bounded retries, start profiles, manifests and blobs by digest, and push.

mod auth;
mod error;
mod push;
mod read;
#[cfg(feature = "test-server")]
pub mod testserver;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use emulator::mount::{MountInfo, MountStatus};
pub use error::{Error, Result};
pub use push::BlobUpload;
pub use read::{MANIFEST_ACCEPT, PROFILE_BODY_MAX};

/// Token-endpoint refusals (401/403) of every client of the process, for metrics.
pub static AUTH_FAILURES: AtomicU64 = AtomicU64::new(0);

/// A registry login. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Tunables of a [`RegistryClient`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Timeout of one request (ranged reads cap it by what is left of their deadline).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts per ranged / whole read (first try included).
    pub max_attempts: u32,
    /// First retry backoff; doubles per attempt.
    pub retry_backoff: Duration,
    /// Extra trusted root (`--ca-file`), on top of the built-in web roots.
    pub extra_root: Option<reqwest::Certificate>,
    /// Idle connections kept per host: the lazy-read path keeps many requests in flight.
    pub pool_max_idle_per_host: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            request_timeout: Duration::from_secs(4),
            connect_timeout: Duration::from_secs(2),
            max_attempts: 5,
            retry_backoff: Duration::from_millis(100),
            extra_root: None,
            pool_max_idle_per_host: 32,
        }
    }
}

/// A client of one registry (base URL). Cheap to clone; clones share connections and tokens.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    base: reqwest::Url,
    http: reqwest::Client,
    /// Replaceable while in use (password rotation).
    creds: RwLock<Option<Credentials>>,
    /// `Authorization` header value per scope (`REPO:ACTIONS`).
    auth: Mutex<HashMap<String, String>>,
    opts: Options,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client for `base` (`http://127.0.0.1:5000` or `https://…`).
    pub fn new(base: &str, creds: Option<Credentials>, opts: Options) -> Result<RegistryClient> {
        let url = reqwest::Url::parse(base).map_err(|e| Error::Url {
            url: base.to_string(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Error::Url {
                url: base.to_string(),
                reason: "must be an http:// or https:// URL with a host".into(),
            });
        }
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(opts.connect_timeout)
            // Below registry-mock's keep-alive close (its 30 s header-read timeout): a pooled
            // connection is dropped here before the server closes it under a request.
            .pool_idle_timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(opts.pool_max_idle_per_host)
            .tcp_nodelay(true);
        if let Some(c) = &opts.extra_root {
            b = b.add_root_certificate(c.clone());
        }
        let http = b.build().map_err(Error::Client)?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                base: url,
                http,
                creds: RwLock::new(creds),
                auth: Mutex::new(HashMap::new()),
                opts,
            }),
        })
    }

    /// The base URL.
    pub fn base(&self) -> &reqwest::Url {
        &self.inner.base
    }

    /// `host[:port]` of the base URL, as image references name it.
    pub fn host(&self) -> String {
        let u = &self.inner.base;
        match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => String::new(),
        }
    }

    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// New credentials for every later token request; tokens got with the old ones are dropped.
    pub fn set_credentials(&self, creds: Option<Credentials>) {
        *self.inner.creds.write().unwrap_or_else(|p| p.into_inner()) = creds;
        self.inner
            .auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// `path` (possibly from a registry answer) against the base URL. Only same-origin URLs:
    /// an absolute or `//host` URL elsewhere would receive the token.
    pub fn url(&self, path: &str) -> Result<reqwest::Url> {
        let url = self.inner.base.join(path).map_err(|e| Error::Url {
            url: path.to_string(),
            reason: e.to_string(),
        })?;
        if url.origin() != self.inner.base.origin() {
            return Err(Error::Url {
                url: path.to_string(),
                reason: "not on the registry's origin".into(),
            });
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_never_shows_the_password() {
        let c = Credentials::new("alice", "hunter2");
        let d = format!("{c:?}");
        assert!(d.contains("alice"), "{d}");
        assert!(!d.contains("hunter2"), "{d}");
        let client = RegistryClient::new("http://127.0.0.1:1", Some(c), Options::default());
        assert!(!format!("{client:?}").contains("hunter2"));
    }

    #[test]
    fn only_same_origin_urls() {
        let c = RegistryClient::new("http://127.0.0.1:5000", None, Options::default()).unwrap();
        assert_eq!(
            c.url("/v2/a/blobs/x").unwrap().as_str(),
            "http://127.0.0.1:5000/v2/a/blobs/x"
        );
        for bad in [
            "http://127.0.0.2:5000/x",
            "//evil.example/x",
            "https://127.0.0.1:5000/x",
            "http://127.0.0.1:5001/x",
        ] {
            assert!(matches!(c.url(bad), Err(Error::Url { .. })), "{bad}");
        }
        assert_eq!(c.host(), "127.0.0.1:5000");
        assert!(RegistryClient::new("ftp://h/", None, Options::default()).is_err());
    }
}
