//! registry-mock: a real OCI Distribution v1.1 registry (hyper 1 + tokio) with Azure Container
//! Registry's Teleport extras: tokens, repository attributes with `teleportEnabled`, layer
//! expansion on push (via [`emulator::expand`]) and the `/mount/v1` API, plus link emulation
//! (shared bandwidth limit, per-request latency) and Prometheus metrics.
//!
//! Owns the HTTP edge (`routes`), the on-disk store (`store`) and the expansion queue
//! (`expansion`). Depends on `emulator` only; must not depend on fuse-mount or testbed.
//! Start it in-process with [`start`], or run the `registry-mock` binary ([`serve`]).

pub mod auth;
pub mod check;
pub mod error;
pub mod expansion;
pub mod http_util;
pub mod link;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod profile;
pub mod routes;
pub mod state;
pub mod store;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub use error::{ApiError, Error, Result};
pub use link::LinkConfig;

use crate::auth::Auth;
use crate::expansion::Expander;
use crate::link::Limiter;
use crate::metrics::Metrics;
use crate::names::RepoName;
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
    /// Expansion runs a layer gets before a crash during the last one fails it
    /// (see [`expansion::DEFAULT_MAX_ATTEMPTS`]).
    pub expansion_max_attempts: u32,
}

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
            expansion_max_attempts: expansion::DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// A running registry started by [`start`].
pub struct Registry {
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Registry {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
    let state = build_state(&cfg, addr)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    Ok(Registry {
        addr,
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
    tracing::info!(%addr, root = ?cfg.root, "registry-mock listening on http://{addr}");
    run(listener, state, shutdown).await
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
    // Classify blobs served after a restart: every manifest's layers count as layer blobs.
    for repo in store.all_repo_names()? {
        for d in store.manifests(&repo)? {
            if let Ok(Some((mt, b))) = store.read_manifest(&repo, &d) {
                if let Ok(m) = manifest::parse(&b, Some(&mt)) {
                    metrics.note_layers(m.layers().iter().map(|l| &l.digest));
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
    let expander = Expander::start(
        store.clone(),
        metrics.clone(),
        cfg.expansion_workers,
        cfg.expansion_chunk_size,
        cfg.expansion_max_attempts,
    )?;
    Ok(Arc::new(AppState {
        store,
        auth: Auth::new(cfg.users.clone(), cfg.anonymous_pull),
        metrics,
        expander,
        uploads: Mutex::new(HashMap::new()),
        limiter: cfg
            .link
            .bandwidth_bytes_per_sec
            .map(|b| Arc::new(Limiter::new(b))),
        link: cfg.link.clone(),
        addr,
        attrs_lock: tokio::sync::Mutex::new(()),
    }))
}

async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // ACR's check-expansion.sh greps `Docker-Content-Digest` case-sensitively: send Title-Case.
    builder.http1().title_case_headers(true);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let st = state.clone();
                let svc = service_fn(move |req| {
                    let st = st.clone();
                    async move { Ok::<_, Infallible>(routes::handle(st, req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        tracing::debug!(%peer, error = %e, "connection ended with error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    state.expander.shutdown().await;
    // Remove partial uploads of this run.
    let uuids: Vec<String> = state
        .uploads
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .map(|(k, _)| k)
        .collect();
    for u in uuids {
        let _ = std::fs::remove_file(state.store.upload_path(&u));
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(5)) => tracing::warn!("connections still open after 5 s; closing"),
    }
    Ok(())
}
