//! `testbed compare --peers soci` end to end at a small scale: SOCI nodes (SOCI's default
//! `--min-layer-size` and 0) run beside the standard node and a teleporter on the same
//! registry, link and counters; each start reaches ready with its working-set hash checked.
//! The `soci-min0` row fetched layer bytes lazily (ranged blob reads) and its zTOCs, and less
//! than the whole image; the index builds are reported apart.
//!
//! Needs `out/peers/soci` (`bash scripts/get-peers.sh soci`); with `TB_PEERS=1` the test runs
//! that script itself, otherwise it is skipped with a message.

// Test code panics on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use testbed::bed::{StartProfile, Variant};
use testbed::compare::{compare, CompareOptions};
use testbed::node::MountMode;
use testbed::peers::{soci, Peer};

fn soci_dir() -> Option<PathBuf> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = ws.join(soci::PEER_DIR);
    if !dir.join("usr/bin").is_dir() && std::env::var("TB_PEERS").as_deref() == Ok("1") {
        let st = std::process::Command::new("bash")
            .arg(ws.join("scripts/get-peers.sh"))
            .arg("soci")
            .status()
            .unwrap();
        assert!(st.success(), "scripts/get-peers.sh soci failed");
    }
    if dir.join("usr/bin").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: {} missing (bash scripts/get-peers.sh soci, or TB_PEERS=1)",
            dir.display()
        );
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_measures_soci_beside_ours() {
    if !common::prerequisites() {
        return;
    }
    let Some(dir) = soci_dir() else {
        return;
    };
    common::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let mut o = CompareOptions::new(tmp.path().join("out"));
    o.scale = 0.02;
    o.reps = 1;
    o.warm_runs = 1;
    o.variants = vec![Variant::Squashed];
    o.mount_modes = vec![MountMode::Merged];
    o.start_profiles = vec![StartProfile::Off];
    o.work_dir = Some(tmp.path().join("work"));
    o.teleportd_bin = Some(common::teleportd());
    o.interactive = false;
    o.peers = vec![Peer::Soci];
    o.soci_dir = Some(dir);
    let report = compare(&o).await.unwrap();

    let img = &report.images[0];
    let names: Vec<&str> = report.rows.iter().map(|r| r.node_name.as_str()).collect();
    assert_eq!(
        names,
        ["shuttle", "teleporter-merged-off", "soci", "soci-min0"]
    );
    // Every start reached ready with its own working set's hash (compare checks it; here the
    // samples say so), SOCI's too.
    for s in &report.samples {
        assert!(!s.ready_hash.is_empty(), "{s:?}");
        assert!(s.ready_seconds > 0.0, "{s:?}");
    }
    let peer = |n: &str| img.peers.iter().find(|p| p.node == n).unwrap();
    // min-layer-size 0 indexes the one layer; the index was built and timed apart.
    let min0 = peer("soci-min0");
    assert_eq!(min0.min_layer_size, 0);
    assert_eq!(min0.ztocs, 1, "{min0:?}");
    assert!(
        min0.ztoc_bytes > 0 && min0.index_build_seconds > 0.0,
        "{min0:?}"
    );
    assert!(!min0.index_digest.is_empty());
    // SOCI's default 10 MiB: the scaled layer is smaller, so it has no zTOC.
    let dflt = peer("soci");
    assert_eq!(dflt.min_layer_size, 10 << 20);
    assert!(
        img.compressed_bytes < 10 << 20,
        "fixture grew: {}",
        img.compressed_bytes
    );
    assert_eq!(dflt.ztocs, 0, "{dflt:?}");

    let row = |n: &str| report.rows.iter().find(|r| r.node_name == n).unwrap();
    let lazy = row("soci-min0");
    assert_eq!(
        (lazy.node.as_str(), lazy.mount_mode.as_str()),
        ("soci", "soci")
    );
    assert!(lazy.speedup_ready.is_some());
    assert_eq!(
        lazy.artifact_bytes_fetched, min0.ztoc_bytes,
        "zTOCs fetched: {lazy:?}"
    );
    assert!(lazy.blob_range_requests > 0, "no ranged reads: {lazy:?}");
    assert!(lazy.layer_blob_bytes_downloaded > 0, "{lazy:?}");
    let whole = row("soci");
    assert_eq!(whole.artifact_bytes_fetched, 0, "{whole:?}");
    assert_eq!(
        whole.layer_blob_bytes_downloaded, img.compressed_bytes,
        "{whole:?}"
    );
    // The standard node's bytes are unchanged by the peers beside it.
    assert_eq!(
        row("shuttle").layer_blob_bytes_downloaded,
        img.compressed_bytes
    );
    assert_eq!(row("teleporter-merged-off").layer_blob_bytes_downloaded, 0);
    assert!(
        report.versions.soci.contains("0.4"),
        "{:?}",
        report.versions.soci
    );

    let md = std::fs::read_to_string(tmp.path().join("out/report.md")).unwrap();
    assert!(md.contains("| squashed | soci-min0 | 0 |"), "{md}");
    assert!(md.contains("zTOCs |"), "{md}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("out/report.json")).unwrap())
            .unwrap();
    assert_eq!(json["schema_version"], testbed::report::SCHEMA_VERSION);
    assert_eq!(json["images"][0]["peers"].as_array().unwrap().len(), 2);
    assert!(
        common::mounts_under(tmp.path()).is_empty(),
        "{:?}",
        common::mounts_under(tmp.path())
    );
    assert!(testkit::processes_mentioning(tmp.path()).is_empty());
}
