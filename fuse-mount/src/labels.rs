//! The containerd snapshot labels teleportd reads and writes: containerd's and CRI's wire
//! vocabulary, shared by the snapshotter and its remote-layer policy. Depends on nothing.

use std::collections::BTreeMap;

/// Label containerd puts on a layer's Prepare naming the target chain ID.
pub const LABEL_TARGET_REF: &str = "containerd.io/snapshot.ref";
/// Marker on snapshots teleportd made available without a download.
pub const LABEL_REMOTE: &str = "containerd.io/snapshot/remote";
/// CRI labels (sent only with `disable_snapshot_annotations = false`).
pub const LABEL_CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
pub const LABEL_CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const LABEL_CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";

pub type Labels = BTreeMap<String, String>;
