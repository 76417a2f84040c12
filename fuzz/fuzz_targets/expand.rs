//! Fuzz: expansion of arbitrary bytes (gzip, zstd or plain tar, sniffed) never panics, never
//! succeeds partially, and whatever it produces decodes to the same index and merges.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = emulator::ExpandOptions {
        chunk_size: emulator::MIN_EXPAND_CHUNK_SIZE,
        max_uncompressed: 64 << 20,
        max_entries: 100_000,
        ..Default::default()
    };
    let Ok(out) = emulator::expand(data, None, None, Cursor::new(Vec::new()), &opts) else {
        return;
    };
    let back =
        emulator::Index::decode(&out.index_bytes).expect("expand wrote an index it cannot decode");
    assert_eq!(back, out.index);
    assert!(
        out.index.data_size <= out.uncompressed_size,
        "data never exceeds the tar"
    );
    let _ = emulator::merge(&[&out.index]).expect("a valid layer merges");
    let _ = emulator::overlay_form(&out.index);
});
