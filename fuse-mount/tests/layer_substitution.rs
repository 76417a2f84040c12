//! Layer substitution on a real containerd: an image whose config claims a base layer's diff ID
//! for other bytes must not get those bytes committed under the base layer's chain ID (where
//! every later image sharing the base would find them). teleportd checks the claim against the
//! registry's expansion and refuses the remote path; containerd's normal unpack then fails the
//! pull ("wrong diff ID"), and an honest image sharing the base later sees the honest bytes.
//! Needs root, FUSE, containerd, skopeo.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use node_api::cri::{image_service_client::ImageServiceClient, ImageSpec, PullImageRequest};
use testkit::{layer, oci_archive, Containerd, Node, Teleportd, TestDir};

#[test]
fn a_forged_diff_id_never_replaces_a_base_layer() {
    if !testkit::prerequisites() {
        return;
    }
    let t = TestDir::new();
    let dir = t.path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = registry_mock::Config::new(dir.join("reg"));
    cfg.teleport_repos = vec!["tele/app".into()];
    // A registry that does not check diff_ids (older, or lying): the node must refuse alone.
    // (registry-mock's own check: registry-mock/tests/teleport.rs.)
    cfg.check_diff_ids = false;
    let reg = rt.block_on(registry_mock::start(cfg)).unwrap();

    let busybox = std::fs::read(testkit::BUSYBOX).unwrap();
    let with_hello = |text: &'static [u8]| {
        layer(&[
            Node::Dir("bin"),
            Node::File("bin/busybox", &busybox, 0o755),
            Node::Dir("etc"),
            Node::File("etc/hello.txt", text, 0o644),
        ])
    };
    let base = with_hello(b"honest base\n");
    let evil = with_hello(b"substituted\n");
    let top = layer(&[Node::Dir("app"), Node::File("app/top.txt", b"top\n", 0o644)]);
    // The forged image: evil bytes, the base layer's diff ID in its config.
    let forged = dir.join("forged.tar");
    oci_archive(
        &forged,
        "unused.test/forged:1",
        &[(evil.0.clone(), base.1.clone())],
    );
    let honest = dir.join("honest.tar");
    oci_archive(&honest, "unused.test/honest:1", &[base, top]);
    let forged_ref = format!("{}/tele/app:forged", reg.addr());
    let honest_ref = format!("{}/tele/app:honest", reg.addr());
    testkit::registry::skopeo_push(&forged, &forged_ref);
    testkit::registry::skopeo_push(&honest, &honest_ref);

    let socket = dir.join("teleportd.sock");
    let root = dir.join("teleportd");
    let cache = dir.join("cache");
    let url = reg.url();
    let targs = ["--registry", &url, "--cache-dir", cache.to_str().unwrap()];
    let log = dir.join("teleportd.log");
    let td = Teleportd::start_with(&root, &socket, &log, &targs);
    // Only root may call the snapshotter or the fuse manager, or walk teleportd's state.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(&root.join("fuse-manager.sock")), 0o600);
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&cache), 0o700);
    let mut ctrd =
        Containerd::start_with(&dir.join("ctrd"), &socket, Some(&reg.addr().to_string()));
    ctrd.namespace = "k8s.io".into();
    let pull = |image: &str| {
        rt.block_on(async {
            let ch = node_api::connect(&ctrd.address).await.unwrap();
            ImageServiceClient::new(ch)
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image: image.to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
        })
    };

    let r = pull(&forged_ref);
    let err = r.expect_err("the forged image must not pull");
    assert!(
        err.message().contains("diff") || err.message().contains("digest"),
        "{err:?}"
    );
    assert!(
        td.log_text().contains("remote layer refused"),
        "{}",
        testkit::tail(&td.log_text(), 30)
    );

    pull(&honest_ref)
        .unwrap_or_else(|e| panic!("honest pull: {e}\n{}", testkit::tail(&td.log_text(), 30)));
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "teleportd",
        &honest_ref,
        "honest-c1",
        "/bin/busybox",
        "cat",
        "/etc/hello.txt",
        "/app/top.txt",
    ]);
    assert_eq!(out, "honest base\ntop\n");
    drop(ctrd);
    drop(td);
    rt.block_on(reg.shutdown()).unwrap();
    assert!(testkit::mounts_under(dir).is_empty());
}
