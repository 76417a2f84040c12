//! `testbed`: the seed's A/B experiment (standard pull vs Teleport) on real containerd nodes.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use testbed::bed::{self, NodeSet, PAUSE_REPO};
use testbed::compare::{compare, CompareOptions};
use testbed::control::{self, Command};
use testbed::node::MountMode;

#[derive(Parser)]
#[command(
    name = "testbed",
    version,
    about = "Standard pull vs Teleport on real containerd nodes, over CRI (like kubelet)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Directory holding the containerd under test (`containerd`, `containerd-shim-runc-v2`,
    /// `ctr`), e.g. from `scripts/get-containerd.sh 2.1`; put first in PATH. Default: PATH's.
    #[arg(long, global = true, env = "TB_CONTAINERD_BIN")]
    containerd_bin: Option<PathBuf>,
}

/// The containerd under test first in PATH, for this process and every node it starts.
fn use_containerd_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir).context("--containerd-bin")?;
    if !dir.join("containerd").is_file() {
        bail!("--containerd-bin {}: no containerd in it", dir.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let joined =
        std::env::join_paths(std::iter::once(dir.clone()).chain(std::env::split_paths(&path)))?;
    // Before any node or registry thread reads the environment.
    std::env::set_var("PATH", joined);
    std::env::set_var("TB_CONTAINERD_BIN", &dir);
    Ok(())
}

#[derive(Subcommand)]
enum Cmd {
    /// Start or stop nodes (shuttle + teleporters) and a registry for poking by hand.
    Nodes {
        #[command(subcommand)]
        action: NodesCmd,
    },
    /// Recycle a node of a running `testbed nodes up`: stop, unmount, wipe, start.
    Recycle {
        /// Node name (`shuttle`, `teleporter-per-layer`, `teleporter-merged`).
        node: String,
        #[arg(long, default_value = "/tmp/testbed-nodes")]
        dir: PathBuf,
    },
    /// Teleport's check-expansion.sh: HEAD the tag, poll /mount until ready / not enabled.
    CheckExpansion {
        /// Registry base URL, e.g. http://127.0.0.1:5000
        #[arg(long)]
        registry: String,
        repo: String,
        tag: String,
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Check (and, as root with apt, install) what real nodes need: containerd, runc, ctr,
    /// fusermount3, /dev/fuse, overlayfs, root.
    Provision,
    /// The A/B comparison: every variant × node × rep on recycled nodes; writes
    /// report.{md,json,csv,svg}.
    Compare(Box<CompareArgs>),
    /// Compare two report.json files row by row (median ready); exits 1 on a regression.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Largest allowed slow-down of a row's median ready, e.g. 10% or 0.1.
        #[arg(long, default_value = "10%")]
        max_regression: String,
    },
}

#[derive(Subcommand)]
enum NodesCmd {
    /// Start the nodes and a registry in the foreground until Ctrl-C or `nodes down`.
    Up {
        #[arg(long, default_value = "/tmp/testbed-nodes")]
        dir: PathBuf,
        /// Teleporter nodes to start (empty: shuttle only).
        #[arg(long, value_delimiter = ',', default_value = "per-layer,merged")]
        mount_modes: Vec<String>,
        /// teleportd binary (default: beside this binary, $TELEPORTD_BIN, or $PATH).
        #[arg(long)]
        teleportd: Option<PathBuf>,
        /// Extra flag for every teleportd (repeatable).
        #[arg(long = "teleportd-arg", allow_hyphen_values = true)]
        teleportd_args: Vec<String>,
        /// Repositories to teleport-enable on the registry.
        #[arg(long, value_delimiter = ',', default_value = "azure-vote-front,redis")]
        teleport_repos: Vec<String>,
    },
    /// Stop a running `nodes up`.
    Down {
        #[arg(long, default_value = "/tmp/testbed-nodes")]
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Fixture profile (azure-vote-front, redis).
    #[arg(long, default_value = "azure-vote-front")]
    profile: String,
    /// Size factor for the fixture (1.0 = full size: 944 MB for azure-vote-front).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Cold repetitions per variant and node (and first starts per learning teleporter).
    #[arg(long, default_value_t = 5)]
    reps: u32,
    /// Warm runs per node and variant (the row shows their median).
    #[arg(long, default_value_t = 3)]
    warm_runs: u32,
    /// Nodes per pool start: above 1, each rep also starts the image on N fresh nodes of each
    /// kind at the same moment (one kind at a time, one shared registry link) and the report
    /// gets a pool section (p50/p95 ready, registry bytes and CPU). 1: single nodes only.
    #[arg(long, default_value_t = 1)]
    fanout: usize,
    /// Teleporter start-profile settings: learned (teleportd's default), off (--no-start-profile).
    #[arg(long, value_delimiter = ',', default_value = "learned,off")]
    start_profiles: Vec<String>,
    /// Share of the learning run's working set each cold rep keeps (seeded per rep).
    #[arg(long, default_value_t = 0.8)]
    overlap: f64,
    /// Seed of the run (working set per rep, node order per rep).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// App readers (tb-entrypoint --readers): 1 reads serially in manifest (import) order.
    #[arg(long)]
    readers: Option<usize>,
    /// When the app is ready: fixture (TB-READY, hash checked), log:REGEX, exit, tcp:PORT,
    /// http:URL.
    #[arg(long, default_value = "fixture")]
    ready: String,
    /// Measure this image instead of a fixture: oci:DIR:TAG, docker-archive:FILE or
    /// docker://HOST/REPO:TAG (imported with skopeo; the squashed twin built by the project).
    #[arg(long)]
    image: Option<String>,
    /// Size of each node's fresh loop-backed ext4 (made anew at every recycle), e.g. 4GiB;
    /// 0 keeps plain directories.
    #[arg(long, default_value = "4GiB")]
    node_fs_size: String,
    /// Do not `sync` and drop the page cache before each run (cold and warm).
    #[arg(long)]
    keep_page_cache: bool,
    /// Override the image's entrypoint (repeat for each word).
    #[arg(long = "cmd", allow_hyphen_values = true)]
    command: Vec<String>,
    /// Override the image's command / arguments (repeat for each word).
    #[arg(long = "args", allow_hyphen_values = true)]
    args: Vec<String>,
    /// Registry egress limit, e.g. 1Gbit, 200MiB/s, or "unlimited". The default with --latency
    /// is the "cloud-like" link: a node VM's 1 Gbit/s to an in-region registry.
    #[arg(long, default_value = "1Gbit")]
    bandwidth: String,
    /// Added to every registry request (round trip to an in-region registry); 0ms for none.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Teleporter mount modes to measure.
    #[arg(long, value_delimiter = ',', default_value = "per-layer,merged")]
    mount_modes: Vec<String>,
    /// Image variants: layered, squashed.
    #[arg(long, value_delimiter = ',', default_value = "layered,squashed")]
    variants: Vec<String>,
    /// Share of the image's files the app reads before it is ready (Slacker: ≈6%).
    #[arg(long, default_value_t = 0.06)]
    working_set: f64,
    /// Output directory for report.md, report.json, report.svg.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Work directory (fixture cache, registry, nodes); default OUT/work.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// teleportd binary (default: beside this binary, $TELEPORTD_BIN, or $PATH).
    #[arg(long)]
    teleportd: Option<PathBuf>,
    /// Extra flag for every teleportd (repeatable), e.g. --teleportd-arg=--no-remote
    #[arg(long = "teleportd-arg", allow_hyphen_values = true)]
    teleportd_args: Vec<String>,
    /// Per-run limit for the app's ready line.
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
    /// Peer systems to measure beside ours on the same registry and link: soci, nydus (need
    /// `bash scripts/get-peers.sh soci|nydus`).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// SOCI's unpacked package (default: out/peers/soci here or in the source checkout).
    #[arg(long)]
    soci_dir: Option<PathBuf>,
    /// One SOCI node per `soci create --min-layer-size`: 10MiB (SOCI's default, node `soci`)
    /// and 0 (node `soci-min0`: every layer indexed).
    #[arg(long, value_delimiter = ',', default_value = "10MiB,0")]
    soci_min_layer_size: Vec<String>,
    /// `soci create --span-size` (SOCI's default 4MiB).
    #[arg(long, default_value = "4MiB")]
    soci_span_size: String,
    /// Turn SOCI's background fetch off (on by default, as SOCI ships).
    #[arg(long)]
    soci_no_background_fetch: bool,
    /// nydus's peer directory (default: out/peers/nydus here or in the source checkout).
    #[arg(long)]
    nydus_dir: Option<PathBuf>,
    /// Turn nydusd's background prefetch of the whole image off (on by default, as
    /// nydus-snapshotter's nydusd config ships).
    #[arg(long)]
    nydus_no_prefetch: bool,
    /// Also write each teleporter run's raw start trace (every FUSE open and read, with where
    /// each file lies in its layer) to OUT/traces/VARIANT-NODE-RUN.json
    #[arg(long)]
    keep_traces: bool,
}

fn mount_modes(v: &[String]) -> anyhow::Result<Vec<MountMode>> {
    v.iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(anyhow::Error::from))
        .collect()
}

/// Installs the SIGTERM/SIGINT handlers now and returns the future that completes on the first
/// one (registered eagerly: a handler installed on first poll leaves a window where a signal
/// kills the bed before it can tear its nodes down).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match signals {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "testbed=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(dir) = &cli.containerd_bin {
        use_containerd_dir(dir)?;
    }
    match cli.cmd {
        Cmd::Compare(a) => run_compare(*a).await,
        Cmd::Diff {
            old,
            new,
            max_regression,
        } => {
            let load = |p: &PathBuf| -> anyhow::Result<testbed::report::Report> {
                let bytes = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
                serde_json::from_slice(&bytes).with_context(|| format!("parse {}", p.display()))
            };
            let max = testbed::report::parse_fraction(&max_regression)
                .with_context(|| format!("--max-regression {max_regression:?}"))?;
            let d = testbed::report::diff(&load(&old)?, &load(&new)?, max);
            print!("{}", d.text);
            if d.regressions > 0 {
                eprintln!(
                    "{} row(s) slower by more than {:.0}%",
                    d.regressions,
                    max * 100.0
                );
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Provision => {
            testbed::provision::ensure()?;
            println!("ready: containerd, runc, ctr, fusermount3, /dev/fuse, overlayfs, root");
            Ok(())
        }
        Cmd::CheckExpansion {
            registry,
            repo,
            tag,
            timeout,
        } => {
            let (digest, state) =
                testbed::bed::check_expansion(&registry, &repo, &tag, timeout).await?;
            println!("{repo}:{tag} {digest}: {state}");
            if !matches!(state, registry_client::MountStatus::Ready(_)) {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Recycle { node, dir } => {
            control::send(&dir, &format!("recycle {node}")).await?;
            println!("{node}: recycled");
            Ok(())
        }
        Cmd::Nodes {
            action: NodesCmd::Down { dir },
        } => {
            control::send(&dir, "down").await?;
            println!("nodes stopped");
            Ok(())
        }
        Cmd::Nodes {
            action:
                NodesCmd::Up {
                    dir,
                    mount_modes: modes,
                    teleportd,
                    teleportd_args,
                    teleport_repos,
                },
        } => {
            let set = NodeSet {
                shuttle: true,
                mount_modes: mount_modes(&modes)?,
                start_profiles: vec![testbed::bed::StartProfile::Learned],
                fresh_fs_bytes: None,
                teleportd_bin: teleportd,
                teleportd_args,
            };
            nodes_up(dir, set, teleport_repos).await
        }
    }
}

async fn run_compare(a: CompareArgs) -> anyhow::Result<()> {
    let mut o = CompareOptions::new(&a.out);
    o.profile = a.profile;
    o.scale = a.scale;
    o.reps = a.reps;
    let unlimited = matches!(a.bandwidth.as_str(), "unlimited" | "off" | "none" | "0");
    o.bandwidth_bytes_per_sec = if unlimited {
        None
    } else {
        Some(registry_mock::parse_bandwidth(&a.bandwidth).context("--bandwidth")?)
    };
    o.bandwidth_label = (!unlimited).then_some(a.bandwidth);
    o.latency = a.latency;
    o.mount_modes = mount_modes(&a.mount_modes)?;
    o.variants = a
        .variants
        .iter()
        .map(|v| match v.as_str() {
            "layered" => Ok(bed::Variant::Layered),
            "squashed" => Ok(bed::Variant::Squashed),
            other => bail!("unknown variant {other:?} (layered, squashed)"),
        })
        .collect::<anyhow::Result<_>>()?;
    o.working_set = a.working_set;
    o.work_dir = a.work_dir;
    o.teleportd_bin = a.teleportd;
    o.teleportd_args = a.teleportd_args;
    o.ready_timeout = a.ready_timeout;
    o.warm_runs = a.warm_runs;
    o.fanout = a.fanout;
    o.drop_caches = !a.keep_page_cache;
    o.image = a.image;
    o.fresh_fs_bytes =
        match emulator::units::parse_size(&a.node_fs_size).map_err(anyhow::Error::msg)? {
            0 => None,
            n => Some(n),
        };
    o.start_profiles = a
        .start_profiles
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(anyhow::Error::from))
        .collect::<anyhow::Result<_>>()?;
    o.overlap = a.overlap;
    o.seed = a.seed;
    o.readers = a.readers;
    o.ready = a.ready.parse().context("--ready")?;
    o.peers = a
        .peers
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(anyhow::Error::from))
        .collect::<anyhow::Result<_>>()?;
    o.soci_dir = a.soci_dir;
    o.soci_min_layer_sizes = a
        .soci_min_layer_size
        .iter()
        .map(|s| emulator::units::parse_size(s).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()
        .context("--soci-min-layer-size")?;
    o.soci_span_size = emulator::units::parse_size(&a.soci_span_size)
        .map_err(anyhow::Error::msg)
        .context("--soci-span-size")?;
    o.soci_background_fetch = !a.soci_no_background_fetch;
    o.nydus_dir = a.nydus_dir;
    o.nydus_prefetch = !a.nydus_no_prefetch;
    o.keep_traces = a.keep_traces;
    o.command = (!a.command.is_empty()).then_some(a.command);
    o.args = (!a.args.is_empty()).then_some(a.args);
    let report = tokio::select! {
        r = compare(&o) => r?,
        _ = shutdown_signal() => {
            // The compare future is dropped by now: its nodes are stopped and unmounted. Exit
            // without waiting for a fixture build that may still run on a blocking thread.
            eprintln!("interrupted: nodes stopped and unmounted");
            std::process::exit(130);
        }
    };
    println!("{}", report.markdown());
    println!("written: {}/report.{{md,json,csv,svg}}", a.out.display());
    Ok(())
}

async fn nodes_up(dir: PathBuf, set: NodeSet, teleport_repos: Vec<String>) -> anyhow::Result<()> {
    testbed::provision::ensure()?;
    std::fs::create_dir_all(&dir)?;
    if tokio::net::UnixStream::connect(control::socket_path(&dir))
        .await
        .is_ok()
    {
        bail!("nodes already up in {}", dir.display());
    }
    let reg_root = dir.join("registry");
    let registry =
        bed::start_registry(&reg_root, None, Duration::ZERO, teleport_repos.clone()).await?;
    let host = registry.addr().to_string();
    let pause = bed::fixture(&dir.join("fixtures"), "pause", 1.0, None, false).await?;
    let pause_ref = bed::push(&pause, &host, PAUSE_REPO).await?;
    let mut nodes = bed::start_nodes(&dir.join("nodes"), &set, &registry).await?;
    for n in &nodes {
        n.cri().pull_image(&pause_ref).await?;
    }
    let listener = control::listen(&dir)?;
    println!(
        "registry  {}  (teleport-enabled: {})",
        registry.url(),
        teleport_repos.join(", ")
    );
    println!("  push:   fixtures push --layout DIR --to {host}/REPO:TAG");
    println!(
        "  check:  testbed check-expansion --registry {} REPO TAG",
        registry.url()
    );
    for n in &nodes {
        println!(
            "node {:<22} {}  pid {}{}",
            n.name(),
            n.socket().display(),
            n.containerd_pid().unwrap_or(0),
            n.teleportd_metrics_url()
                .map(|u| format!("  teleportd {u}"))
                .unwrap_or_default()
        );
    }
    if let Some(n) = nodes.first() {
        let s = n.socket().display();
        println!("  crictl --runtime-endpoint unix://{s} --image-endpoint unix://{s} pull {host}/REPO:TAG");
        println!("  ctr --address {s} -n k8s.io images ls");
    }
    println!(
        "  testbed recycle NODE --dir {}   |   testbed nodes down --dir {}   (or Ctrl-C)",
        dir.display(),
        dir.display()
    );

    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            got = control::accept(&listener) => {
                let (cmd, stream) = got?;
                match cmd {
                    Command::Down => {
                        for n in nodes.drain(..) {
                            n.destroy().await?;
                        }
                        control::reply(stream, &Ok(())).await;
                        break;
                    }
                    Command::Recycle(name) => {
                        let res = match nodes.iter_mut().find(|n| n.name() == name) {
                            Some(n) => match n.recycle().await {
                                Ok(()) => n.cri().pull_image(&pause_ref).await.map(|_| ()),
                                Err(e) => Err(e),
                            },
                            None => Err(testbed::Error::Invalid(format!("no node {name:?}"))),
                        };
                        if let Err(e) = &res {
                            eprintln!("recycle {name}: {e}");
                        } else {
                            println!("{name}: recycled");
                        }
                        control::reply(stream, &res).await;
                    }
                }
            }
        }
    }
    for n in nodes.drain(..) {
        n.destroy().await?;
    }
    let _ = std::fs::remove_file(control::socket_path(&dir));
    registry.shutdown().await?;
    Ok(())
}
