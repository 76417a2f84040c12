//! Peer lazy-pull systems measured next to the teleporter on the same registry and link:
//! [`soci`] (AWS SOCI snapshotter, from Debian's `soci-snapshotter` package via
//! `scripts/get-peers.sh soci`).

pub mod soci;
