//! The bench's world: fixture images (built once, cached by profile/scale/variant), an
//! in-process registry-mock with link emulation and teleport-enabled repos, and the nodes.

use crate::error::{Error, Result};
use crate::node::{MountMode, Node, NodeConfig, NodeKind};
use registry_client::{MountStatus, RegistryClient};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Squashed or not: the seed's two image shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// The profile's layers (azure-vote-front: 29).
    Layered,
    /// One layer holding the same final filesystem (`docker build --squash`).
    Squashed,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Layered => "layered",
            Variant::Squashed => "squashed",
        }
    }
    /// Tag pushed to the registry (the seed used `:v1` and `:squashed`).
    pub fn tag(self) -> &'static str {
        match self {
            Variant::Layered => "v1",
            Variant::Squashed => "squashed",
        }
    }
}

/// Whether a teleporter learns and replays start profiles (teleportd `--no-start-profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartProfile {
    /// Records what a first start reads; later starts replay the learned profile.
    Learned,
    /// `--no-start-profile`: nothing recorded or replayed.
    Off,
}

/// The teleportd flag that turns start profiles off.
pub const NO_START_PROFILE: &str = "--no-start-profile";

impl StartProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            StartProfile::Learned => "learned",
            StartProfile::Off => "off",
        }
    }
}

impl std::str::FromStr for StartProfile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "learned" | "on" => Ok(StartProfile::Learned),
            "off" => Ok(StartProfile::Off),
            other => Err(Error::Invalid(format!(
                "unknown start profile {other:?} (learned or off)"
            ))),
        }
    }
}

/// A teleporter's start-profile setting (from its teleportd flags); `None` for the shuttle.
pub fn start_profile_of(node: &Node) -> Option<StartProfile> {
    match node.kind() {
        NodeKind::Shuttle => None,
        NodeKind::Teleporter { extra_args, .. } => {
            Some(if extra_args.iter().any(|a| a == NO_START_PROFILE) {
                StartProfile::Off
            } else {
                StartProfile::Learned
            })
        }
    }
}

/// Name of the pause image's repository and tag in the registry.
pub const PAUSE_REPO: &str = "pause";
pub const PAUSE_TAG: &str = "tb";

/// A fixture image built on disk.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub variant: Option<Variant>,
    pub layout: PathBuf,
    pub info: fixtures::ImageInfo,
}

fn scale_tag(scale: f64) -> String {
    format!("{scale}").replace('.', "_")
}

/// Build (or reuse, when `image-info.json` says it is the same image) one fixture.
pub async fn fixture(
    cache: &Path,
    profile: &str,
    scale: f64,
    variant: Option<Variant>,
    progress: bool,
) -> Result<Fixture> {
    let p = fixtures::profile::by_name(profile)
        .ok_or_else(|| Error::Invalid(format!("unknown fixture profile {profile:?}")))?;
    let squash = variant == Some(Variant::Squashed);
    let tag = variant.map_or(PAUSE_TAG, Variant::tag).to_string();
    // The entrypoint inside the image is part of the key: a new tb-entrypoint means new images.
    let ep = {
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(fixtures::ENTRYPOINT_BIN);
        format!("{:02x}{:02x}{:02x}{:02x}", h[0], h[1], h[2], h[3])
    };
    let dir = cache.join(format!(
        "{profile}-s{}-{}-e{ep}",
        scale_tag(scale),
        variant.map_or("image", Variant::as_str)
    ));
    if let Ok(info) = fixtures::ImageInfo::load(&dir) {
        if info.profile == profile
            && info.scale == scale
            && info.squashed == squash
            && info.tag == tag
        {
            tracing::info!(layout = %dir.display(), "reusing fixture");
            return Ok(Fixture {
                variant,
                layout: dir,
                info,
            });
        }
    }
    let mut opts = fixtures::BuildOptions::new(p);
    opts.scale = scale;
    opts.squash = squash;
    opts.tag = tag;
    opts.progress = progress;
    let out = dir.clone();
    let info = tokio::task::spawn_blocking(move || fixtures::build(&opts, &out))
        .await
        .map_err(|e| Error::Invalid(format!("fixture build task: {e}")))?
        .map_err(|e| Error::Invalid(format!("fixture {profile}: {e}")))?;
    Ok(Fixture {
        variant,
        layout: dir,
        info,
    })
}

/// Push a fixture's layout to `host/repo:tag`.
pub async fn push(fx: &Fixture, host: &str, repo: &str) -> Result<String> {
    let reference = format!("{host}/{repo}:{}", fx.info.tag);
    let target = reference
        .parse()
        .map_err(|e| Error::Invalid(format!("reference {reference}: {e}")))?;
    let opts = fixtures::PushOptions::new(fx.layout.clone(), target);
    fixtures::push(&opts).await.map_err(|e| Error::Registry {
        url: host.into(),
        reason: format!("push {reference}: {e}"),
    })?;
    Ok(reference)
}

/// Start the in-process registry.
pub async fn start_registry(
    root: &Path,
    bandwidth_bytes_per_sec: Option<u64>,
    latency: Duration,
    teleport_repos: Vec<String>,
) -> Result<registry_mock::Registry> {
    start_registry_tls(root, bandwidth_bytes_per_sec, latency, teleport_repos, None).await
}

/// [`start_registry`], with a second listener serving the same registry over HTTPS with `tls`
/// (on loopback, any free port) for peers that need it.
pub async fn start_registry_tls(
    root: &Path,
    bandwidth_bytes_per_sec: Option<u64>,
    latency: Duration,
    teleport_repos: Vec<String>,
    tls: Option<registry_mock::tls::Tls>,
) -> Result<registry_mock::Registry> {
    let mut cfg = registry_mock::Config::new(root);
    cfg.tls_listener = tls.map(|tls| registry_mock::TlsListener {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        tls,
    });
    cfg.anonymous_pull = true;
    cfg.link.bandwidth_bytes_per_sec = bandwidth_bytes_per_sec;
    cfg.link.latency = latency;
    cfg.teleport_repos = teleport_repos;
    registry_mock::start(cfg)
        .await
        .map_err(|e| Error::Registry {
            url: root.display().to_string(),
            reason: format!("start: {e}"),
        })
}

/// A tokio runtime of the in-process registry's own, its threads named
/// [`crate::cpu::REGISTRY_THREAD`], so the registry's CPU time can be told apart from the rest
/// of this process (pool starts report it). Dropping it stops whatever still runs on it.
pub struct RegistryRuntime {
    rt: Option<tokio::runtime::Runtime>,
}

impl RegistryRuntime {
    /// `workers` threads; idle blocking threads are kept (an ended thread's CPU time can no
    /// longer be read per thread).
    pub fn new(workers: usize) -> Result<RegistryRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(crate::cpu::REGISTRY_THREAD)
            .thread_keep_alive(Duration::from_secs(24 * 3600))
            .enable_all()
            .build()
            .map_err(Error::io("build the registry's runtime"))?;
        Ok(RegistryRuntime { rt: Some(rt) })
    }

    /// [`start_registry_tls`] with every task of the registry on this runtime.
    pub async fn start_registry(
        &self,
        root: &Path,
        bandwidth_bytes_per_sec: Option<u64>,
        latency: Duration,
        teleport_repos: Vec<String>,
        tls: Option<registry_mock::tls::Tls>,
    ) -> Result<registry_mock::Registry> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| Error::Invalid("registry runtime already stopped".into()))?;
        let root = root.to_path_buf();
        rt.spawn(async move {
            start_registry_tls(&root, bandwidth_bytes_per_sec, latency, teleport_repos, tls).await
        })
        .await
        .map_err(|e| Error::Invalid(format!("registry start task: {e}")))?
    }
}

impl Drop for RegistryRuntime {
    fn drop(&mut self) {
        // Without blocking: this may drop inside another runtime's task.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// ACR's check-expansion: `repo:tag`'s digest and the registry's `/mount` answer, polled every
/// 100 ms while it says "expanding", at most `timeout`.
pub async fn check_expansion(
    registry_url: &str,
    repo: &str,
    tag: &str,
    timeout: Duration,
) -> Result<(emulator::Digest, MountStatus)> {
    let err = |e: registry_client::Error| Error::Registry {
        url: registry_url.into(),
        reason: format!("check-expansion {repo}:{tag}: {e}"),
    };
    let client = RegistryClient::new(registry_url, None, Default::default()).map_err(err)?;
    client
        .check_expansion(repo, tag, Duration::from_millis(100), timeout, |line| {
            tracing::debug!(repo, tag, line, "check-expansion")
        })
        .await
        .map_err(err)
}

/// Wait until the registry says every layer of `repo:tag` is expanded.
pub async fn ensure_expanded(
    registry_url: &str,
    repo: &str,
    tag: &str,
    timeout: Duration,
) -> Result<()> {
    let (digest, state) = check_expansion(registry_url, repo, tag, timeout).await?;
    tracing::info!(repo, tag, %digest, %state, "check-expansion");
    match state {
        MountStatus::Ready(_) => Ok(()),
        other => Err(Error::Registry {
            url: registry_url.into(),
            reason: format!("{repo}:{tag} ({digest}): {other}"),
        }),
    }
}

/// Where the `teleportd` binary is: explicit, `$TELEPORTD_BIN`, beside this executable (or one
/// level up, for test binaries in `target/*/deps`), or `$PATH`.
pub fn find_teleportd(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("TELEPORTD_BIN") {
        return Some(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let c = dir.join("teleportd");
            if c.is_file() {
                return Some(c);
            }
        }
    }
    crate::provision::in_path("teleportd")
}

/// Which nodes to start.
#[derive(Debug, Clone)]
pub struct NodeSet {
    pub shuttle: bool,
    pub mount_modes: Vec<MountMode>,
    /// Teleporters per mount mode: one per setting (`learned` keeps the plain node name).
    pub start_profiles: Vec<StartProfile>,
    pub teleportd_bin: Option<PathBuf>,
    /// Extra flags passed to every teleportd.
    pub teleportd_args: Vec<String>,
    /// Each node's volatile dirs on a fresh loop-backed ext4 of this size at every recycle.
    pub fresh_fs_bytes: Option<u64>,
}

/// Start the shuttle and one teleporter per mount mode under `dir`.
pub async fn start_nodes(
    dir: &Path,
    set: &NodeSet,
    registry: &registry_mock::Registry,
) -> Result<Vec<Node>> {
    let host = registry.addr().to_string();
    let sandbox_image = format!("{host}/{PAUSE_REPO}:{PAUSE_TAG}");
    let mut kinds: Vec<(String, NodeKind)> = Vec::new();
    if set.shuttle {
        kinds.push(("shuttle".into(), NodeKind::Shuttle));
    }
    if !set.mount_modes.is_empty() {
        let bin = find_teleportd(set.teleportd_bin.as_deref()).ok_or_else(|| Error::Prerequisites {
            missing: "teleportd binary".into(),
            hint: "build it with `cargo build -p fuse-mount --bin teleportd`, or pass --teleportd PATH / set TELEPORTD_BIN".into(),
        })?;
        let profiles = if set.start_profiles.is_empty() {
            vec![StartProfile::Learned]
        } else {
            set.start_profiles.clone()
        };
        for mode in &set.mount_modes {
            for sp in &profiles {
                let mut extra_args = set.teleportd_args.clone();
                let mut name = format!("teleporter-{}", mode.as_str());
                if *sp == StartProfile::Off {
                    // Short: teleportd keeps unix sockets under the node dir (108-byte limit).
                    name.push_str("-off");
                    if !extra_args.iter().any(|a| a == NO_START_PROFILE) {
                        extra_args.push(NO_START_PROFILE.into());
                    }
                }
                kinds.push((
                    name,
                    NodeKind::Teleporter {
                        mount_mode: *mode,
                        registry_url: registry.url(),
                        teleportd_bin: bin.clone(),
                        extra_args,
                    },
                ));
            }
        }
    }
    let mut nodes = Vec::new();
    for (name, kind) in kinds {
        let mut cfg = NodeConfig::new(&name, &dir.join(&name), kind);
        cfg.sandbox_image = sandbox_image.clone();
        cfg.registries = vec![host.clone()];
        cfg.fresh_fs_bytes = set.fresh_fs_bytes;
        nodes.push(Node::start(cfg).await?);
    }
    Ok(nodes)
}

/// An image imported with skopeo (`--image`), as an OCI layout on disk.
#[derive(Debug, Clone)]
pub struct Imported {
    pub variant: Variant,
    pub layout: PathBuf,
    pub tag: String,
    pub image: fixtures::squash::LayoutImage,
    pub uncompressed_bytes: u64,
}

fn skopeo(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("skopeo")
        .args(args)
        .output()
        .map_err(Error::io("run skopeo (apt-get install skopeo)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "skopeo {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Import `reference` (`oci:DIR:TAG`, `docker-archive:FILE` or `docker://HOST/REPO:TAG`) into
/// an OCI layout under `work` with skopeo; the squashed twin, when asked for, is built from it
/// by [`fixtures::squash`].
pub async fn import_image(
    reference: &str,
    work: &Path,
    variants: &[Variant],
) -> Result<Vec<Imported>> {
    let ok = ["oci:", "docker-archive:", "docker://"]
        .iter()
        .any(|p| reference.starts_with(p));
    if !ok {
        return Err(Error::Invalid(format!(
            "--image {reference:?}: want oci:DIR:TAG, docker-archive:FILE or docker://HOST/REPO:TAG"
        )));
    }
    let (reference, work, variants) =
        (reference.to_string(), work.to_path_buf(), variants.to_vec());
    tokio::task::spawn_blocking(move || {
        let layered = work.join("layered");
        crate::mounts::remove_tree(&layered)?;
        std::fs::create_dir_all(&layered)
            .map_err(Error::io(format!("create {}", layered.display())))?;
        let dest = format!("oci:{}:{}", layered.display(), Variant::Layered.tag());
        let mut args = vec!["copy", "--insecure-policy", "--quiet"];
        if reference.starts_with("docker://") {
            args.push("--src-tls-verify=false");
        }
        args.extend([reference.as_str(), dest.as_str()]);
        skopeo(&args)?;
        let mut out = Vec::new();
        for v in variants {
            let dir = match v {
                Variant::Layered => layered.clone(),
                Variant::Squashed => {
                    let dir = work.join("squashed");
                    crate::mounts::remove_tree(&dir)?;
                    std::fs::create_dir_all(&dir)
                        .map_err(Error::io(format!("create {}", dir.display())))?;
                    let s = fixtures::squash::squash_layout(
                        &layered,
                        Some(Variant::Layered.tag()),
                        &dir,
                        v.tag(),
                    )
                    .map_err(|e| Error::Invalid(format!("squash {reference}: {e}")))?;
                    tracing::info!(layers_in = s.layers_in, entries = s.entries, digest = %s.manifest_digest, "squashed");
                    dir
                }
            };
            let image = fixtures::squash::read_layout(&dir, Some(v.tag()))
                .map_err(|e| Error::Invalid(format!("{reference}: {e}")))?;
            let uncompressed_bytes = fixtures::squash::uncompressed_sizes(&dir, &image)
                .map_err(|e| Error::Invalid(format!("{reference}: {e}")))?
                .iter()
                .sum();
            out.push(Imported {
                variant: v,
                layout: dir,
                tag: v.tag().to_string(),
                image,
                uncompressed_bytes,
            });
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::Invalid(format!("import task: {e}")))?
}

/// Push an imported layout to `host/repo:tag` with skopeo.
pub async fn push_imported(img: &Imported, host: &str, repo: &str) -> Result<String> {
    let reference = format!("{host}/{repo}:{}", img.tag);
    let src = format!("oci:{}:{}", img.layout.display(), img.tag);
    let dest = format!("docker://{reference}");
    tokio::task::spawn_blocking(move || {
        skopeo(&[
            "copy",
            "--insecure-policy",
            "--quiet",
            "--dest-tls-verify=false",
            &src,
            &dest,
        ])
    })
    .await
    .map_err(|e| Error::Invalid(format!("push task: {e}")))??;
    Ok(reference)
}
