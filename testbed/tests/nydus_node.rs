//! A nydus node (containerd + containerd-nydus-grpc, nydusd in FUSE mode) pulls a fixture the
//! bed converted to a nydus image (RAFS v6 blob per layer + bootstrap layer, `nydus-image`)
//! from registry-mock over plain HTTP on loopback, runs it to ready with the working-set hash
//! checked; the registry's /metrics show the data blobs were read lazily (less than their
//! size), and teardown leaves nothing mounted or running under the node's directory.
//!
//! Needs `out/peers/nydus` (`bash scripts/get-peers.sh nydus`); with `TB_PEERS=1` the test runs
//! that script itself, otherwise it is skipped with a message.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use testbed::bed::{self, Variant};
use testbed::cri::PodSpec;
use testbed::events::Events;
use testbed::metrics;
use testbed::peers::nydus::{self, NydusBins, NydusConfig, NydusNode};
use testbed::pod::{run_pod, ReadyProbe, RunOptions};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The nydus binaries, fetched when TB_PEERS=1; `None` (skip) when absent.
#[allow(clippy::unwrap_used)] // test helper: a failure is the test's failure
fn nydus_bins() -> Option<NydusBins> {
    let dir = workspace().join(nydus::PEER_DIR);
    if !dir.exists() && std::env::var("TB_PEERS").as_deref() == Ok("1") {
        let st = std::process::Command::new("bash")
            .arg(workspace().join("scripts/get-peers.sh"))
            .arg("nydus")
            .status()
            .unwrap();
        assert!(st.success(), "scripts/get-peers.sh nydus failed");
    }
    match NydusBins::in_peer_dir(&dir) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("SKIP: {e} (or set TB_PEERS=1)");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::unwrap_used)]
async fn nydus_node_pulls_converted_image_lazily() {
    if !common::prerequisites() {
        return;
    }
    let Some(bins) = nydus_bins() else {
        return;
    };
    common::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("fixtures");
    // Layered: the merge must stack several layers' metadata (whiteouts included).
    let fx = bed::fixture(
        &cache,
        "azure-vote-front",
        0.02,
        Some(Variant::Layered),
        false,
    )
    .await
    .unwrap();
    let pause = bed::fixture(&cache, "pause", 1.0, None, false)
        .await
        .unwrap();
    let registry = bed::start_registry(
        &tmp.path().join("registry"),
        None,
        Duration::ZERO,
        Vec::new(),
    )
    .await
    .unwrap();
    let host = registry.addr().to_string();
    let pause_ref = bed::push(&pause, &host, bed::PAUSE_REPO).await.unwrap();

    // Convert once (timed apart in the bed), push as its own repository.
    let (ni, layout, out, work) = (
        bins.nydus_image.clone(),
        fx.layout.clone(),
        tmp.path().join("nydus-layout"),
        tmp.path().join("nydus-work"),
    );
    let tag = fx.info.tag.clone();
    let conv = {
        let (out, tag) = (out.clone(), tag.clone());
        tokio::task::spawn_blocking(move || nydus::convert(&ni, &layout, &tag, &out, &work))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(conv.blobs, fx.info.layers.len(), "one data blob per layer");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            out.join("blobs/sha256")
                .join(conv.manifest_digest.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), fx.info.layers.len() + 1);
    assert!(layers[..layers.len() - 1].iter().all(|l| {
        l["mediaType"] == nydus::MT_NYDUS_BLOB && l["annotations"][nydus::ANN_NYDUS_BLOB] == "true"
    }));
    assert_eq!(
        layers[layers.len() - 1]["annotations"][nydus::ANN_NYDUS_BOOTSTRAP],
        "true"
    );
    let image_ref = nydus::push(&out, &host, "nydus/avf", &tag).await.unwrap();

    // nydus's default places outside the node: they must not appear because of this node.
    let defaults = [
        "/var/lib/containerd-nydus",
        "/run/containerd-nydus",
        "/etc/nydus",
    ];
    let existed: Vec<bool> = defaults.iter().map(|p| Path::new(p).exists()).collect();
    let dir = tmp.path().join("nydus-node");
    let mut nc = NydusConfig::new("nydus", &dir, bins, &host);
    nc.sandbox_image = pause_ref.clone();
    // Prefetch off: the bytes counted are the start's own.
    nc.prefetch = false;
    let node = NydusNode::start(nc).await.unwrap();
    node.node().cri().pull_image(&pause_ref).await.unwrap();

    let murl = format!("{}/metrics", registry.url());
    let http = reqwest::Client::new();
    let before = metrics::scrape(&http, &murl).await.unwrap();
    node.node().cri().pull_image(&image_ref).await.unwrap();
    let after_pull = metrics::scrape(&http, &murl).await.unwrap();
    let pulled = metrics::Served::between(&before, &after_pull).layer_blob;
    // The pull fetched the bootstrap layer only: the data blobs are skipped.
    assert_eq!(
        pulled, conv.bootstrap_bytes,
        "pull fetched more than the bootstrap layer"
    );

    let ws = fx.info.working_set.clone().unwrap();
    let spec = PodSpec {
        name: "app".into(),
        image: image_ref.clone(),
        env: vec![("TB_WORKING_SET".into(), ws.fraction.to_string())],
        log_dir: node.node().paths().pods.join("app"),
        cgroup_parent: node.node().cgroup_parent(),
        command: None,
        args: None,
    };
    let ro = RunOptions {
        expected_hash: Some(ws.hash.clone()),
        ready_timeout: Duration::from_secs(180),
        teardown: true,
        probe: ReadyProbe::Fixture,
    };
    let t = run_pod(node.node(), &spec, &ro, &Events::new("nydus", "app", None)).await;
    let log = std::fs::read_to_string(node.log()).unwrap_or_default();
    let tail: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("zombie"))
        .rev()
        .take(40)
        .collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let t = t.unwrap_or_else(|e| {
        panic!(
            "pod: {e}\nsnapshotter log:\n{}\nnydusd:{}",
            tail.join("\n"),
            node.nydusd_log_tails()
        )
    });
    assert_eq!(
        t.ready.as_ref().map(|r| r.hash.as_str()),
        Some(ws.hash.as_str())
    );
    assert!(
        !node.nydusd_pids().is_empty(),
        "no nydusd served the container"
    );
    let after = metrics::scrape(&http, &murl).await.unwrap();
    let lazy = metrics::Served::between(&after_pull, &after).layer_blob;
    eprintln!(
        "nydus: pull {pulled} B (bootstrap), start {lazy} B of {} B of blobs ({} compressed OCI)",
        conv.blob_bytes, fx.info.total_compressed
    );
    assert!(lazy > 0, "nydusd fetched nothing");
    assert!(
        lazy < conv.blob_bytes,
        "nydusd downloaded the blobs whole: {lazy} of {}",
        conv.blob_bytes
    );

    // Recycle: new processes, nothing learned kept, the old nydusd gone.
    let old = (
        node.snapshotter_pid().unwrap(),
        node.node().containerd_pid().unwrap(),
    );
    let mut node = node;
    node.recycle().await.unwrap();
    for pid in [old.0, old.1] {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} survived recycle"
        );
    }
    assert!(node.nydusd_pids().is_empty(), "nydusd survived recycle");
    assert!(
        node.node().cri().list_images().await.unwrap().is_empty(),
        "recycle kept images"
    );

    node.destroy().await.unwrap();
    let exist: Vec<bool> = defaults.iter().map(|p| Path::new(p).exists()).collect();
    assert_eq!(exist, existed, "nydus wrote outside its root: {defaults:?}");
    assert!(common::mounts_under(&dir).is_empty());
    assert!(testkit::processes_mentioning(&dir).is_empty());
    assert!(common::mounts_under(tmp.path()).is_empty());
    registry.shutdown().await.unwrap();
}
