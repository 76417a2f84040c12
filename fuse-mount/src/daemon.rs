//! teleportd's lifecycle: find or start the root's fuse manager (remote path only), open the
//! snapshotter, serve containerd's Snapshots API on a unix socket (and optional `/metrics`), stop
//! on the shutdown future: gRPC first, then the manager and its mounts, then return.
//!
//! The FUSE sessions live in the manager (`crate::manager`), so a teleportd killed by SIGKILL
//! leaves running containers reading; the next teleportd connects to the same manager.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

use crate::fetch::Credentials;
use crate::manager::client::{ManagerClient, SpawnConfig};
use crate::manager::config::{ManagerConfig, MountSettings};
use crate::remote::http::{HttpResolver, HttpResolverConfig};
use crate::snapshot::overlay::OverlaySnapshotter;
use crate::snapshot::remote::RemoteLayers;
use crate::snapshot::{SnapshotError, Snapshotter};

pub const DEFAULT_ADDRESS: &str = "/run/teleportd/snapshotter.sock";
pub const DEFAULT_ROOT: &str = "/var/lib/teleportd";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MountMode {
    /// One FUSE mount per layer, stacked by overlayfs.
    PerLayer,
    /// One FUSE mount per image with the merged tree.
    Merged,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub address: PathBuf,
    pub registry: Option<String>,
    pub credentials: Option<Credentials>,
    pub mount_mode: MountMode,
    pub cache_dir: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    /// Mount registry-expanded layers instead of downloading them (needs `registry`).
    pub remote: bool,
    /// How long a Prepare waits for an image the registry is still expanding (409).
    pub expansion_wait: Duration,
    /// On a clean stop, leave the fuse manager and its mounts running for the next teleportd
    /// (running containers keep reading). Default: unmount everything and stop it.
    pub keep_fuse_manager: bool,
    /// Binary that runs the fuse manager (`EXE … fuse-manager`); default: this executable.
    pub manager_exe: Option<PathBuf>,
    /// What the fuse manager fetches and mounts with (handed to it unchanged).
    pub mount: MountSettings,
}

impl Config {
    pub fn new(root: impl Into<PathBuf>, address: impl Into<PathBuf>) -> Self {
        Config {
            root: root.into(),
            address: address.into(),
            registry: None,
            credentials: None,
            mount_mode: MountMode::PerLayer,
            cache_dir: None,
            metrics_addr: None,
            remote: false,
            expansion_wait: Duration::from_secs(30),
            keep_fuse_manager: false,
            manager_exe: None,
            mount: MountSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("remote layers need --registry")]
    RemoteNeedsRegistry,
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    #[error(transparent)]
    Fetch(#[from] crate::fetch::Error),
    #[error(transparent)]
    Manager(#[from] crate::manager::Error),
}

pub type Result<T> = std::result::Result<T, DaemonError>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let context = context.into();
    move |source| DaemonError::Io { context, source }
}

/// Binds the snapshotter socket, replacing a stale socket file left by a previous run.
pub fn bind(address: &Path) -> Result<UnixListener> {
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {dir:?}")))?;
    }
    match std::fs::symlink_metadata(address) {
        Ok(md) if md.file_type().is_socket() => {
            std::fs::remove_file(address).map_err(io(format!("removing stale {address:?}")))?
        }
        Ok(_) => return Err(DaemonError::NotASocket(address.to_owned())),
        Err(_) => {}
    }
    // Mode 0600 from the start: only root (containerd) may call the snapshotter.
    let l = crate::private::bind_unix(address).map_err(io(format!("binding {address:?}")))?;
    l.set_nonblocking(true)
        .map_err(io(format!("binding {address:?}")))?;
    UnixListener::from_std(l).map_err(io(format!("binding {address:?}")))
}

/// Runs teleportd until `shutdown` resolves.
pub async fn run(
    mut cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    crate::private::dir(&cfg.root).map_err(io(format!("creating {:?}", cfg.root)))?;
    // Mount points are compared with /proc/self/mountinfo, which shows canonical paths.
    cfg.root = std::fs::canonicalize(&cfg.root).map_err(io(format!("resolving {:?}", cfg.root)))?;
    let (remote, manager) = if cfg.remote {
        let (r, m) = remote_layers(&cfg).await?;
        (Some(r), Some(m))
    } else {
        (None, None)
    };
    let snap = Arc::new(OverlaySnapshotter::open(&cfg.root, remote)?);
    snap.restore_remote().await;
    // Directories a crash left between mkdir and the metadata write.
    if let Err(e) = snap.cleanup().await {
        warn!(error = %e, "startup cleanup");
    }
    let listener = bind(&cfg.address)?;
    info!(address = %cfg.address.display(), root = %cfg.root.display(), mode = ?cfg.mount_mode, "teleportd serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics = match cfg.metrics_addr {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(io(format!("binding metrics {addr}")))?;
            info!(addr = %l.local_addr().map_err(io("metrics addr"))?, "metrics listening");
            Some(tokio::spawn(crate::metrics::serve(
                l,
                snap.clone(),
                stop_rx.clone(),
            )))
        }
        None => None,
    };

    let served = tonic::transport::Server::builder()
        .add_service(crate::grpc::server(snap.clone()))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    info!("gRPC stopped");
    snap.shutdown().await;
    // A manager still running kept mounts in use (running containers): leave them be.
    if manager
        .as_ref()
        .is_some_and(|m| !crate::manager::pid_alive(m.pid()))
        && !cfg.keep_fuse_manager
    {
        // The manager unmounted what it served; anything still below root is stale.
        let root = cfg.root.clone();
        match tokio::task::spawn_blocking(move || detach_below(&root, |_| false)).await {
            Ok(n) if n > 0 => warn!(
                detached = n,
                "mounts were left after the fuse manager stopped"
            ),
            _ => {}
        }
    }
    drop(manager);
    let _ = stop_tx.send(true);
    if let Some(m) = metrics {
        if tokio::time::timeout(Duration::from_secs(5), m)
            .await
            .is_err()
        {
            warn!("metrics server did not stop in time");
        }
    }
    if let Err(e) = std::fs::remove_file(&cfg.address) {
        warn!(error = %e, "removing socket");
    }
    served?;
    Ok(())
}

async fn remote_layers(cfg: &Config) -> Result<(RemoteLayers, Arc<ManagerClient>)> {
    let registry = cfg
        .registry
        .clone()
        .ok_or(DaemonError::RemoteNeedsRegistry)?;
    let cache = cfg
        .cache_dir
        .clone()
        .unwrap_or_else(|| cfg.root.join("cache"));
    let exe = match &cfg.manager_exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().map_err(io("locating the teleportd binary"))?,
    };
    let spawn = SpawnConfig {
        manager: ManagerConfig {
            root: cfg.root.clone(),
            registry: registry.clone(),
            credentials: cfg.credentials.clone(),
            cache_dir: cache,
            settings: cfg.mount.clone(),
        },
        exe,
        start_timeout: Duration::from_secs(30),
    };
    let manager = Arc::new(ManagerClient::connect_or_spawn(&spawn, cfg.keep_fuse_manager).await?);
    // FUSE mounts below root the manager does not serve belong to a dead one: ENOTCONN.
    let live: std::collections::HashSet<PathBuf> = manager.mounts().await?.into_iter().collect();
    let root = cfg.root.clone();
    let stale = tokio::task::spawn_blocking(move || {
        detach_below(&root, |m| {
            !m.fs_type.starts_with("fuse") || live.contains(&m.mount_point)
        })
    })
    .await
    .unwrap_or(0);
    if stale > 0 {
        info!(
            detached = stale,
            "stale FUSE mounts detached; they are mounted again from metadata"
        );
    }
    let resolver = HttpResolver::new(HttpResolverConfig {
        registry,
        credentials: cfg.credentials.clone(),
        expansion_wait: cfg.expansion_wait,
        poll_interval: Duration::from_millis(500),
        request_timeout: Duration::from_secs(10),
    })?;
    Ok((
        RemoteLayers::new(
            Arc::new(resolver),
            manager.clone(),
            cfg.mount_mode == MountMode::Merged,
        ),
        manager,
    ))
}

/// Lazily detaches every mount below `root` that `keep` does not keep; returns how many.
fn detach_below(root: &Path, keep: impl Fn(&crate::manager::MountEntry) -> bool) -> usize {
    let mut n = 0;
    for m in crate::manager::mounts_below(root) {
        if keep(&m) {
            continue;
        }
        match crate::fs::detach(&m.mount_point) {
            Ok(()) => {
                info!(mountpoint = %m.mount_point.display(), fstype = %m.fs_type, "detached stale mount");
                n += 1;
            }
            Err(e) => {
                warn!(mountpoint = %m.mount_point.display(), error = %e, "detaching stale mount")
            }
        }
    }
    n
}

/// Cleans a node whose teleportd was killed: stops the fuse manager named by
/// `ROOT/fuse-manager.pid` — only if `/proc/PID/cmdline` is a teleportd fuse manager for this
/// `root` — (SIGTERM, so it unmounts; SIGKILL after 20 s), then lazily detaches every mount
/// left below `root` and removes the manager's pid and socket files. Blocking (up to ~30 s);
/// a no-op when nothing runs or is mounted. Does not stop teleportd itself.
pub fn kill_manager(root: &Path) -> Result<crate::manager::Cleanup> {
    Ok(crate::manager::kill_manager(root, Duration::from_secs(20))?)
}
