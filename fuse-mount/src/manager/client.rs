//! teleportd's side: find (or start) the root's manager and implement [`LayerMounter`] by
//! asking it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tracing::{debug, info, warn};

use super::config::ManagerConfig;
use super::proto::{LayerSpec, ManagerInfo, Request, Response, MAX_LINE};
use super::{io, Error, Result};
use crate::remote::{LayerMounter, LayerRef, RemoteError};

/// Short requests (is_mounted, list, stats, info).
const QUICK: Duration = Duration::from_secs(30);
/// Mounts fetch a layer index from the registry first; unmount-all of many layers takes time.
const SLOW: Duration = Duration::from_secs(300);

/// How to start a manager when none answers.
#[derive(Debug, Clone)]
pub struct SpawnConfig {
    pub manager: ManagerConfig,
    /// The teleportd binary (it runs the manager as a subcommand).
    pub exe: PathBuf,
    /// How long a new manager may take to answer.
    pub start_timeout: Duration,
}

/// A connection handle to the root's manager; each request is one short unix-socket exchange.
pub struct ManagerClient {
    root: PathBuf,
    socket: PathBuf,
    pid: u32,
    /// Set when this process started the manager: it must reap it.
    child: Mutex<Option<Child>>,
    /// Clean stop leaves the manager and its mounts for the next teleportd.
    keep_on_shutdown: bool,
}

async fn call_at(socket: &Path, req: &Request, timeout: Duration) -> Result<Response> {
    let exchange = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(io(format!("connecting to {socket:?}")))?;
        let (rd, mut wr) = stream.into_split();
        let mut out = serde_json::to_vec(req)?;
        out.push(b'\n');
        wr.write_all(&out).await.map_err(io("sending request"))?;
        let mut line = String::new();
        let n = BufReader::new(rd.take(MAX_LINE))
            .read_line(&mut line)
            .await
            .map_err(io("reading response"))?;
        if n == 0 {
            return Err(Error::Unexpected("connection closed".into()));
        }
        Ok(serde_json::from_str::<Response>(&line)?)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(Response::Error { message })) => Err(Error::Server(message)),
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            socket: socket.to_owned(),
            timeout,
        }),
    }
}

async fn info_at(socket: &Path, timeout: Duration) -> Result<ManagerInfo> {
    match call_at(socket, &Request::Info, timeout).await? {
        Response::Info(i) => Ok(i),
        other => Err(Error::Unexpected(format!("{other:?}"))),
    }
}

/// The start trace of the manager serving `root`, from cursor `since` on (one page; call again
/// from [`crate::trace::Page::next`] while events come back).
pub async fn trace_at(root: &Path, since: u64) -> Result<crate::trace::Page> {
    let req = Request::Trace {
        since,
        max: super::proto::TRACE_PAGE,
    };
    match call_at(&super::socket_path(root), &req, QUICK).await? {
        Response::Trace(p) => Ok(p),
        other => Err(Error::Unexpected(format!("{other:?}"))),
    }
}

/// Every event from `since` on, paged; the returned page holds them all.
pub async fn trace_all(root: &Path, since: u64) -> Result<crate::trace::Page> {
    let mut all = trace_at(root, since).await?;
    loop {
        let more = trace_at(root, all.next).await?;
        if more.events.is_empty() {
            all.mounts = more.mounts;
            return Ok(all);
        }
        all.next = more.next;
        all.events.extend(more.events);
    }
}

fn expect_ok(r: Response) -> Result<()> {
    match r {
        Response::Ok => Ok(()),
        other => Err(Error::Unexpected(format!("{other:?}"))),
    }
}

/// `kill_manager` blocks (it polls for the pid to go): keep it off the runtime's workers.
async fn cleanup_blocking(root: &Path) -> Result<super::Cleanup> {
    let root = root.to_owned();
    tokio::task::spawn_blocking(move || super::kill_manager(&root, Duration::from_secs(20)))
        .await
        .map_err(|e| Error::Unexpected(format!("cleanup task: {e}")))?
}

fn spawn(cfg: &SpawnConfig) -> Result<Child> {
    let m = &cfg.manager;
    let log_file = super::log_path(&m.root);
    let log = crate::private::open_options()
        .create(true)
        .append(true)
        .open(&log_file)
        .map_err(io(format!("opening {log_file:?}")))?;
    let log2 = log.try_clone().map_err(io("cloning log fd"))?;
    let mut cmd = Command::new(&cfg.exe);
    cmd.arg("--root")
        .arg(&m.root)
        .arg("--registry")
        .arg(&m.registry)
        .arg("--cache-dir")
        .arg(&m.cache_dir);
    if let Some(c) = &m.credentials {
        // The password goes by environment, never on a command line others can read.
        cmd.arg("--user")
            .arg(&c.username)
            .env("TELEPORTD_PASSWORD", &c.password);
    } else {
        cmd.env_remove("TELEPORTD_PASSWORD");
    }
    cmd.args(crate::config::tls_args());
    cmd.args(m.settings.to_args());
    cmd.arg(super::SUBCOMMAND)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid is async-signal-safe. Its own session keeps the manager out of
    // teleportd's process group and terminal, so signals aimed at teleportd do not reach it.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(io(format!("starting {:?} {}", cfg.exe, super::SUBCOMMAND)))
}

impl ManagerClient {
    /// Connects to the live manager of `cfg.manager.root` if one answers with the same
    /// configuration; otherwise stops whatever is there (a manager with another config, or
    /// the stale mounts of a dead one) and starts a new one.
    pub async fn connect_or_spawn(cfg: &SpawnConfig, keep_on_shutdown: bool) -> Result<Self> {
        let root = cfg.manager.root.clone();
        let socket = super::socket_path(&root);
        let want = cfg.manager.fingerprint();
        match info_at(&socket, Duration::from_secs(5)).await {
            Ok(info) if info.fingerprint == want => {
                info!(pid = info.pid, "connected to the running fuse manager");
                return Ok(ManagerClient {
                    root,
                    socket,
                    pid: info.pid,
                    child: Mutex::new(None),
                    keep_on_shutdown,
                });
            }
            Ok(info) if info.fingerprint.differs_only_in_credentials(&want) => {
                // A rotated password: told over the socket, the mounts stay as they are.
                let creds = cfg.manager.credentials.as_ref();
                let req = Request::SetCredentials {
                    user: creds.map(|c| c.username.clone()),
                    password: creds.map(|c| c.password.clone()),
                };
                expect_ok(call_at(&socket, &req, QUICK).await?)?;
                info!(
                    pid = info.pid,
                    "gave the running fuse manager its new credentials"
                );
                return Ok(ManagerClient {
                    root,
                    socket,
                    pid: info.pid,
                    child: Mutex::new(None),
                    keep_on_shutdown,
                });
            }
            Ok(info) => {
                info!(pid = info.pid, running = ?info.fingerprint, wanted = ?want,
                    "fuse manager runs with another configuration; replacing it");
                match call_at(&socket, &Request::Shutdown { force: false }, SLOW).await {
                    Ok(_) => {}
                    // Running containers read through it: replacing it would detach their
                    // layers (ENOTCONN). Keep it; it is replaced once its mounts are released.
                    Err(Error::Server(msg)) => {
                        warn!(pid = info.pid, reason = %msg,
                            "keeping the fuse manager with its old configuration: its mounts are in use");
                        return Ok(ManagerClient {
                            root,
                            socket,
                            pid: info.pid,
                            child: Mutex::new(None),
                            keep_on_shutdown,
                        });
                    }
                    Err(e) => warn!(error = %e, "asking the old fuse manager to exit"),
                }
            }
            Err(e) => info!(reason = %e, "no fuse manager answers; starting one"),
        }
        // Stops a manager that did not answer or was asked to exit, and detaches the stale
        // mounts a dead one left (they would answer ENOTCONN).
        let cleaned = cleanup_blocking(&root).await?;
        if cleaned.stopped.is_some() || !cleaned.detached.is_empty() {
            info!(stopped = ?cleaned.stopped, detached = cleaned.detached.len(), "cleaned up after the previous fuse manager");
        }
        let mut child = spawn(cfg)?;
        let deadline = Instant::now() + cfg.start_timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(Error::Exited {
                    status: st.to_string(),
                    log: super::log_path(&root),
                });
            }
            match info_at(&socket, Duration::from_secs(2)).await {
                Ok(info) if info.pid == child.id() => {
                    info!(pid = info.pid, "fuse manager started");
                    return Ok(ManagerClient {
                        root,
                        socket,
                        pid: info.pid,
                        child: Mutex::new(Some(child)),
                        keep_on_shutdown,
                    });
                }
                Ok(info) => {
                    // Someone else's manager won the socket; ours exits with AlreadyRunning.
                    warn!(
                        pid = info.pid,
                        ours = child.id(),
                        "another fuse manager answered"
                    );
                }
                Err(_) if Instant::now() < deadline => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Timeout {
                        socket,
                        timeout: cfg.start_timeout,
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub async fn call(&self, req: &Request, timeout: Duration) -> Result<Response> {
        call_at(&self.socket, req, timeout).await
    }

    /// Mount points the manager serves.
    pub async fn mounts(&self) -> Result<Vec<PathBuf>> {
        match self.call(&Request::List, QUICK).await? {
            Response::Mounts { mounts } => Ok(mounts),
            other => Err(Error::Unexpected(format!("{other:?}"))),
        }
    }

    /// Asks the manager to unmount and exit, then waits for its pid to go. Without `force` a
    /// manager whose mounts are in use refuses (an error) and keeps serving them.
    pub async fn shutdown_manager(&self, force: bool) -> Result<()> {
        expect_ok(self.call(&Request::Shutdown { force }, SLOW).await?)?;
        let pid = self.pid;
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        let gone = tokio::task::spawn_blocking(move || match child {
            // Our child: wait() reaps it, so no zombie is left behind.
            Some(mut c) => {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match c.try_wait() {
                        Ok(Some(_)) | Err(_) => return true,
                        Ok(None) if Instant::now() >= deadline => return false,
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
            None => super::wait_gone(pid, Duration::from_secs(30)),
        })
        .await
        .unwrap_or(false);
        if gone {
            info!(pid, "fuse manager exited");
            Ok(())
        } else {
            Err(Error::Stuck(pid))
        }
    }
}

impl From<Error> for RemoteError {
    fn from(e: Error) -> Self {
        RemoteError::Mounter(Box::new(e))
    }
}

impl LayerMounter for ManagerClient {
    fn warm(&self, layers: Vec<LayerRef>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let socket = self.socket.clone();
        let req = Request::Warm {
            layers: layers.iter().map(LayerSpec::from).collect(),
        };
        rt.spawn(async move {
            // Only a head start: an older manager that does not know the request is fine.
            if let Err(e) = call_at(&socket, &req, QUICK).await.and_then(expect_ok) {
                debug!(error = %e, "warm-up request");
            }
        });
    }

    fn mount_layer<'a>(
        &'a self,
        layer: &'a LayerRef,
        target: &'a Path,
    ) -> BoxFuture<'a, crate::remote::Result<()>> {
        Box::pin(async move {
            let req = Request::MountLayer {
                target: target.to_owned(),
                layer: LayerSpec::from(layer),
            };
            Ok(expect_ok(self.call(&req, SLOW).await?)?)
        })
    }

    fn mount_merged<'a>(
        &'a self,
        layers: &'a [LayerRef],
        target: &'a Path,
    ) -> BoxFuture<'a, crate::remote::Result<()>> {
        Box::pin(async move {
            let req = Request::MountMerged {
                target: target.to_owned(),
                layers: layers.iter().map(LayerSpec::from).collect(),
            };
            Ok(expect_ok(self.call(&req, SLOW).await?)?)
        })
    }

    fn unmount_layer<'a>(&'a self, target: &'a Path) -> BoxFuture<'a, crate::remote::Result<()>> {
        Box::pin(async move {
            let req = Request::Unmount {
                target: target.to_owned(),
            };
            Ok(expect_ok(self.call(&req, SLOW).await?)?)
        })
    }

    fn unmount_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.keep_on_shutdown {
                info!(
                    pid = self.pid,
                    "leaving the fuse manager and its mounts running"
                );
                return;
            }
            match self.shutdown_manager(false).await {
                Ok(()) => {}
                Err(Error::Server(msg)) => warn!(pid = self.pid, reason = %msg,
                    "the fuse manager keeps serving mounts in use; left running"),
                Err(e) => warn!(error = %e, "stopping the fuse manager"),
            }
        })
    }

    fn is_mounted<'a>(&'a self, target: &'a Path) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let req = Request::IsMounted {
                target: target.to_owned(),
            };
            match self.call(&req, QUICK).await {
                Ok(Response::Mounted { mounted }) => mounted,
                Ok(other) => {
                    warn!(answer = ?other, "is_mounted: unexpected answer");
                    false
                }
                Err(e) => {
                    warn!(error = %e, "is_mounted");
                    false
                }
            }
        })
    }

    fn timings(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            match self.call(&Request::Timings, QUICK).await {
                Ok(Response::Timings { text }) => text,
                // An older manager does not know the request: no histograms, not an error.
                Ok(_) => String::new(),
                Err(e) => {
                    warn!(error = %e, "fuse manager timings");
                    String::new()
                }
            }
        })
    }

    fn stats(&self) -> BoxFuture<'_, Vec<(PathBuf, crate::fetch::CountersSnapshot)>> {
        Box::pin(async move {
            match self.call(&Request::Stats, QUICK).await {
                Ok(Response::Stats { mounts }) => mounts,
                Ok(other) => {
                    warn!(answer = ?other, "stats: unexpected answer");
                    Vec::new()
                }
                Err(e) => {
                    warn!(error = %e, "fuse manager stats");
                    Vec::new()
                }
            }
        })
    }
}
