//! teleportd killed by SIGKILL while a container reads remote layers: the FUSE sessions live in
//! the fuse manager, so the container keeps reading; a restarted teleportd reconnects to the
//! same manager without re-mounting. Then both teleportd and the manager die: the next
//! teleportd detaches the stale mounts and mounts again from metadata. A clean stop leaves no
//! mount and no manager. Needs root, FUSE, containerd.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use fuse_mount::manager::pid_alive;
use node_api::cri::{image_service_client::ImageServiceClient, ImageSpec, PullImageRequest};
use sha2::{Digest, Sha256};
use testkit::{mounts_under, wait_for, Containerd, ManagerGuard, Teleportd, TestDir};

#[test]
fn per_layer_mode() {
    survive_kill("per-layer");
}

#[test]
fn merged_mode() {
    survive_kill("merged");
}

fn fuse_mounts(dir: &Path) -> usize {
    testkit::fuse_mounts_under(dir).len()
}

fn manager_pid(root: &Path) -> u32 {
    fuse_mount::manager::read_pid(root).expect("fuse-manager.pid")
}

/// PID of task `id` once it runs.
fn task_pid(ctrd: &Containerd, id: &str) -> u32 {
    wait_for(
        &format!("task {id} running"),
        Duration::from_secs(30),
        || {
            let out = ctrd.ctr(&["tasks", "ls"]);
            out.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && f[0] == id && f[2] == "RUNNING")
                    .then(|| f[1].parse::<u32>().ok())
                    .flatten()
            })
        },
    )
}

fn stop_task(ctrd: &Containerd, id: &str) {
    ctrd.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
    wait_for(
        &format!("task {id} stopped"),
        Duration::from_secs(30),
        || {
            let out = ctrd.ctr(&["tasks", "ls"]);
            (!out
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains("RUNNING")))
            .then_some(())
        },
    );
    ctrd.ctr(&["tasks", "rm", id]);
    ctrd.ctr(&["containers", "rm", id]);
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

/// What the host reads of the image through container `pid`: the file it holds open on fd 3,
/// files through its root (one never opened before, so FUSE must answer lookup, open and read).
fn check_reads_through(ctrd: &Containerd, id: &str, pid: u32) {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    assert_eq!(
        std::fs::read_to_string(proc.join("fd/3")).unwrap(),
        "hello from layer two\n",
        "the held fd"
    );
    assert_eq!(
        std::fs::read_to_string(proc.join("root/etc/hello.txt")).unwrap(),
        "hello from layer two\n"
    );
    assert_eq!(
        std::fs::read_to_string(proc.join("root/data/new.txt")).unwrap(),
        "added in layer two\n"
    );
    assert_eq!(
        sha256_file(&proc.join("root/bin/busybox")),
        sha256_file(Path::new(testkit::BUSYBOX))
    );
    // And from inside the container (containerd → shim → runc exec; no snapshotter involved).
    static EXECS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let exec_id = format!(
        "e{}",
        EXECS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let out = ctrd.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        &exec_id,
        id,
        "/bin/busybox",
        "cat",
        "/data/keep.txt",
        "/data/opaque/fresh.txt",
    ]);
    assert_eq!(out, "kept\nfresh\n");
}

fn survive_kill(mode: &str) {
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
    let cache = dir.join("cache");
    let url = reg.url();
    let targs = [
        "--mount-mode",
        mode,
        "--registry",
        &url,
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    let log = dir.join("teleportd.log");
    let _guard = ManagerGuard(root.clone());
    let mut td = Teleportd::start_with(&root, &socket, &log, &targs);
    let manager = manager_pid(&root);
    assert_ne!(
        manager,
        td.pid(),
        "FUSE sessions live in a separate process"
    );
    assert!(pid_alive(manager));
    let mut ctrd =
        Containerd::start_with(&dir.join("ctrd"), &socket, Some(&reg.addr().to_string()));
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

    // A container that holds a file of a remote layer open and keeps running.
    let c1 = format!("{mode}-hold");
    ctrd.ctr(&[
        "run",
        "-d",
        "--null-io",
        "--snapshotter",
        "teleportd",
        &image,
        &c1,
        "/bin/busybox",
        "sh",
        "-c",
        "exec 3</etc/hello.txt; exec /bin/busybox sleep 100000",
    ]);
    let pid = task_pid(&ctrd, &c1);
    wait_for(
        "the container to hold fd 3",
        Duration::from_secs(30),
        || {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            (String::from_utf8_lossy(&cmd).contains("sleep")
                && std::fs::read_link(format!("/proc/{pid}/fd/3")).is_ok())
            .then_some(())
        },
    );
    let mounted = fuse_mounts(dir);
    assert_eq!(mounted, if mode == "merged" { 1 } else { 2 });

    // SIGKILL: teleportd's shutdown does not run; the manager keeps serving.
    td.kill();
    assert!(pid_alive(manager), "the fuse manager survives teleportd");
    check_reads_through(&ctrd, &c1, pid);
    // The start trace lives in the manager too: `teleportd trace` lists what was just read.
    let out = std::process::Command::new(testkit::bin("teleportd"))
        .arg("--root")
        .arg(&root)
        .arg("trace")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "open",
        "/etc/hello.txt",
        "/bin/busybox",
        "read",
        "misses",
        "next ",
    ] {
        assert!(
            text.contains(want),
            "{want:?} missing from the trace:\n{text}"
        );
    }

    // Restart: the same manager, the same mounts (no re-mount, no stacking).
    let mut td = Teleportd::start_with(&root, &socket, &log, &targs);
    assert_eq!(manager_pid(&root), manager);
    assert!(
        td.log_text()
            .contains("connected to the running fuse manager"),
        "{}",
        testkit::tail(&td.log_text(), 30)
    );
    assert_eq!(fuse_mounts(dir), mounted, "mounts reused as they are");
    wait_for("containerd to reconnect", Duration::from_secs(30), || {
        let o = ctrd.ctr_raw(&["snapshots", "--snapshotter", "teleportd", "ls"]);
        o.status.success().then_some(())
    });
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "teleportd",
        &image,
        &format!("{mode}-c2"),
        "/bin/busybox",
        "sh",
        "-c",
        testkit::TREE_CMD,
    ]);
    assert_eq!(out, testkit::expected_tree());
    check_reads_through(&ctrd, &c1, pid);
    assert_eq!(fuse_mounts(dir), mounted);

    // Another configuration while c1 reads through the manager: replacing the manager would
    // detach c1's layers (ENOTCONN), so it is kept and nothing is detached.
    td.kill();
    let mut changed = targs.to_vec();
    changed.extend(["--profile-window", "3"]);
    let mut td = Teleportd::start_with(&root, &socket, &log, &changed);
    assert_eq!(
        manager_pid(&root),
        manager,
        "{}\n{}",
        testkit::tail(&td.log_text(), 30),
        testkit::tail(
            &std::fs::read_to_string(root.join("fuse-manager.log")).unwrap_or_default(),
            30
        )
    );
    assert!(
        td.log_text().contains("its mounts are in use"),
        "{}",
        testkit::tail(&td.log_text(), 30)
    );
    assert_eq!(fuse_mounts(dir), mounted, "nothing detached");
    check_reads_through(&ctrd, &c1, pid);
    // A plain SIGTERM to the manager is refused while its mounts are in use.
    let manager_log = root.join("fuse-manager.log");
    let refusals = || {
        std::fs::read_to_string(&manager_log)
            .unwrap_or_default()
            .matches("not exiting while mounts are in use")
            .count()
    };
    let before = refusals();
    // SAFETY: the manager pid was read from its pid file and checked alive above.
    unsafe { libc::kill(manager as libc::pid_t, libc::SIGTERM) };
    wait_for(
        "the manager to refuse SIGTERM",
        Duration::from_secs(30),
        || (refusals() > before).then_some(()),
    );
    assert!(pid_alive(manager));
    assert_eq!(fuse_mounts(dir), mounted, "nothing detached");
    check_reads_through(&ctrd, &c1, pid);
    td.kill();
    let mut td = Teleportd::start_with(&root, &socket, &log, &targs);
    assert_eq!(manager_pid(&root), manager);

    // Both die: the mounts left behind are dead (ENOTCONN); the next teleportd detaches them,
    // starts a new manager and mounts again from metadata.
    td.kill();
    // SAFETY: the manager pid was read from its pid file and checked alive above.
    unsafe { libc::kill(manager as libc::pid_t, libc::SIGKILL) };
    wait_for("the manager to die", Duration::from_secs(10), || {
        (!pid_alive(manager)).then_some(())
    });
    assert_eq!(fuse_mounts(dir), mounted, "dead mounts stay until detached");
    // The control: without the manager the container's reads fail, so the reads above were
    // served by it (not by a cache).
    let dead = std::fs::read_to_string(format!("/proc/{pid}/fd/3"));
    assert!(dead.is_err(), "read without a FUSE server: {dead:?}");
    let mut td = Teleportd::start_with(&root, &socket, &log, &targs);
    let manager2 = manager_pid(&root);
    assert_ne!(manager2, manager);
    stop_task(&ctrd, &c1);
    // Per-layer mounts come back at start; the merged one is mounted by the next container.
    let after_start = if mode == "merged" { 0 } else { 2 };
    assert_eq!(fuse_mounts(dir), after_start, "stale mounts detached");
    wait_for("containerd to reconnect", Duration::from_secs(30), || {
        let o = ctrd.ctr_raw(&["snapshots", "--snapshotter", "teleportd", "ls"]);
        o.status.success().then_some(())
    });
    let c3 = format!("{mode}-c3");
    ctrd.ctr(&[
        "run",
        "-d",
        "--null-io",
        "--snapshotter",
        "teleportd",
        &image,
        &c3,
        "/bin/busybox",
        "sh",
        "-c",
        "exec 3</etc/hello.txt; exec /bin/busybox sleep 100000",
    ]);
    let pid3 = task_pid(&ctrd, &c3);
    wait_for(
        "the container to hold fd 3",
        Duration::from_secs(30),
        || {
            let cmd = std::fs::read(format!("/proc/{pid3}/cmdline")).ok()?;
            (String::from_utf8_lossy(&cmd).contains("sleep")
                && std::fs::read_link(format!("/proc/{pid3}/fd/3")).is_ok())
            .then_some(())
        },
    );
    check_reads_through(&ctrd, &c3, pid3);
    assert_eq!(fuse_mounts(dir), mounted);
    stop_task(&ctrd, &c3);

    // Clean stop: everything unmounted, the manager gone.
    assert!(td.stop().success());
    wait_for("the manager to exit", Duration::from_secs(10), || {
        (!pid_alive(manager2)).then_some(())
    });
    assert_eq!(fuse_mounts(dir), 0, "clean stop unmounts");
    assert!(!root.join("fuse-manager.pid").exists());
    drop(td);
    drop(ctrd);
    rt.block_on(reg.shutdown()).unwrap();
    assert!(
        mounts_under(dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(dir)
    );
}

/// The manager's lifecycle without containers: `--keep-fuse-manager` leaves it to the next
/// teleportd, a changed config replaces it, and `daemon::kill_manager` stops only a real
/// manager of the root.
#[test]
fn manager_reuse_replacement_and_kill() {
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
    let url = reg.url();
    let (socket, root, log) = (
        dir.join("t.sock"),
        dir.join("teleportd"),
        dir.join("teleportd.log"),
    );
    let _guard = ManagerGuard(root.clone());
    let with_cache = |c: &str| -> Vec<String> {
        [
            "--registry",
            &url,
            "--cache-dir",
            dir.join(c).to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let start = |args: &[String], extra: &[&str]| {
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        a.extend(extra);
        Teleportd::start_with(&root, &socket, &log, &a)
    };

    // Kept across a clean stop, reused by the next teleportd with the same config.
    let mut td = start(&with_cache("c1"), &["--keep-fuse-manager"]);
    let m1 = manager_pid(&root);
    let st = td.stop();
    assert!(st.success(), "{st}: {}", td.log_text());
    assert!(
        pid_alive(m1),
        "--keep-fuse-manager leaves the manager running"
    );
    drop(td);
    let mut td = start(&with_cache("c1"), &[]);
    assert_eq!(manager_pid(&root), m1);

    // Another config (cache dir): the old manager is stopped, a new one started.
    td.kill();
    let td = start(&with_cache("c2"), &[]);
    let m2 = manager_pid(&root);
    assert_ne!(m2, m1);
    wait_for("the old manager to exit", Duration::from_secs(10), || {
        (!pid_alive(m1)).then_some(())
    });
    assert!(td.log_text().contains("another configuration"));

    // teleportd killed: kill_manager cleans up after it.
    let mut td = td;
    td.kill();
    assert!(pid_alive(m2));
    let done = fuse_mount::daemon::kill_manager(&root).unwrap();
    assert_eq!(done.stopped, Some(m2));
    assert!(!pid_alive(m2));
    assert!(!root.join("fuse-manager.pid").exists());
    assert!(!root.join("fuse-manager.sock").exists());

    // A pid file naming something that is not this root's manager is left alone.
    std::fs::write(
        root.join("fuse-manager.pid"),
        format!("{}\n", std::process::id()),
    )
    .unwrap();
    let done = fuse_mount::daemon::kill_manager(&root).unwrap();
    assert_eq!(done.stopped, None);
    rt.block_on(reg.shutdown()).unwrap();
    assert!(mounts_under(dir).is_empty());
}

/// A SIGTERM that arrives while teleportd is still starting is a clean stop, not death by
/// signal: the handlers are installed first thing. (Installed on the shutdown future's first
/// poll, after the socket was bound, a SIGTERM right after the socket accepted killed it.)
/// Here the start is held deterministically: a socket at the fuse manager's path that accepts
/// but never answers keeps teleportd waiting (5 s) before it binds its own socket.
#[test]
fn sigterm_while_starting_is_a_clean_stop() {
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
    let url = reg.url();
    let (root, socket) = (dir.join("teleportd"), dir.join("t.sock"));
    let _guard = ManagerGuard(root.clone());
    std::fs::create_dir_all(&root).unwrap();
    let mute = std::os::unix::net::UnixListener::bind(root.join("fuse-manager.sock")).unwrap();
    // Launched, not waited for: it cannot bind its socket until its manager answers. Stopped
    // on drop if an assert fails first.
    let mut cmd = std::process::Command::new(testkit::bin("teleportd"));
    cmd.arg("--root")
        .arg(&root)
        .arg("--address")
        .arg(&socket)
        .args(["--insecure-registry", "--registry", &url]);
    let log = dir.join("teleportd.log");
    let mut daemon = testkit::process::Teleportd::launch(cmd, &root, &socket, &log);
    // Its manager probe has connected to the mute socket: teleportd is mid-start.
    let (_probe, _) = mute.accept().unwrap();
    assert!(
        !socket.exists(),
        "teleportd bound its socket before its manager answered"
    );
    assert!(
        testkit::catches_signal(daemon.pid(), libc::SIGTERM),
        "teleportd does not catch SIGTERM while starting"
    );
    let st = daemon.stop();
    assert!(st.success(), "{st}: {}", daemon.log_text());
    assert!(!socket.exists(), "a clean stop removes the socket");
    if let Some(m) = fuse_mount::manager::read_pid(&root) {
        assert!(!pid_alive(m), "a clean stop stops the manager it started");
    }
    rt.block_on(reg.shutdown()).unwrap();
    assert!(mounts_under(dir).is_empty());
}
