//! Newtypes parsed at the HTTP edge: repository names, tags and manifest references.

use std::fmt;

use emulator::Digest;

/// A repository name matching the distribution spec:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Option<RepoName> {
        if s.is_empty() || s.len() > 255 {
            return None;
        }
        s.split('/')
            .all(valid_component)
            .then(|| RepoName(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    // Separators: one '.', one or two '_', or any run of '-'; each run sits between alphanumerics.
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-')
}

/// A manifest reference: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    /// `None` when it is neither a valid tag nor a valid digest.
    pub fn parse(s: &str) -> Option<Reference> {
        if s.contains(':') {
            s.parse::<Digest>().ok().map(Reference::Digest)
        } else if valid_tag(s) {
            Some(Reference::Tag(s.to_string()))
        } else {
            None
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        for ok in [
            "a",
            "library/redis",
            "a.b/c_d/e__f/g---h",
            "x0/1y",
            "teleport/azure-vote-front",
        ] {
            assert!(RepoName::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "-a", "a-", "a..b", "a___b", "a/_tags", "a/..", "a b",
            "a.-b",
        ] {
            assert!(RepoName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn tags_and_refs() {
        assert!(valid_tag("v1.0_rc-1"));
        assert!(valid_tag("_x"));
        assert!(!valid_tag(".x"));
        assert!(!valid_tag(&"a".repeat(129)));
        assert!(matches!(
            Reference::parse("latest"),
            Some(Reference::Tag(_))
        ));
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(Reference::parse(&d), Some(Reference::Digest(_))));
        assert!(Reference::parse("sha256:abc").is_none());
    }
}
