//! Remote layers' vocabulary (on whenever teleportd has `--registry`; `--no-remote` turns it off):
//! the image and layer a Prepare names ([`ImageRef`], [`LayerRef`]), the registry's answer for an
//! image (`MountStatus`, asked of `/mount/v1/{repo}/_manifests/{digest}` by a [`RemoteResolver`])
//! and the [`LayerMounter`] that attaches a layer's tree. The policy that uses them on Prepare is
//! `crate::snapshot::remote`; the FUSE mounter runs in the fuse manager (`crate::manager`).
//! Depends on `fetch` only.

pub mod http;

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::fetch::{MountInfo, MountStatus};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Registry(#[from] registry_client::Error),
    #[error("image reference {0:?} is not valid")]
    BadReference(String),
    #[error("layer {digest} of remote image {manifest}: {reason}")]
    Layer {
        digest: String,
        manifest: String,
        reason: String,
    },
    /// The [`LayerMounter`] failed (for teleportd: the fuse manager or its connection).
    #[error(transparent)]
    Mounter(Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T> = std::result::Result<T, RemoteError>;

/// Registry repository + manifest digest of the image being pulled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]` the image is pulled from.
    pub host: String,
    pub repo: String,
    pub manifest: String,
}

impl ImageRef {
    /// From `cri.image-ref` (`host/repo[:tag][@digest]`) and `cri.manifest-digest`.
    pub fn parse(image_ref: &str, manifest: &str) -> Result<Self> {
        let bad = || RemoteError::BadReference(image_ref.to_owned());
        let r = emulator::oci::parse_reference(image_ref).map_err(|_| bad())?;
        if manifest.parse::<emulator::Digest>().is_err() {
            return Err(bad());
        }
        Ok(ImageRef {
            host: r.registry().to_owned(),
            repo: r.repository().to_owned(),
            manifest: manifest.to_owned(),
        })
    }
}

/// One layer of a remote image, as a Prepare's labels name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    pub image: ImageRef,
    /// Compressed layer digest (`cri.layer-digest`).
    pub digest: String,
    /// The registry's `/mount` answer for the image.
    pub mount_info: Arc<MountInfo>,
}

impl LayerRef {
    /// This layer's entry in the registry's `/mount` answer.
    pub fn info(&self) -> Result<&crate::fetch::LayerInfo> {
        self.mount_info
            .layers
            .iter()
            .find(|l| l.digest.as_str() == self.digest)
            .ok_or_else(|| RemoteError::Layer {
                digest: self.digest.clone(),
                manifest: self.image.manifest.clone(),
                reason: "not in the registry's /mount answer".into(),
            })
    }
}

pub trait RemoteResolver: Send + Sync + 'static {
    /// The registry's `/mount` answer for `image` (after a bounded wait while it is 409).
    fn resolve<'a>(&'a self, image: &'a ImageRef) -> BoxFuture<'a, Result<MountStatus>>;
    /// Whether `layer` may be committed as snapshot `target` on `parent` (containerd's chain
    /// IDs): the image's config, fetched by digest and checked, must give the layer that chain
    /// ID on that parent, and must claim for it the diff ID the registry's `/mount` reports for
    /// its expanded content. `Err(why)` refuses the remote path for this layer. A resolver
    /// that cannot check anything (test doubles) accepts.
    fn verify<'a>(
        &'a self,
        _layer: &'a LayerRef,
        _target: &'a str,
        _parent: &'a str,
    ) -> BoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// containerd's chain IDs of layers with these diff IDs (bottom → top).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    use sha2::Digest as _;
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(sha2::Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

/// Makes a remote layer's tree appear at `target` (the committed snapshot's `fs` dir), and
/// takes it away again. `manager::layers::FuseLayers` does it with FUSE mounts, inside the fuse manager.
pub trait LayerMounter: Send + Sync + 'static {
    /// Called once when an image is first found remote (at pull): start, in the background,
    /// what its first start will need — every layer's index and the replay of its learned start
    /// profile — so the work overlaps the rest of the pull and the sandbox start. Returns at
    /// once; failures only cost the head start.
    fn warm(&self, _layers: Vec<LayerRef>) {}
    /// Checked at pull time, without I/O, for a layer that will only be mounted on first use:
    /// by default the layer must be in the registry's `/mount` answer.
    fn validate(&self, layer: &LayerRef) -> Result<()> {
        layer.info().map(|_| ())
    }
    fn mount_layer<'a>(
        &'a self,
        layer: &'a LayerRef,
        target: &'a Path,
    ) -> BoxFuture<'a, Result<()>>;
    /// One mount at `target` presenting the merged tree of `layers` (bottom → top). Returns
    /// Ok without remounting when `target` is already mounted.
    fn mount_merged<'a>(
        &'a self,
        layers: &'a [LayerRef],
        target: &'a Path,
    ) -> BoxFuture<'a, Result<()>>;
    /// No-op when nothing is mounted at `target`.
    fn unmount_layer<'a>(&'a self, target: &'a Path) -> BoxFuture<'a, Result<()>>;
    /// Everything this mounter mounted (clean shutdown).
    fn unmount_all(&self) -> BoxFuture<'_, ()>;
    fn is_mounted<'a>(&'a self, target: &'a Path) -> BoxFuture<'a, bool>;
    /// Fetch counters of each live mount, for `/metrics`; an empty path carries work done
    /// ahead of any mount (see [`LayerMounter::warm`]).
    fn stats(&self) -> BoxFuture<'_, Vec<(std::path::PathBuf, crate::fetch::CountersSnapshot)>> {
        Box::pin(async { Vec::new() })
    }
    /// Latency histograms of where the mounts run, as OpenMetrics families without `# EOF`.
    fn timings(&self) -> BoxFuture<'_, String> {
        Box::pin(async { String::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        // sha256("sha256:aaa… sha256:bbb…"), computed independently with sha256sum.
        let want = {
            let out = std::process::Command::new("sha256sum")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut p| {
                    use std::io::Write;
                    p.stdin
                        .take()
                        .unwrap()
                        .write_all(format!("{a} {b}").as_bytes())?;
                    p.wait_with_output()
                })
                .unwrap();
            String::from_utf8(out.stdout).unwrap()[..64].to_string()
        };
        assert_eq!(c[1], format!("sha256:{want}"));
    }

    #[test]
    fn image_refs() {
        let i = ImageRef::parse("127.0.0.1:5000/team/app:v1", D).unwrap();
        assert_eq!(
            (i.host.as_str(), i.repo.as_str()),
            ("127.0.0.1:5000", "team/app")
        );
        let i = ImageRef::parse(&format!("localhost/app@{D}"), D).unwrap();
        assert_eq!(i.repo, "app");
        assert!(ImageRef::parse("docker.io/library/x:1", D).is_ok());
        for bad in ["app:v1", "h.io/", "h.io/UPPER", "h.io/a//b", "h.io/../x"] {
            assert!(ImageRef::parse(bad, D).is_err(), "{bad}");
        }
        assert!(ImageRef::parse("h.io/a", "sha256:xyz").is_err());
    }
}
