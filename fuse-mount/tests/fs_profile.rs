//! Learned start profiles end to end, over real FUSE against an in-process registry: mount 1
//! (cold, no profile) reads some files and uploads its profile on unmount; mount 2 on a fresh
//! node cache replays it, and once the replay is done reading the same files costs no on-demand
//! fetch, while a file outside the profile still does. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fs_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use emulator::Digest;
use fs_support::*;
use fuse_mount::fetch::{Client, ClientOptions, Credentials, MountInfo, MountStatus};
use fuse_mount::fs::{mount_merged, MountHandle, MountOptions};

const REPO: &str = "apps/profiled";
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

/// Poll `f` until it returns Some, or panic at the deadline (a bounded wait for a condition,
/// not a timing assertion).
fn poll<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    testkit::wait_for(what, Duration::from_secs(60), f)
}

fn ready(client: &Client, digest: &Digest) -> MountInfo {
    poll("expansion", || {
        match client.resolve_blocking(REPO, digest).unwrap() {
            MountStatus::Ready(info) => Some(std::sync::Arc::unwrap_or_clone(info)),
            MountStatus::Expanding => None,
            MountStatus::NotEnabled | MountStatus::Failed { .. } => {
                panic!("/mount 404 for a teleport-enabled repo")
            }
        }
    })
}

fn mkdir(p: &Path) -> PathBuf {
    std::fs::create_dir_all(p).unwrap();
    p.to_path_buf()
}

/// The registry's count of expanded-data range requests.
fn data_requests(rt: &tokio::runtime::Runtime, base: &str) -> u64 {
    let text = rt.block_on(async {
        reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    text.lines()
        .filter(|l| l.contains("route=\"/mount/v1/{name}/_layers/{digest}/data\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The files a "start" reads (in the merged tree).
const START: [&str; 3] = ["data/lonely.bin", "data/big.bin", "etc/passwd"];

fn read_start(m: &Path) {
    assert_eq!(std::fs::read(m.join(START[0])).unwrap(), lonely_file());
    assert_eq!(std::fs::read(m.join(START[1])).unwrap(), big_file());
    assert_eq!(
        std::fs::read(m.join(START[2])).unwrap(),
        b"root:x:0:0\nuser:x:1000:1000\n"
    );
}

fn mount(client: &Client, info: &MountInfo, at: &Path) -> MountHandle {
    let layers: Vec<_> = info
        .layers
        .iter()
        .map(|l| client.open_layer_blocking(REPO, l).unwrap())
        .collect();
    let mopts = MountOptions {
        // Only reads and the profile fetch: nothing else in the background.
        prefetch_on_open: false,
        ..Default::default()
    };
    mount_merged(at, layers, &mopts).unwrap()
}

#[test]
fn start_profile_is_recorded_then_replayed() {
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
        // Long enough that the recording closes at unmount, not by the timer.
        profile_window: Duration::from_secs(600),
        ..Default::default()
    };

    // Node 1: cold, no profile yet. Read the start set, unmount: the profile goes up.
    let c1 = Client::new(
        &base,
        Some(creds.clone()),
        root.join("cache1"),
        opts.clone(),
    )
    .unwrap();
    let info = ready(&c1, &digest);
    let m1 = mkdir(&root.join("mnt/one"));
    let h1 = mount(&c1, &info, &m1);
    // The lookup ran (404) before the reads, so this recording is allowed to upload.
    poll("profile lookup", || {
        let r = rt.block_on(async {
            reqwest::Client::new()
                .get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
        let n: u64 = r
            .lines()
            .filter(|l| l.contains("_profiles/{digest}\",method=\"GET\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        (n >= info.layers.len() as u64).then_some(())
    });
    read_start(&m1);
    let s1 = h1.counters().snapshot();
    assert_eq!(s1.profile_layers, 0, "{s1:?}");
    assert!(s1.demand_fetches > 0, "{s1:?}");
    h1.unmount().unwrap();
    rt.block_on(c1.flush_uploads(Duration::from_secs(30)));
    let profiles: Vec<Vec<(u64, u64)>> = info
        .layers
        .iter()
        .filter_map(|l| {
            let r = rt.block_on(
                reqwest::Client::new()
                    .get(format!("{base}/mount/v1/{REPO}/_profiles/{}", l.digest))
                    .basic_auth(USER.0, Some(USER.1))
                    .send(),
            );
            let r = r.unwrap();
            (r.status() == 200).then(|| {
                let v: serde_json::Value = rt.block_on(r.json()).unwrap();
                serde_json::from_value(v["ranges"].clone()).unwrap()
            })
        })
        .collect();
    assert!(!profiles.is_empty(), "no profile uploaded");
    let recorded: u64 = profiles.iter().flatten().map(|r| r.1).sum();
    let wanted = (lonely_file().len() + big_file().len()) as u64;
    assert!(recorded >= wanted, "recorded {recorded} < read {wanted}");

    // Node 2: fresh cache. The mount replays the profile; wait until every job has run.
    let c2 = Client::new(&base, Some(creds), root.join("cache2"), opts).unwrap();
    let m2 = mkdir(&root.join("mnt/two"));
    let h2 = mount(&c2, &info, &m2);
    let s = poll("profile replay", || {
        let s = h2.counters().snapshot();
        (s.profile_layers as usize == profiles.len()
            && s.profile_jobs_queued > 0
            && s.profile_jobs_done == s.profile_jobs_queued)
            .then_some(s)
    });
    assert!(s.profile_bytes_prefetched >= wanted, "{s:?}");
    assert_eq!(s.fetch_errors, 0, "{s:?}");
    let before = data_requests(&rt, &base);
    read_start(&m2);
    let s = h2.counters().snapshot();
    assert_eq!(s.demand_fetches, 0, "start set read after replay: {s:?}");
    assert_eq!(
        data_requests(&rt, &base),
        before,
        "no data request for the start set"
    );
    // A file outside the profile is still fetched on demand (the counter can move).
    assert_eq!(
        std::fs::read(m2.join("data/huge.bin")).unwrap(),
        huge_file()
    );
    assert!(h2.counters().snapshot().demand_fetches > 0);
    h2.unmount().unwrap();
    rt.block_on(reg.shutdown()).unwrap();
}
