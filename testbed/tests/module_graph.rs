//! `module_cycles`: modules depend one way inside every workspace crate. Reads each crate's
//! module tree from its roots (`src/lib.rs`, `src/main.rs`, `src/bin/*.rs`, following `mod x;`
//! and `#[path]`), collects every `crate::…`, `super::…` and `self::…` path (in `use` trees and
//! inline), and fails naming each cycle among sibling modules.
//!
//! The graph is drawn per level of the module tree: a reference from anywhere inside sibling `a`
//! to anything inside sibling `b` (same parent) is the edge `a → b`. A module using its own
//! ancestors or descendants is containment, not an edge (a `mod.rs` re-exporting its children
//! and the children using the parent's error type is the usual facade). So `remote → manager`
//! at the crate's top level counts even when only `manager/proto.rs` names `remote`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside one crate root, e.g. `["manager", "client"]`.
type ModPath = Vec<String>;

/// One crate root's module tree: module path → file, and the raw references found.
#[derive(Default)]
struct Tree {
    files: BTreeMap<ModPath, PathBuf>,
    /// (source module, absolute path segments the reference names).
    refs: Vec<(ModPath, Vec<String>)>,
}

/// Source text with comments, string and char literals blanked out (same length kept
/// irrelevant; only tokens matter).
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && !ident_before(&b, i) {
            // Raw string: r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (1..=hashes).all(|k| b.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn ident_before(b: &[char], i: usize) -> bool {
    i > 0 && is_ident(b[i - 1])
}

/// Tokens: identifiers, `::`, and single punctuation characters.
fn tokens(src: &str) -> Vec<String> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if is_ident(c) {
            let s = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            out.push(b[s..i].iter().collect());
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else if c == '"' && b.get(i + 1) == Some(&'"') {
            out.push("\"\"".into());
            i += 2;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// Expands a `use` tree (tokens after `use`, up to `;`) into its paths.
fn use_paths(t: &[String]) -> Vec<Vec<String>> {
    fn tree(t: &[String], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
        let mut path = prefix.to_vec();
        while *i < t.len() {
            match t[*i].as_str() {
                "::" => *i += 1,
                "{" => {
                    *i += 1;
                    loop {
                        tree(t, i, &path, out);
                        match t.get(*i).map(String::as_str) {
                            Some(",") => *i += 1,
                            Some("}") => {
                                *i += 1;
                                return;
                            }
                            _ => return,
                        }
                        if t.get(*i).map(String::as_str) == Some("}") {
                            *i += 1;
                            return;
                        }
                    }
                }
                "," | "}" => break,
                "as" => *i += 2,
                "*" => *i += 1,
                s => {
                    if s != "self" || path.is_empty() {
                        path.push(s.to_owned());
                    }
                    *i += 1;
                }
            }
        }
        out.push(path);
    }
    let mut out = Vec::new();
    let mut i = 0;
    tree(t, &mut i, &[], &mut out);
    out
}

/// Where `mod name;` declared in `file` (`inline` module levels deep) lives. A crate root and
/// a `mod.rs` own their directory; `a.rs` owns `a/`.
fn child_file(
    file: &Path,
    is_root: bool,
    inline: &[String],
    name: &str,
    attr_path: Option<&str>,
) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new("."));
    if let Some(p) = attr_path {
        return dir.join(p);
    }
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let mut base = if is_root || stem == "mod" {
        dir.to_path_buf()
    } else {
        dir.join(stem)
    };
    for m in inline {
        base = base.join(m);
    }
    let flat = base.join(format!("{name}.rs"));
    if flat.exists() {
        flat
    } else {
        base.join(name).join("mod.rs")
    }
}

/// Reads `file` as module `module` into `tree`, following its `mod x;` declarations.
fn read_module(file: &Path, module: ModPath, tree: &mut Tree) -> Result<(), String> {
    let src = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    tree.files.insert(module.clone(), file.to_path_buf());
    let t = tokens(&strip(&src));
    // Inline `mod x { … }` blocks open at brace depth d: (name, d).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut attr_path: Option<String> = None;
    let here = |inline: &[(String, usize)]| -> ModPath {
        let mut m = module.clone();
        m.extend(inline.iter().map(|(n, _)| n.clone()));
        m
    };
    let mut i = 0;
    while i < t.len() {
        let tok = t[i].as_str();
        match tok {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                while inline.last().is_some_and(|(_, d)| *d > depth) {
                    inline.pop();
                }
            }
            "path" if i >= 2 && t[i - 1] == "[" && t[i - 2] == "#" => {
                // #[path = "…"]: the literal is blanked by strip(); read it from the source.
                attr_path = src_path_attr(&src, attr_path_index(&t, i));
            }
            "mod" if t.get(i + 1).is_some_and(|n| n.chars().all(is_ident)) => {
                let name = t[i + 1].clone();
                match t.get(i + 2).map(String::as_str) {
                    Some(";") => {
                        let names: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
                        let child = child_file(
                            file,
                            module.is_empty(),
                            &names,
                            &name,
                            attr_path.as_deref(),
                        );
                        let mut m = here(&inline);
                        m.push(name);
                        read_module(&child, m, tree)?;
                        attr_path = None;
                        i += 3;
                        continue;
                    }
                    Some("{") => {
                        depth += 1;
                        inline.push((name, depth));
                        attr_path = None;
                        i += 3;
                        continue;
                    }
                    _ => {}
                }
            }
            "use" => {
                let end = t[i..]
                    .iter()
                    .position(|s| s == ";")
                    .map_or(t.len(), |p| i + p);
                for p in use_paths(&t[i + 1..end]) {
                    if let Some(abs) = absolute(&here(&inline), &p) {
                        tree.refs.push((module.clone(), abs));
                    }
                }
                i = end;
                continue;
            }
            "crate" | "super" | "self"
                if t.get(i + 1).map(String::as_str) == Some("::")
                    && (i == 0 || (t[i - 1] != "::" && t[i - 1] != "$")) =>
            {
                let mut p = vec![tok.to_owned()];
                let mut j = i + 1;
                while t.get(j).map(String::as_str) == Some("::")
                    && t.get(j + 1).is_some_and(|s| s.chars().all(is_ident))
                {
                    p.push(t[j + 1].clone());
                    j += 2;
                }
                if let Some(abs) = absolute(&here(&inline), &p) {
                    tree.refs.push((module.clone(), abs));
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Index, in token order, of this `#[path` attribute among all of them (to find its literal).
fn attr_path_index(t: &[String], i: usize) -> usize {
    (0..i)
        .filter(|&k| t[k] == "path" && k >= 2 && t[k - 1] == "[" && t[k - 2] == "#")
        .count()
}

fn src_path_attr(src: &str, n: usize) -> Option<String> {
    let at = src.match_indices("#[path").nth(n)?.0;
    let rest = &src[at..];
    let open = rest.find('"')? + 1;
    let close = rest[open..].find('"')? + open;
    Some(rest[open..close].to_owned())
}

/// `crate::a::b`, `super::x`, `self::y` seen from module `here` → segments from the crate
/// root. Other paths (extern crates, std) are not ours: None.
fn absolute(here: &ModPath, p: &[String]) -> Option<Vec<String>> {
    let mut segs = p.iter();
    let mut base = match segs.next()?.as_str() {
        "crate" => Vec::new(),
        "super" => {
            let mut b = here.clone();
            b.pop()?;
            b
        }
        "self" => here.clone(),
        _ => return None,
    };
    let mut rest: Vec<String> = segs.cloned().collect();
    while rest.first().is_some_and(|s| s == "super") {
        base.pop()?;
        rest.remove(0);
    }
    base.extend(rest);
    Some(base)
}

/// The longest prefix of `path` that is a module of `tree` (file or inline modules fold into
/// their file).
fn resolve(tree: &Tree, path: &[String]) -> ModPath {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| tree.files.contains_key(p))
        .unwrap_or_default()
}

/// Sibling edges: parent module → (child → children it depends on).
fn sibling_graph(tree: &Tree) -> BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> {
    let mut g: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (from, path) in &tree.refs {
        let to = resolve(tree, path);
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        if common == from.len() || common == to.len() {
            continue; // one contains the other
        }
        g.entry(from[..common].to_vec())
            .or_default()
            .entry(from[common].clone())
            .or_default()
            .insert(to[common].clone());
    }
    g
}

/// Every cycle (strongly connected component of two or more, or a self-loop) as a readable
/// string, e.g. `fuse-mount (lib): daemon → metrics → daemon`.
fn cycles(label: &str, tree: &Tree) -> Vec<String> {
    let mut found = Vec::new();
    for (parent, edges) in sibling_graph(tree) {
        for scc in sccs(&edges) {
            // Walk one cycle through the component to name it in order.
            let inside: BTreeSet<&String> = scc.iter().collect();
            let start = &scc[0];
            let mut walk = vec![start.clone()];
            let mut cur = start.clone();
            loop {
                let next = edges
                    .get(&cur)
                    .and_then(|n| {
                        n.iter()
                            .find(|x| *x == start && walk.len() > 1)
                            .or_else(|| n.iter().find(|x| inside.contains(x) && !walk.contains(x)))
                            .or_else(|| n.iter().find(|x| *x == start))
                    })
                    .cloned();
                match next {
                    Some(n) if n == *start => {
                        walk.push(n);
                        break;
                    }
                    Some(n) => {
                        walk.push(n.clone());
                        cur = n;
                    }
                    None => break,
                }
            }
            let scope = if parent.is_empty() {
                String::new()
            } else {
                format!("{}::", parent.join("::"))
            };
            found.push(format!(
                "{label}: {}   (modules in the cycle: {})",
                walk.iter()
                    .map(|m| format!("{scope}{m}"))
                    .collect::<Vec<_>>()
                    .join(" → "),
                scc.join(", ")
            ));
        }
    }
    found
}

/// Tarjan's strongly connected components of size ≥ 2.
fn sccs(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct St<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on: BTreeSet<String>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit(s: &mut St, v: &str) {
        s.index.insert(v.to_owned(), s.next);
        s.low.insert(v.to_owned(), s.next);
        s.next += 1;
        s.stack.push(v.to_owned());
        s.on.insert(v.to_owned());
        let succ: Vec<String> = s
            .edges
            .get(v)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default();
        for w in succ {
            if !s.index.contains_key(&w) {
                visit(s, &w);
                let lw = s.low[&w];
                let lv = s.low[v];
                s.low.insert(v.to_owned(), lv.min(lw));
            } else if s.on.contains(&w) {
                let iw = s.index[&w];
                let lv = s.low[v];
                s.low.insert(v.to_owned(), lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(&w);
                let done = w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = St {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    let nodes: Vec<String> = edges.keys().cloned().collect();
    for v in nodes {
        if !s.index.contains_key(&v) {
            visit(&mut s, &v);
        }
    }
    s.out
}

/// Cycles in every root (lib, main, bins) of the crate at `dir`.
fn crate_cycles(name: &str, dir: &Path) -> Result<Vec<String>, String> {
    let src = dir.join("src");
    let mut roots: Vec<(String, PathBuf)> = Vec::new();
    for (kind, f) in [("lib", src.join("lib.rs")), ("main", src.join("main.rs"))] {
        if f.exists() {
            roots.push((kind.into(), f));
        }
    }
    if let Ok(rd) = std::fs::read_dir(src.join("bin")) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "rs") {
                roots.push((format!("bin {}", p.display()), p));
            }
        }
    }
    let mut out = Vec::new();
    for (kind, root) in roots {
        let mut tree = Tree::default();
        read_module(&root, Vec::new(), &mut tree)?;
        out.extend(cycles(&format!("{name} ({kind})"), &tree));
    }
    Ok(out)
}

/// This workspace, or the checkout named by `MODULE_GRAPH_ROOT` (to look at another commit).
fn workspace_root() -> PathBuf {
    std::env::var_os("MODULE_GRAPH_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

#[test]
fn module_cycles() {
    let root = workspace_root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let doc: toml::Table = manifest.parse().unwrap();
    let members = doc["workspace"]["members"].as_array().unwrap();
    assert!(members.len() >= 5, "workspace members not found");
    let mut all = Vec::new();
    for m in members {
        let m = m.as_str().unwrap();
        all.extend(crate_cycles(m, &root.join(m)).unwrap());
    }
    assert!(
        all.is_empty(),
        "module cycles (modules must depend one way):\n  {}",
        all.join("\n  ")
    );
}

#[cfg(test)] // test helper: unwrap is the assertion
/// A throwaway crate laid out from `(path under src/, contents)`.
fn fake_crate(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (p, body) in files {
        let f = d.path().join("src").join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, body).unwrap();
    }
    d
}

/// Today's (before the fix) fuse-mount shape, cut down: every one of its cycles is named.
#[test]
fn finds_the_cycles_fuse_mount_had() {
    let d = fake_crate(&[
        (
            "lib.rs",
            "pub mod daemon;\npub mod metrics;\npub mod manager;\npub mod remote;\npub mod snapshot;\npub mod fetch;\n",
        ),
        ("daemon.rs", "pub fn run() { crate::metrics::serve(); }\npub fn snapshot_counts() {}\n"),
        ("metrics.rs", "use crate::daemon::snapshot_counts;\npub fn serve() { snapshot_counts() }\n"),
        ("fetch/mod.rs", "pub mod http;\npub use http::Client;\npub struct Error;\n"),
        ("fetch/http.rs", "use super::{Error};\npub struct Client;\n#[cfg(test)]\nmod tests { use super::*; use super::super::Error as E; }\n"),
        ("manager/mod.rs", "pub mod proto;\npub enum Error { Fetch(crate::fetch::Error) }\n"),
        ("manager/proto.rs", "use crate::remote::{ImageRef, LayerRef};\n"),
        (
            "remote/mod.rs",
            "// use crate::daemon::x; (a comment is not an edge)\nuse crate::snapshot::{Labels, LABEL_TARGET_REF};\npub enum RemoteError { Manager(Box<crate::manager::Error>) }\nconst S: &str = \"crate::metrics::x\";\n",
        ),
        ("snapshot/mod.rs", "pub enum SnapshotError { Remote(#[from] crate::remote::RemoteError) }\n"),
    ]);
    let found = crate_cycles("fake", d.path()).unwrap();
    let text = found.join("\n");
    assert_eq!(found.len(), 2, "{text}");
    assert!(text.contains("daemon → metrics → daemon"), "{text}");
    assert!(
        text.contains("(modules in the cycle: manager, remote, snapshot)"),
        "{text}"
    );
    // Comments and strings are not references: no cycle through them.
    assert!(
        !text.contains("(modules in the cycle: daemon, metrics, remote"),
        "{text}"
    );
}

/// registry-mock's error ↔ http_util, with grouped and nested `use` trees and `self`.
#[test]
fn finds_a_cycle_through_use_groups_and_nested_modules() {
    let d = fake_crate(&[
        (
            "lib.rs",
            "pub mod error;\npub mod http_util;\npub mod routes;\n",
        ),
        (
            "error.rs",
            "pub enum Code {}\nfn f() { use crate::{http_util::{self, plain as p}}; }\n",
        ),
        ("http_util.rs", "use crate::error::Code;\n"),
        ("routes/mod.rs", "pub mod a;\npub mod b;\n"),
        ("routes/a.rs", "use super::b::X;\npub struct Y;\n"),
        (
            "routes/b.rs",
            "pub struct X;\nfn g() -> super::a::Y { todo!() }\n",
        ),
    ]);
    let found = crate_cycles("fake", d.path()).unwrap();
    let text = found.join("\n");
    assert_eq!(found.len(), 2, "{text}");
    assert!(text.contains("error → http_util → error"), "{text}");
    assert!(text.contains("routes::a → routes::b → routes::a"), "{text}");
}

/// One-way graphs, a parent re-exporting its children while they use its error type, and
/// `#[path]` modules pass.
#[test]
fn one_way_modules_and_facades_pass() {
    let d = fake_crate(&[
        ("lib.rs", "pub mod fetch;\npub mod fs;\npub mod manager;\n#[path = \"../other/x.rs\"]\nmod x;\n"),
        ("fetch/mod.rs", "mod layer;\npub use layer::Handle;\npub struct Error;\n"),
        ("fetch/layer.rs", "use super::Error;\npub struct Handle;\n"),
        ("fs.rs", "use crate::fetch::Handle;\n"),
        ("manager/mod.rs", "pub mod layers;\nuse crate::{fetch, fs};\n"),
        ("manager/layers.rs", "use crate::fs as f;\nuse super::super::fetch::Handle;\nfn l<'a>(c: &'a str) -> char { 'x' }\n"),
    ]);
    std::fs::create_dir_all(d.path().join("other")).unwrap();
    std::fs::write(d.path().join("other/x.rs"), "use crate::manager::layers;\n").unwrap();
    let found = crate_cycles("fake", d.path()).unwrap();
    assert!(found.is_empty(), "{found:?}");
}
