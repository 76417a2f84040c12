//! registry-mock: a real OCI Distribution v1.1 registry (hyper 1 + tokio) with Azure Container
//! Registry's Teleport extras: tokens, repository attributes with `teleportEnabled`, layer
//! expansion on push (via [`emulator::expand`]) and the `/mount/v1` API, plus link emulation
//! (shared bandwidth limit, per-request latency) and Prometheus metrics.
//!
//! Owns the HTTP edge (`routes`), the on-disk store (`store`) and the expansion queue
//! (`expansion`). Depends on `emulator` only; must not depend on fuse-mount or testbed.
//! Start it in-process with [`start`], or run the `registry-mock` binary ([`serve`]).

pub mod auth;
pub mod error;
pub mod expansion;
pub mod http_util;
pub mod link;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod profile;
pub mod routes;
pub mod sessions;
pub mod state;
pub mod store;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

pub use error::{ApiError, Error, Result};
pub use link::LinkConfig;

use crate::auth::Auth;
use crate::expansion::Expander;
use crate::link::Limiter;
use crate::metrics::Metrics;
use crate::names::RepoName;
use crate::sessions::Sessions;
use crate::state::AppState;
use crate::store::{RepoAttrs, Store};

/// Registry configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to bind (default `127.0.0.1:0`: any free port).
    pub listen: SocketAddr,
    /// Storage root.
    pub root: PathBuf,
    /// Basic-auth users for `/oauth2/token` and `/v2`. Empty: authentication is off.
    pub users: Vec<(String, String)>,
    /// Let unauthenticated clients pull (GET/HEAD) when users are configured.
    pub anonymous_pull: bool,
    /// Link emulation; off by default.
    pub link: LinkConfig,
    /// Repositories teleport-enabled at start.
    pub teleport_repos: Vec<String>,
    /// Parallel layer expansions (default: available parallelism).
    pub expansion_workers: usize,
    /// Chunk size of the expanded format (see [`expansion::DEFAULT_EXPANSION_CHUNK_SIZE`]).
    pub expansion_chunk_size: u32,
    /// Frame size of the data blobs' seekable zstd encoding, produced at expansion and
    /// advertised by `/mount` (see [`expansion::DEFAULT_WIRE_FRAME_SIZE`]); `None`: off.
    pub wire_frame_size: Option<u32>,
    /// Expansion runs a layer gets before a crash during the last one fails it
    /// (see [`expansion::DEFAULT_MAX_ATTEMPTS`]).
    pub expansion_max_attempts: u32,
    /// Refuse `/mount` for an image whose config's `rootfs.diff_ids` differ from its layers'
    /// computed diff_ids. Always on in `serve`; off only in tests that play an older or lying
    /// registry to show that nodes verify on their own.
    pub check_diff_ids: bool,
    /// Limits against hostile or broken clients (the `serve` flags of the same names).
    pub limits: Limits,
    /// HTTPS instead of plain HTTP (see [`tls::TlsArgs`]).
    pub tls: Option<tls::Tls>,
    /// A second listener serving the same registry (store, link emulation, counters) over
    /// HTTPS, beside a plain-HTTP `listen`: for clients that speak only HTTPS (SOCI's index
    /// fetches) in a run whose other clients keep plain HTTP. [`start`] only.
    pub tls_listener: Option<TlsListener>,
}

/// The address and certificate of [`Config::tls_listener`].
#[derive(Clone, Debug)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub tls: tls::Tls,
}

/// Limits against hostile or broken clients. Defined once: these are both the library's
/// configuration and the `registry-mock serve` flags (flattened into the CLI), so the defaults
/// live only in the `#[arg]` attributes below.
#[derive(Clone, Debug, PartialEq, Eq, clap::Parser)]
pub struct Limits {
    /// Open blob-upload sessions, all repositories together (more: 429 TOOMANYREQUESTS).
    #[arg(long, default_value_t = 1024)]
    pub max_upload_sessions: usize,
    /// Open blob-upload sessions per repository (more: 429 TOOMANYREQUESTS).
    #[arg(long, default_value_t = 128)]
    pub max_upload_sessions_per_repo: usize,
    /// An upload session idle this long is dropped and its partial file deleted.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub upload_idle_timeout: Duration,
    /// Largest blob an upload may grow to: bytes or with a KiB/MiB/GiB suffix (more: 413
    /// SIZE_INVALID).
    #[arg(long, default_value = "16GiB", value_parser = parse_size)]
    pub max_upload_size: u64,
    /// A connection must deliver a complete request header within this time (also closes idle
    /// keep-alive connections).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Longest pause between two pieces of a request body; a stalled client is dropped.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Failed logins a client address or user name may make in a burst before it gets 429.
    #[arg(long, default_value_t = 10)]
    pub auth_fail_burst: u32,
    /// One failed login is forgiven per this interval (the token bucket's refill).
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub auth_fail_refill: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        // invariant: every flag has a default, so an empty command line parses.
        #[allow(clippy::expect_used)]
        <Limits as clap::Parser>::try_parse_from(["registry-mock"]).expect("default limits")
    }
}

pub use emulator::units::parse_size;

impl Config {
    pub fn new(root: impl Into<PathBuf>) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            root: root.into(),
            users: Vec::new(),
            anonymous_pull: true,
            link: LinkConfig::default(),
            teleport_repos: Vec::new(),
            expansion_workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            expansion_chunk_size: expansion::DEFAULT_EXPANSION_CHUNK_SIZE,
            wire_frame_size: Some(expansion::DEFAULT_WIRE_FRAME_SIZE),
            expansion_max_attempts: expansion::DEFAULT_MAX_ATTEMPTS,
            check_diff_ids: true,
            limits: Limits::default(),
            tls: None,
            tls_listener: None,
        }
    }
}

/// A running registry started by [`start`].
pub struct Registry {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    scheme: &'static str,
    state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Registry {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:PORT` (`https://` when serving TLS)
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }
    /// The bound address of [`Config::tls_listener`], if any.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }
    /// Counters as `/metrics` shows them (for tests).
    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }
    /// Stop accepting, stop expansions (their state is kept for the next start), drain
    /// connections for up to 5 s.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }
}

/// Bind, spawn the server and return its handle.
pub async fn start(cfg: Config) -> Result<Registry> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    let extra = match &cfg.tls_listener {
        Some(t) => {
            let l = TcpListener::bind(t.listen)
                .await
                .map_err(|source| Error::Bind {
                    addr: t.listen,
                    source,
                })?;
            Some((l, t.tls.clone()))
        }
        None => None,
    };
    let tls_addr = match &extra {
        Some((l, _)) => Some(l.local_addr()?),
        None => None,
    };
    let state = build_state(&cfg, addr)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(
        listener,
        state.clone(),
        cfg.tls.clone(),
        extra,
        async move {
            let _ = rx.await;
        },
    ));
    Ok(Registry {
        addr,
        tls_addr,
        scheme: scheme(&cfg),
        state,
        shutdown: Some(tx),
        task,
    })
}

/// Bind and serve until `shutdown` completes (the binary's entry point).
pub async fn serve(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    let state = build_state(&cfg, addr)?;
    let scheme = scheme(&cfg);
    tracing::info!(%addr, root = ?cfg.root, "registry-mock listening on {scheme}://{addr}");
    run(listener, state, cfg.tls.clone(), None, shutdown).await
}

fn scheme(cfg: &Config) -> &'static str {
    if cfg.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// Parse a bandwidth such as `1Gbit`, `200MiB/s`, `100Mbit/s`, `50MB/s` into bytes per second.
pub fn parse_bandwidth(s: &str) -> Result<u64> {
    link::parse_bandwidth(s).ok_or_else(|| Error::Bandwidth(s.to_string()))
}

/// Parse `NAME:PASSWORD`.
pub fn parse_user(s: &str) -> Result<(String, String)> {
    match s.split_once(':') {
        Some((u, p)) if !u.is_empty() => Ok((u.to_string(), p.to_string())),
        _ => Err(Error::UserSpec(s.to_string())),
    }
}

/// A users file: one `NAME:PASSWORD` per line; blank lines and `#` comments ignored.
pub fn read_users_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(parse_user)
        .collect()
}

fn build_state(cfg: &Config, addr: SocketAddr) -> Result<Arc<AppState>> {
    let store = Store::open(&cfg.root)?;
    let metrics = Arc::new(Metrics::default());
    // Classify blobs served after a restart: image layers, referrers' artifacts.
    for repo in store.all_repo_names()? {
        for d in store.manifests(&repo)? {
            if let Ok(Some((mt, b))) = store.read_manifest(&repo, &d) {
                if let Ok(m) = manifest::parse(&b, Some(&mt)) {
                    metrics.note_manifest(&m);
                }
            }
        }
    }
    for r in &cfg.teleport_repos {
        let name = RepoName::parse(r)
            .ok_or_else(|| Error::UserSpec(format!("invalid teleport repository name {r:?}")))?;
        let now = http_util::now_secs();
        let mut a = store.read_attrs(&name)?.unwrap_or(RepoAttrs {
            created_time: now,
            ..RepoAttrs::default()
        });
        if !a.teleport_enabled {
            a.teleport_enabled = true;
            a.last_update_time = now;
            store.write_attrs(&name, &a)?;
        }
    }
    let store_uploads = store.clone();
    let expander = Expander::start(
        store.clone(),
        metrics.clone(),
        cfg.expansion_workers,
        cfg.expansion_chunk_size,
        cfg.wire_frame_size,
        cfg.expansion_max_attempts,
    )?;
    expander.set_check_diff_ids(cfg.check_diff_ids);
    Ok(Arc::new(AppState {
        store,
        auth: Auth::new(cfg.users.clone(), cfg.anonymous_pull)
            .with_fail_limit(cfg.limits.auth_fail_burst, cfg.limits.auth_fail_refill)
            .with_scheme(scheme(cfg)),
        metrics,
        expander,
        uploads: Sessions::new(store_uploads, &cfg.limits),
        limits: cfg.limits.clone(),
        limiter: cfg
            .link
            .bandwidth_bytes_per_sec
            .map(|b| Arc::new(Limiter::new(b))),
        link: cfg.link.clone(),
        addr,
        attrs_lock: tokio::sync::Mutex::new(()),
    }))
}

/// The next connection from `listener` (served with `tls`) or from the `extra` HTTPS listener.
/// Both accepts are cancel-safe, so losing the race drops nothing.
async fn accept_next(
    listener: &TcpListener,
    tls: &Option<tls::Tls>,
    extra: Option<&(TcpListener, tls::Tls)>,
) -> (
    std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
    Option<tls::Tls>,
) {
    let second = async {
        match extra {
            Some((l, t)) => (l.accept().await, Some(t.clone())),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        a = listener.accept() => (a, tls.clone()),
        b = second => b,
    }
}

async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<tls::Tls>,
    extra: Option<(TcpListener, tls::Tls)>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let limits = state.limits.clone();
    // HTTP/1 only: nothing here speaks h2c, and the HTTP/1 header-read timer then covers a
    // connection from its first byte (the auto builder's version sniffing has no timeout).
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // ACR's check-expansion.sh greps `Docker-Content-Digest` case-sensitively: Title-Case.
        .title_case_headers(true);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    // Idle upload sessions expire on a timer, not only when the next upload starts.
    let sweeper = {
        let st = state.clone();
        let every = (limits.upload_idle_timeout / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                st.uploads.expire_idle();
            }
        })
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (accepted, tls) = accept_next(&listener, &tls, extra.as_ref()) => {
                let (mut stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, max = limits.max_connections, "connection cap reached; refusing");
                    tokio::spawn(async move {
                        let refuse = async {
                            stream.write_all(REFUSED).await?;
                            stream.shutdown().await
                        };
                        let _ = tokio::time::timeout(Duration::from_secs(1), refuse).await;
                    });
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let st = state.clone();
                let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    let st = st.clone();
                    req.extensions_mut().insert(routes::Peer(peer));
                    async move { Ok::<_, Infallible>(routes::handle(st, req).await) }
                });
                let watcher = graceful.watcher();
                let builder = builder.clone();
                // A TLS handshake counts against the header-read timeout (it comes first).
                let handshake_timeout = limits.header_read_timeout;
                tokio::spawn(async move {
                    let served = match tls {
                        None => watcher.watch(builder.serve_connection(TokioIo::new(stream), svc)).await,
                        Some(tls) => match tokio::time::timeout(handshake_timeout, tls.acceptor.accept(stream)).await {
                            Ok(Ok(s)) => watcher.watch(builder.serve_connection(TokioIo::new(s), svc)).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                Ok(())
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                Ok(())
                            }
                        },
                    };
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "connection ended with error");
                    }
                    drop(permit);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(extra);
    sweeper.abort();
    state.expander.shutdown().await;
    // Remove partial uploads of this run.
    state.uploads.clear();
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(5)) => tracing::warn!("connections still open after 5 s; closing"),
    }
    Ok(())
}

/// The whole answer to a connection over the cap.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// Every connection and every upload request holds a descriptor: the default caps (1,024
/// connections) need more than the usual soft limit of 1,024, so take the hard limit (as Go
/// programs do at start).
pub fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
            tracing::warn!(soft, hard, "could not raise the open-files limit");
        }
    }
}
