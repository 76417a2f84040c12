//! Working-set selection and the aggregate hash, shared verbatim by `tb-entrypoint` and the
//! `fixtures` crate (included there with `#[path]`), so both sides agree without a dependency.
//! std + sha2 only.

use sha2::{Digest as _, Sha256};

/// Default share of the image's files a container reads at start (Slacker measured ~6%).
pub const DEFAULT_WORKING_SET: f64 = 0.06;

/// One regular file of the manifest (`/etc/tb/manifest.tsv`: `path\tsize\tsha256hex`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestLine {
    /// Absolute path inside the container (`/usr/...`).
    pub path: String,
    pub size: u64,
    /// 64 lowercase hex characters.
    pub sha256: String,
}

/// Parse the manifest text; `None` names the first bad line (1-based).
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestLine>, usize> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split('\t');
        let (Some(path), Some(size), Some(sha), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(i + 1);
        };
        let Ok(size) = size.parse::<u64>() else {
            return Err(i + 1);
        };
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(i + 1);
        }
        out.push(ManifestLine {
            path: path.to_string(),
            size,
            sha256: sha.to_string(),
        });
    }
    Ok(out)
}

/// FNV-1a 64: a stable, dependency-free hash of the path decides the selection order.
fn path_key(path: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The working set: `ceil(fraction * n)` files (at least one when there are files), chosen by
/// the smallest path hashes, returned sorted by path. Same manifest + fraction → same set.
pub fn select(files: &[ManifestLine], fraction: f64) -> Vec<ManifestLine> {
    if files.is_empty() {
        return Vec::new();
    }
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        DEFAULT_WORKING_SET
    };
    let want = ((files.len() as f64) * fraction).ceil() as usize;
    let want = want.clamp(1, files.len());
    let mut keyed: Vec<(u64, &ManifestLine)> =
        files.iter().map(|f| (path_key(&f.path), f)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.path.cmp(&b.1.path)));
    let mut chosen: Vec<ManifestLine> = keyed
        .into_iter()
        .take(want)
        .map(|(_, f)| f.clone())
        .collect();
    chosen.sort_by(|a, b| a.path.cmp(&b.path));
    chosen
}

/// FNV-1a 64 of the seed's bytes then the path: the seeded order of [`select_varied`].
fn seeded_key(seed: u64, path: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.to_le_bytes().iter().chain(path.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The working set of one run with a seed: seed 0 is the *learning* set ([`select`]); any
/// other seed keeps `round(overlap × k)` files of the learning set (k = its size) and swaps the
/// rest for files outside it, both picked in the seed's own order. So a start profile learned
/// from seed 0 is a guess for every other seed, right for about `overlap` of the files.
/// Returned sorted by path, like [`select`].
pub fn select_varied(
    files: &[ManifestLine],
    fraction: f64,
    seed: u64,
    overlap: f64,
) -> Vec<ManifestLine> {
    let base = select(files, fraction);
    if seed == 0 {
        return base;
    }
    let overlap = if overlap.is_finite() {
        overlap.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let k = base.len();
    let in_base: std::collections::HashSet<&str> = base.iter().map(|f| f.path.as_str()).collect();
    fn order(seed: u64, set: Vec<&ManifestLine>) -> Vec<&ManifestLine> {
        let mut keyed: Vec<(u64, &ManifestLine)> = set
            .into_iter()
            .map(|f| (seeded_key(seed, &f.path), f))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.path.cmp(&b.1.path)));
        keyed.into_iter().map(|(_, f)| f).collect()
    }
    let others = order(
        seed,
        files
            .iter()
            .filter(|f| !in_base.contains(f.path.as_str()))
            .collect(),
    );
    let mut keep = ((k as f64) * overlap).round() as usize;
    // Too few files outside the learning set: keep more of it.
    keep = keep.max(k.saturating_sub(others.len()));
    let mut chosen: Vec<ManifestLine> = order(seed, base.iter().collect())
        .into_iter()
        .take(keep)
        .chain(others.into_iter().take(k - keep))
        .cloned()
        .collect();
    chosen.sort_by(|a, b| a.path.cmp(&b.path));
    chosen
}

/// Aggregate hash over a path-sorted set: sha256 of `path \0 sha256hex \n` for each file.
pub fn aggregate_hash(sorted: &[ManifestLine]) -> String {
    let mut h = Sha256::new();
    for f in sorted {
        h.update(f.path.as_bytes());
        h.update([0u8]);
        h.update(f.sha256.as_bytes());
        h.update([b'\n']);
    }
    format!("sha256:{}", hex_lower(&h.finalize()))
}

pub fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize) -> Vec<ManifestLine> {
        (0..n)
            .map(|i| ManifestLine {
                path: format!("/f/{i:04}"),
                size: i as u64,
                sha256: "0".repeat(64),
            })
            .collect()
    }

    #[test]
    fn varied_sets_overlap_the_learning_set_as_asked() {
        let all = files(1000);
        let base = select(&all, 0.1);
        assert_eq!(
            select_varied(&all, 0.1, 0, 0.3),
            base,
            "seed 0 is the learning set"
        );
        for (seed, overlap) in [(1, 0.8), (2, 0.8), (7, 0.5), (3, 0.0), (4, 1.0)] {
            let v = select_varied(&all, 0.1, seed, overlap);
            assert_eq!(v.len(), base.len());
            let common = v.iter().filter(|f| base.contains(f)).count();
            assert_eq!(common, (base.len() as f64 * overlap).round() as usize);
            assert!(
                v.windows(2).all(|w| w[0].path < w[1].path),
                "sorted, no dups"
            );
            assert_eq!(v, select_varied(&all, 0.1, seed, overlap), "deterministic");
        }
        assert_ne!(
            select_varied(&all, 0.1, 1, 0.8),
            select_varied(&all, 0.1, 2, 0.8),
            "seeds differ"
        );
        // Whole image: nothing outside the learning set to swap in.
        assert_eq!(select_varied(&all, 1.0, 5, 0.5).len(), 1000);
    }
}
