//! Content digests (`sha256:<64 hex>`), parsed once at the edge and trusted after.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Digest of a byte slice.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }
    /// From a finished hasher.
    pub fn from_sha256(h: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex::encode(h.finalize())))
    }
    /// From the 32 raw bytes of a sha256.
    pub fn from_raw_sha256(raw: &[u8; 32]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(raw)))
    }
    /// The 32 raw bytes.
    pub fn raw_sha256(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // invariant: the hex part was validated at construction.
        if hex::decode_to_slice(self.hex(), &mut out).is_err() {
            debug_assert!(false, "Digest holds invalid hex");
        }
        out
    }
    /// The algorithm part (`sha256`).
    pub fn algorithm(&self) -> &str {
        "sha256"
    }
    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| Error::InvalidDigest(s.to_string()))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::InvalidDigest(s.to_string()));
        }
        Ok(Digest(s.to_string()))
    }
}

impl TryFrom<String> for Digest {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}
