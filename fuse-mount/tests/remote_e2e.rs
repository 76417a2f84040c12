//! The remote path end to end: a teleport-enabled repository in registry-mock, a CRI PullImage
//! through a containerd whose snapshotter is teleportd with `--registry`: no layer
//! blob is downloaded, layers are FUSE-mounted (per-layer mode), a container runs on them,
//! teleportd restarts and re-mounts, image removal unmounts. Needs root, FUSE, containerd.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fuse_mount::labels::LABEL_REMOTE;
use node_api::cri::{
    image_service_client::ImageServiceClient, ImageSpec, PullImageRequest, RemoveImageRequest,
};
use node_api::snapshots::{snapshots_client::SnapshotsClient, Kind, ListSnapshotsRequest};
use registry_mock::metrics::ServedKind;
use testkit::{mounts_under, Containerd, Teleportd, TestDir};

async fn remote_committed(socket: &std::path::Path) -> usize {
    let ch = node_api::connect(socket).await.unwrap();
    let mut s = SnapshotsClient::new(ch)
        .list(ListSnapshotsRequest {
            snapshotter: String::new(),
            filters: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.message().await.unwrap() {
        n += m
            .info
            .iter()
            .filter(|i| {
                i.kind == Kind::Committed as i32
                    && i.labels.get(LABEL_REMOTE).is_some_and(|v| v == "true")
            })
            .count();
    }
    n
}

fn fuse_mounts(dir: &std::path::Path) -> usize {
    testkit::fuse_mounts_under(dir).len()
}

fn run(ctrd: &Containerd, image: &str, id: &str) -> String {
    ctrd.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "teleportd",
        image,
        id,
        "/bin/busybox",
        "sh",
        "-c",
        testkit::TREE_CMD,
    ])
}

#[test]
fn per_layer_mode() {
    remote_pull_run_restart_remove("per-layer");
}

#[test]
fn merged_mode() {
    remote_pull_run_restart_remove("merged");
}

/// CRI pull of a teleport image: no layer blob downloaded, layers FUSE-mounted (one mount per
/// layer, or one merged mount per image when a container needs it), container view identical
/// to a standard pull's.
fn remote_pull_run_restart_remove(mode: &str) {
    if !testkit::prerequisites() {
        return;
    }
    let t = TestDir::new();
    let dir = t.path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = registry_mock::Config::new(dir.join("reg"));
    cfg.teleport_repos = vec!["tele/app".into()];
    let reg = rt.block_on(registry_mock::start(cfg)).unwrap();
    let image = format!("{}/tele/app:1", reg.addr());
    let archive = dir.join("image.tar");
    testkit::test_image(&archive, "unused.test/app:1");
    testkit::registry::skopeo_push(&archive, &image);

    let socket = dir.join("teleportd.sock");
    let root = dir.join("teleportd");
    let args = [
        "--mount-mode",
        mode,
        "--registry",
        &reg.url(),
        "--cache-dir",
    ];
    let cache = dir.join("cache");
    // A free port for /metrics (released just before teleportd binds it).
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut targs: Vec<&str> = args.to_vec();
    targs.extend([cache.to_str().unwrap(), "--metrics-addr", &metrics_addr]);
    let log = dir.join("teleportd.log");
    let mut td = Teleportd::start_with(&root, &socket, &log, &targs);
    let mut ctrd =
        Containerd::start_with(&dir.join("ctrd"), &socket, Some(&reg.addr().to_string()));
    ctrd.namespace = "k8s.io".into();

    let blobs_before = reg.metrics().served(ServedKind::LayerBlob);
    rt.block_on(async {
        let ch = node_api::connect(&ctrd.address).await.unwrap();
        ImageServiceClient::new(ch)
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("pull: {e}\n{}", testkit::tail(&td.log_text(), 30)));
    });
    assert_eq!(
        reg.metrics().served(ServedKind::LayerBlob),
        blobs_before,
        "no layer blob downloaded"
    );
    assert_eq!(rt.block_on(remote_committed(&socket)), 2);
    // Remote layers are attached on first use: a pull mounts nothing; a container mounts the
    // image's two layers (per-layer) or one merged tree.
    let (after_pull, after_run) = if mode == "merged" { (0, 1) } else { (0, 2) };
    assert_eq!(fuse_mounts(dir), after_pull, "FUSE mounts after the pull");

    // The pull warms the image ahead of its first start: both layers' indexes and frame tables
    // (the registry offers compressed frames) are fetched in the background (nothing mounted
    // yet), and the container's mounts then fetch neither again.
    testkit::wait_for("indexes fetched ahead", Duration::from_secs(30), || {
        let n = std::fs::read_dir(cache.join("index")).ok()?.count();
        (n == 4).then_some(())
    });
    let index_bytes = reg.metrics().served(ServedKind::ExpandedIndex);
    assert!(index_bytes > 0);
    let out = run(&ctrd, &image, &format!("{mode}-c1"));
    assert_eq!(out, testkit::expected_tree());
    assert_eq!(
        fuse_mounts(dir),
        after_run,
        "FUSE mounts after a container ran"
    );
    assert_eq!(
        reg.metrics().served(ServedKind::ExpandedIndex),
        index_bytes,
        "the mounts used the indexes opened ahead"
    );
    let metrics = rt.block_on(async {
        reqwest::get(format!("http://{metrics_addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let total = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(
        total("teleportd_fuse_mounts "),
        after_run as u64,
        "{metrics}"
    );
    assert!(total("teleportd_fuse_bytes_read_total") > 0, "{metrics}");
    assert!(total("teleportd_fuse_bytes_fetched_total") > 0, "{metrics}");
    // The manager's latency histograms reach teleportd's /metrics.
    assert!(
        total("teleportd_fuse_op_seconds_count{op=\"read\"}") > 0,
        "{metrics}"
    );
    assert!(
        total("teleportd_range_fetch_seconds_count") > 0,
        "{metrics}"
    );
    assert!(total("teleportd_prepare_seconds_count") > 0, "{metrics}");
    // As compressed frames (the registry offers them; the node's default takes them).
    assert!(
        reg.metrics().served(ServedKind::ExpandedFrames) > 0,
        "file bytes fetched lazily"
    );
    assert_eq!(reg.metrics().served(ServedKind::ExpandedData), 0);
    assert!(
        total("teleportd_fuse_frames_fetched_total") > 0,
        "{metrics}"
    );

    // Restart: a clean stop unmounts, a start re-mounts from metadata (per-layer; the merged
    // tree is mounted by the next container).
    assert!(td.stop().success());
    assert_eq!(fuse_mounts(dir), 0, "clean stop unmounts");
    drop(td);
    let td = Teleportd::start_with(&root, &socket, &log, &targs);
    let after_restart = if mode == "merged" { 0 } else { 2 };
    testkit::wait_for("re-mounted layers", Duration::from_secs(30), || {
        (fuse_mounts(dir) == after_restart).then_some(())
    });
    // containerd's proxy client reconnects with backoff.
    testkit::wait_for("containerd to reconnect", Duration::from_secs(30), || {
        let o = ctrd.ctr_raw(&["snapshots", "--snapshotter", "teleportd", "ls"]);
        o.status.success().then_some(())
    });
    let out = run(&ctrd, &image, &format!("{mode}-c2"));
    assert_eq!(out, testkit::expected_tree());
    assert_eq!(
        fuse_mounts(dir),
        after_run,
        "layers re-attached after restart"
    );

    rt.block_on(async {
        let ch = node_api::connect(&ctrd.address).await.unwrap();
        ImageServiceClient::new(ch)
            .remove_image(RemoveImageRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    });
    testkit::wait_for("GC of remote snapshots", Duration::from_secs(30), || {
        (rt.block_on(remote_committed(&socket)) == 0).then_some(())
    });
    assert_eq!(fuse_mounts(dir), 0, "removed snapshots are unmounted");

    // The same image in a repository that is not teleport-enabled: teleportd falls back, and
    // containerd downloads and unpacks it as usual.
    let plain = format!("{}/plain/app:1", reg.addr());
    testkit::registry::skopeo_push(&archive, &plain);
    let before = reg.metrics().served(ServedKind::LayerBlob);
    rt.block_on(async {
        let ch = node_api::connect(&ctrd.address).await.unwrap();
        ImageServiceClient::new(ch)
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: plain.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    });
    assert!(
        reg.metrics().served(ServedKind::LayerBlob) > before,
        "fallback downloads layers"
    );
    assert_eq!(rt.block_on(remote_committed(&socket)), 0);
    assert_eq!(fuse_mounts(dir), 0);
    let out = run(&ctrd, &plain, &format!("{mode}-plain"));
    assert_eq!(out, testkit::expected_tree());
    drop(ctrd);
    drop(td);
    rt.block_on(reg.shutdown()).unwrap();
    assert!(
        mounts_under(dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(dir)
    );
}
