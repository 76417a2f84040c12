//! The registry's Prometheus metrics (`prometheus-client`), rendered by `GET /metrics` as
//! OpenMetrics text. Bytes served are counted by the response body as each chunk is handed to
//! hyper. Labels are bounded: byte kinds, route templates, methods, statuses, expansion states.

use std::collections::HashSet;
use std::sync::Mutex;

use emulator::Digest;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What kind of bytes a response body carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServedKind {
    LayerBlob,
    ConfigBlob,
    Manifest,
    ExpandedIndex,
    ExpandedData,
    /// The expanded data's compressed frames (`/data.zst`): the wire bytes that replace
    /// `ExpandedData` bytes for a node reading through the compressed encoding.
    ExpandedFrames,
    /// A layer of a referrer (a manifest with a `subject`): signatures, SOCI zTOCs.
    ArtifactBlob,
}

impl ServedKind {
    const ALL: [ServedKind; 7] = [
        ServedKind::LayerBlob,
        ServedKind::ConfigBlob,
        ServedKind::Manifest,
        ServedKind::ExpandedIndex,
        ServedKind::ExpandedData,
        ServedKind::ExpandedFrames,
        ServedKind::ArtifactBlob,
    ];
    pub fn label(self) -> &'static str {
        match self {
            ServedKind::LayerBlob => "layer_blob",
            ServedKind::ConfigBlob => "config_blob",
            ServedKind::Manifest => "manifest",
            ServedKind::ExpandedIndex => "expanded_index",
            ServedKind::ExpandedData => "expanded_data",
            ServedKind::ExpandedFrames => "expanded_frames",
            ServedKind::ArtifactBlob => "artifact_blob",
        }
    }
}

/// Histogram bucket bounds for expansion durations, seconds.
const BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

/// Layer expansion states counted by `registry_expansion_layers_total`.
const STATES: [&str; 3] = ["queued", "expanded", "failed"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Bounded: route templates (never raw paths), known methods or `other`, status codes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The registry's metrics, kept and rendered by `prometheus-client`.
pub struct Metrics {
    registry: Registry,
    served: Family<KindLabel, Counter>,
    received: Counter,
    requests: Family<RequestLabels, Counter>,
    expansion: Histogram,
    layer_states: Family<StateLabel, Counter>,
    /// Digests referenced as a layer by some manifest: decides layer_blob vs config_blob.
    layers: Mutex<HashSet<Digest>>,
    /// Digests referenced as a layer by a referrer only (see [`ServedKind::ArtifactBlob`]).
    artifacts: Mutex<HashSet<Digest>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let served = Family::<KindLabel, Counter>::default();
        let received = Counter::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let expansion = Histogram::new(BUCKETS);
        let layer_states = Family::<StateLabel, Counter>::default();
        // Every kind and state shows from the start, at 0.
        for k in ServedKind::ALL {
            let _ = served.get_or_create(&KindLabel { kind: k.label() });
        }
        for state in STATES {
            let _ = layer_states.get_or_create(&StateLabel { state });
        }
        let mut registry = Registry::default();
        registry.register(
            "registry_bytes_served",
            "Response body bytes handed to the connection, by kind",
            served.clone(),
        );
        registry.register(
            "registry_bytes_received",
            "Request body bytes received for blob uploads, manifests and start profiles",
            received.clone(),
        );
        registry.register(
            "registry_requests",
            "Requests by route template, method and status",
            requests.clone(),
        );
        registry.register(
            "registry_expansion_seconds",
            "Time to expand one layer",
            expansion.clone(),
        );
        registry.register(
            "registry_expansion_layers",
            "Layers entering each expansion state in this process",
            layer_states.clone(),
        );
        Metrics {
            registry,
            served,
            received,
            requests,
            expansion,
            layer_states,
            layers: Mutex::default(),
            artifacts: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a lock leaves a consistent-enough set: keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn add_served(&self, kind: ServedKind, n: u64) {
        self.served
            .get_or_create(&KindLabel { kind: kind.label() })
            .inc_by(n);
    }
    pub fn served(&self, kind: ServedKind) -> u64 {
        self.served
            .get_or_create(&KindLabel { kind: kind.label() })
            .get()
    }
    pub fn add_received(&self, n: u64) {
        self.received.inc_by(n);
    }
    pub fn request(&self, route: &str, method: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
    }
    pub fn expansion_done(&self, seconds: f64) {
        self.expansion.observe(seconds);
    }
    /// Count a layer entering a state (`queued`, `expanded`, `failed`).
    pub fn layer_state(&self, state: &'static str) {
        self.layer_states.get_or_create(&StateLabel { state }).inc();
    }
    pub fn layer_state_count(&self, state: &str) -> u64 {
        STATES.iter().find(|s| **s == state).map_or(0, |&state| {
            self.layer_states.get_or_create(&StateLabel { state }).get()
        })
    }
    pub fn note_layers<'a>(&self, ds: impl IntoIterator<Item = &'a Digest>) {
        let mut s = lock(&self.layers);
        for d in ds {
            s.insert(d.clone());
        }
    }
    /// Note the layers of a pushed manifest: an image's layers, or a referrer's artifacts.
    pub fn note_manifest(&self, m: &crate::manifest::Manifest) {
        // `manifest::parse` refused non-sha256 descriptors, so nothing is dropped here.
        let ds: Vec<Digest> = m
            .layers()
            .iter()
            .filter_map(|l| crate::manifest::digest(l).ok())
            .collect();
        if m.subject().is_some() {
            let mut s = lock(&self.artifacts);
            s.extend(ds);
        } else {
            self.note_layers(ds.iter());
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

    /// OpenMetrics text (with HELP and TYPE lines), as [`CONTENT_TYPE`].
    pub fn render(&self) -> String {
        let mut o = String::new();
        // invariant: writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut o, &self.registry);
        o
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_has_help_and_bounded_series() {
        let m = Metrics::default();
        m.add_served(ServedKind::ExpandedData, 7);
        m.request("/v2/{name}/blobs/{digest}", "GET", 206);
        m.expansion_done(0.2);
        m.layer_state("queued");
        let t = m.render();
        for want in [
            "# HELP registry_bytes_served Response body bytes",
            "registry_bytes_served_total{kind=\"expanded_data\"} 7",
            "registry_bytes_served_total{kind=\"layer_blob\"} 0",
            "registry_requests_total{route=\"/v2/{name}/blobs/{digest}\",method=\"GET\",status=\"206\"} 1",
            "# TYPE registry_expansion_seconds histogram",
            "registry_expansion_seconds_count 1",
            "registry_expansion_seconds_bucket{le=\"0.5\"} 1",
            "registry_expansion_seconds_bucket{le=\"0.1\"} 0",
            "registry_expansion_layers_total{state=\"queued\"} 1",
            "registry_expansion_layers_total{state=\"failed\"} 0",
        ] {
            assert!(t.contains(want), "{want} missing from:\n{t}");
        }
        assert_eq!(m.served(ServedKind::ExpandedData), 7);
        assert_eq!(m.layer_state_count("queued"), 1);
        assert_eq!(m.layer_state_count("nonsense"), 0);
    }
}
