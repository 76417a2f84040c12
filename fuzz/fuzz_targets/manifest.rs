//! Fuzz: the OCI manifest / index / config parsers the registry and the emulator use never
//! panic on arbitrary bytes (with each content type the registry accepts).
#![no_main]

use libfuzzer_sys::fuzz_target;

const TYPES: &[Option<&str>] = &[
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let ct = TYPES[usize::from(sel) % TYPES.len()];
    if let Ok(m) = registry_mock::manifest::parse(body, ct) {
        let _ = m.layers();
        let _ = m.effective_artifact_type();
    }
    let _ = emulator::oci::from_json::<emulator::oci::ImageManifest>(body);
    let _ = emulator::oci::from_json::<emulator::oci::ImageIndex>(body);
    if let Ok(c) = emulator::oci::from_json::<emulator::oci::ImageConfiguration>(body) {
        let _ = emulator::oci::diff_ids(&c);
    }
    if let Ok(s) = std::str::from_utf8(body) {
        let _ = emulator::oci::parse_reference(s);
    }
});
