//! `testbed compare --peers nydus` end to end at a small scale: a nydus node runs beside the
//! standard node and a teleporter on the same registry, link and counters; each start reaches
//! ready with its working-set hash checked. The image was converted once (timed apart), the
//! nydus row's pull fetched the bootstrap layer only and its start read the data blobs by
//! ranges, less than their size (prefetch off, so the bytes are the start's own).
//!
//! Needs `out/peers/nydus` (`bash scripts/get-peers.sh nydus`); with `TB_PEERS=1` the test runs
//! that script itself, otherwise it is skipped with a message.

// Test code panics on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use testbed::bed::{StartProfile, Variant};
use testbed::compare::{compare, CompareOptions};
use testbed::node::MountMode;
use testbed::peers::{nydus, Peer};

fn nydus_dir() -> Option<PathBuf> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = ws.join(nydus::PEER_DIR);
    if nydus::NydusBins::in_peer_dir(&dir).is_err()
        && std::env::var("TB_PEERS").as_deref() == Ok("1")
    {
        let st = std::process::Command::new("bash")
            .arg(ws.join("scripts/get-peers.sh"))
            .arg("nydus")
            .status()
            .unwrap();
        assert!(st.success(), "scripts/get-peers.sh nydus failed");
    }
    match nydus::NydusBins::in_peer_dir(&dir) {
        Ok(_) => Some(dir),
        Err(e) => {
            eprintln!("SKIP: {e} (or TB_PEERS=1)");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_measures_nydus_beside_ours() {
    if !common::prerequisites() {
        return;
    }
    let Some(dir) = nydus_dir() else {
        return;
    };
    common::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let mut o = CompareOptions::new(tmp.path().join("out"));
    o.scale = 0.02;
    o.reps = 1;
    o.warm_runs = 1;
    o.variants = vec![Variant::Layered];
    o.mount_modes = vec![MountMode::Merged];
    o.start_profiles = vec![StartProfile::Off];
    o.work_dir = Some(tmp.path().join("work"));
    o.teleportd_bin = Some(common::teleportd());
    o.interactive = false;
    o.peers = vec![Peer::Nydus];
    o.nydus_dir = Some(dir);
    o.nydus_prefetch = false;
    let report = compare(&o).await.unwrap();

    let img = &report.images[0];
    let names: Vec<&str> = report.rows.iter().map(|r| r.node_name.as_str()).collect();
    assert_eq!(names, ["shuttle", "teleporter-merged-off", "nydus"]);
    for s in &report.samples {
        assert!(!s.ready_hash.is_empty(), "{s:?}");
        assert!(s.ready_seconds > 0.0, "{s:?}");
    }
    let conv = img.peers.iter().find(|p| p.node == "nydus").unwrap();
    assert_eq!(conv.nydus_blobs, img.layers, "{conv:?}");
    assert!(conv.index_build_seconds > 0.0 && conv.nydus_bootstrap_bytes > 0);

    let row = |n: &str| report.rows.iter().find(|r| r.node_name == n).unwrap();
    let ny = row("nydus");
    assert_eq!(
        (ny.node.as_str(), ny.mount_mode.as_str()),
        ("nydus", "nydus")
    );
    assert!(ny.speedup_ready.is_some());
    // Bootstrap layer at pull, then ranges of the blobs: more than the bootstrap, less than
    // the bootstrap plus every blob.
    assert!(
        ny.layer_blob_bytes_downloaded > conv.nydus_bootstrap_bytes,
        "{ny:?}"
    );
    assert!(
        ny.layer_blob_bytes_downloaded < conv.nydus_bootstrap_bytes + conv.nydus_blob_bytes,
        "{ny:?} {conv:?}"
    );
    assert!(ny.blob_range_requests > 0, "no ranged reads: {ny:?}");
    assert_eq!(
        row("shuttle").layer_blob_bytes_downloaded,
        img.compressed_bytes
    );
    assert!(
        report.versions.nydus.contains("0.13.4"),
        "{:?}",
        report.versions.nydus
    );

    let md = std::fs::read_to_string(tmp.path().join("out/report.md")).unwrap();
    assert!(md.contains("vs nydus"), "{md}");
    assert!(
        md.contains("prefetch_all`, on in the shipped config) was **off**"),
        "{md}"
    );
    assert!(
        md.contains(&format!("| layered | nydus | {} |", img.layers)),
        "{md}"
    );
    assert!(
        common::mounts_under(tmp.path()).is_empty(),
        "{:?}",
        common::mounts_under(tmp.path())
    );
    assert!(testkit::processes_mentioning(tmp.path()).is_empty());
}
