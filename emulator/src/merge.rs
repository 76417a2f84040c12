//! The mount logic: OCI layer semantics over a stack of expanded layers.

use std::collections::BTreeMap;

use crate::entry::Entry;
use crate::error::Result;
use crate::format::Index;

/// One node of the merged view: the winning entry and which layer (0 = bottom) it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedEntry {
    pub entry: Entry,
    pub layer: usize,
}

/// The resolved tree a standard pull produces: whiteouts and opaque dirs applied, later layers
/// winning, directories' attributes updated, hardlinks resolved to their target's data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergedTree {
    /// Every path present in the final rootfs (no whiteout / opaque markers), sorted.
    pub entries: BTreeMap<String, MergedEntry>,
}

/// Merge layers ordered bottom → top.
pub fn merge(layers: &[&Index]) -> Result<MergedTree> {
    let _ = layers;
    todo!()
}

/// Per-layer overlayfs form of one layer: whiteouts become 0/0 char devices, opaque markers become
/// `trusted.overlay.opaque=y` on their directory (creating an implied dir entry if needed).
pub fn overlay_form(layer: &Index) -> Vec<Entry> {
    let _ = layer;
    todo!()
}
