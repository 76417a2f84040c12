//! A CRI PullImage (the call kubelet makes) with teleportd as CRI's snapshotter: the layer
//! labels the remote path decides on (`cri.image-ref`, `cri.manifest-digest`,
//! `cri.layer-digest`, `snapshot.ref`) reach teleportd and are kept on the committed snapshots,
//! and they parse into the registry coordinates teleportd would ask `/mount` about.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fuse_mount::labels::{
    LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER_DIGEST, LABEL_CRI_MANIFEST_DIGEST, LABEL_TARGET_REF,
};
use fuse_mount::remote::ImageRef;
use node_api::cri::{
    image_service_client::ImageServiceClient, ImageSpec, PullImageRequest, RemoveImageRequest,
};
use node_api::snapshots::{snapshots_client::SnapshotsClient, Kind, ListSnapshotsRequest};
use testkit::{mounts_under, Containerd, Teleportd, TestDir};

async fn committed(socket: &std::path::Path) -> Vec<(String, String, BTreeMap<String, String>)> {
    let ch = node_api::connect(socket).await.unwrap();
    let mut s = SnapshotsClient::new(ch)
        .list(ListSnapshotsRequest {
            snapshotter: String::new(),
            filters: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        for i in m.info {
            if i.kind == Kind::Committed as i32 {
                out.push((i.name, i.parent, i.labels.into_iter().collect()));
            }
        }
    }
    out
}

#[test]
fn cri_pull_delivers_the_layer_labels_to_teleportd() {
    if !testkit::prerequisites() {
        return;
    }
    let t = TestDir::new();
    let dir = t.path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = rt
        .block_on(registry_mock::start(registry_mock::Config::new(
            dir.join("reg"),
        )))
        .unwrap();
    let image = format!("{}/e2e/cri:1", reg.addr());
    let archive = dir.join("image.tar");
    testkit::test_image(&archive, "unused.test/app:1");
    let manifest_digest = testkit::registry::skopeo_push(&archive, &image).to_string();
    let manifest: serde_json::Value = rt.block_on(async {
        reqwest::Client::new()
            .get(format!(
                "{}/v2/e2e/cri/manifests/{manifest_digest}",
                reg.url()
            ))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let layer_digests: BTreeSet<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();

    let socket = dir.join("teleportd.sock");
    let td = Teleportd::start(&dir.join("teleportd"), &socket, &dir.join("teleportd.log"));
    let host = reg.addr().to_string();
    let ctrd = Containerd::start_with(&dir.join("ctrd"), &socket, Some(&host));

    rt.block_on(async {
        let ch = node_api::connect(&ctrd.address).await.unwrap();
        let mut cri = ImageServiceClient::new(ch);
        let r = cri
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.image_ref.starts_with("sha256:"), "{r:?}");

        let snaps = committed(&socket).await;
        assert_eq!(snaps.len(), 2, "{snaps:?}");
        let mut seen_layers = BTreeSet::new();
        for (name, _parent, labels) in &snaps {
            let l = |k: &str| {
                labels
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| panic!("label {k} missing on {name}: {labels:?}"))
            };
            assert_eq!(l(LABEL_CRI_IMAGE_REF), image);
            assert_eq!(l(LABEL_CRI_MANIFEST_DIGEST), manifest_digest);
            assert!(name.ends_with(&l(LABEL_TARGET_REF)), "{name} vs {labels:?}");
            seen_layers.insert(l(LABEL_CRI_LAYER_DIGEST));
            let parsed =
                ImageRef::parse(&l(LABEL_CRI_IMAGE_REF), &l(LABEL_CRI_MANIFEST_DIGEST)).unwrap();
            assert_eq!(
                (parsed.host.as_str(), parsed.repo.as_str()),
                (host.as_str(), "e2e/cri")
            );
        }
        assert_eq!(seen_layers, layer_digests);

        cri.remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !committed(&socket).await.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "snapshots not garbage-collected"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    drop(ctrd);
    drop(td);
    rt.block_on(reg.shutdown()).unwrap();
    assert!(
        mounts_under(dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(dir)
    );
}
