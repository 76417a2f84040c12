//! The mount logic: OCI layer semantics over a stack of expanded layers.
//!
//! Rules (OCI image-spec `layer.md`, as containerd applies them), for each layer bottom → top:
//! 1. Markers act on the **lower** layers only, whatever their position in the tar: a whiteout
//!    `DIR/.wh.NAME` removes `DIR/NAME` and everything under it; an opaque marker
//!    `DIR/.wh..wh..opq` removes every lower child of `DIR` (keeping `DIR` itself).
//! 2. Then the layer's own entries apply in tar order, later entries winning:
//!    - a non-directory replaces whatever is at its path (a directory with its whole subtree);
//!    - a directory over an existing directory only updates its attributes (mode, owner, mtime,
//!      xattrs) and keeps its children; over a non-directory it replaces it;
//!    - every missing ancestor (or one that is not a directory) becomes an *implied* directory
//!      `0755 root:root mtime 0`, as containerd's `mkparent` creates; an existing directory is
//!      left untouched. Whiteout and opaque markers imply their parent directories too (an opaque
//!      marker implies its directory).
//! 3. Hardlinks resolve within their layer to the entry they name (the latest earlier entry with
//!    that path, following hardlink chains): the merged entry is a copy of that entry at the
//!    link's path, and `origin` names it, so two paths share an inode iff their `(layer, origin)`
//!    are equal. Later changes to the target path do not affect the link (it keeps the old inode).
//!
//! The root of the layer (`./`) is not an entry: its attributes are not recorded.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::entry::{Entry, EntryKind};
use crate::error::{Error, Result};
use crate::format::Index;

/// The xattr overlayfs reads to stop a directory merging with lower layers.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// One node of the merged view: the winning entry and which layer (0 = bottom) it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedEntry {
    /// The entry as it appears at this path. Never a `Hardlink`, `Whiteout` or `OpaqueDir`:
    /// hardlinks are resolved to (a copy of) the entry owning the inode, with `path` set to this path.
    pub entry: Entry,
    /// Layer whose entry supplied this node (for a file: where its bytes are, at `entry.data_offset`).
    pub layer: usize,
    /// Index into `layers[layer].entries` of the entry owning this node's inode: the entry itself,
    /// or a hardlink's resolved target. `None` for an implied directory.
    pub origin: Option<usize>,
}

/// The resolved tree a standard pull produces: whiteouts and opaque dirs applied, later layers
/// winning, directories' attributes updated, hardlinks resolved to their target's data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergedTree {
    /// Every path present in the final rootfs (no whiteout / opaque markers), sorted.
    pub entries: BTreeMap<String, MergedEntry>,
}

impl MergedTree {
    pub fn get(&self, path: &str) -> Option<&MergedEntry> {
        self.entries.get(path)
    }

    /// Direct children of directory `dir` (`""` for the root), sorted by name.
    pub fn children<'a>(&'a self, dir: &str) -> impl Iterator<Item = &'a MergedEntry> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let plen = prefix.len();
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter(move |(k, _)| !k[plen..].contains('/'))
            .map(|(_, v)| v)
    }
}

/// Attributes containerd gives a directory it has to create for a child (`mkparent`).
pub fn implied_dir(path: &str) -> Entry {
    Entry {
        path: path.to_string(),
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        size: 0,
        link: None,
        rdev_major: 0,
        rdev_minor: 0,
        xattrs: Vec::new(),
        data_offset: 0,
    }
}

/// Remove `path`'s descendants, and `path` itself if `with_self`.
fn remove_subtree<V>(t: &mut BTreeMap<String, V>, path: &str, with_self: bool) {
    if with_self {
        t.remove(path);
    }
    // Descendants are exactly the keys in ["path/", "path0"): '0' is the byte after '/'.
    let lo = format!("{path}/");
    let hi = format!("{path}0");
    let doomed: Vec<String> = t.range(lo..hi).map(|(k, _)| k.clone()).collect();
    for k in doomed {
        t.remove(&k);
    }
}

/// Ancestors of `path`, shallowest first (`a/b/c` → `a`, `a/b`).
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// Make every ancestor of `path` a directory, creating implied ones with `mk`.
fn ensure_parents<V>(
    t: &mut BTreeMap<String, V>,
    path: &str,
    is_dir: impl Fn(&V) -> bool,
    mk: impl Fn(&str) -> V,
) {
    for a in ancestors(path) {
        match t.get(a) {
            Some(v) if is_dir(v) => {}
            _ => {
                // A non-directory has no descendants in the tree, so replacing it is enough.
                t.insert(a.to_string(), mk(a));
            }
        }
    }
}

fn is_marker(k: EntryKind) -> bool {
    matches!(k, EntryKind::Whiteout | EntryKind::OpaqueDir)
}

/// Entry `i`'s inode owner from a [`Index::hardlink_owners`] table.
fn owner_of<'a>(
    layer: &'a Index,
    owners: &[Option<usize>],
    i: usize,
) -> Option<(usize, &'a Entry)> {
    let oi = (*owners.get(i)?)?;
    Some((oi, layer.entries.get(oi)?))
}

/// Merge layers ordered bottom → top.
pub fn merge(layers: &[&Index]) -> Result<MergedTree> {
    let mut t: BTreeMap<String, MergedEntry> = BTreeMap::new();
    let is_dir = |m: &MergedEntry| m.entry.kind == EntryKind::Dir;
    for (li, layer) in layers.iter().enumerate() {
        let mk = |p: &str| MergedEntry {
            entry: implied_dir(p),
            layer: li,
            origin: None,
        };
        for e in &layer.entries {
            match e.kind {
                EntryKind::Whiteout => remove_subtree(&mut t, &e.path, true),
                EntryKind::OpaqueDir => remove_subtree(&mut t, &e.path, false),
                _ => {}
            }
        }
        let owners = layer.hardlink_owners();
        for (i, e) in layer.entries.iter().enumerate() {
            ensure_parents(&mut t, &e.path, is_dir, mk);
            match e.kind {
                EntryKind::Whiteout => {}
                EntryKind::OpaqueDir => match t.get(&e.path) {
                    Some(m) if is_dir(m) => {}
                    _ => {
                        t.insert(e.path.clone(), mk(&e.path));
                    }
                },
                EntryKind::Dir => {
                    let node = MergedEntry {
                        entry: e.clone(),
                        layer: li,
                        origin: Some(i),
                    };
                    if !t.get(&e.path).is_some_and(is_dir) {
                        remove_subtree(&mut t, &e.path, true);
                    }
                    t.insert(e.path.clone(), node);
                }
                EntryKind::Hardlink => {
                    let (oi, o) = owner_of(layer, &owners, i).ok_or_else(|| {
                        Error::Merge(format!(
                            "layer {li}: hardlink {:?} does not resolve",
                            e.path
                        ))
                    })?;
                    if o.kind == EntryKind::Dir || is_marker(o.kind) {
                        return Err(Error::Merge(format!(
                            "layer {li}: hardlink {:?} to a {:?}",
                            e.path, o.kind
                        )));
                    }
                    let mut entry = o.clone();
                    entry.path = e.path.clone();
                    remove_subtree(&mut t, &e.path, true);
                    t.insert(
                        e.path.clone(),
                        MergedEntry {
                            entry,
                            layer: li,
                            origin: Some(oi),
                        },
                    );
                }
                _ => {
                    remove_subtree(&mut t, &e.path, true);
                    t.insert(
                        e.path.clone(),
                        MergedEntry {
                            entry: e.clone(),
                            layer: li,
                            origin: Some(i),
                        },
                    );
                }
            }
        }
    }
    Ok(MergedTree { entries: t })
}

/// Per-layer overlayfs form of one layer: whiteouts become 0/0 char devices, opaque markers become
/// `trusted.overlay.opaque=y` on their directory (creating an implied dir entry if needed).
///
/// This is what the layer's own snapshot directory holds after containerd's overlay-aware apply,
/// made consistent with [`merge`]'s rules so that stacking the forms the overlayfs way (topmost
/// layer holding a name wins, a 0/0 char device hides, an opaque directory stops descent) shows
/// the same tree as `merge`:
/// - entries apply in tar order as in `merge` (implied parents: `0755 root:root mtime 0`; a
///   consumer stacking onto lower layers may copy a lower directory's attributes, as containerd does);
/// - a whiteout whose path this layer also (re)creates as a directory makes that directory opaque,
///   and so does a directory that replaced a non-directory of this layer (both hide all lower content);
/// - whiteouts under a path this layer ends up holding as a non-directory are dropped (the
///   non-directory hides everything below anyway);
/// - a hardlink stays a `Hardlink` naming the path of the entry owning the inode when that entry is
///   still at that path; otherwise it becomes a copy of that entry at the link's path.
///
/// Entries come out sorted by path (parents before children).
pub fn overlay_form(layer: &Index) -> Vec<Entry> {
    // path -> (entry, index of the layer entry it came from; None when implied)
    let mut t: BTreeMap<String, (Entry, Option<usize>)> = BTreeMap::new();
    let is_dir = |v: &(Entry, Option<usize>)| v.0.kind == EntryKind::Dir;
    let mk = |p: &str| (implied_dir(p), None);
    let mut hides_lower: BTreeSet<String> = BTreeSet::new();
    let mut opaque: BTreeSet<String> = BTreeSet::new();
    let mut whiteouts: Vec<&Entry> = Vec::new();

    for (i, e) in layer.entries.iter().enumerate() {
        ensure_parents(&mut t, &e.path, is_dir, mk);
        match e.kind {
            EntryKind::Whiteout => whiteouts.push(e),
            EntryKind::OpaqueDir => {
                opaque.insert(e.path.clone());
                if !t.get(&e.path).is_some_and(is_dir) {
                    t.insert(e.path.clone(), mk(&e.path));
                }
            }
            EntryKind::Dir => {
                if !t.get(&e.path).is_some_and(is_dir) {
                    remove_subtree(&mut t, &e.path, true);
                }
                t.insert(e.path.clone(), (e.clone(), Some(i)));
            }
            _ => {
                remove_subtree(&mut t, &e.path, true);
                t.insert(e.path.clone(), (e.clone(), Some(i)));
                hides_lower.insert(e.path.clone());
            }
        }
    }

    for w in whiteouts {
        match t.get(&w.path) {
            Some(v) if is_dir(v) => {
                opaque.insert(w.path.clone());
            }
            Some(_) => {}
            None => {
                if ancestors(&w.path).all(|a| t.get(a).is_some_and(is_dir)) {
                    let dev = Entry {
                        path: w.path.clone(),
                        kind: EntryKind::CharDevice,
                        mode: 0,
                        uid: w.uid,
                        gid: w.gid,
                        mtime: w.mtime,
                        size: 0,
                        link: None,
                        rdev_major: 0,
                        rdev_minor: 0,
                        xattrs: Vec::new(),
                        data_offset: 0,
                    };
                    t.insert(w.path.clone(), (dev, None));
                }
            }
        }
    }
    for p in hides_lower {
        if t.get(&p).is_some_and(is_dir) {
            opaque.insert(p);
        }
    }
    for d in opaque {
        if let Some((e, _)) = t.get_mut(&d) {
            if e.kind == EntryKind::Dir {
                match e.xattrs.iter_mut().find(|(k, _)| k == OVERLAY_OPAQUE_XATTR) {
                    Some((_, v)) => *v = b"y".to_vec(),
                    None => e
                        .xattrs
                        .push((OVERLAY_OPAQUE_XATTR.to_string(), b"y".to_vec())),
                }
            }
        }
    }

    // Hardlinks: keep them as links only while their inode owner is still reachable by its path.
    let owners = layer.hardlink_owners();
    let owner_at: HashMap<&str, Option<usize>> =
        t.iter().map(|(k, (_, src))| (k.as_str(), *src)).collect();
    let mut resolved: Vec<(String, Entry)> = Vec::new();
    for (p, (e, src)) in &t {
        if e.kind != EntryKind::Hardlink {
            continue;
        }
        let Some((oi, o)) = src.and_then(|i| owner_of(layer, &owners, i)) else {
            continue;
        };
        if owner_at.get(o.path.as_str()) == Some(&Some(oi)) {
            if e.link.as_deref() != Some(o.path.as_str()) {
                let mut l = e.clone();
                l.link = Some(o.path.clone());
                resolved.push((p.clone(), l));
            }
        } else {
            let mut c = o.clone();
            c.path = p.clone();
            resolved.push((p.clone(), c));
        }
    }
    for (p, e) in resolved {
        if let Some(slot) = t.get_mut(&p) {
            slot.0 = e;
        }
    }
    t.into_values().map(|(e, _)| e).collect()
}
