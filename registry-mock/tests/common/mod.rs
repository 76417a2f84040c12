//! Shared helpers for registry-mock integration tests: an in-process registry on 127.0.0.1:0,
//! pushes over real HTTP, and gzip tar layers built on the fly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use emulator::Digest;
use registry_mock::{Config, Registry};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub struct TestRegistry {
    pub reg: Option<Registry>,
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl TestRegistry {
    pub fn reg(&self) -> &Registry {
        self.reg.as_ref().unwrap()
    }
    pub async fn stop(&mut self) {
        if let Some(r) = self.reg.take() {
            r.shutdown().await.unwrap();
        }
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub async fn start() -> TestRegistry {
    start_with(|_| {}).await
}

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

pub fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn digest(b: &[u8]) -> Digest {
    Digest::sha256_of(b)
}

pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    // Deterministic, cheap, not compressible in any meaningful way for our purposes.
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Monolithic push (POST ?digest=). Returns the digest.
pub async fn push_blob(c: &Client, url: &str, repo: &str, bytes: &[u8]) -> Digest {
    let d = digest(bytes);
    let r = c
        .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
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
    c.put(format!("{url}/v2/{repo}/manifests/{reference}"))
        .header("content-type", mt)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// A gzip-compressed tar with the given regular files.
pub fn gzip_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, *data).unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    gz.finish().unwrap()
}

/// Uncompressed tar digest (the diff id) of a gzip layer.
pub fn diff_id(gz: &[u8]) -> Digest {
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut raw).unwrap();
    digest(&raw)
}

pub struct Pushed {
    pub manifest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub config: Digest,
    pub layers: Vec<(Digest, u64)>,
}

/// Push an OCI image (config + gzip layers + manifest under `tag`).
pub async fn push_image(
    c: &Client,
    url: &str,
    repo: &str,
    tag: &str,
    layers: &[Vec<u8>],
) -> Pushed {
    // A deliberately corrupt layer has no diff id: use its own digest so the push still works.
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| {
            let mut raw = Vec::new();
            match std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&l[..]), &mut raw) {
                Ok(_) => digest(&raw).to_string(),
                Err(_) => digest(l).to_string(),
            }
        })
        .collect();
    let config = json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":diff_ids},"config":{}});
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let cd = push_blob(c, url, repo, &config_bytes).await;
    let mut descs = Vec::new();
    let mut out_layers = Vec::new();
    for l in layers {
        let d = push_blob(c, url, repo, l).await;
        descs.push(json!({"mediaType": MT_LAYER, "digest": d.as_str(), "size": l.len()}));
        out_layers.push((d, l.len() as u64));
    }
    let m = json!({"schemaVersion":2,"mediaType":MT_MANIFEST,
        "config":{"mediaType":MT_CONFIG,"digest":cd.as_str(),"size":config_bytes.len()},
        "layers":descs});
    let mb = serde_json::to_vec(&m).unwrap();
    let r = put_manifest(c, url, repo, tag, MT_MANIFEST, &mb).await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    Pushed {
        manifest: digest(&mb),
        manifest_bytes: mb,
        config: cd,
        layers: out_layers,
    }
}

pub async fn error_code(r: reqwest::Response) -> String {
    let v: Value = r.json().await.unwrap();
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Poll `f` until it returns Some, or panic at the deadline.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

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
