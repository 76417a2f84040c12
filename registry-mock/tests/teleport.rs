//! ACR Teleport extras: repository attributes, expansion on push, `/mount` status and body,
//! expanded index/data serving, `_expand`, failures, de-duplication and restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers outside #[test] fns.

use std::time::Duration;

use emulator::{Digest, EntryKind, Index};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use testkit::registry::*;

const WAIT: Duration = Duration::from_secs(60);

async fn enable(c: &Client, url: &str, repo: &str) {
    let r = c
        .patch(format!("{url}/acr/v1/{repo}"))
        .json(&json!({"teleportEnabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
}

/// Poll /mount until it leaves 409; returns (status, body).
async fn wait_mount(c: &Client, url: &str, repo: &str, d: &Digest) -> (StatusCode, Value) {
    poll_until("expansion", WAIT, || async {
        let r = c
            .get(format!("{url}/mount/v1/{repo}/_manifests/{d}"))
            .send()
            .await
            .unwrap();
        let s = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        (s != StatusCode::CONFLICT).then_some((s, v))
    })
    .await
}

fn layer_files(seed: u64) -> Vec<u8> {
    let big = random_bytes(1_500_000, seed);
    gzip_tar(&[
        ("usr/bin/tool", &big),
        ("etc/config", b"key=value\n"),
        ("etc/copy", b"key=value\n"),
    ])
}

#[tokio::test]
async fn push_to_enabled_repo_expands_and_mount_serves_it() {
    let t = start().await;
    let c = client();
    // Attributes before and after enabling.
    let r = c
        .get(format!("{}/acr/v1/tele/app", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    enable(&c, &t.url, "tele/app").await;
    let v: Value = c
        .get(format!("{}/acr/v1/tele/app", t.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["imageName"], "tele/app");
    assert_eq!(v["changeableAttributes"]["teleportEnabled"], true);
    for k in [
        "deleteEnabled",
        "writeEnabled",
        "readEnabled",
        "listEnabled",
    ] {
        assert_eq!(v["changeableAttributes"][k], true);
    }
    assert!(v["createdTime"].as_str().unwrap().ends_with('Z'));
    let r = c
        .patch(format!("{}/acr/v1/tele/app", t.url))
        .json(&json!({"bogus": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let l1 = layer_files(1);
    let l2 = gzip_tar(&[("hello.txt", b"hello teleport\n")]);
    let p = push_image(&c, &t.url, "tele/app", "v1", &[l1.clone(), l2.clone()]).await;
    let v: Value = c
        .get(format!("{}/acr/v1/tele/app", t.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["manifestCount"], 1);
    assert_eq!(v["tagCount"], 1);

    let (s, body) = wait_mount(&c, &t.url, "tele/app", &p.manifest).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["schemaVersion"], 1);
    assert_eq!(body["formatVersion"], 1);
    assert_eq!(body["repository"], "tele/app");
    assert_eq!(body["manifestDigest"], p.manifest.as_str());
    let layers = body["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for (i, (gz, (ld, size))) in [&l1, &l2].into_iter().zip(&p.layers).enumerate() {
        let l = &layers[i];
        assert_eq!(l["digest"], ld.as_str());
        assert_eq!(l["size"], *size);
        assert_eq!(l["mediaType"], MT_LAYER);
        assert_eq!(l["diffId"], diff_id(gz).as_str());
        assert_eq!(
            l["index"]["url"],
            format!("/mount/v1/tele/app/_layers/{ld}/index").as_str()
        );
        assert_eq!(
            l["data"]["url"],
            format!("/mount/v1/tele/app/_layers/{ld}/data").as_str()
        );
        assert!(l["chunkSize"].as_u64().unwrap().is_power_of_two());
        assert!(l["entries"].as_u64().unwrap() >= 1);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
        assert_eq!(l["uncompressedSize"], raw.len() as u64);
    }

    // The index: whole, then by range; decodes and matches the body.
    let l = &layers[0];
    let url = format!("{}{}", t.url, l["index"]["url"].as_str().unwrap());
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ib = r.bytes().await.unwrap();
    assert_eq!(ib.len() as u64, l["index"]["size"].as_u64().unwrap());
    assert_eq!(digest(&ib).as_str(), l["index"]["digest"].as_str().unwrap());
    let r = c
        .get(&url)
        .header("range", "bytes=0-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &ib[..8]);
    let idx = Index::decode(&ib).unwrap();
    assert_eq!(idx.diff_id.as_str(), l["diffId"].as_str().unwrap());
    assert_eq!(
        idx.data_digest.as_str(),
        l["data"]["digest"].as_str().unwrap()
    );
    assert_eq!(idx.data_size, l["data"]["size"].as_u64().unwrap());

    // The data: a file read by Range at the offset the index gives.
    let tool = idx
        .entries
        .iter()
        .find(|e| e.path == "usr/bin/tool")
        .unwrap();
    assert_eq!(tool.kind, EntryKind::File);
    let want = random_bytes(1_500_000, 1);
    let durl = format!("{}{}", t.url, l["data"]["url"].as_str().unwrap());
    let (a, b) = (tool.data_offset + 1000, tool.data_offset + 200_999);
    let r = c
        .get(&durl)
        .header("range", format!("bytes={a}-{b}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes {a}-{b}/{}", idx.data_size).as_str()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &want[1000..201_000]);
    let whole = c.get(&durl).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(digest(&whole), idx.data_digest);
    let r = c.head(&durl).send().await.unwrap();
    assert_eq!(
        r.headers()["content-length"],
        idx.data_size.to_string().as_str()
    );
    let r = c
        .get(&durl)
        .header("range", format!("bytes={}-", idx.data_size))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // Only for layers of that repository.
    let r = c
        .get(format!(
            "{}/mount/v1/elsewhere/_layers/{}/index",
            t.url, p.layers[0].0
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // State persisted beside the output.
    let sdir = t
        .dir
        .path()
        .join("expanded/sha256")
        .join(p.layers[0].0.hex());
    let st: Value =
        serde_json::from_slice(&std::fs::read(sdir.join("state.json")).unwrap()).unwrap();
    assert_eq!(st["state"], "expanded");
    assert!(sdir.join("index").is_file() && sdir.join("data").is_file());
}

#[tokio::test]
async fn not_enabled_and_pushed_before_enable() {
    let t = start().await;
    let c = client();
    let p = push_image(&c, &t.url, "plain", "v1", &[gzip_tar(&[("a", b"a")])]).await;
    let r = c
        .get(format!(
            "{}/mount/v1/plain/_manifests/{}",
            t.url, p.manifest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Enabling does not backfill (as in ACR)…
    enable(&c, &t.url, "plain").await;
    let r = c
        .get(format!(
            "{}/mount/v1/plain/_manifests/{}",
            t.url, p.manifest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // …an explicit _expand does.
    let r = c
        .post(format!("{}/acr/v1/plain/_expand", t.url))
        .json(&json!({"digest": p.manifest.as_str()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let (s, body) = wait_mount(&c, &t.url, "plain", &p.manifest).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // Another image pushed before enabling, expanded by a whole-repository _expand.
    // (Repository already enabled now, so push to a second repo first.)
    let q = push_image(&c, &t.url, "plain2", "v1", &[gzip_tar(&[("b", b"b")])]).await;
    let r = c
        .post(format!("{}/acr/v1/plain2/_expand", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "not enabled");
    enable(&c, &t.url, "plain2").await;
    let r = c
        .post(format!("{}/acr/v1/plain2/_expand", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let (s, _) = wait_mount(&c, &t.url, "plain2", &q.manifest).await;
    assert_eq!(s, StatusCode::OK);
    // Unknown digest in an enabled repo: never queued.
    let r = c
        .get(format!(
            "{}/mount/v1/plain2/_manifests/{}",
            t.url,
            digest(b"x")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .get(format!("{}/mount/v1/plain2/_manifests/sha256:zz", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn shared_layer_expanded_once_across_repos() {
    let t = start_with(|c| c.teleport_repos = vec!["one".into(), "two/x".into()]).await;
    let c = client();
    let shared = layer_files(7);
    let p1 = push_image(
        &c,
        &t.url,
        "one",
        "v1",
        &[shared.clone(), gzip_tar(&[("only1", b"1")])],
    )
    .await;
    let p2 = push_image(
        &c,
        &t.url,
        "two/x",
        "v1",
        &[shared.clone(), gzip_tar(&[("only2", b"2")])],
    )
    .await;
    for (repo, p) in [("one", &p1), ("two/x", &p2)] {
        let (s, body) = wait_mount(&c, &t.url, repo, &p.manifest).await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    assert_eq!(p1.layers[0].0, p2.layers[0].0);
    // Three distinct layers, each queued and expanded exactly once.
    assert_eq!(
        metric(
            &c,
            &t.url,
            "registry_expansion_layers_total{state=\"queued\"}"
        )
        .await,
        3
    );
    assert_eq!(
        metric(
            &c,
            &t.url,
            "registry_expansion_layers_total{state=\"expanded\"}"
        )
        .await,
        3
    );
    assert_eq!(
        metric(&c, &t.url, "registry_expansion_seconds_count").await,
        3
    );
    // Re-pushing the same image (another tag) queues nothing new.
    let r = put_manifest(&c, &t.url, "one", "again", MT_MANIFEST, &p1.manifest_bytes).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (s, _) = wait_mount(&c, &t.url, "one", &p1.manifest).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        metric(
            &c,
            &t.url,
            "registry_expansion_layers_total{state=\"queued\"}"
        )
        .await,
        3
    );
}

/// A tar whose only entry is named `../escape` (written raw: the tar crate refuses such names).
fn hostile_layer() -> Vec<u8> {
    let mut h = tar::Header::new_old();
    let name = b"../escape";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(4);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"evil"[..]).unwrap();
    let raw = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    gz.finish().unwrap()
}

#[tokio::test]
async fn corrupt_and_hostile_layers_fail_with_reason() {
    let t = start_with(|c| c.teleport_repos = vec!["bad".into()]).await;
    let c = client();
    let good = layer_files(3);
    let truncated = good[..good.len() / 2].to_vec();
    for (tag, layer) in [("truncated", truncated), ("hostile", hostile_layer())] {
        let p = push_image(&c, &t.url, "bad", tag, &[layer]).await;
        let (s, body) = wait_mount(&c, &t.url, "bad", &p.manifest).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{tag}: {body}");
        let e = &body["errors"][0];
        assert_eq!(e["code"], "EXPANSION_FAILED");
        assert_eq!(e["detail"]["layer"], p.layers[0].0.as_str());
        assert!(
            !e["detail"]["reason"].as_str().unwrap().is_empty(),
            "{body}"
        );
        let st: Value = serde_json::from_slice(
            &std::fs::read(
                t.dir
                    .path()
                    .join("expanded/sha256")
                    .join(p.layers[0].0.hex())
                    .join("state.json"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(st["state"], "failed");
        // Nothing served for a failed layer.
        let r = c
            .get(format!(
                "{}/mount/v1/bad/_layers/{}/data",
                t.url, p.layers[0].0
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(
        metric(
            &c,
            &t.url,
            "registry_expansion_layers_total{state=\"failed\"}"
        )
        .await,
        2
    );
    // The server is still fine.
    assert_eq!(
        c.get(format!("{}/v2/", t.url))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn multi_arch_index_expands_children() {
    let t = start_with(|c| c.teleport_repos = vec!["multi".into()]).await;
    let c = client();
    let a = push_image(
        &c,
        &t.url,
        "multi",
        "amd",
        &[gzip_tar(&[("arch", b"amd64")])],
    )
    .await;
    let b = push_image(
        &c,
        &t.url,
        "multi",
        "arm",
        &[gzip_tar(&[("arch", b"arm64")])],
    )
    .await;
    let idx = json!({"schemaVersion":2,"mediaType":MT_INDEX,"manifests":[
        {"mediaType":MT_MANIFEST,"digest":a.manifest.as_str(),"size":a.manifest_bytes.len(),"platform":{"architecture":"amd64","os":"linux"}},
        {"mediaType":MT_MANIFEST,"digest":b.manifest.as_str(),"size":b.manifest_bytes.len(),"platform":{"architecture":"arm64","os":"linux"}}]})
    .to_string();
    let r = put_manifest(&c, &t.url, "multi", "latest", MT_INDEX, idx.as_bytes()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (s, body) = wait_mount(&c, &t.url, "multi", &digest(idx.as_bytes())).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let ms = body["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    assert_eq!(ms[1]["platform"]["architecture"], "arm64");
    assert_eq!(ms[1]["layers"][0]["digest"], b.layers[0].0.as_str());
}

#[tokio::test]
async fn expansion_state_survives_restart_and_unfinished_layers_are_requeued() {
    let mut t = start_with(|c| c.teleport_repos = vec!["persist".into()]).await;
    let c = client();
    let p = push_image(&c, &t.url, "persist", "v1", &[layer_files(5)]).await;
    let (s, first) = wait_mount(&c, &t.url, "persist", &p.manifest).await;
    assert_eq!(s, StatusCode::OK);
    t.stop().await;

    // Pretend the process died mid-expansion: state "expanding", output gone.
    let dir = t
        .dir
        .path()
        .join("expanded/sha256")
        .join(p.layers[0].0.hex());
    std::fs::remove_file(dir.join("data")).unwrap();
    std::fs::remove_file(dir.join("index")).unwrap();
    let mut st: Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    st["state"] = json!("expanding");
    st["result"] = Value::Null;
    std::fs::write(dir.join("state.json"), serde_json::to_vec(&st).unwrap()).unwrap();

    let reg = registry_mock::start(registry_mock::Config::new(t.dir.path()))
        .await
        .unwrap();
    let url = reg.url();
    let (s, again) = wait_mount(&c, &url, "persist", &p.manifest).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    // Deterministic output: the same index and data digests as before.
    assert_eq!(
        first["layers"][0]["index"]["digest"],
        again["layers"][0]["index"]["digest"]
    );
    assert_eq!(
        first["layers"][0]["data"]["digest"],
        again["layers"][0]["data"]["digest"]
    );
    let r = c
        .get(format!(
            "{url}{}",
            again["layers"][0]["data"]["url"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    reg.shutdown().await.unwrap();
}

#[tokio::test]
async fn check_expansion_library_flow() {
    use registry_client::{Credentials, MountStatus, RegistryClient};
    let t = start_with(|c| {
        c.users = vec![("bob".into(), "pw".into())];
        c.anonymous_pull = false;
        c.teleport_repos = vec!["ready".into()];
    })
    .await;
    // Push with basic auth through a client that always sends it.
    let auth_client = Client::builder()
        .default_headers({
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("authorization", "Basic Ym9iOnB3".parse().unwrap()); // bob:pw
            h
        })
        .build()
        .unwrap();
    let p = push_image(
        &auth_client,
        &t.url,
        "ready",
        "v1",
        &[gzip_tar(&[("x", b"y")])],
    )
    .await;
    push_image(
        &auth_client,
        &t.url,
        "notenabled",
        "v1",
        &[gzip_tar(&[("x", b"z")])],
    )
    .await;
    let check = |repo: &'static str, password: &'static str| {
        let url = t.url.clone();
        async move {
            let c = RegistryClient::new(
                &url,
                Some(Credentials::new("bob", password)),
                Default::default(),
            )
            .unwrap();
            let mut lines = Vec::new();
            let r = c
                .check_expansion(
                    repo,
                    "v1",
                    Duration::from_millis(50),
                    Duration::from_secs(60),
                    |l| lines.push(l.to_string()),
                )
                .await;
            (r, lines)
        }
    };
    let (out, lines) = check("ready", "pw").await;
    let (digest, status) = out.unwrap();
    assert_eq!(digest, p.manifest);
    match &status {
        MountStatus::Ready(info) => assert_eq!(info.manifest_digest, p.manifest),
        other => panic!("want Ready, got {other:?}"),
    }
    assert_eq!(lines.first().unwrap(), &format!("digest: {}", p.manifest));
    assert_eq!(lines.last().unwrap(), "layers ready");
    let (out, _) = check("notenabled", "pw").await;
    assert_eq!(out.unwrap().1, MountStatus::NotEnabled);
    let (out, _) = check("ready", "wrong").await;
    assert!(out.is_err(), "{out:?}");
}

#[tokio::test]
async fn artifacts_in_enabled_repo_are_not_expanded() {
    let t = start_with(|c| c.teleport_repos = vec!["art".into()]).await;
    let c = client();
    let p = push_image(&c, &t.url, "art", "v1", &[gzip_tar(&[("f", b"1")])]).await;
    let empty = push_blob(&c, &t.url, "art", b"{}").await;
    let sig = json!({"schemaVersion":2,"mediaType":MT_MANIFEST,"artifactType":"application/vnd.example.sig",
        "config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":empty.as_str(),"size":2},
        "layers":[{"mediaType":"application/vnd.oci.empty.v1+json","digest":empty.as_str(),"size":2}],
        "subject":{"mediaType":MT_MANIFEST,"digest":p.manifest.as_str(),"size":p.manifest_bytes.len()}})
    .to_string();
    let r = put_manifest(
        &c,
        &t.url,
        "art",
        digest(sig.as_bytes()).as_str(),
        MT_MANIFEST,
        sig.as_bytes(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (s, body) = wait_mount(&c, &t.url, "art", &digest(sig.as_bytes())).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["layers"], json!([]));
    let (s, _) = wait_mount(&c, &t.url, "art", &p.manifest).await;
    assert_eq!(s, StatusCode::OK);
    // Only the image's filesystem layer was queued.
    assert_eq!(
        metric(
            &c,
            &t.url,
            "registry_expansion_layers_total{state=\"queued\"}"
        )
        .await,
        1
    );
}

/// Push an image whose config claims `diff_ids` (whatever the layers hold).
async fn push_image_claiming(
    c: &Client,
    url: &str,
    repo: &str,
    tag: &str,
    layers: &[Vec<u8>],
    diff_ids: &[Digest],
) -> Digest {
    let ids: Vec<&str> = diff_ids.iter().map(Digest::as_str).collect();
    let config = json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":ids},"config":{}});
    let cb = serde_json::to_vec(&config).unwrap();
    let cd = push_blob(c, url, repo, &cb).await;
    let mut descs = Vec::new();
    for l in layers {
        let d = push_blob(c, url, repo, l).await;
        descs.push(json!({"mediaType": MT_LAYER, "digest": d.as_str(), "size": l.len()}));
    }
    let m = json!({"schemaVersion":2,"mediaType":MT_MANIFEST,
        "config":{"mediaType":MT_CONFIG,"digest":cd.as_str(),"size":cb.len()},"layers":descs});
    let mb = serde_json::to_vec(&m).unwrap();
    let r = put_manifest(c, url, repo, tag, MT_MANIFEST, &mb).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    digest(&mb)
}

#[tokio::test]
async fn layer_substitution_by_a_false_diff_id_is_refused() {
    let t = start_with(|c| c.teleport_repos = vec!["base".into(), "evil".into()]).await;
    let c = client();
    let base = layer_files(21);
    let own = gzip_tar(&[("bin/sh", b"#!/bin/evil\n")]);
    // An honest image with the common base.
    let honest = push_image(&c, &t.url, "base", "v1", std::slice::from_ref(&base)).await;
    let (s, _) = wait_mount(&c, &t.url, "base", &honest.manifest).await;
    assert_eq!(s, StatusCode::OK);
    // The attacker's config claims the base's diff_id over its own tar.
    let evil = push_image_claiming(
        &c,
        &t.url,
        "evil",
        "v1",
        std::slice::from_ref(&own),
        &[diff_id(&base)],
    )
    .await;
    let (s, v) = wait_mount(&c, &t.url, "evil", &evil).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert_eq!(v["errors"][0]["code"], "EXPANSION_FAILED");
    let reason = v["errors"][0]["detail"]["reason"].as_str().unwrap();
    assert!(reason.contains("diff_id mismatch"), "{reason}");
    assert!(reason.contains(diff_id(&base).as_str()), "{reason}");
    assert!(reason.contains(diff_id(&own).as_str()), "{reason}");
    // The same blob under an honest config (judged per image) is fine, and so is the base.
    let fine = push_image_claiming(
        &c,
        &t.url,
        "evil",
        "v2",
        std::slice::from_ref(&own),
        &[diff_id(&own)],
    )
    .await;
    let (s, v) = wait_mount(&c, &t.url, "evil", &fine).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["layers"][0]["diffId"], diff_id(&own).as_str());
    let (s, _) = wait_mount(&c, &t.url, "base", &honest.manifest).await;
    assert_eq!(s, StatusCode::OK);
    // A config listing fewer diff_ids than layers is refused too.
    let short = push_image_claiming(&c, &t.url, "evil", "v3", &[own, base], &[]).await;
    let (s, v) = wait_mount(&c, &t.url, "evil", &short).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    let reason = v["errors"][0]["detail"]["reason"].as_str().unwrap();
    assert!(reason.contains("0 diff_ids for 2 layers"), "{reason}");
}

#[tokio::test]
async fn mount_answers_404_for_a_deleted_manifest() {
    let t = start_with(|c| c.teleport_repos = vec!["gone".into()]).await;
    let c = client();
    let p = push_image(&c, &t.url, "gone", "v1", &[layer_files(31)]).await;
    let (s, _) = wait_mount(&c, &t.url, "gone", &p.manifest).await;
    assert_eq!(s, StatusCode::OK);
    let r = c
        .delete(format!("{}/v2/gone/manifests/{}", t.url, p.manifest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .get(format!("{}/mount/v1/gone/_manifests/{}", t.url, p.manifest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
}

/// Rewrite a layer's persisted state as a run that was cut off by a crash.
fn pretend_crashed(root: &std::path::Path, layer: &Digest, attempts: u32) {
    let dir = root.join("expanded/sha256").join(layer.hex());
    let _ = std::fs::remove_file(dir.join("data"));
    let _ = std::fs::remove_file(dir.join("index"));
    let p = dir.join("state.json");
    let mut st: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    st["state"] = json!("expanding");
    st["result"] = Value::Null;
    st["attempts"] = json!(attempts);
    std::fs::write(&p, serde_json::to_vec(&st).unwrap()).unwrap();
}

#[tokio::test]
async fn a_layer_crashing_every_attempt_is_failed_after_max_attempts() {
    let mut t = start_with(|c| c.teleport_repos = vec!["crash".into()]).await;
    let c = client();
    let p = push_image(&c, &t.url, "crash", "v1", &[layer_files(41)]).await;
    let (s, _) = wait_mount(&c, &t.url, "crash", &p.manifest).await;
    assert_eq!(s, StatusCode::OK);
    t.stop().await;
    let layer = &p.layers[0].0;

    // A crash with attempts left: re-queued and expanded (attempt 3 of 3).
    pretend_crashed(t.dir.path(), layer, 2);
    let reg = registry_mock::start(registry_mock::Config::new(t.dir.path()))
        .await
        .unwrap();
    let (s, v) = wait_mount(&c, &reg.url(), "crash", &p.manifest).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    reg.shutdown().await.unwrap();
    let st: Value = serde_json::from_slice(
        &std::fs::read(
            t.dir
                .path()
                .join("expanded/sha256")
                .join(layer.hex())
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(st["attempts"], 3);

    // The process died during the last allowed attempt: failed, not re-queued forever.
    pretend_crashed(t.dir.path(), layer, 3);
    let reg = registry_mock::start(registry_mock::Config::new(t.dir.path()))
        .await
        .unwrap();
    let r = c
        .get(format!(
            "{}/mount/v1/crash/_manifests/{}",
            reg.url(),
            p.manifest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let v: Value = r.json().await.unwrap();
    let reason = v["errors"][0]["detail"]["reason"].as_str().unwrap();
    assert!(reason.contains("did not finish in 3 attempts"), "{reason}");
    // check-expansion shows the reason too.
    let c2 = registry_client::RegistryClient::new(&reg.url(), None, Default::default()).unwrap();
    match c2
        .check_expansion("crash", "v1", Duration::from_millis(50), WAIT, |_| {})
        .await
        .unwrap()
        .1
    {
        registry_client::MountStatus::Failed { reason } => {
            assert!(reason.contains("did not finish in 3 attempts"), "{reason}")
        }
        other => panic!("want Failed, got {other:?}"),
    }
    // An explicit `_expand` retries it from scratch.
    let r = c
        .post(format!("{}/acr/v1/crash/_expand", reg.url()))
        .json(&json!({"digest": p.manifest.as_str()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let (s, v) = wait_mount(&c, &reg.url(), "crash", &p.manifest).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    reg.shutdown().await.unwrap();
}

/// Compressible, file-like content: repeated source lines with some noise.
fn text_bytes(n: usize, seed: u64) -> Vec<u8> {
    let noise = random_bytes(n / 16 + 1, seed);
    let line = b"def handler(request):\n    return render(request, 'index.html')\n";
    (0..n)
        .map(|i| {
            if i % 16 == 0 {
                noise[i / 16]
            } else {
                line[i % line.len()]
            }
        })
        .collect()
}

#[tokio::test]
async fn expansion_produces_compressed_frames_served_by_range_and_advertised() {
    let t = start().await;
    let c = client();
    enable(&c, &t.url, "tele/z").await;
    let big = text_bytes(600_000, 3);
    let l = gzip_tar(&[("app/big.py", &big), ("app/small.py", b"print('hi')\n")]);
    let p = push_image(&c, &t.url, "tele/z", "v1", &[l]).await;
    let (s, body) = wait_mount(&c, &t.url, "tele/z", &p.manifest).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let info = emulator::mount::MountInfo::decode(body.to_string().as_bytes()).unwrap();
    let layer = &info.layers[0];
    let frames = layer.frames.as_ref().expect("/mount advertises frames");
    assert_eq!(frames.encoding, emulator::mount::FRAMES_ENCODING_ZSTD);
    assert_eq!(
        frames.frame_size,
        registry_mock::expansion::DEFAULT_WIRE_FRAME_SIZE
    );
    let ld = &p.layers[0].0;
    assert_eq!(
        frames.data.url,
        format!("/mount/v1/tele/z/_layers/{ld}/data.zst")
    );
    // The table: whole, by its digest, decodes and describes the data blob.
    let tb = c
        .get(format!("{}{}", t.url, frames.table.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(digest(&tb), frames.table.digest);
    assert_eq!(tb.len() as u64, frames.table.size);
    let table = emulator::frames::FrameTable::decode(&tb).unwrap();
    assert_eq!(table.data_digest, layer.data.digest);
    assert_eq!(table.data_size, layer.data.size);
    assert_eq!(table.compressed_size, frames.data.size);
    assert_eq!(table.compressed_digest, frames.data.digest);
    assert!(
        frames.data.size * 3 < layer.data.size,
        "compressible content: {} of {}",
        frames.data.size,
        layer.data.size
    );
    // A data range, read as the frames covering it (one ranged GET), is the plain bytes.
    let plain_url = format!("{}{}", t.url, layer.data.url);
    let plain = c
        .get(&plain_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let before = scrape(&c, &t.url).await;
    let (a, b) = (70_000u64, 200_000u64);
    let (first, last) = table.covering(a, b).unwrap();
    let (cs, ce) = table.compressed_span(first, last).unwrap();
    let r = c
        .get(format!("{}{}", t.url, frames.data.url))
        .header("range", format!("bytes={cs}-{}", ce - 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let z = r.bytes().await.unwrap();
    let out = table.decompress(first, last, &z).unwrap();
    let (ds, de) = table.data_span(first, last).unwrap();
    assert!(ds <= a && b <= de);
    assert_eq!(out, plain[ds as usize..de as usize]);
    // Counted as frame bytes, not as expanded data.
    let after = scrape(&c, &t.url).await;
    let served = |m: &str, k: &str| {
        let v = |t: &str| {
            t.lines()
                .find(|l| l.starts_with(&format!("registry_bytes_served_total{{kind=\"{k}\"}}")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap()
        };
        v(m)
    };
    assert_eq!(
        served(&after, "expanded_frames") - served(&before, "expanded_frames"),
        ce - cs
    );
    assert_eq!(
        served(&after, "expanded_data"),
        served(&before, "expanded_data")
    );
    // Files on disk beside index and data.
    let dir = t.dir.path().join("expanded/sha256").join(ld.hex());
    assert!(dir.join("frames").is_file() && dir.join("data.zst").is_file());
}

#[tokio::test]
async fn wire_compression_off_neither_produces_nor_advertises_frames() {
    let t = start_with(|cfg| cfg.wire_frame_size = None).await;
    let c = client();
    enable(&c, &t.url, "tele/plain").await;
    let l = gzip_tar(&[("a.txt", &text_bytes(100_000, 4)[..])]);
    let p = push_image(&c, &t.url, "tele/plain", "v1", &[l]).await;
    let (s, body) = wait_mount(&c, &t.url, "tele/plain", &p.manifest).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body["layers"][0].get("frames").is_none(), "{body}");
    assert!(body["layers"][0]["data"]["url"].is_string());
    let ld = &p.layers[0].0;
    for part in ["frames", "data.zst"] {
        let r = c
            .get(format!("{}/mount/v1/tele/plain/_layers/{ld}/{part}", t.url))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r).await, "BLOB_UNKNOWN", "{part}");
    }
    let dir = t.dir.path().join("expanded/sha256").join(ld.hex());
    assert!(dir.join("data").is_file() && !dir.join("data.zst").exists());
}

async fn scrape(c: &Client, url: &str) -> String {
    c.get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
