//! What a comparison measured and how: one [`Sample`] per pod start, the [`ImageFacts`] of each
//! image (with its peers' index builds), the machine around a sample ([`HostState`]) and the
//! [`RunSettings`]. Shared by [`crate::compare`] (which fills them) and [`crate::report`]
//! (which summarises them); depends on neither.

use crate::bed::Variant;
use crate::metrics::Served;

/// One measured pod start.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub variant: Variant,
    pub node: String,
    pub role: String,
    pub mount_mode: String,
    /// `None` for the warm run.
    pub rep: Option<u32>,
    pub warm: bool,
    /// The image's first start on any node of a fresh registry: no learned start profile exists
    /// yet (teleportd records one). Reported on its own, not in the cold medians.
    #[serde(default)]
    pub first_start: bool,
    /// Teleporters: `learned` (profiles on) or `off` (`--no-start-profile`); shuttle: empty.
    #[serde(default)]
    pub start_profile: String,
    /// The app's working-set seed (0 = the learning set) and overlap with the learning set.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub overlap: f64,
    /// Position of this node in the rep's (shuffled) node order.
    #[serde(default)]
    pub order: usize,
    /// Machine state around the sample: 1-minute load average and CPU steal ticks
    /// (`/proc/stat`), before and after.
    #[serde(default)]
    pub host: HostState,
    pub pull_seconds: Option<f64>,
    pub sandbox_seconds: f64,
    pub create_seconds: f64,
    pub start_seconds: f64,
    pub ready_seconds: f64,
    pub entrypoint_elapsed_ms: u64,
    pub ready_files: u64,
    pub ready_bytes: u64,
    pub ready_hash: String,
    pub served: Served,
    /// Ranged blob GETs the registry answered 206 during the run: lazily fetched layer parts
    /// (SOCI's spans); 0 for whole-blob pulls and for Teleport (its data is not blobs).
    #[serde(default)]
    pub blob_range_requests: u64,
    /// teleportd `/metrics` changes during the run (teleporters only; empty if unavailable).
    #[serde(default)]
    pub teleportd_metrics: std::collections::BTreeMap<String, f64>,
    /// Teleporters: what the fuse manager's start trace adds up to for this run (FUSE opens
    /// and reads, cached or missed, and their waits; `teleportd trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<fuse_mount::trace::Summary>,
    /// Set when this start was one of a pool's (`--fanout N`): N nodes of one kind started
    /// together. Such a sample's `served` is empty (the link is shared): the pool's registry
    /// figures are in the report's `pools`. Not in the single-node rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolTag>,
}

/// A pool sample's place in its pool.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PoolTag {
    /// The pool ([`PoolRun::id`]).
    pub pool: u32,
    /// This node's index in the pool, `0..size`.
    pub node_index: usize,
    pub size: usize,
    /// When this node was released (past the barrier every node of the pool waited at, fully
    /// provisioned, recycled, pause image loaded): wall clock, ms since the Unix epoch.
    pub released_unix_ms: f64,
}

/// One pool start: `size` nodes of one kind released together on the shared registry link.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PoolRun {
    pub id: u32,
    pub variant: Variant,
    pub rep: u32,
    /// The node kind (`shuttle`, `teleporter-merged`, …), as in the single-node rows.
    pub node: String,
    pub size: usize,
    /// Position of this kind in the rep's (shuffled) pool order.
    pub order: usize,
    /// Registry `/metrics` delta over the whole pool start (every node).
    pub served: Served,
    pub blob_range_requests: u64,
    /// CPU seconds of the registry's threads during the pool start (its own runtime).
    pub registry_cpu_seconds: f64,
    /// CPU seconds of the whole testbed process (registry included) during the pool start.
    pub testbed_cpu_seconds: f64,
    /// First release → last node ready.
    pub wall_seconds: f64,
    /// Last release − first release, ms.
    pub release_spread_ms: f64,
    pub host: HostState,
}

/// Image facts a report row needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ImageFacts {
    pub variant: Variant,
    pub reference: String,
    /// The repository it was pushed to (start profiles are stored per repository).
    #[serde(default)]
    pub repo: String,
    pub manifest_digest: String,
    pub layers: usize,
    pub image_bytes: u64,
    pub compressed_bytes: u64,
    /// The learning run's hash (fixtures only; empty for an image without a manifest).
    pub working_set_hash: String,
    /// Layer digests (to drop their start profiles before each first start).
    #[serde(default)]
    pub layer_digests: Vec<String>,
    /// The image's regular files (fixtures: for each rep's expected hash); not serialised.
    #[serde(skip)]
    pub files: Vec<fixtures::RefFile>,
    pub working_set_files: u64,
    pub working_set_bytes: u64,
    /// Each peer node's copy of the image and what was built for it after the push (SOCI's
    /// index), timed apart from the starts, like Teleport's expansion.
    #[serde(default)]
    pub peers: Vec<PeerImage>,
}

/// A peer node's copy of an image and its index build (SOCI) or conversion (nydus).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PeerImage {
    /// The node that pulls it (`soci`, `soci-min0`, `nydus`).
    pub node: String,
    /// What that node pulls (its own repository on the same registry, so each node finds only
    /// its own index through the referrers API).
    pub reference: String,
    /// `soci create --min-layer-size` (bytes).
    pub min_layer_size: u64,
    /// `soci create --span-size` (bytes).
    pub span_size: u64,
    /// `soci create` + `soci push` on the helper containerd, seconds (the helper's pull of the
    /// image before it is not included); for nydus, the conversion (`nydus-image create` per
    /// layer, `merge`) and its push.
    pub index_build_seconds: f64,
    /// The SOCI index found through the referrers API (empty: no index, e.g. every layer below
    /// `min_layer_size`, so the node pulls every layer whole); for nydus, the converted
    /// image's manifest.
    pub index_digest: String,
    /// zTOCs in the index (one per layer it indexes; the others are pulled whole) and their
    /// bytes.
    pub ztocs: usize,
    pub ztoc_bytes: u64,
    /// nydus: data blobs (one per layer) and their bytes, and the bootstrap layer's bytes.
    #[serde(default)]
    pub nydus_blobs: usize,
    #[serde(default)]
    pub nydus_blob_bytes: u64,
    #[serde(default)]
    pub nydus_bootstrap_bytes: u64,
}

/// Load average and CPU steal at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HostProbe {
    load1: f64,
    steal_ticks: u64,
}

impl HostProbe {
    pub(crate) fn now() -> HostProbe {
        let load1 = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        // `cpu  user nice system idle iowait irq softirq steal ...`
        let steal_ticks = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| {
                let l = t.lines().find(|l| l.starts_with("cpu "))?;
                l.split_whitespace().nth(8)?.parse().ok()
            })
            .unwrap_or(0);
        HostProbe { load1, steal_ticks }
    }
}

/// The machine around one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HostState {
    pub load1_before: f64,
    pub load1_after: f64,
    pub steal_ticks_before: u64,
    pub steal_ticks_after: u64,
}

impl HostState {
    pub(crate) fn between(a: &HostProbe, b: &HostProbe) -> HostState {
        HostState {
            load1_before: a.load1,
            load1_after: b.load1,
            steal_ticks_before: a.steal_ticks,
            steal_ticks_after: b.steal_ticks,
        }
    }
}

/// The order the nodes ran in one rep (recorded in the report).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeOrder {
    pub variant: Variant,
    pub rep: u32,
    pub nodes: Vec<String>,
}

/// How the run was made (beside the link and machine) — recorded in report.json.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RunSettings {
    pub seed: u64,
    pub overlap: f64,
    pub reps: u32,
    pub warm_runs: u32,
    pub readers: Option<usize>,
    pub ready: String,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub node_orders: Vec<NodeOrder>,
    /// `--fanout N`: nodes per pool start (0 or 1: no pools).
    #[serde(default)]
    pub fanout: usize,
    /// The order node kinds ran their pools in, per variant and rep.
    #[serde(default)]
    pub pool_orders: Vec<NodeOrder>,
}
