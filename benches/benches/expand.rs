//! `emulator::expand` on fixture layers (scaled azure-vote-front): the big base layer and the
//! median-sized one, as gzip (what the fixtures and most registries hold), zstd (recompressed in
//! setup) and plain tar; into a real temp file (what the registry does) and into memory
//! (`Cursor<Vec<u8>>`, the format work alone). Throughput is uncompressed tar bytes per second.
//!
//! Scale: `TELEPORT_BENCH_SCALE` (default 0.05). Fixtures are cached (see `benches::fixture`).

// Benches may panic on setup errors: a bench that cannot set up must not measure nothing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Cursor, Seek, SeekFrom};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use emulator::ExpandOptions;

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

struct Input {
    name: String,
    media_type: &'static str,
    blob: Vec<u8>,
    uncompressed: u64,
}

fn inputs() -> Vec<Input> {
    let scale: f64 = std::env::var("TELEPORT_BENCH_SCALE")
        .ok()
        .map(|s| s.parse().expect("TELEPORT_BENCH_SCALE is not a number"))
        .unwrap_or(0.05);
    let (layout, info) = benches::fixture::cached_layout(
        &benches::fixture::default_cache_dir(),
        "azure-vote-front",
        scale,
        false,
    )
    .expect("building the azure-vote-front fixture");
    let big = info
        .layers
        .iter()
        .max_by_key(|l| l.uncompressed_size)
        .expect("fixture has no layers");
    // The median layer by size: a typical small layer of this image (most of its 29 are small).
    let mut by_size: Vec<_> = info.layers.iter().collect();
    by_size.sort_by_key(|l| l.uncompressed_size);
    let small = by_size[by_size.len() / 2];
    let mut out = Vec::new();
    for (label, l) in [("big", big), ("small", small)] {
        let gz_path = benches::fixture::layer_path(&layout, l);
        let gz = std::fs::read(&gz_path).expect("reading layer blob");
        let tar = benches::fixture::gunzip_layer(&layout, l).expect("gunzip layer");
        let zst = benches::fixture::zstd_compress(&tar, 3).expect("zstd layer");
        let kb = tar.len() / 1000;
        for (kind, media_type, blob) in [
            ("gzip", GZIP, gz),
            ("zstd", ZSTD, zst),
            ("tar", TAR, tar.clone()),
        ] {
            out.push(Input {
                name: format!("{label}-{kb}kB/{kind}"),
                media_type,
                blob,
                uncompressed: tar.len() as u64,
            });
        }
    }
    out
}

fn bench_expand(c: &mut Criterion) {
    let opts = ExpandOptions::default();
    let inputs = inputs();
    let mut g = c.benchmark_group("expand");
    g.sample_size(10);
    for input in &inputs {
        g.throughput(Throughput::Bytes(input.uncompressed));
        // Temp file on disk, reused: truncated and rewound per iteration.
        let mut file = tempfile::tempfile().expect("temp file");
        g.bench_with_input(BenchmarkId::new("file", &input.name), input, |b, input| {
            b.iter(|| {
                file.set_len(0).expect("truncate");
                file.seek(SeekFrom::Start(0)).expect("seek");
                let ex = emulator::expand(
                    &input.blob[..],
                    Some(input.media_type),
                    None,
                    &mut file,
                    &opts,
                )
                .unwrap_or_else(|e| panic!("expand {} failed: {e}", input.name));
                file.set_len(ex.index.data_size)
                    .expect("truncate to data size");
                ex
            });
        });
        g.bench_with_input(
            BenchmarkId::new("memory", &input.name),
            input,
            |b, input| {
                b.iter_batched(
                    || Cursor::new(Vec::with_capacity(input.uncompressed as usize)),
                    |mut sink| {
                        emulator::expand(
                            &input.blob[..],
                            Some(input.media_type),
                            None,
                            &mut sink,
                            &opts,
                        )
                        .unwrap_or_else(|e| panic!("expand {} failed: {e}", input.name))
                    },
                    BatchSize::LargeInput,
                );
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench_expand);
criterion_main!(benches);
