//! teleportd as the snapshotter of a real containerd 1.6: import+unpack an image, inspect
//! snapshots, run a container from it, restart teleportd, remove the image. Needs root,
//! containerd, runc and busybox-static; fails loudly in CI when they are missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use node_api::snapshots::{snapshots_client::SnapshotsClient, ListSnapshotsRequest};
use testkit::{mounts_under, Containerd, Teleportd, TestDir};

const IMAGE: &str = "teleport.test/e2e/app:1";

/// The backend's own view (teleportd's List over gRPC, not containerd's metadata).
fn backend_snapshots(socket: &std::path::Path) -> BTreeSet<(String, String, i32)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = node_api::connect(socket).await.unwrap();
        let mut c = SnapshotsClient::new(ch);
        let mut s = c
            .list(ListSnapshotsRequest {
                snapshotter: "teleportd".into(),
                filters: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = BTreeSet::new();
        while let Some(r) = s.message().await.unwrap() {
            for i in r.info {
                out.insert((i.name, i.parent, i.kind));
            }
        }
        out
    })
}

fn run_container(ctrd: &Containerd, id: &str) -> String {
    ctrd.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "teleportd",
        IMAGE,
        id,
        "/bin/busybox",
        "sh",
        "-c",
        "cat /etc/hello.txt; ls /data; ls /data/opaque; echo written > /data/new-in-container; cat /data/new-in-container",
    ])
}

fn assert_layered_view(out: &str) {
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        [
            "hello from layer two",
            "keep.txt",
            "new.txt",
            "opaque",
            "fresh.txt",
            "written"
        ],
        "container view: {out}"
    );
}

#[test]
fn containerd_pulls_runs_restarts_and_removes_through_teleportd() {
    if !testkit::prerequisites() {
        return;
    }
    let t = TestDir::new();
    let dir = t.path();
    let socket = dir.join("teleportd.sock");
    let root = dir.join("teleportd");
    let mut td = Teleportd::start(&root, &socket, &dir.join("teleportd.log"));
    let ctrd = Containerd::start(&dir.join("ctrd"), &socket);

    let archive = dir.join("image.tar");
    testkit::test_image(&archive, IMAGE);
    ctrd.ctr(&[
        "images",
        "import",
        "--snapshotter",
        "teleportd",
        archive.to_str().unwrap(),
    ]);

    // Unpacked through teleportd: two committed layers, parent chain intact.
    let snaps = ctrd.ctr(&["snapshots", "--snapshotter", "teleportd", "ls"]);
    let committed: Vec<&str> = snaps.lines().filter(|l| l.contains("Committed")).collect();
    assert_eq!(committed.len(), 2, "snapshots: {snaps}");
    let backend = backend_snapshots(&socket);
    assert_eq!(backend.len(), 2, "backend: {backend:?}");
    let top = backend.iter().find(|(_, p, _)| !p.is_empty()).unwrap();
    let bottom = backend.iter().find(|(_, p, _)| p.is_empty()).unwrap();
    assert_eq!(top.1, bottom.0, "top layer's parent is the bottom layer");

    // containerd's names (chain IDs) → info/usage through the proxy.
    let top_name = committed
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.len() >= 3 && c[1] != "Committed")
        .map(|c| c[0].to_string())
        .unwrap();
    let info = ctrd.ctr(&["snapshots", "--snapshotter", "teleportd", "info", &top_name]);
    assert!(info.contains("\"Kind\": \"Committed\""), "{info}");
    let usage = ctrd.ctr(&["snapshots", "--snapshotter", "teleportd", "usage"]);
    assert!(usage.lines().count() >= 3, "usage: {usage}");

    // The bottom layer's directory holds busybox: unpacked by containerd into our fs dir.
    let out = run_container(&ctrd, "c1");
    assert_layered_view(&out);
    // containerd removes the container's snapshot from the backend in its background GC.
    testkit::wait_for(
        "GC of the container snapshot",
        Duration::from_secs(30),
        || (backend_snapshots(&socket) == backend).then_some(()),
    );
    assert!(
        mounts_under(dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(dir)
    );

    // Restart teleportd on the same root: snapshots survive, containers still run.
    assert!(td.stop().success(), "graceful stop: {}", td.log_text());
    assert!(!socket.exists(), "socket removed on shutdown");
    drop(td);
    let td = Teleportd::start(&root, &socket, &dir.join("teleportd.log"));
    assert_eq!(backend_snapshots(&socket), backend);
    let out = testkit::wait_for("containerd to reconnect", Duration::from_secs(20), || {
        let o = ctrd.ctr_raw(&["snapshots", "--snapshotter", "teleportd", "ls"]);
        o.status
            .success()
            .then(|| String::from_utf8(o.stdout).unwrap())
    });
    assert_eq!(out.lines().filter(|l| l.contains("Committed")).count(), 2);
    assert_layered_view(&run_container(&ctrd, "c2"));
    // Full tree + hashes: the reference the remote modes are compared with (remote_e2e.rs).
    let tree = ctrd.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "teleportd",
        IMAGE,
        "tree",
        "/bin/busybox",
        "sh",
        "-c",
        testkit::TREE_CMD,
    ]);
    assert_eq!(tree, testkit::expected_tree());

    // Removing the image garbage-collects every snapshot in the backend and on disk.
    ctrd.ctr(&["images", "rm", "--sync", IMAGE]);
    let left = ctrd.ctr(&["snapshots", "--snapshotter", "teleportd", "ls"]);
    assert_eq!(left.lines().count(), 1, "only the header remains: {left}");
    testkit::wait_for("GC of the image snapshots", Duration::from_secs(30), || {
        backend_snapshots(&socket).is_empty().then_some(())
    });
    assert_eq!(
        std::fs::read_dir(root.join("snapshots")).unwrap().count(),
        0,
        "snapshot dirs removed"
    );

    drop(ctrd);
    drop(td);
    assert!(
        mounts_under(dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(dir)
    );
}

#[test]
fn config_snippet_names_the_socket_for_each_containerd_line() {
    for (line, version, cri_table) in [
        ("1.6", 2, "io.containerd.grpc.v1.cri"),
        ("1.7", 2, "io.containerd.grpc.v1.cri"),
        ("2", 3, "io.containerd.cri.v1.images"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_teleportd"))
            .args([
                "--address",
                "/run/x/t.sock",
                "config-snippet",
                "--containerd",
                line,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let s = String::from_utf8(out.stdout).unwrap();
        let t: toml::Table = s.parse().unwrap_or_else(|e| panic!("{line}: {e}\n{s}"));
        assert_eq!(t["version"].as_integer(), Some(version), "{s}");
        let proxy = &t["proxy_plugins"]["teleportd"];
        assert_eq!(proxy["type"].as_str(), Some("snapshot"), "{s}");
        assert_eq!(proxy["address"].as_str(), Some("/run/x/t.sock"), "{s}");
        let cri = &t["plugins"][cri_table];
        let cri = if version == 2 {
            &cri["containerd"]
        } else {
            cri
        };
        assert_eq!(cri["snapshotter"].as_str(), Some("teleportd"), "{s}");
        assert_eq!(
            cri["disable_snapshot_annotations"].as_bool(),
            Some(false),
            "{s}"
        );
        assert_eq!(
            cri.get("use_local_image_pull").and_then(|v| v.as_bool()),
            (version == 3).then_some(true),
            "{s}"
        );
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_teleportd"))
        .args(["config-snippet", "--containerd", "1.5"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("1.5"));
}
