//! Shared helpers for the emulator's integration tests: random layer specs, tar building,
//! compression.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod stack;

use std::io::Write;

use proptest::prelude::*;

/// Chunk size used by tests: small, so small data crosses chunk boundaries.
pub const CHUNK: u32 = 64 << 10;

pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
        .max(256)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub fn compress(raw: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::None => raw.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(raw).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(raw, 1).unwrap(),
    }
}

pub fn comp_strategy() -> impl Strategy<Value = Comp> {
    prop_oneof![Just(Comp::None), Just(Comp::Gzip), Just(Comp::Zstd)]
}

/// Deterministic content from (size, seed): equal pairs give equal bytes (dedupe fodder).
pub fn content(size: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed).wrapping_mul(0x85eb_ca6b);
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Sizes around the interesting boundaries for a 64 KiB chunk and 512-byte tar blocks.
pub const SIZES: &[usize] = &[
    0, 1, 7, 511, 512, 513, 3000, 65_535, 65_536, 65_537, 100_000,
];

#[derive(Clone, Debug)]
pub enum SpecKind {
    File {
        size: usize,
        seed: u8,
    },
    Dir,
    Symlink(String),
    /// Hard link to the entry at this (earlier) position, if eligible; else becomes an empty file.
    Hardlink(usize),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    Whiteout,
    Opaque,
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub path: String,
    pub kind: SpecKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// How the name is spelled in the tar.
    pub dot_slash: bool,
    pub pax_path: bool,
}

fn name_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["a", "b", "c", "d", "usr", "x.txt"]).prop_map(String::from),
        1 => "[a-z]{60,90}".prop_map(String::from),
    ]
}

pub fn path_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(name_strategy(), 1..4).prop_map(|v| v.join("/"))
}

fn kind_strategy() -> impl Strategy<Value = SpecKind> {
    prop_oneof![
        // Mostly small files; chunk-sized ones (the slow part in debug builds) often enough to
        // cross boundaries in most layers.
        6 => (prop::sample::select(&SIZES[..7]), 0u8..3).prop_map(|(size, seed)| SpecKind::File { size, seed }),
        2 => (prop::sample::select(&SIZES[7..]), 0u8..3).prop_map(|(size, seed)| SpecKind::File { size, seed }),
        3 => Just(SpecKind::Dir),
        2 => prop_oneof![Just("/etc/hosts".to_string()), Just("../up".to_string()), "[a-z/]{1,120}"].prop_map(SpecKind::Symlink),
        2 => (0usize..64).prop_map(SpecKind::Hardlink),
        1 => (1u32..300, 0u32..300).prop_map(|(a, b)| SpecKind::Char(a, b)),
        1 => (1u32..300, 0u32..300).prop_map(|(a, b)| SpecKind::Block(a, b)),
        1 => Just(SpecKind::Fifo),
        1 => Just(SpecKind::Whiteout),
        1 => Just(SpecKind::Opaque),
    ]
}

fn xattrs_strategy() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec(
        (
            prop::sample::select(vec![
                "user.a",
                "user.comment",
                "security.capability",
                "trusted.x",
            ]),
            prop::collection::vec(any::<u8>(), 0..20),
        )
            .prop_map(|(k, v)| (k.to_string(), v)),
        0..3,
    )
    .prop_map(|mut v| {
        // One value per name, like a real filesystem.
        let mut seen = std::collections::HashSet::new();
        v.retain(|(k, _)| seen.insert(k.clone()));
        v
    })
}

pub fn spec_strategy() -> impl Strategy<Value = Spec> {
    (
        path_strategy(),
        kind_strategy(),
        0u32..=0o7777,
        prop_oneof![Just(0u64), Just(1000), 0u64..70_000, Just(3_000_000_000)],
        prop_oneof![Just(0u64), Just(1000), 0u64..70_000],
        prop_oneof![Just(0u64), 0u64..(1 << 33) - 1],
        xattrs_strategy(),
        any::<bool>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(path, kind, mode, uid, gid, mtime, xattrs, dot_slash, pax_path)| Spec {
                path,
                kind,
                mode,
                uid,
                gid,
                mtime,
                xattrs,
                dot_slash,
                pax_path,
            },
        )
}

pub fn layer_strategy(max: usize) -> impl Strategy<Value = (Vec<Spec>, bool)> {
    (
        prop::collection::vec(spec_strategy(), 0..max),
        any::<bool>(),
    )
}

/// Build a tar from specs (`root_entry`: start with a `./` directory entry, as many tools do).
/// Hardlinks to ineligible entries become empty files.
pub fn build_tar(specs: &[Spec], root_entry: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    if root_entry {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(5);
        b.append_data(&mut h, "./", std::io::empty()).unwrap();
    }
    // Kind of the latest entry at each path (for hardlink eligibility).
    let mut latest: std::collections::HashMap<String, bool> = Default::default();
    for (si, s) in specs.iter().enumerate() {
        let mut kind = s.kind.clone();
        if let SpecKind::Hardlink(i) = kind {
            let ok = specs
                .get(i)
                .filter(|t| i < si && t.path != s.path)
                .map(|t| t.path.clone());
            kind = match ok {
                Some(p) if latest.get(&p) == Some(&true) => SpecKind::Hardlink(i),
                _ => SpecKind::File { size: 0, seed: 0 },
            };
        }
        let (name, data): (String, Vec<u8>) = match &kind {
            SpecKind::Whiteout => {
                let (dir, base) = split(&s.path);
                (join(dir, &format!(".wh.{base}")), Vec::new())
            }
            SpecKind::Opaque => (format!("{}/.wh..wh..opq", s.path), Vec::new()),
            SpecKind::Dir => (format!("{}/", s.path), Vec::new()),
            SpecKind::File { size, seed } => (s.path.clone(), content(*size, *seed)),
            _ => (s.path.clone(), Vec::new()),
        };
        let name = if s.dot_slash {
            format!("./{name}")
        } else {
            name
        };
        let mut h = tar::Header::new_gnu();
        h.set_mode(s.mode);
        h.set_uid(s.uid);
        h.set_gid(s.gid);
        h.set_mtime(s.mtime);
        h.set_size(data.len() as u64);
        let ty = match &kind {
            SpecKind::File { .. } | SpecKind::Whiteout | SpecKind::Opaque => {
                tar::EntryType::Regular
            }
            SpecKind::Dir => tar::EntryType::Directory,
            SpecKind::Symlink(_) => tar::EntryType::Symlink,
            SpecKind::Hardlink(_) => tar::EntryType::Link,
            SpecKind::Char(..) => tar::EntryType::Char,
            SpecKind::Block(..) => tar::EntryType::Block,
            SpecKind::Fifo => tar::EntryType::Fifo,
        };
        h.set_entry_type(ty);
        if let SpecKind::Char(a, m) | SpecKind::Block(a, m) = kind {
            h.set_device_major(a).unwrap();
            h.set_device_minor(m).unwrap();
        }
        // `path` first: the tar crate (the tests' independent reader) stops reading PAX records
        // at a value containing a newline.
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if s.pax_path {
            pax.push(("path".into(), name.clone().into_bytes()));
        }
        pax.extend(
            s.xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone())),
        );
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
        if s.pax_path {
            // The header's own name is a (wrong) placeholder: PAX `path` must win.
            let placeholder = "pax-placeholder";
            h.as_gnu_mut().unwrap().name[..placeholder.len()]
                .copy_from_slice(placeholder.as_bytes());
            if let SpecKind::Symlink(t) = &kind {
                pax_link(&mut b, &mut h, t);
                continue_latest(&mut latest, s, &kind);
                continue;
            }
            if let SpecKind::Hardlink(i) = kind {
                let t = specs[i].path.clone();
                pax_link(&mut b, &mut h, &t);
                continue_latest(&mut latest, s, &kind);
                continue;
            }
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
        } else {
            match &kind {
                SpecKind::Symlink(t) => b.append_link(&mut h, &name, t).unwrap(),
                SpecKind::Hardlink(i) => {
                    let t = &specs[*i].path;
                    b.append_link(&mut h, &name, t).unwrap()
                }
                _ => b.append_data(&mut h, &name, &data[..]).unwrap(),
            }
        }
        continue_latest(&mut latest, s, &kind);
    }
    b.into_inner().unwrap()
}

/// Append a link entry whose path came from PAX: the link name goes in the header if it fits,
/// else as a GNU long link record, written by hand.
fn pax_link(b: &mut tar::Builder<Vec<u8>>, h: &mut tar::Header, target: &str) {
    if target.len() <= 100 {
        h.set_link_name(target).unwrap();
    } else {
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::GNULongLink);
        l.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        l.set_mode(0o644);
        l.set_size(target.len() as u64 + 1);
        l.set_cksum();
        let mut t = target.as_bytes().to_vec();
        t.push(0);
        b.append(&l, &t[..]).unwrap();
    }
    h.set_size(0);
    h.set_cksum();
    b.append(h, std::io::empty()).unwrap();
}

fn continue_latest(
    latest: &mut std::collections::HashMap<String, bool>,
    s: &Spec,
    kind: &SpecKind,
) {
    let linkable = !matches!(kind, SpecKind::Dir | SpecKind::Whiteout | SpecKind::Opaque);
    latest.insert(s.path.clone(), linkable);
}

fn split(p: &str) -> (&str, &str) {
    match p.rsplit_once('/') {
        Some((d, b)) => (d, b),
        None => ("", p),
    }
}

fn join(dir: &str, base: &str) -> String {
    if dir.is_empty() {
        base.to_string()
    } else {
        format!("{dir}/{base}")
    }
}
