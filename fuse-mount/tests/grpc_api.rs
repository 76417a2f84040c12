//! The Snapshots gRPC API end to end over a unix socket, in-process (no root needed): status
//! codes, field masks, List filters, stale-socket handling and graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;

use fuse_mount::daemon::{self, Config, DaemonError};
use node_api::snapshots::{
    snapshots_client::SnapshotsClient, CleanupRequest, CommitSnapshotRequest, Kind,
    ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest, ViewSnapshotRequest,
};
use tonic::{transport::Channel, Code};

type Client = SnapshotsClient<Channel>;

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn prepare(
    c: &mut Client,
    key: &str,
    parent: &str,
    l: &[(&str, &str)],
) -> Result<Vec<node_api::types::Mount>, Code> {
    c.prepare(PrepareSnapshotRequest {
        snapshotter: "teleportd".into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels(l),
    })
    .await
    .map(|r| r.into_inner().mounts)
    .map_err(|s| s.code())
}

async fn commit(c: &mut Client, name: &str, key: &str, l: &[(&str, &str)]) -> Result<(), Code> {
    c.commit(CommitSnapshotRequest {
        snapshotter: "teleportd".into(),
        name: name.into(),
        key: key.into(),
        labels: labels(l),
    })
    .await
    .map(|_| ())
    .map_err(|s| s.code())
}

async fn list(c: &mut Client, filters: &[&str]) -> Vec<String> {
    let mut s = c
        .list(ListSnapshotsRequest {
            snapshotter: "teleportd".into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        names.extend(m.info.into_iter().map(|i| i.name));
    }
    names.sort();
    names
}

struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<daemon::Result<()>>,
}

async fn start(root: &Path, socket: &Path) -> (Running, Client) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let cfg = Config::new(root, socket);
    let task = tokio::spawn(daemon::run(cfg, async {
        let _ = rx.await;
    }));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let ch = loop {
        if let Ok(ch) = node_api::connect(socket).await {
            break ch;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "daemon did not come up"
        );
        tokio::task::yield_now().await;
    };
    (
        Running {
            stop: Some(tx),
            task,
        },
        SnapshotsClient::new(ch),
    )
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_api_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    // A stale socket from a crashed run must not stop us from starting.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let root = dir.path().join("root");
    let (d, mut c) = start(&root, &socket).await;

    let m = prepare(&mut c, "ns/1/extract-a", "", &[]).await.unwrap();
    assert_eq!(
        (m[0].r#type.as_str(), m[0].options.as_slice()),
        ("bind", &["rw".to_string(), "rbind".to_string()][..])
    );
    assert_eq!(
        prepare(&mut c, "ns/1/extract-a", "", &[])
            .await
            .unwrap_err(),
        Code::AlreadyExists
    );
    assert_eq!(
        prepare(&mut c, "", "", &[]).await.unwrap_err(),
        Code::InvalidArgument
    );
    assert_eq!(
        prepare(&mut c, "k", "missing", &[]).await.unwrap_err(),
        Code::NotFound
    );
    commit(
        &mut c,
        "ns/2/sha256:aaa",
        "ns/1/extract-a",
        &[("containerd.io/snapshot.ref", "sha256:aaa")],
    )
    .await
    .unwrap();
    assert_eq!(
        commit(&mut c, "x", "ns/1/extract-a", &[])
            .await
            .unwrap_err(),
        Code::NotFound
    );
    prepare(&mut c, "ns/3/extract-b", "ns/2/sha256:aaa", &[])
        .await
        .unwrap();
    commit(
        &mut c,
        "ns/4/sha256:bbb",
        "ns/3/extract-b",
        &[("containerd.io/snapshot.ref", "sha256:bbb")],
    )
    .await
    .unwrap();
    let m = prepare(&mut c, "ns/5/ctr", "ns/4/sha256:bbb", &[])
        .await
        .unwrap();
    assert_eq!(m[0].r#type, "overlay");
    let lower = m[0]
        .options
        .iter()
        .find(|o| o.starts_with("lowerdir="))
        .unwrap();
    assert_eq!(lower.matches(":").count(), 1, "two lower dirs: {lower}");
    let again = c
        .mounts(MountsRequest {
            snapshotter: String::new(),
            key: "ns/5/ctr".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(again, m);
    let v = c
        .view(ViewSnapshotRequest {
            snapshotter: String::new(),
            key: "ns/6/view".into(),
            parent: "ns/2/sha256:aaa".into(),
            labels: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(v[0].options, ["ro", "rbind"]);

    // Stat: kind, parent, timestamps.
    let info = c
        .stat(StatSnapshotRequest {
            snapshotter: String::new(),
            key: "ns/4/sha256:bbb".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(info.kind, Kind::Committed as i32);
    assert_eq!(info.parent, "ns/2/sha256:aaa");
    assert!(info.created_at.unwrap().seconds > 1_600_000_000);

    // Update: a single label via field path; non-label fields are refused.
    let mut new = info.clone();
    new.labels = labels(&[("containerd.io/gc.root", "x"), ("ignored", "y")]);
    let up = |paths: &[&str]| UpdateSnapshotRequest {
        snapshotter: String::new(),
        info: Some(new.clone()),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };
    let got = c
        .update(up(&["labels.containerd.io/gc.root"]))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(
        got.labels,
        labels(&[
            ("containerd.io/snapshot.ref", "sha256:bbb"),
            ("containerd.io/gc.root", "x")
        ])
    );
    assert_eq!(
        c.update(up(&["parent"])).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // List: all, and the filter containerd 1.6 uses to find a remote snapshot.
    assert_eq!(
        list(&mut c, &[]).await,
        [
            "ns/2/sha256:aaa",
            "ns/4/sha256:bbb",
            "ns/5/ctr",
            "ns/6/view"
        ]
    );
    assert_eq!(
        list(
            &mut c,
            &[r#"labels."containerd.io/snapshot.ref"==sha256:bbb,parent=="ns/2/sha256:aaa""#]
        )
        .await,
        ["ns/4/sha256:bbb"]
    );
    assert_eq!(
        list(
            &mut c,
            &[r#"labels."containerd.io/snapshot.ref"==sha256:bbb,parent=="""#]
        )
        .await,
        Vec::<String>::new()
    );

    let u = c
        .usage(UsageRequest {
            snapshotter: String::new(),
            key: "ns/5/ctr".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.inodes, 1, "empty upper dir");
    let rm = |k: &str| RemoveSnapshotRequest {
        snapshotter: String::new(),
        key: k.into(),
    };
    assert_eq!(
        c.remove(rm("ns/4/sha256:bbb")).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        c.remove(rm("nope")).await.unwrap_err().code(),
        Code::NotFound
    );
    for k in ["ns/5/ctr", "ns/6/view", "ns/4/sha256:bbb"] {
        c.remove(rm(k)).await.unwrap();
    }
    c.cleanup(CleanupRequest {
        snapshotter: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(list(&mut c, &[]).await, ["ns/2/sha256:aaa"]);

    d.stop().await;
    assert!(!socket.exists(), "socket removed on shutdown");

    // Same root after a restart: metadata persisted.
    let (d, mut c) = start(&root, &socket).await;
    assert_eq!(list(&mut c, &[]).await, ["ns/2/sha256:aaa"]);
    d.stop().await;
}

#[tokio::test]
async fn refuses_to_replace_a_non_socket_and_remote_without_registry() {
    let dir = tempfile::tempdir().unwrap();
    let not_socket = dir.path().join("file");
    std::fs::write(&not_socket, b"precious").unwrap();
    let err = daemon::run(
        Config::new(dir.path().join("r"), &not_socket),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DaemonError::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read(&not_socket).unwrap(), b"precious");

    let mut cfg = Config::new(dir.path().join("r"), dir.path().join("s.sock"));
    cfg.remote = true;
    let err = daemon::run(cfg, std::future::pending()).await.unwrap_err();
    assert!(matches!(err, DaemonError::RemoteNeedsRegistry), "{err}");
}
