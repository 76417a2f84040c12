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
    o.warm_runs = 1;
    o.keep_traces = true;
    let report = compare(&o).await.unwrap();

    // Every run reached ready with its own expected hash (compare fails otherwise): the cold
    // runs read a seeded working set that differs from the learning run's (overlap 80%).
    for s in &report.samples {
        let img = report
            .images
            .iter()
            .find(|i| i.variant == s.variant)
            .unwrap();
        if s.warm || s.first_start {
            assert_eq!(s.seed, 0, "{s:?}");
            assert_eq!(s.ready_hash, img.working_set_hash, "{s:?}");
        } else {
            assert_ne!(s.seed, 0, "{s:?}");
            assert_ne!(
                s.ready_hash, img.working_set_hash,
                "a replayed oracle: {s:?}"
            );
            assert_eq!(s.overlap, 0.8);
        }
    }
    // Per variant: shuttle + (learned, off) per mount mode; the learned ones' first starts.
    let nodes = 1 + 2 * o.mount_modes.len();
    let learners = o.mount_modes.len();
    let rows = 2 * (nodes + learners);
    assert_eq!(report.rows.len(), rows);
    // cold + warm per node, plus each learner's first start.
    assert_eq!(report.samples.len(), 2 * (nodes * 2 + learners));
    // First starts found no start profile; learned cold starts replayed the recorded one; the
    // `off` teleporters never did (teleportd's counters, scraped around each run).
    let profile_layers = |s: &testbed::compare::Sample| -> f64 {
        s.teleportd_metrics
            .iter()
            .filter(|(k, _)| k.starts_with("teleportd_fuse_profile_layers_total"))
            .map(|(_, v)| v)
            .sum()
    };
    for s in report.samples.iter().filter(|s| s.role == "teleporter") {
        // The fuse manager's trace of the run: the app's reads all went through FUSE (a
        // first start has nothing cached before it: some of them missed).
        let t = s
            .trace
            .as_ref()
            .unwrap_or_else(|| panic!("no trace: {s:?}"));
        assert!(t.opens > 0 && t.reads > 0 && t.failed == 0, "{t:?}");
        // --keep-traces: the run's raw trace sums to the sample's, and says where files lie.
        let run = match (s.first_start, s.warm) {
            (true, _) => "first",
            (_, true) => "warm",
            _ => "cold",
        };
        let kept: Vec<_> = std::fs::read_dir(o.out.join("traces"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.starts_with(&format!("{}-{}-{run}", s.variant.as_str(), s.node))
            })
            .collect();
        assert_eq!(kept.len(), 1, "{} {run}: {kept:?}", s.node);
        let page: fuse_mount::trace::Page =
            serde_json::from_slice(&std::fs::read(&kept[0]).unwrap()).unwrap();
        assert_eq!(&fuse_mount::trace::Summary::of(&page.events), t);
        assert!(page
            .events
            .iter()
            .any(|e| e.op == fuse_mount::trace::Op::Open && e.data.is_some()));
        if s.first_start {
            assert!(t.miss_reads > 0 && t.miss_busy_s > 0.0, "{t:?}");
        }
        if s.first_start || s.start_profile == "off" {
            assert_eq!(profile_layers(s), 0.0, "{s:?}");
        } else if !s.warm {
            assert_eq!(s.start_profile, "learned");
            assert!(profile_layers(s) > 0.0, "no profile replayed: {s:?}");
        }
    }
    assert_eq!(
        report.samples.iter().filter(|s| s.first_start).count(),
        2 * learners
    );
    // Node order per rep is recorded.
    assert_eq!(report.settings.node_orders.len(), 2);
    assert_eq!(report.settings.node_orders[0].nodes.len(), nodes);
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
                assert!((row.speedup_ready.unwrap() - 1.0).abs() < 1e-9);
            }
            _ => {
                assert_eq!(row.node, "teleporter");
                assert_eq!(
                    row.layer_blob_bytes_downloaded, 0,
                    "teleporter downloaded blobs: {row:?}"
                );
                assert!(row.expanded_bytes_fetched > 0, "{row:?}");
                assert!(row.speedup_ready.is_some(), "{row:?}");
            }
        }
        assert_eq!(row.warm_ready_seconds.is_some(), !row.first_start);
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
        "speedup_ready",
        "start_profile",
        "phases",
    ] {
        assert!(json["rows"][0].get(key).is_some(), "rows[0] lacks {key}");
    }
    assert_eq!(json["schema_version"], testbed::report::SCHEMA_VERSION);
    assert!(json["git_commit"].as_str().is_some());
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("| Image | Size | Layers |"));
    assert!(std::fs::read_to_string(out.join("report.csv"))
        .unwrap()
        .starts_with("variant,node,"));
    let svg = std::fs::read_to_string(out.join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("</svg>"));
    // Nodes ran on fresh loop-backed ext4 filesystems (the default), all released now.
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("containerd"), "containerd version shown: {md}");
    assert!(md.contains("Where a teleporter's start goes"), "{md}");
    let loops: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("loop/backing_file")).ok())
        .filter(|b| b.contains(&*tmp.path().to_string_lossy()))
        .collect();
    assert!(loops.is_empty(), "loop devices left: {loops:?}");
    // Nothing left behind.
    assert!(common::mounts_under(tmp.path()).is_empty());
    assert!(testkit::processes_mentioning(tmp.path()).is_empty());
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
    o.warm_runs = 1;
    let report = compare(&o).await.unwrap();

    let img = &report.images[0];
    assert_eq!(img.layers, 1);
    assert_eq!(report.samples.len(), 3);
    for s in &report.samples {
        if s.warm {
            assert_eq!(s.ready_hash, img.working_set_hash);
        }
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
    assert!(testkit::processes_mentioning(tmp.path()).is_empty());
}

/// `--image oci:DIR:TAG` of an image built here (a tiny fixture layout, used as any OCI image):
/// imported with skopeo, squashed by the project, pushed, expanded and started on every node
/// with a log probe. Teleport rows download no layer blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_compare_imports_any_oci_layout() {
    if !common::prerequisites() {
        return;
    }
    common::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("img");
    let mut b = fixtures::BuildOptions::new(fixtures::profile::by_name("redis").unwrap());
    b.scale = 0.01;
    b.tag = "t1".into();
    let built = fixtures::build(&b, &layout).unwrap();
    let out = tmp.path().join("out");
    let mut o = CompareOptions::new(&out);
    o.image = Some(format!("oci:{}:t1", layout.display()));
    o.ready = "log:^TB-READY files=".parse().unwrap();
    o.reps = 1;
    o.warm_runs = 1;
    o.mount_modes = vec![MountMode::PerLayer, MountMode::Merged];
    o.start_profiles = vec![testbed::bed::StartProfile::Learned];
    o.variants = vec![Variant::Layered, Variant::Squashed];
    o.work_dir = Some(tmp.path().join("work"));
    o.teleportd_bin = Some(common::teleportd());
    o.interactive = false;
    let report = compare(&o).await.unwrap();

    let layered = &report.images[0];
    let squashed = &report.images[1];
    assert_eq!(layered.layers, built.layers.len());
    assert_eq!(layered.manifest_digest, built.manifest_digest.to_string());
    assert_eq!(squashed.layers, 1);
    assert_eq!(layered.image_bytes, built.total_uncompressed);
    // Shuttle + 2 teleporters + 2 first-start rows, per variant.
    assert_eq!(report.rows.len(), 2 * 5);
    for row in &report.rows {
        let img = if row.variant == Variant::Layered {
            layered
        } else {
            squashed
        };
        if row.mount_mode == "overlayfs" {
            assert_eq!(
                row.layer_blob_bytes_downloaded, img.compressed_bytes,
                "{row:?}"
            );
        } else {
            assert_eq!(row.layer_blob_bytes_downloaded, 0, "{row:?}");
            assert!(row.expanded_bytes_fetched > 0, "{row:?}");
        }
        assert!(row.ready_seconds.is_some());
    }
    assert!(report.settings.ready.starts_with("log:"));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains(&format!("oci:{}:t1", layout.display())), "{md}");
    assert!(common::mounts_under(tmp.path()).is_empty());
    assert!(testkit::processes_mentioning(tmp.path()).is_empty());
}
