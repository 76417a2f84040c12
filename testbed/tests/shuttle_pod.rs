//! A shuttle node pulls a scaled fixture image from an in-process registry-mock through CRI,
//! runs it, and sees the TB-READY line with the hash image-info.json expects; a recycle wipes
//! the image.

mod common;

use std::time::Duration;
use testbed::cri::PodSpec;
use testbed::events::Events;
use testbed::metrics;
use testbed::node::{Node, NodeConfig, NodeKind};
use testbed::pod::{run_pod, ReadyProbe, RunOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuttle_pulls_runs_and_recycle_wipes() {
    if !common::prerequisites() {
        return;
    }
    common::init_tracing();
    // A scaled azure-vote-front (29 layers) and the pause image in an in-process registry.
    let w = common::world("azure-vote-front", 0.01, false, "vote", false).await;
    let (host, info, image) = (w.host.clone(), w.info.clone(), w.image_ref.clone());
    let registry = &w.registry;

    let dir = w.tmp.path().join("shuttle");
    let mut cfg = NodeConfig::new("shuttle", &dir, NodeKind::Shuttle);
    cfg.sandbox_image = w.pause_ref.clone();
    cfg.registries = vec![host.clone()];
    let mut node = Node::start(cfg).await.unwrap();
    node.cri()
        .pull_image(&format!("{host}/pause:tb"))
        .await
        .unwrap();

    let http = reqwest::Client::new();
    let murl = format!("{}/metrics", registry.url());
    let before = metrics::scrape(&http, &murl).await.unwrap();
    let ws = info.working_set.clone().unwrap();
    let spec = PodSpec {
        name: "vote".into(),
        image: image.clone(),
        env: vec![("TB_WORKING_SET".into(), ws.fraction.to_string())],
        log_dir: node.paths().pods.join("vote"),
        cgroup_parent: node.cgroup_parent(),
        command: None,
        args: None,
    };
    let opts = RunOptions {
        expected_hash: Some(ws.hash.clone()),
        ready_timeout: Duration::from_secs(120),
        teardown: true,
        probe: ReadyProbe::Fixture,
    };
    let t = run_pod(&node, &spec, &opts, &Events::new("shuttle", "vote", None))
        .await
        .unwrap();
    assert!(t.pull_seconds.is_some());
    assert_eq!(t.ready.as_ref().unwrap().hash, ws.hash);
    assert_eq!(t.ready.as_ref().unwrap().files, ws.files);
    let after = metrics::scrape(&http, &murl).await.unwrap();
    let served = metrics::Served::between(&before, &after);
    // A standard pull downloads every layer blob of the image.
    assert_eq!(served.layer_blob, info.total_compressed, "{served:?}");
    assert_eq!(served.expanded(), 0);

    // Warm: image present, no pull.
    let warm = run_pod(&node, &spec, &opts, &Events::new("shuttle", "vote", None))
        .await
        .unwrap();
    assert!(warm.pull_seconds.is_none());

    // A wrong byte anywhere fails the run: expecting another hash must be an error.
    let wrong = RunOptions {
        expected_hash: Some(format!("sha256:{}", "0".repeat(64))),
        ..opts.clone()
    };
    let err = run_pod(&node, &spec, &wrong, &Events::new("shuttle", "vote", None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("wrong content"), "{err}");

    assert!(!node.cri().list_images().await.unwrap().is_empty());
    node.recycle().await.unwrap();
    assert!(
        node.cri().list_images().await.unwrap().is_empty(),
        "recycle left images"
    );

    node.destroy().await.unwrap();
    assert!(common::mounts_under(&dir).is_empty());
    assert!(testkit::processes_mentioning(&dir).is_empty());
    w.registry.shutdown().await.unwrap();
}
