//! Interop with real clients: skopeo (push, cross-repo copy, pull, credentials), containerd's
//! `ctr` (plain-HTTP pull, with and without credentials, against a private containerd), our
//! own `fixtures` pusher, and the Teleport flow through the real `registry-mock check-expansion`
//! binary. The image is a scaled `azure-vote-front` fixture (29 layers with whiteouts, an
//! opaque dir and overrides).
//!
//! Prerequisites (skopeo, containerd + ctr, root for containerd) fail the test when CI=true and
//! skip it with a printed reason otherwise.

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use testkit::{Containerd, Need};

use fixtures::{profile, BuildOptions, ImageInfo, PushOptions, Reference};
use registry_mock::{Config, Registry};
use tokio::process::Command;

const USER: &str = "alice";
const PASS: &str = "s3cret-pass";

/// The scaled fixture, built once per test binary under the target's tmp dir.
fn image() -> &'static (PathBuf, ImageInfo) {
    static IMAGE: OnceLock<(PathBuf, ImageInfo)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("interop-avf-0.01");
        let mut o = BuildOptions::new(profile::by_name("azure-vote-front").expect("profile"));
        o.scale = 0.01;
        o.tag = "v1".into();
        let info = fixtures::build(&o, &dir).expect("build fixture");
        (dir, info)
    })
}

struct Reg {
    reg: Option<Registry>,
    _root: tempfile::TempDir,
}

impl Reg {
    async fn start(auth: bool, teleport: &[&str]) -> Reg {
        let root = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(root.path().join("store"));
        if auth {
            cfg.users = vec![(USER.into(), PASS.into())];
            cfg.anonymous_pull = false;
        }
        cfg.teleport_repos = teleport.iter().map(|s| s.to_string()).collect();
        let reg = registry_mock::start(cfg).await.unwrap();
        Reg {
            reg: Some(reg),
            _root: root,
        }
    }
    fn host(&self) -> String {
        self.reg.as_ref().unwrap().addr().to_string()
    }
    fn url(&self) -> String {
        self.reg.as_ref().unwrap().url()
    }
    async fn stop(mut self) {
        if let Some(r) = self.reg.take() {
            r.shutdown().await.unwrap();
        }
    }
}

async fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        eprintln!(
            "{cmd:?} -> {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    // Our own policy: accept anything (the system policy file is not ours to depend on).
    c.arg("--insecure-policy");
    c
}

fn oci_ref(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

async fn raw_manifest_digest(host: &str, repo_tag: &str, creds: Option<&str>) -> String {
    let mut c = skopeo();
    c.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some(cr) = creds {
        c.args(["--creds", cr]);
    }
    let out = run(c.arg(format!("docker://{host}/{repo_tag}"))).await;
    assert!(out.status.success(), "skopeo inspect --raw {repo_tag}");
    emulator::Digest::sha256_of(&out.stdout).to_string()
}

fn layout_manifest(dir: &Path, tag: &str) -> (String, Vec<String>) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("tag {tag} not in {index}"));
    let digest = m["digest"].as_str().unwrap().to_string();
    let d: emulator::Digest = digest.parse().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures::image::blob_path(dir, &d)).unwrap())
            .unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    (digest, layers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_push_copy_pull_roundtrip() {
    if !testkit::require(&[Need::Skopeo]) {
        return;
    }
    let (dir, info) = image();
    let reg = Reg::start(false, &[]).await;
    let host = reg.host();
    let want_layers: Vec<String> = info.layers.iter().map(|l| l.digest.to_string()).collect();

    let out = run(skopeo()
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(oci_ref(dir, "v1"))
        .arg(format!("docker://{host}/interop/a:1")))
    .await;
    assert!(out.status.success(), "skopeo push");
    assert_eq!(
        raw_manifest_digest(&host, "interop/a:1", None).await,
        info.manifest_digest.to_string()
    );

    // Registry-to-registry copy between repositories (blobs come by cross-repo mount or upload).
    let out = run(skopeo()
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("docker://{host}/interop/a:1"))
        .arg(format!("docker://{host}/interop/b:1")))
    .await;
    assert!(out.status.success(), "skopeo copy a -> b");
    assert_eq!(
        raw_manifest_digest(&host, "interop/b:1", None).await,
        info.manifest_digest.to_string()
    );

    // Pull back into a fresh layout: same manifest, same layers, byte for byte.
    let t = tempfile::tempdir().unwrap();
    let back = t.path().join("back");
    let out = run(skopeo()
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{host}/interop/b:1"))
        .arg(oci_ref(&back, "pulled")))
    .await;
    assert!(out.status.success(), "skopeo pull");
    let (digest, layers) = layout_manifest(&back, "pulled");
    assert_eq!(digest, info.manifest_digest.to_string());
    assert_eq!(layers, want_layers);
    for l in &info.layers {
        let a = std::fs::read(fixtures::image::blob_path(dir, &l.digest)).unwrap();
        let b = std::fs::read(fixtures::image::blob_path(&back, &l.digest)).unwrap();
        assert!(a == b, "layer {} differs after the round trip", l.digest);
    }

    // Our own pusher: same digest; a second push finds every blob and uploads nothing.
    let target: Reference = format!("{host}/interop/c:1").parse().unwrap();
    let r = fixtures::push(&PushOptions::new(dir, target.clone()))
        .await
        .unwrap();
    assert_eq!(r.manifest_digest, info.manifest_digest);
    assert_eq!(r.uploaded, info.layers.len() + 1);
    let again = fixtures::push(&PushOptions::new(dir, target))
        .await
        .unwrap();
    assert_eq!((again.uploaded, again.skipped), (0, info.layers.len() + 1));
    assert_eq!(
        raw_manifest_digest(&host, "interop/c:1", None).await,
        info.manifest_digest.to_string()
    );
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_pusher_with_credentials() {
    if !testkit::require(&[Need::Skopeo]) {
        return;
    }
    let (dir, info) = image();
    let reg = Reg::start(true, &[]).await;
    let host = reg.host();
    let creds = format!("{USER}:{PASS}");

    let anon = run(skopeo()
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(oci_ref(dir, "v1"))
        .arg(format!("docker://{host}/secure/app:1")))
    .await;
    assert!(!anon.status.success(), "anonymous push must be refused");
    let bad = run(skopeo()
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("{USER}:wrong"),
        ])
        .arg(oci_ref(dir, "v1"))
        .arg(format!("docker://{host}/secure/app:1")))
    .await;
    assert!(!bad.status.success(), "wrong password must be refused");
    let ok = run(skopeo()
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
        ])
        .arg(oci_ref(dir, "v1"))
        .arg(format!("docker://{host}/secure/app:1")))
    .await;
    assert!(ok.status.success(), "push with credentials");
    assert_eq!(
        raw_manifest_digest(&host, "secure/app:1", Some(&creds)).await,
        info.manifest_digest.to_string()
    );
    let mut c = skopeo();
    let anon_pull = run(c
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{host}/secure/app:1")))
    .await;
    assert!(
        !anon_pull.status.success(),
        "anonymous pull must be refused when anonymous_pull=false"
    );

    let mut o = PushOptions::new(dir, format!("{host}/secure/ours:1").parse().unwrap());
    o.user = Some(registry_client::Credentials::new(USER, "wrong"));
    assert!(
        fixtures::push(&o).await.is_err(),
        "pusher with a wrong password must fail"
    );
    o.user = Some(registry_client::Credentials::new(USER, PASS));
    let r = fixtures::push(&o).await.unwrap();
    assert_eq!(r.manifest_digest, info.manifest_digest);
    assert_eq!(
        raw_manifest_digest(&host, "secure/ours:1", Some(&creds)).await,
        info.manifest_digest.to_string()
    );
    reg.stop().await;
}

/// A private containerd (own root, state, sockets; CRI off) stopped by PID in Drop, with any
/// mount it left under its directory unmounted.
/// `ctr` against the test kit's containerd, as a tokio command (the registry serves from this
/// runtime meanwhile).
fn ctr(ctrd: &Containerd) -> Command {
    Command::from(ctrd.ctr_command())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_plain_http_with_and_without_credentials() {
    if !testkit::require(&[Need::Skopeo, Need::Containerd, Need::Root]) {
        return;
    }
    let (dir, info) = image();
    let t = testkit::TestDir::new();
    let ctrd = Containerd::plain(&t.path().join("ctrd"));

    // Anonymous registry.
    let open = Reg::start(false, &[]).await;
    let r = fixtures::push(&PushOptions::new(
        dir,
        format!("{}/ctr/open:1", open.host()).parse().unwrap(),
    ))
    .await
    .unwrap();
    assert_eq!(r.manifest_digest, info.manifest_digest);
    let image_ref = format!("{}/ctr/open:1", open.host());
    let out = run(ctr(&ctrd)
        .args(["images", "pull", "--plain-http"])
        .arg(&image_ref))
    .await;
    assert!(out.status.success(), "ctr pull (anonymous)");
    assert_listed(&ctrd, &image_ref, &info.manifest_digest.to_string()).await;

    // Auth-enabled registry: containerd first POSTs an OAuth2 password grant to the realm.
    let secure = Reg::start(true, &[]).await;
    let mut o = PushOptions::new(
        dir,
        format!("{}/ctr/secure:1", secure.host()).parse().unwrap(),
    );
    o.user = Some(registry_client::Credentials::new(USER, PASS));
    fixtures::push(&o).await.unwrap();
    let image_ref = format!("{}/ctr/secure:1", secure.host());
    let anon = run(ctr(&ctrd)
        .args(["images", "pull", "--plain-http"])
        .arg(&image_ref))
    .await;
    assert!(!anon.status.success(), "anonymous ctr pull must be refused");
    let out = run(ctr(&ctrd)
        .args([
            "images",
            "pull",
            "--plain-http",
            "--user",
            &format!("{USER}:{PASS}"),
        ])
        .arg(&image_ref))
    .await;
    assert!(out.status.success(), "ctr pull --user");
    assert_listed(&ctrd, &image_ref, &info.manifest_digest.to_string()).await;

    open.stop().await;
    secure.stop().await;
    drop(ctrd);
}

async fn assert_listed(ctrd: &Containerd, image_ref: &str, digest: &str) {
    let out = run(ctr(ctrd).args(["images", "ls"])).await;
    assert!(out.status.success());
    let ls = String::from_utf8_lossy(&out.stdout);
    let line = ls
        .lines()
        .find(|l| l.split_whitespace().next() == Some(image_ref))
        .unwrap_or_else(|| panic!("{image_ref} not in ctr images ls:\n{ls}"));
    assert!(
        line.split_whitespace().any(|f| f == digest),
        "{image_ref} listed without {digest}: {line}"
    );
}

async fn check_expansion(reg: &Reg, repo: &str, tag: &str) -> (bool, String) {
    check_expansion_as(reg, repo, tag, None).await
}

async fn check_expansion_as(
    reg: &Reg,
    repo: &str,
    tag: &str,
    user: Option<&str>,
) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_registry-mock"));
    c.args(["check-expansion", repo, tag, "--registry", &reg.url()]);
    if let Some(u) = user {
        c.args(["--user", u]);
    }
    let out = run(&mut c).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teleport_push_then_check_expansion_cli() {
    if !testkit::require(&[Need::Skopeo]) {
        return;
    }
    let (dir, info) = image();
    let reg = Reg::start(false, &["tp/vote"]).await;
    let host = reg.host();
    for repo in ["tp/vote", "plain/vote"] {
        let out = run(skopeo()
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(oci_ref(dir, "v1"))
            .arg(format!("docker://{host}/{repo}:1")))
        .await;
        assert!(out.status.success(), "skopeo push to {repo}");
    }

    // Expansion runs after the push; poll the CLI until it reports ready.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (ok, stdout) = check_expansion(&reg, "tp/vote", "1").await;
        if stdout.contains("layers ready") {
            assert!(ok, "layers ready must exit 0");
            break;
        }
        assert!(
            stdout.contains("expanding layers"),
            "unexpected check-expansion output: {stdout:?}"
        );
        assert!(Instant::now() < deadline, "expansion never finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mount = reqwest::get(format!(
        "{}/mount/v1/tp/vote/_manifests/{}",
        reg.url(),
        info.manifest_digest
    ))
    .await
    .unwrap();
    assert_eq!(
        mount.status().as_u16(),
        200,
        "/mount/v1 manifest after 'layers ready'"
    );

    let (_, stdout) = check_expansion(&reg, "plain/vote", "1").await;
    assert!(
        stdout.contains("not enabled"),
        "non-teleport repo: {stdout:?}"
    );
    let mount = reqwest::get(format!(
        "{}/mount/v1/plain/vote/_manifests/{}",
        reg.url(),
        info.manifest_digest
    ))
    .await
    .unwrap();
    assert_eq!(mount.status().as_u16(), 404);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teleport_with_credentials_check_expansion_cli() {
    let (dir, info) = image();
    let reg = Reg::start(true, &["tp/secure"]).await;
    let mut o = PushOptions::new(dir, format!("{}/tp/secure:1", reg.host()).parse().unwrap());
    o.user = Some(registry_client::Credentials::new(USER, PASS));
    let r = fixtures::push(&o).await.unwrap();
    assert_eq!(r.manifest_digest, info.manifest_digest);

    let (ok, stdout) = check_expansion(&reg, "tp/secure", "1").await;
    assert!(
        !ok && !stdout.contains("layers ready"),
        "check-expansion without credentials must fail: {stdout:?}"
    );
    let creds = format!("{USER}:{PASS}");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (ok, stdout) = check_expansion_as(&reg, "tp/secure", "1", Some(&creds)).await;
        if stdout.contains("layers ready") {
            assert!(ok, "layers ready must exit 0");
            break;
        }
        assert!(
            stdout.contains("expanding layers"),
            "unexpected check-expansion output: {stdout:?}"
        );
        assert!(Instant::now() < deadline, "expansion never finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The /mount API with a pull token from the token endpoint.
    let http = reqwest::Client::new();
    let tok: serde_json::Value = http
        .get(format!("{}/oauth2/token", reg.url()))
        .query(&[
            ("service", reg.host().as_str()),
            ("scope", "repository:tp/secure:pull"),
        ])
        .basic_auth(USER, Some(PASS))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tok["access_token"]
        .as_str()
        .or(tok["token"].as_str())
        .unwrap();
    let url = format!(
        "{}/mount/v1/tp/secure/_manifests/{}",
        reg.url(),
        info.manifest_digest
    );
    let anon = http.get(&url).send().await.unwrap();
    assert_eq!(anon.status().as_u16(), 401);
    let mount = http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(mount.status().as_u16(), 200);
    reg.stop().await;
}
