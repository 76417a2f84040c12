//! Minimal Prometheus text endpoint (`GET /metrics`). FUSE counters join it with the FUSE layer.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use crate::snapshot::overlay::OverlaySnapshotter;
use crate::snapshot::{Kind, Snapshotter};

pub async fn serve(l: TcpListener, snap: Arc<OverlaySnapshotter>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = l.accept() => match r { Ok(s) => s, Err(e) => { debug!(error = %e, "metrics accept"); continue; } },
            _ = stop.changed() => return,
        };
        let snap = snap.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let snap = snap.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        Response::new(Full::new(Bytes::from(render(&snap).await)))
                    } else {
                        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                        *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                        r
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "metrics connection");
            }
        });
    }
}

async fn render(snap: &OverlaySnapshotter) -> String {
    let mut out = String::from("# TYPE teleportd_snapshots gauge\n");
    for (kind, n) in snapshot_counts(snap).await {
        out.push_str(&format!(
            "teleportd_snapshots{{kind=\"{}\"}} {n}\n",
            format!("{kind:?}").to_lowercase()
        ));
    }
    let stats = snap.mount_stats().await;
    // The empty path is the pull-time warm-up, not a mount.
    let mounts = stats
        .iter()
        .filter(|(p, _)| !p.as_os_str().is_empty())
        .count();
    out.push_str(&format!(
        "# TYPE teleportd_fuse_mounts gauge\nteleportd_fuse_mounts {mounts}\n"
    ));
    out.push_str(&format!(
        "# TYPE teleportd_auth_failures_total counter\nteleportd_auth_failures_total {}\n",
        crate::config::AUTH_FAILURES.load(std::sync::atomic::Ordering::Relaxed)
    ));
    type Field = fn(&crate::fetch::CountersSnapshot) -> u64;
    let fields: [(&str, Field); 9] = [
        ("bytes_fetched", |c| c.bytes_fetched),
        ("chunks_fetched", |c| c.chunks_fetched),
        ("cache_hits", |c| c.cache_hits),
        ("fetch_errors", |c| c.fetch_errors),
        ("bytes_read", |c| c.bytes_read),
        ("demand_fetches", |c| c.demand_fetches),
        // "Profile hits": layers mounted with a learned start profile to replay.
        ("profile_layers", |c| c.profile_layers),
        ("profile_bytes_prefetched", |c| c.profile_bytes_prefetched),
        ("profile_jobs_done", |c| c.profile_jobs_done),
    ];
    for (name, get) in fields {
        out.push_str(&format!("# TYPE teleportd_fuse_{name}_total counter\n"));
        for (mp, c) in &stats {
            let label = if mp.as_os_str().is_empty() {
                "(pull warm-up)".to_string()
            } else {
                mp.display()
                    .to_string()
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
            };
            out.push_str(&format!(
                "teleportd_fuse_{name}_total{{mount=\"{label}\"}} {}\n",
                get(c)
            ));
        }
    }
    out
}

/// Counts of snapshots by kind, for `/metrics`.
pub async fn snapshot_counts(s: &impl Snapshotter) -> [(Kind, usize); 3] {
    let infos = s.list(Vec::new()).await.unwrap_or_default();
    [Kind::Active, Kind::View, Kind::Committed]
        .map(|k| (k, infos.iter().filter(|i| i.kind == k).count()))
}
