//! Push over the distribution API: HEAD to skip a present blob, POST + one streaming PUT for
//! the rest, then the manifest. Writes use a `pull,push` token.

use std::path::Path;

use emulator::Digest;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode};

use crate::{Error, RegistryClient, Result};

/// What [`RegistryClient::push_blob_file`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobUpload {
    /// The registry had it already.
    Present,
    /// Uploaded, this many bytes.
    Uploaded(u64),
}

/// Largest error body kept in an error.
const ERROR_BODY_MAX: u64 = 64 << 10;

impl RegistryClient {
    /// `Err(Error::Registry)` with the body unless the status is one of `want`.
    async fn expect_status(
        &self,
        resp: Response,
        want: &[StatusCode],
        method: &str,
    ) -> Result<Response> {
        if want.contains(&resp.status()) {
            return Ok(resp);
        }
        let (status, url) = (resp.status().as_u16(), resp.url().clone());
        let body = self
            .body(resp, ERROR_BODY_MAX, &url)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Err(Error::Registry {
            method: method.into(),
            url: url.to_string(),
            status,
            body,
        })
    }

    /// Whether `repo` holds blob `digest` (`HEAD /v2/{repo}/blobs/{digest}`).
    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let resp = self
            .send(repo, "pull,push", &url, || {
                Ok(self.inner.http.request(Method::HEAD, url.clone()))
            })
            .await?;
        Ok(resp.status() == StatusCode::OK)
    }

    /// Upload the file at `path` as blob `digest` of `repo` unless present; the file must be
    /// `size` bytes. Streams the file (one monolithic PUT).
    pub async fn push_blob_file(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        path: &Path,
    ) -> Result<BlobUpload> {
        if self.blob_exists(repo, digest).await? {
            return Ok(BlobUpload::Present);
        }
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len != size {
            return Err(Error::Io {
                path: path.display().to_string(),
                source: std::io::Error::other(format!(
                    "blob is {len} bytes, descriptor says {size}"
                )),
            });
        }
        let post = self.url(&format!("/v2/{repo}/blobs/uploads/"))?;
        let resp = self
            .send(repo, "pull,push", &post, || {
                Ok(self.inner.http.post(post.clone()).header(CONTENT_LENGTH, 0))
            })
            .await?;
        let resp = self
            .expect_status(resp, &[StatusCode::ACCEPTED], "POST")
            .await?;
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Body {
                url: post.to_string(),
                reason: "202 without a Location header".into(),
            })?;
        // Same origin only: the token goes with the PUT.
        let mut put = self.url(loc)?;
        put.query_pairs_mut().append_pair("digest", digest.as_str());
        let resp = self
            .send(repo, "pull,push", &put, || {
                let f = std::fs::File::open(path).map_err(io)?;
                Ok(self
                    .inner
                    .http
                    .put(put.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, len)
                    .body(reqwest::Body::from(tokio::fs::File::from_std(f))))
            })
            .await?;
        self.expect_status(resp, &[StatusCode::CREATED], "PUT")
            .await?;
        Ok(BlobUpload::Uploaded(len))
    }

    /// Upload `bytes` as blob `digest` of `repo` unless present (small blobs: configs, tests).
    pub async fn push_blob(&self, repo: &str, digest: &Digest, bytes: &[u8]) -> Result<BlobUpload> {
        if self.blob_exists(repo, digest).await? {
            return Ok(BlobUpload::Present);
        }
        let post = self.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}"))?;
        let body = bytes::Bytes::copy_from_slice(bytes);
        let resp = self
            .send(repo, "pull,push", &post, || {
                Ok(self
                    .inner
                    .http
                    .post(post.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(body.clone()))
            })
            .await?;
        self.expect_status(resp, &[StatusCode::CREATED], "POST")
            .await?;
        Ok(BlobUpload::Uploaded(bytes.len() as u64))
    }

    /// `PUT /v2/{repo}/manifests/{reference}`; returns the digest the registry stored (its
    /// `Docker-Content-Digest`, or the sha256 of `bytes` when it sends none). A stored digest
    /// other than the bytes' is an error.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let body = bytes::Bytes::copy_from_slice(bytes);
        let resp = self
            .send(repo, "pull,push", &url, || {
                Ok(self
                    .inner
                    .http
                    .put(url.clone())
                    .header(CONTENT_TYPE, media_type)
                    .body(body.clone()))
            })
            .await?;
        let resp = self
            .expect_status(resp, &[StatusCode::CREATED, StatusCode::OK], "PUT")
            .await?;
        let want = Digest::sha256_of(bytes);
        match resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            Some(d) if d != want.as_str() => Err(Error::Registry {
                method: "PUT".into(),
                url: url.to_string(),
                status: resp.status().as_u16(),
                body: format!("registry stored digest {d}, want {want}"),
            }),
            _ => Ok(want),
        }
    }
}
