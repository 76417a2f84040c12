//! The configurable limits ([`registry_mock::Limits`]) against hostile or broken clients:
//! upload-session caps, idle-session expiry on a timer, the upload size limit, header and body
//! read timeouts, the connection cap and the failed-login rate limit.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers outside #[test] fns.

use std::time::Duration;

use reqwest::StatusCode;
use testkit::registry::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A test guard only: every wait below ends on a socket event; this bounds a broken server.
const GUARD: Duration = Duration::from_secs(20);

async fn open_session(c: &reqwest::Client, url: &str, repo: &str) -> reqwest::Response {
    c.post(format!("{url}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn upload_sessions_are_capped_globally_and_per_repository() {
    let t = start_with(|c| {
        c.limits.max_upload_sessions = 5;
        c.limits.max_upload_sessions_per_repo = 3;
    })
    .await;
    let c = client();
    let mut a = Vec::new();
    for _ in 0..3 {
        let r = open_session(&c, &t.url, "a").await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        a.push(r.headers()["location"].to_str().unwrap().to_string());
    }
    let r = open_session(&c, &t.url, "a").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    for _ in 0..2 {
        assert_eq!(
            open_session(&c, &t.url, "b").await.status(),
            StatusCode::ACCEPTED
        );
    }
    let r = open_session(&c, &t.url, "c").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "global cap");
    // Finishing or cancelling frees a place.
    let r = c.delete(format!("{}{}", t.url, a[0])).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        open_session(&c, &t.url, "c").await.status(),
        StatusCode::ACCEPTED
    );
    // Monolithic pushes need no session and still work at the cap.
    push_blob(&c, &t.url, "a", b"monolithic").await;
}

#[tokio::test]
async fn idle_session_expires_on_a_timer_and_its_file_is_removed() {
    let t = start_with(|c| c.limits.upload_idle_timeout = Duration::from_millis(200)).await;
    let c = client();
    let r = open_session(&c, &t.url, "idle").await;
    let uuid = r.headers()["docker-upload-uuid"]
        .to_str()
        .unwrap()
        .to_string();
    let loc = format!("{}{}", t.url, r.headers()["location"].to_str().unwrap());
    let r = c.patch(&loc).body(&b"partial"[..]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let file = t.dir.path().join("uploads").join(&uuid);
    assert!(file.is_file());
    // No further request: only the timer can remove it.
    poll_until("the idle upload's file to go", GUARD, || {
        let gone = !file.exists();
        async move { gone.then_some(()) }
    })
    .await;
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = c.patch(&loc).body(&b"more"[..]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn upload_size_is_limited() {
    let t = start_with(|c| c.limits.max_upload_size = 1000).await;
    let c = client();
    let big = random_bytes(1001, 1);
    let d = digest(&big);
    let r = c
        .post(format!("{}/v2/s/blobs/uploads/?digest={d}", t.url))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "SIZE_INVALID");
    let r = c
        .head(format!("{}/v2/s/blobs/{d}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let r = open_session(&c, &t.url, "s").await;
    let loc = format!("{}{}", t.url, r.headers()["location"].to_str().unwrap());
    let r = c
        .patch(&loc)
        .body(big[..600].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Over the limit with a Content-Length, and without one (chunked): refused, session kept.
    let r = c
        .patch(&loc)
        .body(big[600..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let rest = bytes::Bytes::copy_from_slice(&big[600..]);
    let r = c
        .patch(&loc)
        .body(reqwest::Body::wrap_stream(futures::stream::iter([Ok::<
            _,
            std::io::Error,
        >(
            rest
        )])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "SIZE_INVALID");
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.headers()["range"], "0-599");
    // Within the limit the same session completes.
    let d = digest(&big[..1000]);
    let r = c
        .put(format!("{loc}?digest={d}"))
        .body(big[600..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// Read until the server closes; returns what it sent.
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(GUARD, read_all)
        .await
        .expect("server kept the connection open");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn half_sent_header_or_silence_is_dropped() {
    let t = start_with(|c| c.limits.header_read_timeout = Duration::from_millis(300)).await;
    let addr = t.reg().addr();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nUser-Ag")
        .await
        .unwrap();
    let got = read_until_closed(&mut half).await;
    assert!(!got.contains("200 OK"), "{got}");
    let mut silent = TcpStream::connect(addr).await.unwrap();
    read_until_closed(&mut silent).await;
    // Complete requests are unaffected.
    let r = client().get(format!("{}/v2/", t.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn stalled_body_is_dropped_and_the_session_kept() {
    let t = start_with(|c| c.limits.body_read_timeout = Duration::from_millis(300)).await;
    let c = client();
    let r = open_session(&c, &t.url, "stall").await;
    let path = r.headers()["location"].to_str().unwrap().to_string();
    let mut s = TcpStream::connect(t.reg().addr()).await.unwrap();
    let head = format!("PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789");
    s.write_all(head.as_bytes()).await.unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    let r = c.get(format!("{}{path}", t.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers()["range"],
        "0-0",
        "the stalled chunk was rolled back"
    );
}

async fn get_v2(s: &mut TcpStream) -> String {
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(GUARD, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn connections_over_the_cap_are_refused() {
    let t = start_with(|c| c.limits.max_connections = 2).await;
    let addr = t.reg().addr();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(get_v2(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s); // kept alive: each holds a place
    }
    let mut third = TcpStream::connect(addr).await.unwrap();
    let got = read_until_closed(&mut third).await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    drop(held.pop());
    // The place frees once the server sees the close.
    poll_until("a free connection place", GUARD, || async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        get_v2(&mut s)
            .await
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_address_and_user() {
    let t = start_with(|c| {
        c.users = vec![("alice".into(), "pw".into()), ("bob".into(), "pw2".into())];
        c.anonymous_pull = false;
        c.limits.auth_fail_burst = 3;
        c.limits.auth_fail_refill = Duration::from_secs(3600);
    })
    .await;
    let c = client();
    let v2 = format!("{}/v2/", t.url);
    let login = |user: &'static str, pass: &'static str| {
        let (c, v2) = (c.clone(), v2.clone());
        async move {
            c.get(&v2)
                .basic_auth(user, Some(pass))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Repeating one wrong password (a client retrying, or skopeo once per layer) is one guess.
    for _ in 0..5 {
        assert_eq!(login("alice", "wrong").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(login("alice", "pw").await, StatusCode::OK);
    for guess in ["wrong2", "wrong3"] {
        assert_eq!(login("alice", guess).await, StatusCode::UNAUTHORIZED);
    }
    // Now even the right password is refused, here and at the token endpoint.
    let r = c
        .get(&v2)
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    let r = c
        .get(format!("{}/oauth2/token", t.url))
        .basic_auth("bob", Some("pw2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "same address");
    // From another address: alice's name is still blocked, bob is not.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = other
        .get(&v2)
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "same user");
    let r = other
        .get(&v2)
        .basic_auth("bob", Some("pw2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Requests without credentials are not login attempts: the challenge still comes.
    let r = other.get(&v2).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn limits_parse_like_the_serve_flags() {
    let d = registry_mock::Limits::default();
    assert_eq!(d.max_upload_size, 16 << 30);
    assert_eq!(d.header_read_timeout, Duration::from_secs(30));
    assert_eq!(registry_mock::parse_size("64KiB"), Ok(64 << 10));
    assert_eq!(registry_mock::parse_size("2G"), Ok(2 << 30));
    assert!(registry_mock::parse_size("x").is_err());
    assert!(registry_mock::parse_size("99999999999999GiB").is_err());
}

#[tokio::test]
async fn slow_response_outlives_the_header_timeout() {
    // The header timer runs only while a request head is awaited, never while a response
    // streams: a 1.5 MiB blob at 1 MiB/s takes longer than the 300 ms header timeout.
    let t = start_with(|c| {
        c.limits.header_read_timeout = Duration::from_millis(300);
        c.link.bandwidth_bytes_per_sec = Some(1 << 20);
    })
    .await;
    let c = client();
    let blob = random_bytes(3 << 19, 7);
    let d = push_blob(&c, &t.url, "slow", &blob).await;
    let started = std::time::Instant::now();
    let got = c
        .get(format!("{}/v2/slow/blobs/{d}", t.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        started.elapsed() > Duration::from_millis(300),
        "the response was not slow"
    );
    assert_eq!(digest(&got), d);
}
