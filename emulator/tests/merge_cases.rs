//! Hand-written merge / overlay-form edge cases, each through real tars and `expand`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;

use emulator::merge::OVERLAY_OPAQUE_XATTR;
use emulator::{expand, merge, overlay_form, EntryKind, ExpandOptions, Index, MergedTree};

enum M<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str, u32),
    Link(&'a str, &'a str),
    Sym(&'a str, &'a str),
}

fn layer(members: &[M<'_>]) -> Index {
    let mut b = tar::Builder::new(Vec::new());
    for m in members {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(7);
        match m {
            M::File(p, data) => {
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            M::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            M::Link(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            M::Sym(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
        }
    }
    let raw = b.into_inner().unwrap();
    expand(
        &raw[..],
        None,
        None,
        Cursor::new(Vec::new()),
        &ExpandOptions::default(),
    )
    .unwrap()
    .index
}

fn merged(layers: &[Index]) -> MergedTree {
    merge(&layers.iter().collect::<Vec<_>>()).unwrap()
}

fn paths(t: &MergedTree) -> Vec<&str> {
    t.entries.keys().map(String::as_str).collect()
}

#[test]
fn whiteout_of_a_whole_directory() {
    let l0 = layer(&[
        M::Dir("a/", 0o755),
        M::File("a/x", b"x"),
        M::File("a/y/z", b"z"),
        M::File("keep", b"k"),
    ]);
    let l1 = layer(&[M::File(".wh.a", b"")]);
    assert_eq!(paths(&merged(&[l0, l1.clone()])), vec!["keep"]);
    let form = overlay_form(&l1);
    assert_eq!(form.len(), 1);
    assert_eq!(
        (form[0].path.as_str(), form[0].kind, form[0].mode),
        ("a", EntryKind::CharDevice, 0)
    );
}

#[test]
fn opaque_dir_then_new_children_in_the_same_layer() {
    let l0 = layer(&[M::File("d/old", b"o"), M::File("d/sub/deep", b"d")]);
    for l1 in [
        layer(&[
            M::Dir("d/", 0o700),
            M::File("d/.wh..wh..opq", b""),
            M::File("d/new", b"n"),
        ]),
        layer(&[
            M::File("d/new", b"n"),
            M::File("d/.wh..wh..opq", b""),
            M::Dir("d/", 0o700),
        ]),
    ] {
        let t = merged(&[l0.clone(), l1.clone()]);
        assert_eq!(paths(&t), vec!["d", "d/new"]);
        assert_eq!(t.get("d").unwrap().entry.mode, 0o700);
        let form = overlay_form(&l1);
        let d = form.iter().find(|e| e.path == "d").unwrap();
        assert!(d
            .xattrs
            .contains(&(OVERLAY_OPAQUE_XATTR.to_string(), b"y".to_vec())));
    }
}

#[test]
fn hardlink_keeps_its_bytes_after_the_target_is_whited_out() {
    let l0 = layer(&[M::File("f", b"content"), M::Link("l", "f")]);
    let l1 = layer(&[M::File(".wh.f", b"")]);
    let t = merged(&[l0.clone(), l1]);
    assert_eq!(paths(&t), vec!["l"]);
    let l = t.get("l").unwrap();
    assert_eq!(
        (l.entry.kind, l.entry.size, l.layer),
        (EntryKind::File, 7, 0)
    );
    assert_eq!(l.entry.data_offset, l0.find("f").unwrap().data_offset);
    assert_eq!(l.origin, Some(0));
}

#[test]
fn hardlinks_share_an_inode_until_the_target_is_replaced() {
    let l0 = layer(&[M::File("f", b"one"), M::Link("l", "f"), M::Link("m", "l")]);
    let t = merged(std::slice::from_ref(&l0));
    let key = |p: &str| (t.get(p).unwrap().layer, t.get(p).unwrap().origin);
    assert_eq!(key("f"), key("l"));
    assert_eq!(key("f"), key("m"));
    // Same layer: f is rewritten after the link: l keeps the old inode.
    let l0b = layer(&[
        M::File("f", b"one"),
        M::Link("l", "f"),
        M::File("f", b"two"),
    ]);
    let t = merged(&[l0b]);
    assert_ne!(t.get("f").unwrap().origin, t.get("l").unwrap().origin);
    assert_ne!(
        t.get("f").unwrap().entry.data_offset,
        t.get("l").unwrap().entry.data_offset
    );
    // Overlay form keeps a link only while its owner is still at the named path.
    let form = overlay_form(&l0);
    let m = form.iter().find(|e| e.path == "m").unwrap();
    assert_eq!(
        (m.kind, m.link.as_deref()),
        (EntryKind::Hardlink, Some("f"))
    );
}

#[test]
fn file_dir_file_across_layers() {
    let l0 = layer(&[M::File("p", b"file")]);
    let l1 = layer(&[M::Dir("p/", 0o755), M::File("p/c", b"child")]);
    let l2 = layer(&[M::File("p", b"again")]);
    let t01 = merged(&[l0.clone(), l1.clone()]);
    assert_eq!(paths(&t01), vec!["p", "p/c"]);
    assert_eq!(t01.get("p").unwrap().entry.kind, EntryKind::Dir);
    let t = merged(&[l0, l1, l2]);
    assert_eq!(paths(&t), vec!["p"]);
    assert_eq!(
        (t.get("p").unwrap().entry.kind, t.get("p").unwrap().layer),
        (EntryKind::File, 2)
    );
}

#[test]
fn dot_slash_prefixes_and_implied_parents() {
    let l0 = layer(&[M::File("./a/b/c", b"c")]);
    let t = merged(&[l0]);
    assert_eq!(paths(&t), vec!["a", "a/b", "a/b/c"]);
    let a = &t.get("a").unwrap().entry;
    assert_eq!(
        (a.kind, a.mode, a.uid, a.gid, t.get("a").unwrap().origin),
        (EntryKind::Dir, 0o755, 0, 0, None)
    );
    let l1 = layer(&[M::File("./a/b/.wh.c", b"")]);
    let t = merged(&[layer(&[M::File("./a/b/c", b"c")]), l1]);
    assert_eq!(paths(&t), vec!["a", "a/b"]);
}

#[test]
fn directory_attribute_change_keeps_children() {
    let l0 = layer(&[M::Dir("d/", 0o755), M::File("d/x", b"x")]);
    let l1 = layer(&[M::Dir("d/", 0o700)]);
    let t = merged(&[l0, l1]);
    assert_eq!(paths(&t), vec!["d", "d/x"]);
    assert_eq!(
        (t.get("d").unwrap().entry.mode, t.get("d").unwrap().layer),
        (0o700, 1)
    );
}

#[test]
fn implied_parent_keeps_an_existing_directory() {
    let l0 = layer(&[M::Dir("d/", 0o700), M::File("d/x", b"x")]);
    let l1 = layer(&[M::File("d/y", b"y")]);
    let t = merged(&[l0, l1]);
    assert_eq!(paths(&t), vec!["d", "d/x", "d/y"]);
    assert_eq!(t.get("d").unwrap().entry.mode, 0o700);
}

#[test]
fn whiteout_and_recreate_in_one_layer_hides_only_lower_content() {
    let l0 = layer(&[M::File("a/x", b"x")]);
    let l1 = layer(&[M::File(".wh.a", b""), M::File("a/y", b"y")]);
    let t = merged(&[l0, l1.clone()]);
    assert_eq!(paths(&t), vec!["a", "a/y"]);
    // The overlay form turns it into an opaque directory (a whiteout device cannot share the name).
    let form = overlay_form(&l1);
    let a = form.iter().find(|e| e.path == "a").unwrap();
    assert_eq!(a.kind, EntryKind::Dir);
    assert!(a.xattrs.iter().any(|(k, _)| k == OVERLAY_OPAQUE_XATTR));
    // A whiteout after a same-layer entry of that name does not remove it either.
    let l2 = layer(&[M::File("b", b"b"), M::File(".wh.b", b"")]);
    assert_eq!(paths(&merged(&[l2])), vec!["b"]);
}

#[test]
fn dir_replaced_by_symlink_drops_the_subtree() {
    let l0 = layer(&[M::File("lib/x.so", b"so")]);
    let l1 = layer(&[M::Sym("lib", "usr/lib")]);
    let t = merged(&[l0, l1]);
    assert_eq!(paths(&t), vec!["lib"]);
    assert_eq!(t.get("lib").unwrap().entry.link.as_deref(), Some("usr/lib"));
    let kids: Vec<&str> = t.children("").map(|m| m.entry.path.as_str()).collect();
    assert_eq!(kids, vec!["lib"]);
}
