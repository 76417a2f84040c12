//! `testbed compare --fanout N` for real at small scale: every kind's pool of N nodes started
//! together, each node's sample recorded and checked, the pool figures computed from them, the
//! registry's bytes per pool, and nothing left mounted or running. No assertion on absolute
//! times.

mod common;

use testbed::bed::{StartProfile, Variant};
use testbed::compare::{compare, CompareOptions, Sample};
use testbed::node::MountMode;

/// Nearest-rank percentile, written out here apart from the report's code.
fn nearest_rank(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let k = (p * v.len() as f64).ceil() as usize;
    v[k.max(1) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_starts_each_kind_as_a_pool() {
    if !common::prerequisites() {
        return;
    }
    common::init_tracing();
    const N: usize = 3;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut o = CompareOptions::new(&out);
    o.scale = 0.01;
    o.reps = 1;
    o.warm_runs = 0;
    o.fanout = N;
    o.mount_modes = vec![MountMode::Merged];
    o.start_profiles = vec![StartProfile::Learned, StartProfile::Off];
    o.variants = vec![Variant::Squashed];
    o.work_dir = Some(tmp.path().join("work"));
    o.teleportd_bin = Some(common::teleportd());
    o.interactive = false;
    o.keep_traces = true;
    let report = compare(&o).await.unwrap();

    let kinds = ["shuttle", "teleporter-merged", "teleporter-merged-off"];
    let img = &report.images[0];
    // The single-node rows are as without pools: one cold run per kind, plus the first start.
    assert_eq!(report.rows.len(), kinds.len() + 1);
    assert!(
        report.rows.iter().all(|r| r.samples == 1),
        "{:?}",
        report.rows
    );
    assert_eq!(report.settings.fanout, N);
    assert_eq!(report.settings.pool_orders.len(), 1);
    assert_eq!(report.pools.len(), kinds.len());

    for kind in kinds {
        let pool = report.pools.iter().find(|p| p.node == kind).unwrap();
        assert_eq!(pool.size, N);
        let members: Vec<&Sample> = report
            .samples
            .iter()
            .filter(|s| s.pool.is_some_and(|t| t.pool == pool.id))
            .collect();
        // Every node of the pool has its sample, each reached ready with the rep's working set
        // (compare checks the hash; a pool node reads what the single node's rep read).
        let mut idx: Vec<usize> = members.iter().map(|s| s.pool.unwrap().node_index).collect();
        idx.sort_unstable();
        assert_eq!(idx, (0..N).collect::<Vec<_>>(), "{kind}");
        let single = report
            .samples
            .iter()
            .find(|s| s.node == kind && s.pool.is_none() && !s.first_start && !s.warm)
            .unwrap();
        for s in &members {
            assert_eq!(s.node, kind);
            assert_eq!(s.pool.unwrap().size, N);
            assert_eq!(s.seed, single.seed, "{s:?}");
            assert_eq!(s.ready_hash, single.ready_hash, "{s:?}");
            assert!(s.pull_seconds.is_some(), "a cold pull: {s:?}");
            // Each teleporter of the pool has its own fuse manager trace: the app's reads
            // went through FUSE on that node.
            if s.role == "teleporter" {
                let t = s
                    .trace
                    .as_ref()
                    .unwrap_or_else(|| panic!("no trace: {s:?}"));
                assert!(t.opens > 0 && t.reads > 0 && t.failed == 0, "{t:?}");
                // --keep-traces keeps each pool node's raw trace too, summing to its sample's.
                let p = s.pool.unwrap();
                let kept = out.join("traces").join(format!(
                    "squashed-{kind}-pool{}-rep0-node{}.json",
                    p.pool, p.node_index
                ));
                let page: fuse_mount::trace::Page =
                    serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
                assert_eq!(&fuse_mount::trace::Summary::of(&page.events), t);
            }
        }
        // Released together: the recorded release instants within 250 ms of each other, and
        // every node released before any other was ready (they ran at the same time).
        let released: Vec<f64> = members
            .iter()
            .map(|s| s.pool.unwrap().released_unix_ms)
            .collect();
        let first = released.iter().copied().fold(f64::INFINITY, f64::min);
        let last = released.iter().copied().fold(0.0, f64::max);
        assert!(last - first < 250.0, "{kind}: releases {released:?}");
        let first_ready = members
            .iter()
            .map(|s| s.pool.unwrap().released_unix_ms + s.ready_seconds * 1e3)
            .fold(f64::INFINITY, f64::min);
        assert!(last < first_ready, "{kind}: not concurrent");
        assert!(pool.release_spread_ms < 250.0, "{pool:?}");
        assert!(
            pool.wall_seconds >= members.iter().map(|s| s.ready_seconds).fold(0.0, f64::max) - 0.01
        );
        // The registry served the pool: the shuttle's nodes each downloaded every layer; the
        // teleporters no blob, only expanded data.
        if kind == "shuttle" {
            assert_eq!(
                pool.served.layer_blob,
                N as u64 * img.compressed_bytes,
                "{pool:?}"
            );
        } else {
            assert_eq!(pool.served.layer_blob, 0, "{pool:?}");
            assert!(
                pool.served.expanded() > pool.served.expanded_index,
                "{pool:?}"
            );
        }
        // The registry's threads are part of the process: never more CPU than all of it.
        assert!(
            pool.registry_cpu_seconds <= pool.testbed_cpu_seconds + 0.05,
            "{pool:?}"
        );

        // The pool row: p50/p95 of these very samples, against the single node's ready.
        let row = report.pool_rows.iter().find(|r| r.node == kind).unwrap();
        let ready: Vec<f64> = members.iter().map(|s| s.ready_seconds).collect();
        assert_eq!(row.samples, N);
        assert_eq!(row.ready.p50, nearest_rank(&ready, 0.5), "{row:?}");
        assert_eq!(row.ready.p95, nearest_rank(&ready, 0.95), "{row:?}");
        let pulls: Vec<f64> = members.iter().filter_map(|s| s.pull_seconds).collect();
        assert_eq!(row.pull.p95, nearest_rank(&pulls, 0.95), "{row:?}");
        assert_eq!(row.single_ready, Some(single.ready_seconds));
        assert_eq!(
            row.p95_over_single,
            Some(row.ready.p95 / single.ready_seconds)
        );
        let s = &pool.served;
        assert_eq!(
            row.registry_bytes,
            s.layer_blob + s.config_blob + s.manifest + s.expanded() + s.artifact_blob
        );
    }
    assert!(
        report
            .pools
            .iter()
            .map(|p| p.registry_cpu_seconds)
            .sum::<f64>()
            > 0.0,
        "no registry CPU time measured: {:?}",
        report.pools
    );

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains(&format!("## Pool: {N} nodes of a kind started at once")),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["schema_version"], testbed::report::SCHEMA_VERSION);
    assert_eq!(json["pool_rows"].as_array().unwrap().len(), kinds.len());
    assert!(json["processes"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a.as_str().is_some_and(|a| a.contains("tb-registry"))));
    // Nothing left: no mount, no process, no pool node directory, no loop device.
    assert!(common::mounts_under(tmp.path()).is_empty());
    assert!(testkit::processes_mentioning(tmp.path()).is_empty());
    let nodes_dir = tmp.path().join("work/nodes");
    let left: Vec<_> = std::fs::read_dir(&nodes_dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| !n.to_string_lossy().starts_with('p')),
        "pool node dirs left: {left:?}"
    );
    let loops: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("loop/backing_file")).ok())
        .filter(|b| b.contains(&*tmp.path().to_string_lossy()))
        .collect();
    assert!(loops.is_empty(), "loop devices left: {loops:?}");
}
