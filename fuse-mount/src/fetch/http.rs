//! The node's registry calls, through `registry_client` (tokens, retries, size caps and
//! same-origin URLs live there): `/mount`, layer indexes (verified, cached), data ranges and
//! start profiles.

use std::time::Instant;

use emulator::Digest;

use emulator::frames::FrameTable;
use emulator::mount::{FramesRef, FRAMES_ENCODING_ZSTD};

use super::layer::{Framed, LayerHandle, Source};
use super::{Client, Error, LayerInfo, MountStatus, Result};

impl Client {
    pub(crate) async fn resolve_async(
        &self,
        repo: &str,
        manifest_digest: &Digest,
    ) -> Result<MountStatus> {
        Ok(self
            .inner
            .registry
            .mount_status(repo, manifest_digest)
            .await?)
    }

    /// A small blob of an expanded layer (its index, its frame table), read whole, verified by
    /// digest and kept in the node's cache.
    async fn get_small_blob(&self, repo: &str, blob: &emulator::mount::BlobRef) -> Result<Vec<u8>> {
        let want = &blob.digest;
        if let Some(b) = self.inner.cache.get_index(want) {
            return Ok(b);
        }
        let deadline = Instant::now() + self.inner.opts.read_deadline;
        // The blob's size is known from /mount: nothing larger is read.
        let b = self
            .inner
            .registry
            .get_whole(repo, &blob.url, blob.size, deadline)
            .await?;
        let got = Digest::sha256_of(&b);
        if got != *want {
            return Err(Error::DigestMismatch {
                expected: want.clone(),
                actual: got,
            });
        }
        // A cache that cannot take it (disk full) costs a re-fetch later, not the mount.
        if let Err(e) = self.inner.cache.put_index(want, &b) {
            tracing::warn!(blob = %want, error = %e, "layer index not cached");
        }
        Ok(b)
    }

    /// The layer's compressed encoding, when `/mount` offers one this node reads and the
    /// compressed wire is on; its table fetched, verified and checked against the layer.
    async fn open_frames(&self, repo: &str, layer: &LayerInfo, f: &FramesRef) -> Result<Framed> {
        let bad = |reason: String| Error::IndexMismatch {
            layer: layer.digest.to_string(),
            reason,
        };
        let bytes = self.get_small_blob(repo, &f.table).await?;
        let table = FrameTable::decode(&bytes).map_err(|source| Error::Frames {
            layer: layer.digest.to_string(),
            source,
        })?;
        if table.data_digest != layer.data.digest || table.data_size != layer.data.size {
            return Err(bad(format!(
                "frame table encodes data {} ({} bytes), /mount says {} ({} bytes)",
                table.data_digest, table.data_size, layer.data.digest, layer.data.size
            )));
        }
        if table.compressed_digest != f.data.digest || table.compressed_size != f.data.size {
            return Err(bad(format!(
                "frame table's compressed blob {} ({} bytes), /mount says {} ({} bytes)",
                table.compressed_digest, table.compressed_size, f.data.digest, f.data.size
            )));
        }
        Ok(Framed {
            url: f.data.url.clone(),
            table,
        })
    }

    pub(crate) async fn open_layer_async(
        &self,
        repo: &str,
        layer: &LayerInfo,
    ) -> Result<LayerHandle> {
        let bytes = self.get_small_blob(repo, &layer.index).await?;
        let index = emulator::Index::decode(&bytes).map_err(|source| Error::Index {
            layer: layer.digest.to_string(),
            source,
        })?;
        let mismatch = |reason: String| Error::IndexMismatch {
            layer: layer.digest.to_string(),
            reason,
        };
        if index.data_size != layer.data.size {
            return Err(mismatch(format!(
                "data size {} vs {}",
                index.data_size, layer.data.size
            )));
        }
        if index.diff_id != layer.diff_id {
            return Err(mismatch(format!(
                "diff ID {} vs {}",
                index.diff_id, layer.diff_id
            )));
        }
        if index.data_digest != layer.data.digest {
            return Err(mismatch(format!(
                "data digest {} vs {}",
                index.data_digest, layer.data.digest
            )));
        }
        let offered = layer
            .frames
            .as_ref()
            .filter(|f| self.inner.opts.compressed_wire && f.encoding == FRAMES_ENCODING_ZSTD);
        let frames = match offered {
            None => None,
            Some(f) => match self.open_frames(repo, layer, f).await {
                Ok(framed) => Some(std::sync::Arc::new(framed)),
                // The plain data stays readable (and every chunk verified either way): a
                // broken or unreachable table costs compression, not the mount.
                Err(e) => {
                    tracing::warn!(layer = %layer.digest, error = %e,
                        "compressed encoding unusable; reading plain ranges");
                    None
                }
            },
        };
        Ok(LayerHandle::new(
            self.clone(),
            index,
            Source::Remote {
                repo: repo.to_string(),
                url: layer.data.url.clone(),
                layer: layer.digest.clone(),
                frames,
            },
        ))
    }

    /// The learned start profile of `layer` (`None`: the registry has none).
    pub(crate) async fn get_profile(
        &self,
        repo: &str,
        layer: &Digest,
    ) -> Result<Option<Vec<(u64, u64)>>> {
        let doc = self.inner.registry.get_profile(repo, layer).await?;
        Ok(doc.map(|d| d.ranges))
    }

    /// Upload a recorded start profile of `layer` (needs push rights on `repo`).
    pub(crate) async fn put_profile(
        &self,
        repo: &str,
        layer: &Digest,
        ranges: Vec<(u64, u64)>,
    ) -> Result<()> {
        let doc = emulator::profile::Profile {
            schema_version: emulator::profile::PROFILE_SCHEMA_VERSION,
            ranges,
        };
        Ok(self.inner.registry.put_profile(repo, layer, &doc).await?)
    }

    /// GET the inclusive byte range `range` of `path` with the registry client's bounded
    /// retries until `deadline`.
    pub(crate) async fn get_range(
        &self,
        repo: &str,
        path: &str,
        range: (u64, u64),
        deadline: Instant,
    ) -> Result<Vec<u8>> {
        Ok(self
            .inner
            .registry
            .get_range(repo, path, range, deadline)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::BlobRef;
    use registry_client::testserver::{respond, serve};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn layer_info(index_url: &str, index: &[u8]) -> LayerInfo {
        let d = Digest::sha256_of(b"x");
        LayerInfo {
            digest: d.clone(),
            media_type: emulator::oci::MT_OCI_LAYER_TAR.into(),
            size: 1,
            diff_id: d.clone(),
            uncompressed_size: 1,
            index: BlobRef {
                url: index_url.into(),
                size: index.len() as u64,
                digest: Digest::sha256_of(index),
            },
            data: BlobRef {
                url: "/data".into(),
                size: 1,
                digest: d,
            },
            chunk_size: 16 << 10,
            entries: 1,
            frames: None,
        }
    }

    /// A layer index is read no further than `/mount` said, from the registry's origin only.
    #[test]
    fn layer_index_is_capped_and_same_origin() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere_hits = Arc::new(AtomicU32::new(0));
        let hits = elsewhere_hits.clone();
        let elsewhere = serve(move |_| {
            hits.fetch_add(1, Ordering::SeqCst);
            respond(200, &[], vec![7u8; 100])
        });
        let reg = serve(|req| match req.uri().path() {
            // Longer than /mount said.
            "/index" => respond(200, &[], vec![7u8; 4096]),
            _ => respond(404, &[], Vec::new()),
        });
        let opts = super::super::ClientOptions {
            max_attempts: 1,
            ..Default::default()
        };
        let c = Client::new(&reg.url, None, dir.path().join("c"), opts).unwrap();
        let r = c.open_layer_blocking("r", &layer_info("/index", &[7u8; 100]));
        assert!(
            matches!(
                r,
                Err(Error::Registry(registry_client::Error::TooLarge {
                    max: 100,
                    ..
                }))
            ),
            "{r:?}"
        );
        let other = elsewhere.url.clone();
        for url in [format!("{other}/index"), format!("//{}/index", &other[7..])] {
            let r = c.open_layer_blocking("r", &layer_info(&url, &[7u8; 100]));
            assert!(
                matches!(r, Err(Error::Registry(registry_client::Error::Url { .. }))),
                "{url}: {r:?}"
            );
        }
        assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0);
    }
}
