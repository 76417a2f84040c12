//! Hostile and broken input: typed errors, never a panic, never a partial success.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Cursor;

use common::*;
use emulator::{expand, Error, ExpandOptions, Index};
use proptest::prelude::*;

fn opts() -> ExpandOptions {
    ExpandOptions {
        chunk_size: CHUNK,
        ..Default::default()
    }
}

fn try_expand(blob: &[u8], o: &ExpandOptions) -> Result<emulator::Expanded, Error> {
    expand(blob, None, None, Cursor::new(Vec::new()), o)
}

/// A raw ustar header for `name` with the given type, size and link name.
fn raw_header(name: &[u8], ty: u8, size: u64, link: &[u8]) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    {
        let u = h.as_ustar_mut().unwrap();
        u.name[..name.len()].copy_from_slice(name);
        u.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(tar::EntryType::new(ty));
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(1);
    h.set_cksum();
    *h.as_bytes()
}

fn tar_of(members: &[([u8; 512], Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (h, data) in members {
        out.extend_from_slice(h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn assert_hostile(raw: Vec<u8>, what: &str) {
    match try_expand(&raw, &opts()) {
        Err(Error::HostileEntry { .. }) => {}
        other => panic!("{what}: want HostileEntry, got {other:?}"),
    }
}

#[test]
fn dotdot_paths_are_rejected() {
    for name in [
        &b"../x"[..],
        b"a/../../x",
        b"a/b/../../../etc/passwd",
        b"./..",
    ] {
        assert_hostile(
            tar_of(&[(raw_header(name, b'0', 1, b""), b"x".to_vec())]),
            "dotdot",
        );
    }
}

#[test]
fn bad_whiteout_names_are_rejected() {
    for name in [&b"a/.wh."[..], b"a/.wh..", b"a/.wh...", b".wh..."] {
        assert_hostile(
            tar_of(&[(raw_header(name, b'0', 0, b""), vec![])]),
            "whiteout name",
        );
    }
    // AUFS metadata is skipped, not an entry.
    let raw = tar_of(&[(raw_header(b".wh..wh.plnk/1", b'0', 0, b""), vec![])]);
    let out = try_expand(&raw, &opts()).unwrap();
    assert!(out.index.entries.is_empty(), "{:?}", out.index.entries);
}

#[test]
fn absolute_paths_are_neutralised() {
    let raw = tar_of(&[(raw_header(b"/etc/passwd", b'0', 1, b""), b"x".to_vec())]);
    let out = try_expand(&raw, &opts()).unwrap();
    assert_eq!(out.index.entries[0].path, "etc/passwd");
}

#[test]
fn bad_hardlinks_are_rejected() {
    // Outside the layer.
    assert_hostile(
        tar_of(&[(raw_header(b"l", b'1', 0, b"../../etc/shadow"), vec![])]),
        "escaping link",
    );
    // Not an earlier entry (a later one).
    assert_hostile(
        tar_of(&[
            (raw_header(b"l", b'1', 0, b"f"), vec![]),
            (raw_header(b"f", b'0', 1, b""), b"x".to_vec()),
        ]),
        "forward link",
    );
    // To a directory.
    assert_hostile(
        tar_of(&[
            (raw_header(b"d/", b'5', 0, b""), vec![]),
            (raw_header(b"l", b'1', 0, b"d"), vec![]),
        ]),
        "link to dir",
    );
    // To itself.
    assert_hostile(
        tar_of(&[
            (raw_header(b"f", b'0', 1, b""), b"x".to_vec()),
            (raw_header(b"f", b'1', 0, b"f"), vec![]),
        ]),
        "self link",
    );
    // A valid one passes.
    let ok = tar_of(&[
        (raw_header(b"f", b'0', 1, b""), b"x".to_vec()),
        (raw_header(b"l", b'1', 0, b"./f"), vec![]),
    ]);
    assert!(try_expand(&ok, &opts()).is_ok());
}

#[test]
fn non_utf8_and_sparse_are_rejected() {
    assert_hostile(
        tar_of(&[(raw_header(b"a\xff", b'0', 0, b""), vec![])]),
        "non-utf8",
    );
    assert_hostile(
        tar_of(&[(raw_header(b"s", b'S', 0, b""), vec![])]),
        "sparse",
    );
}

#[test]
fn size_bombs_are_stopped() {
    // 8 MiB of zeros compresses ~1000:1 with gzip: over a 100:1 ratio cap.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(8 << 20);
    h.set_mode(0o644);
    b.append_data(&mut h, "zeros", std::io::repeat(0).take_bytes(8 << 20))
        .unwrap();
    let raw = b.into_inner().unwrap();
    let gz = compress(&raw, Comp::Gzip);
    let o = ExpandOptions {
        max_ratio: 100,
        ..opts()
    };
    assert!(matches!(try_expand(&gz, &o), Err(Error::SizeLimit { .. })));
    let o = ExpandOptions {
        max_uncompressed: 2 << 20,
        ..opts()
    };
    assert!(matches!(try_expand(&raw, &o), Err(Error::SizeLimit { .. })));
    assert!(matches!(try_expand(&gz, &o), Err(Error::SizeLimit { .. })));
    // Within limits it works.
    assert!(try_expand(&gz, &opts()).is_ok());
}

trait TakeBytes {
    fn take_bytes(self, n: u64) -> std::io::Take<std::io::Repeat>;
}
impl TakeBytes for std::io::Repeat {
    fn take_bytes(self, n: u64) -> std::io::Take<std::io::Repeat> {
        std::io::Read::take(self, n)
    }
}

#[test]
fn entry_limit_is_enforced() {
    let members: Vec<_> = (0..10)
        .map(|i| (raw_header(format!("f{i}").as_bytes(), b'0', 0, b""), vec![]))
        .collect();
    let raw = tar_of(&members);
    let o = ExpandOptions {
        max_entries: 9,
        ..opts()
    };
    assert!(matches!(
        try_expand(&raw, &o),
        Err(Error::EntryLimit { limit: 9 })
    ));
    let o = ExpandOptions {
        max_entries: 10,
        ..opts()
    };
    assert!(try_expand(&raw, &o).is_ok());
}

#[test]
fn media_type_must_match_content() {
    let raw = tar_of(&[(raw_header(b"f", b'0', 1, b""), b"x".to_vec())]);
    let gz = compress(&raw, Comp::Gzip);
    assert!(try_expand(&gz, &opts()).is_ok());
    let r = expand(
        &gz[..],
        Some(emulator::oci::MT_OCI_LAYER_ZSTD),
        None,
        Cursor::new(Vec::new()),
        &opts(),
    );
    assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
    let r = expand(
        &raw[..],
        Some(emulator::oci::MT_OCI_CONFIG),
        None,
        Cursor::new(Vec::new()),
        &opts(),
    );
    assert!(matches!(r, Err(Error::UnsupportedMediaType(_))), "{r:?}");
    let r = expand(
        &gz[..],
        Some("application/octet-stream"),
        None,
        Cursor::new(Vec::new()),
        &opts(),
    );
    assert!(r.is_ok());
}

#[test]
fn unknown_incompat_bit_and_version_are_refused() {
    let raw = tar_of(&[(raw_header(b"f", b'0', 1, b""), b"x".to_vec())]);
    let good = try_expand(&raw, &opts()).unwrap().index_bytes;
    let mut b = good.clone();
    b[16] |= 0x01;
    assert!(matches!(Index::decode(&b), Err(Error::Format(_))));
    let mut b = good.clone();
    b[12] |= 0x80; // unknown compat bit: still readable
    assert!(Index::decode(&b).is_ok());
    let mut b = good;
    b[8] = 2;
    assert!(matches!(
        Index::decode(&b),
        Err(Error::UnsupportedVersion(2))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn decode_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Index::decode(&bytes);
        let mut with_magic = emulator::format::MAGIC.to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = Index::decode(&with_magic);
    }

    #[test]
    fn decode_mutated_index_never_panics(
        (specs, root) in layer_strategy(8),
        muts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let raw = build_tar(&specs, root);
        let good = try_expand(&raw, &opts()).unwrap().index_bytes;
        let mut b = good.clone();
        for (i, v) in &muts {
            let i = i.index(b.len());
            b[i] = *v;
        }
        if let Ok(idx) = Index::decode(&b) {
            // Whatever decodes is self-consistent: it survives its own encode/decode.
            prop_assert_eq!(Index::decode(&idx.encode()).unwrap(), idx);
        }
        let _ = Index::decode(&good[..cut.index(good.len())]);
    }

    #[test]
    fn truncated_layers_always_fail(
        (specs, root) in layer_strategy(8),
        comp in comp_strategy(),
        cut in any::<prop::sample::Index>(),
    ) {
        let raw = build_tar(&specs, root);
        let blob = compress(&raw, comp);
        // Any strict prefix that cuts into the tar's members or its first end block must fail.
        // (A plain tar cut after the first zero block is a valid archive, like Go's reader says.)
        let min_ok = raw.len() - 512;
        let c = cut.index(blob.len());
        let r = try_expand(&blob[..c], &opts());
        if comp != Comp::None || c < min_ok {
            prop_assert!(r.is_err(), "prefix of {} / {} bytes accepted", c, blob.len());
        }
    }
}

#[test]
fn huge_sizes_do_not_overflow() {
    // A whiteout member claiming u64::MAX bytes via PAX, and a file claiming it.
    for name in [&b".wh.x"[..], b"f"] {
        let mut pax = tar::Header::new_ustar();
        let rec = format!("29 size={}\n", u64::MAX);
        assert_eq!(rec.len(), 29);
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_size(rec.len() as u64);
        pax.set_cksum();
        let raw = tar_of(&[
            (*pax.as_bytes(), rec.into_bytes()),
            (raw_header(name, b'0', 0, b""), vec![]),
        ]);
        assert!(matches!(try_expand(&raw, &opts()), Err(Error::Corrupt(_))));
    }
}

/// A PAX extended header carrying `records` (key, value), as one tar member.
fn pax_header(records: &[(&str, &[u8])]) -> ([u8; 512], Vec<u8>) {
    let mut body = Vec::new();
    for (k, v) in records {
        // "%d %s=%s\n": the length counts its own digits.
        let rest = 1 + k.len() + 1 + v.len() + 1;
        let mut len = rest + 1;
        while len.to_string().len() + rest != len {
            len = len.to_string().len() + rest;
        }
        body.extend_from_slice(format!("{len} {k}=").as_bytes());
        body.extend_from_slice(v);
        body.push(b'\n');
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(body.len() as u64);
    h.set_cksum();
    (*h.as_bytes(), body)
}

fn hostile_reason(raw: &[u8], o: &ExpandOptions) -> String {
    match try_expand(raw, o) {
        Err(Error::HostileEntry { reason, .. }) => reason,
        other => panic!("want HostileEntry, got {other:?}"),
    }
}

#[test]
fn near_one_mib_pax_path_is_refused_not_expanded() {
    // Fits the reader's 1 MiB extension cap, so only the path bound stops it.
    let long = "a".repeat((1 << 20) - 64);
    let raw = tar_of(&[
        pax_header(&[("path", long.as_bytes())]),
        (raw_header(b"short", b'0', 1, b""), b"x".to_vec()),
    ]);
    let reason = hostile_reason(&raw, &opts());
    assert!(reason.contains("longer than 4096"), "{reason}");
    // And a link target as long.
    let raw = tar_of(&[
        pax_header(&[("linkpath", long.as_bytes())]),
        (raw_header(b"s", b'2', 0, b"x"), vec![]),
    ]);
    assert!(hostile_reason(&raw, &opts()).contains("link target"));
}

#[test]
fn path_length_bound_is_exact() {
    // Components of 99 bytes (the depth bound is not what stops it), the last one padded.
    let name = |len: usize| {
        let mut s = "p".repeat(99);
        while s.len() + 100 <= len {
            s.push('/');
            s.push_str(&"p".repeat(99));
        }
        s.push_str(&"q".repeat(len - s.len()));
        s
    };
    let ok = name(4096);
    assert_eq!(ok.len(), 4096);
    let raw = tar_of(&[
        pax_header(&[("path", ok.as_bytes())]),
        (raw_header(b"x", b'0', 1, b""), b"x".to_vec()),
    ]);
    assert_eq!(try_expand(&raw, &opts()).unwrap().index.entries[0].path, ok);
    let bad = name(4097);
    let raw = tar_of(&[
        pax_header(&[("path", bad.as_bytes())]),
        (raw_header(b"x", b'0', 1, b""), b"x".to_vec()),
    ]);
    assert!(hostile_reason(&raw, &opts()).contains("4097 bytes"));
}

#[test]
fn path_depth_is_bounded() {
    let deep = |n: usize| vec!["d"; n].join("/");
    let raw = tar_of(&[
        pax_header(&[("path", deep(256).as_bytes())]),
        (raw_header(b"x", b'0', 1, b""), b"x".to_vec()),
    ]);
    assert!(try_expand(&raw, &opts()).is_ok());
    let raw = tar_of(&[
        pax_header(&[("path", deep(257).as_bytes())]),
        (raw_header(b"x", b'0', 1, b""), b"x".to_vec()),
    ]);
    let reason = hostile_reason(&raw, &opts());
    assert!(reason.contains("257 components"), "{reason}");
}

#[test]
fn xattr_bytes_are_bounded_per_entry_and_per_layer() {
    let big = vec![b'v'; 100 << 10];
    let raw = tar_of(&[
        pax_header(&[("SCHILY.xattr.user.big", &big)]),
        (raw_header(b"f", b'0', 1, b""), b"x".to_vec()),
    ]);
    let reason = hostile_reason(&raw, &opts());
    assert!(reason.contains("extended attributes"), "{reason}");

    // 40 entries of 60 KiB each: every entry is within bounds, the layer is not.
    let v = vec![b'v'; 60 << 10];
    let mut members = Vec::new();
    for i in 0..40 {
        members.push(pax_header(&[("SCHILY.xattr.user.a", &v)]));
        members.push((raw_header(format!("f{i}").as_bytes(), b'0', 0, b""), vec![]));
    }
    let raw = tar_of(&members);
    let o = ExpandOptions {
        max_layer_xattr_bytes: 1 << 20,
        ..opts()
    };
    assert!(matches!(
        try_expand(&raw, &o),
        Err(Error::MetadataLimit {
            what: "extended attributes",
            limit: 1_048_576
        })
    ));
    assert!(try_expand(&raw, &opts()).is_ok());
}

#[test]
fn in_memory_metadata_is_bounded() {
    let members: Vec<_> = (0..1000)
        .map(|i| {
            (
                raw_header(format!("dir/file-{i:05}").as_bytes(), b'0', 0, b""),
                vec![],
            )
        })
        .collect();
    let raw = tar_of(&members);
    let o = ExpandOptions {
        max_metadata_bytes: 100_000,
        ..opts()
    };
    let e = try_expand(&raw, &o).unwrap_err();
    assert!(
        matches!(e, Error::MetadataLimit { what, .. } if what.contains("metadata")),
        "{e}"
    );
    assert!(try_expand(&raw, &opts()).is_ok());
}

/// One file and `n` hardlinks: `chain` links each to the previous link, else all to the file.
fn hardlink_layer(n: usize, chain: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity((n + 4) * 512);
    out.extend_from_slice(&raw_header(b"f", b'0', 3, b""));
    let mut data = b"abc".to_vec();
    data.resize(512, 0);
    out.extend_from_slice(&data);
    for i in 0..n {
        let target = if chain && i > 0 {
            format!("l{}", i - 1)
        } else {
            "f".to_string()
        };
        out.extend_from_slice(&raw_header(
            format!("l{i}").as_bytes(),
            b'1',
            0,
            target.as_bytes(),
        ));
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

#[test]
fn two_hundred_thousand_hardlinks_resolve() {
    // Before: every link resolved by a backwards scan (O(n²)), a chain of links O(n²) per link.
    for chain in [false, true] {
        let n = 200_000;
        let raw = hardlink_layer(n, chain);
        let out = try_expand(&raw, &opts()).unwrap();
        let idx = &out.index;
        let owners = idx.hardlink_owners();
        assert!(owners.iter().all(|o| *o == Some(0)), "chain={chain}");
        let tree = emulator::merge(&[idx]).unwrap();
        let last = tree.get(&format!("l{}", n - 1)).unwrap();
        assert_eq!(last.entry.kind, emulator::EntryKind::File);
        assert_eq!(last.entry.size, 3);
        assert_eq!(last.origin, Some(0));
        let form = emulator::overlay_form(idx);
        let links = form
            .iter()
            .filter(|e| e.kind == emulator::EntryKind::Hardlink && e.link.as_deref() == Some("f"))
            .count();
        assert_eq!(links, n, "chain={chain}");
        // The entry cap refuses the same layer with a clear error.
        let o = ExpandOptions {
            max_entries: 100_000,
            ..opts()
        };
        let e = try_expand(&raw, &o).unwrap_err();
        assert!(matches!(e, Error::EntryLimit { limit: 100_000 }));
        assert!(e.to_string().contains("more than 100000 entries"), "{e}");
    }
}

#[test]
fn devices_fifos_and_setuid_are_kept_as_data() {
    let special = |name: &str, ty: u8, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::new(ty));
        h.set_mode(mode);
        h.set_size(size);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_cksum();
        *h.as_bytes()
    };
    let dev = special("dev/null", b'3', 0o666, 0);
    let suid = special("bin/su", b'0', 0o4755, 1);
    let raw = tar_of(&[
        (dev, vec![]),
        (raw_header(b"blk", b'4', 0, b""), vec![]),
        (raw_header(b"fifo", b'6', 0, b""), vec![]),
        (suid, b"x".to_vec()),
    ]);
    let out = try_expand(&raw, &opts()).unwrap();
    let e = &out.index.entries;
    use emulator::EntryKind as K;
    assert_eq!(
        (e[0].kind, e[0].rdev_major, e[0].rdev_minor),
        (K::CharDevice, 1, 3)
    );
    assert_eq!(e[1].kind, K::BlockDevice);
    assert_eq!(e[2].kind, K::Fifo);
    assert_eq!((e[3].kind, e[3].mode), (K::File, 0o4755));
}

#[test]
fn traversal_through_links_and_absolute_hardlinks() {
    // An absolute hardlink target is a layer path: it must name an earlier entry.
    assert_hostile(
        tar_of(&[(raw_header(b"l", b'1', 0, b"/etc/shadow"), vec![])]),
        "absolute hardlink",
    );
    // `..` hidden in a PAX path.
    assert_hostile(
        tar_of(&[
            pax_header(&[("path", b"a/b/../../../../x")]),
            (raw_header(b"ok", b'0', 1, b""), b"x".to_vec()),
        ]),
        "pax dotdot",
    );
    // Symlinks are kept verbatim (resolved inside the container, never on the host).
    let raw = tar_of(&[(raw_header(b"s", b'2', 0, b"../../../etc/shadow"), vec![])]);
    let out = try_expand(&raw, &opts()).unwrap();
    assert_eq!(
        out.index.entries[0].link.as_deref(),
        Some("../../../etc/shadow")
    );
}

#[test]
fn truncated_compressed_streams_fail() {
    let big = content(300_000, 7);
    let raw = tar_of(&[(raw_header(b"f", b'0', big.len() as u64, b""), big)]);
    for c in [Comp::Gzip, Comp::Zstd] {
        let blob = compress(&raw, c);
        for cut in [10, blob.len() / 2, blob.len() - 1] {
            assert!(
                matches!(try_expand(&blob[..cut], &opts()), Err(Error::Corrupt(_))),
                "{c:?} cut at {cut}"
            );
        }
        assert!(try_expand(&blob, &opts()).is_ok());
    }
}
