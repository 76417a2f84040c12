//! Decompression bombs and oversized metadata stop early with bounded memory: peak RSS
//! (`VmHWM`) stays far below what the bomb would expand to. One test in its own binary, so no
//! other test shares the process's peak.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Cursor, Read};

use emulator::{expand, Error, ExpandOptions};

fn vm_hwm_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A tar with one file of `size` zero bytes, streamed (never held in memory).
fn zero_tar(size: u64) -> impl Read {
    let mut h = tar::Header::new_gnu();
    h.set_path("zeros").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    let head = h.as_bytes().to_vec();
    let pad = (512 - size % 512) % 512;
    Cursor::new(head).chain(std::io::repeat(0).take(size + pad + 1024))
}

#[test]
fn bombs_stop_early_with_bounded_memory() {
    const BOMB: u64 = 1 << 30; // 1 GiB of zeros once decompressed.
    let mut zst = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    std::io::copy(&mut zero_tar(BOMB), &mut zst).unwrap();
    let zst = zst.finish().unwrap();
    // gzip tops out near 1000:1, under the default ratio cap: its bomb is held by the size cap.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::copy(&mut zero_tar(48 << 20), &mut gz).unwrap();
    let gz = gz.finish().unwrap();
    let before = vm_hwm_bytes();

    // The sink is in memory: had the bomb expanded, RSS would have grown by gigabytes.
    let r = expand(
        &zst[..],
        None,
        None,
        Cursor::new(Vec::new()),
        &ExpandOptions::default(),
    );
    assert!(matches!(r, Err(Error::SizeLimit { .. })), "{r:?}");
    let o = ExpandOptions {
        max_uncompressed: 16 << 20,
        ..Default::default()
    };
    let r = expand(&gz[..], None, None, Cursor::new(Vec::new()), &o);
    assert!(
        matches!(r, Err(Error::SizeLimit { limit }) if limit == 16 << 20),
        "{r:?}"
    );
    // Concatenated gzip members are one stream: the cap holds across members too.
    let mut two = gz.clone();
    two.extend_from_slice(&gz);
    let r = expand(&two[..], None, None, Cursor::new(Vec::new()), &o);
    assert!(matches!(r, Err(Error::SizeLimit { .. })), "{r:?}");

    let after = vm_hwm_bytes();
    let grown = after.saturating_sub(before);
    eprintln!("VmHWM before {before} after {after} (+{grown} bytes)");
    // The ratio cap stops the zstd bomb after ~compressed × 1000 bytes; the size cap stops gzip
    // at 16 MiB (held in the in-memory sink). 128 MiB covers both with slack.
    assert!(grown < 128 << 20, "peak RSS grew by {grown} bytes");
}
