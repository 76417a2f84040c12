//! Daemon processes the testbed starts (containerd, teleportd): spawn with a log file, stop
//! exactly that PID (SIGTERM, deadline, SIGKILL), and find a node's leftover shims and their
//! container processes through `/proc`.

use crate::error::{Error, Result};
use nix::sys::signal::Signal;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A daemon child process with its log file.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Spawn `cmd` with stdout and stderr appended to `log`, in its own process group so a
    /// terminal Ctrl-C reaches only the testbed, which then stops its daemons in order.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Daemon> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(Error::io(format!("open {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(Error::io(format!("dup {}", log.display())))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(Error::io(format!("spawn {name} ({:?})", cmd.get_program())))?;
        tracing::debug!(name, pid = child.id(), "spawned");
        Ok(Daemon {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` when the process has already exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("wait failed: {e}")),
        }
    }

    /// Polls until `socket` accepts a connection; fails with the log's tail if the daemon exits
    /// first or `timeout` passes (`node` names it in the error).
    pub async fn wait_for_socket(
        &mut self,
        socket: &Path,
        node: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while tokio::net::UnixStream::connect(socket).await.is_err() {
            if let Some(status) = self.exited() {
                return Err(Error::DaemonExited {
                    node: node.to_string(),
                    process: self.name.clone(),
                    status,
                    log: self.log_tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    node: node.to_string(),
                    what: format!("{} socket", self.name),
                    timeout,
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
        }
        Ok(())
    }

    /// Last lines of the log, formatted for an error message.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 15)
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL and reap. Only this PID is signalled.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        signal(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20)); // poll interval, not a sync point
        }
        tracing::warn!(name = %self.name, pid = self.pid(), "did not stop on SIGTERM, killing");
        signal(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            format!(
                "\n--- last lines of {} ---\n{}",
                path.display(),
                all[start..].join("\n")
            )
        }
        Err(_) => String::new(),
    }
}

fn signal(pid: u32, sig: Signal) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    // A PID we own (or one found by exact cmdline match); an already-gone process is fine.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces: fields after the last ')' are fixed.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Shim processes serving the containerd whose socket is `address` (matched on the shim's
/// `-address` argument, so other nodes' and the system's shims are never touched).
pub fn shims_of(address: &Path) -> Vec<u32> {
    let want = address.to_string_lossy();
    all_pids()
        .into_iter()
        .filter(|pid| {
            let Some(args) = cmdline(*pid) else {
                return false;
            };
            let is_shim = args.first().is_some_and(|a| {
                a.rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with("containerd-shim"))
            });
            is_shim
                && args
                    .windows(2)
                    .any(|w| w[0] == "-address" && w[1] == want.as_ref())
        })
        .collect()
}

/// Kill each shim with everything below it (its containers), children first.
pub fn kill_trees(roots: &[u32]) {
    if roots.is_empty() {
        return;
    }
    let parents: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, ppid(p)?)))
        .collect();
    let mut order = Vec::new();
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(p) = stack.pop() {
        order.push(p);
        stack.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
    }
    for pid in order.iter().rev() {
        signal(*pid, Signal::SIGKILL);
    }
    // Wait (bounded) until they are gone so their mounts can be released.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && order
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p))
    {
        std::thread::sleep(Duration::from_millis(20)); // poll interval
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// A free TCP port on loopback (bind to :0, read, release). Racy by nature; used only for
/// debug/metrics endpoints that tolerate a retry.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(Error::io("bind 127.0.0.1:0"))?;
    Ok(l.local_addr().map_err(Error::io("local_addr"))?.port())
}

/// Run a command to completion and return its stdout (for version probes).
pub fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
