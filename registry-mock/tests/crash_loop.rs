//! A layer whose expansion kills the registry every time (here: the test SIGKILLs the real
//! `registry-mock serve` process while the layer is "expanding", as the OOM killer would) is
//! re-queued at each start only until it has used its attempts, then failed with the reason in
//! `/mount`. Synchronisation: the child's pid is waited on after each kill; the state file and
//! the HTTP endpoint are polled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use emulator::Digest;
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::registry::RegistryProcess;

const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn poll<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    testkit::wait_for(what, Duration::from_secs(120), f)
}

fn serve(root: &Path) -> RegistryProcess {
    RegistryProcess::start(
        root,
        &["--teleport-repos", "boom", "--expansion-workers", "1"],
    )
}

fn kill(mut s: RegistryProcess) {
    s.kill9(); // SIGKILL, reaped
}

fn push(c: &Client, url: &str, bytes: Vec<u8>) -> Digest {
    let d = Digest::sha256_of(&bytes);
    let r = c
        .post(format!("{url}/v2/boom/blobs/uploads/?digest={d}"))
        .body(bytes)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    d
}

fn state(root: &Path, layer: &Digest) -> Option<Value> {
    let p = root
        .join("expanded/sha256")
        .join(layer.hex())
        .join("state.json");
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

#[test]
fn sigkilled_expansions_fail_the_layer_after_three_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let c = Client::new();
    // A plain tar big enough that expanding it takes a while in any build: 64 MiB of
    // non-repeating bytes in one file.
    let size: u64 = 64 << 20;
    let mut h = tar::Header::new_gnu();
    h.set_path("big").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    let mut layer = h.as_bytes().to_vec();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    layer.extend((0..size).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 32) as u8
    }));
    layer.extend_from_slice(&[0; 1024]);
    let diff_id = Digest::sha256_of(&layer);

    let mut s = serve(root);
    let config = serde_json::to_vec(&json!({"architecture":"amd64","os":"linux",
        "rootfs":{"type":"layers","diff_ids":[diff_id.as_str()]}}))
    .unwrap();
    let cd = push(&c, &s.url, config.clone());
    let len = layer.len();
    let ld = push(&c, &s.url, layer);
    let m = serde_json::to_vec(&json!({"schemaVersion":2,
        "mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":cd.as_str(),"size":config.len()},
        "layers":[{"mediaType":MT_LAYER_TAR,"digest":ld.as_str(),"size":len}]}))
    .unwrap();
    let md = Digest::sha256_of(&m);
    let r = c
        .put(format!("{}/v2/boom/manifests/v1", s.url))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(m)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    for attempt in 1..=3u64 {
        // Killed while this attempt runs (its count is persisted before it starts).
        poll("the layer expanding", || {
            state(root, &ld).filter(|v| v["state"] == "expanding" && v["attempts"] == attempt)
        });
        kill(s);
        s = serve(root);
    }
    // The fourth start does not run it again.
    let r = c
        .get(format!("{}/mount/v1/boom/_manifests/{md}", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let v: Value = r.json().unwrap();
    assert_eq!(v["errors"][0]["code"], "EXPANSION_FAILED");
    let reason = v["errors"][0]["detail"]["reason"].as_str().unwrap();
    assert!(reason.contains("did not finish in 3 attempts"), "{reason}");
    assert_eq!(state(root, &ld).unwrap()["state"], "failed");
    kill(s);
}

/// SIGTERM is a clean stop (exit 0), not death by signal: once the port accepts, the handler
/// is in place (it is installed before the listener is bound).
#[test]
fn sigterm_once_the_port_accepts_is_a_clean_stop() {
    const SIGTERM: i32 = 15;
    let dir = tempfile::tempdir().unwrap();
    let mut s = RegistryProcess::start(dir.path(), &[]);
    assert!(
        testkit::catches_signal(s.pid(), SIGTERM),
        "registry-mock listens before it catches SIGTERM"
    );
    let st = s.stop();
    assert!(st.success(), "{st}: {}", s.log_text());
}
