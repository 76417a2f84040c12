//! teleportd as a node agent: registry credentials (never from the command line unless given
//! in skopeo's `--user NAME:PASSWORD` form: password file, `TELEPORTD_PASSWORD`, or a docker
//! `config.json`), a start-up check that they work, and the TLS settings every registry client
//! of the process (teleportd and its fuse manager) is built with.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
pub use registry_client::{Credentials, AUTH_FAILURES};

/// Environment variable holding the registry password.
pub const PASSWORD_ENV: &str = "TELEPORTD_PASSWORD";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    DockerConfig { path: String, message: String },
    #[error("--user {user}: no password (use --password-file, ${PASSWORD_ENV} or NAME:PASSWORD)")]
    NoPassword { user: String },
    #[error("--password-file {0}: the file is empty")]
    EmptyPasswordFile(String),
    #[error("registry {0}: plain http needs --insecure-registry (or use https://)")]
    PlainHttp(String),
    #[error("--ca-file {path}: {message}")]
    Ca { path: String, message: String },
}

/// Where credentials may come from, in the order they are tried.
#[derive(Debug, Default, Clone)]
pub struct CredentialSources {
    /// `--user NAME` or skopeo's `NAME:PASSWORD`.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The value of [`PASSWORD_ENV`].
    pub password_env: Option<String>,
    /// `--docker-config`; None: `$HOME/.docker/config.json` if it exists.
    pub docker_config: Option<PathBuf>,
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// `host[:port]` of a registry URL or docker `auths` key (`https://h/v1/`, `h:5000`).
pub fn registry_host(url: &str) -> &str {
    let r = url.split_once("://").map_or(url, |(_, rest)| rest);
    r.split('/').next().unwrap_or(r)
}

/// The login for `registry` (base URL): `--user` with a password from the file, the
/// environment or the user string; else the docker config's entry for the registry's host.
pub fn resolve_login(
    src: &CredentialSources,
    registry: &str,
) -> Result<Option<Credentials>, ConfigError> {
    if let Some(u) = &src.user {
        let (user, inline) = match u.split_once(':') {
            Some((n, p)) => (n.to_string(), Some(p.to_string())),
            None => (u.clone(), None),
        };
        let password = if let Some(f) = &src.password_file {
            let p = read(f)?.trim_end_matches(['\r', '\n']).to_string();
            if p.is_empty() {
                return Err(ConfigError::EmptyPasswordFile(f.display().to_string()));
            }
            p
        } else if let Some(p) = src.password_env.clone().filter(|p| !p.is_empty()) {
            p
        } else if let Some(p) = inline {
            tracing::warn!(user = %user, "password given on the command line (visible to other users); prefer --password-file or ${PASSWORD_ENV}");
            p
        } else {
            return Err(ConfigError::NoPassword { user });
        };
        return Ok(Some(Credentials::new(user, password)));
    }
    let path = match &src.docker_config {
        Some(p) => p.clone(),
        None => match std::env::var_os("HOME") {
            Some(h) if Path::new(&h).join(".docker/config.json").is_file() => {
                Path::new(&h).join(".docker/config.json")
            }
            _ => return Ok(None),
        },
    };
    docker_config_login(
        &read(&path)?,
        &path.display().to_string(),
        registry_host(registry),
    )
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, DockerAuth>,
}

#[derive(serde::Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The `auths` entry of a docker `config.json` (`text`) for `host`: `auth` = base64
/// `user:password`, or `username` + `password`.
pub fn docker_config_login(
    text: &str,
    path: &str,
    host: &str,
) -> Result<Option<Credentials>, ConfigError> {
    let bad = |message: String| ConfigError::DockerConfig {
        path: path.to_string(),
        message,
    };
    let cfg: DockerConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let Some((_, a)) = cfg.auths.iter().find(|(k, _)| registry_host(k) == host) else {
        return Ok(None);
    };
    if let Some(auth) = a.auth.as_deref().filter(|s| !s.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| bad(format!("auths.{host}.auth: {e}")))?;
        let s = String::from_utf8(raw).map_err(|_| bad(format!("auths.{host}.auth: not UTF-8")))?;
        let (user, password) = s
            .split_once(':')
            .ok_or_else(|| bad(format!("auths.{host}.auth: not user:password")))?;
        return Ok(Some(Credentials::new(user, password)));
    }
    match (&a.username, &a.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials::new(u.clone(), p.clone()))),
        _ => Err(bad(format!("auths.{host}: no auth or username/password"))),
    }
}

/// TLS settings of the process's registry clients.
#[derive(Debug, Default, Clone)]
pub struct Tls {
    /// Extra trusted root (PEM), on top of the built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// Allow `http://` registries.
    pub insecure_registry: bool,
}

static TLS: OnceLock<(Tls, Option<reqwest::Certificate>)> = OnceLock::new();

/// Sets the process's TLS settings once (later calls are ignored); checks the CA file.
pub fn init_tls(tls: Tls) -> Result<(), ConfigError> {
    let cert = match &tls.ca_file {
        Some(p) => {
            let pem = std::fs::read(p).map_err(|e| ConfigError::Ca {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            Some(
                reqwest::Certificate::from_pem(&pem).map_err(|e| ConfigError::Ca {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?,
            )
        }
        None => None,
    };
    let _ = TLS.set((tls, cert));
    Ok(())
}

/// The flags that hand this process's TLS settings to a child (the fuse manager).
pub fn tls_args() -> Vec<std::ffi::OsString> {
    let mut a = Vec::new();
    if let Some((t, _)) = TLS.get() {
        if let Some(ca) = &t.ca_file {
            a.push("--ca-file".into());
            a.push(ca.clone().into_os_string());
        }
        if t.insecure_registry {
            a.push("--insecure-registry".into());
        }
    }
    a
}

/// Refuses a plain-http registry unless `--insecure-registry` was given.
pub fn check_scheme(registry: &str) -> Result<(), ConfigError> {
    let insecure = TLS.get().is_some_and(|(t, _)| t.insecure_registry);
    if registry.starts_with("http://") && !insecure {
        return Err(ConfigError::PlainHttp(registry.to_string()));
    }
    Ok(())
}

/// The process's extra root certificate (`--ca-file`), for every registry client it builds.
pub fn extra_root() -> Option<reqwest::Certificate> {
    TLS.get().and_then(|(_, c)| c.clone())
}

/// Tries `login` once against the registry's token endpoint. A refusal is logged as an ERROR
/// and counted in [`AUTH_FAILURES`] (teleportd keeps serving: images fall back to a standard
/// pull, visibly); returns whether the login works.
pub async fn check_login(registry: &str, login: &Credentials) -> bool {
    let opts = registry_client::Options {
        request_timeout: std::time::Duration::from_secs(10),
        extra_root: extra_root(),
        ..Default::default()
    };
    let client = match registry_client::RegistryClient::new(registry, Some(login.clone()), opts) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "building the registry client");
            return false;
        }
    };
    match client.login().await {
        Ok(()) => {
            tracing::info!(registry, user = %login.username, "registry login ok");
            true
        }
        Err(registry_client::Error::Status { status, .. }) if matches!(status, 401 | 403) => {
            tracing::error!(registry, user = %login.username, status, "registry refused the login: wrong user or password; teleport images will fall back to standard pulls");
            false
        }
        Err(registry_client::Error::Status { status, .. }) => {
            tracing::warn!(
                registry,
                status,
                "token endpoint answered unexpectedly; login not verified"
            );
            false
        }
        Err(e) => {
            tracing::warn!(registry, error = %e, "registry unreachable at start; login not verified");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn docker_config_auth_forms() {
        let text = format!(
            r#"{{"auths": {{"https://reg.example:5000/v1/": {{"auth": "{}"}},
                "other": {{"username": "u2", "password": "p2"}}, "broken": {{"auth": "!!"}}}}}}"#,
            b64("alice:s3:cret")
        );
        let l = docker_config_login(&text, "c.json", "reg.example:5000")
            .ok()
            .flatten();
        assert_eq!(l, Some(Credentials::new("alice", "s3:cret")));
        let l2 = docker_config_login(&text, "c.json", "other").ok().flatten();
        assert_eq!(l2.map(|l| l.username), Some("u2".into()));
        assert!(matches!(
            docker_config_login(&text, "c.json", "none"),
            Ok(None)
        ));
        assert!(docker_config_login(&text, "c.json", "broken").is_err());
        assert!(docker_config_login("{", "c.json", "x").is_err());
    }

    #[test]
    fn login_sources_in_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pf = dir.path().join("pw");
        std::fs::write(&pf, "from-file\n").unwrap_or_else(|e| panic!("{e}"));
        let reg = "http://127.0.0.1:5000";
        let src = |user: Option<&str>, file: bool, env: Option<&str>| CredentialSources {
            user: user.map(String::from),
            password_file: file.then(|| pf.clone()),
            password_env: env.map(String::from),
            docker_config: Some(dir.path().join("none.json")),
        };
        let pw = |s: CredentialSources| resolve_login(&s, reg).ok().flatten().map(|l| l.password);
        assert_eq!(
            pw(src(Some("a"), true, Some("env"))),
            Some("from-file".into())
        );
        assert_eq!(pw(src(Some("a"), false, Some("env"))), Some("env".into()));
        assert_eq!(
            pw(src(Some("a:inline"), false, None)),
            Some("inline".into())
        );
        assert!(matches!(
            resolve_login(&src(Some("a"), false, None), reg),
            Err(ConfigError::NoPassword { .. })
        ));
        // No --user: the docker config named must exist.
        assert!(matches!(
            resolve_login(&src(None, false, None), reg),
            Err(ConfigError::Read { .. })
        ));
        let dc = dir.path().join("config.json");
        std::fs::write(
            &dc,
            format!(
                r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{}"}}}}}}"#,
                b64("bob:pw")
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let s = CredentialSources {
            docker_config: Some(dc),
            ..Default::default()
        };
        assert_eq!(
            resolve_login(&s, reg).ok().flatten().map(|l| l.username),
            Some("bob".into())
        );
        assert!(!format!("{:?}", Credentials::new("u", "hunter2")).contains("hunter2"));
    }

    #[test]
    fn hosts_of_urls_and_keys() {
        assert_eq!(registry_host("https://r.io:5000/v1/"), "r.io:5000");
        assert_eq!(registry_host("r.io"), "r.io");
        assert_eq!(registry_host("http://127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
