//! Hostile clients on the registry's HTTP side, with the default limits: cross-repository
//! mount without rights, nested and cyclic indexes, unbounded metric labels, `Content-Range`
//! that disagrees with the body, the anonymous catalog, and manifest DELETE.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers outside #[test] fns.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use testkit::registry::*;

async fn bearer(c: &reqwest::Client, url: &str, scope: &str) -> String {
    let host = url.trim_start_matches("http://");
    let r = c
        .get(format!("{url}/oauth2/token"))
        .query(&[("service", host), ("scope", scope)])
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    format!("Bearer {}", v["access_token"].as_str().unwrap())
}

#[tokio::test]
async fn mount_needs_from_and_pull_rights_on_it() {
    let t = start_with(|c| {
        c.users = vec![("alice".into(), "pw".into())];
        c.anonymous_pull = false;
    })
    .await;
    let c = client();
    // A private blob in `b`, pushed with full (basic) credentials.
    let secret = b"private to b".to_vec();
    let d = digest(&secret);
    let r = c
        .post(format!("{}/v2/b/blobs/uploads/?digest={d}", t.url))
        .basic_auth("alice", Some("pw"))
        .body(secret.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // A token with push on `a` and nothing on `b`.
    let push_a = bearer(&c, &t.url, "repository:a:pull,push").await;
    for query in [format!("mount={d}"), format!("mount={d}&from=b")] {
        let r = c
            .post(format!("{}/v2/a/blobs/uploads/?{query}", t.url))
            .header("authorization", &push_a)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{query}: no mount");
        assert!(r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/v2/a/blobs/uploads/"));
        let r = c
            .get(format!("{}/v2/a/blobs/{d}", t.url))
            .header("authorization", &push_a)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "{query}: b's blob leaked"
        );
        assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    }

    // With pull on `b` the mount works.
    let both = bearer(&c, &t.url, "repository:a:pull,push repository:b:pull").await;
    let r = c
        .post(format!("{}/v2/a/blobs/uploads/?mount={d}&from=b", t.url))
        .header("authorization", &both)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c
        .get(format!("{}/v2/a/blobs/{d}", t.url))
        .header("authorization", &push_a)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), &secret[..]);
}

fn index_of(child: &emulator::Digest, child_mt: &str, size: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":MT_INDEX,
        "manifests":[{"mediaType":child_mt,"digest":child.as_str(),"size":size}]}))
    .unwrap()
}

#[tokio::test]
async fn nested_index_chain_is_limited() {
    let t = start().await;
    let c = client();
    let p = push_image(&c, &t.url, "r", "img", &[gzip_tar(&[("f", b"x")])]).await;
    let (mut child, mut child_mt, mut size) = (p.manifest, MT_MANIFEST, p.manifest_bytes.len());
    let max = registry_mock::routes::manifests::MAX_INDEX_DEPTH;
    for level in 1..=max + 1 {
        let body = index_of(&child, child_mt, size);
        let r = put_manifest(&c, &t.url, "r", &format!("l{level}"), MT_INDEX, &body).await;
        if level <= max {
            assert_eq!(r.status(), StatusCode::CREATED, "level {level}");
        } else {
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "level {level}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["errors"][0]["code"], "MANIFEST_INVALID");
            assert!(v["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("nested deeper"));
        }
        (child, child_mt, size) = (digest(&body), MT_INDEX, body.len());
    }
    let r = c
        .get(format!("{}/v2/r/manifests/l{}", t.url, max + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// Write a manifest into the store by hand, under a digest its content does not have: the
/// only way to make indexes that refer to each other (or to themselves).
fn plant_index(
    root: &std::path::Path,
    repo: &str,
    at: &emulator::Digest,
    child: &emulator::Digest,
) {
    let hex = at.hex();
    let blob = root.join("blobs/sha256").join(&hex[..2]).join(hex);
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::write(&blob, index_of(child, MT_INDEX, 100)).unwrap();
    let link = root.join("repos").join(repo).join("_manifests").join(hex);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::fs::write(&link, MT_INDEX).unwrap();
}

#[tokio::test]
async fn index_cycles_are_refused() {
    let t = start().await;
    let c = client();
    push_image(&c, &t.url, "r", "img", &[gzip_tar(&[("f", b"x")])]).await;
    let (x, y, s) = (digest(b"x"), digest(b"y"), digest(b"self"));
    plant_index(t.dir.path(), "r", &x, &y); // x → y → x
    plant_index(t.dir.path(), "r", &y, &x);
    plant_index(t.dir.path(), "r", &s, &s); // s → s
    for target in [&x, &s] {
        let body = index_of(target, MT_INDEX, 100);
        let r = put_manifest(&c, &t.url, "r", "top", MT_INDEX, &body).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "via {target}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errors"][0]["code"], "MANIFEST_INVALID");
        assert!(v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("cycle"));
    }
    // The registry still serves.
    let r = c
        .get(format!("{}/v2/r/manifests/img", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn metrics_method_labels_are_bounded() {
    let t = start().await;
    let c = client();
    let long = Method::from_bytes(&[b'X'; 10_000]).unwrap();
    let r = c
        .request(long, format!("{}/v2/", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let m = c
        .get(format!("{}/metrics", t.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!m.contains("XXXXXXXX"), "raw method in the labels");
    assert!(
        m.contains(r#"registry_requests_total{route="/v2/",method="other",status="405"} 1"#),
        "{m}"
    );
    assert!(m.len() < 8_000, "metrics grew to {} bytes", m.len());
}

/// A body sent chunked (no Content-Length), so only its real length can be checked.
fn chunked(data: &'static [u8]) -> reqwest::Body {
    reqwest::Body::wrap_stream(futures::stream::iter(
        data.chunks(2)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from_static(c)))
            .collect::<Vec<_>>(),
    ))
}

#[tokio::test]
async fn content_range_is_checked_against_body_and_offset() {
    let t = start().await;
    let c = client();
    let r = c
        .post(format!("{}/v2/cr/blobs/uploads/", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = format!("{}{}", t.url, r.headers()["location"].to_str().unwrap());
    let status_range = |c: reqwest::Client, loc: String| async move {
        let r = c.get(&loc).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        r.headers()["range"].to_str().unwrap().to_string()
    };
    // Range says 10 bytes, body has 5; range says 3 bytes, body has 5; range skips ahead.
    for (range, body) in [("0-9", b"hello"), ("0-2", b"hello"), ("5-9", b"hello")] {
        let r = c
            .patch(&loc)
            .header("content-range", range)
            .body(chunked(body))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(r.headers()["range"], "0-0", "{range}");
        assert_eq!(status_range(c.clone(), loc.clone()).await, "0-0");
    }
    let r = c
        .patch(&loc)
        .header("content-range", "0-4")
        .body(chunked(b"hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(status_range(c.clone(), loc.clone()).await, "0-4");
    let d = digest(b"hello world");
    let r = c
        .put(format!("{loc}?digest={d}"))
        .header("content-range", "5-10")
        .body(chunked(b" world"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c
        .get(format!("{}/v2/cr/blobs/{d}", t.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), b"hello world");
}

#[tokio::test]
async fn anonymous_catalog_is_refused_when_auth_is_on() {
    let t = start_with(|c| {
        c.users = vec![("alice".into(), "pw".into())];
        c.anonymous_pull = true;
    })
    .await;
    let c = client();
    let r = c
        .post(format!(
            "{}/v2/hidden/blobs/uploads/?digest={}",
            t.url,
            digest(b"b")
        ))
        .basic_auth("alice", Some("pw"))
        .body(&b"b"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .get(format!("{}/v2/_catalog", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("registry:catalog:*"));
    let r = c
        .get(format!("{}/v2/_catalog", t.url))
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], json!(["hidden"]));
    // Anonymous pull itself still works.
    let r = c
        .get(format!("{}/v2/hidden/blobs/{}", t.url, digest(b"b")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn deleted_manifest_is_gone_from_v2_and_mount() {
    let t = start_with(|c| c.teleport_repos = vec!["tele".into()]).await;
    let c = client();
    let p = push_image(&c, &t.url, "tele", "v1", &[gzip_tar(&[("f", b"x")])]).await;
    let mount = format!("{}/mount/v1/tele/_manifests/{}", t.url, p.manifest);
    poll_until("expansion", Duration::from_secs(30), || {
        let (c, mount) = (c.clone(), mount.clone());
        async move {
            let r = c.get(&mount).send().await.unwrap();
            (r.status() == StatusCode::OK).then_some(())
        }
    })
    .await;
    let r = c
        .delete(format!("{}/v2/tele/manifests/{}", t.url, p.manifest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for reference in ["v1".to_string(), p.manifest.to_string()] {
        let r = c
            .get(format!("{}/v2/tele/manifests/{reference}", t.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{reference}");
        assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    }
    let v: Value = c
        .get(format!("{}/v2/tele/tags/list", t.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], json!([]));
    let r = c.get(&mount).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "/mount answers for a deleted manifest"
    );
    // A second DELETE finds nothing.
    let r = c
        .delete(format!("{}/v2/tele/manifests/{}", t.url, p.manifest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
}
