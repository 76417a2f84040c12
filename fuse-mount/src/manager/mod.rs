//! The fuse manager: a long-lived process (`teleportd fuse-manager`) that owns every FUSE
//! session of a teleportd root, so a teleportd killed even by SIGKILL does not abort the FUSE
//! connections running containers read through. teleportd talks to it over a unix socket
//! (`ROOT/fuse-manager.sock`, [`proto`]) through [`client::ManagerClient`], which implements
//! [`crate::remote::LayerMounter`]; [`server`] hosts [`layers::FuseLayers`], the
//! FUSE mounts themselves. Everything here but [`client`] runs only in the manager process.
//!
//! Files under the root: `fuse-manager.sock`, `fuse-manager.pid` (written by the manager),
//! `fuse-manager.log` (its stdout/stderr).

pub mod client;
pub mod config;
pub mod layers;
pub mod proto;
pub mod server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// The subcommand of the teleportd binary that runs a manager.
pub const SUBCOMMAND: &str = "fuse-manager";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fuse manager protocol: {0}")]
    Protocol(#[from] serde_json::Error),
    #[error("fuse manager answered {0:?} unexpectedly")]
    Unexpected(String),
    #[error("fuse manager: {0}")]
    Server(String),
    #[error("fuse manager at {socket:?} did not answer within {timeout:?}")]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("fuse manager exited before serving ({status}); see {log:?}")]
    Exited { status: String, log: PathBuf },
    #[error("fuse manager pid {0} did not exit")]
    Stuck(u32),
    #[error("another fuse manager already serves {0:?}")]
    AlreadyRunning(PathBuf),
    #[error(transparent)]
    Fetch(#[from] crate::fetch::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

pub fn socket_path(root: &Path) -> PathBuf {
    root.join("fuse-manager.sock")
}

pub fn pid_path(root: &Path) -> PathBuf {
    root.join("fuse-manager.pid")
}

pub fn log_path(root: &Path) -> PathBuf {
    root.join("fuse-manager.log")
}

/// True while `pid` runs. A zombie counts as gone: an orphaned manager's new parent (PID 1 of
/// a container or VM) may never reap it.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Polls until `pid` is gone or `timeout` passes; true when gone.
pub(crate) fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while pid_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn same_path(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    a == b || canon(a) == canon(b)
}

/// True when `pid`'s command line is `teleportd … --root ROOT … fuse-manager`: a pid file is
/// outside input, and the pid may have been reused by an unrelated process.
pub fn is_manager_for(pid: u32, root: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let is_teleportd = args
        .first()
        .and_then(|a0| Path::new(a0).file_name())
        .is_some_and(|n| n == "teleportd");
    let root_arg = args
        .windows(2)
        .find(|w| w[0] == "--root")
        .map(|w| PathBuf::from(&w[1]));
    is_teleportd
        && args.iter().any(|a| a == SUBCOMMAND)
        && root_arg.is_some_and(|r| same_path(&r, root))
}

/// The pid in `ROOT/fuse-manager.pid`, if the file holds one.
pub fn read_pid(root: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_path(root))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub use crate::mountinfo::MountEntry;

/// Mounts strictly below `root` in this mount namespace, deepest first (the order to detach).
pub fn mounts_below(root: &Path) -> Vec<MountEntry> {
    // Mount points in mountinfo are canonical paths.
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    let mut out: Vec<MountEntry> = crate::mountinfo::under(&root)
        .into_iter()
        .filter(|m| m.mount_point != root)
        .collect();
    out.dedup();
    out
}

/// Every lower directory of the overlayfs mounts in this mount namespace (containerd's shim
/// mounts a container's rootfs in the host's). Overlayfs keeps private clones of its lowers,
/// so a FUSE lower under a running container unmounts without EBUSY: this is how such a use
/// is seen.
pub fn overlay_lowers() -> std::collections::HashSet<PathBuf> {
    crate::mountinfo::read()
        .unwrap_or_default()
        .iter()
        .flat_map(crate::mountinfo::overlay_lowers)
        .collect()
}

/// What [`kill_manager`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleanup {
    /// The manager pid that was stopped.
    pub stopped: Option<u32>,
    /// Mount points detached afterwards.
    pub detached: Vec<PathBuf>,
}

/// Asks the manager of `root`, over its socket, to detach everything and exit (blocking, at
/// most `timeout`); true when it agreed.
fn force_shutdown(root: &Path, timeout: Duration) -> bool {
    use std::io::{BufRead, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket_path(root)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let Ok(mut req) = serde_json::to_vec(&proto::Request::Shutdown { force: true }) else {
        return false;
    };
    req.push(b'\n');
    if s.write_all(&req).is_err() {
        return false;
    }
    let mut line = String::new();
    let _ = std::io::BufReader::new(s).read_line(&mut line);
    matches!(
        serde_json::from_str::<proto::Response>(&line),
        Ok(proto::Response::Ok)
    )
}

/// Stops the fuse manager of `root`: first a forced shutdown request over its socket, then (the
/// pid in `ROOT/fuse-manager.pid`, only if its command
/// line is a teleportd fuse manager for this root): SIGTERM (it unmounts what it serves), then
/// SIGKILL if it has not exited within `grace`. Then detaches (lazily) every mount left below
/// `root` and removes the pid and socket files. Blocking; safe to call when nothing runs.
pub fn kill_manager(root: &Path, grace: Duration) -> Result<Cleanup> {
    let mut done = Cleanup::default();
    if let Some(pid) = read_pid(root).filter(|&p| p > 1 && is_manager_for(p, root)) {
        // A manager refuses SIGTERM while its mounts are in use: this is the forced stop.
        if force_shutdown(root, grace) && wait_gone(pid, grace) {
            info!(pid, root = %root.display(), "fuse manager stopped (forced)");
            done.stopped = Some(pid);
        }
    }
    if let Some(pid) = read_pid(root).filter(|&p| p > 1 && is_manager_for(p, root)) {
        let Ok(raw) = i32::try_from(pid) else {
            return Err(Error::Stuck(pid));
        };
        let raw = nix::unistd::Pid::from_raw(raw);
        // Errors (the process already gone) are judged by wait_gone below.
        let kill = |sig| {
            let _ = nix::sys::signal::kill(raw, sig);
        };
        info!(pid, root = %root.display(), "stopping fuse manager");
        // The pid was checked to be a manager for this root just above.
        kill(nix::sys::signal::Signal::SIGTERM);
        if !wait_gone(pid, grace) {
            warn!(pid, "fuse manager ignored SIGTERM; killing it");
            kill(nix::sys::signal::Signal::SIGKILL);
            if !wait_gone(pid, Duration::from_secs(10)) {
                return Err(Error::Stuck(pid));
            }
        }
        done.stopped = Some(pid);
    }
    for m in mounts_below(root) {
        match crate::fs::detach(&m.mount_point) {
            Ok(()) => {
                info!(mountpoint = %m.mount_point.display(), fstype = %m.fs_type, "detached leftover mount");
                done.detached.push(m.mount_point);
            }
            Err(e) => {
                warn!(mountpoint = %m.mount_point.display(), error = %e, "detaching leftover mount")
            }
        }
    }
    for f in [pid_path(root), socket_path(root)] {
        if let Err(e) = std::fs::remove_file(&f) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(file = %f.display(), error = %e, "removing manager file");
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_a_manager() {
        assert!(pid_alive(std::process::id()));
        assert!(!is_manager_for(std::process::id(), Path::new("/")));
        assert!(!pid_alive(u32::MAX));
    }
}
