//! A private containerd for measuring its unpack: own root, state, socket and config in a temp
//! dir, CRI plugin off, overlayfs snapshotter. [`Containerd`]'s `Drop` unmounts what is mounted
//! under its dir and stops exactly the process it started (by PID), even when a run fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{run, show, Error, Result};

/// The containerd namespace the benches use.
pub const NAMESPACE: &str = "bench";

/// A running private containerd.
pub struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    ctr: PathBuf,
    pub socket: PathBuf,
    pub root: PathBuf,
}

impl Containerd {
    /// Start `containerd_bin` with a fresh root/state under `base` and wait (≤ 30 s) until it
    /// answers `ctr version`.
    pub fn start(base: &Path, containerd_bin: &Path, ctr_bin: &Path) -> Result<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir_in(base)
            .map_err(Error::io(base))?;
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        let opt = dir.path().join("opt");
        let toml = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = "{socket}.debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = root.display(),
            state = state.display(),
            socket = socket.display(),
            opt = opt.display(),
        );
        std::fs::write(&config, toml).map_err(Error::io(&config))?;
        let log_path = dir.path().join("containerd.log");
        let log = std::fs::File::create(&log_path).map_err(Error::io(&log_path))?;
        let log2 = log.try_clone().map_err(Error::io(&log_path))?;
        let mut cmd = Command::new(containerd_bin);
        cmd.arg("--config").arg(&config);
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let shown = show(&cmd);
        let child = cmd
            .spawn()
            .map_err(|source| Error::Spawn { cmd: shown, source })?;
        let mut c = Containerd {
            child,
            dir,
            ctr: ctr_bin.to_path_buf(),
            socket,
            root,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: String = tail.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                return Err(Error::Invalid(format!(
                    "containerd exited at start ({status}); log tail (newest first):\n{tail}"
                )));
            }
            if c.socket.exists()
                && c.ctr()
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            {
                return Ok(c);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "containerd did not answer on {} within 30 s (log: {})",
                    c.socket.display(),
                    log_path.display()
                )));
            }
            // Polling a condition with a deadline, not waiting for time to pass.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ctr -a SOCKET -n bench`.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new(&self.ctr);
        c.arg("-a").arg(&self.socket).arg("-n").arg(NAMESPACE);
        c
    }

    /// Run `ctr ... args`; stdout on success.
    pub fn ctr_run(&self, args: &[&str]) -> Result<String> {
        let mut c = self.ctr();
        c.args(args);
        Ok(String::from_utf8_lossy(&run(c)?.stdout).into_owned())
    }

    /// The content store's blob directory (what unpack reads).
    pub fn content_blobs(&self) -> PathBuf {
        self.root
            .join("io.containerd.content.v1.content/blobs/sha256")
    }

    /// A scratch directory inside this instance's temp dir (cleaned up with it).
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).map_err(Error::io(&p))?;
        Ok(p)
    }

    /// containerd's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        unmount_under(self.dir.path());
        // SIGTERM by PID, then SIGKILL if it does not exit within 10 s.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        unmount_under(self.dir.path());
        // The TempDir field removes the directory after this.
    }
}

/// Unmount every mount point at or below `dir`, deepest first (best effort: used in cleanup).
pub fn unmount_under(dir: &Path) {
    let points: Vec<PathBuf> = fuse_mount::mountinfo::under(dir)
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    for p in points {
        let ok = Command::new("umount")
            .arg(&p)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            tracing::warn!(mount = %p.display(), "umount failed, detaching lazily");
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
    }
}
