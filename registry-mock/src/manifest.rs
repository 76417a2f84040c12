//! Manifest parsing and structural validation (OCI and Docker schema 2, images and indexes) over
//! `oci-spec`'s documents (re-exported by `emulator::oci`): this module adds the registry's policy —
//! schemaVersion 2, mediaType against Content-Type, one shape per media type, sha256 digests.
//! Existence checks against the store live in the manifests route.

use emulator::oci::{
    self, Descriptor, ImageIndex, ImageManifest, MT_DOCKER_MANIFEST, MT_DOCKER_MANIFEST_LIST,
    MT_OCI_INDEX, MT_OCI_MANIFEST,
};
use emulator::Digest;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// The fields that decide which document this is, read before the typed parse (the typed
/// documents drop fields they do not know, so "an index with layers" would otherwise pass).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shape {
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<IgnoredAny>,
    #[serde(default)]
    layers: Option<IgnoredAny>,
    #[serde(default)]
    manifests: Option<IgnoredAny>,
}

#[derive(Debug)]
pub enum Kind {
    // Boxed: both documents are hundreds of bytes, and a `Manifest` is passed around by value.
    Image(Box<ImageManifest>),
    Index(Box<ImageIndex>),
}

#[derive(Debug)]
pub struct Manifest {
    /// The effective media type (the document's, else the request's Content-Type, else guessed).
    pub media_type: String,
    pub kind: Kind,
}

impl Manifest {
    /// The artifact type the referrers API reports: `artifactType`, else the config media type.
    pub fn effective_artifact_type(&self) -> Option<String> {
        match &self.kind {
            Kind::Image(m) => Some(
                m.artifact_type()
                    .as_ref()
                    .unwrap_or(m.config().media_type())
                    .to_string(),
            ),
            Kind::Index(i) => i.artifact_type().as_ref().map(|a| a.to_string()),
        }
    }

    pub fn layers(&self) -> &[Descriptor] {
        match &self.kind {
            Kind::Image(m) => m.layers(),
            Kind::Index(_) => &[],
        }
    }

    pub fn subject(&self) -> Option<&Descriptor> {
        match &self.kind {
            Kind::Image(m) => m.subject().as_ref(),
            Kind::Index(i) => i.subject().as_ref(),
        }
    }

    pub fn annotations(&self) -> Option<&std::collections::HashMap<String, String>> {
        match &self.kind {
            Kind::Image(m) => m.annotations().as_ref(),
            Kind::Index(i) => i.annotations().as_ref(),
        }
    }
}

/// A descriptor's digest. [`parse`] refused every manifest with a non-sha256 descriptor, so on
/// descriptors of a parsed [`Manifest`] this is the identity; on others it is still checked.
pub fn digest(d: &Descriptor) -> Result<Digest, String> {
    oci::sha256(d).map_err(|e| e.to_string())
}

pub fn is_manifest_type(mt: &str) -> bool {
    matches!(
        mt,
        MT_OCI_MANIFEST | MT_OCI_INDEX | MT_DOCKER_MANIFEST | MT_DOCKER_MANIFEST_LIST
    )
}

pub fn is_index_type(mt: &str) -> bool {
    mt == MT_OCI_INDEX || mt == MT_DOCKER_MANIFEST_LIST
}

/// Parse a manifest; `content_type` is the request's Content-Type (may be absent or generic).
/// Errors are human-readable reasons for MANIFEST_INVALID.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, String> {
    let raw: Shape =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest JSON: {e}"))?;
    if raw.schema_version != Some(2) {
        return Err(format!(
            "schemaVersion must be 2, got {:?}",
            raw.schema_version
        ));
    }
    let ct = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| is_manifest_type(c));
    let media_type = match (&raw.media_type, ct) {
        (Some(m), Some(c)) if m != c => {
            return Err(format!("mediaType {m:?} does not match Content-Type {c:?}"));
        }
        (Some(m), _) => m.clone(),
        (None, Some(c)) => c.to_string(),
        // OCI allows omitting mediaType: guess from the shape.
        (None, None) if raw.manifests.is_some() => MT_OCI_INDEX.to_string(),
        (None, None) => MT_OCI_MANIFEST.to_string(),
    };
    if !is_manifest_type(&media_type) {
        return Err(format!("unsupported manifest media type {media_type:?}"));
    }
    let bad = |e: serde_json::Error| format!("not a valid manifest: {e}");
    let kind = if is_index_type(&media_type) {
        if raw.config.is_some() || raw.layers.is_some() {
            return Err("an index must not have config or layers".into());
        }
        if raw.manifests.is_none() {
            return Err("index without manifests".into());
        }
        Kind::Index(Box::new(serde_json::from_slice(bytes).map_err(bad)?))
    } else {
        if raw.manifests.is_some() {
            return Err("an image manifest must not have manifests".into());
        }
        if raw.config.is_none() {
            return Err("manifest without config".into());
        }
        if raw.layers.is_none() {
            return Err("manifest without layers".into());
        }
        let m: ImageManifest = serde_json::from_slice(bytes).map_err(bad)?;
        if media_type == MT_DOCKER_MANIFEST && m.layers().is_empty() {
            return Err("docker manifest without layers".into());
        }
        Kind::Image(Box::new(m))
    };
    let m = Manifest { media_type, kind };
    let descs: Vec<&Descriptor> = match &m.kind {
        Kind::Image(i) => std::iter::once(i.config()).chain(i.layers()).collect(),
        Kind::Index(i) => i.manifests().iter().collect(),
    };
    for d in descs.into_iter().chain(m.subject()) {
        if d.media_type().to_string().is_empty() {
            return Err(format!("descriptor {} has no mediaType", d.digest()));
        }
        digest(d)?;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn parses_image_and_index() {
        let m = serde_json::json!({"schemaVersion":2,"mediaType":MT_OCI_MANIFEST,
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":d('a'),"size":2},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":d('b'),"size":3}]});
        let p = parse(m.to_string().as_bytes(), None).unwrap();
        assert_eq!(p.layers().len(), 1);
        let i = serde_json::json!({"schemaVersion":2,"manifests":[{"mediaType":MT_OCI_MANIFEST,"digest":d('c'),"size":5}]});
        let p = parse(i.to_string().as_bytes(), Some(MT_OCI_INDEX)).unwrap();
        assert!(matches!(p.kind, Kind::Index(_)));
        let docker = serde_json::json!({"schemaVersion":2,"mediaType":MT_DOCKER_MANIFEST,
            "config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":d('a'),"size":2},
            "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":d('b'),"size":3}]});
        let p = parse(docker.to_string().as_bytes(), None).unwrap();
        assert_eq!(p.media_type, MT_DOCKER_MANIFEST);
        assert_eq!(
            p.effective_artifact_type().as_deref(),
            Some("application/vnd.docker.container.image.v1+json")
        );
    }

    #[test]
    fn rejects_bad() {
        assert!(parse(b"{", None).is_err());
        assert!(parse(br#"{"schemaVersion":1}"#, None).is_err());
        let m = serde_json::json!({"schemaVersion":2,"mediaType":MT_OCI_MANIFEST,"layers":[]});
        assert!(parse(m.to_string().as_bytes(), None).is_err());
        let m = serde_json::json!({"schemaVersion":2,"mediaType":MT_OCI_INDEX,"manifests":[]});
        assert!(parse(m.to_string().as_bytes(), Some(MT_OCI_MANIFEST)).is_err());
        let m = serde_json::json!({"schemaVersion":2,"mediaType":"text/plain","manifests":[]});
        assert!(parse(m.to_string().as_bytes(), None).is_err());
        let m = serde_json::json!({"schemaVersion":2,"mediaType":MT_OCI_MANIFEST,
            "config":{"digest":d('a'),"size":2},"layers":[]});
        assert!(parse(m.to_string().as_bytes(), None)
            .unwrap_err()
            .contains("mediaType"));
        let m = serde_json::json!({"schemaVersion":2,"mediaType":MT_OCI_MANIFEST,
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":d('a'),"size":2},
            "layers":[],"manifests":[]});
        assert!(parse(m.to_string().as_bytes(), None).is_err());
        let m = serde_json::json!({"schemaVersion":2,"mediaType":MT_OCI_INDEX,"manifests":[],"layers":[]});
        assert!(parse(m.to_string().as_bytes(), None).is_err());
        // Only sha256 digests: the store and the expanded format know no other.
        let m = serde_json::json!({"schemaVersion":2,"mediaType":MT_OCI_MANIFEST,
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":format!("sha512:{}", "a".repeat(128)),"size":2},
            "layers":[]});
        assert!(parse(m.to_string().as_bytes(), None).is_err());
    }
}
