//! The registry's `/mount/v1/{repo}/_manifests/{digest}` answer.

use emulator::Digest;
use serde::{Deserialize, Serialize};

/// What `/mount` said about an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountStatus {
    /// 200: every layer is expanded.
    Ready(MountInfo),
    /// 409: expansion still running; ask again later.
    Expanding,
    /// 404: repository not teleport-enabled, or this image was not expanded.
    NotEnabled,
}

/// The 200 body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountInfo {
    pub schema_version: u32,
    pub repository: String,
    pub manifest_digest: Digest,
    pub format_version: u32,
    /// Bottom → top, as in the manifest.
    pub layers: Vec<LayerInfo>,
}

/// One expanded layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerInfo {
    /// Compressed layer digest (the manifest's).
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    pub index: BlobRef,
    pub data: BlobRef,
    pub chunk_size: u32,
    pub entries: u64,
}

/// Where a blob of an expanded layer lives (URL relative to the registry's base URL).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub url: String,
    pub size: u64,
    pub digest: Digest,
}
