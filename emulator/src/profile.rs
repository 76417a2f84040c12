//! Learned start profiles: per expanded layer, the byte ranges of its data blob a container start
//! read, in first-access order. A node records them on a first start and uploads them
//! (`PUT /mount/v1/{repo}/_profiles/{layer}`); later cold starts download them and prefetch those
//! ranges before the reader asks. The document is shared by the registry (which validates and
//! stores it) and the node (which writes and replays it).
//!
//! Wire and disk format (version 1, JSON): `{"schemaVersion":1,"ranges":[[offset,len],…]}`.
//! Decoding validates and canonicalises: the ranges come back disjoint, still in first-access
//! order (a range's parts already covered by an earlier range are cut out, so a replay never
//! fetches a byte twice); the registry stores only the canonical re-encoding.
//!
//! Bounds (a profile is written by any pusher and replayed by every node): at most
//! [`MAX_RANGES`] ranges before and after canonicalisation, each non-empty and inside the data
//! blob, and the ranges as sent may add up to at most [`MAX_OVERLAP_FACTOR`] × the data blob (a
//! recorder's ranges overlap a little; 65,536 copies of the whole layer are refused, not merged).
//!
//! A profile belongs to one repository's image (the registry stores it per repository and
//! layer; a pusher of that repository may replace or delete it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the profile document.
pub const PROFILE_SCHEMA_VERSION: u32 = 1;
/// Most ranges one profile may hold.
pub const MAX_RANGES: usize = 64 * 1024;
/// The ranges as sent may add up to at most this many times the data blob's size.
pub const MAX_OVERLAP_FACTOR: u64 = 2;

/// Why a profile body was refused (each maps to a 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("unsupported schemaVersion {0} (want {PROFILE_SCHEMA_VERSION})")]
    Version(u32),
    #[error("{0} ranges (at most {MAX_RANGES})")]
    TooMany(usize),
    #[error(
        "the ranges add up to {total} bytes, more than {MAX_OVERLAP_FACTOR} × the data blob ({size} bytes)"
    )]
    TooMuch { total: u64, size: u64 },
    #[error("range {index} ({offset}+{len}) is empty or outside the data blob ({size} bytes)")]
    Range {
        index: usize,
        offset: u64,
        len: u64,
        size: u64,
    },
}

/// A decoded, validated profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    pub schema_version: u32,
    /// `(offset, len)` in the layer's expanded data blob, first-access order.
    pub ranges: Vec<(u64, u64)>,
}

impl Profile {
    /// Decode `body`, check it against a data blob of `data_size` bytes and canonicalise it
    /// (overlaps cut out, first-access order kept).
    pub fn decode(body: &[u8], data_size: u64) -> Result<Profile, ProfileError> {
        let mut p: Profile =
            serde_json::from_slice(body).map_err(|e| ProfileError::Json(e.to_string()))?;
        p.validate(data_size)?;
        p.ranges = disjoint(&p.ranges);
        if p.ranges.len() > MAX_RANGES {
            return Err(ProfileError::TooMany(p.ranges.len()));
        }
        Ok(p)
    }

    /// Every range non-empty and inside the blob; count within [`MAX_RANGES`]; the sum of the
    /// lengths within [`MAX_OVERLAP_FACTOR`] × `data_size`.
    pub fn validate(&self, data_size: u64) -> Result<(), ProfileError> {
        if self.schema_version != PROFILE_SCHEMA_VERSION {
            return Err(ProfileError::Version(self.schema_version));
        }
        if self.ranges.len() > MAX_RANGES {
            return Err(ProfileError::TooMany(self.ranges.len()));
        }
        let mut total: u64 = 0;
        for (index, &(offset, len)) in self.ranges.iter().enumerate() {
            let inside = offset.checked_add(len).is_some_and(|end| end <= data_size);
            if len == 0 || !inside {
                return Err(ProfileError::Range {
                    index,
                    offset,
                    len,
                    size: data_size,
                });
            }
            total = total.saturating_add(len);
        }
        if total > data_size.saturating_mul(MAX_OVERLAP_FACTOR) {
            return Err(ProfileError::TooMuch {
                total,
                size: data_size,
            });
        }
        Ok(())
    }

    /// Canonical encoding (what is stored and served).
    pub fn encode(&self) -> Vec<u8> {
        // invariant: a struct of integers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// `ranges` (valid: non-empty, no overflow) with every byte kept only in its first range, in
/// order; pieces of one range stay in order. O(n log n): the covered set is a map of disjoint
/// `start → end` spans, each range walks only the spans it overlaps and then merges them.
fn disjoint(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut covered: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out = Vec::with_capacity(ranges.len());
    for &(offset, len) in ranges {
        let end = offset.saturating_add(len);
        // Spans touching [offset, end]: the one starting at or before offset, and those inside.
        let first = covered
            .range(..=offset)
            .next_back()
            .filter(|&(_, &e)| e >= offset)
            .map(|(&s, _)| s)
            .unwrap_or(offset);
        let touching: Vec<(u64, u64)> = covered.range(first..=end).map(|(&s, &e)| (s, e)).collect();
        let mut pos = offset;
        let (mut lo, mut hi) = (offset, end);
        for &(s, e) in &touching {
            if s > pos {
                out.push((pos, s.min(end) - pos));
            }
            pos = pos.max(e);
            lo = lo.min(s);
            hi = hi.max(e);
            covered.remove(&s);
        }
        if pos < end {
            out.push((pos, end - pos));
        }
        covered.insert(lo, hi);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_validates() {
        let ok = br#"{"schemaVersion":1,"ranges":[[0,10],[90,10]]}"#;
        let p = Profile::decode(ok, 100).unwrap();
        assert_eq!(p.ranges, vec![(0, 10), (90, 10)]);
        assert_eq!(Profile::decode(&p.encode(), 100).unwrap(), p);
        assert!(matches!(
            Profile::decode(br#"{"schemaVersion":1,"ranges":[[95,10]]}"#, 100),
            Err(ProfileError::Range { index: 0, .. })
        ));
        assert!(matches!(
            Profile::decode(br#"{"schemaVersion":1,"ranges":[[1,0]]}"#, 100),
            Err(ProfileError::Range { .. })
        ));
        let overflow = format!(r#"{{"schemaVersion":1,"ranges":[[{},2]]}}"#, u64::MAX);
        assert!(matches!(
            Profile::decode(overflow.as_bytes(), 100),
            Err(ProfileError::Range { .. })
        ));
        assert!(matches!(
            Profile::decode(br#"{"schemaVersion":2,"ranges":[]}"#, 100),
            Err(ProfileError::Version(2))
        ));
        assert!(matches!(
            Profile::decode(b"nope", 100),
            Err(ProfileError::Json(_))
        ));
    }

    #[test]
    fn overlaps_are_cut_out_in_first_access_order() {
        let p = |r: &[(u64, u64)]| {
            let body = serde_json::to_vec(&Profile {
                schema_version: 1,
                ranges: r.to_vec(),
            })
            .unwrap();
            Profile::decode(&body, 1000).map(|p| p.ranges)
        };
        assert_eq!(
            p(&[(50, 10), (0, 100)]).unwrap(),
            vec![(50, 10), (0, 50), (60, 40)]
        );
        assert_eq!(
            p(&[(0, 10), (10, 10), (5, 10)]).unwrap(),
            vec![(0, 10), (10, 10)]
        );
        assert_eq!(
            p(&[(0, 10), (20, 10), (0, 40)]).unwrap(),
            vec![(0, 10), (20, 10), (10, 10), (30, 10)]
        );
        assert_eq!(
            p(&[(900, 100), (0, 10)]).unwrap(),
            vec![(900, 100), (0, 10)]
        );
    }

    #[test]
    fn whole_layer_repeated_is_refused() {
        let body = serde_json::to_vec(&Profile {
            schema_version: 1,
            ranges: vec![(0, 1000); MAX_RANGES],
        })
        .unwrap();
        assert!(matches!(
            Profile::decode(&body, 1000),
            Err(ProfileError::TooMuch { .. })
        ));
        let body = serde_json::to_vec(&Profile {
            schema_version: 1,
            ranges: vec![(0, 1); MAX_RANGES + 1],
        })
        .unwrap();
        assert!(matches!(
            Profile::decode(&body, 1000),
            Err(ProfileError::TooMany(_))
        ));
    }
}
