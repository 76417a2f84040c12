//! Random layer stacks for the merge properties: valid indexes built directly (no tar).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use emulator::merge::implied_dir;
use emulator::{ChunkInfo, Digest, Entry, EntryKind, Index};
use proptest::prelude::*;

#[derive(Clone, Debug)]
pub enum Op {
    File(u8),
    Dir,
    Symlink,
    Hardlink(usize),
    Fifo,
    Whiteout,
    Opaque,
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..8).prop_map(Op::File),
        4 => Just(Op::Dir),
        1 => Just(Op::Symlink),
        2 => (0usize..12).prop_map(Op::Hardlink),
        1 => Just(Op::Fifo),
        3 => Just(Op::Whiteout),
        2 => Just(Op::Opaque),
    ]
}

pub fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..4).prop_map(|v| v.join("/"))
}

pub type LayerSpec = Vec<(String, Op, u32)>;

pub fn layers_of(max_layers: usize, max_entries: usize) -> impl Strategy<Value = Vec<LayerSpec>> {
    prop::collection::vec(
        prop::collection::vec((path(), op(), 0u32..4), 0..max_entries),
        1..=max_layers,
    )
}

/// 1–40 layers of up to 11 entries.
pub fn layers() -> impl Strategy<Value = Vec<LayerSpec>> {
    layers_of(40, 12)
}

pub const DATA: u64 = 4096;

/// Can a hardlink at `link` name `target` now, with the same meaning in a real extraction: the
/// latest entry at `target` is a non-directory that is still there (no later entry replaced an
/// ancestor by a non-directory or put something under it).
fn linkable(entries: &[Entry], target: &str, link: &str) -> bool {
    if target == link
        || link.starts_with(&format!("{target}/"))
        || target.starts_with(&format!("{link}/"))
    {
        return false;
    }
    let Some(pos) = entries.iter().rposition(|x| x.path == target) else {
        return false;
    };
    let marker_or_dir = |k: EntryKind| {
        matches!(
            k,
            EntryKind::Dir | EntryKind::Whiteout | EntryKind::OpaqueDir
        )
    };
    if marker_or_dir(entries[pos].kind) {
        return false;
    }
    let under = format!("{target}/");
    entries[pos + 1..].iter().all(|x| {
        let ancestor = target.starts_with(&format!("{}/", x.path));
        !(x.path.starts_with(&under) || (ancestor && !marker_or_dir(x.kind)))
    })
}

/// Build a valid index (what expansion would produce) from a layer spec. File bytes are not
/// real: a file's identity is `(layer, data_offset)`; see [`content_of`].
pub fn index_of(li: usize, spec: &LayerSpec) -> Index {
    let mut entries: Vec<Entry> = Vec::new();
    for (i, (p, op, attr)) in spec.iter().enumerate() {
        let mut e = implied_dir(p);
        e.mode = [0o755, 0o700, 0o1777, 0o644][*attr as usize];
        e.uid = *attr * 1000;
        e.gid = *attr;
        e.mtime = (li * 100 + i) as i64;
        if *attr == 3 {
            e.xattrs = vec![("user.k".into(), vec![li as u8, i as u8])];
        }
        let op = match op {
            Op::Hardlink(t) => {
                match entries
                    .get(*t)
                    .map(|te| te.path.clone())
                    .filter(|tp| linkable(&entries, tp, p))
                {
                    Some(tp) => {
                        e.kind = EntryKind::Hardlink;
                        e.link = Some(tp);
                        e.xattrs.clear();
                        entries.push(e);
                        continue;
                    }
                    None => Op::File(0),
                }
            }
            o => o.clone(),
        };
        match op {
            Op::File(c) => {
                e.kind = EntryKind::File;
                e.size = u64::from(c) * 3;
                e.data_offset = if c == 0 {
                    0
                } else {
                    u64::from(c) * 64 + li as u64
                };
            }
            Op::Dir => {}
            Op::Symlink => {
                e.kind = EntryKind::Symlink;
                e.link = Some(format!("t{li}"));
            }
            Op::Fifo => e.kind = EntryKind::Fifo,
            Op::Whiteout => {
                e.kind = EntryKind::Whiteout;
                e.mode = 0o644;
            }
            Op::Opaque => {
                e.kind = EntryKind::OpaqueDir;
                e.mode = 0o644;
            }
            Op::Hardlink(_) => unreachable!(),
        }
        if !matches!(e.kind, EntryKind::File | EntryKind::Dir) {
            e.xattrs.clear();
        }
        entries.push(e);
    }
    let idx = Index {
        layer_digest: None,
        diff_id: Digest::sha256_of(&[li as u8]),
        chunk_size: 64 << 10,
        data_size: DATA,
        data_digest: Digest::sha256_of(b"data"),
        entries,
        chunks: vec![ChunkInfo {
            offset: 0,
            len: DATA as u32,
            digest: Digest::sha256_of(b"data"),
        }],
    };
    // Every generated index is one `decode` accepts (and encode/decode is lossless on it).
    assert_eq!(Index::decode(&idx.encode()).unwrap(), idx);
    idx
}

/// The bytes standing for the file at `data_offset` of layer `layer`.
pub fn content_of(layer: usize, data_offset: u64) -> Vec<u8> {
    format!("L{layer}@{data_offset}").into_bytes()
}
