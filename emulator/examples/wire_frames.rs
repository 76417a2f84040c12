//! Measures the compressed wire encoding (`emulator::frames`) of layers at several frame sizes:
//! ratio and encode time of the whole data blob, and the bytes a node fetches for reads of
//! single files and of a start-like working set (a seeded 6% of the files), against the plain
//! chunks and the files' own compressed size.
//!
//! `cargo run --release -p emulator --example wire_frames -- LAYER.tar[.gz|.zst]...`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Instant;

use emulator::frames::{encode_seekable, FrameTable};
use emulator::{EntryKind, ExpandOptions};

const CHUNK: u32 = 16 << 10;
const SIZES: [u32; 5] = [16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10];

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn main() {
    for path in std::env::args().skip(1) {
        let blob = std::fs::read(&path).unwrap();
        let mt = if blob.starts_with(&[0x1f, 0x8b]) {
            emulator::oci::MT_OCI_LAYER_GZIP
        } else if blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            emulator::oci::MT_OCI_LAYER_ZSTD
        } else {
            emulator::oci::MT_OCI_LAYER_TAR
        };
        let dir = tempfile::tempdir().unwrap();
        let mut f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("data"))
            .unwrap();
        let opts = ExpandOptions {
            chunk_size: CHUNK,
            ..Default::default()
        };
        let ex = emulator::expand_to_file(&blob[..], Some(mt), None, &mut f, &opts).unwrap();
        let data = std::fs::read(dir.path().join("data")).unwrap();
        let data = &data[..ex.index.data_size as usize];
        // Distinct file contents (by data offset), in data order.
        let files: Vec<(u64, u64)> = ex
            .index
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File && e.size > 0)
            .map(|e| (e.data_offset, e.size))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // A start's working set: a seeded 6% of the files.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let ws: Vec<(u64, u64)> = files
            .iter()
            .copied()
            .filter(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % 100 < 6
            })
            .collect();
        let zstd_of = |set: &[(u64, u64)]| -> u64 {
            set.iter()
                .map(|&(o, s)| {
                    zstd::bulk::compress(&data[o as usize..(o + s) as usize], 3)
                        .unwrap()
                        .len() as u64
                })
                .sum()
        };
        let small: Vec<(u64, u64)> = files.iter().copied().filter(|f| f.1 < 64 << 10).collect();
        let (ws_raw, ws_z): (u64, u64) = (ws.iter().map(|f| f.1).sum(), zstd_of(&ws));
        let (small_raw, small_z): (u64, u64) = (small.iter().map(|f| f.1).sum(), zstd_of(&small));
        let plain_chunks = |set: &[(u64, u64)]| -> u64 {
            let chunks: BTreeSet<u64> = set
                .iter()
                .flat_map(|&(o, s)| (o / u64::from(CHUNK))..=((o + s - 1) / u64::from(CHUNK)))
                .collect();
            chunks
                .iter()
                .map(|c| (data.len() as u64 - c * u64::from(CHUNK)).min(u64::from(CHUNK)))
                .sum()
        };
        println!(
            "\n{path}: layer {:.1} MiB, data {:.1} MiB, {} files ({} under 64 KiB); \
             working set {} files {:.2} MiB (zstd per file {:.2} MiB), plain chunks {:.2} MiB; \
             small files one by one: {:.2} MiB (zstd per file {:.2} MiB), plain chunks {:.2} MiB",
            mib(blob.len() as u64),
            mib(data.len() as u64),
            files.len(),
            small.len(),
            ws.len(),
            mib(ws_raw),
            mib(ws_z),
            mib(plain_chunks(&ws)),
            mib(small_raw),
            mib(small_z),
            mib(small.iter().map(|f| plain_chunks(&[*f])).sum()),
        );
        println!(
            "| frame | data ratio | encode MiB/s | working set on wire | ÷ its zstd | small file reads on wire | ÷ their zstd |"
        );
        println!("|---|---|---|---|---|---|---|");
        for fs in SIZES {
            let t0 = Instant::now();
            let mut z = Vec::new();
            let t: FrameTable = encode_seekable(data, &mut z, fs, 3).unwrap();
            let secs = t0.elapsed().as_secs_f64();
            let frames_of = |set: &[(u64, u64)]| -> BTreeSet<usize> {
                set.iter()
                    .flat_map(|&(o, s)| {
                        let (a, b) = t.covering(o, o + s).unwrap();
                        a..=b
                    })
                    .collect()
            };
            let wire = |frames: &BTreeSet<usize>| -> u64 {
                frames
                    .iter()
                    .map(|&i| u64::from(t.frames[i].compressed_len))
                    .sum()
            };
            let ws_wire = wire(&frames_of(&ws));
            let small_wire: u64 = small.iter().map(|f| wire(&frames_of(&[*f]))).sum();
            println!(
                "| {} KiB | {:.3} | {:.0} | {:.2} MiB | {:.2}× | {:.2} MiB | {:.2}× |",
                fs >> 10,
                t.compressed_size as f64 / data.len() as f64,
                mib(data.len() as u64) / secs,
                mib(ws_wire),
                ws_wire as f64 / ws_z as f64,
                mib(small_wire),
                small_wire as f64 / small_z as f64,
            );
        }
    }
}
