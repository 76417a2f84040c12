//! Prometheus counters, rendered by `GET /metrics` in the text exposition format.
//! Bytes served are counted by the response body as each chunk is handed to hyper.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use emulator::Digest;

/// What kind of bytes a response body carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServedKind {
    LayerBlob,
    ConfigBlob,
    Manifest,
    ExpandedIndex,
    ExpandedData,
    /// A layer of a referrer (a manifest with a `subject`): signatures, SOCI zTOCs.
    ArtifactBlob,
}

impl ServedKind {
    const ALL: [ServedKind; 6] = [
        ServedKind::LayerBlob,
        ServedKind::ConfigBlob,
        ServedKind::Manifest,
        ServedKind::ExpandedIndex,
        ServedKind::ExpandedData,
        ServedKind::ArtifactBlob,
    ];
    pub fn label(self) -> &'static str {
        match self {
            ServedKind::LayerBlob => "layer_blob",
            ServedKind::ConfigBlob => "config_blob",
            ServedKind::Manifest => "manifest",
            ServedKind::ExpandedIndex => "expanded_index",
            ServedKind::ExpandedData => "expanded_data",
            ServedKind::ArtifactBlob => "artifact_blob",
        }
    }
}

/// Histogram bucket bounds for expansion durations, seconds.
const BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

#[derive(Default)]
pub struct Metrics {
    served: [AtomicU64; 6],
    received: AtomicU64,
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    expansion: Mutex<Histogram>,
    layer_states: Mutex<BTreeMap<&'static str, u64>>,
    /// Digests referenced as a layer by some manifest: decides layer_blob vs config_blob.
    layers: Mutex<HashSet<Digest>>,
    /// Digests referenced as a layer by a referrer only (see [`ServedKind::ArtifactBlob`]).
    artifacts: Mutex<HashSet<Digest>>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a counter lock leaves consistent-enough counters: keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn add_served(&self, kind: ServedKind, n: u64) {
        self.served[kind as usize].fetch_add(n, Ordering::Relaxed);
    }
    pub fn served(&self, kind: ServedKind) -> u64 {
        self.served[kind as usize].load(Ordering::Relaxed)
    }
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
    pub fn request(&self, route: &str, method: &str, status: u16) {
        *lock(&self.requests)
            .entry((route.to_string(), method.to_string(), status))
            .or_default() += 1;
    }
    pub fn expansion_done(&self, seconds: f64) {
        let mut h = lock(&self.expansion);
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }
    /// Count a layer entering a state (`queued`, `expanded`, `failed`).
    pub fn layer_state(&self, state: &'static str) {
        *lock(&self.layer_states).entry(state).or_default() += 1;
    }
    pub fn layer_state_count(&self, state: &str) -> u64 {
        lock(&self.layer_states).get(state).copied().unwrap_or(0)
    }
    pub fn note_layers<'a>(&self, ds: impl IntoIterator<Item = &'a Digest>) {
        let mut s = lock(&self.layers);
        for d in ds {
            s.insert(d.clone());
        }
    }
    /// Note the layers of a pushed manifest: an image's layers, or a referrer's artifacts.
    pub fn note_manifest(&self, m: &crate::manifest::Manifest) {
        let ds = m.layers().iter().map(|l| &l.digest);
        if m.subject.is_some() {
            let mut s = lock(&self.artifacts);
            s.extend(ds.cloned());
        } else {
            self.note_layers(ds);
        }
    }
    pub fn blob_kind(&self, d: &Digest) -> ServedKind {
        if lock(&self.layers).contains(d) {
            ServedKind::LayerBlob
        } else if lock(&self.artifacts).contains(d) {
            ServedKind::ArtifactBlob
        } else {
            ServedKind::ConfigBlob
        }
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# HELP registry_bytes_served_total Response body bytes handed to the connection, by kind.");
        let _ = writeln!(o, "# TYPE registry_bytes_served_total counter");
        for k in ServedKind::ALL {
            let _ = writeln!(
                o,
                "registry_bytes_served_total{{kind=\"{}\"}} {}",
                k.label(),
                self.served(k)
            );
        }
        let _ = writeln!(o, "# HELP registry_bytes_received_total Request body bytes received for blob uploads and manifests.");
        let _ = writeln!(o, "# TYPE registry_bytes_received_total counter");
        let _ = writeln!(
            o,
            "registry_bytes_received_total {}",
            self.received.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP registry_requests_total Requests by route template, method and status."
        );
        let _ = writeln!(o, "# TYPE registry_requests_total counter");
        for ((route, method, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(o, "registry_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP registry_expansion_seconds Time to expand one layer."
        );
        let _ = writeln!(o, "# TYPE registry_expansion_seconds histogram");
        {
            let h = lock(&self.expansion);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "registry_expansion_seconds_bucket{{le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "registry_expansion_seconds_bucket{{le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(o, "registry_expansion_seconds_sum {}", h.sum);
            let _ = writeln!(o, "registry_expansion_seconds_count {}", h.count);
        }
        let _ = writeln!(o, "# HELP registry_expansion_layers_total Layers entering each expansion state in this process.");
        let _ = writeln!(o, "# TYPE registry_expansion_layers_total counter");
        let states = lock(&self.layer_states);
        for s in ["queued", "expanded", "failed"] {
            let _ = writeln!(
                o,
                "registry_expansion_layers_total{{state=\"{s}\"}} {}",
                states.get(s).copied().unwrap_or(0)
            );
        }
        o
    }
}
