//! emulator: Teleport's core model, pure and synchronous.
//!
//! Owns the versioned *expanded layer* format (write: [`expand()`], read: [`format`](mod@format), [`reader`]),
//! the OCI layer merge / whiteout rules ([`merge`](mod@merge)) and OCI helpers ([`digest`], [`oci`]).
//! Must not depend on an async runtime, HTTP, FUSE or any other crate of this workspace.
//!
//! - [`expand()`]: one streaming pass from a layer blob to an [`Index`] + data blob.
//! - [`format`](mod@format): the versioned index layout (byte table in its docs), [`Index::encode`] /
//!   [`Index::decode`] (validating).
//! - [`reader`]: ranged reads of file bytes through any [`RangeSource`], and [`reader::to_tar`].
//! - [`merge()`]: the rootfs a standard pull produces from a layer stack; [`overlay_form()`]: one
//!   layer as an overlayfs lower directory would hold it.
//! - [`tar_reader`]: the streaming tar parser expansion uses (ustar, GNU, PAX).
//! - [`frames`]: the seekable zstd encoding of a data blob and its frame table (the compressed
//!   wire; typed, versioned, validated on decode).
//! - [`mount`](mod@mount): the registry's `/mount` answer (typed, versioned) and its one status enum.
//! - [`settings_file`]: the daemons' `--config FILE` (TOML keys = long flags), parsed as text.

pub mod digest;
pub mod entry;
pub mod error;
pub mod expand;
pub mod format;
pub mod frames;
pub mod merge;
pub mod mount;
pub mod oci;
pub mod profile;
pub mod reader;
pub mod settings_file;
pub mod tar_reader;
pub mod units;

pub use digest::Digest;
pub use entry::{Entry, EntryKind};
pub use error::{Error, Result};
pub use expand::{
    expand, expand_to_file, Compression, ExpandOptions, Expanded, MIN_EXPAND_CHUNK_SIZE,
};
pub use format::{ChunkInfo, FormatVersion, Index};
pub use merge::{merge, overlay_form, MergedEntry, MergedTree};
pub use reader::RangeSource;
