//! What a fuse manager serves with, and the [`Fingerprint`] of it that a teleportd compares on
//! connect. [`MountSettings`] is defined once here: teleportd flattens it into its flags (so the
//! `--config FILE` TOML reads it too), carries it unchanged to the manager, hands it to a spawned
//! manager as the same flags ([`MountSettings::to_args`]) and builds the fetch client's and the
//! mounts' options from it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser as _;
use sha2::Digest as _;

use super::proto::{Fingerprint, PROTOCOL_VERSION};
use crate::fetch::{ClientOptions, Credentials};
use crate::fs::MountOptions;

/// How the manager fetches and mounts remote layers: teleportd's flags of the same names.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct MountSettings {
    /// Do not use learned start profiles: neither replay a layer's stored profile at mount nor
    /// record and upload one.
    #[arg(long)]
    pub no_start_profile: bool,
    /// How long after a layer's first read its start profile keeps recording.
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = seconds)]
    pub profile_window: Duration,
    /// Also fetch every mounted layer's whole data in the background, at low priority, so the
    /// node ends up with the full image (off by default: a start needs a few percent of it).
    #[arg(long)]
    pub prefetch_layers: bool,
    /// Size cap of the chunk cache (least recently used packs are evicted); default unbounded.
    #[arg(long, value_name = "BYTES")]
    pub cache_max_bytes: Option<u64>,
    /// When the first read of a small file misses, also fetch up to this many bytes of the files
    /// that follow it in the layer's data (its neighbours in the tar, mostly the same directory)
    /// in the same request: without a start profile, an interpreter's imports are otherwise one
    /// round trip each. Only for a read that waits alone (a parallel start's waits overlap
    /// anyway and the bytes would compete with them). 0 turns it off.
    #[arg(long, default_value = "262144", value_name = "BYTES")]
    pub neighbour_ahead: u64,
    /// Keep the newest this many FUSE opens and reads, in order with their waits, for
    /// `teleportd trace` (about 100 bytes each). 0 turns the trace off.
    #[arg(long, default_value = "65536", value_name = "EVENTS")]
    pub trace_events: usize,
    /// How layer data crosses the wire: `zstd` fetches the registry's compressed frames when
    /// its `/mount` answer offers them (a registry that does not gets plain ranges); `off`
    /// always fetches plain ranges of the expanded data.
    #[arg(long, value_enum, default_value = "zstd")]
    pub wire_compression: WireCompression,
}

/// [`MountSettings::wire_compression`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WireCompression {
    Zstd,
    Off,
}

impl WireCompression {
    fn flag(self) -> &'static str {
        match self {
            WireCompression::Zstd => "zstd",
            WireCompression::Off => "off",
        }
    }
}

fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses [`MountSettings`] alone (its defaults, and [`MountSettings::to_args`]' round trip).
#[derive(clap::Parser)]
struct Only {
    #[command(flatten)]
    settings: MountSettings,
}

impl Default for MountSettings {
    /// The flags' defaults (kept in the `#[arg]` attributes only).
    fn default() -> Self {
        // invariant: no arguments always parse (every field has a default).
        Only::try_parse_from(["teleportd"])
            .map(|o| o.settings)
            .unwrap_or_else(|e| unreachable!("MountSettings defaults: {e}"))
    }
}

impl MountSettings {
    pub fn start_profile(&self) -> bool {
        !self.no_start_profile
    }

    /// The same settings as command-line flags, for a manager started by teleportd.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if self.no_start_profile {
            a.push("--no-start-profile".into());
        }
        a.push("--profile-window".into());
        a.push(self.profile_window.as_secs_f64().to_string().into());
        if self.prefetch_layers {
            a.push("--prefetch-layers".into());
        }
        if let Some(max) = self.cache_max_bytes {
            a.push("--cache-max-bytes".into());
            a.push(max.to_string().into());
        }
        a.push("--neighbour-ahead".into());
        a.push(self.neighbour_ahead.to_string().into());
        a.push("--trace-events".into());
        a.push(self.trace_events.to_string().into());
        a.push("--wire-compression".into());
        a.push(self.wire_compression.flag().into());
        a
    }

    /// The fetch client's options: these settings over its defaults.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            start_profile: self.start_profile(),
            profile_window: self.profile_window,
            cache_max_bytes: self.cache_max_bytes,
            compressed_wire: self.wire_compression == WireCompression::Zstd,
            ..ClientOptions::default()
        }
    }

    /// The FUSE mounts' options: these settings over their defaults.
    pub fn mount_options(&self) -> MountOptions {
        MountOptions {
            prefetch_layers: self.prefetch_layers,
            neighbour_ahead: self.neighbour_ahead,
            ..MountOptions::default()
        }
    }
}

/// What a manager serves with.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// teleportd's root: the socket, pid and log files live here.
    pub root: PathBuf,
    pub registry: String,
    pub credentials: Option<Credentials>,
    pub cache_dir: PathBuf,
    pub settings: MountSettings,
}

impl ManagerConfig {
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            registry: self.registry.clone(),
            cache_dir: self.cache_dir.clone(),
            user: self.credentials.as_ref().map(|c| c.username.clone()),
            password_sha256: self
                .credentials
                .as_ref()
                .map(|c| hex::encode(sha2::Sha256::digest(c.password.as_bytes()))),
            settings: self
                .settings
                .to_args()
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_reach_a_spawned_manager_unchanged() {
        let cases = [
            MountSettings::default(),
            MountSettings {
                no_start_profile: true,
                profile_window: Duration::from_millis(2500),
                prefetch_layers: true,
                cache_max_bytes: Some(1 << 30),
                neighbour_ahead: 0,
                trace_events: 7,
                wire_compression: WireCompression::Off,
            },
        ];
        for s in cases {
            let mut argv: Vec<OsString> = vec!["teleportd".into()];
            argv.extend(s.to_args());
            assert_eq!(Only::try_parse_from(argv).unwrap().settings, s);
        }
    }

    #[test]
    fn any_changed_setting_changes_the_fingerprint() {
        let cfg = ManagerConfig {
            root: "/r".into(),
            registry: "http://127.0.0.1:1".into(),
            credentials: None,
            cache_dir: "/c".into(),
            settings: MountSettings::default(),
        };
        let mut other = cfg.clone();
        other.settings.neighbour_ahead = 0;
        assert_ne!(cfg.fingerprint(), other.fingerprint());
        let mut other = cfg.clone();
        other.settings.wire_compression = WireCompression::Off;
        assert_ne!(cfg.fingerprint(), other.fingerprint());
        assert_eq!(cfg.fingerprint(), cfg.clone().fingerprint());
    }

    #[test]
    fn defaults_are_the_flags_defaults() {
        let d = MountSettings::default();
        assert!(d.start_profile() && !d.prefetch_layers && d.cache_max_bytes.is_none());
        assert_eq!(d.profile_window, Duration::from_secs(10));
        assert_eq!(d.client_options().profile_window, Duration::from_secs(10));
        assert_eq!(d.mount_options().neighbour_ahead, 256 << 10);
        assert_eq!(d.wire_compression, WireCompression::Zstd);
        assert!(d.client_options().compressed_wire);
        let off = Only::try_parse_from(["t", "--wire-compression", "off"]).unwrap();
        assert!(!off.settings.client_options().compressed_wire);
        assert!(Only::try_parse_from(["t", "--profile-window", "-1"]).is_err());
    }
}
