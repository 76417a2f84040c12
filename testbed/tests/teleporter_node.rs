//! A teleporter node: containerd with teleportd as its proxy snapshotter. With a repository
//! that is not teleport-enabled, teleportd must fall back to a standard download and the pod
//! still runs with the right bytes (issue 3's fallback; the testbed's wiring of the node).

mod common;

use fuse_mount::manager::pid_alive;
use std::path::PathBuf;
use std::time::Duration;
use testbed::cri::PodSpec;
use testbed::events::Events;
use testbed::metrics;
use testbed::node::{MountMode, Node, NodeConfig, NodeKind};
use testbed::pod::{run_pod, ReadyProbe, RunOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teleporter_node_runs_pod_through_teleportd() {
    if !common::prerequisites() {
        return;
    }
    common::init_tracing();
    let bin = common::teleportd();
    let w = common::world("redis", 0.05, false, "plain", false).await;

    let (dir, mut node) = teleporter(&w, bin).await;
    let tpid = node.teleportd_pid().unwrap();
    node.cri().pull_image(&w.pause_ref).await.unwrap();

    let http = reqwest::Client::new();
    let murl = format!("{}/metrics", w.registry.url());
    let before = metrics::scrape(&http, &murl).await.unwrap();
    run_app(&node, &w, true).await;
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
    assert!(testkit::processes_mentioning(&dir).is_empty());
    w.registry.shutdown().await.unwrap();
}

/// teleportd killed with SIGKILL while its FUSE mounts are in use: the mounts live on in the
/// detached fuse manager, and stopping the node must still leave no mount and no process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_teleportd_leaves_nothing_after_node_stop() {
    if !common::prerequisites() {
        return;
    }
    common::init_tracing();
    let bin = common::teleportd();
    let w = common::world("redis", 0.05, false, "fast", true).await;

    let (dir, node) = teleporter(&w, bin).await;
    let tpid = node.teleportd_pid().unwrap();
    node.cri().pull_image(&w.pause_ref).await.unwrap();
    node.cri().pull_image(&w.image_ref).await.unwrap();
    // Layers are attached on first use: run a pod (left running) so they are mounted.
    run_app(&node, &w, false).await;

    let fuse_mounts = || testkit::fuse_mounts_under(&dir).len();
    assert!(fuse_mounts() > 0, "teleport pull made no FUSE mount");

    // SIGKILL: teleportd gets no chance to clean up.
    let rc = unsafe { libc::kill(tpid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill teleportd");
    let manager_pid: u32 = std::fs::read_to_string(dir.join("teleportd/root/fuse-manager.pid"))
        .expect("fuse manager pid file")
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(manager_pid), "fuse manager died with teleportd");
    assert!(fuse_mounts() > 0, "mounts died with teleportd");

    node.destroy().await.unwrap();
    // A zombie counts as gone: the orphan's new parent (PID 1 here) may never reap it.
    assert!(
        !pid_alive(manager_pid),
        "orphaned fuse manager survived node stop"
    );
    assert_eq!(common::mounts_under(&dir), Vec::<String>::new());
    assert_eq!(testkit::processes_mentioning(&dir), Vec::new());
    w.registry.shutdown().await.unwrap();
}

/// A teleporter node (per-layer mode) for `w`'s registry, with its directory.
#[allow(clippy::unwrap_used)] // test helper: a failure is the test's failure
async fn teleporter(w: &common::World, bin: PathBuf) -> (PathBuf, Node) {
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
    (dir, Node::start(cfg).await.unwrap())
}

/// Runs the fixture's app to ready and checks the hash of what it read.
#[allow(clippy::unwrap_used)] // test helper: a failure is the test's failure
async fn run_app(node: &Node, w: &common::World, teardown: bool) {
    let ws = w.info.working_set.clone().unwrap();
    let spec = PodSpec {
        name: "app".into(),
        image: w.image_ref.clone(),
        env: vec![("TB_WORKING_SET".into(), ws.fraction.to_string())],
        log_dir: node.paths().pods.join("app"),
        cgroup_parent: node.cgroup_parent(),
        command: None,
        args: None,
    };
    let opts = RunOptions {
        expected_hash: Some(ws.hash.clone()),
        ready_timeout: Duration::from_secs(120),
        teardown,
        probe: ReadyProbe::Fixture,
    };
    let t = run_pod(node, &spec, &opts, &Events::new("teleporter", "app", None))
        .await
        .unwrap();
    assert_eq!(t.ready.as_ref().unwrap().hash, ws.hash);
}
