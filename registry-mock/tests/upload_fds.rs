//! Idle upload sessions hold no file descriptors: hundreds of open sessions, each with bytes
//! in it, leave the (in-process) registry's descriptor count where it was. Alone in its binary
//! so no other test opens descriptors meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers outside #[test] fns.

use reqwest::StatusCode;
use testkit::registry::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test]
async fn idle_upload_sessions_hold_no_file_descriptors() {
    const SESSIONS: usize = 300;
    let t = start_with(|c| c.limits.max_upload_sessions_per_repo = SESSIONS).await;
    let c = client();
    // Warm the client's connection so it is in the baseline.
    assert_eq!(
        c.get(format!("{}/v2/", t.url))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let before = open_fds();
    let mut uuids = Vec::new();
    for i in 0..SESSIONS {
        let r = c
            .post(format!("{}/v2/fd/blobs/uploads/", t.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let loc = format!("{}{}", t.url, r.headers()["location"].to_str().unwrap());
        uuids.push(
            r.headers()["docker-upload-uuid"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        let r = c
            .patch(&loc)
            .body(random_bytes(100, i as u64))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let after = open_fds();
    println!("open fds: {before} before, {after} with {SESSIONS} idle upload sessions");
    assert!(
        after < before + 20,
        "{SESSIONS} idle sessions: fds {before} → {after}"
    );
    // Every session's bytes are on disk all the same.
    for u in &uuids {
        let f = t.dir.path().join("uploads").join(u);
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 100);
    }
}
