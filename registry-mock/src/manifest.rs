//! Manifest parsing and structural validation (OCI and Docker schema 2, images and indexes).
//! Existence checks against the store live in the manifests route.

use emulator::oci::{MT_DOCKER_MANIFEST, MT_DOCKER_MANIFEST_LIST, MT_OCI_INDEX, MT_OCI_MANIFEST};
use emulator::Digest;
use serde::Deserialize;

/// A descriptor as found in manifests.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub platform: serde_json::Value,
    #[serde(default)]
    pub annotations: serde_json::Value,
    #[serde(default)]
    pub artifact_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: serde_json::Value,
}

#[derive(Debug)]
pub enum Kind {
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
    Index {
        manifests: Vec<Descriptor>,
    },
}

#[derive(Debug)]
pub struct Manifest {
    pub media_type: String,
    pub kind: Kind,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: serde_json::Value,
}

impl Manifest {
    /// The artifact type the referrers API reports: `artifactType`, else the config media type.
    pub fn effective_artifact_type(&self) -> Option<String> {
        if let Some(a) = &self.artifact_type {
            return Some(a.clone());
        }
        match &self.kind {
            Kind::Image { config, .. } => Some(config.media_type.clone()),
            Kind::Index { .. } => None,
        }
    }

    pub fn layers(&self) -> &[Descriptor] {
        match &self.kind {
            Kind::Image { layers, .. } => layers,
            Kind::Index { .. } => &[],
        }
    }
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
    let raw: Raw =
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
    let kind = if is_index_type(&media_type) {
        if raw.config.is_some() || raw.layers.is_some() {
            return Err("an index must not have config or layers".into());
        }
        Kind::Index {
            manifests: raw.manifests.ok_or("index without manifests")?,
        }
    } else {
        if raw.manifests.is_some() {
            return Err("an image manifest must not have manifests".into());
        }
        let config = raw.config.ok_or("manifest without config")?;
        let layers = raw.layers.ok_or("manifest without layers")?;
        if media_type == MT_DOCKER_MANIFEST && layers.is_empty() {
            return Err("docker manifest without layers".into());
        }
        Kind::Image { config, layers }
    };
    let descs: Vec<&Descriptor> = match &kind {
        Kind::Image { config, layers } => std::iter::once(config).chain(layers).collect(),
        Kind::Index { manifests } => manifests.iter().collect(),
    };
    if let Some(d) = descs.iter().find(|d| d.media_type.is_empty()) {
        return Err(format!("descriptor {} has no mediaType", d.digest));
    }
    Ok(Manifest {
        media_type,
        kind,
        subject: raw.subject,
        artifact_type: raw.artifact_type,
        annotations: raw.annotations,
    })
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
        assert!(matches!(p.kind, Kind::Index { .. }));
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
    }
}
