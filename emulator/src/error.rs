//! The crate's typed error. Variants carry the context needed to act on them.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid digest {0:?} (want sha256:<64 lowercase hex>)")]
    InvalidDigest(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("tar entry {path:?}: {reason}")]
    HostileEntry { path: PathBuf, reason: String },
    #[error("decompressed size exceeds limit ({limit} bytes)")]
    SizeLimit { limit: u64 },
    #[error("layer has more than {limit} entries")]
    EntryLimit { limit: u64 },
    /// A per-layer bound on metadata (xattr bytes, in-memory entry metadata) was exceeded.
    #[error("layer {what} exceed the limit ({limit} bytes)")]
    MetadataLimit { what: &'static str, limit: u64 },
    #[error("truncated or corrupt layer stream: {0}")]
    Corrupt(String),
    #[error("expanded format: {0}")]
    Format(String),
    #[error("unsupported expanded format version {0}")]
    UnsupportedVersion(u32),
    #[error("merge: {0}")]
    Merge(String),
    #[error("image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
}
