//! The fuse manager's wire protocol: one JSON [`Request`] line per connection, answered by one
//! JSON [`Response`] line. Both sides are the same binary, but a manager survives teleportd
//! upgrades, so [`PROTOCOL_VERSION`] and the config [`Fingerprint`] are checked on connect.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::fetch::{CountersSnapshot, MountInfo};
use crate::remote::{ImageRef, LayerRef};

/// Longest request line accepted (a merged mount of a few hundred layers fits easily).
pub const MAX_LINE: u64 = 64 << 20;

/// Bumped on any incompatible change of [`Request`] / [`Response`].
pub const PROTOCOL_VERSION: u32 = 1;

/// What a manager was started with; a teleportd with another fingerprint replaces the manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub protocol: u32,
    /// `CARGO_PKG_VERSION` of the manager binary.
    pub version: String,
    pub registry: String,
    pub cache_dir: PathBuf,
    pub user: Option<String>,
    /// sha256 of the password: a changed secret must restart the manager, without the secret
    /// travelling over the socket.
    pub password_sha256: Option<String>,
    /// Its [`MountSettings`](super::config::MountSettings) as the flags a spawned manager gets
    /// (`to_args`): a manager kept with other settings would go on serving with its old ones,
    /// and every setting is in here without being listed twice.
    #[serde(default)]
    pub settings: Vec<String>,
}

/// One layer to mount, as the snapshotter's [`LayerRef`] names it (the registry's `/mount`
/// answer trimmed to this layer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerSpec {
    pub host: String,
    pub repo: String,
    pub manifest: String,
    pub digest: String,
    pub mount_info: MountInfo,
}

impl Fingerprint {
    /// Whether `other` differs from this one in the credentials only (which a running manager
    /// can take over its socket instead of being replaced).
    pub fn differs_only_in_credentials(&self, other: &Fingerprint) -> bool {
        let strip = |f: &Fingerprint| Fingerprint {
            user: None,
            password_sha256: None,
            ..f.clone()
        };
        strip(self) == strip(other)
    }
}

impl From<&LayerRef> for LayerSpec {
    fn from(l: &LayerRef) -> Self {
        let mut mount_info = (*l.mount_info).clone();
        mount_info.layers.retain(|i| i.digest.as_str() == l.digest);
        LayerSpec {
            host: l.image.host.clone(),
            repo: l.image.repo.clone(),
            manifest: l.image.manifest.clone(),
            digest: l.digest.clone(),
            mount_info,
        }
    }
}

impl From<LayerSpec> for LayerRef {
    fn from(s: LayerSpec) -> Self {
        LayerRef {
            image: ImageRef {
                host: s.host,
                repo: s.repo,
                manifest: s.manifest,
            },
            digest: s.digest,
            mount_info: Arc::new(s.mount_info),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Who are you: answered with [`Response::Info`].
    Info,
    /// Mount one layer in overlayfs form at `target`; Ok without remounting if already mounted.
    MountLayer {
        target: PathBuf,
        layer: LayerSpec,
    },
    /// Mount the merged tree of `layers` (bottom → top) at `target`; Ok if already mounted.
    MountMerged {
        target: PathBuf,
        layers: Vec<LayerSpec>,
    },
    /// Open these layers ahead (index, start-profile replay) in the background; answered at
    /// once. See [`crate::remote::LayerMounter::warm`].
    Warm {
        layers: Vec<LayerSpec>,
    },
    /// No-op when nothing is mounted at `target`.
    Unmount {
        target: PathBuf,
    },
    IsMounted {
        target: PathBuf,
    },
    /// Every mount point the manager serves.
    List,
    /// Fetch counters per mount.
    Stats,
    /// The manager's latency histograms ([`crate::timing::manager`]) as OpenMetrics text.
    Timings,
    /// The start trace from cursor `since` on, at most `max` events ([`crate::trace::page`]).
    Trace {
        #[serde(default)]
        since: u64,
        #[serde(default = "default_trace_max")]
        max: usize,
    },
    /// Serve on with these registry credentials (a rotated password): answered Ok, the
    /// manager's fingerprint then says so. Mounts are not touched.
    SetCredentials {
        user: Option<String>,
        password: Option<String>,
    },
    /// Unmount and exit. Without `force`, mounts in use (a running container's layers) are
    /// neither detached nor given up: the manager unmounts the idle ones, answers an error
    /// naming the busy ones and keeps serving. With `force`, everything is detached.
    Shutdown {
        #[serde(default)]
        force: bool,
    },
}

fn default_trace_max() -> usize {
    TRACE_PAGE
}

/// Events per trace answer (a line of JSON each answer: kept to a few MiB).
pub const TRACE_PAGE: usize = 16_384;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManagerInfo {
    pub pid: u32,
    pub root: PathBuf,
    pub fingerprint: Fingerprint,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Info(ManagerInfo),
    Mounted {
        mounted: bool,
    },
    Mounts {
        mounts: Vec<PathBuf>,
    },
    Timings {
        text: String,
    },
    Stats {
        mounts: Vec<(PathBuf, CountersSnapshot)>,
    },
    Trace(crate::trace::Page),
    Error {
        message: String,
    },
}
