//! The seekable zstd encoding of an expanded layer's data blob, and its frame table: a
//! versioned contract shared by the registry (which writes both at expansion) and the node
//! (which reads byte ranges of the data blob through it, compressed on the wire).
//!
//! The compressed blob is independent zstd frames, one per fixed span of the data blob
//! (`frame_size` bytes; the last frame is shorter), back to back. Each frame decodes alone, so
//! a node fetches the frames covering the bytes it needs with one ranged GET and decompresses
//! only those. The table says where each frame lies in both blobs.
//!
//! # Frame table v1 byte layout (all integers little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `TPXFRAME` |
//! | 8 | 4 | version (`1`) |
//! | 12 | 4 | compat feature bits (unknown bits are ignored) |
//! | 16 | 4 | incompat feature bits (any unknown bit: refuse to read) |
//! | 20 | 4 | header length (`128`) |
//! | 24 | 4 | frame size (power of two, [`MIN_FRAME_SIZE`] ..= [`MAX_FRAME_SIZE`]) |
//! | 28 | 4 | encoding (`1` = zstd) |
//! | 32 | 8 | data size (uncompressed) |
//! | 40 | 8 | frame count (= ceil(data size / frame size), at most [`MAX_FRAMES`]) |
//! | 48 | 8 | compressed size (the compressed blob's length) |
//! | 56 | 8 | reserved, zero |
//! | 64 | 32 | data digest (raw sha256 of the uncompressed data blob) |
//! | 96 | 32 | compressed digest (raw sha256 of the compressed blob) |
//! | 128 | 24 × frames | per frame: data offset u64, compressed offset u64, data length u32, compressed length u32 |
//!
//! [`FrameTable::decode`] checks all of it before anything indexes with it: magic, version,
//! feature bits, header length, frame size, the frame count against the bytes present (before
//! allocating) and against [`MAX_FRAMES`], and every entry: frame `i` covers exactly data bytes
//! `i*frame_size ..` (so entries are in order and never overlap), compressed frames follow one
//! another from 0 to the compressed size, and no compressed length exceeds zstd's bound for its
//! data length. [`FrameTable::decompress`] decodes each frame into a buffer of exactly its
//! declared length: a frame that would decode to more (or less) is an error, never more memory.

use std::io::{Read, Write};

use sha2::{Digest as _, Sha256};

use crate::Digest;

/// Frame-table magic: the first 8 bytes of every frame table.
pub const MAGIC: [u8; 8] = *b"TPXFRAME";
/// The only layout so far.
pub const VERSION: u32 = 1;
/// Header length of v1.
pub const HEADER_LEN: usize = 128;
/// Bytes per frame entry.
pub const ENTRY_LEN: usize = 24;
/// Encoding code of zstd frames.
pub const ENCODING_ZSTD: u32 = 1;
/// Smallest frame size: below it zstd's per-frame overhead eats the gain.
pub const MIN_FRAME_SIZE: u32 = 4 << 10;
/// Largest frame size: one frame is decoded whole in memory by a node reading any byte of it.
pub const MAX_FRAME_SIZE: u32 = 4 << 20;
/// Most frames a table may list (48 MiB of table; 128 GiB of data at 64 KiB frames).
pub const MAX_FRAMES: u64 = 2 << 20;
/// Default compression level: zstd's default; higher levels cost push time for a few %.
pub const DEFAULT_LEVEL: i32 = 3;

/// Why a frame table or a frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame table: bad magic")]
    Magic,
    #[error("frame table: unsupported version {0}")]
    Version(u32),
    #[error("frame table: unknown incompat feature bits {0:#x}")]
    Incompat(u32),
    #[error("frame table: unsupported encoding {0}")]
    Encoding(u32),
    #[error("frame table: {0}")]
    Layout(String),
    #[error("frame table: frame size {0} (want a power of two in 4KiB ..= 4MiB)")]
    FrameSize(u32),
    #[error("frame table: {count} frames (at most {MAX_FRAMES})")]
    TooManyFrames { count: u64 },
    #[error("frame table: frame {index}: {reason}")]
    Entry { index: u64, reason: String },
    #[error("frame {index}: corrupt compressed data: {reason}")]
    Corrupt { index: usize, reason: String },
    #[error("frame {index}: decodes to {got} bytes, table says {declared}")]
    Length {
        index: usize,
        declared: u32,
        got: usize,
    },
    #[error("frames {first}..={last}: {reason}")]
    Range {
        first: usize,
        last: usize,
        reason: String,
    },
    #[error("encoding frames: {0}")]
    Io(String),
}

pub type Result<T, E = FrameError> = std::result::Result<T, E>;

/// One frame: data bytes `offset .. offset+len` are compressed bytes
/// `compressed_offset .. compressed_offset+compressed_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub offset: u64,
    pub compressed_offset: u64,
    pub len: u32,
    pub compressed_len: u32,
}

impl Frame {
    /// End (exclusive) of the frame's compressed bytes.
    pub fn compressed_end(&self) -> u64 {
        self.compressed_offset + u64::from(self.compressed_len)
    }
}

/// A decoded, validated frame table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameTable {
    pub frame_size: u32,
    pub data_size: u64,
    pub compressed_size: u64,
    pub data_digest: Digest,
    pub compressed_digest: Digest,
    pub frames: Vec<Frame>,
}

/// Whether `fs` is a frame size the format allows.
pub fn valid_frame_size(fs: u32) -> bool {
    fs.is_power_of_two() && (MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&fs)
}

/// zstd's worst case for `len` input bytes (`ZSTD_COMPRESSBOUND`).
pub fn compress_bound(len: u32) -> u64 {
    let s = u64::from(len);
    let small = if s < (128 << 10) {
        ((128 << 10) - s) >> 11
    } else {
        0
    };
    s + (s >> 8) + small
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn raw32(b: &[u8], at: usize) -> [u8; 32] {
    let mut x = [0u8; 32];
    x.copy_from_slice(&b[at..at + 32]);
    x
}

impl FrameTable {
    /// The table's bytes (v1).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + self.frames.len() * ENTRY_LEN);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b.extend_from_slice(&self.frame_size.to_le_bytes());
        b.extend_from_slice(&ENCODING_ZSTD.to_le_bytes());
        b.extend_from_slice(&self.data_size.to_le_bytes());
        b.extend_from_slice(&(self.frames.len() as u64).to_le_bytes());
        b.extend_from_slice(&self.compressed_size.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&self.data_digest.raw_sha256());
        b.extend_from_slice(&self.compressed_digest.raw_sha256());
        for f in &self.frames {
            b.extend_from_slice(&f.offset.to_le_bytes());
            b.extend_from_slice(&f.compressed_offset.to_le_bytes());
            b.extend_from_slice(&f.len.to_le_bytes());
            b.extend_from_slice(&f.compressed_len.to_le_bytes());
        }
        b
    }

    /// Decode and validate a table (see the module docs for what is checked).
    pub fn decode(b: &[u8]) -> Result<FrameTable> {
        if b.len() < HEADER_LEN {
            return Err(FrameError::Layout(format!(
                "{} bytes, shorter than the header",
                b.len()
            )));
        }
        if b[..8] != MAGIC {
            return Err(FrameError::Magic);
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let incompat = u32_at(b, 16);
        if incompat != 0 {
            return Err(FrameError::Incompat(incompat));
        }
        if u32_at(b, 20) as usize != HEADER_LEN {
            return Err(FrameError::Layout(format!(
                "header length {}",
                u32_at(b, 20)
            )));
        }
        let frame_size = u32_at(b, 24);
        if !valid_frame_size(frame_size) {
            return Err(FrameError::FrameSize(frame_size));
        }
        let encoding = u32_at(b, 28);
        if encoding != ENCODING_ZSTD {
            return Err(FrameError::Encoding(encoding));
        }
        let data_size = u64_at(b, 32);
        let count = u64_at(b, 40);
        let compressed_size = u64_at(b, 48);
        if u64_at(b, 56) != 0 {
            return Err(FrameError::Layout("reserved bytes are not zero".into()));
        }
        if count > MAX_FRAMES {
            return Err(FrameError::TooManyFrames { count });
        }
        if count != data_size.div_ceil(u64::from(frame_size)) {
            return Err(FrameError::Layout(format!(
                "{count} frames for {data_size} data bytes at frame size {frame_size}"
            )));
        }
        // Checked before allocating: the entries must all be present, and nothing else.
        let body = (b.len() - HEADER_LEN) as u64;
        if body != count * ENTRY_LEN as u64 {
            return Err(FrameError::Layout(format!(
                "{body} entry bytes for {count} frames"
            )));
        }
        let data_digest = Digest::from_raw_sha256(&raw32(b, 64));
        let compressed_digest = Digest::from_raw_sha256(&raw32(b, 96));
        let mut frames = Vec::with_capacity(count as usize);
        let mut next_compressed = 0u64;
        for i in 0..count {
            let at = HEADER_LEN + i as usize * ENTRY_LEN;
            let f = Frame {
                offset: u64_at(b, at),
                compressed_offset: u64_at(b, at + 8),
                len: u32_at(b, at + 16),
                compressed_len: u32_at(b, at + 20),
            };
            let bad = |reason: String| FrameError::Entry { index: i, reason };
            let want_offset = i * u64::from(frame_size);
            let want_len = (data_size - want_offset).min(u64::from(frame_size));
            if f.offset != want_offset || u64::from(f.len) != want_len {
                return Err(bad(format!(
                    "covers data {}+{}, want {want_offset}+{want_len} (out of order, \
                     overlapping or gapped)",
                    f.offset, f.len
                )));
            }
            if f.compressed_offset != next_compressed {
                return Err(bad(format!(
                    "compressed offset {}, want {next_compressed} (frames must follow one another)",
                    f.compressed_offset
                )));
            }
            if f.compressed_len == 0 || u64::from(f.compressed_len) > compress_bound(f.len) {
                return Err(bad(format!(
                    "compressed length {} for {} data bytes",
                    f.compressed_len, f.len
                )));
            }
            next_compressed = f.compressed_end();
            frames.push(f);
        }
        if next_compressed != compressed_size {
            return Err(FrameError::Layout(format!(
                "frames end at {next_compressed}, compressed size is {compressed_size}"
            )));
        }
        Ok(FrameTable {
            frame_size,
            data_size,
            compressed_size,
            data_digest,
            compressed_digest,
            frames,
        })
    }

    /// Indices of the frames covering data bytes `start..end` (`start < end <= data_size`).
    pub fn covering(&self, start: u64, end: u64) -> Option<(usize, usize)> {
        if start >= end || end > self.data_size {
            return None;
        }
        let fs = u64::from(self.frame_size);
        let first = usize::try_from(start / fs).ok()?;
        let last = usize::try_from((end - 1) / fs).ok()?;
        (last < self.frames.len()).then_some((first, last))
    }

    /// Data bytes `start..end` covered by frames `first..=last`.
    pub fn data_span(&self, first: usize, last: usize) -> Option<(u64, u64)> {
        let (a, b) = (self.frames.get(first)?, self.frames.get(last)?);
        (first <= last).then(|| (a.offset, b.offset + u64::from(b.len)))
    }

    /// Compressed bytes `start..end` of frames `first..=last` (what one ranged GET fetches).
    pub fn compressed_span(&self, first: usize, last: usize) -> Option<(u64, u64)> {
        let (a, b) = (self.frames.get(first)?, self.frames.get(last)?);
        (first <= last).then(|| (a.compressed_offset, b.compressed_end()))
    }

    /// Decode frames `first..=last` from their compressed bytes (exactly
    /// [`FrameTable::compressed_span`]); returns the data bytes of
    /// [`FrameTable::data_span`]. Each frame decodes into exactly its declared length.
    pub fn decompress(&self, first: usize, last: usize, compressed: &[u8]) -> Result<Vec<u8>> {
        let range_err = |reason: String| FrameError::Range {
            first,
            last,
            reason,
        };
        let ((cs, ce), (ds, de)) = self
            .compressed_span(first, last)
            .zip(self.data_span(first, last))
            .ok_or_else(|| range_err("no such frames".into()))?;
        if compressed.len() as u64 != ce - cs {
            return Err(range_err(format!(
                "{} compressed bytes, want {}",
                compressed.len(),
                ce - cs
            )));
        }
        let mut out = vec![0u8; usize::try_from(de - ds).map_err(|e| range_err(e.to_string()))?];
        let mut dec = zstd::bulk::Decompressor::new().map_err(|e| FrameError::Io(e.to_string()))?;
        for (index, f) in self.frames[first..=last].iter().enumerate() {
            let index = first + index;
            let src = &compressed
                [(f.compressed_offset - cs) as usize..(f.compressed_end() - cs) as usize];
            let dst = &mut out[(f.offset - ds) as usize..][..f.len as usize];
            // A frame decoding past `dst` fails here ("destination buffer too small"): the
            // output never grows beyond what the table declared.
            let got = dec
                .decompress_to_buffer(src, dst)
                .map_err(|e| FrameError::Corrupt {
                    index,
                    reason: e.to_string(),
                })?;
            if got != f.len as usize {
                return Err(FrameError::Length {
                    index,
                    declared: f.len,
                    got,
                });
            }
        }
        Ok(out)
    }
}

/// Compress a data blob (`data`, read to its end) into independent zstd frames of `frame_size`
/// data bytes each, written to `out`; returns the table (digests of both blobs included).
pub fn encode_seekable(
    mut data: impl Read,
    mut out: impl Write,
    frame_size: u32,
    level: i32,
) -> Result<FrameTable> {
    if !valid_frame_size(frame_size) {
        return Err(FrameError::FrameSize(frame_size));
    }
    let io = |e: std::io::Error| FrameError::Io(e.to_string());
    let mut comp = zstd::bulk::Compressor::new(level).map_err(io)?;
    // The content size in each frame header lets any zstd tool decode a frame alone.
    comp.include_contentsize(true).map_err(io)?;
    let (mut data_hash, mut comp_hash) = (Sha256::new(), Sha256::new());
    let mut buf = vec![0u8; frame_size as usize];
    let mut frames = Vec::new();
    let (mut offset, mut compressed_offset) = (0u64, 0u64);
    loop {
        let mut n = 0;
        while n < buf.len() {
            match data.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        if n == 0 {
            break;
        }
        let part = &buf[..n];
        data_hash.update(part);
        let z = comp.compress(part).map_err(io)?;
        comp_hash.update(&z);
        out.write_all(&z).map_err(io)?;
        let len = n as u32;
        let compressed_len = u32::try_from(z.len()).map_err(|e| FrameError::Io(e.to_string()))?;
        frames.push(Frame {
            offset,
            compressed_offset,
            len,
            compressed_len,
        });
        offset += u64::from(len);
        compressed_offset += u64::from(compressed_len);
        if (frames.len() as u64) > MAX_FRAMES {
            return Err(FrameError::TooManyFrames {
                count: frames.len() as u64,
            });
        }
        if n < buf.len() {
            break;
        }
    }
    out.flush().map_err(io)?;
    Ok(FrameTable {
        frame_size,
        data_size: offset,
        compressed_size: compressed_offset,
        data_digest: Digest::from_sha256(data_hash),
        compressed_digest: Digest::from_sha256(comp_hash),
        frames,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compressible text-like data with some noise.
    fn sample(n: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 7 == 0 {
                    x as u8
                } else {
                    b"import os, sys\n"[i % 15]
                }
            })
            .collect()
    }

    fn encoded(data: &[u8], fs: u32) -> (FrameTable, Vec<u8>) {
        let mut z = Vec::new();
        let t = encode_seekable(data, &mut z, fs, DEFAULT_LEVEL).unwrap();
        (t, z)
    }

    #[test]
    fn round_trip_every_span() {
        let data = sample(300_000);
        let (t, z) = encoded(&data, 64 << 10);
        assert_eq!(t.frames.len(), 5);
        assert_eq!(t.data_size, data.len() as u64);
        assert_eq!(t.compressed_size, z.len() as u64);
        assert_eq!(t.data_digest, Digest::sha256_of(&data));
        assert_eq!(t.compressed_digest, Digest::sha256_of(&z));
        assert!(z.len() * 2 < data.len(), "compressible: {}", z.len());
        let back = FrameTable::decode(&t.encode()).unwrap();
        assert_eq!(back, t);
        for (a, b) in [(0, 1), (1, 3), (0, 4), (4, 4), (2, 2)] {
            let (cs, ce) = t.compressed_span(a, b).unwrap();
            let (ds, de) = t.data_span(a, b).unwrap();
            let got = t.decompress(a, b, &z[cs as usize..ce as usize]).unwrap();
            assert_eq!(got, data[ds as usize..de as usize]);
        }
        assert_eq!(t.covering(0, 1), Some((0, 0)));
        assert_eq!(t.covering(65535, 65537), Some((0, 1)));
        assert_eq!(t.covering(299_999, 300_000), Some((4, 4)));
        assert_eq!(t.covering(0, 300_001), None);
        assert_eq!(t.covering(5, 5), None);
        // Empty data: no frames, still a valid table.
        let (t, z) = encoded(&[], 64 << 10);
        assert!(t.frames.is_empty() && z.is_empty());
        assert_eq!(FrameTable::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn hostile_tables_are_refused() {
        let (t, _) = encoded(&sample(200_000), 64 << 10);
        let good = t.encode();
        let entry = |i: usize, field: usize| HEADER_LEN + i * ENTRY_LEN + field;
        type Corruption = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Corruption)> = vec![
            ("magic", Box::new(|b| b[0] = b'X')),
            ("version", Box::new(|b| b[8] = 2)),
            ("incompat", Box::new(|b| b[16] = 1)),
            (
                "frame size",
                Box::new(|b| b[24..28].copy_from_slice(&1000u32.to_le_bytes())),
            ),
            ("encoding", Box::new(|b| b[28] = 9)),
            // A huge count with few bytes present: refused before allocating.
            (
                "count",
                Box::new(|b| b[40..48].copy_from_slice(&u64::MAX.to_le_bytes())),
            ),
            ("truncated", Box::new(|b| b.truncate(b.len() - 1))),
            ("trailing", Box::new(|b| b.push(0))),
            // Frames 1 and 2 swapped (out of order).
            (
                "order",
                Box::new(move |b| {
                    let (x, y) = (entry(1, 0), entry(2, 0));
                    let one = b[x..x + ENTRY_LEN].to_vec();
                    let two = b[y..y + ENTRY_LEN].to_vec();
                    b[x..x + ENTRY_LEN].copy_from_slice(&two);
                    b[y..y + ENTRY_LEN].copy_from_slice(&one);
                }),
            ),
            // Frame 1's compressed bytes overlap frame 0's.
            (
                "overlap",
                Box::new(move |b| {
                    let at = entry(1, 8);
                    let v = u64_at(b, at) - 1;
                    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
                }),
            ),
            // A frame claiming more data than the frame size.
            (
                "data length",
                Box::new(move |b| {
                    let at = entry(0, 16);
                    b[at..at + 4].copy_from_slice(&(128u32 << 10).to_le_bytes());
                }),
            ),
            // A compressed length past zstd's bound.
            (
                "compressed length",
                Box::new(move |b| {
                    let at = entry(3, 20);
                    b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
                }),
            ),
            // The declared compressed size disagrees with the frames.
            ("compressed size", Box::new(|b| b[48] ^= 1)),
        ];
        for (what, corrupt) in cases {
            let mut b = good.clone();
            corrupt(&mut b);
            let r = FrameTable::decode(&b);
            assert!(r.is_err(), "{what}: accepted");
        }
        assert!(matches!(
            FrameTable::decode(&good[..HEADER_LEN - 1]),
            Err(FrameError::Layout(_))
        ));
        let mut many = good.clone();
        many[40..48].copy_from_slice(&(MAX_FRAMES + 1).to_le_bytes());
        assert_eq!(
            FrameTable::decode(&many),
            Err(FrameError::TooManyFrames {
                count: MAX_FRAMES + 1
            })
        );
    }

    #[test]
    fn corrupt_or_oversized_frames_are_refused_without_growing() {
        let data = sample(200_000);
        let (t, z) = encoded(&data, 64 << 10);
        let (cs, ce) = t.compressed_span(1, 1).unwrap();
        let mut bad = z[cs as usize..ce as usize].to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        bad[mid + 1] ^= 0xff;
        match t.decompress(1, 1, &bad) {
            // Either zstd sees the damage, or it decodes other bytes (the node's chunk digests
            // catch those); never a panic, never more than the declared length.
            Err(FrameError::Corrupt { index: 1, .. }) => {}
            Ok(out) => {
                assert_eq!(out.len(), 64 << 10);
                assert_ne!(out, data[64 << 10..128 << 10]);
            }
            other => panic!("{other:?}"),
        }
        // A frame that decodes to more than declared: the bytes of a bigger frame, under a
        // table that says otherwise.
        let (big_t, big_z) = encoded(&data[..131_072], 128 << 10);
        let bomb = &big_z[..big_t.frames[0].compressed_len as usize];
        let mut lying = t.clone();
        lying.frames[1].compressed_len = bomb.len() as u32;
        let mut compressed_offset = 0;
        for f in &mut lying.frames {
            f.compressed_offset = compressed_offset;
            compressed_offset = f.compressed_end();
        }
        let r = lying.decompress(1, 1, bomb);
        assert!(
            matches!(r, Err(FrameError::Corrupt { index: 1, .. })),
            "{r:?}"
        );
        // Fewer bytes than declared.
        let (small_t, small_z) = encoded(&data[..1000], 64 << 10);
        lying.frames[1].compressed_len = small_t.frames[0].compressed_len;
        let r = lying.decompress(1, 1, &small_z);
        assert!(
            matches!(
                r,
                Err(FrameError::Length {
                    index: 1,
                    declared: 65536,
                    got: 1000
                })
            ),
            "{r:?}"
        );
        // Wrong number of compressed bytes for the frames asked for.
        assert!(matches!(
            t.decompress(0, 0, &z[..3]),
            Err(FrameError::Range { .. })
        ));
    }
}
