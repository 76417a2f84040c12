//! Property 2: `merge` is the OCI layer semantics, and `overlay_form` stacks to the same view.
//!
//! - `merge_equals_reference`: for random stacks of 1–40 layers, `merge()` equals a reference that
//!   applies the layers entry by entry to a nested in-memory tree (written independently of
//!   merge.rs: nested nodes, per-layer hardlink table).
//! - `overlay_stack_equals_merge`: the per-layer overlay forms, looked up the overlayfs way
//!   (topmost layer holding a name wins, a 0/0 char device hides, an opaque dir stops descent),
//!   show the same tree as `merge()`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use common::stack::{index_of, layers};
use emulator::merge::{implied_dir, OVERLAY_OPAQUE_XATTR};
use emulator::{merge, overlay_form, Entry, EntryKind, Index, MergedEntry};
use proptest::prelude::*;

// ---------------------------------------------------------------- reference: nested tree

#[derive(Clone, Debug)]
enum Node {
    Dir(MergedEntry, BTreeMap<String, Node>),
    Leaf(MergedEntry),
}

fn comps(p: &str) -> Vec<&str> {
    p.split('/').collect()
}

fn lookup_mut<'a>(
    root: &'a mut BTreeMap<String, Node>,
    parents: &[&str],
) -> Option<&'a mut BTreeMap<String, Node>> {
    let mut cur = root;
    for c in parents {
        match cur.get_mut(*c) {
            Some(Node::Dir(_, kids)) => cur = kids,
            _ => return None,
        }
    }
    Some(cur)
}

/// Walk to the parent of `path`, turning every missing or non-directory ancestor into an
/// implied directory.
fn make_parents<'a>(
    root: &'a mut BTreeMap<String, Node>,
    path: &str,
    li: usize,
) -> &'a mut BTreeMap<String, Node> {
    let cs = comps(path);
    let mut cur = root;
    let mut sofar = String::new();
    for c in &cs[..cs.len() - 1] {
        if !sofar.is_empty() {
            sofar.push('/');
        }
        sofar.push_str(c);
        if !matches!(cur.get(*c), Some(Node::Dir(..))) {
            cur.insert(
                c.to_string(),
                Node::Dir(
                    MergedEntry {
                        entry: implied_dir(&sofar),
                        layer: li,
                        origin: None,
                    },
                    BTreeMap::new(),
                ),
            );
        }
        match cur.get_mut(*c) {
            Some(Node::Dir(_, kids)) => cur = kids,
            _ => unreachable!(),
        }
    }
    cur
}

fn reference(layers: &[Index]) -> BTreeMap<String, MergedEntry> {
    let mut root: BTreeMap<String, Node> = BTreeMap::new();
    for (li, layer) in layers.iter().enumerate() {
        // Markers see only what lower layers built.
        for e in &layer.entries {
            let cs = comps(&e.path);
            let (name, parents) = cs.split_last().unwrap();
            if let Some(dir) = lookup_mut(&mut root, parents) {
                match e.kind {
                    EntryKind::Whiteout => {
                        dir.remove(*name);
                    }
                    EntryKind::OpaqueDir => {
                        if let Some(Node::Dir(_, kids)) = dir.get_mut(*name) {
                            kids.clear();
                        }
                    }
                    _ => {}
                }
            }
        }
        // path -> (origin index, origin entry): what a hardlink to that path gets.
        let mut inode_at: HashMap<String, (usize, Entry)> = HashMap::new();
        for (i, e) in layer.entries.iter().enumerate() {
            let name = comps(&e.path).last().unwrap().to_string();
            let dir = make_parents(&mut root, &e.path, li);
            let me = |entry: Entry, origin| MergedEntry {
                entry,
                layer: li,
                origin,
            };
            match e.kind {
                EntryKind::Whiteout => {}
                EntryKind::OpaqueDir => {
                    if !matches!(dir.get(&name), Some(Node::Dir(..))) {
                        dir.insert(
                            name,
                            Node::Dir(me(implied_dir(&e.path), None), BTreeMap::new()),
                        );
                    }
                }
                EntryKind::Dir => {
                    let kids = match dir.remove(&name) {
                        Some(Node::Dir(_, kids)) => kids,
                        _ => BTreeMap::new(),
                    };
                    dir.insert(name, Node::Dir(me(e.clone(), Some(i)), kids));
                    inode_at.remove(&e.path);
                }
                EntryKind::Hardlink => {
                    let (oi, oe) = inode_at
                        .get(e.link.as_deref().unwrap())
                        .cloned()
                        .expect("generator made a valid link");
                    let mut copy = oe.clone();
                    copy.path = e.path.clone();
                    dir.insert(name, Node::Leaf(me(copy, Some(oi))));
                    inode_at.insert(e.path.clone(), (oi, oe));
                }
                _ => {
                    dir.insert(name, Node::Leaf(me(e.clone(), Some(i))));
                    inode_at.insert(e.path.clone(), (i, e.clone()));
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    fn flatten(t: &BTreeMap<String, Node>, out: &mut BTreeMap<String, MergedEntry>) {
        for n in t.values() {
            match n {
                Node::Dir(m, kids) => {
                    out.insert(m.entry.path.clone(), m.clone());
                    flatten(kids, out);
                }
                Node::Leaf(m) => {
                    out.insert(m.entry.path.clone(), m.clone());
                }
            }
        }
    }
    flatten(&root, &mut out);
    out
}

// ---------------------------------------------------------------- overlayfs lookup model

/// What a mounted rootfs shows for one path (identity of file bytes included, inode numbers not).
#[derive(Clone, Debug, PartialEq, Eq)]
struct View {
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    link: Option<String>,
    xattrs: Vec<(String, Vec<u8>)>,
    /// Layer and offset of the bytes (files), layer (other non-dirs), none (dirs).
    src: Option<(usize, u64)>,
    size: u64,
}

fn view(e: &Entry, layer: usize) -> View {
    View {
        kind: e.kind,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
        link: e.link.clone(),
        xattrs: e
            .xattrs
            .iter()
            .filter(|(k, _)| k != OVERLAY_OPAQUE_XATTR)
            .cloned()
            .collect(),
        src: match e.kind {
            EntryKind::Dir => None,
            EntryKind::File => Some((layer, e.data_offset)),
            _ => Some((layer, 0)),
        },
        size: e.size,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    Explicit,
    Implied,
    NonDir,
}

/// Per layer: which paths end as explicit/implied dirs, and which paths the layer itself hides
/// from lower layers (whiteouts, or a non-directory it placed there at some point).
fn replay(layer: &Index) -> (HashMap<String, St>, HashSet<String>) {
    let mut st: HashMap<String, St> = HashMap::new();
    let mut recreated = HashSet::new();
    for e in &layer.entries {
        let cs = comps(&e.path);
        for k in 1..cs.len() {
            let a = cs[..k].join("/");
            if !matches!(st.get(&a), Some(St::Explicit | St::Implied)) {
                st.insert(a, St::Implied);
            }
        }
        match e.kind {
            EntryKind::Whiteout => {
                recreated.insert(e.path.clone());
            }
            EntryKind::OpaqueDir => {
                if !matches!(st.get(&e.path), Some(St::Explicit | St::Implied)) {
                    st.insert(e.path.clone(), St::Implied);
                }
            }
            EntryKind::Dir => {
                st.insert(e.path.clone(), St::Explicit);
            }
            _ => {
                let pre = format!("{}/", e.path);
                st.retain(|k, _| !k.starts_with(&pre));
                st.insert(e.path.clone(), St::NonDir);
                recreated.insert(e.path.clone());
            }
        }
    }
    (st, recreated)
}

fn is_whiteout_dev(e: &Entry) -> bool {
    e.kind == EntryKind::CharDevice && e.rdev_major == 0 && e.rdev_minor == 0
}

fn is_opaque(e: &Entry) -> bool {
    e.xattrs
        .iter()
        .any(|(k, v)| k == OVERLAY_OPAQUE_XATTR && v == b"y")
}

fn overlay_view(layers: &[Index]) -> BTreeMap<String, View> {
    let forms: Vec<BTreeMap<String, Entry>> = layers
        .iter()
        .map(|l| {
            overlay_form(l)
                .into_iter()
                .map(|e| (e.path.clone(), e))
                .collect()
        })
        .collect();
    let replays: Vec<_> = layers.iter().map(replay).collect();
    let mut out = BTreeMap::new();
    let top_down: Vec<usize> = (0..layers.len()).rev().collect();
    walk(&forms, &replays, "", &top_down, &mut out);
    out
}

fn walk(
    forms: &[BTreeMap<String, Entry>],
    replays: &[(HashMap<String, St>, HashSet<String>)],
    dir: &str,
    stack: &[usize],
    out: &mut BTreeMap<String, View>,
) {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let mut names = BTreeSet::new();
    for &l in stack {
        for k in forms[l].keys() {
            if let Some(rest) = k.strip_prefix(&prefix) {
                if !rest.is_empty() && !rest.contains('/') {
                    names.insert(rest.to_string());
                }
            }
        }
    }
    for name in names {
        let p = format!("{prefix}{name}");
        let cands: Vec<usize> = stack
            .iter()
            .copied()
            .filter(|&l| forms[l].contains_key(&p))
            .collect();
        let top = cands[0];
        let e = &forms[top][&p];
        if is_whiteout_dev(e) {
            continue;
        }
        if e.kind != EntryKind::Dir {
            let e = if e.kind == EntryKind::Hardlink {
                let mut o = forms[top][e.link.as_deref().unwrap()].clone();
                o.path = p.clone();
                o
            } else {
                e.clone()
            };
            out.insert(p, view(&e, top));
            continue;
        }
        let mut child_stack = Vec::new();
        for &l in &cands {
            let x = &forms[l][&p];
            if x.kind != EntryKind::Dir {
                break;
            }
            child_stack.push(l);
            if is_opaque(x) {
                break;
            }
        }
        // Directory attributes: the topmost explicit entry, looking through directories this layer
        // only implied (containerd copies a lower dir's attributes into an implied one), stopping
        // where the path was recreated or is not a directory.
        let mut attrs = implied_dir(&p);
        for &l in &cands {
            let x = &forms[l][&p];
            if x.kind != EntryKind::Dir {
                break;
            }
            let (st, recreated) = &replays[l];
            if st.get(&p) == Some(&St::Explicit) {
                attrs = x.clone();
                break;
            }
            if recreated.contains(&p) {
                break;
            }
        }
        out.insert(p.clone(), view(&attrs, 0));
        walk(forms, replays, &p, &child_stack, out);
    }
}

fn merged_view(m: &BTreeMap<String, MergedEntry>) -> BTreeMap<String, View> {
    m.iter()
        .map(|(k, v)| (k.clone(), view(&v.entry, v.layer)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: common::cases(), ..ProptestConfig::default() })]

    #[test]
    fn merge_equals_reference(specs in layers()) {
        let idx: Vec<Index> = specs.iter().enumerate().map(|(i, s)| index_of(i, s)).collect();
        let refs: Vec<&Index> = idx.iter().collect();
        let got = merge(&refs).unwrap();
        let want = reference(&idx);
        prop_assert_eq!(got.entries, want);
    }

    #[test]
    fn overlay_stack_equals_merge(specs in layers()) {
        let idx: Vec<Index> = specs.iter().enumerate().map(|(i, s)| index_of(i, s)).collect();
        let refs: Vec<&Index> = idx.iter().collect();
        let got = merged_view(&merge(&refs).unwrap().entries);
        let want = overlay_view(&idx);
        prop_assert_eq!(got, want);
    }
}
