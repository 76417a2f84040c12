//! Authentication and authorisation: basic auth against the configured users, the ACR-style
//! token endpoint, HMAC-signed bearer tokens carrying scopes, and the check of each request.
//!
//! Policy: with no users configured, auth is off (everything allowed, tokens granted as asked).
//! With users: a valid basic credential grants everything; a bearer token grants its scopes;
//! without credentials only pulls pass, and only when `anonymous_pull` is set (the catalog,
//! which lists every repository, always needs credentials). Passwords are compared in constant
//! time, and failed logins are rate-limited per client address and per user name
//! ([`FailLimiter`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::names::RepoName;

/// Token lifetime, seconds.
pub const TOKEN_TTL: u64 = 3600;

/// What a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// No credentials needed (metrics, token endpoint).
    Nothing,
    /// `/v2/` base check: any valid credential (or anonymous pull).
    Base,
    Catalog,
    Pull(RepoName),
    Push(RepoName),
    Delete(RepoName),
}

impl Need {
    fn scope(&self) -> Option<String> {
        match self {
            Need::Nothing | Need::Base => None,
            Need::Catalog => Some("registry:catalog:*".into()),
            Need::Pull(r) => Some(format!("repository:{r}:pull")),
            Need::Push(r) => Some(format!("repository:{r}:pull,push")),
            Need::Delete(r) => Some(format!("repository:{r}:delete")),
        }
    }
}

/// One granted access entry, as in the distribution token spec.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub access: Vec<Access>,
}

/// Parse `type:name:action,action` scopes (several may be space-separated).
pub fn parse_scopes(s: &str) -> Vec<Access> {
    s.split_whitespace()
        .filter_map(|one| {
            let (kind, rest) = one.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(Access {
                kind: kind.to_string(),
                name: name.to_string(),
                actions: actions
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

pub struct Auth {
    key: [u8; 32],
    users: Vec<(String, String)>,
    anonymous_pull: bool,
    fails: FailLimiter,
    /// `http` or `https`: how clients reach the token endpoint named in challenges.
    scheme: &'static str,
}

/// The outcome of authenticating the caller of a token request.
pub enum Caller {
    User(String),
    Anonymous,
}

impl Auth {
    pub fn new(users: Vec<(String, String)>, anonymous_pull: bool) -> Auth {
        Auth {
            key: rand::random(),
            users,
            anonymous_pull,
            fails: {
                let l = crate::Limits::default();
                FailLimiter::new(l.auth_fail_burst, l.auth_fail_refill)
            },
            scheme: "http",
        }
    }

    /// The scheme (`http` / `https`) of the realm URL in challenges.
    pub fn with_scheme(mut self, scheme: &'static str) -> Auth {
        self.scheme = scheme;
        self
    }

    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// Allow `burst` failed logins per client address and per user name, forgiving one every
    /// `refill`.
    pub fn with_fail_limit(mut self, burst: u32, refill: Duration) -> Auth {
        self.fails = FailLimiter::new(burst, refill);
        self
    }

    pub fn fails(&self) -> &FailLimiter {
        &self.fails
    }

    pub fn anonymous_pull(&self) -> bool {
        self.anonymous_pull
    }

    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// Constant time in the contents of the strings: every user is compared, and hashes
    /// are compared rather than the strings so their lengths do not show either.
    pub fn check_password(&self, user: &str, pass: &str) -> bool {
        let h = |s: &str| Sha256::digest(s.as_bytes());
        let (hu, hp) = (h(user), h(pass));
        let mut ok = subtle::Choice::from(0);
        for (u, p) in &self.users {
            ok |= h(u).ct_eq(&hu) & h(p).ct_eq(&hp);
        }
        ok.into()
    }

    /// `Authorization: Basic …` → (user, password) if well-formed.
    pub fn basic(header: &str) -> Option<(String, String)> {
        let b64 = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))?;
        let raw = STANDARD.decode(b64.trim()).ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }

    /// Issue a token for `sub` with the requested scopes, filtered by what the caller may have.
    pub fn issue(
        &self,
        caller: &Caller,
        requested: Vec<Access>,
        now: u64,
    ) -> (String, Vec<Access>) {
        let granted: Vec<Access> = requested
            .into_iter()
            .filter_map(|mut a| {
                if let Caller::Anonymous = caller {
                    if self.enabled() {
                        // Anonymous callers get pull on repositories, and only if allowed.
                        if !self.anonymous_pull || a.kind != "repository" {
                            return None;
                        }
                        a.actions.retain(|x| x == "pull");
                    }
                }
                (!a.actions.is_empty()).then_some(a)
            })
            .collect();
        let sub = match caller {
            Caller::User(u) => u.clone(),
            Caller::Anonymous => String::new(),
        };
        let claims = Claims {
            sub,
            exp: now.saturating_add(TOKEN_TTL),
            access: granted.clone(),
        };
        (self.sign(&claims), granted)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // invariant: HMAC accepts keys of any length.
        #[allow(clippy::expect_used)]
        Hmac::<Sha256>::new_from_slice(&self.key).expect("hmac key")
    }

    pub fn sign(&self, c: &Claims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(c).unwrap_or_default());
        let mut m = self.mac();
        m.update(payload.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    /// Verify signature and expiry.
    pub fn verify(&self, token: &str, now: u64) -> Option<Claims> {
        let (payload, sig) = token.trim().split_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let mut m = self.mac();
        m.update(payload.as_bytes());
        m.verify_slice(&sig).ok()?;
        let c: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (c.exp > now).then_some(c)
    }

    /// Decide whether a request with this `Authorization` header may do `need`.
    /// `realm_host` is the host clients use to reach us (for the challenge).
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        need: &Need,
        realm_host: &str,
        now: u64,
    ) -> Result<(), ApiError> {
        if !self.enabled() || *need == Need::Nothing {
            return Ok(());
        }
        let challenge = |error: Option<&str>| {
            let mut c = format!(
                "Bearer realm=\"{}://{realm_host}/oauth2/token\",service=\"{realm_host}\"",
                self.scheme
            );
            if let Some(s) = need.scope() {
                c.push_str(&format!(",scope=\"{s}\""));
            }
            if let Some(e) = error {
                c.push_str(&format!(",error=\"{e}\""));
            }
            c
        };
        let unauthorized = |message: &str, error: Option<&str>| ApiError::Unauthorized {
            challenge: challenge(error),
            message: message.to_string(),
        };
        let Some(h) = authorization else {
            // `/v2/` still challenges anonymous callers: clients (skopeo) decide from that ping
            // whether to authenticate at all, and a push after a 200 ping would go out bare.
            // The catalog lists every repository: never anonymous when auth is on.
            let anonymous_ok = self.anonymous_pull && matches!(need, Need::Pull(_));
            return if anonymous_ok {
                Ok(())
            } else {
                Err(unauthorized("authentication required", None))
            };
        };
        if let Some(tok) = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
        {
            let Some(c) = self.verify(tok, now) else {
                return Err(unauthorized(
                    "invalid or expired token",
                    Some("invalid_token"),
                ));
            };
            if covers(&c.access, need) || (self.anonymous_pull && matches!(need, Need::Pull(_))) {
                return Ok(());
            }
            return Err(unauthorized(
                "token lacks the required scope",
                Some("insufficient_scope"),
            ));
        }
        match Auth::basic(h) {
            Some((u, p)) if self.check_password(&u, &p) => Ok(()),
            _ => Err(unauthorized("invalid username or password", None)),
        }
    }
}

/// Failed-login rate limit: a token bucket per key (client address, user name). Each failed
/// *guess* takes a token — a client repeating the same wrong password (skopeo does, once per
/// layer, in parallel) guesses once — and a key whose bucket is empty is refused with 429 until
/// one refills. Buckets that have refilled completely are forgotten, so the table stays small.
pub struct FailLimiter {
    burst: u32,
    refill: Duration,
    buckets: Mutex<HashMap<FailKey, Bucket>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum FailKey {
    Addr(IpAddr),
    /// A user name's hash: the name is the client's to choose, so its length is not ours to keep.
    User([u8; 32]),
}

impl FailKey {
    pub fn user(name: &str) -> FailKey {
        FailKey::User(Sha256::digest(name.as_bytes()).into())
    }
}

/// Wrong guesses remembered per key, so a repeated one is not counted again.
const RECENT_GUESSES: usize = 8;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    recent: [u64; RECENT_GUESSES],
    next: usize,
}

/// A fingerprint of one (user, password) guess: a truncated hash, never the password.
pub fn guess_fingerprint(user: &str, pass: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update([0u8]);
    h.update(pass.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    // Never 0: 0 marks an empty slot.
    u64::from_le_bytes(b).max(1)
}

/// Buckets kept before full ones are swept.
const FAIL_TABLE_SWEEP: usize = 4096;

impl FailLimiter {
    pub fn new(burst: u32, refill: Duration) -> FailLimiter {
        FailLimiter {
            burst: burst.max(1),
            refill: refill.max(Duration::from_millis(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn level(&self, b: &Bucket, now: Instant) -> f64 {
        let gained = now.duration_since(b.at).as_secs_f64() / self.refill.as_secs_f64();
        (b.tokens + gained).min(f64::from(self.burst))
    }

    /// Whether any of `keys` has used up its failed logins; if so, how long until one is back.
    pub fn blocked(&self, keys: &[FailKey]) -> Option<Duration> {
        let now = Instant::now();
        let map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .filter_map(|k| map.get(k))
            .map(|b| self.level(b, now))
            .filter(|l| *l < 1.0)
            .map(|l| self.refill.mul_f64(1.0 - l))
            .max()
    }

    /// Record a failed login for every key; `guess` (see [`guess_fingerprint`]) when the
    /// password is known, so that repeating one wrong guess costs one token.
    pub fn failed(&self, keys: &[FailKey], guess: Option<u64>) {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= FAIL_TABLE_SWEEP {
            let full = f64::from(self.burst);
            map.retain(|_, b| self.level(b, now) < full);
        }
        for k in keys {
            let mut b = match map.get(k) {
                Some(b) => Bucket {
                    tokens: self.level(b, now),
                    at: now,
                    ..*b
                },
                None => Bucket {
                    tokens: f64::from(self.burst),
                    at: now,
                    recent: [0; RECENT_GUESSES],
                    next: 0,
                },
            };
            match guess {
                Some(g) if b.recent.contains(&g) => {}
                _ => {
                    b.tokens = (b.tokens - 1.0).max(0.0);
                    if let Some(g) = guess {
                        b.recent[b.next % RECENT_GUESSES] = g;
                        b.next = (b.next + 1) % RECENT_GUESSES;
                    }
                }
            }
            map.insert(k.clone(), b);
        }
    }
}

fn covers(access: &[Access], need: &Need) -> bool {
    let has = |kind: &str, name: &str, action: &str| {
        access.iter().any(|a| {
            a.kind == kind && a.name == name && a.actions.iter().any(|x| x == action || x == "*")
        })
    };
    match need {
        Need::Nothing | Need::Base => true,
        Need::Catalog => has("registry", "catalog", "*"),
        Need::Pull(r) => has("repository", r.as_str(), "pull"),
        Need::Push(r) => has("repository", r.as_str(), "push"),
        Need::Delete(r) => has("repository", r.as_str(), "delete"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn scopes_parse() {
        let s = parse_scopes("repository:library/redis:pull,push registry:catalog:*");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "library/redis");
        assert_eq!(s[0].actions, vec!["pull", "push"]);
        assert_eq!(s[1].kind, "registry");
    }

    #[test]
    fn tokens_sign_verify_expire_and_scope() {
        let a = Auth::new(vec![("u".into(), "p".into())], false);
        let (t, granted) = a.issue(
            &Caller::User("u".into()),
            parse_scopes("repository:r:pull"),
            100,
        );
        assert_eq!(granted.len(), 1);
        assert!(a.verify(&t, 101).is_some());
        assert!(a.verify(&t, 100 + TOKEN_TTL).is_none(), "expired");
        let mut bad = t.clone();
        bad.push('x');
        assert!(a.verify(&bad, 101).is_none());
        let h = format!("Bearer {t}");
        assert!(a
            .authorize(Some(&h), &Need::Pull(repo("r")), "h", 101)
            .is_ok());
        assert!(a
            .authorize(Some(&h), &Need::Push(repo("r")), "h", 101)
            .is_err());
        assert!(a
            .authorize(Some(&h), &Need::Pull(repo("other")), "h", 101)
            .is_err());
        assert!(a.authorize(None, &Need::Pull(repo("r")), "h", 101).is_err());
        let other = Auth::new(vec![("u".into(), "p".into())], false);
        assert!(other.verify(&t, 101).is_none(), "per-process key");
    }

    #[test]
    fn passwords_match_exactly_for_every_user() {
        let a = Auth::new(
            vec![("u".into(), "p".into()), ("admin".into(), "s3cret".into())],
            false,
        );
        assert!(a.check_password("u", "p"));
        assert!(a.check_password("admin", "s3cret"));
        for (u, p) in [
            ("u", "s3cret"),
            ("admin", "p"),
            ("admin", "s3cre"),
            ("admin", "s3cret "),
            ("", ""),
            ("u", ""),
        ] {
            assert!(!a.check_password(u, p), "{u}:{p}");
        }
    }

    #[test]
    fn fail_limiter_blocks_after_the_burst_per_key() {
        let f = FailLimiter::new(2, Duration::from_secs(3600));
        let (k1, k2) = (vec![FailKey::user("a")], vec![FailKey::user("b")]);
        assert!(f.blocked(&k1).is_none());
        f.failed(&k1, Some(1));
        f.failed(&k1, Some(1));
        assert!(f.blocked(&k1).is_none(), "a repeated guess counts once");
        f.failed(&k1, Some(2));
        assert!(f.blocked(&k1).is_some());
        assert!(f.blocked(&k2).is_none());
        let both = [k2[0].clone(), k1[0].clone()];
        assert!(f.blocked(&both).is_some(), "any blocked key blocks");
    }

    #[test]
    fn anonymous_gets_pull_only() {
        let a = Auth::new(vec![("u".into(), "p".into())], true);
        let (_, granted) = a.issue(
            &Caller::Anonymous,
            parse_scopes("repository:r:pull,push"),
            0,
        );
        assert_eq!(granted[0].actions, vec!["pull"]);
        assert!(a.authorize(None, &Need::Pull(repo("r")), "h", 1).is_ok());
        assert!(a.authorize(None, &Need::Push(repo("r")), "h", 1).is_err());
        assert!(
            a.authorize(None, &Need::Base, "h", 1).is_err(),
            "/v2/ challenges anonymous callers"
        );
        assert!(
            a.authorize(None, &Need::Catalog, "h", 1).is_err(),
            "the catalog is never anonymous"
        );
        let basic = format!("Basic {}", STANDARD.encode("u:p"));
        assert!(a
            .authorize(Some(&basic), &Need::Push(repo("r")), "h", 1)
            .is_ok());
        let wrong = format!("Basic {}", STANDARD.encode("u:x"));
        assert!(a
            .authorize(Some(&wrong), &Need::Pull(repo("r")), "h", 1)
            .is_err());
    }
}
