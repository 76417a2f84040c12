//! Driving a teleportd node agent over its snapshots socket the way containerd's CRI unpacker
//! does, without a containerd: one `Prepare` per layer carrying the CRI labels (a remote layer
//! answers `AlreadyExists`), then a container's active snapshot whose mounts attach the layers.

use std::collections::HashMap;
use std::path::Path;

use fuse_mount::labels::{
    LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER_DIGEST, LABEL_CRI_MANIFEST_DIGEST, LABEL_TARGET_REF,
};
use node_api::snapshots::{snapshots_client::SnapshotsClient, PrepareSnapshotRequest};
use node_api::types::Mount;
use tonic::transport::Channel;
use tonic::Code;

/// A snapshots client on teleportd's socket.
pub async fn snapshots(socket: &Path) -> SnapshotsClient<Channel> {
    let ch = node_api::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    SnapshotsClient::new(ch)
}

/// The image's layers as containerd would unpack them: `layers` are (layer digest, diff id)
/// in manifest order. Every layer must be taken remotely (`AlreadyExists`); returns the top
/// layer's chain ID, or the first refusal as `Err(status)`.
pub async fn pull_remote(
    socket: &Path,
    image_ref: &str,
    manifest: &str,
    layers: &[(String, String)],
) -> Result<String, tonic::Status> {
    let mut c = snapshots(socket).await;
    let diff_ids: Vec<String> = layers.iter().map(|(_, d)| d.clone()).collect();
    let chains = fuse_mount::remote::chain_ids(&diff_ids);
    let mut parent = String::new();
    for (i, ((layer, _), chain)) in layers.iter().zip(&chains).enumerate() {
        let labels: HashMap<String, String> = [
            (LABEL_TARGET_REF, chain.as_str()),
            (LABEL_CRI_LAYER_DIGEST, layer.as_str()),
            (LABEL_CRI_IMAGE_REF, image_ref),
            (LABEL_CRI_MANIFEST_DIGEST, manifest),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let r = c
            .prepare(PrepareSnapshotRequest {
                snapshotter: "teleportd".into(),
                key: format!("k8s.io/{i}/extract-{i} {chain}"),
                parent: parent.clone(),
                labels,
            })
            .await;
        match r {
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(s),
            Ok(_) => {
                return Err(tonic::Status::internal(format!(
                    "layer {i} ({layer}) was not taken remotely: containerd would download it"
                )))
            }
        }
        parent = chain.clone();
    }
    Ok(parent)
}

/// A container's rootfs snapshot on top of `parent`: its mounts (attaching the image's layers).
pub async fn prepare_container(
    socket: &Path,
    key: &str,
    parent: &str,
) -> Result<Vec<Mount>, tonic::Status> {
    snapshots(socket)
        .await
        .prepare(PrepareSnapshotRequest {
            snapshotter: "teleportd".into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        })
        .await
        .map(|r| r.into_inner().mounts)
}

/// The lower directories of an overlay mount list (top first).
pub fn lowerdirs(mounts: &[Mount]) -> Vec<std::path::PathBuf> {
    mounts
        .iter()
        .flat_map(|m| m.options.iter())
        .filter_map(|o| o.strip_prefix("lowerdir="))
        .flat_map(|l| l.split(':'))
        .map(std::path::PathBuf::from)
        .collect()
}
