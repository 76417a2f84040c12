//! A real containerd node: starts on its own socket, answers CRI, stops leaving nothing behind.

mod common;

use testbed::node::{Node, NodeConfig, NodeKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_up_answers_cri_and_stops_clean() {
    if !common::prerequisites() {
        return;
    }
    common::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shuttle");
    let mut cfg = NodeConfig::new("shuttle", &dir, NodeKind::Shuttle);
    cfg.sandbox_image = "127.0.0.1:1/pause:none".into();
    // The containerd under test: PATH's, or TB_CONTAINERD_BIN's (e.g. 2.1).
    let want = fuse_mount::containerd_config::Version::detect(&cfg.containerd_bin).unwrap();
    let mut node = Node::start(cfg).await.unwrap();

    let pid = node.containerd_pid().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let v = node.cri().version().await.unwrap();
    assert_eq!(v.runtime_name, "containerd");
    // 1.6 here (Debian 12), 1.7 or 2.x: all speak CRI v1.
    assert_eq!(v.runtime_version.parse().ok(), Some(want), "{v:?}");
    assert_eq!(v.runtime_api_version, "v1");
    let st = node.cri().status().await.unwrap();
    let conds = st.status.unwrap().conditions;
    let runtime_ready = conds.iter().find(|c| c.r#type == "RuntimeReady").unwrap();
    assert!(runtime_ready.status, "{conds:?}");
    assert!(node.cri().list_images().await.unwrap().is_empty());

    node.stop().await.unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "containerd {pid} still running"
    );
    assert!(testkit::processes_mentioning(&dir).is_empty());
    assert!(common::mounts_under(&dir).is_empty());
    node.destroy().await.unwrap();
    assert!(!dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_node_stops_it() {
    if !common::prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dropped");
    let mut cfg = NodeConfig::new("dropped", &dir, NodeKind::Shuttle);
    cfg.sandbox_image = "127.0.0.1:1/pause:none".into();
    let node = Node::start(cfg).await.unwrap();
    let pid = node.containerd_pid().unwrap();
    drop(node);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "containerd {pid} survived drop"
    );
    assert!(testkit::processes_mentioning(&dir).is_empty());
    assert!(common::mounts_under(&dir).is_empty());
}
