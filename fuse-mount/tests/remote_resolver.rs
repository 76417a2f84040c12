//! The remote decision's HTTP client against registry-mock: token with basic auth, `/mount`
//! polling through 409 until the image is expanded, 404 for a repository that is not
//! teleport-enabled, 401 for bad credentials. No root needed; needs skopeo to push.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fuse_mount::fetch::{Credentials, MountStatus};
use fuse_mount::remote::http::{HttpResolver, HttpResolverConfig};
use fuse_mount::remote::ImageRef;

fn push(archive: &std::path::Path, dest: &str) -> String {
    testkit::registry::skopeo_push_with(archive, dest, &["--dest-creds", "u:p"]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_talks_teleport_to_the_registry() {
    if !testkit::require(&[testkit::Need::Skopeo]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = registry_mock::Config::new(dir.path().join("reg"));
    cfg.users = vec![("u".into(), "p".into())];
    cfg.anonymous_pull = false;
    cfg.teleport_repos = vec!["tele/app".into()];
    let reg = registry_mock::start(cfg).await.unwrap();
    let host = reg.addr().to_string();

    let archive = dir.path().join("image.tar");
    testkit::test_image(&archive, "x.test/app:1");
    let (a, h) = (archive.clone(), host.clone());
    let tele = tokio::task::spawn_blocking(move || push(&a, &format!("{h}/tele/app:1")))
        .await
        .unwrap();
    let (a, h) = (archive.clone(), host.clone());
    let plain = tokio::task::spawn_blocking(move || push(&a, &format!("{h}/plain/app:1")))
        .await
        .unwrap();

    let resolver = |creds: Option<Credentials>| {
        HttpResolver::new(HttpResolverConfig {
            registry: reg.url(),
            credentials: creds,
            expansion_wait: Duration::from_secs(60),
            poll_interval: Duration::from_millis(50),
            request_timeout: Duration::from_secs(10),
        })
        .unwrap()
    };
    let good = resolver(Some(Credentials::new("u", "p")));
    assert_eq!(good.registry_host(), host);

    // Pushed moments ago: expansion may still run (409), the resolver waits it out.
    let img = ImageRef::parse(&format!("{host}/tele/app:1"), &tele).unwrap();
    match good.check(&img).await.unwrap() {
        MountStatus::Ready(info) => {
            assert_eq!(info.layers.len(), 2, "{info:?}");
            assert_eq!(info.manifest_digest.as_str(), tele);
            assert_eq!(info.repository, "tele/app");
        }
        d => panic!("expected remote, got {d:?}"),
    }
    let img = ImageRef::parse(&format!("{host}/plain/app:1"), &plain).unwrap();
    assert!(matches!(
        good.check(&img).await.unwrap(),
        MountStatus::NotEnabled
    ));
    // Another registry's image is never asked about.
    let other = ImageRef::parse("elsewhere.example/tele/app:1", &tele).unwrap();
    assert!(matches!(
        good.check(&other).await.unwrap(),
        MountStatus::NotEnabled
    ));

    let bad = resolver(Some(Credentials::new("u", "wrong")));
    let img = ImageRef::parse(&format!("{host}/tele/app:1"), &tele).unwrap();
    let err = bad.check(&img).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    reg.shutdown().await.unwrap();
}
