//! `merge()` against a real filesystem: random layer stacks are applied to a real directory, one
//! layer after another, with real syscalls (unlink, rmdir -r, mkdir, link, symlink, mkfifo, chown,
//! chmod, setxattr) following the OCI rules, then the directory is walked and compared with
//! `merge()`: names, kinds, modes, owners, file bytes, symlink targets, xattrs, file mtimes, and
//! which paths share an inode.
//!
//! Needs root (chown, trusted xattrs are not used but ownership is). When not root: fails if
//! `CI=true`, else skips with a printed reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::stack::{content_of, index_of, layers_of};
use emulator::{merge, EntryKind, Index};
use proptest::prelude::*;

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// lstat-based: is `p` a real directory (not a symlink to one)?
fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_dir())
}

fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_dir() => fs::remove_dir_all(p).unwrap(),
        Ok(_) => fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

/// The path of `rel` under `root` if every ancestor is a real directory (never follows symlinks).
fn resolve_parent_dirs(root: &Path, rel: &str) -> Option<PathBuf> {
    let comps: Vec<&str> = rel.split('/').collect();
    let mut cur = root.to_path_buf();
    for c in &comps[..comps.len() - 1] {
        cur.push(c);
        if !is_real_dir(&cur) {
            return None;
        }
    }
    Some(root.join(rel))
}

/// mkdir -p with implied-directory attributes, replacing non-directories, never following symlinks.
fn make_parents(root: &Path, rel: &str) -> PathBuf {
    let comps: Vec<&str> = rel.split('/').collect();
    let mut cur = root.to_path_buf();
    for c in &comps[..comps.len() - 1] {
        cur.push(c);
        if !is_real_dir(&cur) {
            remove_any(&cur);
            mkdir_implied(&cur);
        }
    }
    root.join(rel)
}

fn mkdir_implied(p: &Path) {
    fs::create_dir(p).unwrap();
    std::os::unix::fs::lchown(p, Some(0), Some(0)).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

fn clear_xattrs(p: &Path) {
    for (k, _) in xattrs(p) {
        let c = CString::new(k).unwrap();
        // SAFETY: valid C strings.
        unsafe { libc::lremovexattr(cpath(p).as_ptr(), c.as_ptr()) };
    }
}

fn set_attrs(p: &Path, e: &emulator::Entry) {
    std::os::unix::fs::lchown(p, Some(e.uid), Some(e.gid)).unwrap();
    if !matches!(e.kind, EntryKind::Symlink) {
        // chmod after chown: chown clears set-id bits.
        fs::set_permissions(p, fs::Permissions::from_mode(e.mode)).unwrap();
    }
    for (k, v) in &e.xattrs {
        let c = CString::new(k.as_str()).unwrap();
        // SAFETY: valid C strings and buffer.
        let r = unsafe {
            libc::lsetxattr(cpath(p).as_ptr(), c.as_ptr(), v.as_ptr().cast(), v.len(), 0)
        };
        assert_eq!(
            r,
            0,
            "setxattr {k} on {p:?}: {}",
            std::io::Error::last_os_error()
        );
    }
    if e.kind == EntryKind::File || e.kind == EntryKind::Fifo {
        let ts = [
            libc::timespec {
                tv_sec: e.mtime,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: e.mtime,
                tv_nsec: 0,
            },
        ];
        // SAFETY: valid path and times.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                cpath(p).as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(r, 0);
    }
}

/// Apply one layer to `root` the way an OCI applier does on a real filesystem.
fn apply(root: &Path, li: usize, layer: &Index) {
    // Markers act on what lower layers left.
    for e in &layer.entries {
        let Some(p) = resolve_parent_dirs(root, &e.path) else {
            continue;
        };
        match e.kind {
            EntryKind::Whiteout => remove_any(&p),
            EntryKind::OpaqueDir if is_real_dir(&p) => {
                for kid in fs::read_dir(&p).unwrap() {
                    remove_any(&kid.unwrap().path());
                }
            }
            _ => {}
        }
    }
    for e in &layer.entries {
        let p = make_parents(root, &e.path);
        match e.kind {
            EntryKind::Whiteout => {}
            EntryKind::OpaqueDir => {
                if !is_real_dir(&p) {
                    remove_any(&p);
                    mkdir_implied(&p);
                }
            }
            EntryKind::Dir => {
                if is_real_dir(&p) {
                    // Attribute update: the upper directory's xattrs replace the lower ones.
                    clear_xattrs(&p);
                } else {
                    remove_any(&p);
                    fs::create_dir(&p).unwrap();
                }
                set_attrs(&p, e);
            }
            EntryKind::File => {
                remove_any(&p);
                fs::write(&p, content_of(li, e.data_offset)).unwrap();
                set_attrs(&p, e);
            }
            EntryKind::Hardlink => {
                remove_any(&p);
                fs::hard_link(root.join(e.link.as_deref().unwrap()), &p).unwrap();
            }
            EntryKind::Symlink => {
                remove_any(&p);
                std::os::unix::fs::symlink(e.link.as_deref().unwrap(), &p).unwrap();
                set_attrs(&p, e);
            }
            EntryKind::Fifo => {
                remove_any(&p);
                // SAFETY: valid path.
                assert_eq!(unsafe { libc::mkfifo(cpath(&p).as_ptr(), 0o600) }, 0);
                set_attrs(&p, e);
            }
            other => panic!("generator does not make {other:?}"),
        }
    }
}

fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let cp = cpath(p);
    let mut names = vec![0u8; 4096];
    // SAFETY: valid path and buffer.
    let n = unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0);
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 4096];
        // SAFETY: valid strings and buffer.
        let m =
            unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(m >= 0);
        v.truncate(m as usize);
        out.push((String::from_utf8(name.to_vec()).unwrap(), v));
    }
    out.sort();
    out
}

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    bytes: Vec<u8>,
    link: Option<String>,
    xattrs: Vec<(String, Vec<u8>)>,
    mtime: i64,
}

fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, (Seen, u64)>) {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    for kid in fs::read_dir(dir).unwrap() {
        let kid = kid.unwrap();
        let name = kid.file_name().to_str().unwrap().to_string();
        let rp = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let p = kid.path();
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_file() {
            EntryKind::File
        } else {
            EntryKind::Fifo
        };
        let seen = Seen {
            kind,
            mode: if kind == EntryKind::Symlink {
                0
            } else {
                m.mode() & 0o7777
            },
            uid: m.uid(),
            gid: m.gid(),
            bytes: if kind == EntryKind::File {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            },
            link: (kind == EntryKind::Symlink)
                .then(|| fs::read_link(&p).unwrap().to_str().unwrap().to_string()),
            xattrs: if matches!(kind, EntryKind::File | EntryKind::Dir) {
                xattrs(&p)
            } else {
                Vec::new()
            },
            mtime: if matches!(kind, EntryKind::File | EntryKind::Fifo) {
                m.mtime()
            } else {
                0
            },
        };
        out.insert(rp.clone(), (seen, m.ino()));
        if kind == EntryKind::Dir {
            walk(root, &rp, out);
        }
    }
}

proptest! {
    // Real syscalls per entry: fewer, smaller stacks than the in-memory properties.
    #![proptest_config(ProptestConfig { cases: common::cases(), ..ProptestConfig::default() })]

    #[test]
    fn merge_equals_real_extraction(specs in layers_of(8, 10)) {
        if !testkit::require(&[testkit::Need::Root]) {
            return Ok(());
        }
        let idx: Vec<Index> = specs.iter().enumerate().map(|(i, s)| index_of(i, s)).collect();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        for (li, l) in idx.iter().enumerate() {
            apply(&root, li, l);
        }
        let mut real = BTreeMap::new();
        walk(&root, "", &mut real);

        let merged = merge(&idx.iter().collect::<Vec<_>>()).unwrap();
        let want: BTreeMap<String, Seen> = merged
            .entries
            .iter()
            .map(|(p, m)| {
                let e = &m.entry;
                let mut xattrs = if matches!(e.kind, EntryKind::File | EntryKind::Dir) { e.xattrs.clone() } else { Vec::new() };
                xattrs.sort();
                (p.clone(), Seen {
                    kind: e.kind,
                    mode: if e.kind == EntryKind::Symlink { 0 } else { e.mode },
                    uid: e.uid,
                    gid: e.gid,
                    bytes: if e.kind == EntryKind::File { content_of(m.layer, e.data_offset) } else { Vec::new() },
                    link: e.link.clone(),
                    xattrs,
                    mtime: if matches!(e.kind, EntryKind::File | EntryKind::Fifo) { e.mtime } else { 0 },
                })
            })
            .collect();
        let got: BTreeMap<String, &Seen> = real.iter().map(|(k, (s, _))| (k.clone(), s)).collect();
        prop_assert_eq!(got, want.iter().map(|(k, v)| (k.clone(), v)).collect::<BTreeMap<_, _>>());

        // Inode sharing: same (layer, origin) <=> same inode, for non-directories.
        let mut by_origin: HashMap<(usize, Option<usize>), u64> = HashMap::new();
        let mut by_ino: HashMap<u64, (usize, Option<usize>)> = HashMap::new();
        for (p, m) in &merged.entries {
            if m.entry.kind == EntryKind::Dir {
                continue;
            }
            let ino = real[p].1;
            let key = (m.layer, m.origin);
            prop_assert_eq!(*by_origin.entry(key).or_insert(ino), ino, "{} should share an inode", p);
            prop_assert_eq!(*by_ino.entry(ino).or_insert(key), key, "{} should not share an inode", p);
        }
    }
}
