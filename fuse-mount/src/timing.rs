//! Latency histograms (`prometheus-client`), process-wide: [`manager()`] holds the fuse
//! manager's (FUSE operations, registry range fetches), [`daemon()`] teleportd's (Prepare).
//! teleportd's `/metrics` renders its own and asks the manager for the other. Labels are a
//! fixed set of operation names, never a path. Depends on nothing in this crate.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The FUSE operations timed (the ones a container start is made of).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum FuseOp {
    Lookup,
    Getattr,
    Open,
    Read,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// 10 µs … ~2.6 s: a cached lookup to a read that waits on the registry.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 4.0, 10))
}

/// One process's histograms and the registry that renders them.
pub struct Timings {
    registry: Registry,
    fuse_ops: Family<OpLabel, Histogram, fn() -> Histogram>,
    range_fetch: Histogram,
    prepare: Histogram,
}

impl Timings {
    fn manager() -> Self {
        let fuse_ops =
            Family::<OpLabel, Histogram, fn() -> Histogram>::new_with_constructor(latency);
        let range_fetch = latency();
        let mut registry = Registry::default();
        registry.register(
            "teleportd_fuse_op_seconds",
            "FUSE operations answered by the fuse manager, by operation",
            fuse_ops.clone(),
        );
        registry.register(
            "teleportd_range_fetch_seconds",
            "Registry range requests for layer data (a batch of adjacent chunks each)",
            range_fetch.clone(),
        );
        Timings {
            registry,
            fuse_ops,
            range_fetch,
            prepare: latency(),
        }
    }

    fn daemon() -> Self {
        let prepare = latency();
        let mut registry = Registry::default();
        registry.register(
            "teleportd_prepare_seconds",
            "Snapshot Prepare calls (a remote layer's includes the registry's /mount answer)",
            prepare.clone(),
        );
        Timings {
            registry,
            fuse_ops: Family::new_with_constructor(latency),
            range_fetch: latency(),
            prepare,
        }
    }

    pub fn fuse_op(&self, op: FuseOp, started: Instant) {
        let op = match op {
            FuseOp::Lookup => "lookup",
            FuseOp::Getattr => "getattr",
            FuseOp::Open => "open",
            FuseOp::Read => "read",
        };
        self.fuse_ops
            .get_or_create(&OpLabel { op })
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn range_fetch(&self, started: Instant) {
        self.range_fetch.observe(started.elapsed().as_secs_f64());
    }

    pub fn prepare(&self, started: Instant) {
        self.prepare.observe(started.elapsed().as_secs_f64());
    }

    /// OpenMetrics families without the closing `# EOF`, so two processes' texts join.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // invariant: writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        out
    }
}

/// Times one FUSE operation from its creation to its drop (the reply is sent by then).
pub struct OpTimer(FuseOp, Instant);

impl OpTimer {
    pub fn start(op: FuseOp) -> Self {
        OpTimer(op, Instant::now())
    }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        manager().fuse_op(self.0, self.1);
    }
}

static MANAGER: LazyLock<Timings> = LazyLock::new(Timings::manager);
static DAEMON: LazyLock<Timings> = LazyLock::new(Timings::daemon);

/// The fuse manager's histograms (recorded wherever FUSE and range fetches run).
pub fn manager() -> &'static Timings {
    &MANAGER
}

/// teleportd's own histograms.
pub fn daemon() -> &'static Timings {
    &DAEMON
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_label() {
        let t = Timings::manager();
        let now = Instant::now();
        t.fuse_op(FuseOp::Read, now);
        t.fuse_op(FuseOp::Read, now);
        t.fuse_op(FuseOp::Lookup, now);
        t.range_fetch(now);
        let text = t.render();
        for want in [
            "# HELP teleportd_fuse_op_seconds FUSE operations",
            "# TYPE teleportd_fuse_op_seconds histogram",
            "teleportd_fuse_op_seconds_count{op=\"read\"} 2",
            "teleportd_fuse_op_seconds_count{op=\"lookup\"} 1",
            "teleportd_range_fetch_seconds_count 1",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!Timings::daemon().render().contains("fuse_op"));
    }
}
