//! OCI Distribution v1.1 conformance of the registry's routes, over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers outside #[test] fns.

use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::registry::*;

#[tokio::test]
async fn base_and_unknown_route() {
    let t = start().await;
    let c = client();
    let r = c.get(format!("{}/v2/", t.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let r = c.get(format!("{}/nope", t.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .get(format!("{}/v2/UPPER/tags/list", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "NAME_INVALID");
}

#[tokio::test]
async fn monolithic_push_head_get_range_delete() {
    let t = start().await;
    let c = client();
    let blob = random_bytes(300_000, 1);
    let d = push_blob(&c, &t.url, "library/redis", &blob).await;

    let r = c
        .head(format!("{}/v2/library/redis/blobs/{d}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "300000");
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());

    let r = c
        .get(format!("{}/v2/library/redis/blobs/{d}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &blob[..]);

    let r = c
        .get(format!("{}/v2/library/redis/blobs/{d}", t.url))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 1000-1999/300000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &blob[1000..2000]);

    let r = c
        .get(format!("{}/v2/library/redis/blobs/{d}", t.url))
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &blob[300_000 - 10..]);

    let r = c
        .get(format!("{}/v2/library/redis/blobs/{d}", t.url))
        .header("range", "bytes=300000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */300000");
    assert_eq!(error_code(r).await, "RANGE_INVALID");

    // Another repository cannot read a blob that was never linked to it.
    let r = c
        .get(format!("{}/v2/other/blobs/{d}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");

    let r = c
        .delete(format!("{}/v2/library/redis/blobs/{d}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .head(format!("{}/v2/library/redis/blobs/{d}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .delete(format!("{}/v2/library/redis/blobs/{d}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");

    let r = c
        .get(format!("{}/v2/library/redis/blobs/sha256:1234", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
}

#[tokio::test]
async fn post_put_and_wrong_digest() {
    let t = start().await;
    let c = client();
    let blob = random_bytes(5000, 2);
    let d = digest(&blob);
    let r = c
        .post(format!("{}/v2/r/blobs/uploads/", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.starts_with("/v2/r/blobs/uploads/"), "{loc}");
    assert!(r.headers().contains_key("docker-upload-uuid"));
    assert_eq!(r.headers()["range"], "0-0");

    let r = c
        .put(format!("{}{loc}?digest={d}", t.url))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["location"], format!("/v2/r/blobs/{d}").as_str());
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    // The session is gone after completion.
    let r = c.get(format!("{}{loc}", t.url)).send().await.unwrap();
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");

    // Wrong digest, monolithic and two-step.
    let wrong = digest(b"something else");
    let r = c
        .post(format!("{}/v2/r/blobs/uploads/?digest={wrong}", t.url))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = c
        .post(format!("{}/v2/r/blobs/uploads/", t.url))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = c
        .put(format!("{}{loc}?digest={wrong}", t.url))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = c
        .head(format!("{}/v2/r/blobs/{wrong}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .put(format!(
            "{}/v2/r/blobs/uploads/nosuchupload?digest={d}",
            t.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn chunked_upload_status_out_of_order_and_cancel() {
    let t = start().await;
    let c = client();
    let blob = random_bytes(10_000, 3);
    let d = digest(&blob);
    let r = c
        .post(format!("{}/v2/a/b/blobs/uploads/", t.url))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();

    let r = c
        .patch(format!("{}{loc}", t.url))
        .header("content-type", "application/octet-stream")
        .header("content-range", "0-3999")
        .header("content-length", "4000")
        .body(blob[..4000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-3999");
    let loc = r.headers()["location"].to_str().unwrap().to_string();

    // Out of order: starts past the end.
    let r = c
        .patch(format!("{}{loc}", t.url))
        .header("content-range", "5000-5999")
        .body(blob[5000..6000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["range"], "0-3999");

    // Status.
    let r = c.get(format!("{}{loc}", t.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-3999");
    assert!(r.headers().contains_key("docker-upload-uuid"));

    // A PATCH without Content-Range appends (skopeo).
    let r = c
        .patch(format!("{}{loc}", t.url))
        .body(blob[4000..8000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-7999");

    // Last chunk with the PUT.
    let r = c
        .put(format!("{}{loc}?digest={d}", t.url))
        .header("content-range", "8000-9999")
        .body(blob[8000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c
        .get(format!("{}/v2/a/b/blobs/{d}", t.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), &blob[..]);

    // Cancel.
    let r = c
        .post(format!("{}/v2/a/b/blobs/uploads/", t.url))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = c.delete(format!("{}{loc}", t.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c.get(format!("{}{loc}", t.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn cross_repo_mount() {
    let t = start().await;
    let c = client();
    let d = push_blob(&c, &t.url, "src/repo", b"mount me").await;
    let r = c
        .post(format!(
            "{}/v2/dst/blobs/uploads/?mount={d}&from=src/repo",
            t.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/dst/blobs/{d}").as_str()
    );
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    let got = c
        .get(format!("{}/v2/dst/blobs/{d}", t.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), b"mount me");
    // Unknown blob: falls back to a normal upload session.
    let missing = digest(b"never pushed");
    let r = c
        .post(format!(
            "{}/v2/dst/blobs/uploads/?mount={missing}&from=src/repo",
            t.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/v2/dst/blobs/uploads/"));
}

#[tokio::test]
async fn manifests_by_tag_and_digest_with_validation() {
    let t = start().await;
    let c = client();
    let layer = gzip_tar(&[("hello.txt", b"hi")]);
    let p = push_image(&c, &t.url, "app", "v1", &[layer]).await;

    for reference in ["v1".to_string(), p.manifest.to_string()] {
        let r = c
            .get(format!("{}/v2/app/manifests/{reference}", t.url))
            .header("accept", MT_MANIFEST)
            .header(
                "accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], MT_MANIFEST);
        assert_eq!(r.headers()["docker-content-digest"], p.manifest.as_str());
        assert_eq!(
            r.headers()["content-length"],
            p.manifest_bytes.len().to_string().as_str()
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), &p.manifest_bytes[..]);
    }
    let r = c
        .head(format!("{}/v2/app/manifests/v1", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-content-digest"], p.manifest.as_str());
    assert_eq!(
        r.headers()["content-length"],
        p.manifest_bytes.len().to_string().as_str()
    );

    let r = c
        .get(format!("{}/v2/app/manifests/nope", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = c
        .get(format!("{}/v2/nosuchrepo/manifests/latest", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");

    // Missing blob.
    let m = json!({"schemaVersion":2,"mediaType":MT_MANIFEST,
        "config":{"mediaType":MT_CONFIG,"digest":p.config.as_str(),"size":serde_json::from_slice::<Value>(&p.manifest_bytes).unwrap()["config"]["size"]},
        "layers":[{"mediaType":MT_LAYER,"digest":digest(b"absent").as_str(),"size":6}]});
    let r = put_manifest(
        &c,
        &t.url,
        "app",
        "broken",
        MT_MANIFEST,
        m.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    // Garbage and wrong digest.
    let r = put_manifest(&c, &t.url, "app", "bad", MT_MANIFEST, b"{not json").await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = put_manifest(
        &c,
        &t.url,
        "app",
        digest(b"x").as_str(),
        MT_MANIFEST,
        &p.manifest_bytes,
    )
    .await;
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // Put by digest works.
    let r = put_manifest(
        &c,
        &t.url,
        "app",
        p.manifest.as_str(),
        MT_MANIFEST,
        &p.manifest_bytes,
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/app/manifests/{}", p.manifest).as_str()
    );

    // Index whose child is unknown, then a valid one.
    let idx = |child: &str, size: usize| {
        json!({"schemaVersion":2,"mediaType":MT_INDEX,"manifests":[{"mediaType":MT_MANIFEST,"digest":child,"size":size,
            "platform":{"architecture":"amd64","os":"linux"}}]})
        .to_string()
    };
    let r = put_manifest(
        &c,
        &t.url,
        "app",
        "multi",
        MT_INDEX,
        idx(digest(b"nope").as_str(), 4).as_bytes(),
    )
    .await;
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    let body = idx(p.manifest.as_str(), p.manifest_bytes.len());
    let r = put_manifest(&c, &t.url, "app", "multi", MT_INDEX, body.as_bytes()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .get(format!("{}/v2/app/manifests/multi", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], MT_INDEX);

    // Delete by tag removes the tag only; by digest removes the manifest.
    let r = c
        .delete(format!("{}/v2/app/manifests/multi", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .get(format!("{}/v2/app/manifests/multi", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .delete(format!("{}/v2/app/manifests/{}", t.url, p.manifest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .get(format!("{}/v2/app/manifests/v1", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn docker_schema2_manifest_and_list() {
    let t = start().await;
    let c = client();
    let cfg = push_blob(&c, &t.url, "d", b"{\"os\":\"linux\"}").await;
    let layer = gzip_tar(&[("a", b"a")]);
    let l = push_blob(&c, &t.url, "d", &layer).await;
    let mt = "application/vnd.docker.distribution.manifest.v2+json";
    let m = json!({"schemaVersion":2,"mediaType":mt,
        "config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":cfg.as_str(),"size":14},
        "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":l.as_str(),"size":layer.len()}]})
    .to_string();
    let r = put_manifest(&c, &t.url, "d", "latest", mt, m.as_bytes()).await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let r = c
        .head(format!("{}/v2/d/manifests/latest", t.url))
        .header("accept", mt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], mt);
    let lmt = "application/vnd.docker.distribution.manifest.list.v2+json";
    let list = json!({"schemaVersion":2,"mediaType":lmt,"manifests":[{"mediaType":mt,"digest":digest(m.as_bytes()).as_str(),
        "size":m.len(),"platform":{"architecture":"amd64","os":"linux"}}]})
    .to_string();
    let r = put_manifest(&c, &t.url, "d", "list", lmt, list.as_bytes()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .get(format!("{}/v2/d/manifests/list", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], lmt);
}

#[tokio::test]
async fn tags_and_catalog_pagination() {
    let t = start().await;
    let c = client();
    let layer = gzip_tar(&[("f", b"x")]);
    let p = push_image(&c, &t.url, "zeta", "t0", std::slice::from_ref(&layer)).await;
    for tag in ["t1", "t2", "t3", "t4"] {
        let r = put_manifest(&c, &t.url, "zeta", tag, MT_MANIFEST, &p.manifest_bytes).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    push_image(&c, &t.url, "alpha/one", "x", std::slice::from_ref(&layer)).await;
    push_image(&c, &t.url, "mid", "x", std::slice::from_ref(&layer)).await;

    let r = c
        .get(format!("{}/v2/zeta/tags/list", t.url))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"name":"zeta","tags":["t0","t1","t2","t3","t4"]}));

    let r = c
        .get(format!("{}/v2/zeta/tags/list?n=2", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["link"],
        "</v2/zeta/tags/list?n=2&last=t1>; rel=\"next\""
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["t0", "t1"]));
    let r = c
        .get(format!("{}/v2/zeta/tags/list?n=2&last=t3", t.url))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("link").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["t4"]));
    let r = c
        .get(format!("{}/v2/zeta/tags/list?n=0", t.url))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!([]));
    let r = c
        .get(format!("{}/v2/nothere/tags/list", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");

    let v: Value = c
        .get(format!("{}/v2/_catalog", t.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["repositories"], json!(["alpha/one", "mid", "zeta"]));
    let r = c
        .get(format!("{}/v2/_catalog?n=1", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["link"],
        "</v2/_catalog?n=1&last=alpha%2Fone>; rel=\"next\""
    );
    let v: Value = c
        .get(format!("{}/v2/_catalog?n=1&last=alpha%2Fone", t.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["repositories"], json!(["mid"]));
}

#[tokio::test]
async fn referrers_and_subject_header() {
    let t = start().await;
    let c = client();
    let layer = gzip_tar(&[("f", b"x")]);
    let p = push_image(&c, &t.url, "ref", "v1", &[layer]).await;
    let empty = push_blob(&c, &t.url, "ref", b"{}").await;
    let sig = |at: &str, n: u32| {
        json!({"schemaVersion":2,"mediaType":MT_MANIFEST,"artifactType":at,
            "config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":empty.as_str(),"size":2},
            "layers":[{"mediaType":"application/vnd.oci.empty.v1+json","digest":empty.as_str(),"size":2}],
            "subject":{"mediaType":MT_MANIFEST,"digest":p.manifest.as_str(),"size":p.manifest_bytes.len()},
            "annotations":{"n":n.to_string()}})
        .to_string()
    };
    let s1 = sig("application/vnd.example.sig", 1);
    let s2 = sig("application/vnd.example.sbom", 2);
    for s in [&s1, &s2] {
        let r = put_manifest(
            &c,
            &t.url,
            "ref",
            digest(s.as_bytes()).as_str(),
            MT_MANIFEST,
            s.as_bytes(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()["oci-subject"], p.manifest.as_str());
    }
    let r = c
        .get(format!("{}/v2/ref/referrers/{}", t.url, p.manifest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], MT_INDEX);
    assert!(r.headers().get("oci-filters-applied").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
    let r = c
        .get(format!(
            "{}/v2/ref/referrers/{}?artifactType=application/vnd.example.sbom",
            t.url, p.manifest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let v: Value = r.json().await.unwrap();
    let ms = v["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0]["digest"], digest(s2.as_bytes()).as_str());
    assert_eq!(ms[0]["artifactType"], "application/vnd.example.sbom");
    assert_eq!(ms[0]["annotations"]["n"], "2");
    // A referrer's layers are served as artifact blobs, not image layers.
    let kind = |k: &str| format!("registry_bytes_served_total{{kind=\"{k}\"}}");
    let (art0, layer0) = (
        metric(&c, &t.url, &kind("artifact_blob")).await,
        metric(&c, &t.url, &kind("layer_blob")).await,
    );
    let r = c
        .get(format!("{}/v2/ref/blobs/{empty}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"{}");
    assert_eq!(metric(&c, &t.url, &kind("artifact_blob")).await, art0 + 2);
    assert_eq!(metric(&c, &t.url, &kind("layer_blob")).await, layer0);
    // Unknown subject: an empty index, never 404.
    let r = c
        .get(format!("{}/v2/ref/referrers/{}", t.url, digest(b"q")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]));
}

#[tokio::test]
async fn concurrent_pushes_of_the_same_blob() {
    let t = start().await;
    let c = client();
    let blob = random_bytes(2 * 1024 * 1024, 9);
    let d = digest(&blob);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (c, url, blob) = (c.clone(), t.url.clone(), blob.clone());
        tasks.push(tokio::spawn(async move {
            let repo = format!("same{}", i % 2);
            // Half monolithic, half chunked.
            if i % 2 == 0 {
                push_blob(&c, &url, &repo, &blob).await;
            } else {
                let r = c
                    .post(format!("{url}/v2/{repo}/blobs/uploads/"))
                    .send()
                    .await
                    .unwrap();
                let loc = r.headers()["location"].to_str().unwrap().to_string();
                let r = c
                    .patch(format!("{url}{loc}"))
                    .body(blob[..1_000_000].to_vec())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::ACCEPTED);
                let d = digest(&blob);
                let r = c
                    .put(format!("{url}{loc}?digest={d}"))
                    .body(blob[1_000_000..].to_vec())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for repo in ["same0", "same1"] {
        let got = c
            .get(format!("{}/v2/{repo}/blobs/{d}", t.url))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(digest(&got), d);
    }
    // Nothing left behind in the staging areas.
    assert_eq!(
        std::fs::read_dir(t.dir.path().join("uploads"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(t.dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn survives_restart() {
    let mut t = start().await;
    let c = client();
    let layer = gzip_tar(&[("persist.txt", b"still here")]);
    let p = push_image(&c, &t.url, "keep/me", "v1", std::slice::from_ref(&layer)).await;
    t.stop().await;
    let mut cfg = registry_mock::Config::new(t.dir.path());
    cfg.expansion_workers = 1;
    let reg = registry_mock::start(cfg).await.unwrap();
    let url = reg.url();
    let r = c
        .get(format!("{url}/v2/keep/me/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &p.manifest_bytes[..]);
    let got = c
        .get(format!("{url}/v2/keep/me/blobs/{}", p.layers[0].0))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), &layer[..]);
    reg.shutdown().await.unwrap();
}
