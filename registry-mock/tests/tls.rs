//! HTTPS: skopeo pushes to and reads from a registry serving TLS with a generated CA (trusting
//! it through `--dest-cert-dir`/`--cert-dir`, refused without it), a certificate from PEM files,
//! plain HTTP refused, and the header timeout closing a connection that never says hello.
//!
//! skopeo/curl missing fails the test when CI=true and skips it with a printed reason otherwise.

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use registry_mock::tls::{Tls, TlsArgs};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn require(tool: &str) -> bool {
    let ok = have(tool);
    if !ok {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "CI=true but {tool} is missing");
        eprintln!("SKIP: {tool} not available");
    }
    ok
}

fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    c.arg("--insecure-policy");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_over_tls_trusting_the_generated_ca() {
    if !require("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("certs/ca.crt");
    std::fs::create_dir_all(ca_path.parent().unwrap()).unwrap();
    let args = TlsArgs {
        tls: Some("self-signed".into()),
        tls_ca_out: Some(ca_path.clone()),
        ..TlsArgs::default()
    };
    let tls = args.load().unwrap().expect("tls configured");
    assert!(std::fs::read_to_string(&ca_path)
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let mut reg = testkit::registry::start_with(|c| c.tls = Some(tls)).await;
    assert!(reg.url.starts_with("https://"), "{}", reg.url);
    let host = reg.reg().addr().to_string();

    let layout = dir.path().join("pause");
    let mut o = fixtures::BuildOptions::new(fixtures::profile::by_name("pause").unwrap());
    o.tag = "v1".into();
    let info = fixtures::build(&o, &layout).unwrap();

    let out = skopeo()
        .args(["copy", "--quiet", "--dest-cert-dir"])
        .arg(ca_path.parent().unwrap())
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{host}/tls/pause:v1"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = skopeo()
        .args(["inspect", "--raw", "--cert-dir"])
        .arg(ca_path.parent().unwrap())
        .arg(format!("docker://{host}/tls/pause:v1"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        emulator::Digest::sha256_of(&out.stdout),
        info.manifest_digest
    );

    // Without the CA the certificate is not trusted.
    let out = skopeo()
        .args(["inspect", "--raw"])
        .arg(format!("docker://{host}/tls/pause:v1"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate"), "{err}");

    // A plain-HTTP client gets no answer.
    let plain = testkit::registry::client()
        .get(format!("http://{host}/v2/"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_and_key_from_pem_files() {
    if !require("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let tls = Tls::from_pem_files(&cert_path, &key_path).unwrap();
    assert!(tls.ca_pem.is_none());
    let mut reg = testkit::registry::start_with(|c| c.tls = Some(tls)).await;

    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&cert_path)
        .arg(format!("{}/v2/", reg.url))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    reg.stop().await;
}

#[test]
fn bad_tls_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let half = TlsArgs {
        tls_cert: Some(missing.clone()),
        ..TlsArgs::default()
    };
    assert!(half.load().is_err());
    let both = TlsArgs {
        tls_cert: Some(missing.clone()),
        tls_key: Some(missing.clone()),
        tls: Some("self-signed".into()),
        ..TlsArgs::default()
    };
    assert!(both.load().is_err());
    let err = Tls::from_pem_files(&missing, &missing).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(Tls::from_pem_files(&empty, Path::new(&missing)).is_err());
    assert!(TlsArgs::default().load().unwrap().is_none());
    let name_alone = TlsArgs {
        tls_names: vec!["192.0.2.7".into()],
        ..TlsArgs::default()
    };
    assert!(name_alone.load().is_err());
    let named = TlsArgs {
        tls: Some("self-signed".into()),
        tls_names: vec!["192.0.2.7".into(), "registry.test".into()],
        ..TlsArgs::default()
    };
    assert!(named.load().unwrap().is_some_and(|t| t.ca_pem.is_some()));
}

#[tokio::test]
async fn silent_client_is_dropped_at_the_header_timeout() {
    let tls = Tls::self_signed().unwrap();
    let mut reg = testkit::registry::start_with(|c| {
        c.tls = Some(tls);
        c.limits.header_read_timeout = Duration::from_millis(200);
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(reg.reg().addr())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    // The server closes the connection (EOF or reset) without a handshake ever starting.
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("connection still open long after the header timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    reg.stop().await;
}

/// `Config::tls_listener`: one registry, two doors. An image pushed over plain HTTP is read by
/// range over the HTTPS listener (trusting the generated CA), and the bytes show up in the
/// same `/metrics` counters the plain listener serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tls_listener_serves_the_same_store_and_counters() {
    if !require("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    let tls = Tls::self_signed().unwrap();
    std::fs::write(&ca, tls.ca_pem.as_deref().unwrap()).unwrap();
    let mut reg = testkit::registry::start_with(|c| {
        c.tls_listener = Some(registry_mock::TlsListener {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            tls,
        })
    })
    .await;
    assert!(reg.url.starts_with("http://"), "{}", reg.url);
    let tls_addr = reg.reg().tls_addr().expect("TLS listener bound");
    let c = testkit::registry::client();
    let layer =
        testkit::registry::gzip_tar(&[("a.txt", &testkit::registry::random_bytes(4096, 7))]);
    let pushed = testkit::registry::push_image(&c, &reg.url, "two/doors", "v1", &[layer]).await;
    let (digest, _) = &pushed.layers[0];
    let before = testkit::registry::metric(
        &c,
        &reg.url,
        "registry_bytes_served_total{kind=\"layer_blob\"}",
    )
    .await;
    let out = Command::new("curl")
        .args(["-sSf", "-r", "0-9", "--cacert"])
        .arg(&ca)
        .arg(format!("https://{tls_addr}/v2/two/doors/blobs/{digest}"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 10);
    let after = testkit::registry::metric(
        &c,
        &reg.url,
        "registry_bytes_served_total{kind=\"layer_blob\"}",
    )
    .await;
    assert_eq!(
        after - before,
        10,
        "TLS listener's bytes in the shared counters"
    );
    // Plain HTTP is not spoken on the TLS door.
    let plain = c.get(format!("http://{tls_addr}/v2/")).send().await;
    assert!(
        plain.is_err(),
        "plain HTTP answered on the TLS listener: {plain:?}"
    );
    reg.stop().await;
}
