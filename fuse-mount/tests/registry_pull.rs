//! Standard (fallback) path against a real registry: skopeo pushes the test image to
//! registry-mock (repository not teleport-enabled), containerd pulls it over HTTP with teleportd
//! as snapshotter, and a container from it sees the layered files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use registry_mock::metrics::ServedKind;
use testkit::{mounts_under, Containerd, Teleportd, TestDir};

#[test]
fn pull_from_registry_unpacks_through_teleportd() {
    if !testkit::prerequisites() {
        return;
    }
    let t = TestDir::new();
    let dir = t.path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = rt
        .block_on(registry_mock::start(registry_mock::Config::new(
            dir.join("reg"),
        )))
        .unwrap();
    let image = format!("{}/e2e/app:1", reg.addr());

    let archive = dir.join("image.tar");
    testkit::test_image(&archive, "unused.test/app:1");
    testkit::registry::skopeo_push(&archive, &image);

    let socket = dir.join("teleportd.sock");
    let td = Teleportd::start(&dir.join("teleportd"), &socket, &dir.join("teleportd.log"));
    let ctrd = Containerd::start(&dir.join("ctrd"), &socket);
    let before = reg.metrics().served(ServedKind::LayerBlob);
    ctrd.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "teleportd",
        &image,
    ]);
    let layer_bytes = reg.metrics().served(ServedKind::LayerBlob) - before;
    assert!(
        layer_bytes > 500_000,
        "layers were downloaded (busybox): {layer_bytes} bytes"
    );

    let snaps = ctrd.ctr(&["snapshots", "--snapshotter", "teleportd", "ls"]);
    assert_eq!(
        snaps.lines().filter(|l| l.contains("Committed")).count(),
        2,
        "{snaps}"
    );
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "teleportd",
        &image,
        "pull-c1",
        "/bin/busybox",
        "sh",
        "-c",
        "cat /etc/hello.txt; ls /data; cat /data/new.txt",
    ]);
    assert_eq!(
        out.lines().map(str::trim).collect::<Vec<_>>(),
        [
            "hello from layer two",
            "keep.txt",
            "new.txt",
            "opaque",
            "added in layer two"
        ],
        "{out}"
    );

    ctrd.ctr(&["images", "rm", "--sync", &image]);
    testkit::wait_for("snapshots GC", Duration::from_secs(30), || {
        let s = ctrd.ctr(&["snapshots", "--snapshotter", "teleportd", "ls"]);
        (s.lines().count() == 1).then_some(())
    });
    drop(ctrd);
    drop(td);
    rt.block_on(reg.shutdown()).unwrap();
    assert!(
        mounts_under(dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(dir)
    );
}
