//! The manager process: serves [`Request`]s on `ROOT/fuse-manager.sock` with a
//! [`FuseLayers`] that owns every FUSE session, until a [`Request::Shutdown`] or the shutdown
//! future (SIGTERM) — then unmounts everything and exits.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

use super::proto::{Fingerprint, ManagerInfo, Request, Response, PROTOCOL_VERSION};
use super::{io, Error, Result};
use crate::fetch::{Client, ClientOptions, Credentials};
use crate::fs::MountOptions;
use crate::remote::fuse::FuseLayers;
use crate::remote::LayerMounter;

/// Longest request line accepted (a merged mount of a few hundred layers fits easily).
pub(crate) const MAX_LINE: u64 = 64 << 20;

/// What a manager serves with.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// teleportd's root: the socket, pid and log files live here.
    pub root: PathBuf,
    pub registry: String,
    pub credentials: Option<Credentials>,
    pub cache_dir: PathBuf,
    /// Learned start profiles (replay and record); see [`ClientOptions::start_profile`].
    pub start_profile: bool,
    /// See [`ClientOptions::profile_window`].
    pub profile_window: std::time::Duration,
    /// See [`MountOptions::prefetch_layers`].
    pub prefetch_layers: bool,
}

impl ManagerConfig {
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            registry: self.registry.clone(),
            cache_dir: self.cache_dir.clone(),
            user: self.credentials.as_ref().map(|c| c.username.clone()),
            password_sha256: self
                .credentials
                .as_ref()
                .map(|c| hex::encode(sha2::Sha256::digest(c.password.as_bytes()))),
        }
    }
}

/// Binds `socket`, refusing when a live manager answers there and replacing a stale file.
async fn bind(socket: &Path) -> Result<UnixListener> {
    if UnixStream::connect(socket).await.is_ok() {
        return Err(Error::AlreadyRunning(socket.to_owned()));
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("removing stale {socket:?}"))(e)),
    }
    let l = UnixListener::bind(socket).map_err(io(format!("binding {socket:?}")))?;
    // Mount requests act as root: only root may talk to the manager.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod {socket:?}")))?;
    Ok(l)
}

fn write_pid(root: &Path) -> Result<()> {
    let (path, tmp) = (super::pid_path(root), root.join(".fuse-manager.pid.tmp"));
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .map_err(io(format!("writing {tmp:?}")))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("renaming to {path:?}")))
}

struct State {
    layers: FuseLayers,
    info: ManagerInfo,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Runs a manager until `shutdown` resolves or a client asks it to exit.
pub async fn run(cfg: ManagerConfig, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    std::fs::create_dir_all(&cfg.root).map_err(io(format!("creating {:?}", cfg.root)))?;
    let socket = super::socket_path(&cfg.root);
    let listener = bind(&socket).await?;
    let client = Client::new(
        &cfg.registry,
        cfg.credentials.clone(),
        cfg.cache_dir.clone(),
        ClientOptions {
            start_profile: cfg.start_profile,
            profile_window: cfg.profile_window,
            ..ClientOptions::default()
        },
    )?;
    write_pid(&cfg.root)?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let state = Arc::new(State {
        layers: FuseLayers::new(
            client,
            MountOptions {
                prefetch_layers: cfg.prefetch_layers,
                ..MountOptions::default()
            },
        ),
        info: ManagerInfo {
            pid: std::process::id(),
            root: cfg.root.clone(),
            fingerprint: cfg.fingerprint(),
        },
        stop,
    });
    info!(socket = %socket.display(), registry = %cfg.registry, pid = std::process::id(), "fuse manager serving");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let state = state.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_conn(stream, &state).await {
                            debug!(error = %e, "fuse manager connection");
                        }
                    });
                }
                Err(e) => warn!(error = %e, "fuse manager accept"),
            },
            _ = stopped.changed() => break,
            _ = &mut shutdown => {
                info!("fuse manager: shutdown signal");
                break;
            }
        }
    }
    drop(listener);
    state.layers.unmount_all().await;
    // Unmounting closed the start-profile recordings: let their uploads finish.
    state
        .layers
        .client()
        .flush_uploads(std::time::Duration::from_secs(5))
        .await;
    // Only our own files: a successor may already have replaced them.
    if super::read_pid(&cfg.root) == Some(std::process::id()) {
        let _ = std::fs::remove_file(super::pid_path(&cfg.root));
        let _ = std::fs::remove_file(&socket);
    }
    info!("fuse manager stopped");
    Ok(())
}

async fn serve_conn(stream: UnixStream, state: &State) -> Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    BufReader::new(rd.take(MAX_LINE))
        .read_line(&mut line)
        .await
        .map_err(io("reading request"))?;
    let (resp, exit) = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handle(req, state).await,
        Err(e) => (
            Response::Error {
                message: format!("bad request: {e}"),
            },
            false,
        ),
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    let written = wr.write_all(&out).await.map_err(io("writing response"));
    if exit {
        // After the answer, so the client knows the unmounts are done before the pid goes.
        let _ = state.stop.send(true);
    }
    written
}

fn error(e: impl std::fmt::Display) -> Response {
    Response::Error {
        message: e.to_string(),
    }
}

async fn handle(req: Request, state: &State) -> (Response, bool) {
    let layers = &state.layers;
    let resp = match req {
        Request::Info => Response::Info(state.info.clone()),
        Request::MountLayer { target, layer } => {
            if layers.is_mounted(&target).await {
                Response::Ok
            } else {
                match layers.mount_layer(&layer.into(), &target).await {
                    Ok(()) => Response::Ok,
                    Err(e) => error(e),
                }
            }
        }
        Request::MountMerged { target, layers: l } => {
            let refs: Vec<_> = l.into_iter().map(Into::into).collect();
            match layers.mount_merged(&refs, &target).await {
                Ok(()) => Response::Ok,
                Err(e) => error(e),
            }
        }
        Request::Warm { layers: l } => {
            layers.warm(l.into_iter().map(Into::into).collect());
            Response::Ok
        }
        Request::Unmount { target } => match layers.unmount_layer(&target).await {
            Ok(()) => Response::Ok,
            Err(e) => error(e),
        },
        Request::IsMounted { target } => Response::Mounted {
            mounted: layers.is_mounted(&target).await,
        },
        Request::List => Response::Mounts {
            mounts: layers.mountpoints(),
        },
        Request::Stats => Response::Stats {
            mounts: layers.stats().await,
        },
        Request::Shutdown => {
            info!("fuse manager: asked to unmount everything and exit");
            layers.unmount_all().await;
            // Before answering: whoever asked may stop this process right after the answer.
            layers
                .client()
                .flush_uploads(std::time::Duration::from_secs(5))
                .await;
            return (Response::Ok, true);
        }
    };
    (resp, false)
}
