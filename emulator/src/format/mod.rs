//! The expanded layer format: a versioned contract.
//!
//! An expanded layer is two blobs, both content-addressed by the registry:
//! - the **index**: header (magic, version, feature bits) + every entry + the chunk table;
//! - the **data**: every regular file's bytes, stored once per distinct content, laid out so that
//!   a file smaller than a chunk never straddles a chunk boundary and a larger one starts on one.
//!
//! A reader fetches the index whole (it is small), then data by HTTP Range, chunk by chunk; each
//! chunk's digest in the chunk table makes a node-wide content-addressed chunk cache possible.
//! A shipped layout is never edited: a new layout is a new sibling module (`v2`), `v1` stays readable.
//!
//! # Data blob layout
//!
//! Regular files' bytes, each distinct content once (sha256), in first-appearance tar order. A file
//! of `size < chunk_size` is placed at the current end unless it would cross a chunk boundary, in
//! which case zeros pad to the next boundary; a file of `size >= chunk_size` starts on a boundary.
//! Empty files take no space (`data_offset` 0). Chunk `i` covers `i*chunk_size ..
//! min((i+1)*chunk_size, data_size)`.
//!
//! # Index v1 byte layout (all integers little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `TPXINDEX` |
//! | 8 | 4 | format version (`1`) |
//! | 12 | 4 | compat feature bits (unknown bits are ignored) |
//! | 16 | 4 | incompat feature bits (any unknown bit: refuse to read) |
//! | 20 | 4 | header length (`64`) |
//! | 24 | 4 | chunk size (power of two, 4 KiB ..= 16 MiB) |
//! | 28 | 4 | reserved, zero |
//! | 32 | 8 | data size |
//! | 40 | 8 | entry count |
//! | 48 | 8 | chunk count (= ceil(data size / chunk size)) |
//! | 56 | 8 | body length (= blob length − 64) |
//! | 64 | 32 | diff_id (raw sha256 of the uncompressed tar) |
//! | 96 | 32 | data digest (raw sha256 of the data blob) |
//! | 128 | 1 | `1` if a layer digest follows, else `0` |
//! | 129 | 32 | layer digest (raw sha256; zeros when absent) |
//! | 161 | … | entries, in tar order (below) |
//! | … | 32 × chunks | chunk digests (raw sha256), in order; offsets and lengths are implied |
//!
//! Entry record:
//!
//! | size | field |
//! |---|---|
//! | 1 | kind: 0 file, 1 dir, 2 symlink, 3 hardlink, 4 char dev, 5 block dev, 6 fifo, 7 whiteout, 8 opaque dir |
//! | 4 | mode (permission + special bits, ≤ 07777) |
//! | 4 | uid |
//! | 4 | gid |
//! | 8 | mtime (i64 seconds) |
//! | 8 | size (files only) |
//! | 8 | data offset (files only) |
//! | 4 + 4 | device major, minor (devices only) |
//! | 4 + n | path (UTF-8, normalised: relative, no `.`/`..`/empty component) |
//! | 4 + n | link target (UTF-8; length `0xFFFF_FFFF` = none) |
//! | 4 | xattr count, then per xattr: 4 + n name (UTF-8), 4 + n value |
//!
//! `Index::decode` checks all of it before returning: magic, version, feature bits, header and
//! body lengths, counts against the bytes present (before allocating), kind codes, UTF-8, path
//! normalisation, `data_offset + size <= data_size`, kind-specific fields (links only on links,
//! device numbers only on devices), hardlinks naming an earlier non-directory entry, chunk count,
//! and no trailing bytes.

pub mod v1;

use crate::error::Error;

/// Index magic: the first 8 bytes of every index blob.
pub const MAGIC: [u8; 8] = *b"TPXINDEX";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FormatVersion {
    V1 = 1,
}

impl FormatVersion {
    pub const MIN_SUPPORTED: FormatVersion = FormatVersion::V1;
    pub const CURRENT: FormatVersion = FormatVersion::V1;
}

impl TryFrom<u32> for FormatVersion {
    type Error = Error;
    fn try_from(v: u32) -> Result<Self, Error> {
        match v {
            1 => Ok(FormatVersion::V1),
            other => Err(Error::UnsupportedVersion(other)),
        }
    }
}

pub use v1::{ChunkInfo, Header, Index};
