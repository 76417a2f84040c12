//! The comparison report: one row per (variant, node, mount mode) with median and min–max over
//! repetitions, written as `report.md`, `report.json` (every raw sample, machine, versions,
//! link) and `report.svg` (hand-written grouped bars). The seed's published numbers are printed
//! under the table for comparison only; they are never inputs. With `--fanout N`, a pool
//! section gives each kind's p50/p95 over N nodes started at once, against its single node.

use crate::bed::Variant;
use crate::error::{Error, Result};
use crate::machine::{MachineInfo, Versions};
use crate::measurement::{ImageFacts, PoolRun, RunSettings, Sample};
use std::fmt::Write as _;
use std::path::Path;

/// Median, min and max of a set of seconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Nearest-rank percentiles (p50 is the lower middle for an even count).
    #[serde(default)]
    pub p50: f64,
    #[serde(default)]
    pub p90: f64,
    #[serde(default)]
    pub p95: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        let rank = |p: f64| v[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            p50: rank(0.5),
            p90: rank(0.9),
            p95: rank(0.95),
        })
    }

    fn cell(s: Option<Stat>) -> String {
        match s {
            None => "–".into(),
            Some(s) if (s.max - s.min).abs() < 0.0005 => format!("{:.2} s", s.median),
            Some(s) => format!("{:.2} s ({:.2}–{:.2})", s.median, s.min, s.max),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LinkSettings {
    pub bandwidth_bytes_per_sec: Option<u64>,
    pub bandwidth: Option<String>,
    pub latency_ms: f64,
}

/// One (variant, node, mount mode).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub variant: Variant,
    pub layers: usize,
    pub image_bytes: u64,
    /// Role: `shuttle`, `teleporter` or a peer's (`soci`).
    pub node: String,
    /// The node's own name (`teleporter-merged-off`, …).
    #[serde(default)]
    pub node_name: String,
    pub mount_mode: String,
    /// `learned`, `off`, `none yet (first start)`; `–` for the shuttle.
    #[serde(default)]
    pub start_profile: String,
    /// This row is the image's first start (no start profile stored yet), on its own reps.
    #[serde(default)]
    pub first_start: bool,
    /// kubelet's *Pulled* (CRI PullImage). For Teleport: metadata only (attach and data are
    /// paid in ready).
    pub pull_seconds: Option<Stat>,
    pub ready_seconds: Option<Stat>,
    /// The headline: standard ready ÷ this row's ready (medians).
    #[serde(default)]
    pub speedup_ready: Option<f64>,
    /// Median of the warm runs.
    pub warm_ready_seconds: Option<f64>,
    /// Median of each phase over the cold runs: pull, sandbox, create, start, app (to ready).
    #[serde(default)]
    pub phases: Phases,
    /// Median over the cold repetitions.
    pub layer_blob_bytes_downloaded: u64,
    pub expanded_bytes_fetched: u64,
    /// Median bytes of referrers' layers (SOCI's zTOCs) over the cold repetitions.
    #[serde(default)]
    pub artifact_bytes_fetched: u64,
    /// Median ranged blob GETs (206) over the cold repetitions: lazily read layer parts.
    #[serde(default)]
    pub blob_range_requests: u64,
    /// Cold repetitions in this row.
    pub samples: usize,
}

/// Median seconds of each phase of a start (the stacked bars of report.svg).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Phases {
    pub pull: f64,
    pub sandbox: f64,
    pub create: f64,
    pub start: f64,
    /// Started → ready (the app reading its working set, or the probe).
    pub app: f64,
}

impl Phases {
    fn of(samples: &[&Sample]) -> Phases {
        let med = |f: &dyn Fn(&Sample) -> f64| {
            Stat::of(&samples.iter().map(|s| f(s)).collect::<Vec<_>>()).map_or(0.0, |s| s.median)
        };
        Phases {
            pull: med(&|s| s.pull_seconds.unwrap_or(0.0)),
            sandbox: med(&|s| s.sandbox_seconds),
            create: med(&|s| s.create_seconds),
            start: med(&|s| s.start_seconds),
            app: med(&app_seconds),
        }
    }
}

/// A published figure from the seed (Azure, 2021).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Published {
    pub image: String,
    pub size_mb: u64,
    pub layers: u32,
    pub standard_seconds: f64,
    pub teleport_seconds: f64,
    pub source: String,
}

pub fn published() -> Vec<Published> {
    let src = "Azure/acr docs/teleport/aks-teleport-comparison.md".to_string();
    vec![
        Published {
            image: "azure-vote-front:v1".into(),
            size_mb: 944,
            layers: 29,
            standard_seconds: 34.7,
            teleport_seconds: 8.0,
            source: src.clone(),
        },
        Published {
            image: "azure-vote-front:squashed".into(),
            size_mb: 929,
            layers: 1,
            standard_seconds: 31.7,
            teleport_seconds: 1.9,
            source: src,
        },
    ]
}

/// Version of report.json's layout (bumped when fields change meaning). 3: peer rows (`soci`,
/// `nydus` role and mount mode), `images[].peers`, `served.artifact_blob`,
/// `blob_range_requests`; 4: pool starts (`pools`, `pool_rows`, `samples[].pool`). Every
/// addition defaults, so older reports still load.
pub const SCHEMA_VERSION: u32 = 4;

/// A row's mount mode: ours (`overlayfs`, teleport's) or a peer's.
fn is_peer_mode(mode: &str) -> bool {
    mode == "soci" || mode == "nydus"
}

/// " vs SOCI", " vs nydus", " vs SOCI vs nydus" or nothing: the peers among `rows`.
fn peers_label<'a>(modes: impl Iterator<Item = &'a str> + Clone) -> String {
    let mut s = String::new();
    for (mode, label) in [("soci", "SOCI"), ("nydus", "nydus")] {
        if modes.clone().any(|m| m == mode) {
            s.push_str(" vs ");
            s.push_str(label);
        }
    }
    s
}

/// Row order: the standard node, teleport, then peers.
fn mode_rank(mode: &str) -> u8 {
    match mode {
        "overlayfs" => 0,
        m if is_peer_mode(m) => 2,
        _ => 1,
    }
}

/// One process of the bed as it was started: its arguments and config text.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    pub name: String,
    pub args: Vec<String>,
    /// Config file text (containerd's config.toml), when it has one.
    #[serde(default)]
    pub config: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    #[serde(default)]
    pub schema_version: u32,
    /// `git rev-parse HEAD` of the checkout that ran (`unknown` outside git).
    #[serde(default)]
    pub git_commit: String,
    pub created_unix: u64,
    pub profile: String,
    pub scale: f64,
    pub working_set: f64,
    pub link: LinkSettings,
    pub machine: MachineInfo,
    pub versions: Versions,
    #[serde(default)]
    pub settings: RunSettings,
    #[serde(default)]
    pub processes: Vec<ProcessInfo>,
    pub pause_image: String,
    pub images: Vec<ImageFacts>,
    pub rows: Vec<Row>,
    pub samples: Vec<Sample>,
    pub published: Vec<Published>,
    /// Pool starts (`--fanout N`), each with the registry's bytes and CPU (schema 4).
    #[serde(default)]
    pub pools: Vec<PoolRun>,
    /// Per variant × node kind: the pool figures (schema 4).
    #[serde(default)]
    pub pool_rows: Vec<PoolRow>,
}

/// p50 and p95 of one figure over a kind's pool samples (nearest rank, as [`Stat`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spread {
    pub p50: f64,
    pub p95: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        Stat::of(values).map_or(Spread::default(), |s| Spread {
            p50: s.p50,
            p95: s.p95,
        })
    }
}

/// One variant × node kind started `size` nodes at once, over every pool of the run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PoolRow {
    pub variant: Variant,
    /// The kind (`shuttle`, `teleporter-merged`, …).
    pub node: String,
    pub mount_mode: String,
    pub start_profile: String,
    /// Nodes per pool.
    pub size: usize,
    /// Pool starts (reps) and node samples in them.
    pub pools: usize,
    pub samples: usize,
    /// Scheduled → ready (pull included) over every node of every pool.
    pub ready: Spread,
    pub pull: Spread,
    pub sandbox: Spread,
    pub create: Spread,
    pub start: Spread,
    /// Started → ready.
    pub app: Spread,
    /// The same kind's single-node ready (median of its cold runs in this report's rows).
    pub single_ready: Option<f64>,
    /// Pool p95 ready ÷ single ready.
    pub p95_over_single: Option<f64>,
    /// Per pool start, medians over the pools: registry bytes served (every kind of body),
    /// of which layer blobs and expanded data; registry CPU seconds; the whole testbed's.
    pub registry_bytes: u64,
    pub layer_blob_bytes: u64,
    pub expanded_bytes: u64,
    pub registry_cpu_seconds: f64,
    pub testbed_cpu_seconds: f64,
    /// First release → last node ready (median over pools).
    pub wall_seconds: f64,
    /// The widest release spread of any pool, ms (the nodes started together).
    pub max_release_spread_ms: f64,
}

/// Started → ready: ready minus the phases before it.
fn app_seconds(s: &Sample) -> f64 {
    (s.ready_seconds
        - s.pull_seconds.unwrap_or(0.0)
        - s.sandbox_seconds
        - s.create_seconds
        - s.start_seconds)
        .max(0.0)
}

fn median_f64(v: &[f64]) -> f64 {
    Stat::of(v).map_or(0.0, |s| s.median)
}

/// The pool rows of `samples` and `pools` (single-node figures from `rows`), in the rows' kind
/// order.
pub fn pool_rows(samples: &[Sample], pools: &[PoolRun], rows: &[Row]) -> Vec<PoolRow> {
    let mut keys: Vec<(Variant, &str)> = Vec::new();
    for p in pools {
        if !keys.iter().any(|(v, n)| *v == p.variant && *n == p.node) {
            keys.push((p.variant, &p.node));
        }
    }
    let rank = |v: Variant, n: &str| {
        rows.iter()
            .position(|r| r.variant == v && r.node_name == n && !r.first_start)
            .unwrap_or(usize::MAX)
    };
    keys.sort_by_key(|(v, n)| (rank(*v, n), *n));
    keys.into_iter()
        .map(|(variant, node)| {
            let runs: Vec<&PoolRun> = pools
                .iter()
                .filter(|p| p.variant == variant && p.node == node)
                .collect();
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| {
                    s.pool.is_some_and(|t| runs.iter().any(|p| p.id == t.pool))
                        && s.variant == variant
                })
                .collect();
            let spread = |f: &dyn Fn(&Sample) -> f64| {
                Spread::of(&mine.iter().map(|s| f(s)).collect::<Vec<_>>())
            };
            let ready = spread(&|s| s.ready_seconds);
            let single_ready = rows
                .iter()
                .find(|r| r.variant == variant && r.node_name == node && !r.first_start)
                .and_then(|r| r.ready_seconds)
                .map(|s| s.median);
            let per_pool = |f: &dyn Fn(&PoolRun) -> f64| {
                median_f64(&runs.iter().map(|p| f(p)).collect::<Vec<_>>())
            };
            let per_pool_bytes =
                |f: &dyn Fn(&PoolRun) -> u64| median_u64(runs.iter().map(|p| f(p)).collect());
            let head = mine.first();
            PoolRow {
                variant,
                node: node.to_string(),
                mount_mode: head.map_or(String::new(), |s| s.mount_mode.clone()),
                start_profile: head.map_or(String::new(), |s| s.start_profile.clone()),
                size: runs.first().map_or(0, |p| p.size),
                pools: runs.len(),
                samples: mine.len(),
                ready,
                pull: spread(&|s| s.pull_seconds.unwrap_or(0.0)),
                sandbox: spread(&|s| s.sandbox_seconds),
                create: spread(&|s| s.create_seconds),
                start: spread(&|s| s.start_seconds),
                app: spread(&app_seconds),
                single_ready,
                p95_over_single: single_ready
                    .filter(|x| *x > 0.0 && !mine.is_empty())
                    .map(|x| ready.p95 / x),
                registry_bytes: per_pool_bytes(&|p| p.served.total()),
                layer_blob_bytes: per_pool_bytes(&|p| p.served.layer_blob),
                expanded_bytes: per_pool_bytes(&|p| p.served.expanded()),
                registry_cpu_seconds: per_pool(&|p| p.registry_cpu_seconds),
                testbed_cpu_seconds: per_pool(&|p| p.testbed_cpu_seconds),
                wall_seconds: per_pool(&|p| p.wall_seconds),
                max_release_spread_ms: runs.iter().map(|p| p.release_spread_ms).fold(0.0, f64::max),
            }
        })
        .collect()
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

/// `git rev-parse HEAD` in the source checkout, or `unknown`.
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        profile: &str,
        scale: f64,
        working_set: f64,
        link: LinkSettings,
        machine: MachineInfo,
        versions: Versions,
        images: Vec<ImageFacts>,
        samples: Vec<Sample>,
        pause_image: String,
    ) -> Report {
        let mut rows = Vec::new();
        for img in &images {
            // Rows in node order as first seen (shuttle first), first starts after the cold rows.
            let mut keys: Vec<(&str, &str, bool)> = Vec::new();
            for first in [false, true] {
                for s in samples.iter().filter(|s| {
                    s.variant == img.variant
                        && s.first_start == first
                        && !s.warm
                        && s.pool.is_none()
                }) {
                    if !keys.iter().any(|(n, _, f)| *n == s.node && *f == first) {
                        keys.push((&s.node, &s.mount_mode, first));
                    }
                }
            }
            // Shuttle first, then teleporters by name; first starts last (node order is
            // shuffled per rep, so first-seen order is not stable).
            keys.sort_by_key(|(n, m, f)| (*f, mode_rank(m), *n));
            let std_ready = Stat::of(
                &samples
                    .iter()
                    .filter(|s| {
                        s.variant == img.variant
                            && s.role == "shuttle"
                            && !s.warm
                            && !s.first_start
                            && s.pool.is_none()
                    })
                    .map(|s| s.ready_seconds)
                    .collect::<Vec<_>>(),
            )
            .map(|s| s.median);
            for (node, mode, first) in keys {
                let mine = move |s: &&Sample| {
                    s.variant == img.variant && s.node == node && s.pool.is_none()
                };
                let cold: Vec<&Sample> = samples
                    .iter()
                    .filter(mine)
                    .filter(|s| !s.warm && s.first_start == first)
                    .collect();
                let warm: Vec<f64> = samples
                    .iter()
                    .filter(mine)
                    .filter(|s| s.warm && !first)
                    .map(|s| s.ready_seconds)
                    .collect();
                let head = cold.first().copied();
                let role = head.map_or("", |s| s.role.as_str());
                let ready = Stat::of(&cold.iter().map(|s| s.ready_seconds).collect::<Vec<_>>());
                let start_profile = match head.map_or("", |s| s.start_profile.as_str()) {
                    "" => "–".to_string(),
                    _ if first => "none yet (first start)".to_string(),
                    p => p.to_string(),
                };
                rows.push(Row {
                    variant: img.variant,
                    layers: img.layers,
                    image_bytes: img.image_bytes,
                    node: if role.is_empty() {
                        node.to_string()
                    } else {
                        role.to_string()
                    },
                    node_name: node.to_string(),
                    mount_mode: mode.to_string(),
                    start_profile,
                    first_start: first,
                    pull_seconds: Stat::of(
                        &cold
                            .iter()
                            .filter_map(|s| s.pull_seconds)
                            .collect::<Vec<_>>(),
                    ),
                    ready_seconds: ready,
                    speedup_ready: match (std_ready, ready) {
                        (Some(a), Some(b)) if b.median > 0.0 => Some(a / b.median),
                        _ => None,
                    },
                    warm_ready_seconds: Stat::of(&warm).map(|s| s.median),
                    phases: Phases::of(&cold),
                    layer_blob_bytes_downloaded: median_u64(
                        cold.iter().map(|s| s.served.layer_blob).collect(),
                    ),
                    expanded_bytes_fetched: median_u64(
                        cold.iter().map(|s| s.served.expanded()).collect(),
                    ),
                    artifact_bytes_fetched: median_u64(
                        cold.iter().map(|s| s.served.artifact_blob).collect(),
                    ),
                    blob_range_requests: median_u64(
                        cold.iter().map(|s| s.blob_range_requests).collect(),
                    ),
                    samples: cold.len(),
                });
            }
        }
        Report {
            schema_version: SCHEMA_VERSION,
            git_commit: git_commit(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            profile: profile.into(),
            scale,
            working_set,
            link,
            machine,
            versions,
            settings: RunSettings::default(),
            processes: Vec::new(),
            pause_image,
            images,
            rows,
            samples,
            published: published(),
            pools: Vec::new(),
            pool_rows: Vec::new(),
        }
    }

    /// Record the run's pool starts and summarise them ([`pool_rows`]) against the rows.
    pub fn set_pools(&mut self, pools: Vec<PoolRun>) {
        self.pool_rows = pool_rows(&self.samples, &pools, &self.rows);
        self.pools = pools;
    }

    /// Write `report.md`, `report.json`, `report.csv` and `report.svg` into `dir`, and append
    /// the table to `$GITHUB_STEP_SUMMARY` when it is set.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let json = serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            what: "report".into(),
            source,
        })?;
        let md = self.markdown();
        let files = [
            ("report.json", json),
            ("report.md", md.clone()),
            ("report.csv", self.csv()),
            ("report.svg", self.svg()),
        ];
        for (name, body) in files {
            let p = dir.join(name);
            std::fs::write(&p, body).map_err(Error::io(format!("write {}", p.display())))?;
        }
        if let Some(summary) = std::env::var_os("GITHUB_STEP_SUMMARY") {
            use std::io::Write as _;
            let p = std::path::PathBuf::from(summary);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .and_then(|mut f| f.write_all(md.as_bytes()))
                .map_err(Error::io(format!("append {}", p.display())))?;
        }
        Ok(())
    }

    /// Every raw sample, one line each (the JSON's `samples` flattened).
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "variant,node,role,mount_mode,start_profile,first_start,warm,rep,order,seed,overlap,\
             pull_seconds,sandbox_seconds,create_seconds,start_seconds,ready_seconds,\
             layer_blob_bytes,expanded_bytes,load1_before,load1_after,steal_ticks,\
             artifact_bytes,blob_range_requests,pool,pool_node,pool_size,released_unix_ms\n",
        );
        for x in &self.samples {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{},{},{},{},{},{},{},{},{},{},{}",
                x.variant.as_str(),
                x.node,
                x.role,
                x.mount_mode,
                x.start_profile,
                x.first_start,
                x.warm,
                x.rep.map_or(String::new(), |r| r.to_string()),
                x.order,
                x.seed,
                x.overlap,
                x.pull_seconds.map_or(String::new(), |p| format!("{p:.6}")),
                x.sandbox_seconds,
                x.create_seconds,
                x.start_seconds,
                x.ready_seconds,
                x.served.layer_blob,
                x.served.expanded(),
                x.host.load1_before,
                x.host.load1_after,
                x.host
                    .steal_ticks_after
                    .saturating_sub(x.host.steal_ticks_before),
                x.served.artifact_blob,
                x.blob_range_requests,
                x.pool.map_or(String::new(), |p| p.pool.to_string()),
                x.pool.map_or(String::new(), |p| p.node_index.to_string()),
                x.pool.map_or(String::new(), |p| p.size.to_string()),
                x.pool
                    .map_or(String::new(), |p| format!("{:.3}", p.released_unix_ms)),
            );
        }
        s
    }

    /// The Markdown table: ready is the headline (speed-up = standard ready ÷ this ready).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let modes = self.rows.iter().map(|r| r.mount_mode.as_str());
        let peers = peers_label(modes.clone());
        let _ = writeln!(
            s,
            "# Standard vs Teleport{peers}, time to ready: `{}` (scale {})\n",
            self.profile, self.scale
        );
        let l = self.link.latency_ms;
        let link = match &self.link.bandwidth {
            None if l == 0.0 => "unlimited loopback".to_string(),
            b => format!(
                "{} bandwidth, {l:.0} ms latency per request",
                b.as_deref().unwrap_or("unlimited")
            ),
        };
        let _ = writeln!(
            s,
            "Machine: {} ({} cores, {:.1} GiB, kernel {}). {}; {}. Link: {}. Working set {:.0}% of files \
             (overlap with the learning run {:.0}%, seed {}), ready = {}. \
             Median of {} cold runs (min–max, p90); every cold run on a recycled node. Commit {}.\n",
            self.machine.cpu_model,
            self.machine.cores,
            self.machine.mem_bytes as f64 / (1u64 << 30) as f64,
            self.machine.kernel,
            self.versions.containerd,
            self.versions.runc,
            link,
            self.working_set * 100.0,
            self.settings.overlap * 100.0,
            self.settings.seed,
            if self.settings.ready.is_empty() { READY_DEFAULT } else { &self.settings.ready },
            self.rows.first().map_or(0, |r| r.samples),
            self.git_commit.get(..12).unwrap_or(&self.git_commit),
        );
        let _ = writeln!(
            s,
            "| Image | Size | Layers | Node | Mount mode | Start profile | Ready | p90 | speed-up (std ready ÷ ready) | Pull (kubelet *Pulled*) | warm ready | bytes downloaded |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let speedup = match r.speedup_ready {
                Some(x) if r.mount_mode == "overlayfs" => format!("{x:.1}× (baseline)"),
                Some(x) => format!("**{x:.1}×**"),
                None => "–".into(),
            };
            let bytes = if r.mount_mode == "overlayfs" {
                human_bytes(r.layer_blob_bytes_downloaded)
            } else if r.mount_mode == "nydus" {
                format!(
                    "{} blobs ({} ranged GETs)",
                    human_bytes(r.layer_blob_bytes_downloaded),
                    r.blob_range_requests
                )
            } else if is_peer_mode(&r.mount_mode) {
                format!(
                    "{} blobs ({} ranged GETs) + {} zTOCs",
                    human_bytes(r.layer_blob_bytes_downloaded),
                    r.blob_range_requests,
                    human_bytes(r.artifact_bytes_fetched)
                )
            } else {
                format!(
                    "{} blobs + {} expanded",
                    human_bytes(r.layer_blob_bytes_downloaded),
                    human_bytes(r.expanded_bytes_fetched)
                )
            };
            let pull = match (r.mount_mode.as_str(), Stat::cell(r.pull_seconds)) {
                ("overlayfs", c) => c,
                (m, c) if is_peer_mode(m) => c,
                (_, c) => format!("{c} (metadata only)"),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.variant.as_str(),
                human_bytes(r.image_bytes),
                r.layers,
                r.node_name,
                r.mount_mode,
                r.start_profile,
                Stat::cell(r.ready_seconds),
                r.ready_seconds
                    .map_or("–".into(), |s| format!("{:.2} s", s.p90)),
                speedup,
                pull,
                r.warm_ready_seconds
                    .map_or("–".into(), |x| format!("{x:.2} s")),
                bytes,
            );
        }
        let _ = writeln!(
            s,
            "\n**Ready** = Scheduled → the app is ready (pull + sandbox + create + start + the app's own \
             start, e.g. reading its working set, hash checked). **Pull** = kubelet's *Successfully pulled \
             image* (CRI PullImage). For Teleport the pull records metadata only: layers are attached \
             and their bytes fetched during container create/start, so they are paid in ready — which is \
             why the speed-up is on ready. **Start profile**: `learned` = teleportd replays what the \
             image's first start read ({}); `off` = \
             `--no-start-profile`; `none yet (first start)` = the first start of the image, each rep \
             with the stored profile dropped. Warm ready = median of {} runs with the image present. \
             Bytes are registry `/metrics` deltas (median); *expanded* = indexes, frame tables and \
             layer data on the wire (compressed zstd frames, or plain ranges).\n",
            if self.settings.ready.is_empty() || self.settings.ready.starts_with("TB-READY") {
                format!(
                    "each cold run reads a different working set, {:.0}% in common with that first \
                     start, so the profile is a learned guess, not an oracle",
                    self.settings.overlap * 100.0
                )
            } else {
                "this app chooses what it reads; if every start reads the same files, the replay \
                 is exact"
                    .to_string()
            },
            self.settings.warm_runs,
        );
        if modes.clone().any(|m| m == "soci") {
            s.push_str(&self.soci_notes());
        }
        if modes.clone().any(|m| m == "nydus") {
            s.push_str(&self.nydus_notes());
        }
        s.push_str(&self.trace_breakdown());
        s.push_str(&self.pool_section());
        let _ = writeln!(
            s,
            "**published (Azure, 2021) — for comparison only.** Their figure is kubelet's pull time \
             on AKS; not comparable with the ready times above, so no ratio against ours.\n"
        );
        let _ = writeln!(
            s,
            "| Image | Size | Layers | Standard pull | Teleport pull | their speed-up |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for p in &self.published {
            let _ = writeln!(
                s,
                "| {} | {} MB | {} | {:.1} s | {:.1} s | {:.1}× |",
                p.image,
                p.size_mb,
                p.layers,
                p.standard_seconds,
                p.teleport_seconds,
                p.standard_seconds / p.teleport_seconds
            );
        }
        let _ = writeln!(
            s,
            "\nSource: {}",
            self.published.first().map_or("", |p| p.source.as_str())
        );
        s
    }

    /// Where a teleporter's cold start goes, from the fuse manager's trace: medians per node
    /// and kind of start. Empty when no sample carries a trace.
    fn trace_breakdown(&self) -> String {
        let mut s = String::new();
        let mut keys: Vec<(Variant, &str, &str, bool)> = Vec::new();
        // Single-node starts only: a pool's are summarised in the pool section.
        for x in self
            .samples
            .iter()
            .filter(|x| !x.warm && x.trace.is_some() && x.pool.is_none())
        {
            let k = (
                x.variant,
                x.node.as_str(),
                x.start_profile.as_str(),
                x.first_start,
            );
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        if keys.is_empty() {
            return s;
        }
        keys.sort_by_key(|(v, n, _, f)| (v.as_str(), *f, *n));
        let _ = writeln!(
            s,
            "**Where a teleporter's start goes** (`teleportd trace`: every FUSE open and read of \
             the run, medians). A *miss* is a read whose bytes were not yet on the node; \
             *registry-bound* is the time in which at least one miss was waiting.\n"
        );
        let _ = writeln!(
            s,
            "| Image | Node | Start | Ready | opens | reads | cached reads | misses | miss wait (summed) | registry-bound | longest miss | traced span |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for (v, node, profile, first) in keys {
            let xs: Vec<&Sample> = self
                .samples
                .iter()
                .filter(|x| {
                    !x.warm
                        && x.variant == v
                        && x.node == node
                        && x.first_start == first
                        && x.trace.is_some()
                        && x.pool.is_none()
                })
                .collect();
            let t = |f: &dyn Fn(&fuse_mount::trace::Summary) -> f64| {
                Stat::of(
                    &xs.iter()
                        .filter_map(|x| x.trace.as_ref().map(f))
                        .collect::<Vec<_>>(),
                )
                .map_or(0.0, |s| s.median)
            };
            let ready = Stat::of(&xs.iter().map(|x| x.ready_seconds).collect::<Vec<_>>())
                .map_or(0.0, |s| s.median);
            let start = if first {
                "first start".to_string()
            } else {
                format!("profile {profile}")
            };
            let _ = writeln!(
                s,
                "| {} | {node} | {start} | {ready:.2} s | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} s | {:.2} s | {:.3} s | {:.2} s |",
                v.as_str(),
                t(&|x| x.opens as f64),
                t(&|x| x.reads as f64),
                t(&|x| x.cached_reads as f64),
                t(&|x| x.miss_reads as f64),
                t(&|x| x.miss_wait_s),
                t(&|x| x.miss_busy_s),
                t(&|x| x.longest_miss_s),
                t(&|x| x.span_s),
            );
        }
        s.push('\n');
        s
    }

    /// The pool section (`--fanout N`): empty without pools.
    fn pool_section(&self) -> String {
        let mut s = String::new();
        if self.pool_rows.is_empty() {
            return s;
        }
        let size = self.pool_rows.iter().map(|r| r.size).max().unwrap_or(0);
        let _ = writeln!(
            s,
            "## Pool: {size} nodes of a kind started at once\n\n\
             Each rep, each kind starts the image on {size} fresh nodes (each its own containerd, \
             teleportd, root and cache on a new filesystem) released together once all were \
             provisioned; kinds run one after another, all on the registry's one emulated link. \
             **p50 / p95** (nearest rank) over every node of every pool; **single** = the kind's \
             single-node ready above (median); registry bytes and CPU are per pool start (median \
             over reps): CPU of the registry's own threads, and of the whole testbed process \
             (registry + driver) in brackets. Release spread = last − first release in a pool.\n"
        );
        let _ = writeln!(
            s,
            "| Image | Node | Mount mode | Start profile | Nodes × pools | Ready p50 | Ready p95 | single | p95 ÷ single | Pull p50 / p95 | Sandbox | Create | Start | App until ready | registry bytes / pool | registry CPU / pool | wall / pool | release spread |"
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let pp = |x: Spread| format!("{:.2} / {:.2} s", x.p50, x.p95);
        for r in &self.pool_rows {
            let bytes = if r.mount_mode == "overlayfs" || is_peer_mode(&r.mount_mode) {
                human_bytes(r.registry_bytes)
            } else {
                format!(
                    "{} ({} expanded)",
                    human_bytes(r.registry_bytes),
                    human_bytes(r.expanded_bytes)
                )
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} × {} | {:.2} s | {:.2} s | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} s ({:.2} s) | {:.2} s | {:.1} ms |",
                r.variant.as_str(),
                r.node,
                r.mount_mode,
                if r.start_profile.is_empty() { "–" } else { &r.start_profile },
                r.size,
                r.pools,
                r.ready.p50,
                r.ready.p95,
                r.single_ready.map_or("–".into(), |x| format!("{x:.2} s")),
                r.p95_over_single.map_or("–".into(), |x| format!("**{x:.2}×**")),
                pp(r.pull),
                pp(r.sandbox),
                pp(r.create),
                pp(r.start),
                pp(r.app),
                bytes,
                r.registry_cpu_seconds,
                r.testbed_cpu_seconds,
                r.wall_seconds,
                r.max_release_spread_ms,
            );
        }
        s.push('\n');
        s
    }

    /// The SOCI rows' reading: what SOCI ran with and its index builds (timed apart).
    fn soci_notes(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "**SOCI** (`{}`) runs with its defaults: background fetch **on** (after a \
             start it fetches whole layers; what it fetched before ready is in the row's bytes, and \
             the node is stopped after its runs so it never overlaps another node's), span 4 MiB, \
             and `--min-layer-size` 10 MiB for node `soci`: layers below it get no zTOC and are \
             pulled whole at pull time. `soci-min0` indexes every layer (`--min-layer-size 0`). \
             SOCI reaches the same registry (store, link emulation, byte counters) through its \
             HTTPS listener, the other nodes over plain HTTP. Its pull mounts the indexed layers \
             and downloads the rest; bytes: blobs (whole small layers and ranged span reads) + \
             zTOCs. Each SOCI node pulls the image from a repository of its own, where the \
             referrers API shows it its own index.\n",
            if self.versions.soci.is_empty() {
                "?"
            } else {
                &self.versions.soci
            }
        );
        let _ = writeln!(
            s,
            "| Image | Node | min-layer-size | span | zTOCs (layers indexed of all) | zTOC bytes | index build (`soci create` + `soci push`) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for img in &self.images {
            for p in img.peers.iter().filter(|p| p.node.starts_with("soci")) {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} of {} | {} | {} |",
                    img.variant.as_str(),
                    p.node,
                    size_setting(p.min_layer_size),
                    size_setting(p.span_size),
                    p.ztocs,
                    img.layers,
                    human_bytes(p.ztoc_bytes),
                    if p.index_digest.is_empty() {
                        "no index (every layer below min-layer-size)".to_string()
                    } else {
                        format!("{:.2} s", p.index_build_seconds)
                    },
                );
            }
        }
        s.push('\n');
        s
    }

    /// The nydus row's reading: how the image was converted (timed apart) and what nydusd ran
    /// with.
    fn nydus_notes(&self) -> String {
        let mut s = String::new();
        let prefetch = self
            .processes
            .iter()
            .find(|p| p.name.ends_with("containerd-nydus-grpc"))
            .and_then(|p| p.config.as_deref())
            .map(|c| c.contains(r#""prefetch_all":true"#));
        let _ = writeln!(
            s,
            "**nydus** (`{}`): containerd with nydus-snapshotter as proxy snapshotter and one \
             nydusd per image in FUSE mode (RAFS v6, blob cache on the node). The bed converted \
             each image once, as nydusify does (`nydus-image create --type tar-rafs` per layer, \
             `nydus-image merge` into a bootstrap layer), and pushed it to a repository of its \
             own on the same registry, link and counters (plain HTTP, like our nodes). Its pull \
             downloads the bootstrap layer only; nydusd fetches blob ranges on first read. \
             nydusd's background prefetch of the whole image (`fs_prefetch.prefetch_all`, on in \
             the shipped config) was **{}**; the node is stopped after its runs so it never \
             overlaps another node's.\n",
            if self.versions.nydus.is_empty() {
                "?"
            } else {
                &self.versions.nydus
            },
            match prefetch {
                Some(true) => "on",
                Some(false) => "off",
                None => "?",
            }
        );
        let _ = writeln!(
            s,
            "| Image | Node | data blobs | blob bytes | bootstrap layer | conversion + push |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for img in &self.images {
            for p in img.peers.iter().filter(|p| p.node.starts_with("nydus")) {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {:.2} s |",
                    img.variant.as_str(),
                    p.node,
                    p.nydus_blobs,
                    human_bytes(p.nydus_blob_bytes),
                    human_bytes(p.nydus_bootstrap_bytes),
                    p.index_build_seconds,
                );
            }
        }
        s.push('\n');
        s
    }

    /// Ready as stacked phases (pull, sandbox, create, start, app until ready), one horizontal
    /// bar per row; a second panel shows the teleport rows on their own scale.
    pub fn svg(&self) -> String {
        const W: f64 = 900.0;
        const LABEL_W: f64 = 330.0;
        const BAR_H: f64 = 16.0;
        const GAP: f64 = 6.0;
        type Phase = (&'static str, &'static str, fn(&Phases) -> f64);
        let phases: [Phase; 5] = [
            ("pull", "#4e79a7", |p| p.pull),
            ("sandbox", "#f28e2b", |p| p.sandbox),
            ("create", "#76b7b2", |p| p.create),
            ("start", "#e15759", |p| p.start),
            ("app until ready", "#59a14f", |p| p.app),
        ];
        let lazy: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.mount_mode != "overlayfs")
            .collect();
        let peers = peers_label(lazy.iter().map(|r| r.mount_mode.as_str()));
        let all: Vec<&Row> = self.rows.iter().collect();
        let panels: Vec<(&str, Vec<&Row>)> = vec![
            ("All rows: median seconds to ready, by phase", all),
            (
                if peers.is_empty() {
                    "Teleport rows on their own scale"
                } else {
                    "Teleport and peer rows on their own scale"
                },
                lazy,
            ),
        ];
        let panel_h = |n: usize| 40.0 + n as f64 * (BAR_H + GAP) + 30.0;
        let height = 60.0 + panels.iter().map(|(_, r)| panel_h(r.len())).sum::<f64>();
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="20" font-size="15">{} (scale {}): time to ready, standard vs Teleport{}</text>"#,
            xml(&self.profile),
            self.scale,
            peers
        );
        for (i, (name, color, _)) in phases.iter().enumerate() {
            let x = 10.0 + i as f64 * 130.0;
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="30" width="10" height="10" fill="{color}"/><text x="{}" y="39">{name}</text>"#,
                x + 14.0
            );
        }
        let mut y = 60.0;
        for (title, rows) in &panels {
            let _ = writeln!(s, r#"<text x="10" y="{}">{}</text>"#, y + 14.0, xml(title));
            let max = rows
                .iter()
                .filter_map(|r| r.ready_seconds.map(|s| s.median))
                .fold(0.0_f64, f64::max)
                .max(0.001);
            let scale = (W - LABEL_W - 60.0) / max;
            let mut by = y + 26.0;
            for r in rows {
                let label = format!(
                    "{} {}{}",
                    r.variant.as_str(),
                    r.node_name,
                    if r.first_start { " (first start)" } else { "" }
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                    LABEL_W - 6.0,
                    by + BAR_H - 4.0,
                    xml(&label)
                );
                let mut x = LABEL_W;
                for (_, color, pick) in &phases {
                    let w = pick(&r.phases) * scale;
                    if w > 0.0 {
                        let _ = writeln!(
                            s,
                            r#"<rect x="{x:.1}" y="{by:.1}" width="{w:.1}" height="{BAR_H}" fill="{color}"/>"#
                        );
                    }
                    x += w;
                }
                if let Some(st) = r.ready_seconds {
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}">{:.2} s</text>"#,
                        x + 4.0,
                        by + BAR_H - 4.0,
                        st.median
                    );
                }
                by += BAR_H + GAP;
            }
            y += panel_h(rows.len());
        }
        let _ = writeln!(s, "</svg>");
        s
    }
}

/// `10%` or `0.1` → 0.1.
pub fn parse_fraction(s: &str) -> Result<f64> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|x| x / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|e| Error::Invalid(format!("{s:?}: {e}")))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(Error::Invalid(format!("{s:?}: want a non-negative share")));
    }
    Ok(v)
}

/// What `testbed diff` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    /// One line per row present in both reports (and a note for rows in only one).
    pub text: String,
    /// Rows whose median ready grew by more than the allowed share.
    pub regressions: usize,
}

/// Row by row (variant, node, first start): the change of median ready from `old` to `new`.
pub fn diff(old: &Report, new: &Report, max_regression: f64) -> Diff {
    let key = |r: &Row| {
        let name = if r.node_name.is_empty() {
            format!("{}-{}", r.node, r.mount_mode)
        } else {
            r.node_name.clone()
        };
        format!(
            "{} {}{}",
            r.variant.as_str(),
            name,
            if r.first_start { " (first start)" } else { "" }
        )
    };
    let mut text = String::new();
    let mut regressions = 0;
    for n in &new.rows {
        let k = key(n);
        let Some(o) = old.rows.iter().find(|o| key(o) == k) else {
            let _ = writeln!(text, "{k}: new row");
            continue;
        };
        match (o.ready_seconds, n.ready_seconds) {
            (Some(a), Some(b)) if a.median > 0.0 => {
                let change = b.median / a.median - 1.0;
                let bad = change > max_regression;
                regressions += usize::from(bad);
                let _ = writeln!(
                    text,
                    "{k}: ready {:.3} s → {:.3} s ({:+.1}%){}",
                    a.median,
                    b.median,
                    change * 100.0,
                    if bad { "  REGRESSION" } else { "" }
                );
            }
            _ => {
                let _ = writeln!(text, "{k}: no ready median in one report");
            }
        }
    }
    for o in &old.rows {
        let k = key(o);
        if !new.rows.iter().any(|n| key(n) == k) {
            let _ = writeln!(text, "{k}: row gone");
        }
    }
    Diff { text, regressions }
}

const READY_DEFAULT: &str = "TB-READY (fixture, hash checked)";

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A size given as a setting (`10 MiB`, `0`), as the command line takes it.
fn size_setting(b: u64) -> String {
    match b {
        0 => "0".into(),
        b if b.is_multiple_of(1 << 20) => format!("{} MiB", b >> 20),
        b if b.is_multiple_of(1 << 10) => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

pub fn human_bytes(b: u64) -> String {
    let f = b as f64;
    if f >= 1e9 {
        format!("{:.2} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} kB", f / 1e3)
    } else {
        format!("{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Served;

    fn sample(
        node: &str,
        mode: &str,
        role: &str,
        rep: Option<u32>,
        pull: f64,
        ready: f64,
        blob: u64,
    ) -> Sample {
        Sample {
            variant: Variant::Layered,
            node: node.into(),
            role: role.into(),
            mount_mode: mode.into(),
            rep,
            warm: rep.is_none(),
            first_start: false,
            start_profile: if role == "teleporter" {
                "learned".into()
            } else {
                String::new()
            },
            seed: 0,
            overlap: 0.8,
            order: 0,
            host: Default::default(),
            pull_seconds: rep.map(|_| pull),
            sandbox_seconds: 0.1,
            create_seconds: 0.1,
            start_seconds: 0.1,
            ready_seconds: ready,
            entrypoint_elapsed_ms: 5,
            ready_files: 1,
            ready_bytes: 1,
            ready_hash: "sha256:x".into(),
            served: Served {
                layer_blob: blob,
                ..Default::default()
            },
            blob_range_requests: 0,
            teleportd_metrics: Default::default(),
            trace: None,
            pool: None,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        // 1..=20: p50 = the 10th value, p90 the 18th, p95 the 19th.
        let twenty: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        let st = Stat::of(&twenty).unwrap();
        assert_eq!((st.p50, st.p90, st.p95), (10.0, 18.0, 19.0));
        assert_eq!(st.median, 10.5);
        // Eight nodes: p95 is the slowest (rank ceil(7.6) = 8), p50 the 4th.
        let eight = [2.0, 9.0, 1.0, 4.0, 3.0, 8.0, 5.0, 7.0];
        let sp = Spread::of(&eight);
        assert_eq!((sp.p50, sp.p95), (4.0, 9.0));
        // One value is every percentile; NaN is left out; nothing gives zeros.
        assert_eq!(Spread::of(&[1.5, f64::NAN]), Spread { p50: 1.5, p95: 1.5 });
        assert_eq!(Spread::of(&[]), Spread::default());
    }

    fn pool_sample(node: &str, mode: &str, pool: u32, index: usize, ready: f64) -> Sample {
        let mut s = sample(node, mode, "teleporter", Some(pool), 0.5, ready, 0);
        s.pool = Some(crate::measurement::PoolTag {
            pool,
            node_index: index,
            size: 4,
            released_unix_ms: 1.0e12 + f64::from(pool) * 1e4 + index as f64 * 0.1,
        });
        s
    }

    fn pool_run(id: u32, node: &str, expanded: u64, cpu: f64) -> PoolRun {
        PoolRun {
            id,
            variant: Variant::Layered,
            rep: id,
            node: node.into(),
            size: 4,
            order: 0,
            served: Served {
                expanded_data: expanded,
                manifest: 10,
                ..Default::default()
            },
            blob_range_requests: 0,
            registry_cpu_seconds: cpu,
            testbed_cpu_seconds: cpu * 2.0,
            wall_seconds: 3.0,
            release_spread_ms: 0.4 + f64::from(id),
            host: Default::default(),
        }
    }

    #[test]
    fn pool_section_summarises_pools_against_the_single_node() {
        let t = "teleporter-merged";
        let mut samples = vec![
            sample(t, "merged", "teleporter", Some(0), 0.5, 1.0, 0),
            sample(t, "merged", "teleporter", Some(1), 0.5, 1.2, 0),
        ];
        // Two pools of 4: ready 2, 3, 4, 5 and 2.5, 3.5, 4.5, 6 → p50 3.5, p95 6.
        for (pool, readies) in [(0, [2.0, 3.0, 4.0, 5.0]), (1, [2.5, 3.5, 4.5, 6.0])] {
            for (i, r) in readies.into_iter().enumerate() {
                samples.push(pool_sample(t, "merged", pool, i, r));
            }
        }
        let img = ImageFacts {
            variant: Variant::Layered,
            reference: "r".into(),
            repo: "tb/app".into(),
            manifest_digest: "d".into(),
            layers: 29,
            image_bytes: 1,
            compressed_bytes: 1,
            working_set_hash: "h".into(),
            layer_digests: Vec::new(),
            files: Vec::new(),
            working_set_files: 1,
            working_set_bytes: 1,
            peers: Vec::new(),
        };
        let mut r = Report::build(
            "p",
            0.01,
            0.06,
            LinkSettings {
                bandwidth_bytes_per_sec: None,
                bandwidth: None,
                latency_ms: 0.0,
            },
            MachineInfo::detect(),
            Versions::detect(),
            vec![img],
            samples,
            "pause".into(),
        );
        // Pool samples stay out of the single-node row.
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0].samples, 2);
        assert_eq!(r.rows[0].ready_seconds.unwrap().median, 1.1);
        assert!(
            r.markdown().find("## Pool").is_none(),
            "no pools, no section"
        );
        r.set_pools(vec![
            pool_run(0, t, 1000, 0.2),
            pool_run(1, t, 3000, 0.4),
            pool_run(2, t, 2000, 0.3),
        ]);
        assert_eq!(r.pool_rows.len(), 1);
        let p = &r.pool_rows[0];
        assert_eq!((p.node.as_str(), p.size, p.pools, p.samples), (t, 4, 3, 8));
        assert_eq!(p.ready, Spread { p50: 3.5, p95: 6.0 });
        assert_eq!(p.pull, Spread { p50: 0.5, p95: 0.5 });
        // app = ready − pull − sandbox − create − start (0.5 + 3 × 0.1).
        assert!((p.app.p95 - 5.2).abs() < 1e-9, "{:?}", p.app);
        assert_eq!(p.single_ready, Some(1.1));
        assert!((p.p95_over_single.unwrap() - 6.0 / 1.1).abs() < 1e-9);
        assert_eq!(p.expanded_bytes, 2000, "median over pools");
        assert_eq!(p.registry_bytes, 2010);
        assert!((p.registry_cpu_seconds - 0.3).abs() < 1e-9);
        assert!((p.testbed_cpu_seconds - 0.6).abs() < 1e-9);
        assert!((p.max_release_spread_ms - 2.4).abs() < 1e-9);
        let md = r.markdown();
        assert!(
            md.contains("## Pool: 4 nodes of a kind started at once"),
            "{md}"
        );
        let line = md
            .lines()
            .find(|l| l.starts_with("| layered | teleporter-merged | merged | learned | 4 × 3 |"))
            .unwrap_or_else(|| panic!("pool line missing: {md}"));
        for cell in [
            "| 3.50 s | 6.00 s | 1.10 s | **5.45×** |",
            "0.30 s (0.60 s)",
            "2.4 ms",
        ] {
            assert!(line.contains(cell), "{cell} not in {line}");
        }
        // The CSV marks pool samples; the JSON keeps pools and pool rows and reads back.
        let csv = r.csv();
        assert!(csv
            .lines()
            .next()
            .unwrap()
            .ends_with(",pool,pool_node,pool_size,released_unix_ms"));
        assert_eq!(
            csv.lines()
                .filter(|l| l.contains(",4,1000000010000."))
                .count(),
            4
        );
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.pool_rows, r.pool_rows);
        assert_eq!(back.pools.len(), 3);
        assert_eq!(back.samples.iter().filter(|s| s.pool.is_some()).count(), 8);
    }

    #[test]
    fn stats_and_rows() {
        assert_eq!(
            Stat::of(&[3.0, 1.0, 2.0]).unwrap(),
            Stat {
                median: 2.0,
                min: 1.0,
                max: 3.0,
                p50: 2.0,
                p90: 3.0,
                p95: 3.0,
            }
        );
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(Stat::of(&ten).unwrap().p90, 9.0);
        assert_eq!(Stat::of(&ten).unwrap().p50, 5.0);
        assert_eq!(Stat::of(&[4.0, 1.0]).unwrap().median, 2.5);
        assert!(Stat::of(&[]).is_none());

        // The image's first start (before a start profile existed): reported apart.
        let mut first = sample(
            "teleporter-merged",
            "merged",
            "teleporter",
            Some(0),
            9.0,
            9.5,
            0,
        );
        (first.rep, first.first_start) = (None, true);
        let samples = vec![
            first,
            sample("shuttle", "overlayfs", "shuttle", Some(0), 10.0, 11.0, 900),
            sample("shuttle", "overlayfs", "shuttle", Some(1), 12.0, 13.0, 900),
            sample("shuttle", "overlayfs", "shuttle", None, 0.0, 0.5, 0),
            sample(
                "teleporter-merged",
                "merged",
                "teleporter",
                Some(0),
                1.0,
                2.0,
                0,
            ),
            sample(
                "teleporter-merged",
                "merged",
                "teleporter",
                Some(1),
                2.0,
                3.0,
                0,
            ),
            sample(
                "teleporter-merged",
                "merged",
                "teleporter",
                None,
                0.0,
                0.6,
                0,
            ),
        ];
        let img = ImageFacts {
            variant: Variant::Layered,
            reference: "r".into(),
            repo: "tb/app".into(),
            manifest_digest: "d".into(),
            layers: 29,
            image_bytes: 944_000_000,
            compressed_bytes: 1,
            working_set_hash: "h".into(),
            layer_digests: Vec::new(),
            files: Vec::new(),
            working_set_files: 1,
            working_set_bytes: 1,
            peers: Vec::new(),
        };
        let r = Report::build(
            "p",
            1.0,
            0.06,
            LinkSettings {
                bandwidth_bytes_per_sec: None,
                bandwidth: None,
                latency_ms: 0.0,
            },
            MachineInfo::detect(),
            Versions::detect(),
            vec![img],
            samples,
            "pause".into(),
        );
        assert_eq!(r.rows.len(), 3, "shuttle, teleporter, first start");
        assert_eq!(r.rows[0].node, "shuttle");
        assert_eq!(r.rows[0].pull_seconds.unwrap().median, 11.0);
        assert_eq!(r.rows[0].warm_ready_seconds, Some(0.5));
        assert_eq!(r.rows[0].layer_blob_bytes_downloaded, 900);
        assert_eq!(r.rows[1].node, "teleporter");
        assert_eq!(r.rows[1].mount_mode, "merged");
        assert_eq!(r.rows[1].start_profile, "learned");
        assert_eq!(r.rows[1].samples, 2, "first start not in the cold runs");
        assert_eq!(r.rows[1].warm_ready_seconds, Some(0.6));
        // The headline is ready: 12.0 / 2.5 (medians), not pull.
        assert_eq!(r.rows[1].speedup_ready, Some(12.0 / 2.5));
        assert!(r.rows[2].first_start);
        assert_eq!(r.rows[2].start_profile, "none yet (first start)");
        assert_eq!(r.rows[2].ready_seconds.unwrap().median, 9.5);
        let md = r.markdown();
        assert!(
            md.contains(
                "| layered | 944.0 MB | 29 | teleporter-merged | merged | learned | 2.50 s (2.00–3.00) | 3.00 s | **4.8×** | 1.50 s (1.00–2.00) (metadata only) |"
            ),
            "{md}"
        );
        assert!(md.contains("1.0× (baseline)"), "{md}");
        assert!(md.contains("published (Azure, 2021) — for comparison only"));
        assert!(md.contains("no ratio against ours"), "{md}");
        assert!(md.contains("34.7 s | 8.0 s"));
        assert_eq!(r.schema_version, SCHEMA_VERSION);
        assert!(!r.git_commit.is_empty());
        let csv = r.csv();
        assert_eq!(csv.lines().count(), 1 + r.samples.len());
        assert!(csv
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("layered,teleporter-merged,"));
        let svg = r.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(v["rows"][1]["mount_mode"], "merged");
        assert!(svg.contains("Teleport rows on their own scale"));
        assert!(svg.contains("app until ready"));
        assert_eq!(v["rows"][0]["pull_seconds"]["min"], 10.0);
    }

    #[test]
    fn diff_fails_on_a_20_percent_regression() {
        let mk = |teleport_ready: f64| {
            let samples = vec![
                sample("shuttle", "overlayfs", "shuttle", Some(0), 10.0, 11.0, 900),
                sample(
                    "teleporter-merged",
                    "merged",
                    "teleporter",
                    Some(0),
                    0.1,
                    teleport_ready,
                    0,
                ),
            ];
            let img = ImageFacts {
                variant: Variant::Layered,
                reference: "r".into(),
                repo: "tb/app".into(),
                manifest_digest: "d".into(),
                layers: 1,
                image_bytes: 1,
                compressed_bytes: 1,
                working_set_hash: "h".into(),
                layer_digests: Vec::new(),
                files: Vec::new(),
                working_set_files: 1,
                working_set_bytes: 1,
                peers: Vec::new(),
            };
            Report::build(
                "p",
                1.0,
                0.06,
                LinkSettings {
                    bandwidth_bytes_per_sec: None,
                    bandwidth: None,
                    latency_ms: 0.0,
                },
                MachineInfo::detect(),
                Versions::detect(),
                vec![img],
                samples,
                "pause".into(),
            )
        };
        let old = mk(1.0);
        let d = diff(&old, &mk(1.2), parse_fraction("10%").unwrap());
        assert_eq!(d.regressions, 1, "{}", d.text);
        assert!(d.text.contains("(+20.0%)  REGRESSION"), "{}", d.text);
        assert_eq!(diff(&old, &mk(1.05), 0.1).regressions, 0);
        assert_eq!(diff(&old, &mk(1.2), 0.25).regressions, 0);
        assert_eq!(parse_fraction("0.1").unwrap(), 0.1);
        assert!(parse_fraction("x%").is_err());
    }

    /// A SOCI row sits after teleport's, is measured against the standard node, shows its
    /// zTOC bytes and ranged reads; the index builds get their own table.
    #[test]
    fn soci_rows_beside_ours() {
        let mut soci = sample("soci-min0", "soci", "soci", Some(0), 0.5, 4.0, 300);
        soci.served.artifact_blob = 70;
        soci.blob_range_requests = 9;
        let samples = vec![
            soci,
            sample("shuttle", "overlayfs", "shuttle", Some(0), 10.0, 12.0, 900),
            sample(
                "teleporter-merged",
                "merged",
                "teleporter",
                Some(0),
                1.0,
                2.0,
                0,
            ),
        ];
        let img = ImageFacts {
            variant: Variant::Layered,
            reference: "r".into(),
            repo: "tb/app".into(),
            manifest_digest: "d".into(),
            layers: 29,
            image_bytes: 1,
            compressed_bytes: 1,
            working_set_hash: "h".into(),
            layer_digests: Vec::new(),
            files: Vec::new(),
            working_set_files: 1,
            working_set_bytes: 1,
            peers: vec![crate::measurement::PeerImage {
                node: "soci-min0".into(),
                reference: "x/tb/app-soci-min0:v1".into(),
                min_layer_size: 0,
                span_size: 4 << 20,
                index_build_seconds: 1.25,
                index_digest: "sha256:i".into(),
                ztocs: 29,
                ztoc_bytes: 70,
                ..Default::default()
            }],
        };
        let link = LinkSettings {
            bandwidth_bytes_per_sec: None,
            bandwidth: None,
            latency_ms: 0.0,
        };
        let r = Report::build(
            "p",
            1.0,
            0.06,
            link,
            MachineInfo::detect(),
            Versions::detect(),
            vec![img],
            samples,
            "pause".into(),
        );
        let names: Vec<&str> = r.rows.iter().map(|r| r.node_name.as_str()).collect();
        assert_eq!(names, ["shuttle", "teleporter-merged", "soci-min0"]);
        let row = &r.rows[2];
        assert_eq!(row.node, "soci");
        assert_eq!(row.speedup_ready, Some(3.0));
        assert_eq!(
            (row.artifact_bytes_fetched, row.blob_range_requests),
            (70, 9)
        );
        let md = r.markdown();
        assert!(md.contains("vs SOCI"), "{md}");
        assert!(
            md.contains("| 300 B blobs (9 ranged GETs) + 70 B zTOCs |"),
            "{md}"
        );
        assert!(
            md.contains("| layered | soci-min0 | 0 | 4 MiB | 29 of 29 | 70 B | 1.25 s |"),
            "{md}"
        );
        assert!(md.contains("background fetch **on**"), "{md}");
        assert!(r
            .svg()
            .contains("Teleport and peer rows on their own scale"));
        assert!(r.csv().lines().nth(1).unwrap().ends_with(",70,9,,,,"));
    }

    #[test]
    fn trace_breakdown_gives_medians_per_teleporter_and_start_kind() {
        let traced = |ready: f64, misses: u64, busy: f64, first: bool| {
            let mut x = sample(
                "teleporter-merged",
                "merged",
                "teleporter",
                Some(0),
                0.2,
                ready,
                0,
            );
            x.first_start = first;
            x.trace = Some(fuse_mount::trace::Summary {
                opens: 10,
                reads: 20,
                cached_reads: 20 - misses,
                miss_reads: misses,
                miss_wait_s: busy * 2.0,
                miss_busy_s: busy,
                longest_miss_s: 0.004,
                span_s: 1.0,
                ..Default::default()
            });
            x
        };
        let mut samples = vec![
            sample("shuttle", "overlayfs", "shuttle", Some(0), 10.0, 12.0, 900),
            traced(2.0, 4, 0.1, false),
            traced(3.0, 6, 0.3, false),
            traced(4.0, 8, 0.2, false),
            traced(5.0, 15, 0.9, true),
        ];
        let mut warm = traced(1.0, 0, 0.0, false);
        warm.warm = true;
        samples.push(warm);
        let r = Report::build(
            "p",
            1.0,
            0.06,
            LinkSettings {
                bandwidth_bytes_per_sec: None,
                bandwidth: None,
                latency_ms: 0.0,
            },
            MachineInfo::detect(),
            Versions::detect(),
            Vec::new(),
            samples,
            "pause".into(),
        );
        let md = r.markdown();
        assert!(md.contains("Where a teleporter's start goes"), "{md}");
        // Medians of the three cold learned runs (the warm run is left out).
        assert!(
            md.contains("| layered | teleporter-merged | profile learned | 3.00 s | 10 | 20 | 14 | 6 | 0.40 s | 0.20 s | 0.004 s | 1.00 s |"),
            "{md}"
        );
        assert!(md.contains("| layered | teleporter-merged | first start | 5.00 s | 10 | 20 | 5 | 15 | 1.80 s | 0.90 s |"), "{md}");
        let mut plain = r.clone();
        plain.samples.iter_mut().for_each(|x| x.trace = None);
        assert!(!plain.markdown().contains("Where a teleporter's start goes"));
    }

    /// A nydus row sits after teleport's, shows bootstrap + ranged blob bytes (no zTOCs), and
    /// its conversion gets its own table; no SOCI notes when no SOCI row ran.
    #[test]
    fn nydus_rows_beside_ours() {
        let mut nydus = sample("nydus", "nydus", "nydus", Some(0), 0.3, 3.0, 500);
        nydus.blob_range_requests = 12;
        let samples = vec![
            sample("shuttle", "overlayfs", "shuttle", Some(0), 10.0, 12.0, 900),
            nydus,
        ];
        let img = ImageFacts {
            variant: Variant::Layered,
            reference: "r".into(),
            repo: "tb/app".into(),
            manifest_digest: "d".into(),
            layers: 29,
            image_bytes: 1,
            compressed_bytes: 1,
            working_set_hash: "h".into(),
            layer_digests: Vec::new(),
            files: Vec::new(),
            working_set_files: 1,
            working_set_bytes: 1,
            peers: vec![crate::measurement::PeerImage {
                node: "nydus".into(),
                reference: "x/tb/app-nydus:v1".into(),
                index_build_seconds: 2.5,
                index_digest: "sha256:m".into(),
                nydus_blobs: 29,
                nydus_blob_bytes: 2048,
                nydus_bootstrap_bytes: 100,
                ..Default::default()
            }],
        };
        let link = LinkSettings {
            bandwidth_bytes_per_sec: None,
            bandwidth: None,
            latency_ms: 0.0,
        };
        let r = Report::build(
            "p",
            1.0,
            0.06,
            link,
            MachineInfo::detect(),
            Versions::detect(),
            vec![img],
            samples,
            "pause".into(),
        );
        let names: Vec<&str> = r.rows.iter().map(|r| r.node_name.as_str()).collect();
        assert_eq!(names, ["shuttle", "nydus"]);
        assert_eq!(r.rows[1].speedup_ready, Some(4.0));
        let md = r.markdown();
        assert!(md.contains("Standard vs Teleport vs nydus,"), "{md}");
        assert!(md.contains("| 500 B blobs (12 ranged GETs) |"), "{md}");
        assert!(
            md.contains("| layered | nydus | 29 | 2.0 kB | 100 B | 2.50 s |"),
            "{md}"
        );
        assert!(!md.contains("zTOC"), "{md}");
        assert!(r
            .svg()
            .contains("Teleport and peer rows on their own scale"));
    }

    /// `testbed diff` reads a schema-2 report (no peer fields anywhere).
    #[test]
    fn schema_2_reports_still_load() {
        let samples = vec![sample(
            "shuttle",
            "overlayfs",
            "shuttle",
            Some(0),
            1.0,
            2.0,
            9,
        )];
        let img = ImageFacts {
            variant: Variant::Layered,
            reference: "r".into(),
            repo: String::new(),
            manifest_digest: "d".into(),
            layers: 1,
            image_bytes: 1,
            compressed_bytes: 1,
            working_set_hash: "h".into(),
            layer_digests: Vec::new(),
            files: Vec::new(),
            working_set_files: 1,
            working_set_bytes: 1,
            peers: Vec::new(),
        };
        let link = LinkSettings {
            bandwidth_bytes_per_sec: None,
            bandwidth: None,
            latency_ms: 0.0,
        };
        let r = Report::build(
            "p",
            1.0,
            0.06,
            link,
            MachineInfo::detect(),
            Versions::detect(),
            vec![img],
            samples,
            "pause".into(),
        );
        let mut v = serde_json::to_value(&r).unwrap();
        v["schema_version"] = 2.into();
        v["versions"].as_object_mut().unwrap().remove("soci");
        v["images"][0].as_object_mut().unwrap().remove("peers");
        for k in ["artifact_bytes_fetched", "blob_range_requests"] {
            v["rows"][0].as_object_mut().unwrap().remove(k);
        }
        v["samples"][0]
            .as_object_mut()
            .unwrap()
            .remove("blob_range_requests");
        v["samples"][0]["served"]
            .as_object_mut()
            .unwrap()
            .remove("artifact_blob");
        let old: Report = serde_json::from_value(v).unwrap();
        assert_eq!(old.schema_version, 2);
        assert_eq!(old.rows[0].blob_range_requests, 0);
        assert_eq!(diff(&old, &r, 0.1).regressions, 0);
    }
}
