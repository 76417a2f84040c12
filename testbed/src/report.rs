//! The comparison report: one row per (variant, node, mount mode) with median and min–max over
//! repetitions, written as `report.md`, `report.json` (every raw sample, machine, versions,
//! link) and `report.svg` (hand-written grouped bars). The seed's published numbers are printed
//! under the table for comparison only; they are never inputs.

use crate::bed::Variant;
use crate::compare::{ImageFacts, Sample};
use crate::error::{Error, Result};
use crate::machine::{MachineInfo, Versions};
use std::fmt::Write as _;
use std::path::Path;

/// Median, min and max of a set of seconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    fn cell(s: Option<Stat>) -> String {
        match s {
            None => "–".into(),
            Some(s) if (s.max - s.min).abs() < 0.0005 => format!("{:.2} s", s.median),
            Some(s) => format!("{:.2} s ({:.2}–{:.2})", s.median, s.min, s.max),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LinkSettings {
    pub bandwidth_bytes_per_sec: Option<u64>,
    pub bandwidth: Option<String>,
    pub latency_ms: f64,
}

/// One (variant, node, mount mode).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub variant: Variant,
    pub layers: usize,
    pub image_bytes: u64,
    pub node: String,
    pub mount_mode: String,
    pub pull_seconds: Option<Stat>,
    pub ready_seconds: Option<Stat>,
    pub warm_ready_seconds: Option<f64>,
    /// The image's first start on a fresh registry (no learned start profile yet), on the
    /// teleporter that ran it; not part of the cold medians.
    #[serde(default)]
    pub first_start_ready_seconds: Option<f64>,
    /// Median over the cold repetitions.
    pub layer_blob_bytes_downloaded: u64,
    pub expanded_bytes_fetched: u64,
    /// Cold repetitions in this row.
    pub samples: usize,
}

/// A published figure from the seed (Azure, 2021).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Published {
    pub image: String,
    pub size_mb: u64,
    pub layers: u32,
    pub standard_seconds: f64,
    pub teleport_seconds: f64,
    pub source: String,
}

pub fn published() -> Vec<Published> {
    let src = "Azure/acr docs/teleport/aks-teleport-comparison.md".to_string();
    vec![
        Published {
            image: "azure-vote-front:v1".into(),
            size_mb: 944,
            layers: 29,
            standard_seconds: 34.7,
            teleport_seconds: 8.0,
            source: src.clone(),
        },
        Published {
            image: "azure-vote-front:squashed".into(),
            size_mb: 929,
            layers: 1,
            standard_seconds: 31.7,
            teleport_seconds: 1.9,
            source: src,
        },
    ]
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub created_unix: u64,
    pub profile: String,
    pub scale: f64,
    pub working_set: f64,
    pub link: LinkSettings,
    pub machine: MachineInfo,
    pub versions: Versions,
    pub pause_image: String,
    pub images: Vec<ImageFacts>,
    pub rows: Vec<Row>,
    pub samples: Vec<Sample>,
    pub published: Vec<Published>,
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        profile: &str,
        scale: f64,
        working_set: f64,
        link: LinkSettings,
        machine: MachineInfo,
        versions: Versions,
        images: Vec<ImageFacts>,
        samples: Vec<Sample>,
        pause_image: String,
    ) -> Report {
        let mut rows = Vec::new();
        for img in &images {
            // Node order as first seen in the samples (shuttle first).
            let mut nodes: Vec<(&str, &str)> = Vec::new();
            for s in samples
                .iter()
                .filter(|s| s.variant == img.variant && !s.first_start)
            {
                if !nodes.iter().any(|(n, _)| *n == s.node) {
                    nodes.push((&s.node, &s.mount_mode));
                }
            }
            for (node, mode) in nodes {
                let mine = move |s: &&Sample| s.variant == img.variant && s.node == node;
                let of = |warm: bool| {
                    samples
                        .iter()
                        .filter(mine)
                        .filter(move |s| s.warm == warm && !s.first_start)
                };
                let cold: Vec<&Sample> = of(false).collect();
                let role = cold.first().map_or("", |s| s.role.as_str());
                rows.push(Row {
                    variant: img.variant,
                    layers: img.layers,
                    image_bytes: img.image_bytes,
                    node: if role.is_empty() {
                        node.to_string()
                    } else {
                        role.to_string()
                    },
                    mount_mode: mode.to_string(),
                    pull_seconds: Stat::of(
                        &cold
                            .iter()
                            .filter_map(|s| s.pull_seconds)
                            .collect::<Vec<_>>(),
                    ),
                    ready_seconds: Stat::of(
                        &cold.iter().map(|s| s.ready_seconds).collect::<Vec<_>>(),
                    ),
                    warm_ready_seconds: of(true).map(|s| s.ready_seconds).next(),
                    first_start_ready_seconds: samples
                        .iter()
                        .filter(mine)
                        .find(|s| s.first_start)
                        .map(|s| s.ready_seconds),
                    layer_blob_bytes_downloaded: median_u64(
                        cold.iter().map(|s| s.served.layer_blob).collect(),
                    ),
                    expanded_bytes_fetched: median_u64(
                        cold.iter().map(|s| s.served.expanded()).collect(),
                    ),
                    samples: cold.len(),
                });
            }
        }
        Report {
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            profile: profile.into(),
            scale,
            working_set,
            link,
            machine,
            versions,
            pause_image,
            images,
            rows,
            samples,
            published: published(),
        }
    }

    /// Write `report.md`, `report.json` and `report.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let json = serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            what: "report".into(),
            source,
        })?;
        let files = [
            ("report.json", json),
            ("report.md", self.markdown()),
            ("report.svg", self.svg()),
        ];
        for (name, body) in files {
            let p = dir.join(name);
            std::fs::write(&p, body).map_err(Error::io(format!("write {}", p.display())))?;
        }
        Ok(())
    }

    fn row(&self, variant: Variant, mode: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.variant == variant && r.mount_mode == mode)
    }

    /// The Markdown table (the seed's columns and more).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Standard pull vs Teleport: `{}` (scale {})\n",
            self.profile, self.scale
        );
        let l = self.link.latency_ms;
        let link = match &self.link.bandwidth {
            None if l == 0.0 => "unlimited loopback".to_string(),
            b => format!(
                "{} bandwidth, {l:.0} ms latency per request",
                b.as_deref().unwrap_or("unlimited")
            ),
        };
        let _ = writeln!(
            s,
            "Machine: {} ({} cores, {:.1} GiB, kernel {}). {}; {}. Link: {}. Working set {:.0}% of files. \
             Median of {} cold runs (min–max); every cold run on a recycled node.\n",
            self.machine.cpu_model,
            self.machine.cores,
            self.machine.mem_bytes as f64 / (1u64 << 30) as f64,
            self.machine.kernel,
            self.versions.containerd,
            self.versions.runc,
            link,
            self.working_set * 100.0,
            self.rows.first().map_or(0, |r| r.samples),
        );
        let _ = writeln!(
            s,
            "| Size | Layers | Mount mode | Standard pull | Teleport pull | speed-up | Standard ready | Teleport ready | warm ready (std / teleport) | bytes downloaded (std / teleport) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        let mut variants: Vec<Variant> = self.rows.iter().map(|r| r.variant).collect();
        variants.dedup();
        for v in variants {
            let std = self.row(v, "overlayfs");
            let teleports: Vec<&Row> = self
                .rows
                .iter()
                .filter(|r| r.variant == v && r.mount_mode != "overlayfs")
                .collect();
            let lines: Vec<Option<&Row>> = if teleports.is_empty() {
                vec![None]
            } else {
                teleports.into_iter().map(Some).collect()
            };
            for tp in lines {
                let any = std.or(tp);
                let (size, layers) = any.map_or((0, 0), |r| (r.image_bytes, r.layers));
                let speedup = match (
                    std.and_then(|r| r.pull_seconds),
                    tp.and_then(|r| r.pull_seconds),
                ) {
                    (Some(a), Some(b)) if b.median > 0.0 => format!("{:.1}×", a.median / b.median),
                    _ => "–".into(),
                };
                let warm = |r: Option<&Row>| {
                    r.and_then(|r| r.warm_ready_seconds)
                        .map_or("–".into(), |x| format!("{x:.2} s"))
                };
                let bytes = |r: Option<&Row>| {
                    r.map_or("–".into(), |r| {
                        if r.mount_mode == "overlayfs" {
                            human_bytes(r.layer_blob_bytes_downloaded)
                        } else {
                            format!(
                                "{} blobs + {} expanded",
                                human_bytes(r.layer_blob_bytes_downloaded),
                                human_bytes(r.expanded_bytes_fetched)
                            )
                        }
                    })
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} |",
                    human_bytes(size),
                    layers,
                    tp.map_or("–", |r| r.mount_mode.as_str()),
                    Stat::cell(std.and_then(|r| r.pull_seconds)),
                    Stat::cell(tp.and_then(|r| r.pull_seconds)),
                    speedup,
                    Stat::cell(std.and_then(|r| r.ready_seconds)),
                    Stat::cell(tp.and_then(|r| r.ready_seconds)),
                    warm(std),
                    warm(tp),
                    bytes(std),
                    bytes(tp),
                );
            }
        }
        let _ = writeln!(
            s,
            "\n\"ready\" = Scheduled → the app's `TB-READY` line (pull + sandbox + create + start + reading the working set, hash checked). \
             Bytes are registry `/metrics` deltas.\n"
        );
        let firsts: Vec<String> = self
            .rows
            .iter()
            .filter_map(|r| {
                r.first_start_ready_seconds.map(|x| {
                    format!(
                        "{} {:.2} s (teleporter {})",
                        r.variant.as_str(),
                        x,
                        r.mount_mode
                    )
                })
            })
            .collect();
        if !firsts.is_empty() {
            let _ = writeln!(
                s,
                "**First start** of each image on a fresh registry, before any start profile was learned \
                 (teleportd records what this start reads; every cold run above replays it): {}.\n",
                firsts.join(", ")
            );
        }
        let _ = writeln!(s, "**published (Azure, 2021) — for comparison only**\n");
        let _ = writeln!(
            s,
            "| Image | Size | Layers | Standard pull | Teleport pull | speed-up |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for p in &self.published {
            let _ = writeln!(
                s,
                "| {} | {} MB | {} | {:.1} s | {:.1} s | {:.1}× |",
                p.image,
                p.size_mb,
                p.layers,
                p.standard_seconds,
                p.teleport_seconds,
                p.standard_seconds / p.teleport_seconds
            );
        }
        let _ = writeln!(
            s,
            "\nSource: {}",
            self.published.first().map_or("", |p| p.source.as_str())
        );
        s
    }

    /// Grouped bars: per variant, one bar per node/mount mode, for pull and ready medians.
    pub fn svg(&self) -> String {
        const W: f64 = 760.0;
        const PANEL_H: f64 = 220.0;
        const TOP: f64 = 40.0;
        const LEFT: f64 = 60.0;
        let colors = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2"];
        let mut modes: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !modes.contains(&r.mount_mode.as_str()) {
                modes.push(&r.mount_mode);
            }
        }
        let mut variants: Vec<Variant> = self.rows.iter().map(|r| r.variant).collect();
        variants.dedup();
        type Pick = fn(&Row) -> Option<f64>;
        let panels: [(&str, Pick); 2] = [
            ("pull (s)", |r| r.pull_seconds.map(|s| s.median)),
            ("ready (s)", |r| r.ready_seconds.map(|s| s.median)),
        ];
        let height = TOP + panels.len() as f64 * (PANEL_H + 50.0) + 30.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="20" font-size="15">{} (scale {}): standard pull vs Teleport, median seconds</text>"#,
            xml(&self.profile),
            self.scale
        );
        for (i, m) in modes.iter().enumerate() {
            let x = LEFT + i as f64 * 130.0;
            let c = colors[i % colors.len()];
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="28" width="10" height="10" fill="{c}"/><text x="{}" y="37">{}</text>"#,
                x + 14.0,
                xml(if *m == "overlayfs" {
                    "shuttle (overlayfs)"
                } else {
                    m
                })
            );
        }
        for (pi, (title, value)) in panels.iter().enumerate() {
            let y0 = TOP + 20.0 + pi as f64 * (PANEL_H + 50.0);
            let max = self
                .rows
                .iter()
                .filter_map(value)
                .fold(0.0_f64, f64::max)
                .max(0.001);
            let _ = writeln!(s, r#"<text x="10" y="{}">{}</text>"#, y0 + 10.0, xml(title));
            let base = y0 + PANEL_H;
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{base}" x2="{}" y2="{base}" stroke="#333"/>"##,
                W - 20.0
            );
            let group_w = (W - LEFT - 40.0) / variants.len().max(1) as f64;
            for (vi, v) in variants.iter().enumerate() {
                let gx = LEFT + vi as f64 * group_w + 20.0;
                let bar_w = (group_w - 40.0) / modes.len().max(1) as f64;
                for (mi, m) in modes.iter().enumerate() {
                    let Some(val) = self.row(*v, m).and_then(value) else {
                        continue;
                    };
                    let h = val / max * (PANEL_H - 20.0);
                    let x = gx + mi as f64 * bar_w;
                    let _ = writeln!(
                        s,
                        r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{val:.2}</text>"#,
                        base - h,
                        bar_w - 6.0,
                        colors[mi % colors.len()],
                        x + (bar_w - 6.0) / 2.0,
                        base - h - 4.0
                    );
                }
                let layers = self
                    .rows
                    .iter()
                    .find(|r| r.variant == *v)
                    .map_or(0, |r| r.layers);
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{} ({} layer{})</text>"#,
                    gx + (group_w - 40.0) / 2.0,
                    base + 16.0,
                    v.as_str(),
                    layers,
                    if layers == 1 { "" } else { "s" }
                );
            }
        }
        let _ = writeln!(s, "</svg>");
        s
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn human_bytes(b: u64) -> String {
    let f = b as f64;
    if f >= 1e9 {
        format!("{:.2} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} kB", f / 1e3)
    } else {
        format!("{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Served;

    fn sample(
        node: &str,
        mode: &str,
        role: &str,
        rep: Option<u32>,
        pull: f64,
        ready: f64,
        blob: u64,
    ) -> Sample {
        Sample {
            variant: Variant::Layered,
            node: node.into(),
            role: role.into(),
            mount_mode: mode.into(),
            rep,
            warm: rep.is_none(),
            first_start: false,
            pull_seconds: rep.map(|_| pull),
            sandbox_seconds: 0.1,
            create_seconds: 0.1,
            start_seconds: 0.1,
            ready_seconds: ready,
            entrypoint_elapsed_ms: 5,
            ready_files: 1,
            ready_bytes: 1,
            ready_hash: "sha256:x".into(),
            served: Served {
                layer_blob: blob,
                ..Default::default()
            },
            teleportd_metrics: Default::default(),
        }
    }

    #[test]
    fn stats_and_rows() {
        assert_eq!(
            Stat::of(&[3.0, 1.0, 2.0]).unwrap(),
            Stat {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(Stat::of(&[4.0, 1.0]).unwrap().median, 2.5);
        assert!(Stat::of(&[]).is_none());

        // The image's first start (before a start profile existed): reported apart.
        let mut first = sample(
            "teleporter-merged",
            "merged",
            "teleporter",
            Some(0),
            9.0,
            9.5,
            0,
        );
        (first.rep, first.first_start) = (None, true);
        let samples = vec![
            first,
            sample("shuttle", "overlayfs", "shuttle", Some(0), 10.0, 11.0, 900),
            sample("shuttle", "overlayfs", "shuttle", Some(1), 12.0, 13.0, 900),
            sample("shuttle", "overlayfs", "shuttle", None, 0.0, 0.5, 0),
            sample(
                "teleporter-merged",
                "merged",
                "teleporter",
                Some(0),
                1.0,
                2.0,
                0,
            ),
            sample(
                "teleporter-merged",
                "merged",
                "teleporter",
                Some(1),
                2.0,
                3.0,
                0,
            ),
            sample(
                "teleporter-merged",
                "merged",
                "teleporter",
                None,
                0.0,
                0.6,
                0,
            ),
        ];
        let img = ImageFacts {
            variant: Variant::Layered,
            reference: "r".into(),
            manifest_digest: "d".into(),
            layers: 29,
            image_bytes: 944_000_000,
            compressed_bytes: 1,
            working_set_hash: "h".into(),
            working_set_files: 1,
            working_set_bytes: 1,
        };
        let r = Report::build(
            "p",
            1.0,
            0.06,
            LinkSettings {
                bandwidth_bytes_per_sec: None,
                bandwidth: None,
                latency_ms: 0.0,
            },
            MachineInfo::detect(),
            Versions::detect(),
            vec![img],
            samples,
            "pause".into(),
        );
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[0].node, "shuttle");
        assert_eq!(r.rows[0].pull_seconds.unwrap().median, 11.0);
        assert_eq!(r.rows[0].warm_ready_seconds, Some(0.5));
        assert_eq!(r.rows[0].layer_blob_bytes_downloaded, 900);
        assert_eq!(r.rows[1].node, "teleporter");
        assert_eq!(r.rows[1].mount_mode, "merged");
        assert_eq!(r.rows[1].samples, 2, "first start not in the cold runs");
        assert_eq!(r.rows[1].warm_ready_seconds, Some(0.6));
        assert_eq!(r.rows[1].first_start_ready_seconds, Some(9.5));
        assert_eq!(r.rows[0].first_start_ready_seconds, None);
        let md = r.markdown();
        assert!(
            md.contains(
                "| 944.0 MB | 29 | merged | 11.00 s (10.00–12.00) | 1.50 s (1.00–2.00) | 7.3× |"
            ),
            "{md}"
        );
        assert!(md.contains("published (Azure, 2021) — for comparison only"));
        assert!(md.contains("layered 9.50 s (teleporter merged)"), "{md}");
        assert!(md.contains("was learned (teleportd records"), "{md}");
        assert!(md.contains("34.7 s | 8.0 s"));
        let svg = r.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(v["rows"][1]["mount_mode"], "merged");
        assert_eq!(v["rows"][0]["pull_seconds"]["min"], 10.0);
    }
}
