//! unpack-compare: our expansion of an image's layers vs containerd's own unpack of the same
//! image, wall-clock, on this machine, with the same input and the same page-cache treatment.
//! The evidence for the target "expansion on push faster than containerd's own unpack".

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use benches::containerd::Containerd;
use benches::expansion::{expand_all, LayerJob, LayerTiming};
use benches::fixture;
use clap::{Parser, ValueEnum};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum CacheMode {
    /// `sync; echo 3 > /proc/sys/vm/drop_caches` before every timed step (needs root).
    Drop,
    /// `sync`, then read every input once, before every timed step.
    Warm,
}

/// Time our expansion of every layer (sequential and parallel, as the registry runs it) and
/// containerd 1.6's unpack of the same image into overlayfs snapshots (private containerd, CRI
/// off). Prints a table and optionally writes JSON.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Fixture profile.
    #[arg(long, default_value = "azure-vote-front")]
    profile: String,
    /// Fixture scale (1.0 = full size, ≈944 MB uncompressed for azure-vote-front).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Where fixtures (and their OCI archives) are built once and reused.
    #[arg(long, env = "TELEPORT_BENCH_CACHE", default_value_os_t = fixture::default_cache_dir())]
    cache_dir: PathBuf,
    /// Where outputs and the private containerd live (same disk for both sides).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    work_dir: PathBuf,
    /// Parallel expansion workers (the registry's default: one per core).
    #[arg(long, default_value_t = default_threads())]
    threads: usize,
    /// Repetitions of every measurement (the table shows the median).
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Page-cache treatment before each timed step, the same for both sides.
    #[arg(long, value_enum, default_value_t = CacheMode::Drop)]
    cache_mode: CacheMode,
    /// Do not fsync our outputs (the registry fsyncs; containerd 1.6 does not fsync unpacked files).
    #[arg(long)]
    no_fsync: bool,
    /// Only measure our expansion.
    #[arg(long)]
    skip_containerd: bool,
    #[arg(long, default_value = "containerd")]
    containerd: PathBuf,
    #[arg(long, default_value = "ctr")]
    ctr: PathBuf,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Debug, Serialize)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    samples: Vec<f64>,
}

impl Stat {
    fn of(mut samples: Vec<f64>) -> Option<Stat> {
        if samples.is_empty() {
            return None;
        }
        let sorted = {
            let mut s = samples.clone();
            s.sort_by(f64::total_cmp);
            s
        };
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 0 {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
        let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
        samples.shrink_to_fit();
        Some(Stat {
            median,
            min,
            max,
            samples,
        })
    }
}

#[derive(Debug, Serialize)]
struct Report {
    date_unix: u64,
    machine: Machine,
    image: Image,
    cache_mode: CacheMode,
    fsync: bool,
    threads: usize,
    reps: usize,
    ours_sequential_seconds: Option<Stat>,
    ours_parallel_seconds: Option<Stat>,
    containerd_unpack_seconds: Option<Stat>,
    containerd_import_no_unpack_seconds: Option<Stat>,
    containerd_import_with_unpack_seconds: Option<Stat>,
    containerd_import_difference_seconds: Option<Stat>,
    ours_sequential_layers: Vec<LayerTiming>,
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    loadavg_start: String,
    loadavg_end: String,
    kernel: String,
    containerd_version: String,
}

#[derive(Debug, Serialize)]
struct Image {
    profile: String,
    scale: f64,
    layers: usize,
    compressed_bytes: u64,
    uncompressed_bytes: u64,
    manifest_digest: String,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.reps == 0 || args.threads == 0 {
        bail!("--reps and --threads must be at least 1");
    }
    if args.cache_mode == CacheMode::Drop && !is_root() {
        bail!("--cache-mode drop writes /proc/sys/vm/drop_caches and needs root; run as root or pass --cache-mode warm");
    }
    let loadavg_start = loadavg();
    let (layout, info) = fixture::cached_layout(&args.cache_dir, &args.profile, args.scale, true)
        .context("building the fixture")?;
    let jobs: Vec<LayerJob> = info
        .layers
        .iter()
        .map(|l| LayerJob {
            blob: fixture::layer_path(&layout, l),
            digest: l.digest.clone(),
            media_type: l.media_type.clone(),
        })
        .collect();
    let uncompressed: u64 = info.layers.iter().map(|l| l.uncompressed_size).sum();
    let compressed: u64 = info.layers.iter().map(|l| l.size).sum();
    let blob_paths: Vec<PathBuf> = jobs.iter().map(|j| j.blob.clone()).collect();

    let steps = args.reps * if args.skip_containerd { 2 } else { 5 };
    let bar = indicatif::ProgressBar::new(steps as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let prepare = |paths: &mut dyn Iterator<Item = PathBuf>| -> anyhow::Result<()> {
        match args.cache_mode {
            CacheMode::Drop => benches::drop_caches().context("dropping the page cache"),
            CacheMode::Warm => {
                // Write back what earlier steps left dirty, so no step pays for another's writes.
                let synced = std::process::Command::new("sync").status();
                if !matches!(synced, Ok(s) if s.success()) {
                    bail!("sync failed: {synced:?}");
                }
                let v: Vec<PathBuf> = paths.collect();
                benches::warm_files(v.iter().map(|p| p.as_path())).context("warming inputs")?;
                Ok(())
            }
        }
    };

    // Our side: the registry's expansion path on the layout's blobs.
    let fsync = !args.no_fsync;
    let (mut seq, mut par, mut seq_layers) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.reps {
        for (threads, samples) in [(1, &mut seq), (args.threads, &mut par)] {
            bar.set_message(format!("our expansion, {threads} thread(s)"));
            let out = tempfile::Builder::new()
                .prefix("expand-")
                .tempdir_in(&args.work_dir)
                .with_context(|| format!("temp dir in {}", args.work_dir.display()))?;
            prepare(&mut blob_paths.iter().cloned())?;
            let (secs, timings) = expand_all(&jobs, out.path(), threads, fsync)?;
            samples.push(secs);
            if threads == 1 {
                seq_layers = timings;
            }
            bar.inc(1);
        }
    }

    let mut notes = vec![
        format!("containerd unpack = wall-clock of `ctr images mount --snapshotter overlayfs REF DIR` after `ctr images import --no-unpack`: containerd 1.6 has no `ctr images unpack`; `images mount` runs the same Image.Unpack (every layer: decompress, untar into an overlayfs snapshot, commit; layers in sequence) plus one read-only View mount (milliseconds)."),
        "containerd import difference = (`ctr images import` with unpack) − (`ctr images import --no-unpack`), each on a fresh containerd: a cross-check of the unpack figure.".into(),
        format!("our expansion writes the data file and index of every layer to {} and {}, as the registry does", args.work_dir.display(), if fsync { "fsyncs them" } else { "does not fsync (--no-fsync)" }),
        match args.cache_mode {
            CacheMode::Drop => "page cache: `sync; echo 3 > /proc/sys/vm/drop_caches` before every timed step, both sides (cold reads from disk)".to_string(),
            CacheMode::Warm => "page cache: `sync`, then every input read once, before every timed step, both sides (inputs warm)".to_string(),
        },
    ];
    if which::which("unpigz").is_err() {
        notes.push("unpigz is not installed: containerd decompresses gzip with Go's compress/gzip (as on a stock node without pigz).".into());
    } else {
        notes.push("unpigz is installed: containerd decompresses gzip with it.".into());
    }

    let (mut unpack, mut imp, mut imp_unpack, mut diff) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut containerd_version = String::new();
    if !args.skip_containerd {
        let archive = args
            .cache_dir
            .join(format!("{}-scale{}.oci.tar", args.profile, args.scale));
        bar.set_message("writing the OCI archive");
        fixture::oci_archive(&layout, &archive).context("writing the OCI archive")?;
        let archive_s = archive.to_string_lossy().into_owned();
        for _ in 0..args.reps {
            // (a) import without unpack, then the timed unpack.
            let c = Containerd::start(&args.work_dir, &args.containerd, &args.ctr)?;
            if containerd_version.is_empty() {
                let v = c.ctr_run(&["version"]).unwrap_or_default();
                let mut versions: Vec<&str> = v
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("Version:"))
                    .map(str::trim)
                    .collect();
                versions.dedup();
                containerd_version = versions.join(" / ");
            }
            tracing::info!(pid = c.pid(), socket = %c.socket.display(), "private containerd up");
            bar.set_message("containerd import --no-unpack");
            prepare(&mut std::iter::once(archive.clone()))?;
            let t = Instant::now();
            c.ctr_run(&[
                "images",
                "import",
                "--no-unpack",
                "--base-name",
                "bench/image",
                &archive_s,
            ])?;
            imp.push(t.elapsed().as_secs_f64());
            bar.inc(1);
            let reference = image_ref(&c)?;
            bar.set_message("containerd unpack");
            let mnt = c.scratch("mnt")?;
            let mnt_s = mnt.to_string_lossy().into_owned();
            let blobs = c.content_blobs();
            prepare(&mut list_dir(&blobs)?.into_iter())?;
            let t = Instant::now();
            c.ctr_run(&[
                "images",
                "mount",
                "--snapshotter",
                "overlayfs",
                &reference,
                &mnt_s,
            ])?;
            unpack.push(t.elapsed().as_secs_f64());
            c.ctr_run(&["images", "unmount", &mnt_s])?;
            check_unpacked(&c, info.layers.len())?;
            drop(c);
            bar.inc(1);

            // (b) import with unpack on a fresh containerd.
            let c = Containerd::start(&args.work_dir, &args.containerd, &args.ctr)?;
            bar.set_message("containerd import (unpack)");
            prepare(&mut std::iter::once(archive.clone()))?;
            let t = Instant::now();
            c.ctr_run(&[
                "images",
                "import",
                "--snapshotter",
                "overlayfs",
                "--base-name",
                "bench/image",
                &archive_s,
            ])?;
            let with = t.elapsed().as_secs_f64();
            check_unpacked(&c, info.layers.len())?;
            imp_unpack.push(with);
            if let Some(i) = imp.last() {
                diff.push(with - i);
            }
            drop(c);
            bar.inc(3);
        }
    }
    bar.finish_and_clear();

    let report = Report {
        date_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine: Machine {
            cpus: default_threads(),
            loadavg_start,
            loadavg_end: loadavg(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            containerd_version,
        },
        image: Image {
            profile: info.profile.clone(),
            scale: info.scale,
            layers: info.layers.len(),
            compressed_bytes: compressed,
            uncompressed_bytes: uncompressed,
            manifest_digest: info.manifest_digest.to_string(),
        },
        cache_mode: args.cache_mode,
        fsync,
        threads: args.threads,
        reps: args.reps,
        ours_sequential_seconds: Stat::of(seq),
        ours_parallel_seconds: Stat::of(par),
        containerd_unpack_seconds: Stat::of(unpack),
        containerd_import_no_unpack_seconds: Stat::of(imp),
        containerd_import_with_unpack_seconds: Stat::of(imp_unpack),
        containerd_import_difference_seconds: Stat::of(diff),
        ours_sequential_layers: seq_layers,
        notes,
    };
    print_table(&report);
    if let Some(p) = &args.out {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn print_table(r: &Report) {
    let mb = r.image.uncompressed_bytes as f64 / 1e6;
    println!(
        "{} scale {}: {} layers, {:.1} MB compressed, {:.1} MB uncompressed; page cache: {:?}; load avg at start {}",
        r.image.profile,
        r.image.scale,
        r.image.layers,
        r.image.compressed_bytes as f64 / 1e6,
        mb,
        r.cache_mode,
        r.machine.loadavg_start
    );
    let base = r.containerd_unpack_seconds.as_ref().map(|s| s.median);
    println!(
        "| {:<46} | {:>9} | {:>17} | {:>8} | {:>13} |",
        "method", "median s", "min–max s", "MB/s", "vs containerd"
    );
    println!(
        "|{:-<48}|{:-<11}|{:-<19}|{:-<10}|{:-<15}|",
        "", "", "", "", ""
    );
    let parallel = format!("ours, parallel ({} threads)", r.threads);
    let rows: [(&str, &Option<Stat>, bool); 5] = [
        (
            "ours, sequential (1 thread)",
            &r.ours_sequential_seconds,
            true,
        ),
        (&parallel, &r.ours_parallel_seconds, true),
        (
            "containerd unpack (ctr images mount)",
            &r.containerd_unpack_seconds,
            true,
        ),
        (
            "containerd import with unpack − without",
            &r.containerd_import_difference_seconds,
            true,
        ),
        (
            "containerd import --no-unpack (not unpack)",
            &r.containerd_import_no_unpack_seconds,
            false,
        ),
    ];
    for (name, stat, rate) in rows {
        let Some(s) = stat else { continue };
        let speed = match base {
            Some(b) if rate && s.median > 0.0 => format!("{:.2}x", b / s.median),
            _ => "-".into(),
        };
        let rate = if rate && s.median > 0.0 {
            format!("{:.0}", mb / s.median)
        } else {
            "-".into()
        };
        println!(
            "| {:<46} | {:>9.3} | {:>17} | {:>8} | {:>13} |",
            name,
            s.median,
            format!("{:.3}–{:.3}", s.min, s.max),
            rate,
            speed
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}

/// The one image the import created.
fn image_ref(c: &Containerd) -> anyhow::Result<String> {
    let out = c.ctr_run(&["images", "ls", "-q"])?;
    let refs: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match refs.as_slice() {
        [one] => Ok((*one).to_string()),
        other => bail!("expected one imported image, containerd lists {other:?}"),
    }
}

/// A run that unpacked nothing must not pass as fast: count committed overlayfs snapshots.
fn check_unpacked(c: &Containerd, layers: usize) -> anyhow::Result<()> {
    let out = c.ctr_run(&["snapshots", "--snapshotter", "overlayfs", "ls"])?;
    let committed = out.lines().filter(|l| l.contains("Committed")).count();
    if committed < layers {
        bail!("containerd committed {committed} snapshots for {layers} layers: the unpack did not happen\n{out}");
    }
    Ok(())
}

fn list_dir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_root() -> bool {
    // /proc/self/status "Uid:" real uid; avoids a libc dependency.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
