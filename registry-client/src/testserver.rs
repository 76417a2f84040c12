//! A tiny local hyper server for tests (feature `test-server`): answers each request with what a
//! closure says (hostile registries, failing ranges). Stopped and joined on drop.

// Test support only: a failure to bind or build is the test's failure.
#![allow(clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

type Handler = Arc<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

pub struct TestServer {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Serves `handler` on 127.0.0.1 (a port of its own) until dropped.
pub fn serve(
    handler: impl Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
) -> TestServer {
    let handler: Handler = Arc::new(handler);
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    r = l.accept() => {
                        let Ok((s, _)) = r else { continue };
                        let h = handler.clone();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let resp = h(&req);
                                async move { Ok::<_, Infallible>(resp) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(s), svc)
                                .await;
                        });
                    }
                }
            }
        });
    });
    TestServer {
        url,
        stop: Some(tx),
        thread: Some(thread),
    }
}

/// A response with `status`, `headers` and `body`.
pub fn respond(status: u16, headers: &[(&str, String)], body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(Full::new(Bytes::from(body))).expect("response")
}

/// The inclusive byte range of a `Range: bytes=a-b` header.
pub fn range_of(req: &Request<Incoming>) -> Option<(u64, u64)> {
    let v = req.headers().get("range")?.to_str().ok()?;
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A 206 answer of `data[a..=b]` (clamped), as a registry serves a Range request.
pub fn partial(data: &[u8], (a, b): (u64, u64)) -> Response<Full<Bytes>> {
    let end = (b as usize).min(data.len().saturating_sub(1));
    let body = data.get(a as usize..=end).unwrap_or_default().to_vec();
    respond(
        206,
        &[("content-range", format!("bytes {a}-{end}/{}", data.len()))],
        body,
    )
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
