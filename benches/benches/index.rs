//! The per-layer work a node does after expansion, which must stay near zero: decoding a layer's
//! index (`Index::decode` of the biggest one), merging all 29 layers' indexes into one tree
//! (`merge`, the merged mount mode) and converting each layer to overlayfs form (`overlay_form`,
//! the per-layer mount mode). Indexes come from expanding the scaled azure-vote-front fixture once
//! in setup (`TELEPORT_BENCH_SCALE`, default 0.05).

// Benches may panic on setup errors: a bench that cannot set up must not measure nothing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Cursor;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use emulator::{ExpandOptions, Index};

fn scale() -> f64 {
    std::env::var("TELEPORT_BENCH_SCALE")
        .ok()
        .map(|s| s.parse().expect("TELEPORT_BENCH_SCALE is not a number"))
        .unwrap_or(0.05)
}

fn indexes() -> Vec<Vec<u8>> {
    let (layout, info) = benches::fixture::cached_layout(
        &benches::fixture::default_cache_dir(),
        "azure-vote-front",
        scale(),
        false,
    )
    .expect("building the azure-vote-front fixture");
    info.layers
        .iter()
        .map(|l| {
            let p = benches::fixture::layer_path(&layout, l);
            let f = std::fs::File::open(&p).expect("opening layer blob");
            emulator::expand(
                std::io::BufReader::new(f),
                Some(&l.media_type),
                Some(&l.digest),
                Cursor::new(Vec::new()),
                &ExpandOptions::default(),
            )
            .unwrap_or_else(|e| panic!("expanding {}: {e}", l.digest))
            .index_bytes
        })
        .collect()
}

fn bench_index(c: &mut Criterion) {
    let raw = indexes();
    let decoded: Vec<Index> = raw
        .iter()
        .map(|b| Index::decode(b).expect("decoding an index we just encoded"))
        .collect();
    let entries: usize = decoded.iter().map(|i| i.entries.len()).sum();
    let (big_i, big) = raw
        .iter()
        .enumerate()
        .max_by_key(|(_, b)| b.len())
        .expect("no layers");
    let big_entries = decoded[big_i].entries.len();

    // The scale is in the group name so criterion never compares runs of different sizes.
    let mut g = c.benchmark_group(format!("index-scale{}", scale()));
    g.throughput(Throughput::Elements(big_entries as u64));
    g.bench_function(format!("decode/biggest-{big_entries}-entries"), |b| {
        b.iter(|| Index::decode(big).expect("decode"))
    });
    let refs: Vec<&Index> = decoded.iter().collect();
    g.throughput(Throughput::Elements(entries as u64));
    g.bench_function(
        format!("merge/{}-layers-{entries}-entries", refs.len()),
        |b| b.iter(|| emulator::merge(&refs).expect("merge")),
    );
    g.bench_function(format!("overlay_form/each-of-{}-layers", refs.len()), |b| {
        b.iter(|| {
            refs.iter()
                .map(|i| emulator::overlay_form(i).len())
                .sum::<usize>()
        })
    });
    g.throughput(Throughput::Elements(big_entries as u64));
    g.bench_function("overlay_form/biggest", |b| {
        b.iter(|| emulator::overlay_form(&decoded[big_i]))
    });
    g.finish();
}

criterion_group!(benches, bench_index);
criterion_main!(benches);
