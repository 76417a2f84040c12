//! `/metrics` byte accounting per kind, and link emulation through the whole HTTP path
//! (on tokio's paused clock, so the check is about the schedule, not the machine's speed).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers outside #[test] fns.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use testkit::registry::*;

#[tokio::test]
async fn bytes_served_are_counted_per_kind() {
    let t = start_with(|c| c.teleport_repos = vec!["m".into()]).await;
    let c = client();
    let layer = gzip_tar(&[("blob.bin", &random_bytes(700_000, 4))]);
    let p = push_image(&c, &t.url, "m", "v1", std::slice::from_ref(&layer)).await;
    let r = c
        .head(format!("{}/v2/m/blobs/{}", t.url, p.config))
        .send()
        .await
        .unwrap();
    let config_len: u64 = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let received = metric(&c, &t.url, "registry_bytes_received_total").await;
    assert_eq!(
        received,
        layer.len() as u64 + config_len + p.manifest_bytes.len() as u64,
        "layer {} config {config_len} manifest {}",
        layer.len(),
        p.manifest_bytes.len()
    );

    // HEADs serve nothing.
    c.head(format!("{}/v2/m/blobs/{}", t.url, p.layers[0].0))
        .send()
        .await
        .unwrap();
    c.head(format!("{}/v2/m/manifests/v1", t.url))
        .send()
        .await
        .unwrap();
    for k in [
        "layer_blob",
        "config_blob",
        "manifest",
        "expanded_index",
        "expanded_data",
    ] {
        assert_eq!(
            metric(
                &c,
                &t.url,
                &format!("registry_bytes_served_total{{kind=\"{k}\"}}")
            )
            .await,
            0,
            "{k}"
        );
    }

    let got = c
        .get(format!("{}/v2/m/blobs/{}", t.url, p.layers[0].0))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), layer.len());
    let part = c
        .get(format!("{}/v2/m/blobs/{}", t.url, p.layers[0].0))
        .header("range", "bytes=100-1099")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(part.len(), 1000);
    c.get(format!("{}/v2/m/blobs/{}", t.url, p.config))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    c.get(format!("{}/v2/m/manifests/v1", t.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &c,
            &t.url,
            "registry_bytes_served_total{kind=\"layer_blob\"}"
        )
        .await,
        layer.len() as u64 + 1000
    );
    assert_eq!(
        metric(
            &c,
            &t.url,
            "registry_bytes_served_total{kind=\"config_blob\"}"
        )
        .await,
        config_len
    );
    assert_eq!(
        metric(&c, &t.url, "registry_bytes_served_total{kind=\"manifest\"}").await,
        p.manifest_bytes.len() as u64
    );

    // Expanded index and data.
    let body: Value = poll_until("expansion", Duration::from_secs(60), || async {
        let r = c
            .get(format!("{}/mount/v1/m/_manifests/{}", t.url, p.manifest))
            .send()
            .await
            .unwrap();
        (r.status() == StatusCode::OK).then_some(())?;
        r.json().await.ok()
    })
    .await;
    let l = &body["layers"][0];
    let ib = c
        .get(format!("{}{}", t.url, l["index"]["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let db = c
        .get(format!("{}{}", t.url, l["data"]["url"].as_str().unwrap()))
        .header("range", "bytes=0-4095")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(db.len(), 4096);
    assert_eq!(
        metric(
            &c,
            &t.url,
            "registry_bytes_served_total{kind=\"expanded_index\"}"
        )
        .await,
        ib.len() as u64
    );
    assert_eq!(
        metric(
            &c,
            &t.url,
            "registry_bytes_served_total{kind=\"expanded_data\"}"
        )
        .await,
        4096
    );

    let text = c
        .get(format!("{}/metrics", t.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("registry_requests_total{route=\"/v2/{name}/blobs/{digest}\",method=\"GET\",status=\"206\"} 1"), "{text}");
    assert!(text.contains("# TYPE registry_expansion_seconds histogram"));
}

/// A 4 MiB blob through a 1 MiB/s link with 50 ms latency takes 4 s (+ latency, − the 10 ms
/// burst) on the paused clock. Virtual time only moves when every task waits, so this checks the
/// limiter's schedule end to end, whatever the machine's speed.
#[tokio::test(start_paused = true)]
async fn link_emulation_paces_blob_downloads() {
    let t = start_with(|c| {
        c.link.bandwidth_bytes_per_sec = Some(1024 * 1024);
        c.link.latency = Duration::from_millis(50);
    })
    .await;
    let c = client();
    let blob = random_bytes(4 * 1024 * 1024, 5);
    let d = push_blob(&c, &t.url, "slow", &blob).await;
    let t0 = tokio::time::Instant::now();
    let got = c
        .get(format!("{}/v2/slow/blobs/{d}", t.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let el = t0.elapsed();
    assert_eq!(got.len(), blob.len());
    assert!(
        el >= Duration::from_millis(4_040) && el < Duration::from_millis(4_300),
        "{el:?}"
    );
}
