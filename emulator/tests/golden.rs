//! The v1 golden: one small index, committed. Decoding it must keep working and keep giving these
//! fields; encoding the same layer must keep giving these bytes. A change that breaks this test is
//! a format version bump (new `format::v2`), never a regenerated golden.
//!
//! (Re)create the file only for a new version: `EMULATOR_WRITE_GOLDEN=1 cargo test -p emulator --test golden`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::PathBuf;

use emulator::{expand, reader, Digest, EntryKind, ExpandOptions, Index};
use sha2::{Digest as _, Sha256};

fn header(name: &str, ty: u8, size: u64, link: &str, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    {
        let u = h.as_ustar_mut().unwrap();
        u.name[..name.len()].copy_from_slice(name.as_bytes());
        u.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(tar::EntryType::new(ty));
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(100);
    h.set_mtime(1_600_000_000);
    h.set_size(size);
    h
}

/// A deterministic layer, written byte by byte (no tar writer whose output could drift).
fn golden_tar() -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |mut h: tar::Header, data: &[u8]| {
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    };
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    put(header("etc/", b'5', 0, "", 0o755), b"");
    put(
        header("etc/hosts", b'0', 20, "", 0o644),
        b"127.0.0.1 localhost\n",
    );
    put(
        header("etc/hosts.bak", b'0', 20, "", 0o600),
        b"127.0.0.1 localhost\n",
    );
    put(header("big.bin", b'0', big.len() as u64, "", 0o644), &big);
    put(
        header("etc/localtime", b'2', 0, "/usr/share/zoneinfo/UTC", 0o777),
        b"",
    );
    put(header("etc/hosts.link", b'1', 0, "etc/hosts", 0o644), b"");
    put(header("dev/null", b'3', 0, "", 0o666), b"");
    put(header("run/fifo", b'6', 0, "", 0o600), b"");
    put(header("var/.wh.cache", b'0', 0, "", 0o644), b"");
    put(header("opt/.wh..wh..opq", b'0', 0, "", 0o644), b"");
    let mut hdev = header("dev/sda", b'4', 0, "", 0o660);
    hdev.set_device_major(8).unwrap();
    hdev.set_device_minor(1).unwrap();
    put(hdev, b"");
    out.extend_from_slice(&[0; 1024]);
    out
}

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1-index.bin")
}

fn layer_digest() -> Digest {
    Digest::sha256_of(b"golden layer")
}

fn expand_golden() -> (emulator::Expanded, Vec<u8>) {
    let raw = golden_tar();
    let mut data = Cursor::new(Vec::new());
    let opts = ExpandOptions {
        chunk_size: 64 << 10,
        ..Default::default()
    };
    let out = expand(&raw[..], None, Some(&layer_digest()), &mut data, &opts).unwrap();
    (out, data.into_inner())
}

#[test]
fn golden_v1_index_decodes_and_matches() {
    let (out, data) = expand_golden();
    if std::env::var_os("EMULATOR_WRITE_GOLDEN").is_some() {
        std::fs::write(golden_path(), &out.index_bytes).unwrap();
    }
    let golden = std::fs::read(golden_path()).expect("golden file is committed");
    assert_eq!(
        out.index_bytes, golden,
        "encoding changed: that is a new format version"
    );

    let idx = Index::decode(&golden).unwrap();
    assert_eq!(&golden[..8], b"TPXINDEX");
    assert_eq!(u32::from_le_bytes(golden[8..12].try_into().unwrap()), 1);
    assert_eq!(idx.layer_digest, Some(layer_digest()));
    assert_eq!(idx.diff_id.hex(), hex::encode(Sha256::digest(golden_tar())));
    assert_eq!(idx.chunk_size, 64 << 10);
    // hosts (20 bytes) at 0; its duplicate shares it; big.bin (70000 >= chunk) starts at 65536.
    assert_eq!(idx.data_size, 65_536 + 70_000);
    assert_eq!(idx.chunks.len(), 3);
    assert_eq!(
        (idx.chunks[2].offset, idx.chunks[2].len),
        (131_072, 65_536 + 70_000 - 131_072)
    );
    let kinds: Vec<(&str, EntryKind, u32)> = idx
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.kind, e.mode))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("etc", EntryKind::Dir, 0o755),
            ("etc/hosts", EntryKind::File, 0o644),
            ("etc/hosts.bak", EntryKind::File, 0o600),
            ("big.bin", EntryKind::File, 0o644),
            ("etc/localtime", EntryKind::Symlink, 0o777),
            ("etc/hosts.link", EntryKind::Hardlink, 0o644),
            ("dev/null", EntryKind::CharDevice, 0o666),
            ("run/fifo", EntryKind::Fifo, 0o600),
            ("var/cache", EntryKind::Whiteout, 0o644),
            ("opt", EntryKind::OpaqueDir, 0o644),
            ("dev/sda", EntryKind::BlockDevice, 0o660),
        ]
    );
    let e = |p: &str| idx.find(p).unwrap();
    assert_eq!((e("etc/hosts").data_offset, e("etc/hosts").size), (0, 20));
    assert_eq!(e("etc/hosts.bak").data_offset, 0);
    assert_eq!(
        (e("big.bin").data_offset, e("big.bin").size),
        (65_536, 70_000)
    );
    assert_eq!(
        e("etc/localtime").link.as_deref(),
        Some("/usr/share/zoneinfo/UTC")
    );
    assert_eq!(e("etc/hosts.link").link.as_deref(), Some("etc/hosts"));
    assert_eq!((e("dev/sda").rdev_major, e("dev/sda").rdev_minor), (8, 1));
    assert!(idx
        .entries
        .iter()
        .all(|e| e.uid == 1000 && e.gid == 100 && e.mtime == 1_600_000_000));
    assert_eq!(
        reader::read_file_range(&data[..], e("etc/hosts"), 0, 100).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    assert_eq!(idx.data_digest.hex(), hex::encode(Sha256::digest(&data)));
}
