//! A registry for a test: registry-mock in-process ([`TestRegistry`]) or the real binary
//! ([`RegistryProcess`], SIGKILLed and reaped on drop, its peak RSS readable), and pushing to
//! it over real HTTP — blobs, manifests, whole images — or with skopeo from an OCI archive.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use emulator::Digest;
use registry_mock::{Config, Registry};
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{json, Value};

use crate::bins::bin;
use crate::wait::wait_for;

// The media types are emulator's (one place); the short names read better in tests.
pub use emulator::oci::{
    MT_OCI_CONFIG as MT_CONFIG, MT_OCI_INDEX as MT_INDEX, MT_OCI_LAYER_GZIP as MT_LAYER,
    MT_OCI_MANIFEST as MT_MANIFEST,
};

/// Tracing to the test's output, filtered by `RUST_LOG` (idempotent).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// registry-mock served in this process on 127.0.0.1:0, its root in a temp dir.
pub struct TestRegistry {
    pub reg: Option<Registry>,
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl TestRegistry {
    pub async fn start() -> TestRegistry {
        Self::start_with(|_| {}).await
    }

    /// With the config adjusted by `f` (two expansion workers unless `f` says otherwise).
    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestRegistry {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(dir.path());
        cfg.expansion_workers = 2;
        f(&mut cfg);
        let reg = registry_mock::start(cfg).await.unwrap();
        let url = reg.url();
        TestRegistry {
            reg: Some(reg),
            dir,
            url,
        }
    }

    pub fn reg(&self) -> &Registry {
        self.reg.as_ref().expect("registry running")
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.reg.take() {
            r.shutdown().await.unwrap();
        }
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `registry-mock serve` binary on a loopback port, its stderr in a temp file;
/// SIGKILLed and reaped on drop, so a failing test leaks no process.
pub struct RegistryProcess {
    child: Child,
    pub port: u16,
    pub url: String,
    pub root: PathBuf,
    log: tempfile::NamedTempFile,
}

impl RegistryProcess {
    pub fn start(root: &Path, extra: &[&str]) -> RegistryProcess {
        Self::start_on(root, free_port(), extra)
    }

    pub fn start_on(root: &Path, port: u16, extra: &[&str]) -> RegistryProcess {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(bin("registry-mock"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--root")
            .arg(root)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut p = RegistryProcess {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
            root: root.to_owned(),
            log,
        };
        wait_for("registry-mock listening", Duration::from_secs(30), || {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("registry-mock exited early with {st}: {}", p.log_text());
            }
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Peak RSS since start (`VmHWM`), KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        crate::process::peak_rss_kib(self.pid())
    }

    /// SIGKILL and reap (the crash path).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the graceful path.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let child = &mut self.child;
        wait_for("registry-mock exit", Duration::from_secs(15), || {
            child.try_wait().unwrap()
        })
    }

    /// Whether the process is still running (not exited, not reaped).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTP client that does not follow redirects (tests look at the registry's own answers).
pub fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn digest(b: &[u8]) -> Digest {
    Digest::sha256_of(b)
}

/// Basic credentials for a push, if the registry has users.
pub type Auth<'a> = Option<(&'a str, &'a str)>;

fn with_auth(r: RequestBuilder, auth: Auth<'_>) -> RequestBuilder {
    match auth {
        Some((u, p)) => r.basic_auth(u, Some(p)),
        None => r,
    }
}

/// Monolithic push (POST ?digest=). Returns the digest.
pub async fn push_blob(c: &Client, url: &str, repo: &str, bytes: &[u8]) -> Digest {
    push_blob_as(c, url, None, repo, bytes).await
}

/// [`push_blob`] with credentials.
pub async fn push_blob_as(
    c: &Client,
    url: &str,
    auth: Auth<'_>,
    repo: &str,
    bytes: &[u8],
) -> Digest {
    let d = digest(bytes);
    let r = with_auth(
        c.post(format!("{url}/v2/{repo}/blobs/uploads/?digest={d}")),
        auth,
    )
    .header("content-type", "application/octet-stream")
    .body(bytes.to_vec())
    .send()
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "blob upload: {}",
        r.text().await.unwrap_or_default()
    );
    d
}

pub async fn put_manifest(
    c: &Client,
    url: &str,
    repo: &str,
    reference: &str,
    mt: &str,
    body: &[u8],
) -> reqwest::Response {
    put_manifest_as(c, url, None, repo, reference, mt, body).await
}

/// [`put_manifest`] with credentials.
pub async fn put_manifest_as(
    c: &Client,
    url: &str,
    auth: Auth<'_>,
    repo: &str,
    reference: &str,
    mt: &str,
    body: &[u8],
) -> reqwest::Response {
    with_auth(
        c.put(format!("{url}/v2/{repo}/manifests/{reference}")),
        auth,
    )
    .header("content-type", mt)
    .body(body.to_vec())
    .send()
    .await
    .unwrap()
}

/// Uncompressed tar digest (the diff id) of a gzip layer.
pub fn diff_id(gz: &[u8]) -> Digest {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .unwrap();
    digest(&raw)
}

/// What [`push_image`] pushed.
pub struct Pushed {
    pub manifest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub config: Digest,
    pub layers: Vec<(Digest, u64)>,
}

/// The image config and manifest of gzip `layers` whose config digest and size are known.
pub fn image_manifest(config: (&Digest, usize), layers: &[(Digest, u64)]) -> Vec<u8> {
    let descs: Vec<Value> = layers
        .iter()
        .map(|(d, s)| json!({"mediaType": MT_LAYER, "digest": d.as_str(), "size": s}))
        .collect();
    serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":MT_MANIFEST,
        "config":{"mediaType":MT_CONFIG,"digest":config.0.as_str(),"size":config.1},
        "layers":descs}))
    .unwrap()
}

/// The config of gzip `layers` (a layer that is not gzip gets its own digest as diff id, so a
/// deliberately corrupt layer still pushes).
pub fn image_config(layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| {
            let mut raw = Vec::new();
            match flate2::read::GzDecoder::new(&l[..]).read_to_end(&mut raw) {
                Ok(_) => digest(&raw).to_string(),
                Err(_) => digest(l).to_string(),
            }
        })
        .collect();
    serde_json::to_vec(&json!({"architecture":"amd64","os":"linux",
        "rootfs":{"type":"layers","diff_ids":diff_ids},"config":{}}))
    .unwrap()
}

/// Push an OCI image (config + gzip layers + manifest under `tag`).
pub async fn push_image(
    c: &Client,
    url: &str,
    repo: &str,
    tag: &str,
    layers: &[Vec<u8>],
) -> Pushed {
    push_image_as(c, url, None, repo, tag, layers).await
}

/// [`push_image`] with credentials.
pub async fn push_image_as(
    c: &Client,
    url: &str,
    auth: Auth<'_>,
    repo: &str,
    tag: &str,
    layers: &[Vec<u8>],
) -> Pushed {
    let config_bytes = image_config(layers);
    let cd = push_blob_as(c, url, auth, repo, &config_bytes).await;
    let mut out_layers = Vec::new();
    for l in layers {
        let d = push_blob_as(c, url, auth, repo, l).await;
        out_layers.push((d, l.len() as u64));
    }
    let mb = image_manifest((&cd, config_bytes.len()), &out_layers);
    let r = put_manifest_as(c, url, auth, repo, tag, MT_MANIFEST, &mb).await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "manifest put: {}",
        r.text().await.unwrap_or_default()
    );
    Pushed {
        manifest: digest(&mb),
        manifest_bytes: mb,
        config: cd,
        layers: out_layers,
    }
}

/// The `code` of the first OCI error in a response body.
pub async fn error_code(r: reqwest::Response) -> String {
    let v: Value = r.json().await.unwrap();
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A Prometheus sample (`name{labels}` as `line_prefix`) from `/metrics`, 0 when absent.
pub async fn metric(c: &Client, url: &str, line_prefix: &str) -> u64 {
    let text = c
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(line_prefix) && l[line_prefix.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

/// Copies the OCI archive `archive` (tag `1`) to `docker://DEST` (`host:port/repo:tag`, plain
/// HTTP) with skopeo; returns the pushed manifest's digest.
pub fn skopeo_push(archive: &Path, dest: &str) -> Digest {
    skopeo_push_with(archive, dest, &[])
}

/// [`skopeo_push`] with extra skopeo `copy` arguments (`--dest-creds`, …).
pub fn skopeo_push_with(archive: &Path, dest: &str, extra: &[&str]) -> Digest {
    // Unique per call: pushes of one archive may run at once.
    let digest_file =
        tempfile::NamedTempFile::new_in(archive.parent().unwrap_or(Path::new("/tmp")))
            .unwrap()
            .into_temp_path();
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .args(extra)
        .arg("--digestfile")
        .arg(&digest_file)
        .arg(format!("oci-archive:{}:1", archive.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy to {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&digest_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// An in-process registry (config adjusted by `f`) with the two-layer test image pushed to
/// `repo:1` by skopeo; returns the registry and the manifest digest. `dir` holds the registry's
/// root and the archive.
pub async fn registry_with_test_image(
    dir: &Path,
    repo: &str,
    f: impl FnOnce(&mut Config),
) -> (Registry, Digest) {
    let mut cfg = Config::new(dir.join("reg"));
    f(&mut cfg);
    let reg = registry_mock::start(cfg).await.unwrap();
    let archive = dir.join("image.tar");
    crate::image::test_image(&archive, "unused.test/app:1");
    let dest = format!("{}/{repo}:1", reg.addr());
    let d = tokio::task::spawn_blocking(move || skopeo_push(&archive, &dest))
        .await
        .unwrap();
    (reg, d)
}

/// [`TestRegistry::start`].
pub async fn start() -> TestRegistry {
    TestRegistry::start().await
}

/// [`TestRegistry::start_with`].
pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestRegistry {
    TestRegistry::start_with(f).await
}

// What registry tests use beside the registry, so `use testkit::registry::*` is enough.
pub use crate::image::{gzip_tar, random_bytes};
pub use crate::wait::poll_until;
