//! The registry's `/mount/v1/{repo}/_manifests/{digest}` answer: one typed, versioned document
//! the registry serialises and the node parses, and the one status enum every caller uses.
//!
//! The HTTP status carries the state: 200 (every layer expanded; body [`MountInfo`]), 409 (a
//! layer pending or expanding), 404 (repository not teleport-enabled, manifest unknown, or the
//! image never queued) and 500 (a layer failed to expand; an `EXPANSION_FAILED` error body).
//! [`MountStatus::from_answer`] is the one place that maps an answer to a status, and
//! [`MountStatus::http_status`] the one place that maps back.
//!
//! Wire format of the 200 body (schema version 1, JSON):
//! ```json
//! {"schemaVersion":1,"repository":"REPO","manifestDigest":"sha256:…","formatVersion":1,
//!  "layers":[{"digest":"sha256:<compressed>","mediaType":"…","size":N,"diffId":"sha256:…",
//!    "uncompressedSize":N,
//!    "index":{"url":"/mount/v1/REPO/_layers/sha256:…/index","size":N,"digest":"sha256:…"},
//!    "data":{"url":"/mount/v1/REPO/_layers/sha256:…/data","size":N,"digest":"sha256:…"},
//!    "chunkSize":N,"entries":N,
//!    "frames":{"encoding":"zstd","frameSize":N,
//!      "table":{"url":"/mount/v1/REPO/_layers/sha256:…/frames","size":N,"digest":"sha256:…"},
//!      "data":{"url":"/mount/v1/REPO/_layers/sha256:…/data.zst","size":N,"digest":"sha256:…"}}}]}
//! ```
//! `frames` is optional (added within schema version 1, so both directions stay compatible): a
//! registry that does not produce the compressed encoding leaves it out, and a node that does
//! not know it ignores it (unknown fields are ignored). When present, the data blob's bytes may
//! be read as compressed frames (see [`crate::frames`]); a node uses an `encoding` it knows only.
//! For an index (multi-arch) digest, `layers` is empty and `manifests` lists each child
//! (`digest`, `mediaType`, `platform`, `layers`). URLs are relative to the registry's base URL.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Digest;

/// Version of the `/mount` 200 body.
pub const MOUNT_SCHEMA_VERSION: u32 = 1;
/// Largest `/mount` answer a reader accepts (a few hundred layers take well under 1 MiB).
pub const MOUNT_BODY_MAX: u64 = 8 << 20;

/// Why a `/mount` answer could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountError {
    #[error("invalid /mount body: {0}")]
    Json(String),
    #[error("unsupported /mount schemaVersion {0} (want {MOUNT_SCHEMA_VERSION})")]
    Version(u32),
    #[error("unexpected /mount status {0}")]
    Status(u16),
}

/// What `/mount` said about an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountStatus {
    /// 200: every layer is expanded.
    Ready(Arc<MountInfo>),
    /// 409: expansion still running (also: still running when a caller stopped waiting).
    Expanding,
    /// 404: repository not teleport-enabled, or this image was not expanded.
    NotEnabled,
    /// 500: a layer could not be expanded; `reason` is the registry's error body.
    Failed { reason: String },
}

impl MountStatus {
    /// The status of an answer with HTTP status `status` and body `body` (only a 200's and a
    /// 500's body are read).
    pub fn from_answer(status: u16, body: &[u8]) -> Result<MountStatus, MountError> {
        match status {
            200 => Ok(MountStatus::Ready(Arc::new(MountInfo::decode(body)?))),
            409 => Ok(MountStatus::Expanding),
            404 => Ok(MountStatus::NotEnabled),
            500 => Ok(MountStatus::Failed {
                reason: String::from_utf8_lossy(body).into_owned(),
            }),
            s => Err(MountError::Status(s)),
        }
    }

    /// The HTTP status the registry answers this state with.
    pub fn http_status(&self) -> u16 {
        match self {
            MountStatus::Ready(_) => 200,
            MountStatus::Expanding => 409,
            MountStatus::NotEnabled => 404,
            MountStatus::Failed { .. } => 500,
        }
    }

    /// Whether the answer is final (anything but 409).
    pub fn is_final(&self) -> bool {
        !matches!(self, MountStatus::Expanding)
    }
}

/// The lines ACR's `check-expansion.sh` printed.
impl std::fmt::Display for MountStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountStatus::Ready(_) => f.write_str("layers ready"),
            MountStatus::Expanding => f.write_str("expanding layers"),
            MountStatus::NotEnabled => f.write_str("not enabled"),
            MountStatus::Failed { reason } => write!(f, "expansion failed: {reason}"),
        }
    }
}

/// The 200 body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountInfo {
    pub schema_version: u32,
    pub repository: String,
    pub manifest_digest: Digest,
    /// Version of the expanded-layer format the layers are in.
    pub format_version: u32,
    /// Bottom → top, as in the manifest (empty for an index).
    pub layers: Vec<LayerInfo>,
    /// The index's media type (an index only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Each child manifest (an index only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<ChildMount>,
}

impl MountInfo {
    /// Decode a 200 body and check its schema version.
    pub fn decode(body: &[u8]) -> Result<MountInfo, MountError> {
        let info: MountInfo =
            serde_json::from_slice(body).map_err(|e| MountError::Json(e.to_string()))?;
        if info.schema_version != MOUNT_SCHEMA_VERSION {
            return Err(MountError::Version(info.schema_version));
        }
        Ok(info)
    }

    /// The JSON the registry sends.
    pub fn encode(&self) -> Vec<u8> {
        // invariant: plain structs of strings and numbers always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// One child manifest of an index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildMount {
    pub digest: Digest,
    pub media_type: String,
    /// The index's `platform` object, as pushed.
    #[serde(default)]
    pub platform: serde_json::Value,
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
    /// The data blob's seekable compressed encoding, when the registry produced one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<FramesRef>,
}

/// Encoding name of [`crate::frames`] in [`FramesRef::encoding`].
pub const FRAMES_ENCODING_ZSTD: &str = "zstd";

/// Where the seekable compressed encoding of a layer's data blob lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FramesRef {
    /// [`FRAMES_ENCODING_ZSTD`]; a node skips an encoding it does not know.
    pub encoding: String,
    /// Data bytes per frame (the table repeats it; the table is authoritative).
    pub frame_size: u32,
    /// The frame table ([`crate::frames::FrameTable`]).
    pub table: BlobRef,
    /// The compressed blob.
    pub data: BlobRef,
}

/// Where a blob of an expanded layer lives (URL relative to the registry's base URL).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub url: String,
    pub size: u64,
    pub digest: Digest,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> MountInfo {
        let d = Digest::sha256_of(b"x");
        let blob = |p: &str| BlobRef {
            url: format!("/mount/v1/r/_layers/{d}/{p}"),
            size: 7,
            digest: d.clone(),
        };
        MountInfo {
            schema_version: MOUNT_SCHEMA_VERSION,
            repository: "r".into(),
            manifest_digest: d.clone(),
            format_version: 1,
            layers: vec![LayerInfo {
                digest: d.clone(),
                media_type: crate::oci::MT_OCI_LAYER_GZIP.into(),
                size: 3,
                diff_id: d.clone(),
                uncompressed_size: 9,
                index: blob("index"),
                data: blob("data"),
                chunk_size: 65536,
                entries: 2,
                frames: None,
            }],
            media_type: None,
            manifests: Vec::new(),
        }
    }

    #[test]
    fn answers_map_to_one_status_and_back() {
        let i = info();
        let s = MountStatus::from_answer(200, &i.encode()).unwrap();
        assert_eq!(s, MountStatus::Ready(Arc::new(i)));
        for (code, want) in [
            (409, MountStatus::Expanding),
            (404, MountStatus::NotEnabled),
            (
                500,
                MountStatus::Failed {
                    reason: "boom".into(),
                },
            ),
        ] {
            let s = MountStatus::from_answer(code, b"boom").unwrap();
            assert_eq!(s, want);
            assert_eq!(s.http_status(), code);
        }
        assert_eq!(
            MountStatus::from_answer(403, b""),
            Err(MountError::Status(403))
        );
        assert_eq!(MountStatus::Expanding.to_string(), "expanding layers");
    }

    #[test]
    fn wire_names_and_version_are_checked() {
        let body = String::from_utf8(info().encode()).unwrap();
        for key in [
            "\"schemaVersion\":1",
            "\"manifestDigest\"",
            "\"diffId\"",
            "\"uncompressedSize\"",
            "\"chunkSize\"",
        ] {
            assert!(body.contains(key), "{key} in {body}");
        }
        // An index-only field is absent from an image's answer.
        assert!(!body.contains("manifests"), "{body}");
        // A registry that produces frames: an old node (no such field) still reads the body,
        // and a new node reads the field; without it, it is None.
        let mut with = info();
        with.layers[0].frames = Some(FramesRef {
            encoding: FRAMES_ENCODING_ZSTD.into(),
            frame_size: 65536,
            table: with.layers[0].index.clone(),
            data: with.layers[0].data.clone(),
        });
        let wire = with.encode();
        assert!(String::from_utf8_lossy(&wire).contains("\"frameSize\":65536"));
        assert_eq!(MountInfo::decode(&wire).unwrap(), with);
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        #[allow(dead_code)]
        struct OldLayer {
            digest: Digest,
            chunk_size: u32,
        }
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct OldInfo {
            layers: Vec<OldLayer>,
        }
        let old: OldInfo = serde_json::from_slice(&wire).unwrap();
        assert_eq!(old.layers[0].chunk_size, 65536);
        assert!(!body.contains("frames"), "{body}");
        let v2 = body.replace("\"schemaVersion\":1", "\"schemaVersion\":2");
        assert_eq!(
            MountInfo::decode(v2.as_bytes()),
            Err(MountError::Version(2))
        );
        assert!(matches!(
            MountInfo::decode(b"{\"schemaVersion\":1}"),
            Err(MountError::Json(_))
        ));
    }
}
