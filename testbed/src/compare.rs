//! `testbed compare`: the seed's A/B experiment. For each variant (layered, squashed) × node
//! (shuttle; teleporter per mount mode) × repetition: recycle → pre-load pause (not counted) →
//! PullImage (timed) → RunPodSandbox → CreateContainer → StartContainer → ready line; plus one
//! warm run per node and variant. Bytes come from the registry's `/metrics` deltas.

use crate::bed::{self, Fixture, NodeSet, Variant, PAUSE_REPO, PAUSE_TAG};
use crate::cri::PodSpec;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::machine::{MachineInfo, Versions};
use crate::metrics::{self, Served};
use crate::node::{MountMode, Node, NodeKind};
use crate::pod::{run_pod, RunOptions};
use crate::report::{LinkSettings, Report};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Duration;

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
}

impl CompareOptions {
    pub fn new(out: impl Into<PathBuf>) -> CompareOptions {
        CompareOptions {
            profile: "azure-vote-front".into(),
            scale: 1.0,
            reps: 3,
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
        }
    }
}

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
    /// teleportd `/metrics` changes during the run (teleporters only; empty if unavailable).
    #[serde(default)]
    pub teleportd_metrics: std::collections::BTreeMap<String, f64>,
}

/// Image facts a report row needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ImageFacts {
    pub variant: Variant,
    pub reference: String,
    pub manifest_digest: String,
    pub layers: usize,
    pub image_bytes: u64,
    pub compressed_bytes: u64,
    pub working_set_hash: String,
    pub working_set_files: u64,
    pub working_set_bytes: u64,
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

    // Fixtures (cached across runs: same profile/scale/variant → same bytes).
    let cache = work.join("fixtures");
    let mut images: Vec<Fixture> = Vec::new();
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
    let pause = bed::fixture(&cache, "pause", 1.0, None, false).await?;

    // Registry: fresh root each run so expansion happens now, under our eyes.
    let reg_root = work.join("registry");
    crate::mounts::remove_tree(&reg_root)?;
    let repo = opts.profile.clone();
    let registry = bed::start_registry(
        &reg_root,
        opts.bandwidth_bytes_per_sec,
        opts.latency,
        vec![repo.clone()],
    )
    .await?;
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
            manifest_digest: fx.info.manifest_digest.to_string(),
            layers: fx.info.layers.len(),
            image_bytes: fx.info.total_uncompressed,
            compressed_bytes: fx.info.total_compressed,
            working_set_hash: ws.hash,
            working_set_files: ws.files,
            working_set_bytes: ws.bytes,
        });
    }

    let set = NodeSet {
        shuttle: true,
        mount_modes: opts.mount_modes.clone(),
        teleportd_bin: opts.teleportd_bin.clone(),
        teleportd_args: opts.teleportd_args.clone(),
    };
    let mut nodes = bed::start_nodes(&work.join("nodes"), &set, &registry).await?;
    let versions = Versions::detect();

    let runs_per_node = u64::from(opts.reps) + 1;
    let has_teleporter = nodes
        .iter()
        .any(|n| matches!(n.kind(), NodeKind::Teleporter { .. }));
    let firsts = if has_teleporter {
        facts.len() as u64
    } else {
        0
    };
    let total = runs_per_node * (facts.len() as u64) * (nodes.len() as u64) + firsts;
    let pb = bar(total, opts.interactive);
    let http = reqwest::Client::new();
    let metrics_url = format!("{}/metrics", registry.url());
    let mut samples = Vec::new();

    for img in &facts {
        // The image's first start on a teleporter, while the registry holds no start profile
        // for its layers: measured and reported apart, so every cold rep below (either mount
        // mode) starts in the same state — a profile learned by an earlier start exists.
        if let Some(node) = nodes
            .iter_mut()
            .find(|n| matches!(n.kind(), NodeKind::Teleporter { .. }))
        {
            pb.set_message(format!(
                "{} {} first start",
                img.variant.as_str(),
                node.name()
            ));
            node.recycle().await?;
            node.cri().pull_image(&pause_ref).await?;
            let s = measure(node, img, Run::First, opts, &http, &metrics_url, &pb).await?;
            samples.push(s);
            pb.inc(1);
        }
        for rep in 0..opts.reps {
            for node in nodes.iter_mut() {
                pb.set_message(format!(
                    "{} {} rep {}",
                    img.variant.as_str(),
                    node.name(),
                    rep + 1
                ));
                node.recycle().await?;
                // The pause image is pre-loaded, not counted (and its bytes are outside the delta).
                node.cri().pull_image(&pause_ref).await?;
                let s = measure(node, img, Run::Cold(rep), opts, &http, &metrics_url, &pb).await?;
                samples.push(s);
                pb.inc(1);
                if rep + 1 == opts.reps {
                    pb.set_message(format!("{} {} warm", img.variant.as_str(), node.name()));
                    let s = measure(node, img, Run::Warm, opts, &http, &metrics_url, &pb).await?;
                    samples.push(s);
                    pb.inc(1);
                }
            }
        }
    }
    pb.finish_and_clear();

    for node in nodes.drain(..) {
        node.destroy().await?;
    }
    if let Err(e) = registry.shutdown().await {
        tracing::warn!(error = %e, "registry shutdown");
    }

    let report = Report::build(
        &opts.profile,
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
    report.write(&opts.out)?;
    Ok(report)
}

/// Which kind of start a measurement is.
#[derive(Debug, Clone, Copy)]
enum Run {
    First,
    Cold(u32),
    Warm,
}

async fn measure(
    node: &Node,
    img: &ImageFacts,
    run_kind: Run,
    opts: &CompareOptions,
    http: &reqwest::Client,
    metrics_url: &str,
    pb: &ProgressBar,
) -> Result<Sample> {
    let pod = format!(
        "{}-{}-{}",
        img.variant.as_str(),
        node.name(),
        match run_kind {
            Run::First => "first".to_string(),
            Run::Cold(r) => format!("r{}", r + 1),
            Run::Warm => "warm".to_string(),
        }
    );
    let rep = match run_kind {
        Run::Cold(r) => Some(r),
        _ => None,
    };
    let spec = PodSpec {
        name: pod.clone(),
        image: img.reference.clone(),
        env: vec![("TB_WORKING_SET".into(), opts.working_set.to_string())],
        log_dir: node.paths().pods.join(&pod),
        cgroup_parent: node.cgroup_parent(),
    };
    let run = RunOptions {
        expected_hash: Some(img.working_set_hash.clone()),
        ready_timeout: opts.ready_timeout,
        teardown: true,
    };
    let events = Events::new(node.name(), &pod, opts.interactive.then(|| pb.clone()));
    let events = if opts.interactive {
        events
    } else {
        events.quiet()
    };
    let tp_url = node.teleportd_metrics_url();
    let tp_scrape = |url: Option<String>| async move {
        match url {
            Some(u) => metrics::scrape(http, &u).await.unwrap_or_default(),
            None => metrics::Scrape::default(),
        }
    };
    let tp_before = tp_scrape(tp_url.clone()).await;
    let before = metrics::scrape(http, metrics_url).await?;
    let t = run_pod(node, &spec, &run, &events).await?;
    let after = metrics::scrape(http, metrics_url).await?;
    let tp_after = tp_scrape(tp_url).await;
    Ok(Sample {
        variant: img.variant,
        node: node.name().to_string(),
        role: node.kind().role().to_string(),
        mount_mode: node.kind().mount_mode_label().to_string(),
        rep,
        warm: matches!(run_kind, Run::Warm),
        first_start: matches!(run_kind, Run::First),
        pull_seconds: t.pull_seconds,
        sandbox_seconds: t.sandbox_seconds,
        create_seconds: t.create_seconds,
        start_seconds: t.start_seconds,
        ready_seconds: t.ready_seconds,
        entrypoint_elapsed_ms: t.ready.elapsed_ms,
        ready_files: t.ready.files,
        ready_bytes: t.ready.bytes,
        ready_hash: t.ready.hash,
        served: Served::between(&before, &after),
        teleportd_metrics: tp_before.delta(&tp_after),
    })
}
