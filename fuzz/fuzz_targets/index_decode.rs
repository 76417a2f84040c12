//! Fuzz: decoding an expanded-layer index from arbitrary bytes never panics, and what decodes
//! survives its own encode/decode and its queries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(idx) = emulator::Index::decode(data) else {
        return;
    };
    let again = emulator::Index::decode(&idx.encode()).expect("re-encoded index decodes");
    assert_eq!(again, idx);
    let owners = idx.hardlink_owners();
    for (i, o) in owners.iter().enumerate() {
        assert_eq!(*o, idx.resolve_hardlink(i).map(|(j, _)| j));
    }
    let _ = idx.chunks_for_range(0, idx.data_size);
    let _ = emulator::overlay_form(&idx);
    let _ = emulator::merge(&[&idx]);
});
