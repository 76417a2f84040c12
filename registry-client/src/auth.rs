//! The challenge flow: send with the scope's cached `Authorization`; on 401 answer the
//! `WWW-Authenticate` challenge (bearer token from its realm, or basic) once and resend.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};

use crate::read::read_capped;
use crate::{Error, RegistryClient, Result, AUTH_FAILURES};

/// Largest token answer accepted.
const TOKEN_BODY_MAX: u64 = 256 << 10;

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// `Bearer` (true) or `Basic`.
    pub bearer: bool,
    pub realm: Option<String>,
    pub service: Option<String>,
}

/// `Bearer realm="…",service="…"` or `Basic realm="…"`; `None`: absent or another scheme.
pub(crate) fn parse_challenge(h: Option<&HeaderValue>) -> Option<Challenge> {
    let s = h.and_then(|h| h.to_str().ok())?.trim();
    let (scheme, params) = s.split_once(' ').unwrap_or((s, ""));
    let bearer = if scheme.eq_ignore_ascii_case("bearer") {
        true
    } else if scheme.eq_ignore_ascii_case("basic") {
        false
    } else {
        return None;
    };
    Some(Challenge {
        bearer,
        realm: param(params, "realm"),
        service: param(params, "service"),
    })
}

/// `key="value"` (or `key=value`) from a challenge's parameter list; commas inside quotes
/// (as in `scope="repository:a:pull,push"`) stay in the value.
pub(crate) fn param(params: &str, key: &str) -> Option<String> {
    let mut rest = params;
    while !rest.is_empty() {
        rest = rest.trim_start_matches([' ', ',']);
        let (k, after) = rest.split_once('=')?;
        let (v, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if k.trim().eq_ignore_ascii_case(key) {
            return Some(v.to_string());
        }
        rest = tail;
    }
    None
}

#[derive(serde::Deserialize)]
struct TokenBody {
    /// ACR/OAuth2 name; Docker token servers send `token` (often both).
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

/// Whether a host is a loopback address (plain http is tolerable there for a password).
fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

impl RegistryClient {
    /// Whether the password may be sent to `url`: the registry's own origin only, and over
    /// plain http only to a loopback host.
    pub(crate) fn may_send_password(&self, url: &reqwest::Url) -> bool {
        url.origin() == self.inner.base.origin() && (url.scheme() == "https" || is_loopback(url))
    }

    fn creds(&self) -> Option<crate::Credentials> {
        self.inner
            .creds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn basic_header(&self, url: &reqwest::Url) -> Option<String> {
        use base64::Engine as _;
        let c = self.creds()?;
        if !self.may_send_password(url) {
            tracing::warn!(url = %url.origin().ascii_serialization(), "not sending the registry password there (another origin, or plain http to a non-loopback host)");
            return None;
        }
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", c.username, c.password))
        ))
    }

    /// A bearer token for `scope` from `realm` (default: the registry's `/oauth2/token`).
    async fn fetch_token(&self, scope: &str, ch: &Challenge) -> Result<String> {
        let auth_err = |reason: String| Error::Auth {
            scope: scope.to_string(),
            reason,
        };
        let realm = match &ch.realm {
            Some(r) => reqwest::Url::parse(r).map_err(|e| auth_err(format!("realm {r:?}: {e}")))?,
            None => self.url("/oauth2/token")?,
        };
        let service = ch.service.clone().unwrap_or_else(|| self.host());
        let mut req = self
            .inner
            .http
            .get(realm.clone())
            .query(&[("service", service.as_str()), ("scope", scope)])
            .timeout(self.inner.opts.request_timeout);
        if let Some(b) = self.basic_header(&realm) {
            req = req.header(AUTHORIZATION, b);
        }
        let resp = req.send().await.map_err(|e| auth_err(e.to_string()))?;
        if matches!(resp.status().as_u16(), 401 | 403) {
            AUTH_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
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

    /// Tries the credentials once against the token endpoint (`GET /oauth2/token` with basic
    /// auth, no scope). `Ok(())`: accepted; a refusal is [`Error::Status`] 401/403 and counted in
    /// [`AUTH_FAILURES`].
    pub async fn login(&self) -> Result<()> {
        let url = self.url("/oauth2/token")?;
        let mut req = self
            .inner
            .http
            .get(url.clone())
            .query(&[("service", self.host())])
            .timeout(self.inner.opts.request_timeout);
        if let Some(b) = self.basic_header(&url) {
            req = req.header(AUTHORIZATION, b);
        }
        let resp = req.send().await.map_err(|source| Error::Http {
            url: url.to_string(),
            source,
        })?;
        let status = resp.status().as_u16();
        if matches!(status, 401 | 403) {
            AUTH_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        if !resp.status().is_success() {
            return Err(Error::Status {
                url: url.to_string(),
                status,
            });
        }
        Ok(())
    }

    /// Send with the cached authorization for `repository:{repo}:{actions}`; on 401 answer the
    /// challenge once and resend. A failed token request leaves the 401 to the caller.
    pub(crate) async fn send_scoped(
        &self,
        repo: &str,
        actions: &str,
        timeout: Duration,
        build: impl Fn() -> Result<RequestBuilder>,
    ) -> Result<std::result::Result<Response, reqwest::Error>> {
        let scope = format!("repository:{repo}:{actions}");
        let cached = self
            .inner
            .auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&scope)
            .cloned();
        let with = |h: Option<&String>| -> Result<RequestBuilder> {
            let r = build()?.timeout(timeout);
            Ok(match h {
                Some(h) => r.header(AUTHORIZATION, h.as_str()),
                None => r,
            })
        };
        let resp = match with(cached.as_ref())?.send().await {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(Ok(resp));
        }
        let header = match parse_challenge(resp.headers().get(WWW_AUTHENTICATE)) {
            Some(ch) if ch.bearer => match self.fetch_token(&scope, &ch).await {
                Ok(t) => format!("Bearer {t}"),
                Err(e) => {
                    tracing::warn!(%scope, error = %e, "token request failed");
                    return Ok(Ok(resp));
                }
            },
            Some(_) => match self.basic_header(resp.url()) {
                Some(b) => b,
                None => return Ok(Ok(resp)),
            },
            None => return Ok(Ok(resp)),
        };
        self.inner
            .auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(scope, header.clone());
        Ok(with(Some(&header))?.send().await)
    }

    /// [`RegistryClient::send_scoped`] with transport errors as [`Error::Http`].
    pub(crate) async fn send(
        &self,
        repo: &str,
        actions: &str,
        url: &reqwest::Url,
        build: impl Fn() -> Result<RequestBuilder>,
    ) -> Result<Response> {
        self.send_scoped(repo, actions, self.inner.opts.request_timeout, build)
            .await?
            .map_err(|source| Error::Http {
                url: url.to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let h = HeaderValue::from_static(
            r#"Bearer realm="http://127.0.0.1:1/oauth2/token",service="reg",scope="repository:a:pull,push""#,
        );
        let c = parse_challenge(Some(&h)).unwrap();
        assert!(c.bearer);
        assert_eq!(c.realm.as_deref(), Some("http://127.0.0.1:1/oauth2/token"));
        assert_eq!(c.service.as_deref(), Some("reg"));
        let s = h.to_str().unwrap().split_once(' ').unwrap().1;
        assert_eq!(param(s, "scope").as_deref(), Some("repository:a:pull,push"));
        assert_eq!(param("realm=x, service=y", "service").as_deref(), Some("y"));
        let b = parse_challenge(Some(&HeaderValue::from_static(r#"Basic realm="r""#))).unwrap();
        assert!(!b.bearer);
        assert_eq!(parse_challenge(None), None);
        assert_eq!(
            parse_challenge(Some(&HeaderValue::from_static("Negotiate x"))),
            None
        );
    }

    #[test]
    fn password_only_to_own_origin_and_not_over_plain_http_elsewhere() {
        let creds = Some(crate::Credentials::new("u", "pw"));
        let local = RegistryClient::new("http://127.0.0.1:5000", creds.clone(), Default::default())
            .unwrap();
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(local.may_send_password(&u("http://127.0.0.1:5000/oauth2/token")));
        assert!(!local.may_send_password(&u("http://127.0.0.1:5001/oauth2/token")));
        let remote =
            RegistryClient::new("http://reg.example:5000", creds.clone(), Default::default())
                .unwrap();
        assert!(!remote.may_send_password(&u("http://reg.example:5000/oauth2/token")));
        assert!(remote
            .basic_header(&u("http://reg.example:5000/x"))
            .is_none());
        let tls = RegistryClient::new("https://reg.example", creds, Default::default()).unwrap();
        assert!(tls.may_send_password(&u("https://reg.example/oauth2/token")));
        assert_eq!(
            tls.basic_header(&u("https://reg.example/x")).as_deref(),
            Some("Basic dTpwdw==")
        );
    }
}
