//! `testbed compare`: the seed's A/B experiment. For each variant (layered, squashed) × node
//! (shuttle; teleporter per mount mode) × repetition: recycle → pre-load pause (not counted) →
//! PullImage (timed) → RunPodSandbox → CreateContainer → StartContainer → ready line; plus one
//! warm run per node and variant. Bytes come from the registry's `/metrics` deltas.
//!
//! With `--fanout N` (N > 1), each variant's reps also start the image on N fresh nodes of each
//! of our kinds at once (a pool behind the registry's one emulated link; kinds one after
//! another), recording every node's sample and the registry's bytes and CPU per pool start.
//!
//! With `--peers soci`, SOCI nodes run beside them on the same registry (its TLS listener),
//! link and counters: after the push the image is copied to one repository per SOCI node,
//! whose index a helper containerd builds and pushes (timed apart). With `--peers nydus`, the
//! bed converts each image once with `nydus-image` (timed apart), pushes it to a repository of
//! its own, and a nydus node (containerd + nydus-snapshotter, nydusd in FUSE mode) pulls it
//! over the same plain-HTTP listener as our nodes.

use crate::bed::{
    self, Fixture, NodeSet, RegistryRuntime, StartProfile, Variant, PAUSE_REPO, PAUSE_TAG,
};
use crate::cpu::{self, ThreadCpu, REGISTRY_THREAD};
use crate::cri::PodSpec;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::machine::{MachineInfo, Versions};
use crate::measurement::HostProbe;
pub use crate::measurement::{
    HostState, ImageFacts, NodeOrder, PeerImage, PoolRun, PoolTag, RunSettings, Sample,
};
use crate::metrics::{self, Served};
use crate::node::{MountMode, Node};
use crate::peers::nydus::{self, NydusBins, NydusConfig, NydusNode};
use crate::peers::soci::{self, IndexOptions, SociBed, SociBins, SociNode};
use crate::peers::Peer;
use crate::pod::{run_pod, PodTimings, ReadyProbe, RunOptions};
use crate::report::{LinkSettings, ProcessInfo, Report};
use emulator::oci::{ImageIndex, ImageManifest};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Everything `compare` needs.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub profile: String,
    pub scale: f64,
    pub reps: u32,
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// As given on the command line, for the report.
    pub bandwidth_label: Option<String>,
    pub latency: Duration,
    pub mount_modes: Vec<MountMode>,
    pub variants: Vec<Variant>,
    pub working_set: f64,
    pub out: PathBuf,
    /// Fixture cache, registry root and node dirs (default: `<out>/work`).
    pub work_dir: Option<PathBuf>,
    pub teleportd_bin: Option<PathBuf>,
    /// Extra flags for every teleportd.
    pub teleportd_args: Vec<String>,
    pub ready_timeout: Duration,
    pub expansion_timeout: Duration,
    /// Draw a progress bar and print events.
    pub interactive: bool,
    /// Teleporter start-profile settings to measure: each mount mode × each of these.
    pub start_profiles: Vec<StartProfile>,
    /// Share of the learning run's working set each cold rep keeps (the rest is swapped).
    pub overlap: f64,
    /// Seed of the run: working sets per rep and node order derive from it.
    pub seed: u64,
    /// App readers (`tb-entrypoint --readers`); `None` = the entrypoint's default (8).
    pub readers: Option<usize>,
    /// When the app counts as ready.
    pub ready: ReadyProbe,
    /// Override the image's entrypoint / command (CRI `command` / `args`).
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    /// Warm runs per node and variant (the row shows their median).
    pub warm_runs: u32,
    /// Measure this image (`oci:DIR:TAG`, `docker-archive:FILE`, `docker://HOST/REPO:TAG`)
    /// instead of a fixture profile; imported with skopeo.
    pub image: Option<String>,
    /// `sync` and drop the page cache before every timed run, cold and warm (root).
    pub drop_caches: bool,
    /// Each node's root/state/cache on a new loop-backed ext4 of this size at every recycle.
    pub fresh_fs_bytes: Option<u64>,
    /// Peer systems measured beside ours (`--peers soci`).
    pub peers: Vec<Peer>,
    /// SOCI's binaries (`scripts/get-peers.sh soci`); default: `out/peers/soci` here or in
    /// the source checkout.
    pub soci_dir: Option<PathBuf>,
    /// One SOCI node per `soci create --min-layer-size` (bytes): SOCI's default 10 MiB (node
    /// `soci`) and 0 (node `soci-min0`, every layer indexed).
    pub soci_min_layer_sizes: Vec<u64>,
    /// `soci create --span-size` (SOCI's default 4 MiB).
    pub soci_span_size: u64,
    /// SOCI's background fetch (its default: on).
    pub soci_background_fetch: bool,
    /// nydus's binaries (`scripts/get-peers.sh nydus`); default: `out/peers/nydus` here or in
    /// the source checkout.
    pub nydus_dir: Option<PathBuf>,
    /// nydusd's background prefetch of the whole image (on in nydus-snapshotter's shipped
    /// nydusd config).
    pub nydus_prefetch: bool,
    /// Write every teleporter run's raw start trace (events and mount table) as JSON under
    /// `out/traces/` — the input for studying a start's reads beyond the report's sums.
    pub keep_traces: bool,
    /// Nodes per pool start (`--fanout N`): above 1, each rep also starts the image on N fresh
    /// nodes of each of our kinds at the same moment. 1: single-node starts only.
    pub fanout: usize,
}

impl CompareOptions {
    pub fn new(out: impl Into<PathBuf>) -> CompareOptions {
        CompareOptions {
            profile: "azure-vote-front".into(),
            scale: 1.0,
            reps: 5,
            bandwidth_bytes_per_sec: None,
            bandwidth_label: None,
            latency: Duration::ZERO,
            mount_modes: vec![MountMode::PerLayer, MountMode::Merged],
            variants: vec![Variant::Layered, Variant::Squashed],
            working_set: 0.06,
            out: out.into(),
            work_dir: None,
            teleportd_bin: None,
            teleportd_args: Vec::new(),
            ready_timeout: Duration::from_secs(600),
            expansion_timeout: Duration::from_secs(600),
            interactive: true,
            start_profiles: vec![StartProfile::Learned, StartProfile::Off],
            overlap: 0.8,
            seed: 1,
            readers: None,
            ready: ReadyProbe::Fixture,
            command: None,
            args: None,
            warm_runs: 3,
            image: None,
            drop_caches: true,
            fresh_fs_bytes: Some(4 << 30),
            peers: Vec::new(),
            soci_dir: None,
            soci_min_layer_sizes: vec![IndexOptions::default().min_layer_size, 0],
            soci_span_size: IndexOptions::default().span_size,
            soci_background_fetch: true,
            nydus_dir: None,
            nydus_prefetch: true,
            keep_traces: false,
            fanout: 1,
        }
    }
}

/// The SOCI node's name for an index's `--min-layer-size`: `soci` for SOCI's default.
pub fn soci_node_name(min_layer_size: u64) -> String {
    if min_layer_size == IndexOptions::default().min_layer_size {
        "soci".into()
    } else if min_layer_size.is_multiple_of(1 << 20) && min_layer_size > 0 {
        format!("soci-min{}m", min_layer_size >> 20)
    } else {
        format!("soci-min{min_layer_size}")
    }
}

/// A peer's unpacked directory: explicit, `./PEER_DIR` when it holds `marker`, else the
/// source checkout's.
fn peer_dir(explicit: Option<&Path>, peer_dir: &str, marker: &str) -> PathBuf {
    if let Some(d) = explicit {
        return d.to_path_buf();
    }
    let here = Path::new(peer_dir);
    if here.join(marker).is_dir() {
        return here.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(peer_dir)
}

/// Where SOCI's binaries are.
fn soci_bins(explicit: Option<&Path>) -> Result<SociBins> {
    SociBins::in_peer_dir(&peer_dir(explicit, soci::PEER_DIR, "usr/bin"))
}

/// Where nydus's binaries are.
fn nydus_bins(explicit: Option<&Path>) -> Result<NydusBins> {
    NydusBins::in_peer_dir(&peer_dir(explicit, nydus::PEER_DIR, "bin"))
}

/// A node of the run: one of ours (shuttle, teleporters) or a peer system's.
enum BedNode {
    Own(Box<Node>),
    Soci(Box<SociNode>),
    Nydus(Box<NydusNode>),
}

impl BedNode {
    fn node(&self) -> &Node {
        match self {
            BedNode::Own(n) => n,
            BedNode::Soci(s) => s.node(),
            BedNode::Nydus(n) => n.node(),
        }
    }
    fn name(&self) -> &str {
        self.node().name()
    }
    fn is_peer(&self) -> bool {
        matches!(self, BedNode::Soci(_) | BedNode::Nydus(_))
    }
    fn role(&self) -> &'static str {
        match self {
            BedNode::Own(n) => n.kind().role(),
            BedNode::Soci(_) => "soci",
            BedNode::Nydus(_) => "nydus",
        }
    }
    fn mount_mode(&self) -> &'static str {
        match self {
            BedNode::Own(n) => n.kind().mount_mode_label(),
            BedNode::Soci(_) => "soci",
            BedNode::Nydus(_) => "nydus",
        }
    }
    fn start_profile(&self) -> Option<StartProfile> {
        match self {
            BedNode::Own(n) => bed::start_profile_of(n),
            BedNode::Soci(_) | BedNode::Nydus(_) => None,
        }
    }
    /// The pause image by the name this node reaches the registry with.
    fn pause_ref<'a>(&'a self, ours: &'a str) -> &'a str {
        match self {
            BedNode::Own(_) => ours,
            BedNode::Soci(s) => s.sandbox_image(),
            BedNode::Nydus(n) => n.sandbox_image(),
        }
    }
    async fn recycle(&mut self) -> Result<()> {
        match self {
            BedNode::Own(n) => n.recycle().await,
            BedNode::Soci(s) => s.recycle().await,
            BedNode::Nydus(n) => n.recycle().await,
        }
    }
    /// After a peer node's last run: stop it, so its background fetch (SOCI's, nydusd's
    /// prefetch) cannot run into the next node's sample (it shares the link and the counters).
    /// The next recycle starts it again.
    async fn settle(&mut self) -> Result<()> {
        match self {
            BedNode::Own(_) => Ok(()),
            BedNode::Soci(s) => s.stop().await,
            BedNode::Nydus(n) => n.stop().await,
        }
    }
    async fn destroy(self) -> Result<()> {
        match self {
            BedNode::Own(n) => (*n).destroy().await,
            BedNode::Soci(s) => (*s).destroy().await,
            BedNode::Nydus(n) => (*n).destroy().await,
        }
    }
}

/// GET a JSON document (a manifest, a referrers list) from the registry's plain listener.
/// Parsed as the typed OCI document `T` (`emulator::oci`).
async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: String,
) -> Result<T> {
    let err = |reason: String| Error::Registry {
        url: url.clone(),
        reason,
    };
    let r = http
        .get(&url)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !r.status().is_success() {
        return Err(err(format!("GET: {}", r.status())));
    }
    let body = r.bytes().await.map_err(|e| err(e.to_string()))?;
    emulator::oci::from_json(&body).map_err(|e| err(e.to_string()))
}

/// The largest layer (compressed bytes) of the image `digest` in `repo`.
async fn largest_layer(
    http: &reqwest::Client,
    registry_url: &str,
    repo: &str,
    digest: &str,
) -> Result<u64> {
    let m: ImageManifest =
        get_json(http, format!("{registry_url}/v2/{repo}/manifests/{digest}")).await?;
    Ok(m.layers().iter().map(|l| l.size()).max().unwrap_or(0))
}

/// The zTOCs of the SOCI index that refers to `subject` in `repo`, found as SOCI finds it:
/// through the referrers API (over the registry's plain listener; same store).
async fn soci_index_facts(
    http: &reqwest::Client,
    registry_url: &str,
    repo: &str,
    subject: &str,
) -> Result<(String, usize, u64)> {
    let refs: ImageIndex = get_json(
        http,
        format!("{registry_url}/v2/{repo}/referrers/{subject}"),
    )
    .await?;
    let Some(index) = refs
        .manifests()
        .iter()
        .find(|d| d.artifact_type().as_ref().map(|a| a.as_ref()) == Some(soci::INDEX_ARTIFACT_TYPE))
        .map(|d| d.digest().to_string())
    else {
        return Ok((String::new(), 0, 0));
    };
    let m: ImageManifest =
        get_json(http, format!("{registry_url}/v2/{repo}/manifests/{index}")).await?;
    let bytes = m.layers().iter().map(|l| l.size()).sum();
    Ok((index, m.layers().len(), bytes))
}

fn bar(total: u64, interactive: bool) -> ProgressBar {
    if !interactive {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} runs  {msg}",
    ) {
        pb.set_style(style);
    }
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Run the whole comparison and write `report.md`, `report.json`, `report.svg` into `out`.
pub async fn compare(opts: &CompareOptions) -> Result<Report> {
    crate::provision::ensure()?;
    if opts.reps == 0 {
        return Err(Error::Invalid("--reps must be at least 1".into()));
    }
    if opts.fanout == 0 {
        return Err(Error::Invalid("--fanout must be at least 1".into()));
    }
    if !(opts.working_set > 0.0 && opts.working_set <= 1.0) {
        return Err(Error::Invalid("--working-set must be in (0, 1]".into()));
    }
    let work = opts
        .work_dir
        .clone()
        .unwrap_or_else(|| opts.out.join("work"));
    std::fs::create_dir_all(&work).map_err(Error::io(format!("create {}", work.display())))?;
    std::fs::create_dir_all(&opts.out)
        .map_err(Error::io(format!("create {}", opts.out.display())))?;

    // Fixtures (cached across runs: same profile/scale/variant → same bytes), or the image.
    let cache = work.join("fixtures");
    let mut images: Vec<Fixture> = Vec::new();
    let imported = match &opts.image {
        Some(r) => bed::import_image(r, &work.join("import"), &opts.variants).await?,
        None => {
            for v in &opts.variants {
                images.push(
                    bed::fixture(
                        &cache,
                        &opts.profile,
                        opts.scale,
                        Some(*v),
                        opts.interactive,
                    )
                    .await?,
                );
            }
            Vec::new()
        }
    };
    let pause = bed::fixture(&cache, "pause", 1.0, None, false).await?;

    // Registry: fresh root each run so expansion happens now, under our eyes.
    let reg_root = work.join("registry");
    crate::mounts::remove_tree(&reg_root)?;
    let repo = if opts.image.is_some() {
        "image".to_string()
    } else {
        opts.profile.clone()
    };
    // SOCI fetches its index and zTOCs over HTTPS only: the registry then also listens with
    // TLS (same store, link and counters), under a name whose certificate it carries.
    let soci_bins = if opts.peers.contains(&Peer::Soci) {
        Some(soci_bins(opts.soci_dir.as_deref())?)
    } else {
        None
    };
    let nydus_bins = if opts.peers.contains(&Peer::Nydus) {
        Some(nydus_bins(opts.nydus_dir.as_deref())?)
    } else {
        None
    };
    let tls = match &soci_bins {
        Some(_) => Some(
            registry_mock::tls::Tls::self_signed_for(&[soci::REGISTRY_HOST.to_string()])
                .map_err(|e| Error::Invalid(format!("registry TLS certificate: {e}")))?,
        ),
        None => None,
    };
    let ca_pem = tls
        .as_ref()
        .and_then(|t| t.ca_pem.clone())
        .unwrap_or_default();
    // Pools report the registry's CPU: it then runs on threads of its own (2, like the
    // runtime it shares otherwise), whose times are read apart from the rest of the process.
    let reg_rt = if opts.fanout > 1 {
        Some(RegistryRuntime::new(2)?)
    } else {
        None
    };
    let registry = match &reg_rt {
        Some(rt) => {
            rt.start_registry(
                &reg_root,
                opts.bandwidth_bytes_per_sec,
                opts.latency,
                vec![repo.clone()],
                tls,
            )
            .await?
        }
        None => {
            bed::start_registry_tls(
                &reg_root,
                opts.bandwidth_bytes_per_sec,
                opts.latency,
                vec![repo.clone()],
                tls,
            )
            .await?
        }
    };
    let host = registry.addr().to_string();
    let pause_ref = bed::push(&pause, &host, PAUSE_REPO).await?;
    let mut facts = Vec::new();
    for fx in &images {
        let reference = bed::push(fx, &host, &repo).await?;
        bed::ensure_expanded(&registry.url(), &repo, &fx.info.tag, opts.expansion_timeout).await?;
        let ws = fixtures::image::working_set(&fx.info.files, opts.working_set);
        facts.push(ImageFacts {
            variant: fx.variant.unwrap_or(Variant::Layered),
            reference,
            repo: repo.clone(),
            manifest_digest: fx.info.manifest_digest.to_string(),
            layers: fx.info.layers.len(),
            image_bytes: fx.info.total_uncompressed,
            compressed_bytes: fx.info.total_compressed,
            working_set_hash: ws.hash,
            layer_digests: fx
                .info
                .layers
                .iter()
                .map(|l| l.digest.to_string())
                .collect(),
            files: fx.info.files.clone(),
            working_set_files: ws.files,
            working_set_bytes: ws.bytes,
            peers: Vec::new(),
        });
    }
    for im in &imported {
        let reference = bed::push_imported(im, &host, &repo).await?;
        bed::ensure_expanded(&registry.url(), &repo, &im.tag, opts.expansion_timeout).await?;
        facts.push(ImageFacts {
            variant: im.variant,
            reference,
            repo: repo.clone(),
            manifest_digest: im.image.manifest_digest.to_string(),
            layers: im.image.layers.len(),
            image_bytes: im.uncompressed_bytes,
            compressed_bytes: im.image.compressed_bytes(),
            working_set_hash: String::new(),
            layer_digests: im.image.layers.iter().map(|l| l.0.to_string()).collect(),
            files: Vec::new(),
            working_set_files: 0,
            working_set_bytes: 0,
            peers: Vec::new(),
        });
    }

    // SOCI: each node gets the image in a repository of its own (so the referrers API shows it
    // only its own index), indexed on the helper containerd after the push.
    let http = reqwest::Client::new();
    let pause_path = format!("{PAUSE_REPO}:{PAUSE_TAG}");
    let soci_bed = match (&soci_bins, registry.tls_addr()) {
        (Some(bins), Some(tls_addr)) => Some(
            SociBed::start(
                &work.join("soci"),
                bins.clone(),
                tls_addr,
                &ca_pem,
                &pause_path,
            )
            .await?,
        ),
        _ => None,
    };
    if let Some(sb) = &soci_bed {
        for (i, img) in facts.iter_mut().enumerate() {
            for &min in &opts.soci_min_layer_sizes {
                let node = soci_node_name(min);
                let peer_repo = format!("{repo}-{node}");
                let tag = match images.get(i) {
                    Some(fx) => {
                        bed::push(fx, &host, &peer_repo).await?;
                        fx.info.tag.clone()
                    }
                    None => {
                        let im = imported
                            .iter()
                            .find(|m| m.variant == img.variant)
                            .ok_or_else(|| Error::Invalid("imported image missing".into()))?;
                        bed::push_imported(im, &host, &peer_repo).await?;
                        im.tag.clone()
                    }
                };
                let reference = sb.reference(&format!("{peer_repo}:{tag}"));
                let iopts = IndexOptions {
                    min_layer_size: min,
                    span_size: opts.soci_span_size,
                };
                let (built, took) = match sb.build_index(&reference, iopts).await {
                    Ok((b, t)) => (Some(b), t),
                    // Every layer below min-layer-size: no index; the node pulls them whole.
                    // (SOCI says the same when every layer failed: check the sizes.)
                    Err(Error::Invalid(m)) if soci::is_empty_index_error(&m) => {
                        let largest =
                            largest_layer(&http, &registry.url(), &peer_repo, &img.manifest_digest)
                                .await?;
                        if largest >= min {
                            return Err(Error::Invalid(format!(
                                "{m} (but a layer of {largest} bytes is not below --min-layer-size {min})"
                            )));
                        }
                        tracing::info!(%reference, min, largest, "no SOCI index: {m}");
                        (None, Duration::ZERO)
                    }
                    Err(e) => return Err(e),
                };
                let (index_digest, ztocs, ztoc_bytes) =
                    soci_index_facts(&http, &registry.url(), &peer_repo, &img.manifest_digest)
                        .await?;
                tracing::info!(%reference, min, ztocs, ztoc_bytes, seconds = took.as_secs_f64(), built = built.is_some(), "SOCI index");
                img.peers.push(PeerImage {
                    node,
                    reference,
                    min_layer_size: min,
                    span_size: opts.soci_span_size,
                    index_build_seconds: took.as_secs_f64(),
                    index_digest,
                    ztocs,
                    ztoc_bytes,
                    ..PeerImage::default()
                });
            }
        }
    }

    // nydus: each image converted once (timed apart, like SOCI's index build and teleport's
    // expansion) and pushed to a repository of its own, pulled over the plain listener.
    if let Some(bins) = &nydus_bins {
        for (i, img) in facts.iter_mut().enumerate() {
            let (layout, tag) = match images.get(i) {
                Some(fx) => (fx.layout.clone(), fx.info.tag.clone()),
                None => {
                    let im = imported
                        .iter()
                        .find(|m| m.variant == img.variant)
                        .ok_or_else(|| Error::Invalid("imported image missing".into()))?;
                    (im.layout.clone(), im.tag.clone())
                }
            };
            let node = nydus::SNAPSHOTTER.to_string();
            let out = work.join("nydus").join(img.variant.as_str());
            let conv_work = work.join("nydus").join("work");
            let t = std::time::Instant::now();
            let (ni, out2, tag2) = (bins.nydus_image.clone(), out.clone(), tag.clone());
            let conv = tokio::task::spawn_blocking(move || {
                nydus::convert(&ni, &layout, &tag2, &out2, &conv_work)
            })
            .await
            .map_err(|e| Error::Invalid(format!("nydus convert task: {e}")))??;
            let reference = nydus::push(&out, &host, &format!("{repo}-{node}"), &tag).await?;
            let took = t.elapsed();
            // The registry holds it now; the layout would only take disk.
            crate::mounts::remove_tree(&out)?;
            tracing::info!(%reference, blobs = conv.blobs, blob_bytes = conv.blob_bytes, seconds = took.as_secs_f64(), "nydus image converted and pushed");
            img.peers.push(PeerImage {
                node,
                reference,
                index_build_seconds: took.as_secs_f64(),
                index_digest: conv.manifest_digest,
                nydus_blobs: conv.blobs,
                nydus_blob_bytes: conv.blob_bytes,
                nydus_bootstrap_bytes: conv.bootstrap_bytes,
                ..PeerImage::default()
            });
        }
    }

    let set = NodeSet {
        shuttle: true,
        mount_modes: opts.mount_modes.clone(),
        start_profiles: opts.start_profiles.clone(),
        teleportd_bin: opts.teleportd_bin.clone(),
        teleportd_args: opts.teleportd_args.clone(),
        fresh_fs_bytes: opts.fresh_fs_bytes,
    };
    let mut nodes: Vec<BedNode> = bed::start_nodes(&work.join("nodes"), &set, &registry)
        .await?
        .into_iter()
        .map(|n| BedNode::Own(Box::new(n)))
        .collect();
    let mut peer_processes = Vec::new();
    if let Some(sb) = &soci_bed {
        for &min in &opts.soci_min_layer_sizes {
            let name = soci_node_name(min);
            let n = sb
                .start_node(
                    &name,
                    &work.join("nodes").join(&name),
                    opts.soci_background_fetch,
                    opts.fresh_fs_bytes,
                    &pause_path,
                )
                .await?;
            peer_processes.push(ProcessInfo {
                name: format!("{name} containerd"),
                args: cmdline(n.node().containerd_pid()),
                config: std::fs::read_to_string(&n.node().paths().config).ok(),
            });
            peer_processes.push(ProcessInfo {
                name: format!("{name} soci-snapshotter-grpc"),
                args: cmdline(n.soci_pid()),
                config: Some(n.soci_config_text()),
            });
            nodes.push(BedNode::Soci(Box::new(n)));
        }
    }
    if let Some(bins) = &nydus_bins {
        let name = nydus::SNAPSHOTTER;
        let mut c = NydusConfig::new(name, &work.join("nodes").join(name), bins.clone(), &host);
        c.sandbox_image = pause_ref.clone();
        c.prefetch = opts.nydus_prefetch;
        c.fresh_fs_bytes = opts.fresh_fs_bytes;
        c.containerd_bin = crate::node::containerd_bin_from_env();
        let n = NydusNode::start(c).await?;
        peer_processes.push(ProcessInfo {
            name: format!("{name} containerd"),
            args: cmdline(n.node().containerd_pid()),
            config: std::fs::read_to_string(&n.node().paths().config).ok(),
        });
        peer_processes.push(ProcessInfo {
            name: format!("{name} containerd-nydus-grpc"),
            args: cmdline(n.snapshotter_pid()),
            config: Some(n.config_text()),
        });
        nodes.push(BedNode::Nydus(Box::new(n)));
    }
    let mut versions = Versions::detect();
    if let Some(b) = &nydus_bins {
        versions.nydus = b.versions();
    }
    if let Some(b) = &soci_bins {
        let exe = b.snapshotter.to_string_lossy().into_owned();
        versions.soci = crate::process::output_of(&exe, &["--version"])
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
            .unwrap_or_default();
    }

    let learners = nodes
        .iter()
        .filter(|n| n.start_profile() == Some(StartProfile::Learned))
        .count() as u64;
    let own_kinds = nodes.iter().filter(|n| !n.is_peer()).count() as u64;
    let pool_runs = if opts.fanout > 1 {
        u64::from(opts.reps) * own_kinds * opts.fanout as u64
    } else {
        0
    };
    let per_image = u64::from(opts.reps) * (nodes.len() as u64 + learners)
        + u64::from(opts.warm_runs) * nodes.len() as u64
        + pool_runs;
    let total = per_image * facts.len() as u64;
    let pb = bar(total, opts.interactive);
    let metrics_url = format!("{}/metrics", registry.url());
    let store = registry_mock::store::Store::open(&reg_root).map_err(|e| Error::Registry {
        url: reg_root.display().to_string(),
        reason: format!("open store: {e}"),
    })?;
    let mut samples = Vec::new();
    let mut node_orders = Vec::new();
    let mut pools: Vec<PoolRun> = Vec::new();
    let mut pool_orders = Vec::new();

    for img in &facts {
        // The image's first start on a teleporter that learns profiles: the registry holds no
        // start profile for its layers (dropped before each such rep). Reported as its own row.
        // The node is recycled right after, so its profile upload is complete before the next.
        for rep in 0..opts.reps {
            for node in nodes
                .iter_mut()
                .filter(|n| n.start_profile() == Some(StartProfile::Learned))
            {
                pb.set_message(format!(
                    "{} {} first start {}",
                    img.variant.as_str(),
                    node.name(),
                    rep + 1
                ));
                drop_profiles(&store, img)?;
                node.recycle().await?;
                node.node().cri().pull_image(&pause_ref).await?;
                let run = Run::First(rep);
                let s = measure(node, img, run, 0, opts, &http, &metrics_url, &pb).await?;
                samples.push(s);
                node.recycle().await?;
                pb.inc(1);
            }
        }
        for rep in 0..opts.reps {
            // Node order shuffled per rep (seeded, recorded): no node always runs right
            // after the same other one.
            let mut order: Vec<usize> = (0..nodes.len()).collect();
            shuffle(
                &mut order,
                opts.seed ^ (u64::from(rep) + 1).wrapping_mul(0x9e37_79b9),
            );
            node_orders.push(NodeOrder {
                variant: img.variant,
                rep,
                nodes: order.iter().map(|&i| nodes[i].name().to_string()).collect(),
            });
            for (pos, &i) in order.iter().enumerate() {
                let node = &mut nodes[i];
                pb.set_message(format!(
                    "{} {} rep {}",
                    img.variant.as_str(),
                    node.name(),
                    rep + 1
                ));
                node.recycle().await?;
                // The pause image is pre-loaded, not counted (and its bytes are outside the delta).
                node.node()
                    .cri()
                    .pull_image(node.pause_ref(&pause_ref))
                    .await?;
                let run = Run::Cold(rep);
                let s = measure(node, img, run, pos, opts, &http, &metrics_url, &pb).await?;
                samples.push(s);
                pb.inc(1);
                if node.is_peer() {
                    // A peer's warm runs follow its last cold run at once (ours run below),
                    // then it stops, so its background work ends before the next node runs.
                    if rep + 1 == opts.reps {
                        warm_runs(node, img, opts, &http, &metrics_url, &pb, &mut samples).await?;
                    }
                    node.settle().await?;
                }
            }
        }
        for node in nodes.iter_mut().filter(|n| !n.is_peer()) {
            warm_runs(node, img, opts, &http, &metrics_url, &pb, &mut samples).await?;
        }
        if opts.fanout > 1 {
            // Pools: per rep, one kind's pool at a time (kinds in a seeded order of their own),
            // so kinds never compete with each other. Peers have no pools (yet).
            let kinds: Vec<usize> = (0..nodes.len()).filter(|&i| !nodes[i].is_peer()).collect();
            for rep in 0..opts.reps {
                let mut order = kinds.clone();
                shuffle(
                    &mut order,
                    opts.seed ^ (u64::from(rep) + 1).wrapping_mul(0x7f4a_7c15_9e37_79b9),
                );
                pool_orders.push(NodeOrder {
                    variant: img.variant,
                    rep,
                    nodes: order.iter().map(|&i| nodes[i].name().to_string()).collect(),
                });
                for (pos, &i) in order.iter().enumerate() {
                    let BedNode::Own(template) = &nodes[i] else {
                        continue;
                    };
                    pb.set_message(format!(
                        "{} {} ×{} pool, rep {}",
                        img.variant.as_str(),
                        template.name(),
                        opts.fanout,
                        rep + 1
                    ));
                    let at = PoolAt {
                        id: pools.len() as u32,
                        rep,
                        order: pos,
                    };
                    let (mut s, p) = run_pool(
                        template,
                        img,
                        at,
                        opts,
                        &http,
                        &metrics_url,
                        &pause_ref,
                        &pb,
                    )
                    .await?;
                    samples.append(&mut s);
                    pools.push(p);
                    pb.inc(opts.fanout as u64);
                }
            }
        }
    }
    pb.finish_and_clear();

    // Every process as it ran: the registry's settings, each node's containerd (arguments and
    // config text) and teleportd.
    let mut processes = vec![ProcessInfo {
        name: "registry-mock (in-process)".into(),
        args: vec![
            format!("root={}", reg_root.display()),
            format!("listen={host}"),
            format!("bandwidth_bytes_per_sec={:?}", opts.bandwidth_bytes_per_sec),
            format!("latency={:?}", opts.latency),
            format!("teleport_repos={repo}"),
            "anonymous_pull=true".into(),
            format!(
                "tls_listener={}",
                registry
                    .tls_addr()
                    .map_or("none".into(), |a| format!("{a} ({})", soci::REGISTRY_HOST))
            ),
        ],
        config: None,
    }];
    if reg_rt.is_some() {
        processes[0]
            .args
            .push(format!("runtime=own, 2 threads named {REGISTRY_THREAD}"));
    }
    // Peer nodes are stopped after their runs: recorded when they started.
    processes.append(&mut peer_processes);
    for n in nodes.iter().filter(|b| !b.is_peer()).map(BedNode::node) {
        processes.push(ProcessInfo {
            name: format!("{} containerd", n.name()),
            args: cmdline(n.containerd_pid()),
            config: std::fs::read_to_string(&n.paths().config).ok(),
        });
        if n.teleportd_pid().is_some() {
            processes.push(ProcessInfo {
                name: format!("{} teleportd", n.name()),
                args: cmdline(n.teleportd_pid()),
                config: None,
            });
        }
    }

    for node in nodes.drain(..) {
        node.destroy().await?;
    }
    if let Some(sb) = soci_bed {
        sb.destroy().await?;
    }
    if let Err(e) = registry.shutdown().await {
        tracing::warn!(error = %e, "registry shutdown");
    }

    let label = opts.image.clone().unwrap_or_else(|| opts.profile.clone());
    let report = Report::build(
        &label,
        opts.scale,
        opts.working_set,
        LinkSettings {
            bandwidth_bytes_per_sec: opts.bandwidth_bytes_per_sec,
            bandwidth: opts.bandwidth_label.clone(),
            latency_ms: opts.latency.as_secs_f64() * 1e3,
        },
        MachineInfo::detect(),
        versions,
        facts,
        samples,
        format!("{pause_ref} ({PAUSE_TAG})"),
    );
    let mut report = report;
    report.settings = RunSettings {
        seed: opts.seed,
        overlap: opts.overlap,
        reps: opts.reps,
        warm_runs: opts.warm_runs,
        readers: opts.readers,
        ready: opts.ready.label(),
        command: opts.command.clone(),
        args: opts.args.clone(),
        node_orders,
        fanout: opts.fanout,
        pool_orders,
    };
    report.processes = processes;
    report.set_pools(pools);
    report.write(&opts.out)?;
    Ok(report)
}

/// A running process's arguments (empty when it is gone).
fn cmdline(pid: Option<u32>) -> Vec<String> {
    pid.and_then(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Drop the learned start profiles of `img`'s layers in its repository, so the next start is a
/// first start.
fn drop_profiles(store: &registry_mock::store::Store, img: &ImageFacts) -> Result<()> {
    let repo = registry_mock::names::RepoName::parse(&img.repo)
        .ok_or_else(|| Error::Invalid(format!("repository name {:?}", img.repo)))?;
    for d in &img.layer_digests {
        let digest: emulator::Digest = d
            .parse()
            .map_err(|e| Error::Invalid(format!("layer digest {d}: {e}")))?;
        registry_mock::profile::delete(store, &repo, &digest)
            .map_err(|e| Error::Invalid(format!("drop start profile of {d}: {e}")))?;
    }
    Ok(())
}

/// `sync`, then drop clean page-cache pages, so a run reads from disk like a freshly booted
/// node: a cold run its image's bytes, and any run the runtime's own binaries and libraries.
/// Best effort: without root the write fails and is logged once per run.
fn drop_page_cache() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "1") {
        tracing::warn!(error = %e, "drop page cache");
    }
}

/// Fisher–Yates with a splitmix64 stream: the same seed gives the same order.
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut x = seed;
    let mut next = || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Which kind of start a measurement is.
#[derive(Debug, Clone, Copy)]
enum Run {
    First(u32),
    Cold(u32),
    Warm(u32),
    /// Node `index` of pool `pool`, in cold rep `rep` (its working set is the rep's).
    Pool {
        rep: u32,
        pool: u32,
        index: usize,
    },
}

impl Run {
    /// A file-name-safe name: `first1`, `cold2`, `warm0`, `pool3-rep1-node4`.
    fn label(self) -> String {
        match self {
            Run::First(r) => format!("first{r}"),
            Run::Cold(r) => format!("cold{r}"),
            Run::Warm(r) => format!("warm{r}"),
            Run::Pool { rep, pool, index } => format!("pool{pool}-rep{rep}-node{index}"),
        }
    }
}

/// The app's working-set seed for a run: 0 (the learning set) for a first start and the warm
/// runs, a distinct non-zero seed per cold rep.
fn working_set_seed(opts: &CompareOptions, run: Run) -> u64 {
    match run {
        Run::Cold(r) | Run::Pool { rep: r, .. } => (opts.seed << 16) | (u64::from(r) + 1),
        Run::First(_) | Run::Warm(_) => 0,
    }
}

/// The warm runs of one node (image present), each a sample.
#[allow(clippy::too_many_arguments)]
async fn warm_runs(
    node: &BedNode,
    img: &ImageFacts,
    opts: &CompareOptions,
    http: &reqwest::Client,
    metrics_url: &str,
    pb: &ProgressBar,
    samples: &mut Vec<Sample>,
) -> Result<()> {
    for w in 0..opts.warm_runs {
        pb.set_message(format!(
            "{} {} warm {}",
            img.variant.as_str(),
            node.name(),
            w + 1
        ));
        let s = measure(node, img, Run::Warm(w), 0, opts, http, metrics_url, pb).await?;
        samples.push(s);
        pb.inc(1);
    }
    Ok(())
}

/// How a sample's node is labelled in the report.
#[derive(Debug, Clone)]
struct NodeLabels {
    role: String,
    mount_mode: String,
    start_profile: String,
}

impl NodeLabels {
    fn of(n: &BedNode) -> NodeLabels {
        NodeLabels {
            role: n.role().into(),
            mount_mode: n.mount_mode().into(),
            start_profile: n
                .start_profile()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
        }
    }
}

/// One start to make: the pod, how its readiness is judged, its working-set seed.
struct PodPlan {
    node: String,
    variant: Variant,
    run_kind: Run,
    seed: u64,
    overlap: f64,
    spec: PodSpec,
    run: RunOptions,
    events: Events,
}

impl PodPlan {
    fn new(
        node: &Node,
        img: &ImageFacts,
        run_kind: Run,
        opts: &CompareOptions,
        pb: &ProgressBar,
    ) -> PodPlan {
        // A peer pulls the image from its own repository (with its own index).
        let image = img
            .peers
            .iter()
            .find(|p| p.node == node.name())
            .map_or(img.reference.as_str(), |p| p.reference.as_str());
        let pod = format!(
            "{}-{}-{}",
            img.variant.as_str(),
            node.name(),
            match run_kind {
                Run::First(r) => format!("first{}", r + 1),
                Run::Cold(r) => format!("r{}", r + 1),
                Run::Warm(r) => format!("warm{}", r + 1),
                Run::Pool { pool, index, .. } => format!("pool{pool}n{index}"),
            }
        );
        let seed = working_set_seed(opts, run_kind);
        let mut env = vec![
            ("TB_WORKING_SET".to_string(), opts.working_set.to_string()),
            ("TB_SEED".to_string(), seed.to_string()),
            ("TB_OVERLAP".to_string(), opts.overlap.to_string()),
        ];
        if let Some(r) = opts.readers {
            env.push(("TB_READERS".into(), r.to_string()));
        }
        let spec = PodSpec {
            name: pod.clone(),
            image: image.to_string(),
            env,
            log_dir: node.paths().pods.join(&pod),
            cgroup_parent: node.cgroup_parent(),
            command: opts.command.clone(),
            args: opts.args.clone(),
        };
        // The fixture probe checks the hash of this run's own working set.
        let expected_hash = (matches!(opts.ready, ReadyProbe::Fixture) && !img.files.is_empty())
            .then(|| {
                fixtures::image::working_set_varied(
                    &img.files,
                    opts.working_set,
                    seed,
                    opts.overlap,
                )
                .hash
            });
        let run = RunOptions {
            expected_hash,
            ready_timeout: opts.ready_timeout,
            teardown: true,
            probe: opts.ready.clone(),
        };
        let events = Events::new(node.name(), &pod, opts.interactive.then(|| pb.clone()));
        let events = if opts.interactive {
            events
        } else {
            events.quiet()
        };
        PodPlan {
            node: node.name().to_string(),
            variant: img.variant,
            run_kind,
            seed,
            overlap: opts.overlap,
            spec,
            run,
            events,
        }
    }

    /// The sample of this plan's run.
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &self,
        labels: &NodeLabels,
        order: usize,
        host: HostState,
        t: PodTimings,
        served: Served,
        blob_range_requests: u64,
        teleportd_metrics: std::collections::BTreeMap<String, f64>,
        trace: Option<fuse_mount::trace::Summary>,
        pool: Option<PoolTag>,
    ) -> Sample {
        let ready = t.ready.clone().unwrap_or_default();
        Sample {
            variant: self.variant,
            node: self.node.clone(),
            role: labels.role.clone(),
            mount_mode: labels.mount_mode.clone(),
            rep: match self.run_kind {
                Run::Cold(r) | Run::First(r) | Run::Pool { rep: r, .. } => Some(r),
                Run::Warm(_) => None,
            },
            warm: matches!(self.run_kind, Run::Warm(_)),
            first_start: matches!(self.run_kind, Run::First(_)),
            start_profile: labels.start_profile.clone(),
            seed: self.seed,
            overlap: self.overlap,
            order,
            host,
            pull_seconds: t.pull_seconds,
            sandbox_seconds: t.sandbox_seconds,
            create_seconds: t.create_seconds,
            start_seconds: t.start_seconds,
            ready_seconds: t.ready_seconds,
            entrypoint_elapsed_ms: ready.elapsed_ms,
            ready_files: ready.files,
            ready_bytes: ready.bytes,
            ready_hash: ready.hash,
            served,
            blob_range_requests,
            teleportd_metrics,
            trace,
            pool,
        }
    }
}

/// teleportd's `/metrics` on a teleporter (empty elsewhere or when it does not answer).
async fn teleportd_scrape(http: &reqwest::Client, url: Option<&str>) -> metrics::Scrape {
    match url {
        Some(u) => metrics::scrape(http, u).await.unwrap_or_default(),
        None => metrics::Scrape::default(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    bed_node: &BedNode,
    img: &ImageFacts,
    run_kind: Run,
    order: usize,
    opts: &CompareOptions,
    http: &reqwest::Client,
    metrics_url: &str,
    pb: &ProgressBar,
) -> Result<Sample> {
    let node = bed_node.node();
    let plan = PodPlan::new(node, img, run_kind, opts, pb);
    let tp_url = node.teleportd_metrics_url();
    // Warm runs too: a warm start differs from a cold one only in the image being on the node,
    // not in the host's binaries and libraries being in memory.
    if opts.drop_caches {
        drop_page_cache();
    }
    let cursor = trace_cursor(node).await;
    let host_before = HostProbe::now();
    let tp_before = teleportd_scrape(http, tp_url.as_deref()).await;
    let before = metrics::scrape(http, metrics_url).await?;
    let t = run_pod(node, &plan.spec, &plan.run, &plan.events).await?;
    let after = metrics::scrape(http, metrics_url).await?;
    let tp_after = teleportd_scrape(http, tp_url.as_deref()).await;
    let keep = trace_file(opts, img, bed_node.name(), run_kind);
    let trace = sum_trace(trace_since(cursor).await, keep.as_deref())?;
    let host = HostState::between(&host_before, &HostProbe::now());
    Ok(plan.sample(
        &NodeLabels::of(bed_node),
        order,
        host,
        t,
        Served::between(&before, &after),
        after
            .blob_range_requests()
            .saturating_sub(before.blob_range_requests()),
        tp_before.delta(&tp_after),
        trace,
        None,
    ))
}

/// A teleporter's fuse manager trace cursor (its teleportd root and next event): only the
/// events of the run that follows are summed by [`trace_since`]. `None` elsewhere.
async fn trace_cursor(node: &Node) -> Option<(PathBuf, u64)> {
    node.teleportd_metrics_url()?;
    let root = node.paths().teleportd_root.clone();
    let from = fuse_mount::manager::client::trace_at(&root, u64::MAX)
        .await
        .ok()
        .filter(|p| p.capacity > 0)?
        .next;
    Some((root, from))
}

/// The trace since `cursor`.
async fn trace_since(cursor: Option<(PathBuf, u64)>) -> Option<fuse_mount::trace::Page> {
    let (root, from) = cursor?;
    fuse_mount::manager::client::trace_all(&root, from)
        .await
        .ok()
}

/// Where `--keep-traces` writes a run's raw trace: `out/traces/VARIANT-NODE-RUN.json`.
fn trace_file(opts: &CompareOptions, img: &ImageFacts, node: &str, run: Run) -> Option<PathBuf> {
    opts.keep_traces.then(|| {
        opts.out.join("traces").join(format!(
            "{}-{node}-{}.json",
            img.variant.as_str(),
            run.label()
        ))
    })
}

/// What a run's trace adds up to; with `keep`, the raw trace is written there first.
fn sum_trace(
    page: Option<fuse_mount::trace::Page>,
    keep: Option<&Path>,
) -> Result<Option<fuse_mount::trace::Summary>> {
    let Some(page) = page else {
        return Ok(None);
    };
    if let Some(path) = keep {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        }
        let json = serde_json::to_vec(&page).map_err(|source| Error::Json {
            what: format!("trace {}", path.display()),
            source,
        })?;
        std::fs::write(path, json).map_err(Error::io(format!("write {}", path.display())))?;
    }
    Ok(Some(fuse_mount::trace::Summary::of(&page.events)))
}

/// Where a pool start sits in the run.
#[derive(Debug, Clone, Copy)]
struct PoolAt {
    id: u32,
    rep: u32,
    /// Position of the kind in the rep's pool order.
    order: usize,
}

/// One pool start: `opts.fanout` fresh nodes configured like `template` (each its own root,
/// state, sockets, chunk cache and teleportd, on a new filesystem), each with the pause image
/// loaded; then released together and measured. Every node is stopped and its directory
/// removed afterwards, whatever happened (a node dropped on an error stops by PID and
/// unmounts too).
#[allow(clippy::too_many_arguments)]
async fn run_pool(
    template: &Node,
    img: &ImageFacts,
    at: PoolAt,
    opts: &CompareOptions,
    http: &reqwest::Client,
    metrics_url: &str,
    pause_ref: &str,
    pb: &ProgressBar,
) -> Result<(Vec<Sample>, PoolRun)> {
    let mut nodes = Vec::with_capacity(opts.fanout);
    for i in 0..opts.fanout {
        let mut cfg = template.config().clone();
        // Beside the single node's directory, named by index only: one kind's pool runs at a
        // time and its directories go with it, and unix socket paths under a node's directory
        // (teleportd's, the fuse manager's) must stay within 108 bytes.
        cfg.dir = template.paths().dir.with_file_name(format!("p{i}"));
        crate::mounts::remove_tree(&cfg.dir)?;
        let node = Node::start(cfg).await?;
        node.cri().pull_image(pause_ref).await?;
        nodes.push(Arc::new(node));
    }
    let labels = NodeLabels {
        role: template.kind().role().into(),
        mount_mode: template.kind().mount_mode_label().into(),
        start_profile: bed::start_profile_of(template)
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
    };
    let outcome = release_pool(&nodes, &labels, img, at, opts, http, metrics_url, pb).await;
    let mut teardown = Ok(());
    for node in nodes {
        // Every task has ended (release_pool waits for all), so this is the last reference.
        if let Ok(n) = Arc::try_unwrap(node) {
            if let Err(e) = n.destroy().await {
                tracing::warn!(error = %e, "pool node teardown");
                if teardown.is_ok() {
                    teardown = Err(e);
                }
            }
        }
    }
    let done = outcome?;
    teardown?;
    Ok(done)
}

/// Release `nodes` together and measure: each node's start in a task of its own (they run in
/// parallel), all waiting at one barrier after their own preparation; the registry's
/// `/metrics`, its threads' CPU and the host around the whole pool. Waits for every task.
#[allow(clippy::too_many_arguments)]
async fn release_pool(
    nodes: &[Arc<Node>],
    labels: &NodeLabels,
    img: &ImageFacts,
    at: PoolAt,
    opts: &CompareOptions,
    http: &reqwest::Client,
    metrics_url: &str,
    pb: &ProgressBar,
) -> Result<(Vec<Sample>, PoolRun)> {
    let size = nodes.len();
    let barrier = Arc::new(tokio::sync::Barrier::new(size));
    if opts.drop_caches {
        drop_page_cache();
    }
    let host_before = HostProbe::now();
    let before = metrics::scrape(http, metrics_url).await?;
    let registry_before = ThreadCpu::named(REGISTRY_THREAD);
    let cpu_before = cpu::process_seconds();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, node) in nodes.iter().enumerate() {
        let run_kind = Run::Pool {
            rep: at.rep,
            pool: at.id,
            index,
        };
        let plan = PodPlan::new(node, img, run_kind, opts, pb);
        let keep = trace_file(opts, img, node.name(), run_kind);
        let (node, barrier, http) = (Arc::clone(node), Arc::clone(&barrier), http.clone());
        tasks.spawn(async move {
            let tp_url = node.teleportd_metrics_url();
            let tp_before = teleportd_scrape(&http, tp_url.as_deref()).await;
            let cursor = trace_cursor(&node).await;
            barrier.wait().await;
            let released = (SystemTime::now(), Instant::now());
            let t = run_pod(&node, &plan.spec, &plan.run, &plan.events).await;
            let ready_at = Instant::now();
            let tp_after = teleportd_scrape(&http, tp_url.as_deref()).await;
            let trace = sum_trace(trace_since(cursor).await, keep.as_deref());
            // A trace that cannot be kept fails the node's run like any other error.
            let (t, trace) = match (t, trace) {
                (Ok(t), Ok(trace)) => (Ok(t), trace),
                (Err(e), _) | (Ok(_), Err(e)) => (Err(e), None),
            };
            (
                index,
                plan,
                released,
                ready_at,
                t,
                (tp_before.delta(&tp_after), trace),
            )
        });
    }
    let mut ended = Vec::with_capacity(size);
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, plan, released, ready_at, Ok(t), tp)) => {
                ended.push((index, plan, released, ready_at, t, tp))
            }
            Ok((_, _, _, _, Err(e), _)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(Error::Invalid(format!("pool task: {e}")));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let after = metrics::scrape(http, metrics_url).await?;
    let registry_cpu_seconds = ThreadCpu::named(REGISTRY_THREAD).seconds_since(&registry_before);
    let testbed_cpu_seconds = (cpu::process_seconds() - cpu_before).max(0.0);
    let host = HostState::between(&host_before, &HostProbe::now());
    ended.sort_by_key(|e| e.0);
    let first_release = ended.iter().map(|e| e.2 .1).min();
    let last_release = ended.iter().map(|e| e.2 .1).max();
    let last_ready = ended.iter().map(|e| e.3).max();
    let (wall_seconds, release_spread_ms) = match (first_release, last_release, last_ready) {
        (Some(a), Some(b), Some(r)) => (
            r.duration_since(a).as_secs_f64(),
            b.duration_since(a).as_secs_f64() * 1e3,
        ),
        _ => (0.0, 0.0),
    };
    let samples = ended
        .into_iter()
        .map(|(index, plan, released, _, t, tp)| {
            let released_unix_ms = released
                .0
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3);
            let tag = PoolTag {
                pool: at.id,
                node_index: index,
                size,
                released_unix_ms,
            };
            // The link is shared: bytes are the pool's (in `PoolRun`), not a node's.
            plan.sample(
                labels,
                at.order,
                host,
                t,
                Served::default(),
                0,
                tp.0,
                tp.1,
                Some(tag),
            )
        })
        .collect();
    let pool = PoolRun {
        id: at.id,
        variant: img.variant,
        rep: at.rep,
        node: nodes
            .first()
            .map(|n| n.name().to_string())
            .unwrap_or_default(),
        size,
        order: at.order,
        served: Served::between(&before, &after),
        blob_range_requests: after
            .blob_range_requests()
            .saturating_sub(before.blob_range_requests()),
        registry_cpu_seconds,
        testbed_cpu_seconds,
        wall_seconds,
        release_spread_ms,
        host,
    };
    Ok((samples, pool))
}
