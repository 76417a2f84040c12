//! Cold FUSE reads against the emulated link: one big incompressible file read sequentially
//! (1 MiB reads) through a fresh node — empty chunk cache, nothing prefetched, no start profile
//! — from an in-process registry-mock whose link is limited (`TELEPORT_COLD_LINK`, default
//! `1Gbit`, plus `TELEPORT_COLD_LATENCY_MS`, default 1 ms per request). The throughput is what
//! a cold sequential read gets of the link; the target is ≥ 90% of it. Both mount modes.
//! Needs root (FUSE).
//!
//! Size: `TELEPORT_COLD_MIB` (default 64). Work dir: `TELEPORT_FUSE_BENCH_DIR` (default
//! `/var/tmp/teleport-fuse-cold`), removed afterwards.

// Benches may panic on setup errors: a bench that cannot set up must not measure nothing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use emulator::Digest;
use fuse_mount::fetch::{Client, ClientOptions, LayerHandle, MountStatus};
use fuse_mount::fs::{mount_layer, mount_merged, MountOptions};
use rand::{RngCore, SeedableRng};

const REPO: &str = "bench/cold";
const BIG: &str = "data/big.bin";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn work_dir() -> PathBuf {
    std::env::var_os("TELEPORT_FUSE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/teleport-fuse-cold"))
}

fn layer_tar(mib: u64) -> Vec<u8> {
    let mut big = vec![0u8; (mib << 20) as usize];
    rand_chacha::ChaCha8Rng::seed_from_u64(5).fill_bytes(&mut big);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(big.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, BIG, &big[..]).expect("tar append");
    b.into_inner().expect("tar finish")
}

fn wait_ready(client: &Client, digest: &Digest) -> fuse_mount::fetch::MountInfo {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match client.resolve_blocking(REPO, digest).expect("/mount") {
            MountStatus::Ready(info) => return std::sync::Arc::unwrap_or_clone(info),
            MountStatus::Expanding => {}
            other => panic!("/mount: {other:?}"),
        }
        assert!(Instant::now() < deadline, "expansion did not finish");
        // Polling the registry's own status endpoint: nothing to wait on but time.
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn fuse_cold(c: &mut Criterion) {
    let mib: u64 = env_or("TELEPORT_COLD_MIB", "64")
        .parse()
        .expect("TELEPORT_COLD_MIB");
    let link = env_or("TELEPORT_COLD_LINK", "1Gbit");
    let latency_ms: u64 = env_or("TELEPORT_COLD_LATENCY_MS", "1")
        .parse()
        .expect("TELEPORT_COLD_LATENCY_MS");
    let dir = work_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("work dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut cfg = registry_mock::Config::new(dir.join("registry"));
    cfg.teleport_repos = vec![REPO.into()];
    cfg.link = registry_mock::LinkConfig {
        bandwidth_bytes_per_sec: Some(registry_mock::parse_bandwidth(&link).expect("link")),
        latency: Duration::from_millis(latency_ms),
    };
    let reg = rt.block_on(registry_mock::start(cfg)).expect("registry");
    let url = reg.url();
    let layer = testkit::image::gzip(&layer_tar(mib));
    let pushed = rt.block_on(async {
        let c = testkit::registry::client();
        testkit::registry::push_image(&c, &url, REPO, "v1", &[layer]).await
    });
    let probe = Client::new(
        &url,
        None,
        dir.join("probe-cache"),
        ClientOptions::default(),
    )
    .expect("client");
    let info = wait_ready(&probe, &pushed.manifest);
    let link_bytes = registry_mock::parse_bandwidth(&link).expect("link");

    let mut g = c.benchmark_group(format!("fuse_cold/seq_1MiB_{link}_{latency_ms}ms"));
    g.sample_size(10).throughput(Throughput::Bytes(mib << 20));
    for merged in [false, true] {
        let name = if merged { "fuse-merged" } else { "fuse-layer" };
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    // A fresh node: its own empty chunk cache, the layer opened anew.
                    let node = dir.join(format!("node-{name}-{i}"));
                    let client = Client::new(
                        &url,
                        None,
                        node.join("cache"),
                        ClientOptions {
                            start_profile: false,
                            ..ClientOptions::default()
                        },
                    )
                    .expect("client");
                    let handle: LayerHandle = client
                        .open_layer_blocking(REPO, &info.layers[0])
                        .expect("layer");
                    let mnt = node.join("mnt");
                    std::fs::create_dir_all(&mnt).expect("mount point");
                    let opts = MountOptions {
                        prefetch_on_open: false,
                        ..MountOptions::default()
                    };
                    let m = if merged {
                        mount_merged(&mnt, vec![handle], &opts)
                    } else {
                        mount_layer(&mnt, handle, &opts)
                    }
                    .expect("mount");
                    let t0 = Instant::now();
                    let mut f = File::open(mnt.join(BIG)).expect("open");
                    let mut buf = vec![0u8; 1 << 20];
                    let mut n = 0u64;
                    loop {
                        let k = f.read(&mut buf).expect("read");
                        if k == 0 {
                            break;
                        }
                        n += k as u64;
                    }
                    total += t0.elapsed();
                    assert_eq!(n, mib << 20);
                    drop(f);
                    m.unmount().expect("unmount");
                    let _ = std::fs::remove_dir_all(&node);
                }
                total
            })
        });
    }
    g.finish();
    eprintln!(
        "fuse_cold: link {link} = {:.1} MiB/s; compare the throughput above with it",
        link_bytes as f64 / f64::from(1 << 20)
    );
    rt.block_on(reg.shutdown()).expect("registry shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, fuse_cold);
criterion_main!(benches);
