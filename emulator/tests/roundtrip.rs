//! Property 1: expansion is faithful. For random layers (every entry kind, xattrs, long names,
//! PAX paths, `./` prefixes, duplicates, chunk-boundary sizes), in every compression, the index and
//! data give back exactly what an independent parse of the tar (the `tar` crate) sees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Cursor, Read};

use common::*;
use emulator::{expand, reader, Entry, EntryKind, ExpandOptions, Index};
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

/// What the `tar` crate sees, mapped to index terms by the OCI naming rules.
#[derive(Debug, PartialEq)]
struct Seen {
    path: String,
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    link: Option<String>,
    rdev: (u32, u32),
    xattrs: Vec<(String, Vec<u8>)>,
    data: Vec<u8>,
}

fn norm(b: &[u8]) -> String {
    let s = std::str::from_utf8(b).unwrap();
    s.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The `tar` crate's reader splits PAX records on newlines, so it cannot read binary xattr values
/// containing `\n`: xattrs come from the generator's specs (one tar member per spec).
fn independent_parse(raw: &[u8], specs: &[Spec]) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(raw);
    let mut specs = specs.iter();
    for te in ar.entries().unwrap() {
        let mut te = te.unwrap();
        let path = norm(&te.path_bytes());
        if path.is_empty() {
            continue;
        }
        let xattrs = specs.next().unwrap().xattrs.clone();
        let h = te.header().clone();
        let link = te.link_name_bytes().map(|l| l.into_owned());
        let mut data = Vec::new();
        te.read_to_end(&mut data).unwrap();
        let (dir, base) = match path.rsplit_once('/') {
            Some((d, b)) => (Some(d.to_string()), b.to_string()),
            None => (None, path.clone()),
        };
        let ty = h.entry_type();
        let (kind, path) = if base == ".wh..wh..opq" {
            (EntryKind::OpaqueDir, dir.unwrap())
        } else if let Some(rest) = base.strip_prefix(".wh.") {
            (
                EntryKind::Whiteout,
                dir.map(|d| format!("{d}/{rest}"))
                    .unwrap_or(rest.to_string()),
            )
        } else {
            let k = match ty {
                tar::EntryType::Regular => EntryKind::File,
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Symlink => EntryKind::Symlink,
                tar::EntryType::Link => EntryKind::Hardlink,
                tar::EntryType::Char => EntryKind::CharDevice,
                tar::EntryType::Block => EntryKind::BlockDevice,
                tar::EntryType::Fifo => EntryKind::Fifo,
                other => panic!("generator produced {other:?}"),
            };
            (k, path)
        };
        let is_dev = matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice);
        let link = match kind {
            EntryKind::Symlink => Some(String::from_utf8(link.unwrap()).unwrap()),
            EntryKind::Hardlink => Some(norm(&link.unwrap())),
            _ => None,
        };
        out.push(Seen {
            path,
            kind,
            mode: h.mode().unwrap() & 0o7777,
            uid: h.uid().unwrap() as u32,
            gid: h.gid().unwrap() as u32,
            mtime: h.mtime().unwrap() as i64,
            link,
            rdev: if is_dev {
                (
                    h.device_major().unwrap().unwrap(),
                    h.device_minor().unwrap().unwrap(),
                )
            } else {
                (0, 0)
            },
            xattrs,
            data: if kind == EntryKind::File {
                data
            } else {
                Vec::new()
            },
        });
    }
    out
}

fn seen_from_index(index: &Index, data: &[u8]) -> Vec<Seen> {
    index
        .entries
        .iter()
        .map(|e: &Entry| Seen {
            path: e.path.clone(),
            kind: e.kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            link: e.link.clone(),
            rdev: (e.rdev_major, e.rdev_minor),
            xattrs: e.xattrs.clone(),
            data: if e.kind == EntryKind::File {
                let b = reader::read_file_range(data, e, 0, usize::MAX).unwrap();
                assert_eq!(b.len() as u64, e.size);
                b
            } else {
                Vec::new()
            },
        })
        .collect()
}

fn opts() -> ExpandOptions {
    ExpandOptions {
        chunk_size: CHUNK,
        ..Default::default()
    }
}

fn check_layout(index: &Index, data: &[u8]) {
    assert_eq!(index.data_size, data.len() as u64);
    assert_eq!(index.data_digest.hex(), hex::encode(Sha256::digest(data)));
    let cs = u64::from(index.chunk_size);
    assert_eq!(index.chunks.len() as u64, index.data_size.div_ceil(cs));
    for (i, c) in index.chunks.iter().enumerate() {
        assert_eq!(c.offset, i as u64 * cs);
        let bytes = &data[c.offset as usize..(c.offset + u64::from(c.len)) as usize];
        assert_eq!(
            c.digest.hex(),
            hex::encode(Sha256::digest(bytes)),
            "chunk {i}"
        );
    }
    let mut by_content = std::collections::HashMap::new();
    for e in index
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File && e.size > 0)
    {
        if e.size < cs {
            assert_eq!(
                e.data_offset / cs,
                (e.data_offset + e.size - 1) / cs,
                "{} straddles a chunk",
                e.path
            );
        } else {
            assert_eq!(e.data_offset % cs, 0, "{} not chunk aligned", e.path);
        }
        let bytes = &data[e.data_offset as usize..(e.data_offset + e.size) as usize];
        let h: [u8; 32] = Sha256::digest(bytes).into();
        let off = *by_content.entry(h).or_insert(e.data_offset);
        assert_eq!(off, e.data_offset, "identical contents stored twice");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn expansion_is_faithful((specs, root) in layer_strategy(20), comp in comp_strategy()) {
        let raw = build_tar(&specs, root);
        let blob = compress(&raw, comp);
        let mut sink = Cursor::new(Vec::new());
        let out = expand(&blob[..], None, None, &mut sink, &opts()).unwrap();
        let data = sink.into_inner();

        prop_assert_eq!(out.index.diff_id.hex(), hex::encode(Sha256::digest(&raw)));
        prop_assert_eq!(out.uncompressed_size, raw.len() as u64);
        prop_assert_eq!(out.compressed_size, blob.len() as u64);
        check_layout(&out.index, &data);
        prop_assert_eq!(seen_from_index(&out.index, &data), independent_parse(&raw, &specs));
        prop_assert_eq!(Index::decode(&out.index_bytes).unwrap(), out.index.clone());
        prop_assert_eq!(out.index.encode(), out.index_bytes.clone());

        // to_tar → expand again: same entries and data layout.
        let mut rebuilt = Vec::new();
        reader::to_tar(&out.index, &data[..], &mut rebuilt).unwrap();
        let mut sink2 = Cursor::new(Vec::new());
        let again = expand(&rebuilt[..], None, None, &mut sink2, &opts()).unwrap();
        prop_assert_eq!(&again.index.entries, &out.index.entries);
        prop_assert_eq!(&again.index.chunks, &out.index.chunks);
        prop_assert_eq!(&again.index.data_digest, &out.index.data_digest);
        prop_assert_eq!(sink2.into_inner(), data);
    }
}
