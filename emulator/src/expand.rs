//! Expansion: layer blob (gzip / zstd / plain tar) → index + data.
//!
//! One streaming pass: blob → decompressor → (size limits, diff_id hash) → tar parser → data sink.
//! File bytes are copied once, from the decompressor's output buffer to the sink. Identical contents
//! are stored once (keyed by sha256). Hostile entries (`..` components, hardlinks to outside or
//! later entries, non-UTF-8 names, sparse files) are typed errors; a truncated or over-large
//! stream is an error, never a partial success.
//!
//! Names: leading `/` and `./` are stripped, `.` and empty components dropped, `..` rejected; a
//! trailing `/` on a regular-file entry makes it a directory (old tars); the layer root entry (`./`)
//! is skipped. `DIR/.wh.NAME` becomes a `Whiteout` of `DIR/NAME`, `DIR/.wh..wh..opq` an `OpaqueDir`
//! of `DIR` (at the layer root: refused); root-level AUFS metadata (`.wh..wh.*`) is skipped.
//! Duplicate paths are all kept, in tar order (later wins, see [`crate::merge`](mod@crate::merge)).
//!
//! Bounds (see [`ExpandOptions`]): path and link-target length, path depth, entry count, xattr
//! bytes per entry and per layer, and the in-memory metadata of a layer; each is a typed error.
//! Device nodes, fifos and setuid/setgid bits are kept as data (they are part of the image, and a
//! container runtime applies them inside the container); a node must mount expanded layers
//! `nosuid,nodev` so they grant nothing on the host itself.
//!
//! Symlink targets are stored verbatim: they are resolved inside the container's root at run time,
//! never on the host, so they are not a host escape here (consumers must not follow them on the host).

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::rc::Rc;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::entry::{Entry, EntryKind};
use crate::error::{Error, Result};
use crate::format::v1::{validate_entry, ChunkInfo, MAX_CHUNK_SIZE};
use crate::format::Index;
use crate::tar_reader::{TarError, TarReader};

/// Smallest chunk size `expand` writes. The format allows 4 KiB, but below 16 KiB the chunk table
/// (32 bytes per chunk) outgrows the entries and a node keeps a cache file per few KB.
pub const MIN_EXPAND_CHUNK_SIZE: u32 = 16 << 10;

#[derive(Clone, Debug)]
pub struct ExpandOptions {
    /// Data chunk size (power of two, [`MIN_EXPAND_CHUNK_SIZE`] ..= 16 MiB). Default 1 MiB.
    pub chunk_size: u32,
    /// Hard cap on decompressed bytes. Default 64 GiB.
    pub max_uncompressed: u64,
    /// Cap on decompressed/compressed ratio (checked once past 1 MiB of output). Default 1000.
    pub max_ratio: u64,
    /// Cap on entry count. Default 10 million.
    pub max_entries: u64,
    /// Cap on a path's (and a link target's) length in bytes, as the tar carried it. Default 4096
    /// (Linux `PATH_MAX`): a longer name cannot be created on a node anyway.
    pub max_path_len: usize,
    /// Cap on a path's number of components. Default 256.
    pub max_path_depth: usize,
    /// Cap on one entry's extended attributes (names + values). Default 64 KiB (Linux's own
    /// limit for one file's xattr list).
    pub max_entry_xattr_bytes: u64,
    /// Cap on all entries' extended attributes of one layer. Default 64 MiB.
    pub max_layer_xattr_bytes: u64,
    /// Cap on the in-memory metadata of one layer (paths, link targets, xattrs and a fixed cost
    /// per entry), which is held until the index is written. Default 1 GiB.
    pub max_metadata_bytes: u64,
}

/// Metadata bytes charged per entry besides its strings (the `Entry` struct and map slots).
pub const ENTRY_OVERHEAD: u64 = 160;

impl Default for ExpandOptions {
    fn default() -> Self {
        ExpandOptions {
            chunk_size: 1 << 20,
            max_uncompressed: 64 << 30,
            max_ratio: 1000,
            max_entries: 10_000_000,
            max_path_len: 4096,
            max_path_depth: 256,
            max_entry_xattr_bytes: 64 << 10,
            max_layer_xattr_bytes: 64 << 20,
            max_metadata_bytes: 1 << 30,
        }
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

/// Compression of a layer blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From magic bytes (gzip `1f 8b`, zstd `28 b5 2f fd`), else plain tar.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// From a layer media type. `Ok(None)` when the type says nothing about compression (absent,
    /// `application/octet-stream`, ...); an error for types that are not layers at all (JSON).
    pub fn from_media_type(mt: &str) -> Result<Option<Compression>> {
        let mt = mt.trim().to_ascii_lowercase();
        if mt.ends_with("json") {
            return Err(Error::UnsupportedMediaType(mt));
        }
        Ok(
            if mt.ends_with("+gzip") || mt.ends_with(".gzip") || mt.ends_with("+gz") {
                Some(Compression::Gzip)
            } else if mt.ends_with("+zstd") || mt.ends_with(".zstd") {
                Some(Compression::Zstd)
            } else if mt.ends_with(".tar") || mt.ends_with("+tar") {
                Some(Compression::None)
            } else {
                None
            },
        )
    }
}

/// Expand a layer blob. `media_type` (the descriptor's) picks the decompressor, falling back to magic
/// bytes when absent or generic; a media type that contradicts the magic bytes is an error.
/// File bytes go to `data`, which must be a fresh, empty sink positioned at 0.
///
/// `index.data_size` is authoritative for the data blob's length: when a file larger than the
/// in-memory threshold (4 MiB) turns out to duplicate an earlier one, its bytes were already
/// streamed and the sink may hold stale bytes past `data_size`. Truncate the sink to `data_size`
/// (e.g. `File::set_len`), or use [`expand_to_file`] which does it. On return the sink is positioned
/// at `data_size` and flushed. Writes are buffered internally (1 MiB): pass the raw sink.
///
/// Errors: `UnsupportedMediaType` (not a layer type), `Corrupt` (bad or truncated compression or
/// tar, media type contradicting the bytes), `HostileEntry` (see the module doc), `SizeLimit`,
/// `EntryLimit`, `Io` (the blob source or the sink failed). Never a partial success.
pub fn expand<R: Read, W: Write + Seek>(
    blob: R,
    media_type: Option<&str>,
    layer_digest: Option<&Digest>,
    data: W,
    opts: &ExpandOptions,
) -> Result<Expanded> {
    if !opts.chunk_size.is_power_of_two()
        || !(MIN_EXPAND_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&opts.chunk_size)
    {
        return Err(Error::Format(format!(
            "chunk size {} not a power of two in 16 KiB..=16 MiB",
            opts.chunk_size
        )));
    }
    let declared = match media_type {
        Some(mt) => Compression::from_media_type(mt)?,
        None => None,
    };

    let stats = Rc::new(Stats::default());
    let counted = CountingReader {
        inner: blob,
        stats: stats.clone(),
    };
    let mut buffered = BufReader::with_capacity(1 << 20, counted);
    let head = buffered.fill_buf().map_err(|e| read_err(&stats, e, opts))?;
    let sniffed = Compression::sniff(head);
    if let Some(d) = declared {
        if d != sniffed {
            return Err(Error::Corrupt(format!(
                "media type says {d:?} but content is {sniffed:?}"
            )));
        }
    }
    let decoder: Box<dyn Read + '_> = match sniffed {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(Error::Io)?)
        }
    };
    let tar_in = TarInput {
        inner: decoder,
        hasher: Sha256::new(),
        stats: stats.clone(),
        max_uncompressed: opts.max_uncompressed,
        max_ratio: opts.max_ratio,
    };

    let mut sink = DataSink::new(data, opts.chunk_size);
    let entries = match parse_tar(tar_in, &mut sink, opts) {
        Ok(v) => v,
        Err(e) => return Err(fixup_err(&stats, e, opts)),
    };
    let (entries, tar_in) = entries;
    let diff_id = Digest::from_sha256(tar_in.hasher);
    let (data_size, data_digest, chunk_digests) = sink.finish()?;

    let cs = u64::from(opts.chunk_size);
    let chunks = chunk_digests
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let offset = i as u64 * cs;
            ChunkInfo {
                offset,
                len: (data_size - offset).min(cs) as u32,
                digest: Digest::from_raw_sha256(d),
            }
        })
        .collect();
    let index = Index {
        layer_digest: layer_digest.cloned(),
        diff_id,
        chunk_size: opts.chunk_size,
        data_size,
        data_digest,
        entries,
        chunks,
    };
    let index_bytes = index.encode();
    Ok(Expanded {
        index,
        index_bytes,
        compressed_size: stats.compressed.get(),
        uncompressed_size: stats.uncompressed.get(),
    })
}

/// [`expand`] into a file, truncated to the data size afterwards.
pub fn expand_to_file<R: Read>(
    blob: R,
    media_type: Option<&str>,
    layer_digest: Option<&Digest>,
    data: &mut std::fs::File,
    opts: &ExpandOptions,
) -> Result<Expanded> {
    let out = expand(blob, media_type, layer_digest, &mut *data, opts)?;
    data.set_len(out.index.data_size)?;
    Ok(out)
}

#[derive(Default)]
struct Stats {
    compressed: Cell<u64>,
    uncompressed: Cell<u64>,
    /// A size limit was hit (the io error carrying it is replaced by `Error::SizeLimit`).
    limit_hit: Cell<Option<u64>>,
    /// The blob source itself failed (an `Io` error, not corruption).
    source_failed: Cell<bool>,
}

struct CountingReader<R> {
    inner: R,
    stats: Rc<Stats>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.stats
                    .compressed
                    .set(self.stats.compressed.get() + n as u64);
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.stats.source_failed.set(true);
                }
                Err(e)
            }
        }
    }
}

/// The decompressed tar stream: counts, enforces limits and hashes (diff_id) everything read.
struct TarInput<'a> {
    inner: Box<dyn Read + 'a>,
    hasher: Sha256,
    stats: Rc<Stats>,
    max_uncompressed: u64,
    max_ratio: u64,
}

impl Read for TarInput<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        let total = self.stats.uncompressed.get() + n as u64;
        self.stats.uncompressed.set(total);
        let ratio_cap = self.stats.compressed.get().saturating_mul(self.max_ratio);
        if total > self.max_uncompressed {
            self.stats.limit_hit.set(Some(self.max_uncompressed));
            return Err(io::Error::other("decompressed size limit"));
        }
        if total > (1 << 20) && total > ratio_cap {
            self.stats.limit_hit.set(Some(ratio_cap));
            return Err(io::Error::other("decompression ratio limit"));
        }
        Ok(n)
    }
}

fn read_err(stats: &Stats, e: io::Error, _opts: &ExpandOptions) -> Error {
    if let Some(limit) = stats.limit_hit.get() {
        Error::SizeLimit { limit }
    } else if stats.source_failed.get() {
        Error::Io(e)
    } else {
        Error::Corrupt(e.to_string())
    }
}

/// Errors raised while parsing: io errors from the read side become the typed error they stand for.
fn fixup_err(stats: &Stats, e: ParseError, opts: &ExpandOptions) -> Error {
    match e {
        ParseError::Read(e) => read_err(stats, e, opts),
        ParseError::Typed(e) => e,
    }
}

enum ParseError {
    /// From the decompressed stream (corruption, limits, source failure).
    Read(io::Error),
    /// Anything else, already typed (hostile entries, sink i/o errors).
    Typed(Error),
}

impl From<Error> for ParseError {
    fn from(e: Error) -> Self {
        ParseError::Typed(e)
    }
}

/// Files up to this size are read into memory, hashed and only then written (so duplicates cost no
/// sink writes); larger ones are streamed.
const BUFFER_MAX: u64 = 4 << 20;
const COPY_BUF: usize = 1 << 20;

fn hostile(path: &[u8], reason: impl Into<String>) -> Error {
    Error::HostileEntry {
        path: String::from_utf8_lossy(path).into_owned().into(),
        reason: reason.into(),
    }
}

/// Normalise a tar path: strip leading `/` and `./`, drop `.` and empty components, reject `..`.
/// `Ok(None)` for the layer root itself (`./`, `/`).
pub fn normalise_path(raw: &[u8]) -> Result<Option<String>> {
    let s = std::str::from_utf8(raw).map_err(|_| hostile(raw, "path is not UTF-8"))?;
    if s.contains('\0') {
        return Err(hostile(raw, "NUL in path"));
    }
    let mut out = String::with_capacity(s.len());
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(hostile(raw, "`..` component")),
            c => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(c);
            }
        }
    }
    Ok(if out.is_empty() { None } else { Some(out) })
}

const WH_PREFIX: &str = ".wh.";
const WH_OPAQUE: &str = ".wh..wh..opq";
const WH_AUFS_META: &str = ".wh..wh.";

type Parsed<'a> = (Vec<Entry>, TarInput<'a>);

fn tar_err(e: TarError) -> ParseError {
    match e {
        TarError::Io(e) => ParseError::Read(e),
        TarError::Malformed(m) => ParseError::Typed(Error::Corrupt(m)),
    }
}

fn parse_tar<'a, W: Write + Seek>(
    input: TarInput<'a>,
    sink: &mut DataSink<W>,
    opts: &ExpandOptions,
) -> std::result::Result<Parsed<'a>, ParseError> {
    let mut tr = TarReader::new(input);
    let mut entries: Vec<Entry> = Vec::new();
    // path -> kind of the latest entry with that path (hardlink validation).
    let mut latest: HashMap<String, EntryKind> = HashMap::new();
    let mut dedupe: HashMap<[u8; 32], u64> = HashMap::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut layer_xattr_bytes: u64 = 0;
    let mut metadata_bytes: u64 = 0;

    while let Some(m) = tr.next_member().map_err(tar_err)? {
        if entries.len() as u64 >= opts.max_entries {
            return Err(Error::EntryLimit {
                limit: opts.max_entries,
            }
            .into());
        }
        let raw_path = m.path;
        // Bounds first, on the raw bytes: a hostile name costs no more work than its length check.
        for (what, bytes) in [("path", &raw_path), ("link target", &m.link)] {
            if bytes.len() > opts.max_path_len {
                return Err(hostile(
                    &raw_path[..raw_path.len().min(256)],
                    format!(
                        "{what} of {} bytes is longer than {} bytes",
                        bytes.len(),
                        opts.max_path_len
                    ),
                )
                .into());
            }
        }
        let Some(path) = normalise_path(&raw_path)? else {
            // The layer root (`./`): its attributes are not recorded; nothing to store.
            continue;
        };
        let depth = path.split('/').count();
        if depth > opts.max_path_depth {
            return Err(hostile(
                &raw_path,
                format!(
                    "path has {depth} components, more than {}",
                    opts.max_path_depth
                ),
            )
            .into());
        }
        let too_big = |what: &str| hostile(&raw_path, format!("{what} does not fit 32 bits"));
        let xattr_bytes: u64 = m
            .xattrs
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        if xattr_bytes > opts.max_entry_xattr_bytes {
            return Err(hostile(
                &raw_path,
                format!(
                    "{xattr_bytes} bytes of extended attributes, more than {}",
                    opts.max_entry_xattr_bytes
                ),
            )
            .into());
        }
        layer_xattr_bytes += xattr_bytes;
        if layer_xattr_bytes > opts.max_layer_xattr_bytes {
            return Err(Error::MetadataLimit {
                what: "extended attributes",
                limit: opts.max_layer_xattr_bytes,
            }
            .into());
        }
        // Everything kept in memory until the index is written: the entry, its strings and the
        // path's copy in `latest`.
        metadata_bytes +=
            ENTRY_OVERHEAD + 2 * path.len() as u64 + m.link.len() as u64 + xattr_bytes;
        if metadata_bytes > opts.max_metadata_bytes {
            return Err(Error::MetadataLimit {
                what: "in-memory entry metadata",
                limit: opts.max_metadata_bytes,
            }
            .into());
        }
        let mut xattrs = Vec::with_capacity(m.xattrs.len());
        for (k, v) in m.xattrs {
            let name =
                String::from_utf8(k).map_err(|_| hostile(&raw_path, "xattr name is not UTF-8"))?;
            if name.is_empty() || name.contains('\0') {
                return Err(hostile(&raw_path, "bad xattr name").into());
            }
            xattrs.push((name, v));
        }
        let mut entry = Entry {
            path,
            kind: EntryKind::File,
            mode: (m.mode & 0o7777) as u32,
            uid: u32::try_from(m.uid).map_err(|_| too_big("uid"))?,
            gid: u32::try_from(m.gid).map_err(|_| too_big("gid"))?,
            mtime: m.mtime,
            size: 0,
            link: None,
            rdev_major: 0,
            rdev_minor: 0,
            xattrs,
            data_offset: 0,
        };

        // Legacy AUFS metadata at the layer root (`.wh..wh.plnk/`, `.wh..wh.aufs`): not content.
        if entry.path.starts_with(WH_AUFS_META) && !entry.path.starts_with(WH_OPAQUE) {
            continue;
        }
        // Whiteout markers are recognised by name, whatever their tar type.
        let base = entry.path.rsplit('/').next().unwrap_or("");
        if let Some(rest) = base.strip_prefix(WH_PREFIX) {
            let parent = entry.path.rsplit_once('/').map(|(p, _)| p.to_string());
            if base == WH_OPAQUE {
                entry.kind = EntryKind::OpaqueDir;
                entry.path = parent.ok_or_else(|| {
                    hostile(
                        &raw_path,
                        "opaque marker at the layer root is not supported",
                    )
                })?;
            } else if rest.starts_with(WH_PREFIX) {
                // Other `.wh..wh.*` names are AUFS metadata (e.g. `.wh..wh.plnk`): not content.
                continue;
            } else if rest.is_empty() || rest == "." || rest == ".." {
                return Err(hostile(&raw_path, "whiteout without a valid name").into());
            } else {
                entry.kind = EntryKind::Whiteout;
                entry.path = match parent {
                    Some(p) => format!("{p}/{rest}"),
                    None => rest.to_string(),
                };
            }
        } else {
            let dir_by_name = raw_path.last() == Some(&b'/');
            match m.typeflag {
                b'0' | 0 if dir_by_name => entry.kind = EntryKind::Dir,
                b'0' | 0 | b'7' => {
                    entry.size = m.size;
                    entry.data_offset =
                        store_file(&mut tr, m.size, sink, &mut dedupe, &mut buf, &raw_path)?;
                }
                b'5' => entry.kind = EntryKind::Dir,
                b'2' => {
                    let l = String::from_utf8(m.link)
                        .map_err(|_| hostile(&raw_path, "symlink target is not UTF-8"))?;
                    if l.is_empty() || l.contains('\0') {
                        return Err(hostile(&raw_path, "empty symlink target").into());
                    }
                    entry.kind = EntryKind::Symlink;
                    entry.link = Some(l);
                }
                b'1' => {
                    let target = normalise_path(&m.link)?
                        .ok_or_else(|| hostile(&raw_path, "hardlink to the layer root"))?;
                    match latest.get(&target) {
                        _ if target == entry.path => {
                            return Err(hostile(&raw_path, "hardlink to itself").into())
                        }
                        Some(EntryKind::Dir | EntryKind::Whiteout | EntryKind::OpaqueDir) => {
                            return Err(hostile(
                                &raw_path,
                                format!("hardlink to non-file {target:?}"),
                            )
                            .into())
                        }
                        Some(_) => {}
                        None => {
                            return Err(hostile(
                                &raw_path,
                                format!(
                                "hardlink target {target:?} is not an earlier entry of this layer"
                            ),
                            )
                            .into())
                        }
                    }
                    entry.kind = EntryKind::Hardlink;
                    entry.link = Some(target);
                }
                b'3' | b'4' => {
                    entry.kind = if m.typeflag == b'3' {
                        EntryKind::CharDevice
                    } else {
                        EntryKind::BlockDevice
                    };
                    entry.rdev_major =
                        u32::try_from(m.dev_major).map_err(|_| too_big("device major"))?;
                    entry.rdev_minor =
                        u32::try_from(m.dev_minor).map_err(|_| too_big("device minor"))?;
                }
                b'6' => entry.kind = EntryKind::Fifo,
                b'S' => return Err(hostile(&raw_path, "GNU sparse files are not supported").into()),
                other => {
                    return Err(hostile(
                        &raw_path,
                        format!("unsupported tar entry type {:?}", other as char),
                    )
                    .into())
                }
            }
        }
        // Defence in depth: never produce an entry the index decoder would refuse.
        validate_entry(&entry, u64::MAX).map_err(|reason| hostile(&raw_path, reason))?;
        latest.insert(entry.path.clone(), entry.kind);
        entries.push(entry);
    }
    let mut input = tr.into_inner();
    // diff_id covers the whole decompressed stream (record padding after the end blocks too).
    io::copy(&mut input, &mut io::sink()).map_err(ParseError::Read)?;
    Ok((entries, input))
}

/// `Read` over the current member's data.
struct MemberData<'t, R>(&'t mut TarReader<R>);

impl<R: Read> Read for MemberData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_data(buf).map_err(|e| match e {
            TarError::Io(e) => e,
            TarError::Malformed(m) => io::Error::new(io::ErrorKind::UnexpectedEof, m),
        })
    }
}

/// Store one regular file's bytes (exactly `size` of them) and return its data offset.
fn store_file<R: Read, W: Write + Seek>(
    tr: &mut TarReader<R>,
    size: u64,
    sink: &mut DataSink<W>,
    dedupe: &mut HashMap<[u8; 32], u64>,
    buf: &mut Vec<u8>,
    raw_path: &[u8],
) -> std::result::Result<u64, ParseError> {
    if size == 0 {
        return Ok(0);
    }
    let mut src = MemberData(tr);
    let short = || {
        ParseError::Typed(Error::Corrupt(format!(
            "tar stream ends inside {:?}",
            String::from_utf8_lossy(raw_path)
        )))
    };
    if size <= BUFFER_MAX {
        buf.clear();
        let got = src.take(size).read_to_end(buf).map_err(ParseError::Read)?;
        if got as u64 != size {
            return Err(short());
        }
        let h: [u8; 32] = Sha256::digest(&buf[..]).into();
        if let Some(&off) = dedupe.get(&h) {
            return Ok(off);
        }
        let off = sink.place(size)?;
        sink.append(buf)?;
        dedupe.insert(h, off);
        return Ok(off);
    }

    // Large file: stream it while hashing, roll back if it turns out to be a duplicate.
    let cp = sink.checkpoint();
    let off = sink.place(size)?;
    buf.resize(COPY_BUF, 0);
    let mut content = Sha256::new();
    let mut left = size;
    while left > 0 {
        let want = left.min(COPY_BUF as u64) as usize;
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => return Err(short()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ParseError::Read(e)),
        };
        content.update(&buf[..n]);
        sink.append(&buf[..n])?;
        left -= n as u64;
    }
    let h: [u8; 32] = content.finalize().into();
    if let Some(&prev) = dedupe.get(&h) {
        sink.rollback(cp);
        return Ok(prev);
    }
    dedupe.insert(h, off);
    Ok(off)
}

/// The data blob being written: logical end, running blob digest and per-chunk digests.
struct DataSink<W: Write> {
    /// Buffered so small files do not cost a write call each; big writes bypass the buffer.
    w: BufWriter<W>,
    /// Logical end of the blob (everything before it is final).
    end: u64,
    /// Where the writer is positioned.
    pos: u64,
    chunk_size: u64,
    total: Sha256,
    chunk: Sha256,
    chunk_fill: u64,
    chunks: Vec<[u8; 32]>,
}

struct Checkpoint {
    end: u64,
    total: Sha256,
    chunk: Sha256,
    chunk_fill: u64,
    n_chunks: usize,
}

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl<W: Write + Seek> DataSink<W> {
    fn new(w: W, chunk_size: u32) -> Self {
        DataSink {
            w: BufWriter::with_capacity(1 << 20, w),
            end: 0,
            pos: 0,
            chunk_size: u64::from(chunk_size),
            total: Sha256::new(),
            chunk: Sha256::new(),
            chunk_fill: 0,
            chunks: Vec::new(),
        }
    }

    /// Pad so a file of `size` bytes obeys the layout rule and return its offset: a file smaller
    /// than a chunk never straddles a chunk boundary, a larger one starts on a boundary.
    fn place(&mut self, size: u64) -> Result<u64> {
        let cs = self.chunk_size;
        let in_chunk = self.end % cs;
        let off = if in_chunk != 0 && (size >= cs || in_chunk + size > cs) {
            self.end - in_chunk + cs
        } else {
            self.end
        };
        while self.end < off {
            let n = (off - self.end).min(ZEROS.len() as u64) as usize;
            self.append(&ZEROS[..n])?;
        }
        Ok(off)
    }

    fn append(&mut self, mut bytes: &[u8]) -> Result<()> {
        if self.pos != self.end {
            self.w.seek(SeekFrom::Start(self.end))?;
            self.pos = self.end;
        }
        self.w.write_all(bytes)?;
        self.total.update(bytes);
        self.end += bytes.len() as u64;
        self.pos = self.end;
        while !bytes.is_empty() {
            let room = (self.chunk_size - self.chunk_fill) as usize;
            let n = room.min(bytes.len());
            self.chunk.update(&bytes[..n]);
            self.chunk_fill += n as u64;
            bytes = &bytes[n..];
            if self.chunk_fill == self.chunk_size {
                self.chunks
                    .push(std::mem::take(&mut self.chunk).finalize().into());
                self.chunk_fill = 0;
            }
        }
        Ok(())
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            end: self.end,
            total: self.total.clone(),
            chunk: self.chunk.clone(),
            chunk_fill: self.chunk_fill,
            n_chunks: self.chunks.len(),
        }
    }

    /// Forget everything appended since `cp` (the bytes stay in the sink past the logical end until
    /// overwritten).
    fn rollback(&mut self, cp: Checkpoint) {
        self.end = cp.end;
        self.total = cp.total;
        self.chunk = cp.chunk;
        self.chunk_fill = cp.chunk_fill;
        self.chunks.truncate(cp.n_chunks);
    }

    /// (data size, data digest, chunk digests); leaves the writer at the logical end, flushed.
    fn finish(mut self) -> Result<(u64, Digest, Vec<[u8; 32]>)> {
        if self.chunk_fill > 0 {
            self.chunks.push(self.chunk.finalize().into());
        }
        if self.pos != self.end {
            self.w.seek(SeekFrom::Start(self.end))?;
        }
        self.w.flush()?;
        Ok((self.end, Digest::from_sha256(self.total), self.chunks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise() {
        let n = |s: &str| normalise_path(s.as_bytes()).map_err(|e| e.to_string());
        assert_eq!(n("./a/b/").unwrap().as_deref(), Some("a/b"));
        assert_eq!(n("//a//./b").unwrap().as_deref(), Some("a/b"));
        assert_eq!(n("./").unwrap(), None);
        assert!(n("a/../b").is_err());
        assert!(n("..").is_err());
    }

    #[test]
    fn layout_rule() {
        let mut s = DataSink::new(std::io::Cursor::new(Vec::new()), 64 << 10);
        let cs = 64 << 10;
        assert_eq!(s.place(10).unwrap(), 0);
        s.append(&[1; 10]).unwrap();
        // Fits in the first chunk: packed.
        assert_eq!(s.place(cs - 10).unwrap(), 10);
        s.append(&vec![2; (cs - 10) as usize]).unwrap();
        s.append(&[3; 5]).unwrap();
        // Would straddle: pushed to the next boundary.
        assert_eq!(s.place(cs - 1).unwrap(), 2 * cs);
        // Big files start on a boundary.
        s.append(&[4; 3]).unwrap();
        assert_eq!(s.place(cs).unwrap(), 3 * cs);
        let (size, _, chunks) = s.finish().unwrap();
        assert_eq!(size, 3 * cs);
        assert_eq!(chunks.len(), 3);
    }

    #[test]
    fn media_types() {
        use crate::oci::*;
        assert_eq!(
            Compression::from_media_type(MT_OCI_LAYER_GZIP).unwrap(),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type(MT_DOCKER_LAYER_GZIP).unwrap(),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type(MT_OCI_LAYER_ZSTD).unwrap(),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::from_media_type(MT_OCI_LAYER_TAR).unwrap(),
            Some(Compression::None)
        );
        assert_eq!(
            Compression::from_media_type("application/octet-stream").unwrap(),
            None
        );
        assert!(Compression::from_media_type(MT_OCI_MANIFEST).is_err());
    }
}
