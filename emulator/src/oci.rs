//! OCI / Docker media types, the JSON documents the registry and tools exchange (`oci-spec`'s),
//! and the checks this project adds on top of them (sha256-only digests).

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MT_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MT_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MT_DOCKER_LAYER_FOREIGN_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Is this media type an image layer (any compression, OCI or Docker)?
pub fn is_layer_media_type(mt: &str) -> bool {
    mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
}

/// Is this media type a manifest list / image index?
pub fn is_index_media_type(mt: &str) -> bool {
    mt == MT_OCI_INDEX || mt == MT_DOCKER_MANIFEST_LIST
}

/// Is this media type a single-image manifest?
pub fn is_manifest_media_type(mt: &str) -> bool {
    mt == MT_OCI_MANIFEST || mt == MT_DOCKER_MANIFEST
}

// The documents themselves are `oci-spec`'s, re-exported so every crate reads the same types
// without each depending on `oci-spec`. Docker schema 2 documents have the same shape; their media
// types arrive as `MediaType::Other`, matched against the constants above.
pub use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Platform, RootFs,
};

/// An image reference (`oci-spec`'s: the distribution grammar, its length limits).
pub use oci_spec::distribution::Reference;

/// Parse `HOST[:PORT]/REPO[:TAG][@DIGEST]`. Unlike `docker pull`, a reference must name its
/// registry — docker's rule: the first `/`-separated part is a host if it contains `.` or `:` or
/// is `localhost` — because the node and the tools only talk to an explicit registry, never to a
/// default one (`oci-spec` alone would read `app:v1` as `docker.io/library/app:v1`).
pub fn parse_reference(s: &str) -> Result<Reference> {
    let bad = |reason: String| Error::BadReference {
        reference: s.to_owned(),
        reason,
    };
    let host = s.split_once('/').map(|(h, _)| h);
    if !host.is_some_and(|h| h.contains('.') || h.contains(':') || h == "localhost") {
        return Err(bad("does not name a registry host".into()));
    }
    // The grammar's `\w` is Unicode-aware; names and tags on the wire are ASCII.
    if !s.is_ascii() {
        return Err(bad("not ASCII".into()));
    }
    s.parse::<Reference>().map_err(|e| bad(e.to_string()))
}

/// The digest of a descriptor as this project's sha256-only [`Digest`]; anything else is an
/// error (the store, the chunk cache and the expanded-layer format only know sha256).
pub fn sha256(d: &Descriptor) -> Result<Digest> {
    d.digest().as_ref().parse()
}

/// The config's `rootfs.diff_ids` as sha256 digests (`oci-spec` keeps them as strings).
pub fn diff_ids(c: &ImageConfiguration) -> Result<Vec<Digest>> {
    c.rootfs().diff_ids().iter().map(|d| d.parse()).collect()
}

/// Parse a JSON document, mapping errors to the crate's error type.
pub fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Format(format!("bad JSON document: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_tolerates_unknown_fields_and_keeps_known_ones() {
        let json = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
          "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":7},
          "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":9,"x-extra":1}],
          "futureField":true}"#;
        let m: ImageManifest = from_json(json.as_bytes()).unwrap();
        assert_eq!(m.layers()[0].size(), 9);
        assert!(is_layer_media_type(m.layers()[0].media_type().as_ref()));
        assert_eq!(sha256(m.config()).unwrap().hex(), "0".repeat(64));
        let back: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(back["layers"][0]["size"], 9);
        assert_eq!(back["mediaType"], MT_OCI_MANIFEST);
    }

    #[test]
    fn docker_media_types_are_kept_verbatim() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MT_DOCKER_MANIFEST}",
              "config":{{"mediaType":"{MT_DOCKER_CONFIG}","digest":"sha256:{z}","size":7}},
              "layers":[{{"mediaType":"{MT_DOCKER_LAYER_GZIP}","digest":"sha256:{z}","size":9}}]}}"#,
            z = "0".repeat(64)
        );
        let m: ImageManifest = from_json(json.as_bytes()).unwrap();
        assert_eq!(
            m.media_type().as_ref().unwrap().to_string(),
            MT_DOCKER_MANIFEST
        );
        assert_eq!(m.layers()[0].media_type().to_string(), MT_DOCKER_LAYER_GZIP);
    }

    #[test]
    fn non_sha256_descriptor_digests_are_refused() {
        let json = format!(
            r#"{{"mediaType":"{MT_OCI_LAYER_TAR}","digest":"sha512:{}","size":1}}"#,
            "0".repeat(128)
        );
        let d: Descriptor = from_json(json.as_bytes()).unwrap();
        assert!(sha256(&d).is_err());
    }

    #[test]
    fn references_must_name_a_registry() {
        let r = parse_reference("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "team/app", Some("v1"))
        );
        let r = parse_reference("localhost/app").unwrap();
        assert_eq!((r.registry(), r.tag()), ("localhost", Some("latest")));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("reg.example/a/b@{d}")).unwrap();
        assert_eq!((r.repository(), r.digest()), ("a/b", Some(d.as_str())));
        for bad in [
            "app:v1",
            "team/app:v1",
            "nohost",
            "",
            "h:1/Bad:x",
            "h.io/a:t\u{e9}",
            "h.io/a:-x",
            "h.io//a",
            "h.io/a@sha256:xyz",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
        let long = format!("h.io/{}", "a".repeat(256));
        assert!(parse_reference(&long).is_err());
    }

    #[test]
    fn config_diff_ids_are_digests() {
        let json = r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:2222222222222222222222222222222222222222222222222222222222222222"]}}"#;
        let c: ImageConfiguration = from_json(json.as_bytes()).unwrap();
        assert_eq!(diff_ids(&c).unwrap().len(), 1);
        let bad = json.replace("sha256:2222", "sha256:ZZZZ");
        let c: ImageConfiguration = from_json(bad.as_bytes()).unwrap();
        assert!(diff_ids(&c).is_err());
    }
}
