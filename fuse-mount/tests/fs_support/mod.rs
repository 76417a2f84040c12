//! Shared helpers of the `fs_*` tests: a test image (tar layers) and tree walks (mount guards
//! and prerequisites come from the test kit).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

#[allow(unused_imports)] // each fs_* test uses some of them
pub use testkit::{mounts_under, KernelMount, NoMountsLeft};

/// Chunk size of the test layers: small, so the big file spans many chunks.
pub const CHUNK: u32 = 64 << 10;

/// Deterministic pseudo-random bytes (the kit's generator, arguments in this file's order).
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    testkit::image::random_bytes(len, seed)
}

pub fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub enum Item {
    Dir(&'static str, u32, u32),
    File(&'static str, u32, u32, Vec<u8>),
    FileX(&'static str, Vec<u8>, &'static str, &'static [u8]),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    Char(&'static str, u32, u32),
    Fifo(&'static str),
    /// A raw marker name (`dir/.wh.x`, `dir/.wh..wh..opq`).
    Marker(&'static str),
}

const MTIME: u64 = 1_700_000_000;

fn header(kind: tar::EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "LEN key=value\n" where LEN counts itself.
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

pub fn tar_layer(items: &[Item]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for it in items {
        match it {
            Item::Dir(p, mode, uid) => {
                let mut h = header(tar::EntryType::Directory, *mode, u64::from(*uid), 0);
                b.append_data(&mut h, format!("{p}/"), std::io::empty())
                    .unwrap();
            }
            Item::File(p, mode, uid, data) => {
                let mut h = header(
                    tar::EntryType::Regular,
                    *mode,
                    u64::from(*uid),
                    data.len() as u64,
                );
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            Item::FileX(p, data, key, val) => {
                let pax = pax_record(&format!("SCHILY.xattr.{key}"), val);
                let mut x = header(tar::EntryType::XHeader, 0o644, 0, pax.len() as u64);
                b.append_data(&mut x, "PaxHeaders/x", &pax[..]).unwrap();
                let mut h = header(tar::EntryType::Regular, 0o644, 0, data.len() as u64);
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            Item::Symlink(p, t) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
                b.append_link(&mut h, p, t).unwrap();
            }
            Item::Hardlink(p, t) => {
                let mut h = header(tar::EntryType::Link, 0o755, 0, 0);
                b.append_link(&mut h, p, t).unwrap();
            }
            Item::Char(p, maj, min) => {
                let mut h = header(tar::EntryType::Char, 0o666, 0, 0);
                h.set_device_major(*maj).unwrap();
                h.set_device_minor(*min).unwrap();
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Item::Fifo(p) => {
                let mut h = header(tar::EntryType::Fifo, 0o644, 0, 0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Item::Marker(p) => {
                let mut h = header(tar::EntryType::Regular, 0o644, 0, 0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn big_file() -> Vec<u8> {
    bytes(1, 3 * (CHUNK as usize) * 4 + 12_345)
}
pub fn lonely_file() -> Vec<u8> {
    bytes(9, 300_000)
}

/// Three layers exercising every entry kind, whiteouts, an opaque dir, hardlinks, xattrs,
/// a multi-chunk file and duplicate contents.
pub fn test_layers() -> Vec<Vec<u8>> {
    let l0 = tar_layer(&[
        Item::Dir("etc", 0o755, 0),
        Item::File("etc/passwd", 0o644, 0, b"root:x:0:0\n".to_vec()),
        Item::Dir("etc/conf", 0o750, 0),
        Item::File("etc/conf/a.conf", 0o600, 1000, b"a=1\n".to_vec()),
        Item::Dir("usr", 0o755, 0),
        Item::Dir("usr/bin", 0o755, 0),
        Item::File("usr/bin/tool", 0o4755, 1000, bytes(2, 5000)),
        Item::Hardlink("usr/bin/tool2", "usr/bin/tool"),
        Item::Symlink("bin", "usr/bin"),
        Item::Dir("data", 0o755, 0),
        Item::File("data/big.bin", 0o644, 0, big_file()),
        Item::FileX(
            "data/small.txt",
            b"small\n".to_vec(),
            "user.note",
            b"hi\0there",
        ),
        Item::File("data/lonely.bin", 0o644, 0, lonely_file()),
        Item::Dir("dev", 0o755, 0),
        Item::Char("dev/null", 1, 3),
        Item::Fifo("dev/fifo"),
        Item::Dir("opq", 0o755, 0),
        Item::File("opq/x", 0o644, 0, b"x".to_vec()),
        Item::File("opq/y", 0o644, 0, b"y".to_vec()),
        Item::File("gone.txt", 0o644, 0, b"gone".to_vec()),
        Item::Dir("gonedir", 0o755, 0),
        Item::File("gonedir/f", 0o644, 0, b"f".to_vec()),
    ]);
    let l1 = tar_layer(&[
        Item::Marker(".wh.gone.txt"),
        Item::Marker(".wh.gonedir"),
        Item::Dir("opq", 0o711, 0),
        Item::Marker("opq/.wh..wh..opq"),
        Item::File("opq/z", 0o644, 0, b"z".to_vec()),
        Item::Dir("etc", 0o755, 0),
        Item::File(
            "etc/passwd",
            0o644,
            0,
            b"root:x:0:0\nuser:x:1000:1000\n".to_vec(),
        ),
        Item::Dir("data", 0o755, 0),
        Item::File("data/new.bin", 0o644, 0, bytes(3, 200_000)),
        Item::File("data/dup.txt", 0o644, 0, b"small\n".to_vec()),
    ]);
    let l2 = tar_layer(&[
        Item::Dir("etc", 0o700, 0),
        Item::Dir("etc/conf", 0o750, 0),
        Item::File("etc/conf/b.conf", 0o644, 0, b"b=2\n".to_vec()),
        Item::Dir("usr", 0o755, 0),
        Item::Dir("usr/bin", 0o755, 0),
        Item::Marker("etc/conf/.wh.a.conf"),
    ]);
    // No parent entries: `etc` and `etc/conf` are implied and keep their lower attributes.
    let l3 = tar_layer(&[Item::File("etc/conf/c.conf", 0o644, 0, b"c=3\n".to_vec())]);
    vec![l0, l1, l2, l3]
}

/// What one path looks like, as far as both views must agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub blocks: u64,
    pub mtime: i64,
    /// Files: nlink; dirs: not compared (overlayfs reports 1 for merged dirs).
    pub nlink: u64,
    pub rdev: u64,
    pub link: Option<String>,
    pub sha: Option<String>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Files with nlink > 1: the smallest path sharing the inode.
    pub inode_group: Option<String>,
}

fn user_xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: buffers are valid for their lengths.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "llistxattr {p:?}: {}",
        std::io::Error::last_os_error()
    );
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
    {
        let name = String::from_utf8(name.to_vec()).unwrap();
        if !name.starts_with("user.") {
            continue;
        }
        let cn = CString::new(name.clone()).unwrap();
        let mut val = vec![0u8; 4096];
        // SAFETY: as above.
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(m >= 0, "lgetxattr {p:?} {name}");
        val.truncate(m as usize);
        out.push((name, val));
    }
    out.sort();
    out
}

/// Walk `root` with std::fs, reading every regular file whole.
pub fn walk(root: &Path) -> BTreeMap<String, Meta> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let relp = rel.join(e.file_name());
            let p = root.join(&relp);
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_file() {
                "file"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_char_device() {
                "char"
            } else if ft.is_block_device() {
                "block"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "other"
            };
            let key = relp.to_string_lossy().into_owned();
            if ft.is_file() {
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(key.clone());
            }
            out.insert(
                key,
                Meta {
                    kind,
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    size: if ft.is_dir() { 0 } else { md.size() },
                    blocks: if ft.is_dir() { 0 } else { md.blocks() },
                    mtime: md.mtime(),
                    nlink: if ft.is_dir() { 0 } else { md.nlink() },
                    rdev: md.rdev(),
                    link: ft.is_symlink().then(|| {
                        std::fs::read_link(&p)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned()
                    }),
                    sha: ft.is_file().then(|| sha(&std::fs::read(&p).unwrap())),
                    xattrs: user_xattrs(&p),
                    inode_group: None,
                },
            );
            if ft.is_dir() {
                stack.push(relp);
            }
        }
    }
    for paths in inodes.values().filter(|v| v.len() > 1) {
        let first = paths.iter().min().unwrap().clone();
        for p in paths {
            out.get_mut(p).unwrap().inode_group = Some(first.clone());
        }
    }
    out
}

pub fn huge_file() -> Vec<u8> {
    bytes(7, 4 << 20)
}

/// A fourth layer for the registry test (whose chunks are the registry's 1 MiB): a file spanning
/// several chunks, so "only what was read" is visible against the layer size.
pub fn extra_layer() -> Vec<u8> {
    tar_layer(&[
        Item::Dir("data", 0o755, 0),
        Item::File("data/huge.bin", 0o644, 0, huge_file()),
    ])
}
