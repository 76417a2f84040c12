//! Shared helpers for the testbed's end-to-end tests (real containerd, root).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

/// `true` = run; `false` = skip (printed reason, only off CI when not root). Panics in CI
/// when a prerequisite is missing, so CI fails loudly.
pub fn prerequisites() -> bool {
    match testbed::provision::ensure_for_tests() {
        Ok(run) => run,
        Err(e) => panic!("prerequisites missing (CI=true or root): {e}"),
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub use testkit::mounts_under;

/// teleportd built from this checkout (the test kit has cargo build it once per test binary, so
/// a stale binary left by an earlier build is never tested).
pub fn teleportd() -> std::path::PathBuf {
    testkit::bin("teleportd")
}

/// A registry with the pause image and one scaled fixture pushed to `repo:tag`.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub registry: registry_mock::Registry,
    pub host: String,
    pub pause_ref: String,
    pub image_ref: String,
    pub info: fixtures::ImageInfo,
}

pub async fn world(profile: &str, scale: f64, squash: bool, repo: &str, teleport: bool) -> World {
    use testbed::bed::{self, Variant};
    let tmp = tempfile::tempdir().unwrap();
    let variant = if squash {
        Variant::Squashed
    } else {
        Variant::Layered
    };
    let cache = tmp.path().join("fixtures");
    let fx = bed::fixture(&cache, profile, scale, Some(variant), false)
        .await
        .unwrap();
    let pause = bed::fixture(&cache, "pause", 1.0, None, false)
        .await
        .unwrap();
    let repos = if teleport {
        vec![repo.to_string()]
    } else {
        Vec::new()
    };
    let registry = bed::start_registry(
        &tmp.path().join("registry"),
        None,
        std::time::Duration::ZERO,
        repos,
    )
    .await
    .unwrap();
    let host = registry.addr().to_string();
    let pause_ref = bed::push(&pause, &host, bed::PAUSE_REPO).await.unwrap();
    let image_ref = bed::push(&fx, &host, repo).await.unwrap();
    World {
        tmp,
        registry,
        host,
        pause_ref,
        image_ref,
        info: fx.info,
    }
}
