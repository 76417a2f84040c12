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

pub use v1::{ChunkInfo, Index};
