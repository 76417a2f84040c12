//! The subset of containerd's filter language that snapshot List receives, e.g.
//! `labels."containerd.io/snapshot.ref"==sha256:…,parent=="ns/1/sha256:…"` (what containerd 1.6's
//! metadata layer sends when a remote Prepare returns AlreadyExists). Several filter strings are
//! OR-ed; the comma-separated selectors inside one are AND-ed. Fields we do not know and the regex
//! operator `~=` match everything: List may return a superset because containerd re-checks.

use super::{Info, Kind, Result, SnapshotError};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// Bare field: true when the field is present and non-empty.
    Present,
    Eq(String),
    Ne(String),
    /// Not evaluated (regex); matches everything.
    Unsupported,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// A parsed OR of AND-ed selectors. An empty filter list matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any_of: Vec<Vec<Selector>>,
}

impl Filter {
    pub fn parse(filters: &[String]) -> Result<Self> {
        let any_of = filters
            .iter()
            .filter(|f| !f.trim().is_empty())
            .map(|f| parse_one(f))
            .collect::<Result<Vec<_>>>()?;
        Ok(Filter { any_of })
    }

    pub fn matches(&self, info: &Info) -> bool {
        self.any_of.is_empty()
            || self
                .any_of
                .iter()
                .any(|all| all.iter().all(|s| s.matches(info)))
    }
}

impl Selector {
    fn matches(&self, info: &Info) -> bool {
        let value: Option<&str> = match self.path.as_slice() {
            [f] if f == "name" => Some(&info.name),
            [f] if f == "parent" => Some(&info.parent),
            [f] if f == "kind" => Some(match info.kind {
                Kind::View => "view",
                Kind::Active => "active",
                Kind::Committed => "committed",
            }),
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => {
                info.labels.get(&rest.join(".")).map(String::as_str)
            }
            _ => return true,
        };
        match &self.op {
            Op::Present => value.is_some_and(|v| !v.is_empty()),
            Op::Eq(want) => value == Some(want.as_str()),
            Op::Ne(want) => value != Some(want.as_str()),
            Op::Unsupported => true,
        }
    }
}

fn invalid(filter: &str, why: &str) -> SnapshotError {
    SnapshotError::InvalidArgument(format!("filter {filter:?}: {why}"))
}

fn parse_one(filter: &str) -> Result<Vec<Selector>> {
    let mut p = Parser {
        src: filter,
        chars: filter.char_indices().peekable(),
    };
    let mut out = Vec::new();
    loop {
        out.push(p.selector()?);
        p.skip_ws();
        match p.chars.next() {
            None => return Ok(out),
            Some((_, ',')) => continue,
            Some((_, c)) => return Err(invalid(filter, &format!("unexpected {c:?}"))),
        }
    }
}

struct Parser<'a> {
    src: &'a str,
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    }

    fn selector(&mut self) -> Result<Selector> {
        let mut path = vec![self.field()?];
        while self.chars.next_if(|&(_, c)| c == '.').is_some() {
            path.push(self.field()?);
        }
        self.skip_ws();
        let op = match self.chars.peek().map(|&(_, c)| c) {
            Some(c @ ('=' | '!' | '~')) => {
                self.chars.next();
                if self.chars.next_if(|&(_, c)| c == '=').is_none() {
                    return Err(invalid(self.src, "expected an operator ==, != or ~="));
                }
                self.skip_ws();
                let v = self.value()?;
                match c {
                    '=' => Op::Eq(v),
                    '!' => Op::Ne(v),
                    _ => Op::Unsupported,
                }
            }
            _ => Op::Present,
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String> {
        self.skip_ws();
        if self.chars.peek().is_some_and(|&(_, c)| c == '"') {
            return self.quoted();
        }
        let mut s = String::new();
        while let Some((_, c)) = self
            .chars
            .next_if(|&(_, c)| c.is_ascii_alphanumeric() || c == '_')
        {
            s.push(c);
        }
        if s.is_empty() {
            return Err(invalid(self.src, "expected a field name"));
        }
        Ok(s)
    }

    fn value(&mut self) -> Result<String> {
        match self.chars.peek().map(|&(_, c)| c) {
            Some('"') => self.quoted(),
            // containerd also quotes regexes with / or |: take the body verbatim.
            Some(q @ ('/' | '|')) => {
                self.chars.next();
                let mut s = String::new();
                for (_, c) in self.chars.by_ref() {
                    if c == q {
                        return Ok(s);
                    }
                    s.push(c);
                }
                Err(invalid(self.src, "unterminated quoted value"))
            }
            _ => {
                let mut s = String::new();
                while let Some((_, c)) =
                    self.chars.next_if(|&(_, c)| c != ',' && !c.is_whitespace())
                {
                    s.push(c);
                }
                if s.is_empty() {
                    return Err(invalid(self.src, "expected a value"));
                }
                Ok(s)
            }
        }
    }

    /// A Go-style double-quoted string with the common escapes.
    fn quoted(&mut self) -> Result<String> {
        self.chars.next();
        let mut s = String::new();
        while let Some((_, c)) = self.chars.next() {
            match c {
                '"' => return Ok(s),
                '\\' => match self.chars.next() {
                    Some((_, 'n')) => s.push('\n'),
                    Some((_, 't')) => s.push('\t'),
                    Some((_, 'r')) => s.push('\r'),
                    Some((_, c @ ('"' | '\\' | '/'))) => s.push(c),
                    _ => return Err(invalid(self.src, "unsupported escape")),
                },
                c => s.push(c),
            }
        }
        Err(invalid(self.src, "unterminated quoted string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn info(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.into(),
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    fn f(s: &[&str]) -> Filter {
        Filter::parse(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn containerd_remote_lookup_filter() {
        // Exactly what containerd 1.6 metadata/snapshot.go formats:
        // fmt.Sprintf(`labels."containerd.io/snapshot.ref"==%s,parent==%q`, target, bparent)
        let flt = f(&[
            r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="default/3/sha256:p""#,
        ]);
        let hit = info(
            "sha256:abc",
            "default/3/sha256:p",
            Kind::Committed,
            &[("containerd.io/snapshot.ref", "sha256:abc")],
        );
        assert!(flt.matches(&hit));
        let mut wrong_parent = hit.clone();
        wrong_parent.parent = "other".into();
        assert!(!flt.matches(&wrong_parent));
        let mut no_label = hit.clone();
        no_label.labels.clear();
        assert!(!flt.matches(&no_label));
        // Empty parent quoted as "" matches a root snapshot.
        let root = f(&[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="""#]);
        let mut r = hit.clone();
        r.parent.clear();
        assert!(root.matches(&r));
        assert!(!root.matches(&hit));
    }

    #[test]
    fn or_of_filters_presence_ne_kind_and_unknowns() {
        let a = info("a", "", Kind::Active, &[("x", "1")]);
        let b = info("b", "a", Kind::Committed, &[]);
        assert!(f(&[]).matches(&a));
        assert!(f(&["labels.x"]).matches(&a) && !f(&["labels.x"]).matches(&b));
        assert!(f(&["kind==committed"]).matches(&b) && !f(&["kind==committed"]).matches(&a));
        assert!(f(&["name==zz", "name==b"]).matches(&b));
        assert!(f(&["name!=a"]).matches(&b) && !f(&["name!=a"]).matches(&a));
        assert!(f(&["parent"]).matches(&b) && !f(&["parent"]).matches(&a));
        assert!(f(&["somefield==1"]).matches(&a), "unknown field: superset");
        assert!(f(&["name~=/^z/"]).matches(&a), "regex: superset");
    }

    #[test]
    fn syntax_errors_are_invalid_argument() {
        for bad in ["==x", "name=x", r#"labels."unterminated"#, "name==", "a b"] {
            assert!(
                matches!(
                    Filter::parse(&[bad.to_string()]),
                    Err(SnapshotError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }
}
