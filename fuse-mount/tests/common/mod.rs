//! Helpers for the end-to-end tests: prerequisites, a tiny OCI image, and Drop guards for the
//! teleportd and containerd processes a test starts (stopped by PID, never by name).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use fuse_mount::containerd_config::{self, CriSettings, NodeSettings, Version};
use sha2::{Digest, Sha256};

static NEXT_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub const BUSYBOX: &str = "/bin/busybox";

/// Returns false (after printing why) when the test must be skipped; panics in CI.
pub fn prerequisites() -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for bin in [
        "containerd",
        "ctr",
        "runc",
        "containerd-shim-runc-v2",
        "skopeo",
    ] {
        let in_dir = containerd_dir().is_some_and(|d| d.join(bin).is_file());
        if !in_dir && which(bin).is_none() {
            missing.push(bin.to_string());
        }
    }
    if !Path::new(BUSYBOX).exists() {
        missing.push(format!("{BUSYBOX} (Debian package busybox-static)"));
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but prerequisites are missing: {missing:?}");
    }
    eprintln!("SKIPPED: missing prerequisites {missing:?}");
    false
}

/// `TB_CONTAINERD_BIN=DIR` (e.g. from `scripts/get-containerd.sh 2.1`): the containerd under
/// test — `containerd`, `ctr` and its shim from DIR — instead of PATH's.
fn containerd_dir() -> Option<PathBuf> {
    std::env::var_os("TB_CONTAINERD_BIN")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// `containerd` or `ctr` of the containerd under test.
pub fn containerd_bin(name: &str) -> PathBuf {
    containerd_dir().map_or_else(|| PathBuf::from(name), |d| d.join(name))
}

/// PATH with the containerd under test first (containerd finds its shim through PATH).
fn path_with_containerd_dir() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = containerd_dir()
        .into_iter()
        .chain(std::env::split_paths(&path));
    std::env::join_paths(dirs).unwrap()
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|c| c.is_file())
    })
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm_then_kill(child: &mut Child, name: &str) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{name} ignored SIGTERM; killing pid {}", child.id());
    let _ = child.kill();
    let _ = child.wait();
}

/// A teleportd process on `socket` with state under `root`.
pub struct Teleportd {
    child: Option<Child>,
    pub socket: PathBuf,
    pub root: PathBuf,
    log: PathBuf,
}

impl Teleportd {
    pub fn start(root: &Path, socket: &Path, log: &Path) -> Teleportd {
        Self::start_with(root, socket, log, &[])
    }

    pub fn start_with(root: &Path, socket: &Path, log: &Path, extra: &[&str]) -> Teleportd {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_teleportd"));
        cmd.arg("--root")
            .arg(root)
            .arg("--address")
            .arg(socket)
            // The tests' registries speak plain http.
            .arg("--insecure-registry")
            .args(extra);
        Self::spawn(cmd, root, socket, log)
    }

    /// Runs `cmd` (a teleportd command line) logging to `log`; waits until `socket` accepts.
    pub fn spawn(mut cmd: Command, root: &Path, socket: &Path, log: &Path) -> Teleportd {
        let logf = File::options().create(true).append(true).open(log).unwrap();
        let child = cmd
            .env("RUST_LOG", "fuse_mount=debug,info")
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let mut t = Teleportd {
            child: Some(child),
            socket: socket.to_owned(),
            root: root.to_owned(),
            log: log.to_owned(),
        };
        wait_for("teleportd socket", Duration::from_secs(20), || {
            if let Some(Ok(Some(st))) = t.child.as_mut().map(|c| c.try_wait()) {
                panic!("teleportd exited early with {st}: {}", t.log_text());
            }
            UnixStream::connect(socket).ok()
        });
        t
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL and reap: the crash path (nothing of teleportd's own shutdown runs).
    pub fn kill(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap()
    }

    /// SIGTERM and wait: the graceful path.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        wait_for("teleportd exit", Duration::from_secs(15), || {
            c.try_wait().unwrap()
        })
    }
}

impl Drop for Teleportd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigterm_then_kill(&mut c, "teleportd");
        }
    }
}

/// A private containerd under `dir` whose only extra snapshotter is teleportd on `snap_socket`.
pub struct Containerd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub address: PathBuf,
    pub namespace: String,
}

impl Containerd {
    pub fn start(dir: &Path, snap_socket: &Path) -> Containerd {
        Self::start_with(dir, snap_socket, None)
    }

    /// With `cri_registry = Some(host:port)`: the CRI plugin on, teleportd its snapshotter with
    /// snapshot annotations (the labels the remote path reads), and a plain-HTTP mirror for host.
    pub fn start_with(dir: &Path, snap_socket: &Path, cri_registry: Option<&str>) -> Containerd {
        fs::create_dir_all(dir).unwrap();
        let address = dir.join("containerd.sock");
        let version = Version::detect(&containerd_bin("containerd")).unwrap();
        let mut disabled: Vec<String> = [
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper",
        ]
        .map(String::from)
        .to_vec();
        if cri_registry.is_none() {
            disabled.push("io.containerd.grpc.v1.cri".into());
        }
        if let Some(h) = cri_registry {
            let d = dir.join("certs.d").join(h);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("hosts.toml"), containerd_config::hosts_toml(h, None)).unwrap();
        }
        let config = containerd_config::node_config(
            version,
            &NodeSettings {
                root: dir.join("root"),
                state: dir.join("state"),
                address: address.clone(),
                log_level: "debug".into(),
                disabled_plugins: disabled,
                // CRI with teleportd as its snapshotter, snapshot annotations on (the labels
                // the remote path reads), the registry over plain HTTP (hosts.toml).
                cri: cri_registry.map(|_| CriSettings {
                    sandbox_image: "registry.invalid/pause:3.9".into(),
                    snapshotter: containerd_config::SNAPSHOTTER.into(),
                    registry_config_path: Some(dir.join("certs.d")),
                    cni_dir: Some(dir.join("cni")),
                    ..Default::default()
                }),
                proxy_snapshotter: Some(containerd_config::ProxySnapshotter::teleportd(
                    snap_socket,
                )),
                ..Default::default()
            },
        );
        fs::write(dir.join("config.toml"), config).unwrap();
        let log = File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new(containerd_bin("containerd"))
            .env("PATH", path_with_containerd_dir())
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut c = Containerd {
            child: Some(child),
            dir: dir.to_owned(),
            address,
            // Unique per instance: runc state dirs are keyed by namespace.
            namespace: format!(
                "tpe2e-{}",
                std::process::id() as u64 * 1000
                    + NEXT_NS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ),
        };
        wait_for("containerd", Duration::from_secs(30), || {
            if let Some(Ok(Some(st))) = c.child.as_mut().map(|c| c.try_wait()) {
                panic!("containerd exited early with {st}: {}", c.log_text());
            }
            c.ctr_raw(&["version"]).status.success().then_some(())
        });
        // The server is the containerd under test (TB_CONTAINERD_BIN honoured end to end).
        let out = c.ctr(&["version"]);
        let server = out
            .split("Server:")
            .nth(1)
            .and_then(|s| s.lines().find_map(|l| l.trim().strip_prefix("Version:")))
            .map(str::trim)
            .unwrap_or_default();
        assert_eq!(
            server.parse::<Version>().ok(),
            Some(version),
            "ctr version: {out}"
        );
        c
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr_raw(&self, args: &[&str]) -> Output {
        Command::new(containerd_bin("ctr"))
            .arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs ctr and returns stdout; panics with stderr and the containerd log on failure.
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = self.ctr_raw(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\nstdout: {}\n--- containerd log tail ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            tail(&self.log_text(), 40)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Shims outlive containerd: find ours by our unique socket path in their command line.
    fn our_shims(&self) -> Vec<i32> {
        let needle = self.address.display().to_string();
        let mut pids = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("containerd-shim") && cmd.contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Best effort: tasks left by a failed test.
        let tasks = self.ctr_raw(&["tasks", "ls", "-q"]);
        for t in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr_raw(&["tasks", "kill", "-s", "SIGKILL", t]);
            let _ = self.ctr_raw(&["tasks", "rm", "-f", t]);
        }
        let shims = self.our_shims();
        if let Some(mut c) = self.child.take() {
            sigterm_then_kill(&mut c, "containerd");
        }
        for pid in shims {
            // SAFETY: pids of shims our containerd started (matched by our socket path).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Mount points at or under `dir` in this mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|mp| mp == &dir || mp.starts_with(&format!("{dir}/")))
        .collect()
}

/// Test temp dir that, on drop, lazily unmounts anything still mounted under it.
pub struct TestDir(pub tempfile::TempDir);

impl TestDir {
    pub fn new() -> TestDir {
        // Short path: overlay options and socket paths must stay small.
        TestDir(
            tempfile::Builder::new()
                .prefix("tpd")
                .tempdir_in("/tmp")
                .unwrap(),
        )
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let mut left = mounts_under(self.path());
        left.reverse();
        for mp in left {
            eprintln!("unmounting leftover {mp}");
            let _ = Command::new("umount").arg("-l").arg(&mp).status();
        }
    }
}

// ---- a tiny OCI image --------------------------------------------------------------------------

pub enum Node<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Returns (gzip blob, uncompressed tar) for the nodes.
pub fn layer(nodes: &[Node<'_>]) -> (Vec<u8>, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    for n in nodes {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match n {
            Node::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                h.set_mode(*mode);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Node::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Node::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    let tar = b.into_inner().unwrap();
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), tar)
}

/// Writes an OCI image-layout tar (for `ctr images import`) with `layers` and the reference
/// `name` (annotation `io.containerd.image.name`).
pub fn oci_archive(path: &Path, name: &str, layers: &[(Vec<u8>, Vec<u8>)]) {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |bytes: Vec<u8>| -> (String, usize) {
        let d = format!("sha256:{}", sha256_hex(&bytes));
        let n = bytes.len();
        blobs.push((d.clone(), bytes));
        (d, n)
    };
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|(_, tar)| format!("sha256:{}", sha256_hex(tar)))
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/busybox", "sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cd, cs) = add(serde_json::to_vec(&config).unwrap());
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|(gz, _)| {
            let (d, s) = add(gz.clone());
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s})
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layer_descs,
    });
    let (md, ms) = add(serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": ms,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "1"},
        }],
    });
    let mut t = tar::Builder::new(File::create(path).unwrap());
    let mut put = |p: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        t.append_data(&mut h, p, data).unwrap();
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    put("index.json", &serde_json::to_vec(&index).unwrap());
    for (d, bytes) in &blobs {
        put(
            &format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
            bytes,
        );
    }
    t.finish().unwrap();
}

/// The two-layer test image: busybox + files in layer 1; layer 2 overwrites one file, adds one,
/// whites one out and makes a directory opaque.
pub fn test_image(path: &Path, name: &str) {
    let busybox = fs::read(BUSYBOX).unwrap();
    let l1 = layer(&[
        Node::Dir("bin"),
        Node::File("bin/busybox", &busybox, 0o755),
        Node::Symlink("bin/sh", "busybox"),
        Node::Dir("etc"),
        Node::File("etc/hello.txt", b"hello from layer one\n", 0o644),
        Node::Dir("data"),
        Node::File("data/keep.txt", b"kept\n", 0o644),
        Node::File("data/gone.txt", b"should be whited out\n", 0o644),
        Node::Dir("data/opaque"),
        Node::File("data/opaque/old.txt", b"hidden by opaque\n", 0o644),
    ]);
    let l2 = layer(&[
        Node::Dir("etc"),
        Node::File("etc/hello.txt", b"hello from layer two\n", 0o644),
        Node::Dir("data"),
        Node::File("data/.wh.gone.txt", b"", 0o644),
        Node::File("data/new.txt", b"added in layer two\n", 0o644),
        Node::Dir("data/opaque"),
        Node::File("data/opaque/.wh..wh..opq", b"", 0o644),
        Node::File("data/opaque/fresh.txt", b"fresh\n", 0o644),
    ]);
    oci_archive(path, name, &[l1, l2]);
}

/// Shell command listing the image's tree and file hashes inside a container.
pub const TREE_CMD: &str = "cd / && /bin/busybox find bin etc data | /bin/busybox sort && /bin/busybox find bin etc data -type f | /bin/busybox sort | /bin/busybox xargs /bin/busybox sha256sum";

/// What [`TREE_CMD`] must print for [`test_image`]: layer 2 over layer 1 with the whiteout and
/// the opaque directory applied.
pub fn expected_tree() -> String {
    let paths = [
        "bin",
        "bin/busybox",
        "bin/sh",
        "data",
        "data/keep.txt",
        "data/new.txt",
        "data/opaque",
        "data/opaque/fresh.txt",
        "etc",
        "etc/hello.txt",
    ];
    let busybox = fs::read(BUSYBOX).unwrap();
    let files: [(&str, &[u8]); 5] = [
        ("bin/busybox", &busybox),
        ("data/keep.txt", b"kept\n"),
        ("data/new.txt", b"added in layer two\n"),
        ("data/opaque/fresh.txt", b"fresh\n"),
        ("etc/hello.txt", b"hello from layer two\n"),
    ];
    let mut out = String::new();
    for p in paths {
        out.push_str(p);
        out.push('\n');
    }
    for (p, data) in files {
        out.push_str(&format!("{}  {p}\n", sha256_hex(data)));
    }
    out
}
