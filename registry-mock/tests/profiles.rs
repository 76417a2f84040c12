//! Learned start profiles: `PUT`/`GET`/`DELETE /mount/v1/{repo}/_profiles/{layer}` over real
//! HTTP — 404 before, a pusher replaces or deletes, stored per repository, validation (size,
//! ranges, count, overlap bound, unknown layer), auth scopes, metrics and persistence across a
//! restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers outside #[test] fns.

use std::time::Duration;

use emulator::Digest;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use testkit::registry::*;

const WAIT: Duration = Duration::from_secs(60);

/// Push a one-layer image to a teleport-enabled repo and wait for its expansion; returns the
/// layer digest and its data size.
async fn expanded_layer(c: &Client, url: &str, repo: &str, auth: bool) -> (Digest, u64) {
    let layer = gzip_tar(&[("bin/app", &random_bytes(300_000, 9)), ("etc/x", b"x\n")]);
    let p = if auth {
        // Push with basic auth (the registry accepts it directly).
        push_image_auth(c, url, repo, &layer).await
    } else {
        push_image(c, url, repo, "v1", &[layer]).await
    };
    let v: Value = poll_until("expansion", WAIT, || async {
        let mut r = c.get(format!("{url}/mount/v1/{repo}/_manifests/{}", p.manifest));
        if auth {
            r = r.basic_auth("alice", Some("pw"));
        }
        let r = r.send().await.unwrap();
        (r.status() == StatusCode::OK).then_some(r.json::<Value>().await.unwrap())
    })
    .await;
    let data_size = v["layers"][0]["data"]["size"].as_u64().unwrap();
    (p.layers[0].0.clone(), data_size)
}

async fn push_image_auth(c: &Client, url: &str, repo: &str, layer: &[u8]) -> Pushed {
    // The common helper pushes anonymously; wrap the client so every request carries basic auth.
    let authed = reqwest::Client::builder()
        .default_headers({
            let mut h = reqwest::header::HeaderMap::new();
            let v = base64_basic("alice", "pw");
            h.insert(reqwest::header::AUTHORIZATION, v.parse().unwrap());
            h
        })
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let _ = c;
    push_image(&authed, url, repo, "v1", &[layer.to_vec()]).await
}

fn base64_basic(user: &str, pw: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

fn profile(ranges: &[(u64, u64)]) -> Value {
    json!({ "schemaVersion": 1, "ranges": ranges })
}

#[tokio::test]
async fn put_get_replace_and_persist() {
    let mut t = start_with(|c| c.teleport_repos = vec!["prof/app".into()]).await;
    let c = client();
    let (layer, size) = expanded_layer(&c, &t.url, "prof/app", false).await;
    let url = format!("{}/mount/v1/prof/app/_profiles/{layer}", t.url);

    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "PROFILE_UNKNOWN");

    let first = profile(&[(4096, 100), (0, 10), (size - 1, 1)]);
    let r = c.put(&url).json(&first).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let got: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, first);

    // A second writer (a pusher of this repository) replaces it; overlaps are cut out.
    let second = profile(&[(0, 20), (10, 20)]);
    let r = c.put(&url).json(&second).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["replaced"], true);
    let got: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, profile(&[(0, 20), (20, 10)]));
    let r = c.put(&url).json(&first).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Counted per route in /metrics.
    let label = "registry_requests_total{route=\"/mount/v1/{name}/_profiles/{digest}\"";
    assert_eq!(
        metric(
            &c,
            &t.url,
            &format!("{label},method=\"PUT\",status=\"201\"}}")
        )
        .await,
        1
    );
    assert_eq!(
        metric(
            &c,
            &t.url,
            &format!("{label},method=\"GET\",status=\"200\"}}")
        )
        .await,
        2
    );

    // Deleted by a pusher; a second delete finds nothing.
    let r = c.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "PROFILE_UNKNOWN");
    let r = c.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c.put(&url).json(&first).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // Survives a restart.
    t.stop().await;
    let reg = registry_mock::start(registry_mock::Config::new(t.dir.path()))
        .await
        .unwrap();
    let got: Value = c
        .get(format!("{}/mount/v1/prof/app/_profiles/{layer}", reg.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, first);
    reg.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_profiles_are_refused() {
    let t = start_with(|c| c.teleport_repos = vec!["prof/bad".into(), "prof/other".into()]).await;
    let c = client();
    let (layer, size) = expanded_layer(&c, &t.url, "prof/bad", false).await;
    let url = format!("{}/mount/v1/prof/bad/_profiles/{layer}", t.url);
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "garbage"),
        (
            serde_json::to_vec(&profile(&[(size, 1)])).unwrap(),
            "range past the end",
        ),
        (
            serde_json::to_vec(&profile(&[(0, 0)])).unwrap(),
            "empty range",
        ),
        (
            serde_json::to_vec(&profile(&[(u64::MAX, 2)])).unwrap(),
            "overflowing range",
        ),
        (
            serde_json::to_vec(&json!({"schemaVersion": 9, "ranges": []})).unwrap(),
            "unknown version",
        ),
        (
            serde_json::to_vec(&profile(&vec![(0, 1); 70_000])).unwrap(),
            "too many ranges",
        ),
        (vec![b' '; (1 << 20) + 1], "body over 1 MiB"),
        (
            // The poisoning case: the whole layer 65,536 times (a replay would fetch it as often).
            serde_json::to_vec(&profile(&vec![(0, size); 65_536])).unwrap(),
            "65,536 overlapping whole-layer ranges",
        ),
        (
            serde_json::to_vec(&profile(&[(0, size), (0, size), (0, 1)])).unwrap(),
            "ranges adding up to over twice the layer",
        ),
    ];
    for (body, what) in bad {
        let r = c.put(&url).body(body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(error_code(r).await, "PROFILE_INVALID", "{what}");
    }
    // Nothing was stored.
    assert_eq!(
        c.get(&url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    // A layer the repository does not have (or a non-layer digest) is unknown.
    let other = format!("{}/mount/v1/prof/other/_profiles/{layer}", t.url);
    let r = c
        .put(&other)
        .json(&profile(&[(0, 1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let r = c
        .get(format!(
            "{}/mount/v1/prof/bad/_profiles/sha256:nothex",
            t.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = c.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "PROFILE_UNKNOWN");
}

#[tokio::test]
async fn a_profile_of_one_repository_is_not_served_to_another() {
    let t = start_with(|c| c.teleport_repos = vec!["prof/a".into(), "prof/b".into()]).await;
    let c = client();
    // The same layer blob in both repositories (expanded once).
    let (layer, size) = expanded_layer(&c, &t.url, "prof/a", false).await;
    let (layer_b, _) = expanded_layer(&c, &t.url, "prof/b", false).await;
    assert_eq!(layer, layer_b);
    let url_a = format!("{}/mount/v1/prof/a/_profiles/{layer}", t.url);
    let url_b = format!("{}/mount/v1/prof/b/_profiles/{layer}", t.url);
    let a = profile(&[(0, size)]);
    let r = c.put(&url_a).json(&a).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // B has none: A's pusher did not decide what B's nodes replay.
    let r = c.get(&url_b).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "PROFILE_UNKNOWN");
    // B's own profile is B's; A's is unchanged.
    let b = profile(&[(0, 1)]);
    let r = c.put(&url_b).json(&b).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got: Value = c.get(&url_a).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, a);
    let got: Value = c.get(&url_b).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, b);
    // Deleting B's leaves A's.
    assert_eq!(
        c.delete(&url_b).send().await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(c.get(&url_a).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn profile_reads_need_pull_and_writes_need_push() {
    let t = start_with(|c| {
        c.users = vec![("alice".into(), "pw".into())];
        c.anonymous_pull = false;
        c.teleport_repos = vec!["prof/sec".into()];
    })
    .await;
    let c = client();
    let (layer, _) = expanded_layer(&c, &t.url, "prof/sec", true).await;
    let url = format!("{}/mount/v1/prof/sec/_profiles/{layer}", t.url);
    let body = profile(&[(0, 1)]);
    // Anonymous: challenged for both.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c.put(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A pull token reads but cannot write; the challenge names the push scope.
    let tok = |scope: &'static str| {
        let c = c.clone();
        let url = t.url.clone();
        async move {
            let v: Value = c
                .get(format!("{url}/oauth2/token"))
                .query(&[("service", "x"), ("scope", scope)])
                .basic_auth("alice", Some("pw"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["access_token"].as_str().unwrap().to_string()
        }
    };
    let pull = tok("repository:prof/sec:pull").await;
    let r = c.get(&url).bearer_auth(&pull).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .put(&url)
        .bearer_auth(&pull)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let ch = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(ch.contains("repository:prof/sec:pull,push"), "{ch}");
    let r = c.delete(&url).bearer_auth(&pull).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let push = tok("repository:prof/sec:pull,push").await;
    let r = c
        .put(&url)
        .bearer_auth(&push)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c.get(&url).bearer_auth(&pull).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
