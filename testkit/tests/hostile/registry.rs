//! Registry corpus cases, each on its own `registry-mock serve` process so that its peak RSS is
//! the case's own.
// The heavy-case lock serialises whole tests across the harness's threads; each test owns its
// runtime and nothing in it takes the lock, so holding it across `.await` cannot deadlock.
#![allow(clippy::await_holding_lock)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use emulator::Digest;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use testkit::registry::*;
use testkit::TestDir;

const MIB: u64 = 1 << 20;

/// Runs `case` against a fresh registry (`extra` serve flags), then checks the registry still
/// serves another client (a small image pushed and read back), and that its peak RSS grew by at
/// most `budget_mib` over its RSS when it was ready. Returns (ready, peak) in KiB.
async fn with_registry<F, Fut>(name: &str, extra: &[&str], budget_mib: u64, case: F) -> (u64, u64)
where
    F: FnOnce(String, u16) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let t = TestDir::new();
    let root = t.path().join("reg");
    let mut reg = RegistryProcess::start(&root, extra);
    let ready = reg.peak_rss_kib();
    case(reg.url.clone(), reg.port).await;
    assert!(reg.running(), "{name}: registry died: {}", reg.log_text());
    // Still serving others.
    let c = client();
    let layer = gzip_tar(&[("after", format!("{name} survived").as_bytes())]);
    let p = push_image(
        &c,
        &reg.url,
        "others/after",
        "1",
        std::slice::from_ref(&layer),
    )
    .await;
    let got = c
        .get(format!(
            "{}/v2/others/after/blobs/{}",
            reg.url, p.layers[0].0
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        &got[..],
        &layer[..],
        "{name}: served wrong bytes afterwards"
    );
    let peak = reg.peak_rss_kib();
    eprintln!(
        "hostile {name}: registry VmHWM {ready} KiB at start, {peak} KiB peak (+{} KiB, budget {} KiB)",
        peak.saturating_sub(ready),
        budget_mib * 1024
    );
    assert!(
        peak <= ready + budget_mib * 1024,
        "{name}: peak RSS {peak} KiB, {ready} KiB at start: more than {budget_mib} MiB for one case"
    );
    (ready, peak)
}

/// 1 MiB of pseudo-random bytes, repeated `n` times as a stream body; and its digest.
fn big_body(n: u64) -> (reqwest::Body, Digest, u64) {
    let chunk = bytes::Bytes::from(random_bytes(MIB as usize, 42));
    let mut h = Sha256::new();
    for _ in 0..n {
        h.update(&chunk);
    }
    let d: Digest = format!("sha256:{}", hex::encode(h.finalize()))
        .parse()
        .unwrap();
    let s = futures_stream(chunk, n);
    (reqwest::Body::wrap_stream(s), d, n * MIB)
}

fn futures_stream(
    chunk: bytes::Bytes,
    n: u64,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    futures::stream::iter((0..n).map(move |_| Ok(chunk.clone())))
}

/// Reads a whole response body as a stream, counting bytes (never holding it).
async fn drain(r: reqwest::Response) -> u64 {
    use futures::StreamExt;
    let mut s = r.bytes_stream();
    let mut n = 0;
    while let Some(b) = s.next().await {
        n += b.unwrap().len() as u64;
    }
    n
}

/// Sends a raw request: `head` (without the final blank line), then `body` pieces from another
/// thread (a server that answers early may stop reading); returns the response's status line
/// and body as text.
fn raw_request(port: u16, head: String, body: Vec<Vec<u8>>) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(format!("{head}\r\n\r\n").as_bytes());
        for b in body {
            if w.write_all(&b).is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&got);
        if let Some((h, b)) = text.split_once("\r\n\r\n") {
            let len = h.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            });
            if len.is_some_and(|l| b.len() >= l) {
                break;
            }
        }
    }
    drop(s);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&got).into_owned();
    let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        h.lines().next().unwrap_or_default().to_owned(),
        b.to_owned(),
    )
}

fn code_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A 128 MiB blob streamed in (monolithic and chunked uploads) and out (whole and by ranges,
/// malformed ones included), and `PATCH` with malformed `Content-Range`: every answer is the
/// bytes asked for, the whole blob (a Range the spec lets a server ignore), or an OCI error;
/// nothing holds a body whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_blobs_and_malformed_ranges_stream_in_bounded_memory() {
    let _h = crate::heavy();
    const N: u64 = 128;
    with_registry("128MiB-blob+ranges", &[], 48, |url, _| async move {
        let c = client();
        let (body, d, len) = big_body(N);
        let r = c
            .post(format!("{url}/v2/big/blobs/uploads/?digest={d}"))
            .header("content-length", len)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        // Whole, streamed back.
        let r = c
            .get(format!("{url}/v2/big/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(drain(r).await, len);
        // Ranges: good, malformed (ignored: whole blob), unsatisfiable (416 + Content-Range).
        let cases: &[(&str, StatusCode, Option<u64>)] = &[
            ("bytes=0-1023", StatusCode::PARTIAL_CONTENT, Some(1024)),
            ("bytes=-10", StatusCode::PARTIAL_CONTENT, Some(10)),
            ("bytes=100-", StatusCode::PARTIAL_CONTENT, Some(len - 100)),
            ("bytes=0-99999999999999999999999", StatusCode::OK, Some(len)),
            ("bytes=abc", StatusCode::OK, Some(len)),
            ("bytes=0-1,5-6", StatusCode::OK, Some(len)),
            ("pages=1-2", StatusCode::OK, Some(len)),
            ("bytes=5-1", StatusCode::RANGE_NOT_SATISFIABLE, None),
            ("bytes=-0", StatusCode::RANGE_NOT_SATISFIABLE, None),
            (
                &*Box::leak(format!("bytes={len}-").into_boxed_str()),
                StatusCode::RANGE_NOT_SATISFIABLE,
                None,
            ),
        ];
        for (range, want, n) in cases {
            let r = c
                .get(format!("{url}/v2/big/blobs/{d}"))
                .header("range", *range)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), *want, "Range: {range}");
            if *want == StatusCode::RANGE_NOT_SATISFIABLE {
                let cr = r
                    .headers()
                    .get("content-range")
                    .map(|v| v.to_str().unwrap().to_owned());
                assert_eq!(
                    cr.as_deref(),
                    Some(&*format!("bytes */{len}")),
                    "Range: {range}"
                );
            }
            let got = drain(r).await;
            if let Some(n) = n {
                assert_eq!(got, *n, "Range: {range}");
            }
        }
        // A chunked upload with malformed Content-Range: refused with RANGE_INVALID (416), the
        // session kept; a correct one then completes.
        let r = c
            .post(format!("{url}/v2/big/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let loc = format!("{url}{}", r.headers()["location"].to_str().unwrap());
        let piece = random_bytes(4096, 7);
        for bad in ["5-2", "abc", "100-4195", "0-18446744073709551616", "-"] {
            let r = c
                .patch(&loc)
                .header("content-range", bad)
                .header("content-type", "application/octet-stream")
                .body(piece.clone())
                .send()
                .await
                .unwrap();
            let s = r.status();
            let code = error_code(r).await;
            assert!(
                s == StatusCode::RANGE_NOT_SATISFIABLE || s == StatusCode::BAD_REQUEST,
                "Content-Range {bad}: {s}"
            );
            assert!(
                code == "RANGE_INVALID" || code == "BLOB_UPLOAD_INVALID",
                "Content-Range {bad}: {code}"
            );
        }
        let d2 = digest(&piece);
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = c
            .put(format!("{loc}{sep}digest={d2}"))
            .header("content-range", "0-4095")
            .header("content-type", "application/octet-stream")
            .body(piece.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap_or_default()
        );
    })
    .await;
}

/// Manifests over the 4 MiB cap: 5 MiB with a Content-Length (refused before the body is read)
/// and 64 MiB chunked (refused once 4 MiB have arrived): 413 SIZE_INVALID, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_manifests_are_size_invalid_in_bounded_memory() {
    let _h = crate::heavy();
    with_registry("huge-manifests", &[], 24, |url, port| async move {
        let cap = registry_mock::routes::manifests::MAX_MANIFEST as u64;
        assert!(5 * MIB > cap);
        // A syntactically valid 5 MiB manifest (padding in an annotation).
        let pad = "x".repeat((5 * MIB) as usize);
        let m = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":MT_MANIFEST,
            "config":{"mediaType":MT_CONFIG,"digest":digest(b"{}").as_str(),"size":2},
            "layers":[], "annotations":{"pad": pad}}))
        .unwrap();
        let head = format!(
            "PUT /v2/huge/manifests/five HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {MT_MANIFEST}\r\nContent-Length: {}\r\nConnection: close",
            m.len()
        );
        let (status, body) =
            tokio::task::spawn_blocking(move || raw_request(port, head, vec![m])).await.unwrap();
        assert!(status.contains(" 413 "), "{status} {body}");
        assert_eq!(code_of(&body), "SIZE_INVALID", "{body}");
        // 64 MiB chunked: no length to refuse up front.
        let piece = vec![b' '; MIB as usize];
        let mut chunks = Vec::new();
        for _ in 0..64 {
            let mut c = format!("{:x}\r\n", piece.len()).into_bytes();
            c.extend_from_slice(&piece);
            c.extend_from_slice(b"\r\n");
            chunks.push(c);
        }
        chunks.push(b"0\r\n\r\n".to_vec());
        let head = format!(
            "PUT /v2/huge/manifests/sixtyfour HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {MT_MANIFEST}\r\nTransfer-Encoding: chunked\r\nConnection: close"
        );
        let (status, body) =
            tokio::task::spawn_blocking(move || raw_request(port, head, chunks)).await.unwrap();
        assert!(status.contains(" 413 "), "{status} {body}");
        assert_eq!(code_of(&body), "SIZE_INVALID", "{body}");
        let c = client();
        for tag in ["five", "sixtyfour"] {
            let r = c.get(format!("{url}/v2/huge/manifests/{tag}")).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{tag} was stored");
        }
    })
    .await;
}

/// A gzip bomb layer in a teleport-enabled repository: 256 MiB of zeros in a file compress to
/// ~256 KiB; the expansion fails with its reason (ratio limit) in `/mount`'s EXPANSION_FAILED,
/// in bounded memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bomb_layer_fails_with_reason_in_bounded_memory() {
    let _h = crate::heavy();
    let bomb = tokio::task::spawn_blocking(|| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let mut h = tar::Header::new_gnu();
        h.set_size(256 * MIB);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path("zeros").unwrap();
        h.set_cksum();
        gz.write_all(h.as_bytes()).unwrap();
        let zeros = vec![0u8; MIB as usize];
        for _ in 0..256 {
            gz.write_all(&zeros).unwrap();
        }
        gz.write_all(&[0u8; 1024]).unwrap();
        gz.finish().unwrap()
    })
    .await
    .unwrap();
    eprintln!("gzip bomb: {} bytes for 256 MiB", bomb.len());
    with_registry(
        "gzip-bomb",
        &["--teleport-repos", "bomb"],
        48,
        |url, _| async move {
            let c = client();
            let p = push_image(&c, &url, "bomb", "1", &[bomb]).await;
            let (s, v) = poll_until(
                "the bomb's expansion to end",
                Duration::from_secs(120),
                || async {
                    let r = c
                        .get(format!("{url}/mount/v1/bomb/_manifests/{}", p.manifest))
                        .send()
                        .await
                        .unwrap();
                    let s = r.status();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    (s != StatusCode::CONFLICT).then_some((s, v))
                },
            )
            .await;
            assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
            assert_eq!(v["errors"][0]["code"], "EXPANSION_FAILED", "{v}");
            let reason = v["errors"][0]["detail"]["reason"]
                .as_str()
                .unwrap_or_default();
            assert!(reason.contains("limit"), "reason: {v}");
        },
    )
    .await;
}

/// A 600-layer image (distribution sets no layer limit, and neither does this registry): the
/// push is accepted, every layer expanded, and `/mount` lists all 600, in bounded memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_layer_image_is_accepted_and_expanded_in_bounded_memory() {
    let _h = crate::heavy();
    with_registry(
        "600-layers",
        &["--teleport-repos", "many", "--expansion-workers", "2"],
        64,
        |url, _| async move {
            let c = client();
            let layers: Vec<Vec<u8>> = (0..600)
                .map(|i| gzip_tar(&[(&format!("l/{i:03}"), format!("layer {i}\n").as_bytes())]))
                .collect();
            let p = push_image(&c, &url, "many", "1", &layers).await;
            let (s, v) = poll_until("600 expansions", Duration::from_secs(300), || async {
                let r = c
                    .get(format!("{url}/mount/v1/many/_manifests/{}", p.manifest))
                    .send()
                    .await
                    .unwrap();
                let s = r.status();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                (s != StatusCode::CONFLICT).then_some((s, v))
            })
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            assert_eq!(v["layers"].as_array().map(Vec::len), Some(600), "{v}");
        },
    )
    .await;
}
