//! Fault tests against the real `registry-mock serve` binary: SIGKILL mid-push, a full disk
//! under the registry root, and 1,000 concurrent uploads (descriptors and memory bounded).
//! Synchronisation: conditions (bytes on disk, HTTP answers, /proc counts) are polled with a
//! deadline; a killed child is waited on by its pid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use emulator::Digest;
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::registry::{random_bytes, RegistryProcess as Server};
use testkit::{fd_count, file_fd_count, peak_rss_kib, rss_kib};

fn poll<T>(what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
    testkit::wait_for(what, Duration::from_secs(secs), f)
}

fn blob_url(url: &str, repo: &str, d: &Digest) -> String {
    format!("{url}/v2/{repo}/blobs/{d}")
}

/// Bytes of every regular file under `dir`, recursively.
fn bytes_under(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            n += bytes_under(&e.path());
        } else {
            n += m.len();
        }
    }
    n
}

/// Starts a monolithic push of `len` bytes over a raw socket and sends only `sent` of them,
/// keeping the connection open (the registry is mid-upload).
fn start_partial_push(port: u16, repo: &str, d: &Digest, body: &[u8], sent: usize) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /v2/{repo}/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body[..sent]).unwrap();
    s
}

fn assert_blob(c: &Client, url: &str, repo: &str, d: &Digest, want: Option<&[u8]>) {
    let r = c.get(blob_url(url, repo, d)).send().unwrap();
    match want {
        None => assert_eq!(r.status(), StatusCode::NOT_FOUND, "blob {d} must be absent"),
        Some(bytes) => {
            assert_eq!(r.status(), StatusCode::OK);
            let got = r.bytes().unwrap();
            assert_eq!(got.len(), bytes.len());
            assert_eq!(&Digest::sha256_of(&got), d, "blob served with wrong bytes");
        }
    }
}

fn push(c: &Client, url: &str, repo: &str, bytes: &[u8]) -> reqwest::blocking::Response {
    let d = Digest::sha256_of(bytes);
    c.post(format!("{url}/v2/{repo}/blobs/uploads/?digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .unwrap()
}

fn manifest_for(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({"schemaVersion":2,
        "mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json",
            "digest":Digest::sha256_of(config).as_str(),"size":config.len()},
        "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip",
            "digest":Digest::sha256_of(layer).as_str(),"size":layer.len()}]}))
    .unwrap()
}

fn put_manifest(c: &Client, url: &str, repo: &str, tag: &str, m: &[u8]) -> StatusCode {
    c.put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(m.to_vec())
        .send()
        .unwrap()
        .status()
}

#[test]
fn sigkill_mid_push_leaves_nothing_half_visible_and_the_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let c = Client::new();
    let mut s = Server::start(root, &[]);
    let repo = "crash/push";
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    assert_eq!(push(&c, &s.url, repo, config).status(), StatusCode::CREATED);

    // A 48 MiB blob, of which 16 MiB are sent; the kill lands once the registry has written
    // at least 4 MiB of them to its staging area.
    let blob = random_bytes(48 << 20, 7);
    let d = Digest::sha256_of(&blob);
    let sock = start_partial_push(s.port, repo, &d, &blob, 16 << 20);
    poll("upload bytes on disk", 30, || {
        (bytes_under(&root.join("tmp")) + bytes_under(&root.join("uploads")) >= 4 << 20)
            .then_some(())
    });
    // A chunked session mid-way, too.
    let r = c
        .post(format!("{}/v2/{repo}/blobs/uploads/", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with('/') {
        format!("{}{loc}", s.url)
    } else {
        loc
    };
    let r = c
        .patch(&loc)
        .header("content-type", "application/octet-stream")
        .body(blob[..1 << 20].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    s.kill9();
    drop(sock);

    let s = Server::start_on(root, s.port, &[]);
    // Nothing half-visible: the blob is absent (HEAD and GET), a manifest naming it is refused,
    // the session is gone, and no staging bytes are left behind.
    let r = c.head(blob_url(&s.url, repo, &d)).send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_blob(&c, &s.url, repo, &d, None);
    let m = manifest_for(config, &blob);
    assert_eq!(
        put_manifest(&c, &s.url, repo, "v1", &m),
        StatusCode::BAD_REQUEST
    );
    let r = c.get(&loc).send().unwrap(); // same port: the old session's address
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a session survived the kill"
    );
    assert_eq!(bytes_under(&root.join("tmp")), 0);
    assert_eq!(bytes_under(&root.join("uploads")), 0);
    // Blobs on disk are all whole: each file's name is its content's digest.
    for shard in std::fs::read_dir(root.join("blobs/sha256")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let got = Digest::sha256_of(&std::fs::read(&p).unwrap());
            assert_eq!(got.hex(), name, "{} is not whole", p.display());
        }
    }

    // The push retried after the restart succeeds, and the image with it.
    assert_eq!(push(&c, &s.url, repo, &blob).status(), StatusCode::CREATED);
    assert_blob(&c, &s.url, repo, &d, Some(&blob));
    assert_eq!(
        put_manifest(&c, &s.url, repo, "v1", &m),
        StatusCode::CREATED
    );
    let r = c
        .get(format!("{}/v2/{repo}/manifests/v1", s.url))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().unwrap().as_ref(), &m[..]);
}

#[test]
fn a_push_larger_than_the_disk_fails_cleanly_and_the_registry_keeps_serving() {
    let t = tempfile::tempdir().unwrap();
    let _tmpfs = testkit::Tmpfs::mount(t.path(), "64m");
    let root = t.path().join("root");
    let c = Client::new();
    let s = Server::start(&root, &[]);
    let small = random_bytes(1 << 20, 1);
    let ds = Digest::sha256_of(&small);
    assert_eq!(
        push(&c, &s.url, "other", &small).status(),
        StatusCode::CREATED
    );

    // 80 MiB into 64 MiB: monolithic, then the same through a chunked session.
    let big = random_bytes(80 << 20, 2);
    let db = Digest::sha256_of(&big);
    // As for the chunked case below: the answer may come while the body is still being sent.
    match c
        .post(format!("{}/v2/big/blobs/uploads/?digest={db}", s.url))
        .header("content-type", "application/octet-stream")
        .body(big.clone())
        .send()
    {
        Ok(r) => {
            let status = r.status();
            let v: Value = r.json().unwrap_or(Value::Null);
            assert!(
                status.is_server_error(),
                "a full disk must be a 5xx: {status}"
            );
            let code = v["errors"][0]["code"].as_str().unwrap_or_default();
            assert!(!code.is_empty(), "no OCI error code in {v}");
            eprintln!("full disk, monolithic: {status} {v}");
        }
        Err(e) => {
            assert!(e.is_request(), "unexpected client error: {e}");
            eprintln!("full disk, monolithic: connection closed while sending ({e})");
        }
    }

    let r = c
        .post(format!("{}/v2/big/blobs/uploads/", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with('/') {
        format!("{}{loc}", s.url)
    } else {
        loc
    };
    // The registry answers as soon as the disk refuses a write and closes the connection: the
    // client either reads that answer or, still sending the body, sees its pipe broken. Either
    // way the upload must not have succeeded (checked below: the blob is absent).
    match c
        .patch(&loc)
        .header("content-type", "application/octet-stream")
        .body(big.clone())
        .send()
    {
        Ok(r) => {
            let status = r.status();
            let v: Value = r.json().unwrap_or(Value::Null);
            assert!(
                status.is_server_error(),
                "a full disk must be a 5xx: {status}"
            );
            assert!(
                !v["errors"][0]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty(),
                "no OCI error code in {v}"
            );
            eprintln!("full disk, chunked: {status} {v}");
        }
        Err(e) => {
            assert!(e.is_request(), "unexpected client error: {e}");
            eprintln!("full disk, chunked: connection closed while sending ({e})");
        }
    }
    drop(big);

    // Nothing partial visible or held: the blob is absent and the space came back.
    assert_blob(&c, &s.url, "big", &db, None);
    let used = bytes_under(&root);
    assert!(used < 4 << 20, "{used} bytes still held after the failure");
    // Still serving others, and a smaller push succeeds.
    assert_blob(&c, &s.url, "other", &ds, Some(&small));
    let mid = random_bytes(16 << 20, 3);
    let dm = Digest::sha256_of(&mid);
    assert_eq!(push(&c, &s.url, "big", &mid).status(), StatusCode::CREATED);
    assert_blob(&c, &s.url, "big", &dm, Some(&mid));
    drop(s); // before the tmpfs: a running registry would hold it busy
}

#[test]
fn a_thousand_concurrent_uploads_succeed_and_leave_descriptors_and_memory_bounded() {
    const N: usize = 1000;
    // The client side holds N connections too (the registry raises its own limit at start).
    registry_mock::raise_nofile_limit();
    let dir = tempfile::tempdir().unwrap();
    // Sessions capped at exactly N (per repository too), so the N+1st is the documented 429.
    let s = Server::start(
        dir.path(),
        &[
            "--max-upload-sessions",
            "1000",
            "--max-upload-sessions-per-repo",
            "1000",
            "--max-connections",
            "2048",
        ],
    );
    let pid = s.pid();
    let fd0 = fd_count(pid);
    let files0 = file_fd_count(pid);
    let rss0 = rss_kib(pid);
    let url = s.url.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (fd_peak, files_peak, over) = rt.block_on(async move {
        let c = reqwest::Client::new();
        // Phase 1: N sessions opened at once (all held open), each with a first chunk.
        let mut tasks = Vec::new();
        for i in 0..N {
            let (c, url) = (c.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let body = random_bytes(4096 + i, i as u64 + 11);
                let r = c
                    .post(format!("{url}/v2/load/blobs/uploads/"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status() != StatusCode::ACCEPTED {
                    return Err(format!("open: {}", r.status()));
                }
                let loc = r.headers()["location"].to_str().unwrap().to_string();
                let loc = if loc.starts_with('/') {
                    format!("{url}{loc}")
                } else {
                    loc
                };
                let r = c
                    .patch(&loc)
                    .header("content-type", "application/octet-stream")
                    .body(body[..2048].to_vec())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status() != StatusCode::ACCEPTED {
                    return Err(format!("patch: {}", r.status()));
                }
                Ok::<_, String>((loc, body))
            }));
        }
        let mut open = Vec::new();
        for t in tasks {
            open.push(t.await.unwrap().unwrap());
        }
        // At the cap: one more session is the documented 429 TOOMANYREQUESTS.
        let r = c
            .post(format!("{url}/v2/load/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        let over = (r.status(), r.text().await.unwrap_or_default());
        let fd_peak = fd_count(pid);
        let files_peak = file_fd_count(pid);
        // Phase 2: all N finished at once (last chunk + digest).
        let mut tasks = Vec::new();
        for (loc, body) in open {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let d = Digest::sha256_of(&body);
                let sep = if loc.contains('?') { '&' } else { '?' };
                let r = c
                    .put(format!("{loc}{sep}digest={d}"))
                    .header("content-type", "application/octet-stream")
                    .body(body[2048..].to_vec())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status() != StatusCode::CREATED {
                    return Err(format!("close: {}", r.status()));
                }
                Ok::<_, String>(d)
            }));
        }
        let mut errors = Vec::new();
        let mut digests = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(d) => digests.push(d),
                Err(e) => errors.push(e),
            }
        }
        assert!(
            errors.is_empty(),
            "{} errors, e.g. {:?}",
            errors.len(),
            &errors[..1]
        );
        // Every blob whole (a sample: the digest check is the registry's own on PUT).
        for d in digests.iter().step_by(97) {
            let b = c
                .get(format!("{url}/v2/load/blobs/{d}"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(&Digest::sha256_of(&b), d);
        }
        (fd_peak, files_peak, over)
    });
    drop(rt); // closes the client's connections
    assert_eq!(over.0, StatusCode::TOO_MANY_REQUESTS, "{}", over.1);
    assert!(over.1.contains("TOOMANYREQUESTS"), "{}", over.1);
    // Afterwards: descriptors back near the baseline once the client is gone (connections
    // closed), memory bounded.
    let fd_after = poll("descriptors released", 30, || {
        let n = fd_count(pid);
        (n <= fd0 + 8).then_some(n)
    });
    let rss = rss_kib(pid);
    let peak = peak_rss_kib(pid);
    eprintln!(
        "load: fds {fd0} -> peak {fd_peak} ({files0} -> {files_peak} files) -> {fd_after}; VmRSS {rss0} KiB -> {rss} KiB, \
         peak (VmHWM) {peak} KiB"
    );
    // The sockets are the client's connections (between N and 2N: its pool opens new ones while
    // others finish); what must not grow is files: a session holding its file open would add
    // one per session.
    assert!(
        files_peak <= files0 + 8,
        "{files_peak} open files with {N} sessions open (baseline {files0})"
    );
    assert!(
        fd_peak < fd0 + 2 * N,
        "{fd_peak} descriptors with {N} sessions open (baseline {fd0})"
    );
    // Bodies are streamed to disk: 1,000 sessions of ~6 KiB stay far below this, while holding
    // every connection's buffers and sessions whole would not.
    assert!(peak < 256 * 1024, "peak RSS {peak} KiB during {N} uploads");
    // A session freed by finishing: a new one opens again.
    let c = Client::new();
    let r = c
        .post(format!("{}/v2/load/blobs/uploads/", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}
