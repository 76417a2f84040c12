//! Snapshot domain: our own `Info`/`Kind`/`Mount` types, the [`Snapshotter`] trait the gRPC adapter
//! calls, and the persistent overlayfs implementation.

pub mod filter;
pub mod overlay;
pub mod remote;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::labels::Labels;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata {path:?} is corrupt: {source}")]
    CorruptMetadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("remote layer resolution: {0}")]
    Remote(#[from] crate::remote::RemoteError),
}

impl SnapshotError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| SnapshotError::Io { context, source }
    }
}

pub type Result<T> = std::result::Result<T, SnapshotError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

/// What containerd sees of a snapshot (Stat/List/Update).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    /// Empty when the snapshot has no parent (containerd's convention).
    pub parent: String,
    pub kind: Kind,
    pub labels: Labels,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// A mount containerd performs itself (proxy snapshotters only describe mounts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// Which part of `Info` an Update may change (containerd only lets labels change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldPath {
    /// Replace the whole label map.
    Labels,
    /// Set (or, when absent/empty in the new info, delete) one label.
    Label(String),
}

/// The snapshot operations containerd's Snapshots service exposes, in domain terms. The gRPC
/// adapter (`crate::grpc`) is the only caller that speaks protobuf.
pub trait Snapshotter: Send + Sync + 'static {
    fn prepare(
        &self,
        key: String,
        parent: String,
        labels: Labels,
    ) -> impl Future<Output = Result<Vec<Mount>>> + Send;
    fn view(
        &self,
        key: String,
        parent: String,
        labels: Labels,
    ) -> impl Future<Output = Result<Vec<Mount>>> + Send;
    fn mounts(&self, key: String) -> impl Future<Output = Result<Vec<Mount>>> + Send;
    fn commit(
        &self,
        name: String,
        key: String,
        labels: Labels,
    ) -> impl Future<Output = Result<()>> + Send;
    fn remove(&self, key: String) -> impl Future<Output = Result<()>> + Send;
    fn stat(&self, key: String) -> impl Future<Output = Result<Info>> + Send;
    fn update(
        &self,
        info: Info,
        fields: Vec<FieldPath>,
    ) -> impl Future<Output = Result<Info>> + Send;
    /// Snapshots matching `filters` (OR of filter strings). Filters this snapshotter does not
    /// understand match everything: callers (containerd's metadata layer) filter again.
    fn list(&self, filters: Vec<String>) -> impl Future<Output = Result<Vec<Info>>> + Send;
    fn usage(&self, key: String) -> impl Future<Output = Result<Usage>> + Send;
    fn cleanup(&self) -> impl Future<Output = Result<()>> + Send;
}
