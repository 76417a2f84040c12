//! A SOCI node (containerd + soci-snapshotter-grpc in its own mount namespace) pulls a fixture
//! from a TLS registry-mock after its SOCI index was built on a helper containerd and pushed
//! (found through the referrers API), runs it to ready with the working-set hash checked, and
//! the registry's /metrics show the layers were read lazily (ranges), not downloaded whole.
//!
//! Needs `out/peers/soci` (`bash scripts/get-peers.sh soci`); with `TB_PEERS=1` the test runs
//! that script itself, otherwise it is skipped with a message.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use testbed::bed::{self, Variant};
use testbed::cri::PodSpec;
use testbed::events::Events;
use testbed::metrics;
use testbed::node::{Node, NodeConfig, NodeKind};
use testbed::peers::soci::{self, IndexOptions, SociBins, SociConfig, SociNode};
use testbed::pod::{run_pod, ReadyProbe, RunOptions};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The SOCI binaries, fetched when TB_PEERS=1; `None` (skip) when absent.
#[allow(clippy::unwrap_used)] // test helper: a failure is the test's failure
fn soci_bins() -> Option<SociBins> {
    let dir = workspace().join(soci::PEER_DIR);
    if !dir.exists() && std::env::var("TB_PEERS").as_deref() == Ok("1") {
        let st = std::process::Command::new("bash")
            .arg(workspace().join("scripts/get-peers.sh"))
            .arg("soci")
            .status()
            .unwrap();
        assert!(st.success(), "scripts/get-peers.sh soci failed");
    }
    match SociBins::in_peer_dir(&dir) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("SKIP: {e} (or set TB_PEERS=1)");
            None
        }
    }
}

#[allow(clippy::unwrap_used)] // test helper
async fn skopeo_push(layout: &Path, tag: &str, dest: &str, cert_dir: &Path) {
    let out = tokio::process::Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet", "--dest-cert-dir"])
        .arg(cert_dir)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo push {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/metrics` over HTTPS (the testbed's HTTP client is built without TLS).
#[allow(clippy::unwrap_used)] // test helper
async fn scrape(url: &str, ca: &Path) -> metrics::Scrape {
    let out = tokio::process::Command::new("curl")
        .args(["-sSf", "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    metrics::parse(&String::from_utf8_lossy(&out.stdout))
}

/// Total size of the zTOCs of the SOCI index that refers to `subject` (via referrers).
#[allow(clippy::unwrap_used)] // test helper
async fn ztoc_bytes(base: &str, subject: &str, ca: &Path) -> u64 {
    let get = |url: String| async move {
        let out = tokio::process::Command::new("curl")
            .args([
                "-sSf",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                "--cacert",
            ])
            .arg(ca)
            .arg(&url)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "curl {url}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let repo = "soci/avf";
    let refs = get(format!("{base}/v2/{repo}/referrers/{subject}")).await;
    let indexes = refs["manifests"].as_array().unwrap();
    assert_eq!(
        indexes.len(),
        1,
        "one SOCI index refers to the image: {refs}"
    );
    let d = indexes[0]["digest"].as_str().unwrap();
    let index = get(format!("{base}/v2/{repo}/manifests/{d}")).await;
    index["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::unwrap_used)]
async fn soci_node_pulls_lazily_from_tls_registry() {
    if !common::prerequisites() {
        return;
    }
    let Some(bins) = soci_bins() else {
        return;
    };
    common::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("fixtures");
    let fx = bed::fixture(
        &cache,
        "azure-vote-front",
        0.05,
        Some(Variant::Squashed),
        false,
    )
    .await
    .unwrap();
    let pause = bed::fixture(&cache, "pause", 1.0, None, false)
        .await
        .unwrap();

    // The registry, serving TLS with a CA generated for this run, on loopback; SOCI and the
    // containerds reach it as REGISTRY_HOST (a private hosts file maps it to 127.0.0.1), which
    // they treat as HTTPS, unlike a loopback literal. skopeo and curl use 127.0.0.1 directly.
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = certs.join("ca.crt");
    let tls = registry_mock::tls::Tls::self_signed_for(&[soci::REGISTRY_HOST.to_string()]).unwrap();
    std::fs::write(&ca, tls.ca_pem.as_deref().unwrap()).unwrap();
    let mut rc = registry_mock::Config::new(tmp.path().join("registry"));
    rc.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    rc.tls = Some(tls);
    let registry = registry_mock::start(rc).await.unwrap();
    let hosts = tmp.path().join("hosts");
    soci::write_hosts_file(&hosts, soci::REGISTRY_HOST, registry.addr().ip()).unwrap();
    let port = registry.addr().port();
    let host = format!("{}:{port}", soci::REGISTRY_HOST);
    let pause_path = format!("{}:{}", bed::PAUSE_REPO, pause.info.tag);
    let image_path = format!("soci/avf:{}", fx.info.tag);
    let (pause_ref, image_ref) = (
        format!("{host}/{pause_path}"),
        format!("{host}/{image_path}"),
    );
    // The registry keys nothing on the host part: what skopeo pushes by 127.0.0.1 is what the
    // nodes pull by name.
    let local = registry.addr().to_string();
    skopeo_push(
        &pause.layout,
        &pause.info.tag,
        &format!("{local}/{pause_path}"),
        &certs,
    )
    .await;
    skopeo_push(
        &fx.layout,
        &fx.info.tag,
        &format!("{local}/{image_path}"),
        &certs,
    )
    .await;

    // The SOCI index, built on a helper containerd (in a namespace with the same hosts file)
    // and pushed to the registry.
    let helper_ns = soci::MountNs::create(
        &tmp.path().join("helper-ns/ns"),
        &tmp.path().join("helper-ns/var-lib"),
        Some(&hosts),
    )
    .unwrap();
    let mut hc = NodeConfig::new("soci-helper", &tmp.path().join("helper"), NodeKind::Shuttle);
    hc.sandbox_image = pause_ref.clone();
    hc.registries = vec![host.clone()];
    hc.registry_ca = Some(ca.clone());
    hc.command_prefix = helper_ns.prefix();
    let helper = Node::start(hc).await.unwrap();
    let opts = IndexOptions {
        min_layer_size: 0,
        span_size: 256 << 10,
    };
    let built = soci::build_index(
        &bins,
        &helper,
        &image_ref,
        opts,
        &ca,
        Some(&hosts),
        &tmp.path().join("index"),
    )
    .await
    .unwrap();
    eprintln!(
        "soci create:\n{}\nsoci push:\n{}\nsoci index list:\n{}",
        built.create, built.push, built.list
    );
    helper.destroy().await.unwrap();
    drop(helper_ns);

    // The SOCI node; background fetch off so the bytes counted are the start's own.
    let dir = tmp.path().join("soci-node");
    let mut sc = SociConfig::new("soci", &dir, bins, &host, &ca);
    sc.hosts = Some(hosts.clone());
    sc.sandbox_image = pause_ref.clone();
    sc.background_fetch = false;
    let node = SociNode::start(sc).await.unwrap();
    node.node().cri().pull_image(&pause_ref).await.unwrap();

    let murl = format!("{}/metrics", registry.url());
    let before = scrape(&murl, &ca).await;
    let ws = fx.info.working_set.clone().unwrap();
    let spec = PodSpec {
        name: "app".into(),
        image: image_ref.clone(),
        env: vec![("TB_WORKING_SET".into(), ws.fraction.to_string())],
        log_dir: node.node().paths().pods.join("app"),
        cgroup_parent: node.node().cgroup_parent(),
        command: None,
        args: None,
    };
    let ro = RunOptions {
        expected_hash: Some(ws.hash.clone()),
        ready_timeout: Duration::from_secs(180),
        teardown: true,
        probe: ReadyProbe::Fixture,
    };
    let t = run_pod(node.node(), &spec, &ro, &Events::new("soci", "app", None))
        .await
        .unwrap();
    assert_eq!(
        t.ready.as_ref().map(|r| r.hash.as_str()),
        Some(ws.hash.as_str())
    );
    let after = scrape(&murl, &ca).await;
    let served = metrics::Served::between(&before, &after);
    // The zTOCs (layers of the SOCI index, a referrer) are served as artifact blobs; their
    // sizes come from the index found through the referrers API.
    let ztocs = ztoc_bytes(&registry.url(), &fx.info.manifest_digest.to_string(), &ca).await;
    let artifact = after.served("artifact_blob") - before.served("artifact_blob");
    assert_eq!(artifact, ztocs, "zTOC bytes served");
    let image_layer_bytes = served.layer_blob;
    let log = std::fs::read_to_string(node.soci_log()).unwrap_or_default();
    eprintln!(
        "SOCI served {served:?} of {} compressed; soci log tail:\n{}",
        fx.info.total_compressed,
        log.lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Lazy: the one layer (above min-layer-size 0) was read by ranges, not downloaded whole.
    eprintln!("image layer bytes fetched: {image_layer_bytes} (zTOCs {ztocs})");
    assert!(
        image_layer_bytes < fx.info.total_compressed,
        "SOCI downloaded the layers whole: {image_layer_bytes} (zTOCs {ztocs}) vs {}",
        fx.info.total_compressed
    );
    assert!(image_layer_bytes > 0, "no layer bytes at all: {served:?}");

    // Recycle: a new SOCI (and namespace) and containerd, nothing learned is kept.
    let (old_soci, old_containerd) = (
        node.soci_pid().unwrap(),
        node.node().containerd_pid().unwrap(),
    );
    let mut node = node;
    node.recycle().await.unwrap();
    for pid in [old_soci, old_containerd] {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} survived recycle"
        );
    }
    assert!(
        node.node().cri().list_images().await.unwrap().is_empty(),
        "recycle kept images"
    );
    // SOCI's fixed /var/lib path landed in the node's private directory.
    assert!(dir.join("soci/var-lib/soci-snapshotter-grpc").is_dir());
    let snapshots = dir.join("soci/root/snapshotter/snapshots");
    assert!(
        !snapshots.exists() || std::fs::read_dir(&snapshots).unwrap().count() == 0,
        "recycle kept SOCI snapshots"
    );

    node.destroy().await.unwrap();
    assert!(common::mounts_under(&dir).is_empty());
    assert!(testkit::processes_mentioning(&dir).is_empty());
    assert!(common::mounts_under(tmp.path()).is_empty());
    registry.shutdown().await.unwrap();
}
