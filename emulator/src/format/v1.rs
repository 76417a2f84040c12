//! Layout v1 of the expanded index. Explicit little-endian encoding; decode validates before trust.

use crate::digest::Digest;
use crate::entry::Entry;
use crate::error::Result;

/// One fixed-size region of the data blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    pub offset: u64,
    pub len: u32,
    /// sha256 of the chunk's bytes: the key of a node's chunk cache.
    pub digest: Digest,
}

/// A decoded, validated index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// Compressed layer digest (the manifest's), if known at expansion time.
    pub layer_digest: Option<Digest>,
    /// sha256 of the uncompressed tar (the config's diff_id).
    pub diff_id: Digest,
    /// Chunk size in bytes: a power of two.
    pub chunk_size: u32,
    /// Total length of the data blob.
    pub data_size: u64,
    /// sha256 of the data blob.
    pub data_digest: Digest,
    /// Entries in tar order.
    pub entries: Vec<Entry>,
    /// Chunks covering `0..data_size` in order.
    pub chunks: Vec<ChunkInfo>,
}

impl Index {
    /// Serialise (header + body). Deterministic: same index, same bytes.
    pub fn encode(&self) -> Vec<u8> {
        todo!()
    }
    /// Parse and validate. Checks magic, version, incompat bits, every count, offset and length
    /// (against `data_size`), path normalisation; never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Index> {
        let _ = bytes;
        todo!()
    }
}
