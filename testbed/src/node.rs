//! Nodes: a node is a real containerd (1.6, 1.7 or 2.x) the testbed starts with its own root, state, socket
//! and CRI config in its own directory. `shuttle` uses the stock overlayfs snapshotter;
//! `teleporter` runs its own `teleportd` as containerd's proxy snapshotter. Recycling a node is
//! the seed's "scale the node pool to 0 and back to 1": stop, unmount, wipe, start.

use crate::cri::Cri;
use crate::error::{Error, Result};
use crate::mounts;
use crate::process::{self, Daemon};
use fuse_mount::containerd_config::{self, CriSettings, NodeSettings, ProxySnapshotter, Version};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How a teleporter presents layers (teleportd `--mount-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MountMode {
    /// One FUSE mount per layer, stacked by overlayfs (Teleport prototype-1).
    PerLayer,
    /// One FUSE mount presenting the merged tree (ours).
    Merged,
}

impl MountMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MountMode::PerLayer => "per-layer",
            MountMode::Merged => "merged",
        }
    }
}

impl std::str::FromStr for MountMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "per-layer" => Ok(MountMode::PerLayer),
            "merged" => Ok(MountMode::Merged),
            other => Err(Error::Invalid(format!(
                "unknown mount mode {other:?} (per-layer or merged)"
            ))),
        }
    }
}

/// Which snapshotter the node's CRI uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// Stock overlayfs: standard download + unpack.
    Shuttle,
    /// teleportd as proxy snapshotter, mounting expanded layers.
    Teleporter {
        mount_mode: MountMode,
        /// Registry base URL teleportd asks for `/mount` (e.g. `http://127.0.0.1:5000`).
        registry_url: String,
        teleportd_bin: PathBuf,
        /// Extra teleportd flags (e.g. `--expansion-wait 60`).
        extra_args: Vec<String>,
    },
}

impl NodeKind {
    /// `overlayfs`, `per-layer` or `merged`: the report's mount_mode column.
    pub fn mount_mode_label(&self) -> &'static str {
        match self {
            NodeKind::Shuttle => "overlayfs",
            NodeKind::Teleporter { mount_mode, .. } => mount_mode.as_str(),
        }
    }

    pub fn role(&self) -> &'static str {
        match self {
            NodeKind::Shuttle => "shuttle",
            NodeKind::Teleporter { .. } => "teleporter",
        }
    }
}

/// Everything needed to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// The node's own directory; created if missing, and everything inside belongs to the node.
    pub dir: PathBuf,
    pub kind: NodeKind,
    /// CRI `sandbox_image` (the pause fixture's reference).
    pub sandbox_image: String,
    /// Plain-HTTP registries (`host:port`) the node may pull from.
    pub registries: Vec<String>,
    pub containerd_bin: PathBuf,
    /// CA certificate (PEM) of the registries: set, they are reached over HTTPS trusting it.
    pub registry_ca: Option<PathBuf>,
    /// A proxy snapshotter other than teleportd (name, gRPC socket) the CRI uses (peers).
    pub proxy_snapshotter: Option<(String, PathBuf)>,
    /// Program and arguments containerd is started under (e.g. `nsenter --mount=… --`).
    pub command_prefix: Vec<std::ffi::OsString>,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    /// `Some(bytes)`: at each start and recycle the node's volatile directories move onto a new
    /// loop-backed ext4 of this (sparse) size, made fresh, so no run inherits an aged
    /// filesystem (deleted inodes, fragmentation) from the one before. `None`: plain dirs.
    pub fresh_fs_bytes: Option<u64>,
}

impl NodeConfig {
    pub fn new(name: &str, dir: &Path, kind: NodeKind) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            dir: dir.to_path_buf(),
            kind,
            sandbox_image: String::new(),
            registries: Vec::new(),
            containerd_bin: containerd_bin_from_env(),
            registry_ca: None,
            proxy_snapshotter: None,
            command_prefix: Vec::new(),
            start_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
            fresh_fs_bytes: None,
        }
    }
}

/// Paths inside a node's directory.
#[derive(Debug, Clone)]
pub struct NodePaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub certs: PathBuf,
    pub cni: PathBuf,
    pub opt: PathBuf,
    pub pods: PathBuf,
    pub logs: PathBuf,
    pub teleportd_root: PathBuf,
    pub teleportd_cache: PathBuf,
    pub teleportd_socket: PathBuf,
}

impl NodePaths {
    pub fn new(dir: &Path) -> NodePaths {
        // containerd, runc and teleportd need absolute paths (a relative `--out` such as
        // `out/bench-quick` made containerd exit at start).
        let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let dir = abs.as_path();
        NodePaths {
            dir: dir.to_path_buf(),
            config: dir.join("config.toml"),
            // Short name: unix socket paths are limited to 108 bytes.
            socket: dir.join("c.sock"),
            root: dir.join("root"),
            state: dir.join("state"),
            certs: dir.join("certs.d"),
            cni: dir.join("cni"),
            opt: dir.join("opt"),
            pods: dir.join("pods"),
            logs: dir.join("logs"),
            teleportd_root: dir.join("teleportd/root"),
            teleportd_cache: dir.join("teleportd/cache"),
            teleportd_socket: dir.join("t.sock"),
        }
    }

    /// Directories wiped by a recycle: everything a node learned (images, snapshots, chunks).
    pub fn volatile(&self) -> [&Path; 6] {
        [
            &self.root,
            &self.state,
            &self.opt,
            &self.pods,
            &self.teleportd_root,
            &self.teleportd_cache,
        ]
    }
}

/// containerd config.toml for a node, in the form containerd `version` reads (1.x: config
/// version 2; 2.x: version 3 with the split CRI plugins). Rendered by the one renderer
/// teleportd's `config-snippet` also uses.
pub fn render_config(cfg: &NodeConfig, p: &NodePaths, version: Version) -> String {
    // A peer's proxy snapshotter (SOCI) replaces the kind's default.
    let proxy = match (&cfg.proxy_snapshotter, &cfg.kind) {
        (Some((name, socket)), _) => Some(ProxySnapshotter {
            name: name.clone(),
            socket: socket.clone(),
        }),
        (None, NodeKind::Teleporter { .. }) => {
            Some(ProxySnapshotter::teleportd(&p.teleportd_socket))
        }
        (None, NodeKind::Shuttle) => None,
    };
    let snapshotter = proxy.as_ref().map_or("overlayfs", |x| x.name.as_str());
    let settings = NodeSettings {
        root: p.root.clone(),
        state: p.state.clone(),
        address: p.socket.clone(),
        debug_address: Some(p.dir.join("d.sock")),
        log_level: "info".into(),
        opt_dir: Some(p.opt.clone()),
        disabled_plugins: Vec::new(),
        cri: Some(CriSettings {
            sandbox_image: cfg.sandbox_image.clone(),
            snapshotter: snapshotter.into(),
            registry_config_path: Some(p.certs.clone()),
            // An empty CNI dir: host-network pods need no CNI, and the system's config stays out.
            cni_dir: Some(p.cni.clone()),
            // runc's state under the node's state dir, so a recycle wipes it.
            runc_root: Some(p.state.join("runc")),
            // The system runc: another containerd line's own runc may need a newer glibc.
            runc_binary: which::which("runc").ok(),
            // Sandboxed CI runners (and this machine) lack CAP_SYS_RESOURCE: runc fails a pod
            // asking for a lower oom_score_adj than ours.
            restrict_oom_score_adj: true,
            // Same behaviour with or without AppArmor on the host (Ubuntu CI has it).
            disable_apparmor: true,
            stream_server_local: true,
        }),
        proxy_snapshotter: proxy,
    };
    containerd_config::node_config(version, &settings)
}

/// `TB_CONTAINERD_BIN=DIR`: the containerd under test (`containerd`, `containerd-shim-runc-v2`,
/// `ctr` in DIR, e.g. from `scripts/get-containerd.sh 2.1`) instead of the one in PATH.
pub fn containerd_bin_from_env() -> PathBuf {
    match std::env::var_os("TB_CONTAINERD_BIN") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("containerd"),
        _ => PathBuf::from("containerd"),
    }
}

/// A new sparse image of `bytes` under `dir`, `mkfs.ext4` (inode tables written now, so no
/// lazy init runs in the background during a measurement), loop-mounted at `dir/vol`, and each
/// of `targets` (directories under `dir`) bind-mounted from it. Unmounting everything under
/// `dir` releases it (the loop device goes with its last mount).
pub fn fresh_filesystem(dir: &Path, bytes: u64, targets: &[&Path]) -> Result<()> {
    let vol = dir.join("vol");
    mounts::remove_tree(&vol)?;
    let io = |what: &Path| Error::io(format!("fresh filesystem {}", what.display()));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // A new file name each time: mount(8) reuses a loop device still attached to the same
    // backing file (released lazily after the last unmount), whose stale cache then makes
    // the new filesystem look corrupt (EUCLEAN).
    for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("disk.") && n.ends_with(".img") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let img = dir.join(format!("disk.{stamp}.img"));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(bytes))
        .map_err(io(&img))?;
    let run = |prog: &str, args: &[&std::ffi::OsStr]| -> Result<()> {
        let out = Command::new(prog).args(args).output().map_err(io(&img))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "{prog} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    run(
        "mkfs.ext4",
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-E".as_ref(),
            "lazy_itable_init=0,lazy_journal_init=0".as_ref(),
            img.as_os_str(),
        ],
    )?;
    std::fs::create_dir_all(&vol).map_err(io(&vol))?;
    run(
        "mount",
        &[
            "-o".as_ref(),
            "loop".as_ref(),
            img.as_os_str(),
            vol.as_os_str(),
        ],
    )?;
    for &d in targets {
        let name = d
            .strip_prefix(dir)
            .unwrap_or(d)
            .to_string_lossy()
            .replace('/', "_");
        let src = vol.join(name);
        std::fs::create_dir_all(&src).map_err(io(&src))?;
        std::fs::create_dir_all(d).map_err(io(d))?;
        run(
            "mount",
            &["--bind".as_ref(), src.as_os_str(), d.as_os_str()],
        )?;
    }
    Ok(())
}

/// `hosts.toml` telling containerd to reach `host` over plain HTTP, or over HTTPS trusting
/// `ca` when given.
pub fn render_hosts_toml(host: &str, ca: Option<&Path>) -> String {
    containerd_config::hosts_toml(host, ca)
}

/// A running node. Dropping it stops its processes, kills its shims and unmounts its mounts.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    paths: NodePaths,
    containerd: Option<Daemon>,
    teleportd: Option<Daemon>,
    teleportd_metrics: Option<String>,
    cri: Cri,
}

impl Node {
    /// Write the config and start the node; returns once CRI answers `Version`.
    pub async fn start(cfg: NodeConfig) -> Result<Node> {
        let paths = NodePaths::new(&cfg.dir);
        let cri = Cri::connect(&cfg.name, &paths.socket)?;
        let mut node = Node {
            cfg,
            paths,
            containerd: None,
            teleportd: None,
            teleportd_metrics: None,
            cri,
        };
        node.fresh_filesystem()?;
        node.boot().await?;
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }
    pub fn kind(&self) -> &NodeKind {
        &self.cfg.kind
    }
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }
    pub fn paths(&self) -> &NodePaths {
        &self.paths
    }
    pub fn socket(&self) -> &Path {
        &self.paths.socket
    }
    pub fn cri(&self) -> &Cri {
        &self.cri
    }
    pub fn containerd_pid(&self) -> Option<u32> {
        self.containerd.as_ref().map(Daemon::pid)
    }
    pub fn teleportd_pid(&self) -> Option<u32> {
        self.teleportd.as_ref().map(Daemon::pid)
    }
    /// teleportd's `/metrics` URL on a teleporter.
    pub fn teleportd_metrics_url(&self) -> Option<String> {
        self.teleportd_metrics
            .as_ref()
            .map(|a| format!("http://{a}/metrics"))
    }
    /// cgroup parent for this node's pods (cgroupfs path), unique per node directory.
    pub fn cgroup_parent(&self) -> String {
        let tag = self
            .paths
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("/testbed-{}-{}", self.cfg.name, tag.trim_start_matches('.'))
    }

    /// Allow pulls from another plain-HTTP registry (takes effect on the next pull: containerd
    /// reads `config_path` per request).
    pub fn trust_registry(&mut self, host: &str) -> Result<()> {
        if !self.cfg.registries.iter().any(|h| h == host) {
            self.cfg.registries.push(host.to_string());
        }
        write_hosts(&self.paths.certs, host, self.cfg.registry_ca.as_deref())
    }

    fn write_files(&self) -> Result<()> {
        let p = &self.paths;
        for d in [
            &p.dir, &p.root, &p.state, &p.certs, &p.cni, &p.opt, &p.pods, &p.logs,
        ] {
            std::fs::create_dir_all(d).map_err(Error::io(format!("create {}", d.display())))?;
        }
        let version = Version::detect(&self.cfg.containerd_bin).map_err(|e| Error::Prerequisites {
            missing: format!("a containerd this testbed can configure ({e})"),
            hint: "install containerd 1.6+ (scripts/setup.sh) or pass --containerd-bin DIR / TB_CONTAINERD_BIN=DIR from scripts/get-containerd.sh".into(),
        })?;
        std::fs::write(&p.config, render_config(&self.cfg, p, version))
            .map_err(Error::io(format!("write {}", p.config.display())))?;
        for host in &self.cfg.registries {
            write_hosts(&p.certs, host, self.cfg.registry_ca.as_deref())?;
        }
        Ok(())
    }

    async fn boot(&mut self) -> Result<()> {
        self.write_files()?;
        if let NodeKind::Teleporter {
            mount_mode,
            registry_url,
            teleportd_bin,
            extra_args,
        } = &self.cfg.kind
        {
            let p = &self.paths;
            for d in [&p.teleportd_root, &p.teleportd_cache] {
                std::fs::create_dir_all(d).map_err(Error::io(format!("create {}", d.display())))?;
            }
            let _ = std::fs::remove_file(&p.teleportd_socket);
            let metrics = format!("127.0.0.1:{}", process::free_port()?);
            let mut cmd = Command::new(teleportd_bin);
            cmd.arg("--root")
                .arg(&p.teleportd_root)
                .arg("--address")
                .arg(&p.teleportd_socket)
                .arg("--registry")
                .arg(registry_url)
                // The testbed's registry speaks plain http; teleportd refuses it otherwise.
                .args(
                    registry_url
                        .starts_with("http://")
                        .then_some("--insecure-registry"),
                )
                .arg("--mount-mode")
                .arg(mount_mode.as_str())
                .arg("--cache-dir")
                .arg(&p.teleportd_cache)
                .arg("--metrics-addr")
                .arg(&metrics)
                .args(extra_args);
            let d = Daemon::spawn("teleportd", cmd, &p.logs.join("teleportd.log"))?;
            self.teleportd = Some(d);
            self.teleportd_metrics = Some(metrics);
            self.wait_for_socket_accepting().await?;
        }
        let _ = std::fs::remove_file(&self.paths.socket);
        let mut cmd = match self.cfg.command_prefix.split_first() {
            None => Command::new(&self.cfg.containerd_bin),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.cfg.containerd_bin);
                c
            }
        };
        cmd.arg("--config").arg(&self.paths.config);
        // containerd finds its shim through PATH: the one beside the chosen containerd first.
        if let Some(dir) = self
            .cfg
            .containerd_bin
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let dirs = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path));
            if let Ok(joined) = std::env::join_paths(dirs) {
                cmd.env("PATH", joined);
            }
        }
        let d = Daemon::spawn("containerd", cmd, &self.paths.logs.join("containerd.log"))?;
        tracing::info!(node = %self.cfg.name, pid = d.pid(), socket = %self.paths.socket.display(), "containerd started");
        self.containerd = Some(d);
        self.wait_for_cri().await
    }

    async fn wait_for_socket_accepting(&mut self) -> Result<()> {
        match self.teleportd.as_mut() {
            Some(d) => {
                d.wait_for_socket(
                    &self.paths.teleportd_socket,
                    &self.cfg.name,
                    self.cfg.start_timeout,
                )
                .await
            }
            None => Ok(()),
        }
    }

    async fn wait_for_cri(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.cfg.start_timeout;
        loop {
            if let Some(d) = self.containerd.as_mut() {
                if let Some(status) = d.exited() {
                    return Err(Error::DaemonExited {
                        node: self.cfg.name.clone(),
                        process: "containerd".into(),
                        status,
                        log: d.log_tail(),
                    });
                }
            }
            if self.paths.socket.exists() && self.cri.version().await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    node: self.cfg.name.clone(),
                    what: "CRI Version".into(),
                    timeout: self.cfg.start_timeout,
                    log: self
                        .containerd
                        .as_ref()
                        .map(Daemon::log_tail)
                        .unwrap_or_default(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
        }
    }

    /// Remove every pod through CRI (what a drained node does), bounded in time. Best effort:
    /// the hard stop below cleans up whatever this leaves.
    async fn drain(&self) {
        if self.containerd.is_none() {
            return;
        }
        let work = async {
            if let Ok(ids) = self.cri.list_sandboxes().await {
                for id in ids {
                    if let Err(e) = self.cri.teardown_pod(&id).await {
                        tracing::debug!(node = %self.cfg.name, error = %e, "drain");
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(20), work).await;
    }

    /// Stop containerd (then its shims and their containers), then teleportd, then unmount
    /// everything under the node's directory. Files stay.
    fn halt(&mut self) -> Result<()> {
        if let Some(mut d) = self.containerd.take() {
            d.stop(self.cfg.stop_timeout);
        }
        process::kill_trees(&process::shims_of(&self.paths.socket));
        if let Some(mut d) = self.teleportd.take() {
            d.stop(self.cfg.stop_timeout);
        }
        self.teleportd_metrics = None;
        // teleportd runs its FUSE mounts in a detached fuse manager so they survive a killed
        // teleportd; a clean stop takes it down too, but after a SIGKILL (or a stop timeout) it
        // would be orphaned. Stop it here, before the mounts below are unmounted and wiped.
        if self.paths.teleportd_root.join("fuse-manager.pid").exists() {
            match fuse_mount::daemon::kill_manager(&self.paths.teleportd_root) {
                Ok(c) if c.stopped.is_some() || !c.detached.is_empty() => tracing::info!(
                    node = %self.cfg.name, pid = ?c.stopped, detached = c.detached.len(),
                    "stopped an orphaned fuse manager"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(node = %self.cfg.name, error = %e, "fuse manager cleanup"),
            }
        }
        mounts::unmount_all_under(&self.paths.dir)?;
        remove_cgroups(&self.cgroup_parent());
        Ok(())
    }

    /// Stop the node (pods drained, processes stopped, mounts gone); files stay on disk.
    pub async fn stop(&mut self) -> Result<()> {
        self.drain().await;
        self.halt()
    }

    /// The seed's "scale to 0 and back to 1": stop, unmount, wipe root/state/cache, start.
    pub async fn recycle(&mut self) -> Result<()> {
        self.stop().await?;
        for d in self.paths.volatile() {
            mounts::remove_tree(d)?;
        }
        self.fresh_filesystem()?;
        self.boot().await
    }

    /// With `fresh_fs_bytes`: the volatile directories on a new filesystem
    /// ([`fresh_filesystem`]).
    fn fresh_filesystem(&self) -> Result<()> {
        match self.cfg.fresh_fs_bytes {
            Some(bytes) => fresh_filesystem(&self.paths.dir, bytes, &self.paths.volatile()),
            None => Ok(()),
        }
    }

    /// Stop the node and delete its directory.
    pub async fn destroy(mut self) -> Result<()> {
        self.stop().await?;
        mounts::remove_tree(&self.paths.dir)
    }

    /// Versions of containerd as CRI reports them.
    pub async fn runtime_version(&self) -> Result<String> {
        let v = self.cri.version().await?;
        Ok(format!("{} {}", v.runtime_name, v.runtime_version))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            tracing::warn!(node = %self.cfg.name, error = %e, "cleanup on drop");
        }
    }
}

fn write_hosts(certs: &Path, host: &str, ca: Option<&Path>) -> Result<()> {
    let dir = certs.join(host);
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
    let file = dir.join("hosts.toml");
    std::fs::write(&file, render_hosts_toml(host, ca))
        .map_err(Error::io(format!("write {}", file.display())))
}

/// Remove the node's pod cgroups in every hierarchy (cgroup v1 controllers and v2), deepest
/// first. rmdir only succeeds on empty cgroups, so nothing live is touched.
fn remove_cgroups(parent: &str) {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let mut roots: Vec<PathBuf> = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
    }
    for root in roots {
        let top = root.join(rel);
        if top.is_dir() {
            rmdir_deep(&top);
        }
    }
}

fn rmdir_deep(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_deep(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teleporter_config_has_proxy_plugin_and_annotations() {
        let dir = Path::new("/tmp/tb/teleporter");
        let mut cfg = NodeConfig::new(
            "teleporter",
            dir,
            NodeKind::Teleporter {
                mount_mode: MountMode::Merged,
                registry_url: "http://127.0.0.1:5000".into(),
                teleportd_bin: "teleportd".into(),
                extra_args: Vec::new(),
            },
        );
        cfg.sandbox_image = "127.0.0.1:5000/pause:tb".into();
        let text = render_config(&cfg, &NodePaths::new(dir), Version::V1_6);
        assert!(text.contains("snapshotter = \"teleportd\""));
        assert!(text.contains("disable_snapshot_annotations = false"));
        assert!(text.contains("[proxy_plugins.teleportd]"));
        assert!(text.contains("address = \"/tmp/tb/teleporter/t.sock\""));
        // A relative node dir (e.g. `--out out/bench-quick`) still gives absolute paths.
        let rel = NodePaths::new(Path::new("out/n"));
        assert!(
            rel.socket.is_absolute() && rel.root.is_absolute(),
            "{rel:?}"
        );
        assert!(rel.teleportd_root.ends_with("out/n/teleportd/root"));
        assert!(text.contains("sandbox_image = \"127.0.0.1:5000/pause:tb\""));
        assert!(text.contains("config_path = \"/tmp/tb/teleporter/certs.d\""));
    }

    #[test]
    fn containerd_2_config_is_version_3() {
        let dir = Path::new("/tmp/tb/shuttle");
        let cfg = NodeConfig::new("shuttle", dir, NodeKind::Shuttle);
        let text = render_config(&cfg, &NodePaths::new(dir), Version::V2_1);
        assert!(text.starts_with("version = 3"), "{text}");
        assert!(
            text.contains("[plugins.\"io.containerd.cri.v1.images\"]"),
            "{text}"
        );
        assert!(
            !text.contains("io.containerd.grpc.v1.cri\".containerd"),
            "{text}"
        );
    }

    #[test]
    fn shuttle_config_uses_overlayfs() {
        let dir = Path::new("/tmp/tb/shuttle");
        let cfg = NodeConfig::new("shuttle", dir, NodeKind::Shuttle);
        let text = render_config(&cfg, &NodePaths::new(dir), Version::V1_6);
        assert!(text.contains("snapshotter = \"overlayfs\""));
        assert!(!text.contains("proxy_plugins"));
    }

    #[test]
    fn peer_proxy_snapshotter_replaces_the_default() {
        let dir = Path::new("/tmp/tb/soci");
        let mut cfg = NodeConfig::new("soci", dir, NodeKind::Shuttle);
        cfg.proxy_snapshotter = Some(("soci".into(), PathBuf::from("/tmp/tb/soci/s.sock")));
        let text = render_config(&cfg, &NodePaths::new(dir), Version::V1_6);
        assert!(text.contains("snapshotter = \"soci\""));
        assert!(text.contains("disable_snapshot_annotations = false"));
        assert!(text.contains("[proxy_plugins.soci]"));
        assert!(text.contains("address = \"/tmp/tb/soci/s.sock\""));
        assert!(!text.contains("teleportd"));
    }

    #[test]
    fn hosts_toml_is_plain_http() {
        let t = render_hosts_toml("127.0.0.1:5000", None);
        assert!(t.starts_with("server = \"http://127.0.0.1:5000\""));
        assert!(t.contains("[host.\"http://127.0.0.1:5000\"]"));
        let t = render_hosts_toml("127.0.0.1:5000", Some(Path::new("/n/ca.crt")));
        assert!(t.starts_with("server = \"https://127.0.0.1:5000\""));
        assert!(t.contains("ca = \"/n/ca.crt\""));
        assert!(!t.contains("skip_verify"));
    }
}
