//! One filesystem entry of a layer, as the expanded index records it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// `link` holds the path (layer-relative) of the entry it links to.
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// A `.wh.NAME` tar entry: `path` is the whited-out path `DIR/NAME` (the marker itself is implied).
    Whiteout,
    /// A `.wh..wh..opq` tar entry: `path` is the directory made opaque.
    OpaqueDir,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Normalised layer-relative path: no leading `/`, no `.`/`..` components, `""` never appears.
    pub path: String,
    pub kind: EntryKind,
    /// Permission and special bits (07777); the type lives in `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Byte size for `File`, 0 otherwise.
    pub size: u64,
    /// Symlink target (verbatim) or hardlink target (normalised path).
    pub link: Option<String>,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// Extended attributes in tar order (PAX `SCHILY.xattr.*`).
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Offset of the file's bytes in the data file (`File` only; identical contents share one).
    pub data_offset: u64,
}
