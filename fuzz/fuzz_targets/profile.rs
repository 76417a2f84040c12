//! Fuzz: the start-profile document. Whatever decodes is canonical: disjoint ranges inside the
//! blob, no more bytes than the blob, and it decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let size = [0u64, 1, 4096, 1 << 20, u64::MAX][usize::from(sel) % 5];
    let Ok(p) = emulator::profile::Profile::decode(body, size) else {
        return;
    };
    let mut sorted = p.ranges.clone();
    sorted.sort_unstable();
    let mut end = 0u64;
    for &(o, l) in &sorted {
        assert!(l > 0 && o >= end, "overlap in {:?}", p.ranges);
        end = o + l;
        assert!(end <= size);
    }
    let again = emulator::profile::Profile::decode(&p.encode(), size).expect("canonical decodes");
    assert_eq!(again, p);
});
