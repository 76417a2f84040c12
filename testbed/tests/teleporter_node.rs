//! A teleporter node: containerd with teleportd as its proxy snapshotter. With a repository
//! that is not teleport-enabled, teleportd must fall back to a standard download and the pod
//! still runs with the right bytes (issue 3's fallback; the testbed's wiring of the node).

mod common;

use std::time::Duration;
use testbed::cri::PodSpec;
use testbed::events::Events;
use testbed::metrics;
use testbed::node::{MountMode, Node, NodeConfig, NodeKind};
use testbed::pod::{run_pod, RunOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teleporter_node_runs_pod_through_teleportd() {
    if !common::prerequisites() {
        return;
    }
    common::init_tracing();
    let bin = common::teleportd();
    let w = common::world("redis", 0.05, false, "plain", false).await;

    let dir = w.tmp.path().join("teleporter");
    let kind = NodeKind::Teleporter {
        mount_mode: MountMode::PerLayer,
        registry_url: w.registry.url(),
        teleportd_bin: bin,
        extra_args: Vec::new(),
    };
    let mut cfg = NodeConfig::new("teleporter", &dir, kind);
    cfg.sandbox_image = w.pause_ref.clone();
    cfg.registries = vec![w.host.clone()];
    let mut node = Node::start(cfg).await.unwrap();
    let tpid = node.teleportd_pid().unwrap();
    node.cri().pull_image(&w.pause_ref).await.unwrap();

    let http = reqwest::Client::new();
    let murl = format!("{}/metrics", w.registry.url());
    let before = metrics::scrape(&http, &murl).await.unwrap();
    let ws = w.info.working_set.clone().unwrap();
    let spec = PodSpec {
        name: "app".into(),
        image: w.image_ref.clone(),
        env: vec![("TB_WORKING_SET".into(), ws.fraction.to_string())],
        log_dir: node.paths().pods.join("app"),
        cgroup_parent: node.cgroup_parent(),
    };
    let opts = RunOptions {
        expected_hash: Some(ws.hash.clone()),
        ready_timeout: Duration::from_secs(120),
        teardown: true,
    };
    let t = run_pod(&node, &spec, &opts, &Events::new("teleporter", "app", None))
        .await
        .unwrap();
    assert_eq!(t.ready.hash, ws.hash);
    let served = metrics::Served::between(&before, &metrics::scrape(&http, &murl).await.unwrap());
    // Not teleport-enabled: the standard download happened.
    assert_eq!(served.layer_blob, w.info.total_compressed, "{served:?}");

    node.recycle().await.unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{tpid}")).exists(),
        "old teleportd survived recycle"
    );
    assert!(
        node.cri().list_images().await.unwrap().is_empty(),
        "recycle left images"
    );
    node.destroy().await.unwrap();
    assert!(common::mounts_under(&dir).is_empty());
    assert!(common::processes_mentioning(&dir).is_empty());
    w.registry.shutdown().await.unwrap();
}
