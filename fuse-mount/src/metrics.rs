//! teleportd's Prometheus endpoint (`GET /metrics`, OpenMetrics text by `prometheus-client`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::fetch::CountersSnapshot;
use crate::snapshot::overlay::OverlaySnapshotter;
use crate::snapshot::{Kind, Snapshotter};

/// The content type of the rendered text.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
                        let mut r = Response::new(Full::new(Bytes::from(render(&snap).await)));
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(CONTENT_TYPE),
                        );
                        r
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The node's metrics as OpenMetrics text, read fresh at each scrape: snapshots by kind, live
/// FUSE mounts, login failures and the FUSE fetch counters summed over every mount (the pull-time
/// warm-up included). No label names a mount path: the series stay bounded however many
/// containers come and go.
async fn render(snap: &OverlaySnapshotter) -> String {
    let mut r = Registry::default();
    let snapshots = Family::<KindLabel, Gauge>::default();
    for (kind, n) in snapshot_counts(snap).await {
        let kind = match kind {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        };
        snapshots
            .get_or_create(&KindLabel { kind })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    r.register("teleportd_snapshots", "Snapshots by kind", snapshots);
    let stats = snap.mount_stats().await;
    // The empty path is the pull-time warm-up, not a mount.
    let mounts = stats
        .iter()
        .filter(|(p, _)| !p.as_os_str().is_empty())
        .count();
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(mounts).unwrap_or(i64::MAX));
    r.register("teleportd_fuse_mounts", "Live FUSE mounts", g);
    let auth = Counter::<u64>::default();
    auth.inc_by(crate::config::AUTH_FAILURES.load(std::sync::atomic::Ordering::Relaxed));
    r.register(
        "teleportd_auth_failures",
        "Registry logins refused (wrong user or password)",
        auth,
    );
    type Field = fn(&CountersSnapshot) -> u64;
    let fields: [(&str, &str, Field); 12] = [
        (
            "bytes_fetched",
            "Layer data bytes fetched from the registry, uncompressed (as delivered to the cache)",
            |c| c.bytes_fetched,
        ),
        (
            "wire_bytes",
            "Layer data bytes on the wire for those fetches (compressed frames or plain ranges)",
            |c| c.wire_bytes,
        ),
        (
            "frames_fetched",
            "Compressed zstd frames fetched (0 on plain ranges)",
            |c| c.frames_fetched,
        ),
        ("chunks_fetched", "Chunks fetched from the registry", |c| {
            c.chunks_fetched
        }),
        ("fetches", "Range requests that brought those chunks", |c| {
            c.fetches
        }),
        (
            "cache_hits",
            "Chunk lookups served by the node's chunk cache",
            |c| c.cache_hits,
        ),
        (
            "fetch_errors",
            "Fetches that failed after retries (EIO to a reader)",
            |c| c.fetch_errors,
        ),
        ("bytes_read", "File bytes returned to readers", |c| {
            c.bytes_read
        }),
        ("demand_fetches", "Range requests a reader waited on", |c| {
            c.demand_fetches
        }),
        // "Profile hits": layers mounted with a learned start profile to replay.
        (
            "profile_layers",
            "Layers mounted with a learned start profile to replay",
            |c| c.profile_layers,
        ),
        (
            "profile_bytes_prefetched",
            "Bytes fetched by start-profile replay",
            |c| c.profile_bytes_prefetched,
        ),
        (
            "profile_jobs_done",
            "Start-profile prefetch jobs finished",
            |c| c.profile_jobs_done,
        ),
    ];
    for (name, help, get) in fields {
        let c = Counter::<u64>::default();
        c.inc_by(stats.iter().map(|(_, s)| get(s)).sum());
        r.register(format!("teleportd_fuse_{name}"), help, c);
    }
    let mut out = String::new();
    // invariant: writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &r);
    out.push_str(&crate::timing::daemon().render());
    out.push_str(&snap.mount_timings().await);
    out.push_str("# EOF\n");
    out
}

/// Counts of snapshots by kind, for `/metrics`.
pub async fn snapshot_counts(s: &impl Snapshotter) -> [(Kind, usize); 3] {
    let infos = s.list(Vec::new()).await.unwrap_or_default();
    [Kind::Active, Kind::View, Kind::Committed]
        .map(|k| (k, infos.iter().filter(|i| i.kind == k).count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn text_has_help_lines_and_no_mount_path_labels() {
        let t = tempfile::tempdir().unwrap();
        let snap = OverlaySnapshotter::open(t.path(), None).unwrap();
        snap.prepare("a".into(), String::new(), Default::default())
            .await
            .unwrap();
        let text = render(&snap).await;
        for want in [
            "# HELP teleportd_snapshots Snapshots by kind.",
            "teleportd_snapshots{kind=\"active\"} 1",
            "teleportd_snapshots{kind=\"committed\"} 0",
            "# TYPE teleportd_fuse_mounts gauge",
            "teleportd_fuse_mounts 0",
            "teleportd_auth_failures_total ",
            "# HELP teleportd_fuse_bytes_fetched Layer data bytes fetched from the registry, \
             uncompressed",
            "# HELP teleportd_fuse_wire_bytes Layer data bytes on the wire",
            "teleportd_fuse_frames_fetched_total 0",
            "teleportd_fuse_bytes_fetched_total 0",
            "# TYPE teleportd_prepare_seconds histogram",
            "teleportd_prepare_seconds_count ",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert!(!text.contains("mount="), "{text}");
        assert!(text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1);
    }
}
