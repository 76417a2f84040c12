//! check-expansion against an in-process registry-mock: a teleport-enabled repo ends "layers
//! ready", another repo "not enabled".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use registry_client::MountStatus;
use std::time::Duration;
use testbed::bed::check_expansion;
use testbed::bed::{self, Variant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabled_repo_is_ready_and_other_is_not_enabled() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = bed::fixture(
        &tmp.path().join("fx"),
        "redis",
        0.02,
        Some(Variant::Layered),
        false,
    )
    .await
    .unwrap();
    let reg = bed::start_registry(
        &tmp.path().join("reg"),
        None,
        Duration::ZERO,
        vec!["tp".into()],
    )
    .await
    .unwrap();
    let host = reg.addr().to_string();
    bed::push(&fx, &host, "tp").await.unwrap();
    bed::push(&fx, &host, "plain").await.unwrap();

    let (digest, state) = check_expansion(&reg.url(), "tp", "v1", Duration::from_secs(120))
        .await
        .unwrap();
    assert!(
        matches!(&state, MountStatus::Ready(i) if i.manifest_digest == digest),
        "{state:?}"
    );
    assert_eq!(digest, fx.info.manifest_digest);
    let (_, state) = check_expansion(&reg.url(), "plain", "v1", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(state, MountStatus::NotEnabled);
    assert!(
        check_expansion(&reg.url(), "tp", "nope", Duration::from_secs(1))
            .await
            .is_err()
    );
    reg.shutdown().await.unwrap();
}
