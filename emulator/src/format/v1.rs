//! Layout v1 of the expanded index. Explicit little-endian encoding; decode validates before trust.
//!
//! See the byte layout table in [`crate::format`].

use std::collections::HashMap;
use std::ops::Range;

use crate::digest::Digest;
use crate::entry::{Entry, EntryKind};
use crate::error::{Error, Result};
use crate::format::{FormatVersion, MAGIC};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 64;
/// Incompatible feature bits this build understands (none yet: v1 has no optional incompat parts).
pub const KNOWN_INCOMPAT: u32 = 0;
/// Smallest and largest chunk sizes an index may declare.
pub const MIN_CHUNK_SIZE: u32 = 4096;
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Smallest possible encoded entry: fixed fields + three u32 length/count fields, no strings.
const MIN_ENTRY_LEN: usize = 1 + 4 * 3 + 8 * 3 + 4 * 2 + 4 * 3;
const NO_LINK: u32 = u32::MAX;

/// One fixed-size region of the data blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    pub offset: u64,
    pub len: u32,
    /// sha256 of the chunk's bytes: the key of a node's chunk cache.
    pub digest: Digest,
}

impl ChunkInfo {
    /// Byte range of this chunk in the data blob.
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + u64::from(self.len)
    }
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
        let mut body = Vec::with_capacity(128 + self.entries.len() * 96 + self.chunks.len() * 32);
        body.extend_from_slice(&digest_raw(&self.diff_id));
        body.extend_from_slice(&digest_raw(&self.data_digest));
        match &self.layer_digest {
            Some(d) => {
                body.push(1);
                body.extend_from_slice(&digest_raw(d));
            }
            None => {
                body.push(0);
                body.extend_from_slice(&[0u8; 32]);
            }
        }
        for e in &self.entries {
            encode_entry(&mut body, e);
        }
        for c in &self.chunks {
            body.extend_from_slice(&digest_raw(&c.digest));
        }

        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(FormatVersion::V1 as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // compat features
        out.extend_from_slice(&0u32.to_le_bytes()); // incompat features
        out.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // reserved
        out.extend_from_slice(&self.data_size.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_LEN);
        out.extend_from_slice(&body);
        out
    }

    /// Parse and validate. Checks magic, version, incompat bits, every count, offset and length
    /// (against `data_size`), path normalisation; never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Index> {
        let hdr = Header::decode(bytes)?;
        let body = &bytes[HEADER_LEN..];
        let mut r = Cursor { buf: body, pos: 0 };

        let diff_id = r.digest()?;
        let data_digest = r.digest()?;
        let layer_digest = match r.u8()? {
            0 => {
                if r.take(32)?.iter().any(|&b| b != 0) {
                    return Err(fmt_err("absent layer digest is not zeroed"));
                }
                None
            }
            1 => Some(r.digest()?),
            f => return Err(fmt_err(format!("bad layer digest flag {f}"))),
        };

        // Counts are checked against the bytes left before anything is allocated for them.
        let max_entries = r.remaining() / MIN_ENTRY_LEN;
        if hdr.entry_count > max_entries as u64 {
            return Err(fmt_err(format!(
                "entry count {} exceeds body",
                hdr.entry_count
            )));
        }
        let mut entries = Vec::with_capacity(hdr.entry_count as usize);
        for i in 0..hdr.entry_count as usize {
            let e = decode_entry(&mut r).map_err(|e| fmt_err(format!("entry {i}: {e}")))?;
            validate_entry(&e, hdr.data_size)
                .map_err(|reason| fmt_err(format!("entry {i} {:?}: {reason}", e.path)))?;
            entries.push(e);
        }
        validate_hardlinks(&entries)?;

        let want_chunks = hdr.data_size.div_ceil(u64::from(hdr.chunk_size));
        if hdr.chunk_count != want_chunks {
            return Err(fmt_err(format!(
                "chunk count {} but data_size {} / chunk_size {} needs {want_chunks}",
                hdr.chunk_count, hdr.data_size, hdr.chunk_size
            )));
        }
        if hdr.chunk_count > (r.remaining() / 32) as u64 {
            return Err(fmt_err("chunk table exceeds body"));
        }
        let mut chunks = Vec::with_capacity(hdr.chunk_count as usize);
        let cs = u64::from(hdr.chunk_size);
        for i in 0..hdr.chunk_count {
            let offset = i * cs; // < data_size, cannot overflow
            let len = (hdr.data_size - offset).min(cs) as u32;
            chunks.push(ChunkInfo {
                offset,
                len,
                digest: r.digest()?,
            });
        }
        if r.remaining() != 0 {
            return Err(fmt_err(format!(
                "{} trailing bytes after chunk table",
                r.remaining()
            )));
        }
        Ok(Index {
            layer_digest,
            diff_id,
            chunk_size: hdr.chunk_size,
            data_size: hdr.data_size,
            data_digest,
            entries,
            chunks,
        })
    }

    /// The last entry with exactly this path (later entries win within a layer).
    pub fn find(&self, path: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.path == path)
    }

    /// For entry `i`: the entry owning its inode. Itself unless it is a hardlink, in which case the
    /// chain of hardlinks is followed to the latest earlier entry with the target path.
    /// `None` if `i` is out of range or the chain is broken (impossible for a decoded index).
    pub fn resolve_hardlink(&self, i: usize) -> Option<(usize, &Entry)> {
        let mut cur = i;
        loop {
            let e = self.entries.get(cur)?;
            if e.kind != EntryKind::Hardlink {
                return Some((cur, e));
            }
            let target = e.link.as_deref()?;
            cur = self.entries[..cur].iter().rposition(|t| t.path == target)?;
        }
    }

    /// For every entry, the index of the entry owning its inode, as [`Index::resolve_hardlink`]
    /// gives it, in one O(n) pass (a layer of one file and a million links to it, or a chain of
    /// links to links, costs a map lookup per link, not a scan). `None` where a chain is broken.
    pub fn hardlink_owners(&self) -> Vec<Option<usize>> {
        let mut latest: HashMap<&str, usize> = HashMap::with_capacity(self.entries.len());
        let mut owners: Vec<Option<usize>> = Vec::with_capacity(self.entries.len());
        for (i, e) in self.entries.iter().enumerate() {
            let owner = if e.kind == EntryKind::Hardlink {
                // `latest` holds only earlier entries here, whose owners are already known.
                e.link
                    .as_deref()
                    .and_then(|t| latest.get(t))
                    .and_then(|&j| owners[j])
            } else {
                Some(i)
            };
            owners.push(owner);
            latest.insert(e.path.as_str(), i);
        }
        owners
    }

    /// Indices of the chunks covering `offset..offset+len` of the data blob (clamped to it).
    pub fn chunks_for_range(&self, offset: u64, len: u64) -> Range<usize> {
        let cs = u64::from(self.chunk_size.max(1));
        let end = offset.saturating_add(len).min(self.data_size);
        if offset >= end {
            return 0..0;
        }
        let first = (offset / cs) as usize;
        let last = end.div_ceil(cs) as usize;
        first.min(self.chunks.len())..last.min(self.chunks.len())
    }
}

/// The fixed 64-byte header, decoded and validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub compat: u32,
    pub incompat: u32,
    pub chunk_size: u32,
    pub data_size: u64,
    pub entry_count: u64,
    pub chunk_count: u64,
    pub body_len: u64,
}

impl Header {
    /// Decode and validate the header of a whole index blob (`bytes` is the full blob: its length
    /// is checked against `body_len`).
    pub fn decode(bytes: &[u8]) -> Result<Header> {
        if bytes.len() < HEADER_LEN {
            return Err(fmt_err(format!("index too short ({} bytes)", bytes.len())));
        }
        if bytes[0..8] != MAGIC {
            return Err(fmt_err("bad magic"));
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let version = u32_at(8);
        FormatVersion::try_from(version)?;
        let compat = u32_at(12);
        let incompat = u32_at(16);
        if incompat & !KNOWN_INCOMPAT != 0 {
            return Err(fmt_err(format!(
                "unknown incompatible feature bits {:#x}",
                incompat & !KNOWN_INCOMPAT
            )));
        }
        let header_len = u32_at(20);
        if header_len as usize != HEADER_LEN {
            return Err(fmt_err(format!(
                "header length {header_len}, want {HEADER_LEN}"
            )));
        }
        let chunk_size = u32_at(24);
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            return Err(fmt_err(format!("bad chunk size {chunk_size}")));
        }
        if u32_at(28) != 0 {
            return Err(fmt_err("reserved header field is not zero"));
        }
        let hdr = Header {
            version,
            compat,
            incompat,
            chunk_size,
            data_size: u64_at(32),
            entry_count: u64_at(40),
            chunk_count: u64_at(48),
            body_len: u64_at(56),
        };
        if hdr.body_len != (bytes.len() - HEADER_LEN) as u64 {
            return Err(fmt_err(format!(
                "body length {} but blob has {} bytes after the header",
                hdr.body_len,
                bytes.len() - HEADER_LEN
            )));
        }
        Ok(hdr)
    }
}

fn fmt_err(msg: impl Into<String>) -> Error {
    Error::Format(msg.into())
}

fn digest_raw(d: &Digest) -> [u8; 32] {
    d.raw_sha256()
}

pub(crate) fn kind_code(k: EntryKind) -> u8 {
    match k {
        EntryKind::File => 0,
        EntryKind::Dir => 1,
        EntryKind::Symlink => 2,
        EntryKind::Hardlink => 3,
        EntryKind::CharDevice => 4,
        EntryKind::BlockDevice => 5,
        EntryKind::Fifo => 6,
        EntryKind::Whiteout => 7,
        EntryKind::OpaqueDir => 8,
    }
}

fn kind_from_code(c: u8) -> Option<EntryKind> {
    Some(match c {
        0 => EntryKind::File,
        1 => EntryKind::Dir,
        2 => EntryKind::Symlink,
        3 => EntryKind::Hardlink,
        4 => EntryKind::CharDevice,
        5 => EntryKind::BlockDevice,
        6 => EntryKind::Fifo,
        7 => EntryKind::Whiteout,
        8 => EntryKind::OpaqueDir,
        _ => return None,
    })
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn encode_entry(out: &mut Vec<u8>, e: &Entry) {
    out.push(kind_code(e.kind));
    out.extend_from_slice(&e.mode.to_le_bytes());
    out.extend_from_slice(&e.uid.to_le_bytes());
    out.extend_from_slice(&e.gid.to_le_bytes());
    out.extend_from_slice(&e.mtime.to_le_bytes());
    out.extend_from_slice(&e.size.to_le_bytes());
    out.extend_from_slice(&e.data_offset.to_le_bytes());
    out.extend_from_slice(&e.rdev_major.to_le_bytes());
    out.extend_from_slice(&e.rdev_minor.to_le_bytes());
    put_bytes(out, e.path.as_bytes());
    match &e.link {
        Some(l) => put_bytes(out, l.as_bytes()),
        None => out.extend_from_slice(&NO_LINK.to_le_bytes()),
    }
    out.extend_from_slice(&(e.xattrs.len() as u32).to_le_bytes());
    for (k, v) in &e.xattrs {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v);
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(fmt_err("unexpected end of index"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| fmt_err("string is not UTF-8"))
    }
    fn digest(&mut self) -> Result<Digest> {
        let b = self.take(32)?;
        let raw: &[u8; 32] = b.try_into().map_err(|_| fmt_err("digest"))?;
        Ok(Digest::from_raw_sha256(raw))
    }
}

fn decode_entry(r: &mut Cursor<'_>) -> Result<Entry> {
    let code = r.u8()?;
    let kind = kind_from_code(code).ok_or_else(|| fmt_err(format!("unknown kind {code}")))?;
    let mode = r.u32()?;
    let uid = r.u32()?;
    let gid = r.u32()?;
    let mtime = r.u64()? as i64;
    let size = r.u64()?;
    let data_offset = r.u64()?;
    let rdev_major = r.u32()?;
    let rdev_minor = r.u32()?;
    let path = r.string()?;
    let link_len = r.u32()?;
    let link = if link_len == NO_LINK {
        None
    } else {
        let b = r.take(link_len as usize)?;
        Some(String::from_utf8(b.to_vec()).map_err(|_| fmt_err("link is not UTF-8"))?)
    };
    let n_x = r.u32()? as usize;
    // Each xattr needs at least 8 bytes: bound the allocation by what is left.
    if n_x > r.remaining() / 8 {
        return Err(fmt_err("xattr count exceeds index"));
    }
    let mut xattrs = Vec::with_capacity(n_x);
    for _ in 0..n_x {
        let k = r.string()?;
        let v = r.bytes()?.to_vec();
        xattrs.push((k, v));
    }
    Ok(Entry {
        path,
        kind,
        mode,
        uid,
        gid,
        mtime,
        size,
        link,
        rdev_major,
        rdev_minor,
        xattrs,
        data_offset,
    })
}

/// Is `p` a normalised layer-relative path: non-empty, relative, no empty / `.` / `..` component,
/// no NUL?
pub fn is_normalised_path(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

pub(crate) fn validate_entry(e: &Entry, data_size: u64) -> std::result::Result<(), String> {
    if !is_normalised_path(&e.path) {
        return Err("path is not normalised".into());
    }
    if e.mode & !0o7777 != 0 {
        return Err(format!("mode {:o} has bits beyond 07777", e.mode));
    }
    let is_dev = matches!(e.kind, EntryKind::CharDevice | EntryKind::BlockDevice);
    if !is_dev && (e.rdev_major != 0 || e.rdev_minor != 0) {
        return Err("device numbers on a non-device".into());
    }
    match e.kind {
        EntryKind::File => {
            let end = e
                .data_offset
                .checked_add(e.size)
                .ok_or("data range overflows")?;
            if end > data_size {
                return Err(format!(
                    "data {}..{end} beyond data size {data_size}",
                    e.data_offset
                ));
            }
        }
        _ if e.size != 0 || e.data_offset != 0 => {
            return Err("size/data offset on a non-file".into())
        }
        _ => {}
    }
    match e.kind {
        EntryKind::Symlink => match &e.link {
            Some(l) if !l.is_empty() && !l.contains('\0') => {}
            _ => return Err("symlink without a valid target".into()),
        },
        EntryKind::Hardlink => match &e.link {
            Some(l) if is_normalised_path(l) && l != &e.path => {}
            _ => return Err("hardlink without a normalised target".into()),
        },
        _ if e.link.is_some() => return Err("link target on a non-link".into()),
        _ => {}
    }
    for (k, _) in &e.xattrs {
        if k.is_empty() || k.contains('\0') {
            return Err("bad xattr name".into());
        }
    }
    Ok(())
}

/// Every hardlink must name an earlier entry of the layer that can carry an inode (not a directory
/// or a whiteout marker).
fn validate_hardlinks(entries: &[Entry]) -> Result<()> {
    let mut latest: HashMap<&str, EntryKind> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if e.kind == EntryKind::Hardlink {
            let target = e.link.as_deref().unwrap_or("");
            match latest.get(target) {
                Some(EntryKind::Dir | EntryKind::Whiteout | EntryKind::OpaqueDir) => {
                    return Err(fmt_err(format!(
                        "entry {i} {:?}: hardlink to a directory or marker",
                        e.path
                    )))
                }
                Some(_) => {}
                None => {
                    return Err(fmt_err(format!(
                        "entry {i} {:?}: hardlink target {target:?} is not an earlier entry",
                        e.path
                    )))
                }
            }
        }
        latest.insert(&e.path, e.kind);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        let file = Entry {
            path: "a/f".into(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime: -3,
            size: 5000,
            link: None,
            rdev_major: 0,
            rdev_minor: 0,
            xattrs: vec![("user.x".into(), vec![0, 10, 255])],
            data_offset: 4096,
        };
        let link = Entry {
            path: "l".into(),
            kind: EntryKind::Hardlink,
            link: Some("a/f".into()),
            size: 0,
            data_offset: 0,
            xattrs: vec![],
            ..file.clone()
        };
        Index {
            layer_digest: Some(Digest::sha256_of(b"l")),
            diff_id: Digest::sha256_of(b"d"),
            chunk_size: 4096,
            data_size: 9096,
            data_digest: Digest::sha256_of(b"x"),
            entries: vec![file, link],
            chunks: (0..3u64)
                .map(|i| ChunkInfo {
                    offset: i * 4096,
                    len: if i == 2 { 904 } else { 4096 },
                    digest: Digest::sha256_of(&[i as u8]),
                })
                .collect(),
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let idx = sample();
        let b = idx.encode();
        assert_eq!(Index::decode(&b).unwrap(), idx);
        assert_eq!(idx.resolve_hardlink(1).map(|(i, _)| i), Some(0));
        assert_eq!(idx.chunks_for_range(4095, 2), 0..2);
        assert_eq!(idx.chunks_for_range(9000, 1000), 2..3);
        assert_eq!(idx.chunks_for_range(9096, 1), 0..0);
    }

    #[test]
    fn decode_rejects_inconsistent_indexes() {
        let mut bad = sample();
        bad.entries[0].data_offset = 5000; // past data_size
        assert!(Index::decode(&bad.encode()).is_err());
        let mut bad = sample();
        bad.entries[1].link = Some("nope".into());
        assert!(Index::decode(&bad.encode()).is_err());
        let mut bad = sample();
        bad.entries[0].path = "a/../f".into();
        assert!(Index::decode(&bad.encode()).is_err());
        let mut bad = sample();
        bad.chunks.pop();
        assert!(Index::decode(&bad.encode()).is_err());
        let mut b = sample().encode();
        b.push(0);
        assert!(Index::decode(&b).is_err());
    }
}
