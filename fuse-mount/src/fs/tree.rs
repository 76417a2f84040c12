//! The inode table: built once at mount time from index entries, in memory, no syscalls, then
//! read-only (so FUSE workers share it without locks).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a: path keys are short and trusted-length (from a validated index); SipHash's DoS
/// resistance buys nothing here and costs a third of the build time.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

use emulator::{Entry, EntryKind};

/// Inode number of the root directory (FUSE's fixed root).
pub(crate) const ROOT: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeKind {
    Dir,
    File,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub kind: NodeKind,
    /// Permission and special bits (07777).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub size: u64,
    /// Kernel (`new_encode_dev`) encoding.
    pub rdev: u32,
    pub nlink: u32,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub symlink: Option<String>,
    /// For files: (layer slot, offset in that layer's data blob).
    pub data: Option<(usize, u64)>,
    pub parent: u64,
    /// Directories: children sorted by name (binary search on lookup, stable readdir offsets).
    pub children: Vec<(String, u64)>,
}

impl Node {
    fn dir(parent: u64) -> Node {
        Node {
            kind: NodeKind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            rdev: 0,
            nlink: 2,
            xattrs: Vec::new(),
            symlink: None,
            data: None,
            parent,
            children: Vec::new(),
        }
    }
}

/// The whole tree; `nodes[ino - 1]`.
#[derive(Debug)]
pub(crate) struct Tree {
    pub nodes: Vec<Node>,
    pub total_bytes: u64,
}

/// Linux `new_encode_dev`, the dev_t layout FUSE attributes carry.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", path),
    }
}

impl Tree {
    pub(crate) fn node(&self, ino: u64) -> Option<&Node> {
        let i = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.nodes.get(i)
    }

    pub(crate) fn lookup(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let dir = self.node(parent)?;
        dir.children
            .binary_search_by(|(n, _)| n.as_bytes().cmp(name))
            .ok()
            .map(|i| dir.children[i].1)
    }

    /// A path of `ino` inside the mount (`/a/b`; a hard link's first name). Walks the parents
    /// and scans each one's children, so it is for traces, not for hot paths.
    pub(crate) fn path_of(&self, ino: u64) -> Option<String> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let parent = self.node(cur)?.parent;
            let (name, _) = self
                .node(parent)?
                .children
                .iter()
                .find(|(_, i)| *i == cur)?;
            parts.push(name.as_str());
            // A tree is acyclic by construction; the bound keeps a bad one from looping.
            if parts.len() > self.nodes.len() {
                return None;
            }
            cur = parent;
        }
        parts.reverse();
        Some(format!("/{}", parts.join("/")))
    }

    /// Build from `(entry, layer slot)` pairs; a later entry for the same path wins (the caller
    /// passes an already-resolved view, so duplicates only come from a layer re-listing a path).
    /// Whiteout / opaque markers are expected in their overlay form already and are skipped here.
    /// Non-directories with the same `inode` key (merged view: `(layer, origin)`) share an inode;
    /// `Hardlink` entries (per-layer view) share their target's.
    pub(crate) fn build<'a>(
        entries: impl IntoIterator<Item = (&'a Entry, usize, Option<(usize, usize)>)>,
    ) -> Tree {
        let entries = entries.into_iter();
        let hint = entries.size_hint().0;
        let mut nodes = Vec::with_capacity(hint + 1);
        nodes.push(Node::dir(ROOT));
        let mut by_path: FastMap<&'a str, u64> = FastMap::default();
        by_path.reserve(hint + 1);
        let mut by_key: FastMap<(usize, usize), u64> = FastMap::default();
        let mut hardlinks: Vec<(&'a Entry, usize)> = Vec::new();
        by_path.insert("", ROOT);
        for (e, slot, key) in entries {
            let kind = match e.kind {
                EntryKind::Dir => NodeKind::Dir,
                EntryKind::File => NodeKind::File,
                EntryKind::Symlink => NodeKind::Symlink,
                EntryKind::CharDevice => NodeKind::CharDevice,
                EntryKind::BlockDevice => NodeKind::BlockDevice,
                EntryKind::Fifo => NodeKind::Fifo,
                EntryKind::Hardlink => {
                    hardlinks.push((e, slot));
                    continue;
                }
                EntryKind::Whiteout | EntryKind::OpaqueDir => continue,
            };
            if e.path.is_empty() {
                // The root itself (some tars carry "./"): take its attributes.
                apply(&mut nodes[0], e, kind, slot);
                continue;
            }
            if kind != NodeKind::Dir {
                if let Some(&shared) = key.as_ref().and_then(|k| by_key.get(k)) {
                    if !by_path.contains_key(e.path.as_str()) {
                        let parent = ensure_dir(&mut nodes, &mut by_path, split(&e.path).0);
                        nodes[(parent - 1) as usize]
                            .children
                            .push((split(&e.path).1.to_string(), shared));
                        by_path.insert(&e.path, shared);
                    }
                    continue;
                }
            }
            let ino = match by_path.get(e.path.as_str()) {
                Some(&ino) => ino,
                None => {
                    let parent = ensure_dir(&mut nodes, &mut by_path, split(&e.path).0);
                    let ino = new_node(&mut nodes, parent, split(&e.path).1);
                    by_path.insert(&e.path, ino);
                    ino
                }
            };
            let n = &mut nodes[(ino - 1) as usize];
            if n.kind == NodeKind::Dir && kind == NodeKind::Dir {
                apply(n, e, kind, slot);
            } else {
                let kids = std::mem::take(&mut n.children);
                apply(n, e, kind, slot);
                if kind == NodeKind::Dir {
                    n.children = kids;
                }
            }
            if let (Some(k), true) = (key, kind != NodeKind::Dir) {
                by_key.insert(k, ino);
            }
        }
        for (e, slot) in hardlinks {
            let target = e
                .link
                .as_deref()
                .and_then(|t| by_path.get(t.trim_start_matches('/')).copied())
                .filter(|&t| nodes[(t - 1) as usize].kind != NodeKind::Dir);
            let parent = ensure_dir(&mut nodes, &mut by_path, split(&e.path).0);
            match target {
                Some(t) => {
                    if by_path.contains_key(e.path.as_str()) {
                        continue;
                    }
                    nodes[(parent - 1) as usize]
                        .children
                        .push((split(&e.path).1.to_string(), t));
                    by_path.insert(&e.path, t);
                }
                None if e.size > 0 || e.data_offset > 0 => {
                    // A link whose target is elsewhere (already resolved to its data): a file.
                    let ino = new_node(&mut nodes, parent, split(&e.path).1);
                    by_path.insert(&e.path, ino);
                    apply(&mut nodes[(ino - 1) as usize], e, NodeKind::File, slot);
                }
                None => {
                    tracing::warn!(path = %e.path, target = ?e.link, "hardlink target missing; skipped");
                }
            }
        }
        // nlink: dirs 2 + subdirs, others one per name.
        for n in &mut nodes {
            n.nlink = if n.kind == NodeKind::Dir { 2 } else { 0 };
        }
        let mut total_bytes = 0u64;
        for i in 0..nodes.len() {
            let mut kids = std::mem::take(&mut nodes[i].children);
            kids.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            kids.dedup_by(|a, b| a.0 == b.0);
            for (_, c) in &kids {
                let child = &mut nodes[(*c - 1) as usize];
                if child.kind == NodeKind::Dir {
                    nodes[i].nlink = nodes[i].nlink.saturating_add(1);
                } else {
                    child.nlink = child.nlink.saturating_add(1);
                }
            }
            nodes[i].children = kids;
            if nodes[i].kind == NodeKind::File {
                total_bytes = total_bytes.saturating_add(nodes[i].size);
            }
        }
        Tree { nodes, total_bytes }
    }
}

fn new_node(nodes: &mut Vec<Node>, parent: u64, name: &str) -> u64 {
    nodes.push(Node::dir(parent));
    let ino = nodes.len() as u64;
    nodes[(parent - 1) as usize]
        .children
        .push((name.to_string(), ino));
    ino
}

/// The directory at `path`, creating implied ones (0755 root:root) as needed.
fn ensure_dir<'a>(
    nodes: &mut Vec<Node>,
    by_path: &mut FastMap<&'a str, u64>,
    path: &'a str,
) -> u64 {
    if let Some(&ino) = by_path.get(path) {
        if nodes[(ino - 1) as usize].kind == NodeKind::Dir {
            return ino;
        }
        // A non-directory in the way: the index is inconsistent; hang the entry off root.
        return ROOT;
    }
    let (p, name) = split(path);
    let parent = ensure_dir(nodes, by_path, p);
    let ino = new_node(nodes, parent, name);
    by_path.insert(path, ino);
    ino
}

fn apply(n: &mut Node, e: &Entry, kind: NodeKind, slot: usize) {
    n.kind = kind;
    n.perm = e.mode & 0o7777;
    n.uid = e.uid;
    n.gid = e.gid;
    n.mtime = e.mtime;
    n.size = match kind {
        NodeKind::File => e.size,
        NodeKind::Symlink => e.link.as_ref().map_or(0, |l| l.len() as u64),
        _ => 0,
    };
    n.rdev = match kind {
        NodeKind::CharDevice | NodeKind::BlockDevice => encode_dev(e.rdev_major, e.rdev_minor),
        _ => 0,
    };
    n.xattrs = e.xattrs.clone();
    n.symlink = if kind == NodeKind::Symlink {
        e.link.clone()
    } else {
        None
    };
    n.data = (kind == NodeKind::File && e.size > 0).then_some((slot, e.data_offset));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime: 3,
            size: 0,
            link: None,
            rdev_major: 0,
            rdev_minor: 0,
            xattrs: vec![],
            data_offset: 0,
        }
    }

    #[test]
    fn implied_dirs_hardlinks_and_nlink() {
        let mut f = entry("a/b/f", EntryKind::File);
        f.size = 5;
        let mut h = entry("a/h", EntryKind::Hardlink);
        h.link = Some("a/b/f".into());
        let d = entry("a", EntryKind::Dir);
        let t = Tree::build([(&f, 0, None), (&h, 0, None), (&d, 0, None)]);
        let a = t.lookup(ROOT, b"a").unwrap();
        let b = t.lookup(a, b"b").unwrap();
        let fi = t.lookup(b, b"f").unwrap();
        assert_eq!(t.lookup(a, b"h"), Some(fi));
        assert_eq!(t.node(fi).unwrap().nlink, 2);
        assert_eq!(t.node(a).unwrap().nlink, 3);
        assert_eq!(t.node(a).unwrap().uid, 1);
        assert_eq!(t.node(b).unwrap().perm, 0o755);
        assert_eq!(t.node(ROOT).unwrap().nlink, 3);
        assert_eq!(t.total_bytes, 5);
        assert!(t.node(0).is_none());
        assert!(t.lookup(fi, b"x").is_none());
        assert_eq!(t.path_of(fi).as_deref(), Some("/a/b/f"));
        assert_eq!(t.path_of(ROOT).as_deref(), Some("/"));
        assert_eq!(t.path_of(999), None);
    }

    #[test]
    fn dev_encoding_matches_kernel() {
        assert_eq!(encode_dev(0, 0), 0);
        assert_eq!(encode_dev(1, 3), 0x103);
        assert_eq!(encode_dev(8, 0x123), 0x10_0823);
    }
}
