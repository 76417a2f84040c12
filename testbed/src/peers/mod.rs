//! Peer lazy-pull systems measured next to the teleporter on the same registry and link:
//! [`soci`] (AWS SOCI snapshotter, from Debian's `soci-snapshotter` package via
//! `scripts/get-peers.sh soci`) and [`nydus`] (nydus-snapshotter + nydusd in FUSE mode, via
//! `scripts/get-peers.sh nydus`).

pub mod nydus;
pub mod soci;

use crate::error::{Error, Result};

/// A peer system `testbed compare --peers` can add to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    Soci,
    Nydus,
}

impl Peer {
    pub fn as_str(self) -> &'static str {
        match self {
            Peer::Soci => "soci",
            Peer::Nydus => "nydus",
        }
    }
}

impl std::str::FromStr for Peer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "soci" => Ok(Peer::Soci),
            "nydus" => Ok(Peer::Nydus),
            other => Err(Error::Invalid(format!(
                "unknown peer {other:?} (known: soci, nydus)"
            ))),
        }
    }
}
