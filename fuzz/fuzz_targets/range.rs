//! Fuzz: the registry's HTTP `Range` header parser never panics and a partial answer is always
//! inside the resource.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_mock::http_util::{parse_range, RangeSpec};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let len = u64::from_le_bytes(data[..8].try_into().unwrap_or_default()) >> (data[0] % 64);
    let Ok(value) = std::str::from_utf8(&data[8..]) else {
        return;
    };
    for v in [Some(value), None] {
        if let RangeSpec::Partial(s, e) = parse_range(v, len) {
            assert!(s <= e && e < len, "{v:?} len {len}: {s}-{e}");
        }
    }
});
