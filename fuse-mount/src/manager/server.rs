//! The manager process: serves [`Request`]s on `ROOT/fuse-manager.sock` with a
//! [`FuseLayers`] that owns every FUSE session, until a [`Request::Shutdown`] or the shutdown
//! future (SIGTERM) — then unmounts everything and exits.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

use super::config::ManagerConfig;
use super::layers::FuseLayers;
use super::proto::{ManagerInfo, Request, Response, MAX_LINE};
use super::{io, Error, Result};
use crate::fetch::{Client, Credentials};
use crate::remote::LayerMounter;

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
    // Mount requests act as root: only root may talk to the manager (0600 from the start).
    let l = crate::private::bind_unix(socket).map_err(io(format!("binding {socket:?}")))?;
    l.set_nonblocking(true)
        .map_err(io(format!("binding {socket:?}")))?;
    UnixListener::from_std(l).map_err(io(format!("binding {socket:?}")))
}

fn write_pid(root: &Path) -> Result<()> {
    let (path, tmp) = (super::pid_path(root), root.join(".fuse-manager.pid.tmp"));
    crate::private::create(&tmp)
        .and_then(|mut f| {
            use std::io::Write;
            writeln!(f, "{}", std::process::id())
        })
        .map_err(io(format!("writing {tmp:?}")))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("renaming to {path:?}")))
}

struct State {
    layers: FuseLayers,
    info: std::sync::Mutex<ManagerInfo>,
    /// The configuration served with (credentials replaceable).
    cfg: std::sync::Mutex<ManagerConfig>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Runs a manager until `shutdown` resolves or a client asks it to exit.
pub async fn run(cfg: ManagerConfig, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    crate::private::dir(&cfg.root).map_err(io(format!("creating {:?}", cfg.root)))?;
    let socket = super::socket_path(&cfg.root);
    let listener = bind(&socket).await?;
    let client = Client::new(
        &cfg.registry,
        cfg.credentials.clone(),
        cfg.cache_dir.clone(),
        cfg.settings.client_options(),
    )?;
    write_pid(&cfg.root)?;
    crate::trace::set_capacity(cfg.settings.trace_events);
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let state = Arc::new(State {
        layers: FuseLayers::new(client, cfg.settings.mount_options()),
        info: std::sync::Mutex::new(ManagerInfo {
            pid: std::process::id(),
            root: cfg.root.clone(),
            fingerprint: cfg.fingerprint(),
        }),
        cfg: std::sync::Mutex::new(cfg.clone()),
        stop,
    });
    info!(socket = %socket.display(), registry = %cfg.registry, pid = std::process::id(), "fuse manager serving");
    // Every SIGTERM is a polite request (the `shutdown` future only sees the first one).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let shutdown = futures::FutureExt::fuse(shutdown);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    // Mount requests act as root: only a peer of our own uid is served,
                    // whatever the socket's file mode says.
                    match stream.peer_cred() {
                        Ok(c) if c.uid() == nix::unistd::geteuid().as_raw() => {
                            let state = state.clone();
                            tokio::spawn(async move {
                                if let Err(e) = serve_conn(stream, &state).await {
                                    debug!(error = %e, "fuse manager connection");
                                }
                            });
                        }
                        Ok(c) => warn!(uid = c.uid(), pid = ?c.pid(), "fuse manager: refused a connection from another user"),
                        Err(e) => warn!(error = %e, "fuse manager: no peer credentials; connection refused"),
                    }
                }
                Err(e) => warn!(error = %e, "fuse manager accept"),
            },
            _ = stopped.changed() => break,
            _ = &mut shutdown => {
                info!("fuse manager: shutdown signal");
                if polite_stop(&state).await {
                    break;
                }
            }
            Some(()) = next_term(&mut term) => {
                info!("fuse manager: SIGTERM");
                if polite_stop(&state).await {
                    break;
                }
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

async fn next_term(t: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match t {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// A stop that detaches nothing in use: unmounts the idle mounts; true when none is left.
/// Mounts in use belong to running containers, which would get ENOTCONN: they keep being
/// served until they are released or a forced shutdown detaches them.
async fn polite_stop(state: &State) -> bool {
    let busy = state.layers.unmount_idle().await;
    if busy.is_empty() {
        return true;
    }
    warn!(in_use = busy.len(), mounts = ?busy,
        "fuse manager: not exiting while mounts are in use by running containers (a forced shutdown request detaches them)");
    false
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
        Request::Info => {
            Response::Info(state.info.lock().unwrap_or_else(|p| p.into_inner()).clone())
        }
        Request::SetCredentials { user, password } => {
            let creds = user.map(|username| Credentials {
                username,
                password: password.unwrap_or_default(),
            });
            layers.client().set_credentials(creds.clone());
            let mut cfg = state.cfg.lock().unwrap_or_else(|p| p.into_inner());
            cfg.credentials = creds;
            state
                .info
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .fingerprint = cfg.fingerprint();
            info!(user = ?cfg.credentials.as_ref().map(|c| c.username.clone()),
                "fuse manager: registry credentials replaced");
            Response::Ok
        }
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
        Request::Timings => Response::Timings {
            text: crate::timing::manager().render(),
        },
        Request::Trace { since, max } => {
            Response::Trace(crate::trace::page(since, max.min(super::proto::TRACE_PAGE)))
        }
        Request::Stats => Response::Stats {
            mounts: layers.stats().await,
        },
        Request::Shutdown { force } => {
            if force {
                info!("fuse manager: asked to detach everything and exit");
                layers.unmount_all().await;
            } else if !polite_stop(state).await {
                let n = layers.mountpoints().len();
                return (
                    error(format!(
                        "{n} mounts in use; not exiting (force to detach them)"
                    )),
                    false,
                );
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    /// In a forked child running as `uid`: connect, ask `Info`, exit 0 when answered, 1 when
    /// the manager closed the connection unanswered, 2 when it could not connect.
    fn ask_as(uid: u32, socket: &Path) -> i32 {
        use nix::sys::wait::{waitpid, WaitStatus};
        use nix::unistd::{fork, setgid, setuid, ForkResult, Gid, Uid};
        let req = b"{\"op\":\"info\"}\n";
        // SAFETY: the child only makes plain syscalls (no locks held across fork are taken)
        // and leaves with _exit.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let code = (|| {
                    if setgid(Gid::from_raw(uid)).is_err() || setuid(Uid::from_raw(uid)).is_err() {
                        return 3;
                    }
                    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
                        return 2;
                    };
                    let _ = s.write_all(req);
                    let mut buf = [0u8; 64];
                    match s.read(&mut buf) {
                        Ok(n) if n > 0 => 0,
                        _ => 1,
                    }
                })();
                // SAFETY: _exit never returns; no destructors of the parent's state run.
                unsafe { nix::libc::_exit(code) }
            }
            ForkResult::Parent { child } => match waitpid(child, None).unwrap() {
                WaitStatus::Exited(_, code) => code,
                other => panic!("child: {other:?}"),
            },
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn manager_socket_is_private_and_other_uids_are_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let cfg = ManagerConfig {
            root: root.clone(),
            registry: "http://127.0.0.1:9".into(),
            credentials: None,
            cache_dir: root.join("cache"),
            settings: super::super::config::MountSettings {
                no_start_profile: true,
                profile_window: Duration::from_secs(1),
                ..Default::default()
            },
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(cfg, async {
            let _ = rx.await;
        }));
        let socket = super::super::socket_path(&root);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "manager did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&socket), 0o600);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(ask_as(0, &socket), 0, "root is served");
        assert_eq!(ask_as(65534, &socket), 2, "file modes keep others out");
        // With the file modes opened up, the peer check alone still refuses another uid.
        for p in [t.path(), root.as_path()] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(ask_as(65534, &socket), 1);
        assert_eq!(ask_as(0, &socket), 0);
        let _ = tx.send(());
        task.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_rotated_password_is_handed_to_the_running_manager() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let creds = |p: &str| {
            Some(Credentials {
                username: "u".into(),
                password: p.into(),
            })
        };
        let cfg = ManagerConfig {
            root: root.clone(),
            registry: "http://127.0.0.1:9".into(),
            credentials: creds("old"),
            cache_dir: root.join("cache"),
            settings: Default::default(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(cfg.clone(), async {
            let _ = rx.await;
        }));
        let socket = super::super::socket_path(&root);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "manager did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rotated = ManagerConfig {
            credentials: creds("new"),
            ..cfg.clone()
        };
        let spawn = super::super::client::SpawnConfig {
            manager: rotated.clone(),
            // Never started: the running manager takes the new password.
            exe: PathBuf::from("/nonexistent/teleportd"),
            start_timeout: Duration::from_secs(5),
        };
        let c = super::super::client::ManagerClient::connect_or_spawn(&spawn, false)
            .await
            .unwrap();
        assert_eq!(c.pid(), std::process::id(), "the same manager");
        let Response::Info(info) = c
            .call(&Request::Info, Duration::from_secs(5))
            .await
            .unwrap()
        else {
            panic!("not an info answer")
        };
        assert_eq!(info.fingerprint, rotated.fingerprint());
        assert_ne!(info.fingerprint, cfg.fingerprint());
        let _ = tx.send(());
        task.await.unwrap().unwrap();
    }
}
