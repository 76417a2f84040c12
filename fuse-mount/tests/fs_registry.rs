//! The registry path end to end: push an image to an in-process registry-mock with teleport
//! enabled, wait for `/mount`, mount the expanded layers over real FUSE, then take the registry
//! away. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fs_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use emulator::Digest;
use fs_support::*;
use fuse_mount::fetch::{Client, ClientOptions, Credentials, MountInfo, MountStatus};
use fuse_mount::fs::{mount_layer, mount_merged, MountOptions};

const REPO: &str = "apps/teleported";
const USER: (&str, &str) = ("alice", "s3cret");

/// Push the test image (gzip layers); returns the manifest digest.
async fn push(base: &str) -> Digest {
    let mut tars = test_layers();
    tars.push(extra_layer());
    let layers: Vec<Vec<u8>> = tars.iter().map(|t| testkit::image::gzip(t)).collect();
    let c = testkit::registry::client();
    testkit::registry::push_image_as(&c, base, Some(USER), REPO, "v1", &layers)
        .await
        .manifest
}

fn wait_ready(client: &Client, digest: &Digest) -> MountInfo {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match client.resolve_blocking(REPO, digest).unwrap() {
            MountStatus::Ready(info) => return std::sync::Arc::unwrap_or_clone(info),
            MountStatus::Expanding => {}
            MountStatus::NotEnabled | MountStatus::Failed { .. } => {
                panic!("/mount says 404 for a teleport-enabled repo")
            }
        }
        assert!(
            Instant::now() < deadline,
            "expansion did not finish in time"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mkdir(p: &Path) -> PathBuf {
    std::fs::create_dir_all(p).unwrap();
    p.to_path_buf()
}

#[test]
fn fs_registry_lazy_mount_cache_and_outage() {
    if !testkit::require(&[testkit::Need::Root, testkit::Need::Fuse]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let _guard = NoMountsLeft(root.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = registry_mock::Config::new(root.join("registry"));
    cfg.users = vec![(USER.0.into(), USER.1.into())];
    cfg.anonymous_pull = false;
    cfg.teleport_repos = vec![REPO.into()];
    let reg = rt.block_on(registry_mock::start(cfg)).unwrap();
    let base = reg.url();
    let digest = rt.block_on(push(&base));

    let creds = Credentials {
        username: USER.0.into(),
        password: USER.1.into(),
    };
    let opts = ClientOptions {
        read_deadline: Duration::from_secs(3),
        ..Default::default()
    };
    let client = Client::new(&base, Some(creds), root.join("cache"), opts.clone()).unwrap();

    // Without credentials the registry refuses.
    let anon = Client::new(&base, None, root.join("cache-anon"), opts).unwrap();
    assert!(anon.resolve_blocking(REPO, &digest).is_err());
    // A repo that is not teleport-enabled: 404 → NotEnabled.
    let other = Digest::sha256_of(b"nope");
    assert_eq!(
        client.resolve_blocking("apps/plain", &other).unwrap(),
        MountStatus::NotEnabled
    );

    let info = wait_ready(&client, &digest);
    assert_eq!(info.layers.len(), 5);
    let cs = u64::from(info.layers[0].chunk_size);
    assert_eq!(info.manifest_digest, digest);
    let layers: Vec<_> = info
        .layers
        .iter()
        .map(|l| client.open_layer_blocking(REPO, l).unwrap())
        .collect();
    let total: u64 = layers.iter().map(|l| l.index().data_size).sum();

    let mopts = MountOptions {
        prefetch_on_open: false,
        ..Default::default()
    };
    let m = mkdir(&root.join("mnt/merged"));
    let merged = mount_merged(&m, layers.clone(), &mopts).unwrap();
    let l0 = mkdir(&root.join("mnt/l0"));
    let layer0 = mount_layer(&l0, layers[0].clone(), &mopts).unwrap();
    assert_eq!(merged.counters().snapshot().bytes_fetched, 0);

    // Read one file: only its chunks come over the wire.
    assert_eq!(
        std::fs::read(m.join("data/lonely.bin")).unwrap(),
        lonely_file()
    );
    let s = merged.counters().snapshot();
    let len = lonely_file().len() as u64;
    // The registry offers its data as zstd frames: the frames covering the file came, whole
    // (every chunk in them kept), nothing beyond them.
    assert_eq!(
        cs,
        u64::from(registry_mock::expansion::DEFAULT_EXPANSION_CHUNK_SIZE)
    );
    let fs = u64::from(info.layers[0].frames.as_ref().unwrap().frame_size);
    assert!(
        s.bytes_fetched >= len && s.bytes_fetched <= (len.div_ceil(fs) + 1) * fs,
        "{s:?}"
    );
    assert!(
        (len.div_ceil(fs)..=len.div_ceil(fs) + 1).contains(&s.frames_fetched),
        "{s:?}"
    );
    assert_eq!(s.chunks_fetched, s.bytes_fetched.div_ceil(cs));
    // Read-ahead to the end of the file: one request per concurrent kernel read at most.
    assert!(s.fetches >= 1 && s.fetches <= 2, "{s:?}");
    assert!(s.bytes_fetched * 4 < total, "{s:?} vs {total}");
    assert_eq!(s.fetch_errors, 0);
    // The same bytes through the per-layer mount come from the node cache.
    assert_eq!(
        std::fs::read(l0.join("data/lonely.bin")).unwrap(),
        lonely_file()
    );
    let s0 = layer0.counters().snapshot();
    assert_eq!(s0.bytes_fetched, 0, "{s0:?}");
    assert!(s0.cache_hits >= 1, "{s0:?}");
    merged.unmount().unwrap();

    // Registry gone: cached chunks still serve; uncached ones fail with EIO (not a hang).
    let addr = reg.addr();
    rt.block_on(reg.shutdown()).unwrap();
    let m2 = mkdir(&root.join("mnt/merged2"));
    let merged = mount_merged(&m2, layers.clone(), &mopts).unwrap();
    assert_eq!(
        std::fs::read(m2.join("data/lonely.bin")).unwrap(),
        lonely_file()
    );
    assert_eq!(merged.counters().snapshot().bytes_fetched, 0);
    let err = std::fs::read(m2.join("data/huge.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(merged.counters().snapshot().fetch_errors >= 1);

    // Registry back on the same address (new token key: the client re-authenticates):
    // the rest of the tree reads fine and is right.
    let mut cfg = registry_mock::Config::new(root.join("registry"));
    cfg.users = vec![(USER.0.into(), USER.1.into())];
    cfg.anonymous_pull = false;
    cfg.teleport_repos = vec![REPO.into()];
    cfg.listen = addr;
    let reg = rt.block_on(registry_mock::start(cfg)).unwrap();
    let a = walk(&m2);
    assert_eq!(a["data/big.bin"].sha, Some(sha(&big_file())));
    assert_eq!(a["data/huge.bin"].sha, Some(sha(&huge_file())));
    assert_eq!(
        a["etc/passwd"].sha,
        Some(sha(b"root:x:0:0\nuser:x:1000:1000\n"))
    );
    assert!(!a.contains_key("gone.txt"));
    assert_eq!(
        a["usr/bin/tool2"].inode_group.as_deref(),
        Some("usr/bin/tool")
    );
    assert!(merged.counters().snapshot().bytes_fetched > 0);
    merged.unmount().unwrap();
    layer0.unmount().unwrap();
    rt.block_on(reg.shutdown()).unwrap();
}
