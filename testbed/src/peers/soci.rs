//! A SOCI node: containerd 1.6 with `soci-snapshotter-grpc` as its proxy snapshotter, and
//! [`build_index`], which builds an image's SOCI index (`soci create`) on a helper containerd
//! and pushes it (`soci push`) to the registry, where the node finds it by the referrers API.
//!
//! SOCI 0.4 writes to `/var/lib/soci-snapshotter-grpc` whatever `-root` says, so every SOCI
//! process runs in a private mount namespace ([`MountNs`]) whose `/var/lib` is a directory of
//! the node's own; the node's containerd (and so its shims and runc) runs in the same namespace,
//! because SOCI's FUSE mounts exist only there. SOCI fetches over HTTPS only: the registry must
//! serve TLS, and SOCI trusts its CA through `SSL_CERT_FILE`.
//!
//! SOCI 0.4 (like containerd's docker resolver) speaks plain HTTP to `localhost` and loopback IP
//! literals, while its index/zTOC fetches are always HTTPS; so the registry is named by a host
//! name ([`REGISTRY_HOST`]) that a node-private hosts file ([`write_hosts_file`], bind-mounted
//! over `/etc/hosts` inside the namespace) resolves to a loopback address. The machine's
//! `/etc/hosts` is never touched, and no traffic leaves the loopback range.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::mounts;
use crate::node::{self, Node, NodeConfig, NodeKind, NodePaths};
use crate::process::Daemon;

/// The artifact type of a SOCI 0.4 index (its config's media type), as the referrers API lists
/// it.
pub const INDEX_ARTIFACT_TYPE: &str = "application/vnd.amazon.soci.index.v1+json";

/// The snapshotter name containerd knows SOCI by.
pub const SNAPSHOTTER: &str = "soci";

/// Where `scripts/get-peers.sh soci` puts the binaries (relative to the workspace root).
pub const PEER_DIR: &str = "out/peers/soci";

/// The registry's host name for SOCI and the containerds around it: not `localhost` nor an IP
/// literal, so both treat it as an ordinary HTTPS registry; [`write_hosts_file`] maps it to a
/// loopback address. The registry's certificate must carry it (`--tls-name`).
pub const REGISTRY_HOST: &str = "registry.testbed.internal";

/// Write `dest`: a copy of the machine's `/etc/hosts` plus `ip name`, for [`MountNs::create`].
pub fn write_hosts_file(dest: &Path, name: &str, ip: std::net::IpAddr) -> Result<()> {
    if !ip.is_loopback() {
        return Err(Error::Invalid(format!(
            "{name} must resolve to a loopback address, not {ip}"
        )));
    }
    let mut hosts = std::fs::read_to_string("/etc/hosts").map_err(Error::io("read /etc/hosts"))?;
    if !hosts.is_empty() && !hosts.ends_with('\n') {
        hosts.push('\n');
    }
    hosts.push_str(&format!("{ip} {name}\n"));
    std::fs::write(dest, hosts).map_err(Error::io(format!("write {}", dest.display())))
}

/// The SOCI binaries: `soci` (the CLI) and `soci-snapshotter-grpc`.
#[derive(Debug, Clone)]
pub struct SociBins {
    pub soci: PathBuf,
    pub snapshotter: PathBuf,
}

impl SociBins {
    /// The binaries unpacked by `get-peers.sh` under `peer_dir` (`<peer_dir>/usr/bin/...`).
    pub fn in_peer_dir(peer_dir: &Path) -> Result<SociBins> {
        // Absolute: they run through `nsenter --mount`, which starts them at the namespace's `/`.
        let peer_dir = std::path::absolute(peer_dir)
            .map_err(Error::io(format!("resolve {}", peer_dir.display())))?;
        let bin = peer_dir.join("usr/bin");
        let b = SociBins {
            soci: bin.join("soci"),
            snapshotter: bin.join("soci-snapshotter-grpc"),
        };
        for p in [&b.soci, &b.snapshotter] {
            if !p.is_file() {
                return Err(Error::Prerequisites {
                    missing: p.display().to_string(),
                    hint: "run `bash scripts/get-peers.sh soci`".into(),
                });
            }
        }
        Ok(b)
    }
}

/// A persistent private mount namespace whose `/var/lib` is `var_lib` (and, if given, whose
/// `/etc/hosts` is a node-private hosts file). It is held by a bind
/// mount of its nsfs file (`<dir>/mnt`) on a private bind mount of `dir`; processes join it
/// with [`MountNs::prefix`]. Dropping it unmounts both; the namespace goes away with its last
/// process.
#[derive(Debug)]
pub struct MountNs {
    dir: PathBuf,
    file: PathBuf,
}

fn run_checked(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(Error::io(format!("{what}: spawn {:?}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`run_checked`] for the long ones (`soci create` reads every layer): off the async workers.
async fn run_async(what: &str, cmd: Command) -> Result<String> {
    let mut cmd = tokio::process::Command::from(cmd);
    let out = cmd
        .output()
        .await
        .map_err(Error::io(format!("{what}: spawn")))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl MountNs {
    pub fn create(dir: &Path, var_lib: &Path, hosts: Option<&Path>) -> Result<MountNs> {
        for d in [dir, var_lib] {
            std::fs::create_dir_all(d).map_err(Error::io(format!("create {}", d.display())))?;
        }
        let file = dir.join("mnt");
        let ns = MountNs {
            dir: dir.to_path_buf(),
            file: file.clone(),
        };
        // `unshare --mount=FILE` refuses a FILE on a shared mount (it would propagate).
        run_checked(
            "bind ns dir",
            Command::new("mount").arg("--bind").arg(dir).arg(dir),
        )?;
        run_checked(
            "make ns dir private",
            Command::new("mount").arg("--make-private").arg(dir),
        )?;
        std::fs::write(&file, b"").map_err(Error::io(format!("create {}", file.display())))?;
        run_checked(
            "create the mount namespace",
            Command::new("unshare")
                .arg(format!("--mount={}", file.display()))
                .args(["--propagation", "private", "--", "mount", "--bind"])
                .arg(var_lib)
                .arg("/var/lib"),
        )?;
        if let Some(h) = hosts {
            run_checked(
                "bind the hosts file",
                ns.command(Path::new("mount"))
                    .arg("--bind")
                    .arg(h)
                    .arg("/etc/hosts"),
            )?;
        }
        Ok(ns)
    }

    /// `nsenter --mount=<file> --`: put in front of a command to run it inside.
    pub fn prefix(&self) -> Vec<OsString> {
        vec![
            "nsenter".into(),
            format!("--mount={}", self.file.display()).into(),
            "--".into(),
        ]
    }

    fn command(&self, program: &Path) -> Command {
        let p = self.prefix();
        let mut c = Command::new(&p[0]);
        c.args(&p[1..]).arg(program);
        c
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        if let Err(e) = mounts::unmount_all_under(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "mount namespace cleanup");
        }
    }
}

/// Everything needed to start a SOCI node.
#[derive(Debug, Clone)]
pub struct SociConfig {
    pub name: String,
    /// The node's own directory (containerd in `containerd/`, SOCI in `soci/`).
    pub dir: PathBuf,
    pub bins: SociBins,
    /// `host:port` of the TLS registry (host: [`REGISTRY_HOST`], resolved through `hosts`).
    pub registry: String,
    /// Bind-mounted over `/etc/hosts` in the node's namespace ([`write_hosts_file`]).
    pub hosts: Option<PathBuf>,
    /// The registry's CA certificate (PEM).
    pub registry_ca: PathBuf,
    /// CRI `sandbox_image`.
    pub sandbox_image: String,
    pub containerd_bin: PathBuf,
    pub start_timeout: Duration,
    /// SOCI's background fetch of whole layers after a start (its default: on).
    pub background_fetch: bool,
    /// As the bed's own nodes ([`NodeConfig::fresh_fs_bytes`]): at each start and recycle,
    /// SOCI's root and `/var/lib` and containerd's volatile directories move onto a new
    /// loop-backed ext4 of this size. `None`: plain directories.
    pub fresh_fs_bytes: Option<u64>,
}

impl SociConfig {
    pub fn new(name: &str, dir: &Path, bins: SociBins, registry: &str, ca: &Path) -> SociConfig {
        SociConfig {
            name: name.into(),
            dir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()),
            bins,
            registry: registry.into(),
            hosts: None,
            registry_ca: ca.to_path_buf(),
            sandbox_image: String::new(),
            containerd_bin: PathBuf::from("containerd"),
            start_timeout: Duration::from_secs(30),
            background_fetch: true,
            fresh_fs_bytes: None,
        }
    }

    fn soci_dir(&self) -> PathBuf {
        self.dir.join("soci")
    }
    fn socket(&self) -> PathBuf {
        self.dir.join("soci/s.sock")
    }
}

/// `soci-snapshotter-grpc`'s config.toml. Layers without a zTOC (below the index's
/// `--min-layer-size`) are pulled whole by SOCI itself; background fetch stays at its default.
pub fn render_soci_config(background_fetch: bool) -> String {
    // Metrics off: nodes must not fight over a TCP port.
    let mut s = String::from("no_prometheus = true\n");
    if !background_fetch {
        s.push_str("[background_fetch]\ndisable = true\n");
    }
    s
}

/// A running SOCI node. Dropping it stops containerd, then SOCI, then drops the namespace.
#[derive(Debug)]
pub struct SociNode {
    cfg: SociConfig,
    // Field order is drop order: containerd first, SOCI second, the namespace last.
    node: Option<Node>,
    soci: Option<Daemon>,
    ns: Option<MountNs>,
}

impl SociNode {
    /// Start SOCI in a fresh private namespace, then containerd in the same namespace; returns
    /// once CRI answers.
    pub async fn start(cfg: SociConfig) -> Result<SociNode> {
        let mut n = SociNode {
            cfg,
            node: None,
            soci: None,
            ns: None,
        };
        n.boot().await?;
        Ok(n)
    }

    /// The containerd node (CRI, paths, cgroup parent) for pods and pulls.
    pub fn node(&self) -> &Node {
        // invariant: set by boot(), which every constructor runs.
        #[allow(clippy::expect_used)]
        self.node.as_ref().expect("SOCI node booted")
    }

    /// CRI's sandbox image on this node (the pause image by the registry's TLS name).
    pub fn sandbox_image(&self) -> &str {
        &self.cfg.sandbox_image
    }

    /// SOCI's config file text.
    pub fn soci_config_text(&self) -> String {
        std::fs::read_to_string(self.cfg.soci_dir().join("config.toml")).unwrap_or_default()
    }

    pub fn soci_pid(&self) -> Option<u32> {
        self.soci.as_ref().map(Daemon::pid)
    }

    /// SOCI's log (what it printed).
    pub fn soci_log(&self) -> PathBuf {
        self.cfg.soci_dir().join("soci.log")
    }

    async fn boot(&mut self) -> Result<()> {
        let sd = self.cfg.soci_dir();
        if let Some(bytes) = self.cfg.fresh_fs_bytes {
            // Before the namespace exists: it starts as a copy of these mounts.
            let (root, var_lib) = (sd.join("root"), sd.join("var-lib"));
            let containerd = NodePaths::new(&self.cfg.dir.join("containerd"));
            let mut targets: Vec<&Path> = vec![&root, &var_lib];
            targets.extend(containerd.volatile());
            node::fresh_filesystem(&self.cfg.dir, bytes, &targets)?;
        }
        let ns = MountNs::create(
            &sd.join("ns"),
            &sd.join("var-lib"),
            self.cfg.hosts.as_deref(),
        )?;
        let config = sd.join("config.toml");
        std::fs::write(&config, render_soci_config(self.cfg.background_fetch))
            .map_err(Error::io(format!("write {}", config.display())))?;
        let socket = self.cfg.socket();
        let _ = std::fs::remove_file(&socket);
        let mut cmd = ns.command(&self.cfg.bins.snapshotter);
        cmd.arg("-address")
            .arg(&socket)
            .arg("-root")
            .arg(sd.join("root"))
            .arg("-config")
            .arg(&config)
            .env("SSL_CERT_FILE", &self.cfg.registry_ca);
        let mut d = Daemon::spawn("soci-snapshotter-grpc", cmd, &self.soci_log())?;
        tracing::info!(node = %self.cfg.name, pid = d.pid(), "soci-snapshotter-grpc started");
        d.wait_for_socket(&socket, &self.cfg.name, self.cfg.start_timeout)
            .await?;
        let mut nc = NodeConfig::new(
            &self.cfg.name,
            &self.cfg.dir.join("containerd"),
            NodeKind::Shuttle,
        );
        nc.sandbox_image = self.cfg.sandbox_image.clone();
        nc.registries = vec![self.cfg.registry.clone()];
        nc.registry_ca = Some(self.cfg.registry_ca.clone());
        nc.proxy_snapshotter = Some((SNAPSHOTTER.into(), socket));
        nc.command_prefix = ns.prefix();
        nc.containerd_bin = self.cfg.containerd_bin.clone();
        nc.start_timeout = self.cfg.start_timeout;
        self.soci = Some(d);
        self.ns = Some(ns);
        self.node = Some(Node::start(nc).await?);
        Ok(())
    }

    /// Stop containerd (pods drained), SOCI, drop the namespace (SOCI's mounts go with it).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(n) = self.node.as_mut() {
            n.stop().await?;
        }
        self.halt_soci();
        Ok(())
    }

    fn halt_soci(&mut self) {
        if let Some(mut d) = self.soci.take() {
            d.stop(Duration::from_secs(10));
        }
        self.ns = None;
        // The fresh filesystem's mounts (containerd's own are gone with its stop).
        if let Err(e) = mounts::unmount_all_under(&self.cfg.dir) {
            tracing::warn!(node = %self.cfg.name, error = %e, "SOCI node unmount");
        }
    }

    /// Stop, wipe everything the node learned (containerd's and SOCI's), start again.
    pub async fn recycle(&mut self) -> Result<()> {
        self.stop().await?;
        let sd = self.cfg.soci_dir();
        for d in [sd.join("root"), sd.join("var-lib")] {
            mounts::remove_tree(&d)?;
        }
        if let Some(n) = self.node.take() {
            n.destroy().await?;
        }
        self.boot().await
    }

    /// Stop the node and delete its directory.
    pub async fn destroy(mut self) -> Result<()> {
        if let Some(n) = self.node.take() {
            n.destroy().await?;
        }
        self.halt_soci();
        mounts::remove_tree(&self.cfg.dir)
    }
}

impl Drop for SociNode {
    fn drop(&mut self) {
        // containerd first (its Drop stops it), then SOCI, the namespace and the mounts.
        self.node = None;
        self.halt_soci();
    }
}

/// Whether a failed `soci create` said it made no zTOC at all (SOCI 0.4: "no ztocs created,
/// all layers either skipped or produced errors"): with every layer below `--min-layer-size`
/// the image simply has no index and SOCI pulls it whole (the caller checks the sizes).
pub fn is_empty_index_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("soci create") && (m.contains("no ztoc") || m.contains("too small"))
}

/// What building an image's SOCI index printed.
#[derive(Debug, Clone)]
pub struct IndexBuild {
    /// `soci create` output.
    pub create: String,
    /// `soci push` output.
    pub push: String,
    /// `soci index list` after the build.
    pub list: String,
}

/// `soci create` options.
#[derive(Debug, Clone, Copy)]
pub struct IndexOptions {
    /// Layers smaller than this get no zTOC and are pulled whole (SOCI's default 10 MiB).
    pub min_layer_size: u64,
    /// Bytes of compressed data per span, the unit SOCI fetches (SOCI's default 4 MiB).
    pub span_size: u64,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            min_layer_size: 10 << 20,
            span_size: 4 << 20,
        }
    }
}

/// Build and push the SOCI index of `image` (a `host:port/repo:tag` on the TLS registry whose
/// CA is `ca`): the helper node pulls it over CRI, `soci create` indexes the layers of at
/// least `opts.min_layer_size` bytes from the helper's content store, `soci push` uploads the index
/// and zTOCs (the index names the image as its `subject`). SOCI's own store lives in a private
/// namespace under `work` (with `hosts` over `/etc/hosts`, so `soci push` resolves the
/// registry's name as the helper does), which is removed afterwards.
pub async fn build_index(
    bins: &SociBins,
    helper: &Node,
    image: &str,
    opts: IndexOptions,
    ca: &Path,
    hosts: Option<&Path>,
    work: &Path,
) -> Result<IndexBuild> {
    helper.cri().pull_image(image).await?;
    let ns = MountNs::create(&work.join("ns"), &work.join("var-lib"), hosts)?;
    let soci = |args: &[&str]| {
        let mut c = ns.command(&bins.soci);
        c.arg("--address")
            .arg(helper.socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .env("SSL_CERT_FILE", ca);
        c
    };
    let (min, span) = (opts.min_layer_size.to_string(), opts.span_size.to_string());
    let create = run_async(
        "soci create",
        soci(&[
            "create",
            "--min-layer-size",
            &min,
            "--span-size",
            &span,
            image,
        ]),
    )
    .await?;
    let ca_s = ca.to_string_lossy().into_owned();
    let push = run_async("soci push", soci(&["push", "--tlscacert", &ca_s, image])).await?;
    let list = run_async("soci index list", soci(&["index", "list"])).await?;
    drop(ns);
    mounts::remove_tree(work)?;
    tracing::info!(image, %create, %push, "SOCI index built and pushed");
    Ok(IndexBuild { create, push, list })
}

/// The SOCI side of a comparison: the registry's TLS listener by its loopback name, the CA and
/// hosts files, and a helper containerd (in its own namespace) that builds the indexes.
#[derive(Debug)]
pub struct SociBed {
    pub bins: SociBins,
    /// `REGISTRY_HOST:PORT` of the registry's TLS listener.
    pub host: String,
    pub ca: PathBuf,
    pub hosts: PathBuf,
    dir: PathBuf,
    // Field order is drop order: the helper before its namespace.
    helper: Option<Node>,
    _helper_ns: MountNs,
}

impl SociBed {
    /// Write the CA and hosts files under `dir` and start the helper containerd; `tls_addr` is
    /// the registry's TLS listener (loopback), `pause` the pause image's `repo:tag` there.
    pub async fn start(
        dir: &Path,
        bins: SociBins,
        tls_addr: std::net::SocketAddr,
        ca_pem: &str,
        pause: &str,
    ) -> Result<SociBed> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, ca_pem).map_err(Error::io(format!("write {}", ca.display())))?;
        let hosts = dir.join("hosts");
        write_hosts_file(&hosts, REGISTRY_HOST, tls_addr.ip())?;
        let host = format!("{REGISTRY_HOST}:{}", tls_addr.port());
        let ns = MountNs::create(
            &dir.join("helper-ns/ns"),
            &dir.join("helper-ns/var-lib"),
            Some(&hosts),
        )?;
        let mut hc = NodeConfig::new("soci-helper", &dir.join("helper"), NodeKind::Shuttle);
        hc.sandbox_image = format!("{host}/{pause}");
        hc.registries = vec![host.clone()];
        hc.registry_ca = Some(ca.clone());
        hc.command_prefix = ns.prefix();
        let helper = Node::start(hc).await?;
        Ok(SociBed {
            bins,
            host,
            ca,
            hosts,
            dir,
            helper: Some(helper),
            _helper_ns: ns,
        })
    }

    /// `REGISTRY_HOST:PORT/path` (`path` = `repo:tag`).
    pub fn reference(&self, path: &str) -> String {
        format!("{}/{path}", self.host)
    }

    /// The helper pulls `image`, then [`build_index`] runs on it; returns the build and the
    /// seconds of `soci create` + `soci push` alone (the helper's pull is not counted).
    pub async fn build_index(
        &self,
        image: &str,
        opts: IndexOptions,
    ) -> Result<(IndexBuild, Duration)> {
        let helper = self.helper()?;
        helper.cri().pull_image(image).await?;
        let t = Instant::now();
        let b = build_index(
            &self.bins,
            helper,
            image,
            opts,
            &self.ca,
            Some(&self.hosts),
            &self.dir.join("index"),
        )
        .await?;
        Ok((b, t.elapsed()))
    }

    fn helper(&self) -> Result<&Node> {
        self.helper
            .as_ref()
            .ok_or_else(|| Error::Invalid("SOCI helper stopped".into()))
    }

    /// A SOCI node of the bed reaching the registry by its TLS name.
    pub async fn start_node(
        &self,
        name: &str,
        dir: &Path,
        background_fetch: bool,
        fresh_fs_bytes: Option<u64>,
        pause: &str,
    ) -> Result<SociNode> {
        let mut c = SociConfig::new(name, dir, self.bins.clone(), &self.host, &self.ca);
        c.hosts = Some(self.hosts.clone());
        c.sandbox_image = self.reference(pause);
        c.background_fetch = background_fetch;
        c.fresh_fs_bytes = fresh_fs_bytes;
        c.containerd_bin = node::containerd_bin_from_env();
        SociNode::start(c).await
    }

    /// Stop the helper and remove the bed's files.
    pub async fn destroy(mut self) -> Result<()> {
        if let Some(h) = self.helper.take() {
            h.destroy().await?;
        }
        let dir = self.dir.clone();
        drop(self);
        mounts::remove_tree(&dir)
    }
}
