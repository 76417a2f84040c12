//! Issue 4's end-to-end test: a scaled compare (both variants, both nodes, both mount modes)
//! for real, asserting on what it measured. No assertion on absolute times.

mod common;

use testbed::bed::Variant;
use testbed::compare::{compare, CompareOptions};
use testbed::node::MountMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaled_compare_measures_both_nodes() {
    if !common::prerequisites() {
        return;
    }
    common::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let mut o = CompareOptions::new(tmp.path().join("out"));
    o.scale = 0.01;
    o.reps = 1;
    o.mount_modes = vec![MountMode::PerLayer, MountMode::Merged];
    o.variants = vec![Variant::Layered, Variant::Squashed];
    o.work_dir = Some(tmp.path().join("work"));
    o.teleportd_bin = Some(common::teleportd());
    o.interactive = false;
    let report = compare(&o).await.unwrap();

    // Every run reached ready with the expected hash (compare fails otherwise); check anyway.
    for s in &report.samples {
        let img = report
            .images
            .iter()
            .find(|i| i.variant == s.variant)
            .unwrap();
        assert_eq!(s.ready_hash, img.working_set_hash, "{s:?}");
    }
    // 2 variants × (shuttle + one teleporter per mount mode) × (1 cold + 1 warm), plus each
    // variant's first start.
    let rows = 2 * (1 + o.mount_modes.len());
    assert_eq!(report.rows.len(), rows);
    assert_eq!(report.samples.len(), rows * 2 + 2);
    // The first start found no start profile; every later cold teleporter start replayed the
    // one it recorded (teleportd's counters, scraped around each run).
    let profile_layers = |s: &testbed::compare::Sample| -> f64 {
        s.teleportd_metrics
            .iter()
            .filter(|(k, _)| k.starts_with("teleportd_fuse_profile_layers_total"))
            .map(|(_, v)| v)
            .sum()
    };
    for s in report.samples.iter().filter(|s| s.role == "teleporter") {
        if s.first_start {
            assert_eq!(profile_layers(s), 0.0, "{s:?}");
        } else if !s.warm {
            assert!(profile_layers(s) > 0.0, "no profile replayed: {s:?}");
        }
    }
    assert_eq!(report.samples.iter().filter(|s| s.first_start).count(), 2);
    for row in &report.rows {
        let img = report
            .images
            .iter()
            .find(|i| i.variant == row.variant)
            .unwrap();
        match row.mount_mode.as_str() {
            "overlayfs" => {
                assert_eq!(row.node, "shuttle");
                assert_eq!(
                    row.layer_blob_bytes_downloaded, img.compressed_bytes,
                    "{row:?}"
                );
                assert_eq!(row.expanded_bytes_fetched, 0, "{row:?}");
            }
            _ => {
                assert_eq!(row.node, "teleporter");
                assert_eq!(
                    row.layer_blob_bytes_downloaded, 0,
                    "teleporter downloaded blobs: {row:?}"
                );
                assert!(row.expanded_bytes_fetched > 0, "{row:?}");
            }
        }
        assert!(row.warm_ready_seconds.is_some());
    }
    let out = tmp.path().join("out");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), rows);
    for key in [
        "variant",
        "layers",
        "image_bytes",
        "node",
        "mount_mode",
        "pull_seconds",
        "ready_seconds",
        "warm_ready_seconds",
        "layer_blob_bytes_downloaded",
        "expanded_bytes_fetched",
        "samples",
    ] {
        assert!(json["rows"][0].get(key).is_some(), "rows[0] lacks {key}");
    }
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("| Size | Layers |"));
    let svg = std::fs::read_to_string(out.join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("</svg>"));
    // Nothing left behind.
    assert!(common::mounts_under(tmp.path()).is_empty());
    assert!(common::processes_mentioning(tmp.path()).is_empty());
}

/// The plan, metrics and report machinery on the shuttle alone (runs without teleportd's
/// remote path): cold runs download every blob, the warm run downloads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuttle_compare_writes_reports() {
    if !common::prerequisites() {
        return;
    }
    common::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut o = CompareOptions::new(&out);
    o.scale = 0.01;
    o.reps = 2;
    o.mount_modes = Vec::new();
    o.variants = vec![Variant::Squashed];
    o.work_dir = Some(tmp.path().join("work"));
    o.interactive = false;
    let report = compare(&o).await.unwrap();

    let img = &report.images[0];
    assert_eq!(img.layers, 1);
    assert_eq!(report.samples.len(), 3);
    for s in &report.samples {
        assert_eq!(s.ready_hash, img.working_set_hash);
        if s.warm {
            assert!(s.pull_seconds.is_none());
            assert_eq!(s.served.layer_blob, 0, "{s:?}");
        } else {
            assert!(s.pull_seconds.is_some());
            assert_eq!(s.served.layer_blob, img.compressed_bytes, "{s:?}");
        }
    }
    let row = &report.rows[0];
    assert_eq!(
        (row.node.as_str(), row.mount_mode.as_str(), row.samples),
        ("shuttle", "overlayfs", 2)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        json["rows"][0]["layer_blob_bytes_downloaded"],
        img.compressed_bytes
    );
    assert_eq!(json["samples"].as_array().unwrap().len(), 3);
    assert!(json["machine"]["cores"].as_u64().unwrap() >= 1);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("published (Azure, 2021) — for comparison only"));
    assert!(std::fs::read_to_string(out.join("report.svg"))
        .unwrap()
        .contains("<rect"));
    assert!(common::mounts_under(tmp.path()).is_empty());
    assert!(common::processes_mentioning(tmp.path()).is_empty());
}
