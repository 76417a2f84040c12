//! FUSE read throughput: the same files read through teleportd's FUSE filesystem (per-layer and
//! merged mount modes) and from the native filesystem they were unpacked to, on the same disk.
//!
//! Warm = every chunk is already in the node's chunk cache (a full read before measuring), and
//! the kernel page cache is dropped before every timed read on both sides, so both read from
//! disk: the ratio is FUSE's own cost. Three shapes: one big file read sequentially in 1 MiB
//! reads, 4 KiB `pread`s at seeded random offsets of it, and many small files opened and read
//! whole (an interpreter's imports). Needs root (FUSE, drop_caches).
//!
//! Size: `TELEPORT_FUSE_BENCH_MIB` (default 128) for the big file. Work dir:
//! `TELEPORT_FUSE_BENCH_DIR` (default `/var/tmp/teleport-fuse-bench`, on disk, not tmpfs).

// Benches may panic on setup errors: a bench that cannot set up must not measure nothing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fuse_mount::fetch::{Client, ClientOptions};
use fuse_mount::fs::{mount_layer, mount_merged, MountHandle, MountOptions};
use rand::{Rng, RngCore, SeedableRng};

const BIG: &str = "data/big.bin";
const SMALL_DIR: &str = "lib/site-packages";
const SMALL_FILES: usize = 1000;
const RANDOM_READS: usize = 2000;

struct Bed {
    /// Where each variant sees the image's root: native dir, per-layer mount, merged mount.
    roots: Vec<(&'static str, PathBuf)>,
    big_size: u64,
    small_bytes: u64,
    mounts: Vec<MountHandle>,
    _client: Client,
    dir: PathBuf,
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Unmount before the work dir (and its 2× the image in files) is removed.
        self.mounts.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn work_dir() -> PathBuf {
    std::env::var_os("TELEPORT_FUSE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/teleport-fuse-bench"))
}

/// A layer tar: one big incompressible file and many small ones of 4–32 KiB.
fn build_tar(big_mib: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).expect("tar append");
    };
    let mut big = vec![0u8; (big_mib << 20) as usize];
    rng.fill_bytes(&mut big);
    add(&mut b, BIG, &big);
    drop(big);
    for i in 0..SMALL_FILES {
        let len = rng.gen_range(4 << 10..32 << 10);
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        add(&mut b, &format!("{SMALL_DIR}/m{i:04}.py"), &d);
    }
    b.into_inner().expect("tar finish")
}

fn setup() -> Bed {
    let big_mib: u64 = std::env::var("TELEPORT_FUSE_BENCH_MIB")
        .ok()
        .map(|s| s.parse().expect("TELEPORT_FUSE_BENCH_MIB is not a number"))
        .unwrap_or(128);
    let dir = work_dir();
    for m in ["mnt-layer", "mnt-merged"] {
        // A previous run killed mid-bench may have left its mounts.
        let _ = fuse_mount::fs::detach(&dir.join(m));
    }
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["native", "cache", "mnt-layer", "mnt-merged"] {
        std::fs::create_dir_all(dir.join(d)).expect("work dir");
    }
    let tar_bytes = build_tar(big_mib);
    tar::Archive::new(&tar_bytes[..])
        .unpack(dir.join("native"))
        .expect("unpacking the native copy");

    let data_path = dir.join("layer.data");
    let mut data = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&data_path)
        .expect("data file");
    let ex = emulator::expand_to_file(
        &tar_bytes[..],
        Some(emulator::oci::MT_OCI_LAYER_TAR),
        None,
        &mut data,
        &emulator::ExpandOptions::default(),
    )
    .expect("expanding the layer");
    drop(tar_bytes);
    let data = Arc::new(File::open(&data_path).expect("data file"));
    // Nothing is fetched over the network: the layer's data is the local file, read through the
    // same chunk cache (and digest checks) as a registry-backed layer.
    let client = Client::new(
        "http://127.0.0.1:9",
        None,
        dir.join("cache"),
        ClientOptions::default(),
    )
    .expect("client");
    let opts = MountOptions {
        kernel_read_ahead_kb: std::env::var("TELEPORT_FUSE_READ_AHEAD_KB")
            .ok()
            .and_then(|v| v.parse().ok()),
        ..MountOptions::default()
    };
    let layer = mount_layer(
        dir.join("mnt-layer"),
        client.local_layer(ex.index.clone(), data.clone()),
        &opts,
    )
    .expect("per-layer mount");
    let merged = mount_merged(
        dir.join("mnt-merged"),
        vec![client.local_layer(ex.index, data)],
        &opts,
    )
    .expect("merged mount");

    let roots = vec![
        ("native", dir.join("native")),
        ("fuse-layer", dir.join("mnt-layer")),
        ("fuse-merged", dir.join("mnt-merged")),
    ];
    let big_size = std::fs::metadata(dir.join("native").join(BIG))
        .expect("big file")
        .len();
    let small_bytes = small_paths(&dir.join("native"))
        .iter()
        .map(|p| std::fs::metadata(p).expect("small file").len())
        .sum();
    // Warm the chunk cache: every byte once through each mount.
    for (_, root) in &roots[1..] {
        read_seq(&root.join(BIG));
        read_small(root);
    }
    Bed {
        roots,
        big_size,
        small_bytes,
        mounts: vec![layer, merged],
        _client: client,
        dir,
    }
}

fn small_paths(root: &Path) -> Vec<PathBuf> {
    (0..SMALL_FILES)
        .map(|i| root.join(format!("{SMALL_DIR}/m{i:04}.py")))
        .collect()
}

fn read_seq(path: &Path) -> u64 {
    let mut f = File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).expect("read");
        if k == 0 {
            return n;
        }
        n += k as u64;
    }
}

fn read_random(path: &Path, size: u64) -> u64 {
    let f = File::open(path).expect("open");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut buf = [0u8; 4096];
    let mut n = 0u64;
    for _ in 0..RANDOM_READS {
        let off = rng.gen_range(0..size.saturating_sub(4096).max(1)) & !4095;
        f.read_exact_at(&mut buf, off).expect("pread");
        n += buf.len() as u64;
    }
    n
}

fn read_small(root: &Path) -> u64 {
    small_paths(root)
        .iter()
        .map(|p| std::fs::read(p).expect("small file").len() as u64)
        .sum()
}

/// Time `iters` runs of `f`, each after a page-cache drop (not timed).
fn timed_cold_page_cache(iters: u64, mut f: impl FnMut() -> u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        benches::drop_caches().expect("drop_caches (needs root)");
        let t0 = Instant::now();
        std::hint::black_box(f());
        total += t0.elapsed();
    }
    total
}

fn fuse_read(c: &mut Criterion) {
    let bed = setup();
    let mut g = c.benchmark_group("fuse_read/seq_1MiB_warm");
    g.sample_size(10)
        .throughput(Throughput::Bytes(bed.big_size));
    for (name, root) in &bed.roots {
        let p = root.join(BIG);
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| timed_cold_page_cache(iters, || read_seq(&p)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("fuse_read/random_4KiB_warm");
    g.sample_size(10)
        .throughput(Throughput::Bytes(RANDOM_READS as u64 * 4096));
    for (name, root) in &bed.roots {
        let p = root.join(BIG);
        let size = bed.big_size;
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| timed_cold_page_cache(iters, || read_random(&p, size)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("fuse_read/small_files_warm");
    g.sample_size(10)
        .throughput(Throughput::Bytes(bed.small_bytes));
    for (name, root) in &bed.roots {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| timed_cold_page_cache(iters, || read_small(root)))
        });
    }
    g.finish();
}

criterion_group!(benches, fuse_read);
criterion_main!(benches);
