//! Basic expansion behaviour on hand-built layers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Cursor, Write};

use emulator::{expand, reader, Entry, EntryKind, Error, ExpandOptions, Index};
use sha2::{Digest as _, Sha256};

fn opts() -> ExpandOptions {
    ExpandOptions {
        chunk_size: 64 << 10,
        ..Default::default()
    }
}

fn hdr(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

fn sample_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = hdr(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, "./etc/", std::io::empty()).unwrap();
    let mut h = hdr(tar::EntryType::Regular, 0o644, 5);
    b.append_data(&mut h, "./etc/hosts", &b"hello"[..]).unwrap();
    let mut h = hdr(tar::EntryType::Regular, 0o600, 5);
    b.append_data(&mut h, "etc/copy", &b"hello"[..]).unwrap();
    let big = vec![7u8; 100_000];
    let mut h = hdr(tar::EntryType::Regular, 0o644, big.len() as u64);
    b.append_data(&mut h, "big", &big[..]).unwrap();
    let mut h = hdr(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "etc/link", "/etc/hosts").unwrap();
    let mut h = hdr(tar::EntryType::Link, 0o644, 0);
    b.append_link(&mut h, "etc/hard", "./etc/hosts").unwrap();
    let mut h = hdr(tar::EntryType::Regular, 0o644, 0);
    b.append_data(&mut h, "var/.wh.cache", std::io::empty())
        .unwrap();
    let mut h = hdr(tar::EntryType::Regular, 0o644, 0);
    b.append_data(&mut h, "opt/.wh..wh..opq", std::io::empty())
        .unwrap();
    b.into_inner().unwrap()
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(raw).unwrap();
    e.finish().unwrap()
}

#[test]
fn expands_gzip_layer() {
    let raw = sample_tar();
    let blob = gzip(&raw);
    let mut data = Cursor::new(Vec::new());
    let out = expand(
        &blob[..],
        Some(emulator::oci::MT_OCI_LAYER_GZIP),
        None,
        &mut data,
        &opts(),
    )
    .unwrap();
    let data = data.into_inner();
    assert_eq!(out.index.diff_id.hex(), hex::encode(Sha256::digest(&raw)));
    assert_eq!(out.uncompressed_size, raw.len() as u64);
    assert_eq!(out.compressed_size, blob.len() as u64);
    assert_eq!(out.index.data_size, data.len() as u64);
    assert_eq!(
        out.index.data_digest.hex(),
        hex::encode(Sha256::digest(&data))
    );
    let paths: Vec<(&str, EntryKind)> = out
        .index
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.kind))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("etc", EntryKind::Dir),
            ("etc/hosts", EntryKind::File),
            ("etc/copy", EntryKind::File),
            ("big", EntryKind::File),
            ("etc/link", EntryKind::Symlink),
            ("etc/hard", EntryKind::Hardlink),
            ("var/cache", EntryKind::Whiteout),
            ("opt", EntryKind::OpaqueDir),
        ]
    );
    let hosts: &Entry = out.index.find("etc/hosts").unwrap();
    let copy = out.index.find("etc/copy").unwrap();
    assert_eq!(
        hosts.data_offset, copy.data_offset,
        "identical contents stored once"
    );
    assert_eq!(
        (hosts.uid, hosts.gid, hosts.mode, hosts.mtime),
        (1000, 1001, 0o644, 1_700_000_000)
    );
    assert_eq!(
        reader::read_file_range(&data[..], hosts, 1, 3).unwrap(),
        b"ell"
    );
    assert_eq!(
        reader::read_entry_range(&out.index, &data[..], 5, 0, 10).unwrap(),
        b"hello"
    );
    let big = out.index.find("big").unwrap();
    assert_eq!(
        big.data_offset % (64 << 10),
        0,
        "big file starts on a chunk boundary"
    );
    assert_eq!(
        reader::read_file_range(&data[..], big, 0, 200_000).unwrap(),
        vec![7u8; 100_000]
    );
    assert_eq!(
        out.index.find("etc/link").unwrap().link.as_deref(),
        Some("/etc/hosts")
    );
    assert_eq!(
        out.index.find("etc/hard").unwrap().link.as_deref(),
        Some("etc/hosts")
    );
    let decoded = Index::decode(&out.index_bytes).unwrap();
    assert_eq!(decoded, out.index);
}

#[test]
fn zstd_and_plain_give_same_index() {
    let raw = sample_tar();
    let z = zstd::encode_all(&raw[..], 3).unwrap();
    let a = expand(&z[..], None, None, Cursor::new(Vec::new()), &opts()).unwrap();
    let b = expand(
        &raw[..],
        Some(emulator::oci::MT_OCI_LAYER_TAR),
        None,
        Cursor::new(Vec::new()),
        &opts(),
    )
    .unwrap();
    assert_eq!(a.index, b.index);
}

#[test]
fn rejects_dotdot_and_truncation() {
    let mut raw = Vec::new();
    {
        let mut h = hdr(tar::EntryType::Regular, 0o644, 1);
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        raw.extend_from_slice(h.as_bytes());
        raw.extend_from_slice(&[b'x'; 512]);
        raw.extend_from_slice(&[0; 1024]);
    }
    let err = expand(&raw[..], None, None, Cursor::new(Vec::new()), &opts()).unwrap_err();
    assert!(matches!(err, Error::HostileEntry { .. }), "{err}");

    let good = sample_tar();
    for cut in [100, 512, 1024, good.len() - 1024, good.len() - 1] {
        let r = expand(&good[..cut], None, None, Cursor::new(Vec::new()), &opts());
        assert!(r.is_err(), "plain tar cut at {cut} accepted");
    }
    let gz = gzip(&good);
    for cut in [10, gz.len() / 2, gz.len() - 4, gz.len() - 1] {
        let r = expand(&gz[..cut], None, None, Cursor::new(Vec::new()), &opts());
        assert!(
            matches!(r, Err(Error::Corrupt(_))),
            "gzip cut at {cut}: {r:?}"
        );
    }
    let z = zstd::encode_all(&good[..], 3).unwrap();
    for cut in [10, z.len() / 2, z.len() - 1] {
        let r = expand(&z[..cut], None, None, Cursor::new(Vec::new()), &opts());
        assert!(
            matches!(r, Err(Error::Corrupt(_))),
            "zstd cut at {cut}: {r:?}"
        );
    }
}

/// Files above the in-memory threshold (4 MiB) are streamed; a streamed duplicate is rolled back
/// and the bytes that follow overwrite its stale copy.
#[test]
fn streamed_duplicates_roll_back() {
    let big: Vec<u8> = (0..(5u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut other = big.clone();
    other[12345] ^= 1;
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("one", &big[..]),
        ("two", &big[..]),
        ("small", &b"tail"[..]),
        ("three", &other[..]),
        ("four", &big[..]),
    ] {
        let mut h = hdr(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    }
    let raw = b.into_inner().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let mut f = std::fs::File::create(&path).unwrap();
    let out = emulator::expand_to_file(&raw[..], None, None, &mut f, &opts()).unwrap();
    drop(f);
    let data = std::fs::read(&path).unwrap();
    assert_eq!(
        data.len() as u64,
        out.index.data_size,
        "stale tail truncated"
    );
    let e = |p: &str| out.index.find(p).unwrap().clone();
    assert_eq!(e("two").data_offset, e("one").data_offset);
    assert_eq!(e("four").data_offset, e("one").data_offset);
    assert_ne!(e("three").data_offset, e("one").data_offset);
    // `small` was written where the rolled-back copy of `two` had started.
    assert_eq!(
        e("small").data_offset,
        e("one").data_offset + big.len() as u64
    );
    assert_eq!(
        reader::read_file_range(&data[..], &e("small"), 0, 10).unwrap(),
        b"tail"
    );
    assert_eq!(
        reader::read_file_range(&data[..], &e("three"), 0, usize::MAX).unwrap(),
        other
    );
    assert_eq!(
        reader::read_file_range(&data[..], &e("four"), 0, usize::MAX).unwrap(),
        big
    );
    assert_eq!(
        out.index.data_digest.hex(),
        hex::encode(Sha256::digest(&data))
    );
    for c in &out.index.chunks {
        let bytes = &data[c.offset as usize..(c.offset + u64::from(c.len)) as usize];
        assert_eq!(c.digest.hex(), hex::encode(Sha256::digest(bytes)));
    }
}

#[test]
fn chunk_size_bounds_and_small_chunks_decode() {
    let raw = sample_tar();
    let run = |cs: u32| {
        let mut data = Cursor::new(Vec::new());
        let o = ExpandOptions {
            chunk_size: cs,
            ..Default::default()
        };
        expand(
            &raw[..],
            Some(emulator::oci::MT_OCI_LAYER_TAR),
            None,
            &mut data,
            &o,
        )
        .map(|out| (out, data.into_inner()))
    };
    // The smallest chunk size the expander writes: a v1 index any reader decodes, every chunk
    // digest matching its bytes, the 100 000-byte file starting on a boundary.
    let (out, data) = run(emulator::MIN_EXPAND_CHUNK_SIZE).unwrap();
    let idx = Index::decode(&out.index_bytes).unwrap();
    assert_eq!(idx.chunk_size, 16 << 10);
    assert_eq!(idx.chunks.len() as u64, idx.data_size.div_ceil(16 << 10));
    for c in &idx.chunks {
        let bytes = &data[c.offset as usize..(c.offset + u64::from(c.len)) as usize];
        assert_eq!(emulator::Digest::sha256_of(bytes), c.digest);
    }
    assert_eq!(idx.find("big").unwrap().data_offset % (16 << 10), 0);
    for bad in [8 << 10, 100_000, 32 << 20] {
        assert!(matches!(run(bad), Err(Error::Format(_))), "{bad}");
    }
}
