//! Expansion: layer blob (gzip / zstd / plain tar) → index + data.

use std::io::{Read, Seek, Write};

use crate::digest::Digest;
use crate::error::Result;
use crate::format::Index;

#[derive(Clone, Debug)]
pub struct ExpandOptions {
    /// Data chunk size (power of two, 64 KiB ..= 16 MiB). Default 1 MiB.
    pub chunk_size: u32,
    /// Hard cap on decompressed bytes. Default 64 GiB.
    pub max_uncompressed: u64,
    /// Cap on decompressed/compressed ratio (checked once past 1 MiB of output). Default 1000.
    pub max_ratio: u64,
    /// Cap on entry count. Default 10 million.
    pub max_entries: u64,
}

impl Default for ExpandOptions {
    fn default() -> Self {
        ExpandOptions { chunk_size: 1 << 20, max_uncompressed: 64 << 30, max_ratio: 1000, max_entries: 10_000_000 }
    }
}

/// Result of one expansion.
#[derive(Clone, Debug)]
pub struct Expanded {
    pub index: Index,
    /// `index.encode()`, ready to store.
    pub index_bytes: Vec<u8>,
    /// Compressed bytes read.
    pub compressed_size: u64,
    /// Uncompressed tar bytes read.
    pub uncompressed_size: u64,
}

/// Expand a layer blob. `media_type` (the descriptor's) picks the decompressor, falling back to magic
/// bytes when absent or generic. File bytes go to `data` (which must be empty and positioned at 0;
/// seek is used to de-duplicate identical contents). `layer_digest` is recorded in the index.
pub fn expand<R: Read, W: Write + Seek>(
    blob: R,
    media_type: Option<&str>,
    layer_digest: Option<&Digest>,
    data: W,
    opts: &ExpandOptions,
) -> Result<Expanded> {
    let _ = (blob, media_type, layer_digest, data, opts);
    todo!()
}
