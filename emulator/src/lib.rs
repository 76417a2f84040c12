//! emulator: Teleport's core model, pure and synchronous.
//!
//! Owns the versioned *expanded layer* format (write: [`expand`], read: [`format`], [`reader`]),
//! the OCI layer merge / whiteout rules ([`merge`]) and OCI helpers ([`digest`], [`oci`]).
//! Must not depend on an async runtime, HTTP, FUSE or any other crate of this workspace.

pub mod digest;
pub mod entry;
pub mod error;
pub mod expand;
pub mod format;
pub mod merge;
pub mod oci;
pub mod reader;

pub use digest::Digest;
pub use entry::{Entry, EntryKind};
pub use error::{Error, Result};
pub use expand::{expand, ExpandOptions, Expanded};
pub use format::{FormatVersion, Index};
