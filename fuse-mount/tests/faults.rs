//! Fault tests on the real node path (registry-mock → CRI pull through containerd → teleportd
//! → fuse manager → per-layer FUSE mounts, read directly from the host): the registry down
//! during a lazy read, the fuse manager SIGKILLed mid-read, the chunk cache on a full disk with
//! 16 concurrent readers; 16 fetch clients FUSE-mounting one layer and reading it at once.
//! Synchronisation: conditions polled with a deadline (mountinfo, a
//! reader's kernel wait channel, pids). Needs root, FUSE, containerd, skopeo.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fuse_mount::manager::pid_alive;
use node_api::cri::{image_service_client::ImageServiceClient, ImageSpec, PullImageRequest};
use sha2::{Digest, Sha256};
use testkit::{mounts_under, wait_for, Containerd, ManagerGuard, Teleportd, TestDir, Tmpfs};

const REPO: &str = "tele/faults";

fn fuse_mounts(dir: &Path) -> Vec<PathBuf> {
    testkit::fuse_mounts_under(dir)
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn busybox_sha() -> String {
    sha(&std::fs::read(testkit::BUSYBOX).unwrap())
}

fn registry_config(dir: &Path) -> registry_mock::Config {
    let mut cfg = registry_mock::Config::new(dir.join("reg"));
    cfg.teleport_repos = vec![REPO.into()];
    cfg
}

/// A node: the registry (in-process, so it can be stopped and restarted on its address), the
/// test image pushed and pulled through CRI with teleportd as the snapshotter, per-layer FUSE
/// mounts of its two layers (attached by a created, never started, container).
struct Node {
    rt: tokio::runtime::Runtime,
    reg: Option<registry_mock::Registry>,
    addr: SocketAddr,
    dir: PathBuf,
    td: Teleportd,
    ctrd: Containerd,
    targs: Vec<String>,
    /// The FUSE mount holding bin/busybox (layer one).
    busybox_layer: PathBuf,
    _guard: ManagerGuard,
}

impl Node {
    fn start(dir: &Path, cache: &Path) -> Node {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let reg = rt
            .block_on(registry_mock::start(registry_config(dir)))
            .unwrap();
        let addr = reg.addr();
        let image = format!("{addr}/{REPO}:1");
        let archive = dir.join("image.tar");
        testkit::test_image(&archive, "unused.test/app:1");
        testkit::registry::skopeo_push(&archive, &image);
        let socket = dir.join("teleportd.sock");
        let root = dir.join("teleportd");
        let targs: Vec<String> = [
            "--mount-mode",
            "per-layer",
            "--registry",
            &reg.url(),
            "--cache-dir",
            cache.to_str().unwrap(),
            // No start-profile replay: nothing may fetch a layer behind the test's back.
            "--no-start-profile",
        ]
        .map(str::to_owned)
        .to_vec();
        let guard = ManagerGuard(root.clone());
        let a: Vec<&str> = targs.iter().map(String::as_str).collect();
        let td = Teleportd::start_with(&root, &socket, &dir.join("teleportd.log"), &a);
        let mut ctrd = Containerd::start_with(&dir.join("ctrd"), &socket, Some(&addr.to_string()));
        ctrd.namespace = "k8s.io".into();
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
        // Remote layers are attached on first use: a container's rootfs (created, never
        // started, so nothing has read a file yet).
        ctrd.ctr(&[
            "containers",
            "create",
            "--snapshotter",
            "teleportd",
            &image,
            "faults-c1",
        ]);
        let busybox_layer = wait_for("the layer mounts", Duration::from_secs(30), || {
            let m = fuse_mounts(dir);
            (m.len() == 2)
                .then(|| m.into_iter().find(|p| p.join("bin/busybox").exists()))
                .flatten()
        });
        Node {
            rt,
            reg: Some(reg),
            addr,
            dir: dir.to_path_buf(),
            td,
            ctrd,
            targs,
            busybox_layer,
            _guard: guard,
        }
    }

    fn stop_registry(&mut self) {
        if let Some(r) = self.reg.take() {
            self.rt.block_on(r.shutdown()).unwrap();
        }
    }

    fn restart_registry(&mut self) {
        let mut cfg = registry_config(&self.dir);
        cfg.listen = self.addr;
        self.reg = Some(self.rt.block_on(registry_mock::start(cfg)).unwrap());
    }

    fn restart_teleportd(&mut self) {
        let a: Vec<&str> = self.targs.iter().map(String::as_str).collect();
        self.td = Teleportd::start_with(
            &self.dir.join("teleportd"),
            &self.dir.join("teleportd.sock"),
            &self.dir.join("teleportd.log"),
            &a,
        );
    }

    fn manager_pid(&self) -> u32 {
        fuse_mount::manager::read_pid(&self.dir.join("teleportd")).expect("fuse-manager.pid")
    }

    /// Clean stop: no mount left under the test dir.
    fn finish(mut self) {
        assert!(self.td.stop().success());
        self.stop_registry();
        drop(self.ctrd);
        assert!(
            fuse_mounts(&self.dir).is_empty(),
            "mounts left: {:?}",
            fuse_mounts(&self.dir)
        );
    }
}

#[test]
fn registry_down_during_a_lazy_read_is_eio_in_bounded_time_then_reads_recover() {
    if !testkit::prerequisites() {
        return;
    }
    let t = TestDir::new();
    let dir = t.path();
    let mut node = Node::start(dir, &dir.join("cache"));
    let f = node.busybox_layer.join("bin/busybox");
    // Small, cached-by-now metadata reads fine; the big file was never read.
    node.stop_registry();
    let t0 = Instant::now();
    let err = std::fs::read(&f).unwrap_err();
    let took = t0.elapsed();
    eprintln!("registry down: {err} after {took:?}");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(took < Duration::from_secs(30), "EIO took {took:?}");

    node.restart_registry();
    assert_eq!(sha(&std::fs::read(&f).unwrap()), busybox_sha());
    node.finish();
    assert!(mounts_under(dir).is_empty(), "{:?}", mounts_under(dir));
}

/// The kernel wait channel of `pid` (a blocked FUSE request shows `request_wait_answer` or
/// another `fuse` function).
fn waiting_on_fuse(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan"))
        .is_ok_and(|w| w.contains("fuse") || w.contains("request_wait_answer"))
}

fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    wait_for("the reader to return", Duration::from_secs(secs), || {
        child.try_wait().unwrap()
    })
}

#[test]
fn fuse_manager_sigkilled_mid_read_fails_the_reader_and_the_next_teleportd_recovers() {
    if !testkit::prerequisites() {
        return;
    }
    let t = TestDir::new();
    let dir = t.path();
    let mut node = Node::start(dir, &dir.join("cache"));
    let f = node.busybox_layer.join("bin/busybox");
    // With the registry down the manager holds the read in its fetch (retrying until its
    // deadline): a reader mid-read, deterministically.
    node.stop_registry();
    let mut reader = Command::new("cat")
        .arg(&f)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rpid = reader.id();
    wait_for(
        "the reader blocked in FUSE",
        Duration::from_secs(10),
        || waiting_on_fuse(rpid).then_some(()),
    );
    let manager = node.manager_pid();
    let t0 = Instant::now();
    // SAFETY: the manager pid comes from its pid file; it is this test's manager.
    unsafe { libc::kill(manager as libc::pid_t, libc::SIGKILL) };
    let st = wait_exit(&mut reader, 30);
    let took = t0.elapsed();
    let stderr = std::io::read_to_string(reader.stderr.take().unwrap()).unwrap();
    eprintln!("manager killed: reader {st} after {took:?}: {stderr}");
    assert!(!st.success(), "the reader must get an error");
    wait_for("the manager to die", Duration::from_secs(10), || {
        (!pid_alive(manager)).then_some(())
    });
    // New reads on the dead mount fail fast too (ENOTCONN), not hang.
    let err = std::fs::read(&f).unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::ENOTCONN) | Some(libc::EIO)),
        "{err}"
    );

    // The next teleportd: the dead mounts are detached, a new manager mounts the layers again.
    node.restart_registry();
    node.td.kill();
    node.restart_teleportd();
    let manager2 = node.manager_pid();
    assert_ne!(manager2, manager);
    assert!(pid_alive(manager2));
    let mounts = wait_for("layers mounted again", Duration::from_secs(30), || {
        let m = fuse_mounts(dir);
        (m.len() == 2).then_some(m)
    });
    let layer = mounts
        .into_iter()
        .find(|p| p.join("bin/busybox").exists())
        .unwrap();
    assert_eq!(
        sha(&std::fs::read(layer.join("bin/busybox")).unwrap()),
        busybox_sha()
    );
    node.finish();
    wait_for("the new manager to exit", Duration::from_secs(10), || {
        (!pid_alive(manager2)).then_some(())
    });
    assert!(mounts_under(dir).is_empty(), "{:?}", mounts_under(dir));
}

#[test]
fn a_full_cache_disk_never_fails_or_corrupts_16_concurrent_lazy_readers() {
    if !testkit::prerequisites() {
        return;
    }
    let t = TestDir::new();
    let dir = t.path();
    // 256 KiB for the chunk cache; busybox alone is several times that.
    let cache = dir.join("cache");
    let tmpfs = Tmpfs::mount(&cache, "256k");
    let node = Node::start(dir, &cache);
    let want = busybox_sha();
    assert!(std::fs::metadata(testkit::BUSYBOX).unwrap().len() > 4 * 256 * 1024);
    let f = node.busybox_layer.join("bin/busybox");
    let results: Vec<std::io::Result<Vec<u8>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16).map(|_| s.spawn(|| std::fs::read(&f))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ok = 0;
    for r in results {
        match r {
            Ok(b) => {
                assert_eq!(sha(&b), want, "wrong bytes served");
                ok += 1;
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
        }
    }
    eprintln!("16 readers, cache disk full: {ok} correct, {} EIO", 16 - ok);
    // A cache write failure must not fail a read: all correct.
    assert_eq!(ok, 16);
    // Again, with whatever the cache kept.
    assert_eq!(sha(&std::fs::read(&f).unwrap()), want);
    let used = Command::new("df").arg(&cache).output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&used.stdout));
    node.finish();
    drop(tmpfs);
    assert!(mounts_under(dir).is_empty(), "{:?}", mounts_under(dir));
}

/// 16 fetch clients (each its own node cache) FUSE-mounting the same expanded layer and reading
/// the same never-cached file at once: all get the right bytes, each fetched them lazily.
#[test]
fn sixteen_lazy_readers_of_one_layer_all_get_correct_bytes() {
    use fuse_mount::fetch::{Client, ClientOptions, MountStatus};
    if !testkit::prerequisites() {
        return;
    }
    let t = TestDir::new();
    let dir = t.path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = rt
        .block_on(registry_mock::start(registry_config(dir)))
        .unwrap();
    let archive = dir.join("image.tar");
    testkit::test_image(&archive, "unused.test/app:1");
    let digest = testkit::registry::skopeo_push(&archive, &format!("{}/{REPO}:1", reg.addr()));
    let url = reg.url();
    let probe = Client::new(
        &url,
        None,
        dir.join("cache-probe"),
        ClientOptions::default(),
    )
    .unwrap();
    let info = wait_for("the expansion", Duration::from_secs(60), || {
        match probe.resolve_blocking(REPO, &digest).unwrap() {
            MountStatus::Ready(info) => Some(std::sync::Arc::unwrap_or_clone(info)),
            _ => None,
        }
    });
    let want = busybox_sha();
    let start = std::sync::Barrier::new(16);
    let results: Vec<(String, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                let (url, info, start) = (&url, &info, &start);
                s.spawn(move || {
                    let c = Client::new(
                        url,
                        None,
                        dir.join(format!("cache-{i}")),
                        ClientOptions::default(),
                    )
                    .unwrap();
                    let layer = c.open_layer_blocking(REPO, &info.layers[0]).unwrap();
                    let mnt = dir.join(format!("mnt-{i}"));
                    std::fs::create_dir_all(&mnt).unwrap();
                    let opts = fuse_mount::fs::MountOptions {
                        prefetch_on_open: false,
                        ..Default::default()
                    };
                    let m = fuse_mount::fs::mount_layer(&mnt, layer, &opts).unwrap();
                    start.wait();
                    let got = std::fs::read(mnt.join("bin/busybox")).map(|b| sha(&b));
                    let fetched = m.counters().snapshot().bytes_fetched;
                    m.unmount().unwrap();
                    (got.unwrap(), fetched)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (got, fetched)) in results.iter().enumerate() {
        assert_eq!(got, &want, "reader {i}: wrong bytes");
        assert!(*fetched > 0, "reader {i} fetched nothing: not a lazy read");
    }
    rt.block_on(reg.shutdown()).unwrap();
    assert!(mounts_under(dir).is_empty(), "{:?}", mounts_under(dir));
}
