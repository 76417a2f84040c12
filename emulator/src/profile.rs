//! Learned start profiles: per expanded layer, the byte ranges of its data blob a container start
//! read, in first-access order. A node records them on a first start and uploads them
//! (`PUT /mount/v1/{repo}/_profiles/{layer}`); later cold starts download them and prefetch those
//! ranges before the reader asks. The document is shared by the registry (which validates and
//! stores it) and the node (which writes and replays it).
//!
//! Wire and disk format (version 1, JSON): `{"schemaVersion":1,"ranges":[[offset,len],…]}`.
//! Decoding validates; the registry stores only the canonical re-encoding.
//!
//! A profile belongs to the layer's content (it is stored beside the expansion outputs, so every
//! repository linking the layer shares it). First writer wins: a start profile describes one
//! cold start, later uploads of the same layer describe the same image and would only churn the
//! file, and "kept" needs no locking beyond an atomic create-if-absent.

use serde::{Deserialize, Serialize};

/// Version of the profile document.
pub const PROFILE_SCHEMA_VERSION: u32 = 1;
/// Most ranges one profile may hold.
pub const MAX_RANGES: usize = 64 * 1024;

/// Why a profile body was refused (each maps to a 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("unsupported schemaVersion {0} (want {PROFILE_SCHEMA_VERSION})")]
    Version(u32),
    #[error("{0} ranges (at most {MAX_RANGES})")]
    TooMany(usize),
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
    /// Decode `body` and check it against a data blob of `data_size` bytes.
    pub fn decode(body: &[u8], data_size: u64) -> Result<Profile, ProfileError> {
        let p: Profile =
            serde_json::from_slice(body).map_err(|e| ProfileError::Json(e.to_string()))?;
        p.validate(data_size)?;
        Ok(p)
    }

    /// Every range non-empty and inside the blob; count within [`MAX_RANGES`].
    pub fn validate(&self, data_size: u64) -> Result<(), ProfileError> {
        if self.schema_version != PROFILE_SCHEMA_VERSION {
            return Err(ProfileError::Version(self.schema_version));
        }
        if self.ranges.len() > MAX_RANGES {
            return Err(ProfileError::TooMany(self.ranges.len()));
        }
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
        }
        Ok(())
    }

    /// Canonical encoding (what is stored and served).
    pub fn encode(&self) -> Vec<u8> {
        // invariant: a struct of integers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
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
}
