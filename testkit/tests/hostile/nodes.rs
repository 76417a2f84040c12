//! Node cases against the real teleportd (each its own root, socket and chunk cache), driven
//! over its snapshots socket as containerd's CRI unpacker drives it (see `testkit::node`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use testkit::node::{lowerdirs, prepare_container, pull_remote};
use testkit::registry::*;
use testkit::{fd_count, peak_rss_kib, ManagerGuard, Need, Teleportd, TestDir};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Pushes gzip `layers` to `repo:1` and waits until `/mount` has them expanded; returns the
/// manifest digest and (layer digest, diff id) per layer.
fn push_expanded(
    rt: &tokio::runtime::Runtime,
    url: &str,
    repo: &str,
    layers: &[Vec<u8>],
) -> (String, Vec<(String, String)>) {
    rt.block_on(async {
        let c = client();
        let p = push_image(&c, url, repo, "1", layers).await;
        let (s, v) = poll_until("expansion", Duration::from_secs(300), || async {
            let r = c
                .get(format!("{url}/mount/v1/{repo}/_manifests/{}", p.manifest))
                .send()
                .await
                .unwrap();
            let s = r.status();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (s != StatusCode::CONFLICT).then_some((s, v))
        })
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let ls = p
            .layers
            .iter()
            .zip(layers)
            .map(|((d, _), gz)| (d.to_string(), diff_id(gz).to_string()))
            .collect();
        (p.manifest.to_string(), ls)
    })
}

fn node_args<'a>(mode: &'a str, url: &'a str, cache: &'a str) -> Vec<&'a str> {
    vec![
        "--mount-mode",
        mode,
        "--registry",
        url,
        "--cache-dir",
        cache,
        // Nothing fetched behind the test's back; what is read is what the test reads.
        "--no-start-profile",
    ]
}

/// `rel` read through the image's lower dirs (top first), as overlayfs would find it.
fn read_through(lowers: &[PathBuf], rel: &str) -> std::io::Result<Vec<u8>> {
    for l in lowers {
        match std::fs::read(l.join(rel)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            other => return other,
        }
    }
    Err(std::io::ErrorKind::NotFound.into())
}

/// A 600-layer image on a node. Merged mode: one FUSE mount for the whole image, every layer's
/// file readable. Per-layer mode: overlayfs stacks at most 500 lower layers (the kernel's
/// OVL_MAX_STACK), so 600 FUSE layers could never be a container's rootfs: teleportd must
/// refuse the container's snapshot with a clear error (naming the limit and the way out) —
/// and neither answer may hang.
#[test]
fn six_hundred_layers_merged_mounts_them_per_layer_refuses_clearly() {
    if !testkit::require(&[Need::Root, Need::Fuse]) {
        return;
    }
    let _h = crate::heavy();
    let t = TestDir::new();
    let dir = t.path();
    let reg = RegistryProcess::start(&dir.join("reg"), &["--teleport-repos", "many"]);
    let rt = runtime();
    let layers: Vec<Vec<u8>> = (0..600)
        .map(|i| gzip_tar(&[(&format!("l/{i:03}"), format!("layer {i}\n").as_bytes())]))
        .collect();
    let (manifest, ls) = push_expanded(&rt, &reg.url, "many", &layers);
    let image = format!("127.0.0.1:{}/many:1", reg.port);
    for mode in ["merged", "per-layer"] {
        let root = dir.join(format!("td-{mode}"));
        let _g = ManagerGuard(root.clone());
        let cache = dir.join(format!("cache-{mode}"));
        let socket = dir.join(format!("{mode}.sock"));
        let td = Teleportd::start_with(
            &root,
            &socket,
            &dir.join(format!("{mode}.log")),
            &node_args(mode, &reg.url, cache.to_str().unwrap()),
        );
        let started = Instant::now();
        let res = rt
            .block_on(async {
                let steps = async {
                    let top = pull_remote(&socket, &image, &manifest, &ls).await?;
                    prepare_container(&socket, &format!("c-{mode}"), &top).await
                };
                tokio::time::timeout(Duration::from_secs(300), steps).await
            })
            .unwrap_or_else(|_| panic!("{mode}: 600 layers hung for 300 s"));
        let took = started.elapsed();
        match mode {
            "merged" => {
                let mounts = res.unwrap_or_else(|s| panic!("merged: {s}\n{}", td.log_text()));
                let lowers = lowerdirs(&mounts);
                assert_eq!(lowers.len(), 1, "one merged lower dir: {mounts:?}");
                for i in [0, 299, 599] {
                    let got = read_through(&lowers, &format!("l/{i:03}")).unwrap();
                    assert_eq!(got, format!("layer {i}\n").as_bytes());
                }
            }
            _ => {
                let e = res.expect_err("600 overlay lower layers cannot be mounted");
                let msg = e.message();
                assert!(
                    msg.contains("600") && msg.contains("500") && msg.contains("merged"),
                    "per-layer: unclear error {e:?}"
                );
                assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
            }
        }
        let mgr = fuse_mount::manager::read_pid(&root);
        let td_peak = peak_rss_kib(td.pid());
        let mgr_peak = mgr.map(peak_rss_kib).unwrap_or(0);
        eprintln!(
            "hostile 600-layers {mode}: {:.1} s, teleportd VmHWM {td_peak} KiB, fuse manager VmHWM {mgr_peak} KiB",
            took.as_secs_f64()
        );
        // A debug build holding 600 layer indexes: 100-180 MiB measured.
        assert!(
            td_peak < 384 * 1024,
            "{mode}: teleportd peak RSS {td_peak} KiB"
        );
        assert!(
            mgr_peak < 256 * 1024,
            "{mode}: fuse manager peak RSS {mgr_peak} KiB"
        );
        drop(td);
    }
    let peak = reg.peak_rss_kib();
    eprintln!("hostile 600-layers: registry VmHWM {peak} KiB");
    assert!(peak < 256 * 1024, "registry peak RSS {peak} KiB");
}

/// 16 teleportd node agents (own roots, sockets, caches; half merged, half per-layer) pull and
/// mount one image from one registry at the same moment and read every file: zero errors,
/// every byte right; the registry's peak RSS and open descriptors stay bounded and the
/// descriptors go back to where they were.
#[test]
fn sixteen_nodes_pull_and_mount_one_image_at_once() {
    const NODES: usize = 16;
    if !testkit::require(&[Need::Root, Need::Fuse]) {
        return;
    }
    let _h = crate::heavy();
    let t = TestDir::new();
    let dir = t.path();
    let reg = RegistryProcess::start(&dir.join("reg"), &["--teleport-repos", "fleet"]);
    let rt = runtime();
    let big = random_bytes(4 << 20, 9);
    let files: Vec<(String, Vec<u8>)> = vec![
        ("bin/big".into(), big),
        ("etc/a".into(), b"alpha\n".to_vec()),
        ("etc/b".into(), random_bytes(100_000, 3)),
        ("usr/c".into(), random_bytes(700_000, 4)),
    ];
    let layers: Vec<Vec<u8>> = vec![
        gzip_tar(&[(&files[0].0, &files[0].1)]),
        gzip_tar(&[(&files[1].0, &files[1].1), (&files[2].0, &files[2].1)]),
        gzip_tar(&[(&files[3].0, &files[3].1)]),
    ];
    let (manifest, ls) = push_expanded(&rt, &reg.url, "fleet", &layers);
    let image = format!("127.0.0.1:{}/fleet:1", reg.port);
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let mode = if i % 2 == 0 { "merged" } else { "per-layer" };
        let root = dir.join(format!("n{i}"));
        let guard = ManagerGuard(root.clone());
        let cache = dir.join(format!("cache{i}"));
        let td = Teleportd::start_with(
            &root,
            &dir.join(format!("n{i}.sock")),
            &dir.join(format!("n{i}.log")),
            &node_args(mode, &reg.url, cache.to_str().unwrap()),
        );
        nodes.push((td, guard));
    }
    let pid = reg.pid();
    // Let idle keep-alive connections of the pushes close before the baseline.
    let fd0 = testkit::wait_for(
        "registry descriptors settle",
        Duration::from_secs(30),
        || {
            let a = fd_count(pid);
            std::thread::sleep(Duration::from_millis(200));
            (fd_count(pid) == a).then_some(a)
        },
    );
    let rss0 = reg.peak_rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let fd_peak = Arc::new(AtomicUsize::new(fd0));
    let sampler = {
        let (stop, fd_peak) = (stop.clone(), fd_peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                fd_peak.fetch_max(fd_count(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let want: Vec<(String, String)> = files
        .iter()
        .map(|(p, b)| (p.clone(), hex::encode(Sha256::digest(b))))
        .collect();
    let started = Instant::now();
    let results: Vec<Result<(), String>> = rt.block_on(async {
        let tasks: Vec<_> = (0..NODES)
            .map(|i| {
                let socket = dir.join(format!("n{i}.sock"));
                let (image, manifest, ls, want) =
                    (image.clone(), manifest.clone(), ls.clone(), want.clone());
                tokio::spawn(async move {
                    let top = pull_remote(&socket, &image, &manifest, &ls)
                        .await
                        .map_err(|s| format!("node {i} pull: {s}"))?;
                    let mounts = prepare_container(&socket, &format!("c{i}"), &top)
                        .await
                        .map_err(|s| format!("node {i} mount: {s}"))?;
                    let lowers = lowerdirs(&mounts);
                    tokio::task::spawn_blocking(move || {
                        for (rel, sha) in &want {
                            let b = read_through(&lowers, rel)
                                .map_err(|e| format!("node {i} read {rel}: {e}"))?;
                            if &hex::encode(Sha256::digest(&b)) != sha {
                                return Err(format!("node {i}: wrong bytes in {rel}"));
                            }
                        }
                        Ok(())
                    })
                    .await
                    .map_err(|e| e.to_string())?
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        out
    });
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} of {NODES} nodes failed: {errors:?}",
        errors.len()
    );
    let fd_peak = fd_peak.load(Ordering::Relaxed);
    let peak = reg.peak_rss_kib();
    // The nodes stop (their FUSE mounts go with their managers); the registry's descriptors
    // come back once their connections close.
    let mut td_peaks = Vec::new();
    for (td, guard) in nodes.drain(..) {
        td_peaks.push(peak_rss_kib(td.pid()));
        drop(td);
        drop(guard);
    }
    let fd_after = testkit::wait_for(
        "registry descriptors released",
        Duration::from_secs(60),
        || {
            let n = fd_count(pid);
            (n <= fd0 + 4).then_some(n)
        },
    );
    eprintln!(
        "hostile 16-nodes: {:.1} s; registry fds {fd0} -> peak {fd_peak} -> {fd_after}; \
         registry VmHWM {rss0} KiB -> {peak} KiB; teleportd VmHWM max {} KiB",
        took.as_secs_f64(),
        td_peaks.iter().max().copied().unwrap_or(0)
    );
    // A handful of connections per node (resolve, manifest, config, indexes, data ranges).
    assert!(
        fd_peak <= fd0 + NODES * 16,
        "registry held {fd_peak} descriptors for {NODES} nodes (baseline {fd0})"
    );
    // 16 nodes × 5 MiB of layer data served: streamed, never held per request.
    assert!(
        peak <= rss0 + 64 * 1024,
        "registry peak RSS {peak} KiB (was {rss0} KiB) serving {NODES} nodes"
    );
    assert!(
        testkit::fuse_mounts_under(dir).is_empty(),
        "FUSE mounts left: {:?}",
        testkit::fuse_mounts_under(dir)
    );
}
