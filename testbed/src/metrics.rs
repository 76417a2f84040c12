//! Reading Prometheus text from the registry's (and teleportd's) `/metrics`: what a node really
//! downloaded is the delta of the registry's byte counters around a run, never an estimate.

use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// Counter values by metric name and label set, e.g. `registry_bytes_served_total{kind="layer_blob"}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub values: BTreeMap<String, f64>,
}

/// Parse Prometheus text exposition format (comments and malformed lines skipped).
pub fn parse(text: &str) -> Scrape {
    let mut values = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Name{labels} value [timestamp]; labels may contain spaces inside quotes.
        // The last `}`: label values may hold braces (route templates such as `{name}`).
        let (series, rest) = match line.rfind('}') {
            Some(i) => (&line[..=i], line[i + 1..].trim()),
            None => match line.split_once(char::is_whitespace) {
                Some((s, r)) => (s, r.trim()),
                None => continue,
            },
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            values.insert(series.replace(' ', ""), v);
        }
    }
    Scrape { values }
}

impl Scrape {
    /// Sum of every series of `name` whose labels contain all `labels` pairs.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.values
            .iter()
            .filter(|(series, _)| {
                let (n, l) = series.split_once('{').unwrap_or((series.as_str(), ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    /// Blob GETs the registry answered with 206 Partial Content (ranged reads).
    pub fn blob_range_requests(&self) -> u64 {
        let v = self.sum(
            "registry_requests_total",
            &[("route", "/v2/{name}/blobs/{digest}"), ("status", "206")],
        );
        if v.is_finite() && v > 0.0 {
            v as u64
        } else {
            0
        }
    }

    /// Registry bytes served of one `kind` (`layer_blob`, `config_blob`, `manifest`,
    /// `expanded_index`, `expanded_data`, `expanded_frames`, `artifact_blob`).
    pub fn served(&self, kind: &str) -> u64 {
        let v = self.sum("registry_bytes_served_total", &[("kind", kind)]);
        if v.is_finite() && v > 0.0 {
            v as u64
        } else {
            0
        }
    }
}

/// Bytes the registry served between two scrapes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Served {
    pub layer_blob: u64,
    pub config_blob: u64,
    pub manifest: u64,
    pub expanded_index: u64,
    pub expanded_data: u64,
    /// Expanded data fetched as compressed zstd frames (the wire bytes that replace
    /// `expanded_data` for a node on the compressed wire).
    #[serde(default)]
    pub expanded_frames: u64,
    /// Layers of referrers (SOCI's zTOCs), apart from image layers.
    #[serde(default)]
    pub artifact_blob: u64,
}

impl Served {
    pub fn between(before: &Scrape, after: &Scrape) -> Served {
        let d = |k: &str| after.served(k).saturating_sub(before.served(k));
        Served {
            layer_blob: d("layer_blob"),
            config_blob: d("config_blob"),
            manifest: d("manifest"),
            expanded_index: d("expanded_index"),
            expanded_data: d("expanded_data"),
            expanded_frames: d("expanded_frames"),
            artifact_blob: d("artifact_blob"),
        }
    }

    /// Every byte the registry served: blobs, manifests, expanded layers, peer artifacts.
    pub fn total(&self) -> u64 {
        self.layer_blob
            .saturating_add(self.config_blob)
            .saturating_add(self.manifest)
            .saturating_add(self.expanded())
            .saturating_add(self.artifact_blob)
    }

    /// Every byte of expanded layers on the wire: indexes and frame tables, plain data ranges
    /// and compressed frames.
    pub fn expanded(&self) -> u64 {
        self.expanded_index
            .saturating_add(self.expanded_data)
            .saturating_add(self.expanded_frames)
    }
}

impl Scrape {
    /// Per-series difference `after - self` (counters teleportd exposes: bytes and chunks
    /// fetched, cache hits); series that did not change are left out.
    pub fn delta(&self, after: &Scrape) -> BTreeMap<String, f64> {
        after
            .values
            .iter()
            .filter_map(|(k, v)| {
                let d = v - self.values.get(k).copied().unwrap_or(0.0);
                (d != 0.0).then(|| (k.clone(), d))
            })
            .collect()
    }
}

/// GET `url` (a `/metrics` endpoint) and parse it.
pub async fn scrape(client: &reqwest::Client, url: &str) -> Result<Scrape> {
    let http = |source| Error::Http {
        url: url.to_string(),
        source,
    };
    let resp = client.get(url).send().await.map_err(http)?;
    if !resp.status().is_success() {
        return Err(Error::Registry {
            url: url.into(),
            reason: format!("GET /metrics: {}", resp.status()),
        });
    }
    let text = resp.text().await.map_err(http)?;
    Ok(parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_and_deltas() {
        let a = parse(
            "# HELP registry_bytes_served_total Bytes\n# TYPE registry_bytes_served_total counter\n\
             registry_bytes_served_total{kind=\"layer_blob\"} 100\n\
             registry_bytes_served_total{kind=\"expanded_data\"} 5\n",
        );
        let b = parse(
            "registry_bytes_served_total{kind=\"layer_blob\"} 1100\n\
             registry_bytes_served_total{kind=\"expanded_data\"} 5e3\n\
             registry_bytes_served_total{kind=\"manifest\", repo=\"x y\"} 7 1700000000\n\
             registry_bytes_served_total{kind=\"expanded_frames\"} 300\n\
             registry_bytes_served_total{kind=\"expanded_index\"} 20\n",
        );
        let d = Served::between(&a, &b);
        assert_eq!(d.layer_blob, 1000);
        assert_eq!(d.expanded_data, 4995);
        // Compressed frames count as the expanded bytes they carry on the wire.
        assert_eq!(d.expanded_frames, 300);
        assert_eq!(d.expanded(), 4995 + 300 + 20);
        assert_eq!(d.manifest, 7);
        assert_eq!(d.config_blob, 0);
        assert_eq!(d.total(), 1000 + 4995 + 300 + 20 + 7);
        // Route templates carry braces inside label values.
        let r = parse(
            "registry_requests_total{route=\"/v2/{name}/blobs/{digest}\",method=\"GET\",status=\"206\"} 12\n\
             registry_requests_total{route=\"/v2/{name}/blobs/{digest}\",method=\"GET\",status=\"200\"} 3\n",
        );
        assert_eq!(r.blob_range_requests(), 12);
    }
}
