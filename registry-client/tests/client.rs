//! The client against scripted registries: bounded retries, capped bodies, exact ranges,
//! same-origin URLs, and credentials that never leave the registry's origin.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers outside #[test] fns.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emulator::Digest;
use registry_client::testserver::{partial, range_of, respond, serve};
use registry_client::{Credentials, Error, MountStatus, Options, RegistryClient};

fn client(url: &str, creds: Option<Credentials>, max_attempts: u32) -> RegistryClient {
    let opts = Options {
        max_attempts,
        retry_backoff: Duration::from_millis(1),
        ..Default::default()
    };
    RegistryClient::new(url, creds, opts).unwrap()
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let deadline = Instant::now() + Duration::from_secs(10);
    for (status, want_requests) in [(503u16, 3u32), (404, 1)] {
        let n = Arc::new(AtomicU32::new(0));
        let count = n.clone();
        let srv = serve(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
            respond(status, &[], Vec::new())
        });
        let r = client(&srv.url, None, 3)
            .get_range("r", "/x", (0, 9), deadline)
            .await;
        match status {
            503 => assert!(matches!(r, Err(Error::GaveUp { attempts: 3, .. })), "{r:?}"),
            _ => assert!(matches!(r, Err(Error::Status { status: 404, .. })), "{r:?}"),
        }
        assert_eq!(n.load(Ordering::SeqCst), want_requests, "status {status}");
    }
    // A 200 with the whole blob to a Range request is refused, not buffered.
    let srv = serve(|_| respond(200, &[], vec![0u8; 100]));
    let r = client(&srv.url, None, 3)
        .get_range("r", "/x", (5, 9), deadline)
        .await;
    assert!(matches!(r, Err(Error::Status { status: 200, .. })), "{r:?}");
}

#[tokio::test]
async fn hostile_registry_answers_are_capped_and_refused() {
    // Another origin that records whether anything (and which credentials) reached it.
    let elsewhere_hits = Arc::new(AtomicU32::new(0));
    let hits = elsewhere_hits.clone();
    let elsewhere = serve(move |req| {
        hits.fetch_add(1, Ordering::SeqCst);
        let basic = req
            .headers()
            .get("authorization")
            .is_some_and(|h| h.as_bytes().starts_with(b"Basic "));
        let body = if basic {
            r#"{"token":"stolen"}"#
        } else {
            r#"{"token":"anon"}"#
        };
        respond(200, &[], body.as_bytes().to_vec())
    });
    let other = elsewhere.url.clone();
    let data: Vec<u8> = (0..100u8).collect();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let (data2, other2, seen2) = (data.clone(), other.clone(), seen.clone());
    let reg = serve(move |req| {
        let path = req.uri().path().to_string();
        if let Some(a) = req.headers().get("authorization") {
            seen2
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(a.as_bytes()).into_owned());
        }
        match path.as_str() {
            p if p.starts_with("/mount/v1/big/_manifests/") => respond(
                200,
                &[],
                vec![b' '; (emulator::mount::MOUNT_BODY_MAX + 1) as usize],
            ),
            p if p.starts_with("/mount/v1/r/_profiles/") => respond(
                200,
                &[],
                vec![b' '; (registry_client::PROFILE_BODY_MAX + 1) as usize],
            ),
            "/index" => respond(200, &[], vec![7u8; 4096]),
            // Content-Range of another range than asked for.
            "/wrong-range" => {
                let (a, b) = range_of(req).unwrap_or((0, 0));
                partial(&data2, (a + 1, b + 1))
            }
            "/data" => match range_of(req) {
                Some(r) => partial(&data2, r),
                None => respond(400, &[], Vec::new()),
            },
            // Asks for a token from a realm on another origin.
            "/authed" => respond(
                401,
                &[(
                    "www-authenticate",
                    format!(r#"Bearer realm="{other2}/token",service="x""#),
                )],
                Vec::new(),
            ),
            _ => respond(404, &[], Vec::new()),
        }
    });
    let c = client(&reg.url, Some(Credentials::new("u", "secret")), 1);
    let d = Digest::sha256_of(b"m");
    let r = c.mount_status("big", &d).await;
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
    let r = c.get_profile("r", &d).await;
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = c.get_whole("r", "/index", 100, deadline).await;
    assert!(matches!(r, Err(Error::TooLarge { max: 100, .. })), "{r:?}");
    let r = c.get_range("r", "/wrong-range", (10, 19), deadline).await;
    assert!(matches!(r, Err(Error::BadContentRange { .. })), "{r:?}");
    let r = c.get_range("r", "/data", (10, 19), deadline).await;
    assert_eq!(r.unwrap(), data[10..20]);
    // URLs off the registry's origin are never requested (the bearer token would follow).
    for url in [format!("{other}/index"), format!("//{}/index", &other[7..])] {
        let r = c.get_whole("r", &url, 100, deadline).await;
        assert!(matches!(r, Err(Error::Url { .. })), "{url}: {r:?}");
    }
    assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0);
    // A token realm on another origin never gets the password.
    let _ = c.get_range("r", "/authed", (0, 9), deadline).await;
    assert_eq!(
        elsewhere_hits.load(Ordering::SeqCst),
        1,
        "anonymous token request"
    );
    let seen = seen.lock().unwrap();
    assert!(seen.iter().all(|a| !a.contains("stolen")), "{seen:?}");
    assert!(seen.iter().any(|a| a == "Bearer anon"), "{seen:?}");
}

#[tokio::test]
async fn tokens_are_cached_per_scope_and_refreshed_on_401() {
    // Tokens are "tok-N-SCOPE"; the registry accepts only the newest token of each scope.
    let issued = Arc::new(AtomicU32::new(0));
    let valid = Arc::new(Mutex::new(
        std::collections::HashMap::<String, String>::new(),
    ));
    let (iss, val) = (issued.clone(), valid.clone());
    let reg = serve(move |req| {
        let q = req.uri().query().unwrap_or("").to_string();
        if req.uri().path() == "/oauth2/token" {
            let scope = q
                .split('&')
                .find_map(|kv| kv.strip_prefix("scope="))
                .unwrap_or("")
                .replace("%3A", ":")
                .replace("%2C", ",");
            let n = iss.fetch_add(1, Ordering::SeqCst);
            let tok = format!("tok-{n}-{scope}");
            val.lock().unwrap().insert(scope, tok.clone());
            return respond(
                200,
                &[],
                format!(r#"{{"access_token":"{tok}"}}"#).into_bytes(),
            );
        }
        let scope = if req.method() == "PUT" {
            "repository:r:pull,push"
        } else {
            "repository:r:pull"
        };
        let want = val.lock().unwrap().get(scope).cloned();
        let got = req
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::to_string);
        if want.is_none() || got != want {
            return respond(
                401,
                &[("www-authenticate", r#"Bearer service="reg""#.to_string())],
                Vec::new(),
            );
        }
        match req.method().as_str() {
            "PUT" => respond(201, &[], Vec::new()),
            _ => respond(404, &[], Vec::new()),
        }
    });
    let c = client(&reg.url, None, 1);
    let d = Digest::sha256_of(b"l");
    assert_eq!(c.get_profile("r", &d).await.unwrap(), None);
    assert_eq!(c.get_profile("r", &d).await.unwrap(), None);
    assert_eq!(issued.load(Ordering::SeqCst), 1, "pull token reused");
    let p = emulator::profile::Profile {
        schema_version: emulator::profile::PROFILE_SCHEMA_VERSION,
        ranges: vec![(0, 1)],
    };
    c.put_profile("r", &d, &p).await.unwrap();
    assert_eq!(issued.load(Ordering::SeqCst), 2, "own token for pull,push");
    // The push token did not replace the pull token.
    assert_eq!(c.get_profile("r", &d).await.unwrap(), None);
    assert_eq!(issued.load(Ordering::SeqCst), 2);
    // The registry forgets the pull token: one 401, a new token, the request answered.
    valid.lock().unwrap().remove("repository:r:pull");
    valid
        .lock()
        .unwrap()
        .insert("repository:r:pull".into(), "expired".into());
    assert_eq!(c.get_profile("r", &d).await.unwrap(), None);
    assert_eq!(issued.load(Ordering::SeqCst), 3);
    assert_eq!(
        c.mount_status("r", &d).await.unwrap(),
        MountStatus::NotEnabled
    );
}
