//! Guards for the processes a test starts — teleportd, a private containerd (and the shims it
//! leaves), the fuse manager — stopped by PID on drop, never by name; and what tests measure of
//! a process: peak and current RSS, open descriptors, who mentions a directory.

use std::fs::{self, File};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fuse_mount::containerd_config::{self, CriSettings, NodeSettings, Version};

use crate::bins::{bin, containerd_bin, path_with_containerd_dir};
use crate::wait::{tail, wait_for};

static NEXT_NS: AtomicU64 = AtomicU64::new(0);

pub fn sigterm_then_kill(child: &mut Child, name: &str) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{name} ignored SIGTERM; killing pid {}", child.id());
    let _ = child.kill();
    let _ = child.wait();
}

/// A teleportd process on `socket` with state under `root`.
pub struct Teleportd {
    child: Option<Child>,
    pub socket: PathBuf,
    pub root: PathBuf,
    log: PathBuf,
}

impl Teleportd {
    pub fn start(root: &Path, socket: &Path, log: &Path) -> Teleportd {
        Self::start_with(root, socket, log, &[])
    }

    pub fn start_with(root: &Path, socket: &Path, log: &Path, extra: &[&str]) -> Teleportd {
        let mut cmd = Command::new(bin("teleportd"));
        cmd.arg("--root")
            .arg(root)
            .arg("--address")
            .arg(socket)
            // The tests' registries speak plain http.
            .arg("--insecure-registry")
            .args(extra);
        Self::spawn(cmd, root, socket, log)
    }

    /// Runs `cmd` (a teleportd command line) logging to `log`; waits until `socket` accepts.
    pub fn spawn(cmd: Command, root: &Path, socket: &Path, log: &Path) -> Teleportd {
        let mut t = Self::launch(cmd, root, socket, log);
        wait_for("teleportd socket", Duration::from_secs(20), || {
            if let Some(Ok(Some(st))) = t.child.as_mut().map(|c| c.try_wait()) {
                panic!("teleportd exited early with {st}: {}", t.log_text());
            }
            UnixStream::connect(socket).ok()
        });
        t
    }

    /// [`Teleportd::spawn`] without waiting for the socket: for tests of a teleportd that is
    /// still starting. Stopped (SIGTERM, then SIGKILL) on drop like any other.
    pub fn launch(mut cmd: Command, root: &Path, socket: &Path, log: &Path) -> Teleportd {
        let logf = File::options().create(true).append(true).open(log).unwrap();
        let child = cmd
            .env("RUST_LOG", "fuse_mount=debug,info")
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        Teleportd {
            child: Some(child),
            socket: socket.to_owned(),
            root: root.to_owned(),
            log: log.to_owned(),
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL and reap: the crash path (nothing of teleportd's own shutdown runs).
    pub fn kill(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap()
    }

    /// SIGTERM and wait: the graceful path.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        wait_for("teleportd exit", Duration::from_secs(15), || {
            c.try_wait().unwrap()
        })
    }
}

impl Drop for Teleportd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigterm_then_kill(&mut c, "teleportd");
        }
    }
}

/// A private containerd under `dir` whose only extra snapshotter is teleportd on `snap_socket`.
pub struct Containerd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub address: PathBuf,
    pub namespace: String,
}

impl Containerd {
    pub fn start(dir: &Path, snap_socket: &Path) -> Containerd {
        Self::start_with(dir, snap_socket, None)
    }

    /// With `cri_registry = Some(host:port)`: the CRI plugin on, teleportd its snapshotter with
    /// snapshot annotations (the labels the remote path reads), and a plain-HTTP mirror for host.
    pub fn start_with(dir: &Path, snap_socket: &Path, cri_registry: Option<&str>) -> Containerd {
        Self::launch(dir, Some(snap_socket), cri_registry)
    }

    /// A containerd with its stock snapshotters only (no teleportd), CRI off.
    pub fn plain(dir: &Path) -> Containerd {
        Self::launch(dir, None, None)
    }

    fn launch(dir: &Path, snap_socket: Option<&Path>, cri_registry: Option<&str>) -> Containerd {
        fs::create_dir_all(dir).unwrap();
        let address = dir.join("containerd.sock");
        let version = Version::detect(&containerd_bin("containerd")).unwrap();
        let mut disabled: Vec<String> = [
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper",
        ]
        .map(String::from)
        .to_vec();
        if cri_registry.is_none() {
            disabled.push("io.containerd.grpc.v1.cri".into());
        }
        if let Some(h) = cri_registry {
            let d = dir.join("certs.d").join(h);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("hosts.toml"), containerd_config::hosts_toml(h, None)).unwrap();
        }
        let config = containerd_config::node_config(
            version,
            &NodeSettings {
                root: dir.join("root"),
                state: dir.join("state"),
                address: address.clone(),
                log_level: "debug".into(),
                disabled_plugins: disabled,
                // CRI with teleportd as its snapshotter, snapshot annotations on (the labels
                // the remote path reads), the registry over plain HTTP (hosts.toml).
                cri: cri_registry.map(|_| CriSettings {
                    sandbox_image: "registry.invalid/pause:3.9".into(),
                    snapshotter: match snap_socket {
                        Some(_) => containerd_config::SNAPSHOTTER.into(),
                        None => "overlayfs".into(),
                    },
                    registry_config_path: Some(dir.join("certs.d")),
                    cni_dir: Some(dir.join("cni")),
                    ..Default::default()
                }),
                proxy_snapshotter: snap_socket.map(containerd_config::ProxySnapshotter::teleportd),
                ..Default::default()
            },
        );
        fs::write(dir.join("config.toml"), config).unwrap();
        let log = File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new(containerd_bin("containerd"))
            .env("PATH", path_with_containerd_dir())
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut c = Containerd {
            child: Some(child),
            dir: dir.to_owned(),
            address,
            // Unique per instance: runc state dirs are keyed by namespace.
            namespace: format!(
                "tpe2e-{}",
                u64::from(std::process::id()) * 1000 + NEXT_NS.fetch_add(1, Ordering::SeqCst)
            ),
        };
        wait_for("containerd", Duration::from_secs(30), || {
            if let Some(Ok(Some(st))) = c.child.as_mut().map(|c| c.try_wait()) {
                panic!("containerd exited early with {st}: {}", c.log_text());
            }
            c.ctr_raw(&["version"]).status.success().then_some(())
        });
        // The server is the containerd under test (TB_CONTAINERD_BIN honoured end to end).
        let out = c.ctr(&["version"]);
        let server = out
            .split("Server:")
            .nth(1)
            .and_then(|s| s.lines().find_map(|l| l.trim().strip_prefix("Version:")))
            .map(str::trim)
            .unwrap_or_default();
        assert_eq!(
            server.parse::<Version>().ok(),
            Some(version),
            "ctr version: {out}"
        );
        c
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` against this containerd and namespace, to add arguments to.
    pub fn ctr_command(&self) -> Command {
        let mut c = Command::new(containerd_bin("ctr"));
        c.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace)
            .stdin(Stdio::null());
        c
    }

    pub fn ctr_raw(&self, args: &[&str]) -> Output {
        self.ctr_command().args(args).output().unwrap()
    }

    /// Runs ctr and returns stdout; panics with stderr and the containerd log on failure.
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = self.ctr_raw(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\nstdout: {}\n--- containerd log tail ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            tail(&self.log_text(), 40)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Shims outlive containerd: find ours by our unique socket path in their command line.
    fn our_shims(&self) -> Vec<i32> {
        let needle = self.address.display().to_string();
        let mut pids = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("containerd-shim") && cmd.contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Best effort: tasks left by a failed test.
        let tasks = self.ctr_raw(&["tasks", "ls", "-q"]);
        for t in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr_raw(&["tasks", "kill", "-s", "SIGKILL", t]);
            let _ = self.ctr_raw(&["tasks", "rm", "-f", t]);
        }
        let shims = self.our_shims();
        if let Some(mut c) = self.child.take() {
            sigterm_then_kill(&mut c, "containerd");
        }
        for pid in shims {
            // SAFETY: pids of shims our containerd started (matched by our socket path).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Stops the fuse manager of a teleportd root (and detaches its mounts) on drop: what a failed
/// test leaves must not outlive it.
pub struct ManagerGuard(pub PathBuf);

impl Drop for ManagerGuard {
    fn drop(&mut self) {
        if let Ok(c) = fuse_mount::daemon::kill_manager(&self.0) {
            if c.stopped.is_some() || !c.detached.is_empty() {
                eprintln!("cleaned up after the test: {c:?}");
            }
        }
    }
}

/// Whether `pid` has a handler installed for `signal` (its `SigCgt` mask in `/proc/PID/status`):
/// a daemon that is ready but does not catch SIGTERM dies by it instead of stopping cleanly.
pub fn catches_signal(pid: u32, signal: i32) -> bool {
    let st = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let mask = st
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no SigCgt in /proc/{pid}/status"));
    (1..=64).contains(&signal) && mask & (1 << (signal - 1)) != 0
}

/// A field of `/proc/PID/status` in KiB (`VmHWM`, `VmRSS`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let st = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    st.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Peak resident set of a live process since it started (`VmHWM`), KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM")
}

/// Current resident set (`VmRSS`), KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// Open file descriptors of a live process.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

/// Descriptors of `pid` that name a file or directory (not a socket, pipe or anonymous inode):
/// what a server holding files open per session or request would grow.
pub fn file_fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|t| t.is_absolute()))
        .count()
}

/// Processes other than this one whose command line mentions `needle` (a node's unique dir).
pub fn processes_mentioning(needle: &Path) -> Vec<(u32, String)> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmd.contains(&needle).then_some((pid, cmd))
        })
        .collect()
}
