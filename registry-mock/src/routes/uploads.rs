//! Blob uploads: monolithic POST, POST+PUT, chunked PATCH (with or without `Content-Range`),
//! status, cancel and cross-repository mount. Bytes stream to disk while being hashed, within
//! the configured size limit and body-read timeout; a request that fails leaves its session as
//! it was, so the client can resume from the reported `Range`.

use std::path::Path;
use std::sync::Arc;

use emulator::Digest;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::auth::Need;
use crate::error::{ApiError, ApiResult, Code};
use crate::http_util::{
    header_str, now_secs, param, query_params, set_header, status_only, upload_headers, Resp,
};
use crate::names::RepoName;
use crate::routes::blobs::parse_digest;
use crate::sessions::{Session, Upload};
use crate::state::AppState;
use crate::store::random_id;

fn location(name: &RepoName, uuid: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{uuid}")
}

fn created(name: &RepoName, d: &Digest) -> Resp {
    let mut r = status_only(StatusCode::CREATED);
    set_header(&mut r, "location", &format!("/v2/{name}/blobs/{d}"));
    set_header(&mut r, "docker-content-digest", d.as_str());
    r
}

fn too_large(limit: u64) -> ApiError {
    ApiError::spec(
        StatusCode::PAYLOAD_TOO_LARGE,
        Code::SizeInvalid,
        format!("upload exceeds the registry's blob size limit of {limit} bytes"),
    )
}

/// What a request body must amount to.
struct Expect {
    /// `Content-Range` length: the body must be exactly this long.
    len: Option<u64>,
    /// Builds the 416 answer when it is not.
    mismatch: Box<dyn Fn(String) -> ApiError + Send + Sync>,
}

/// Append a request body to the upload stored at `path`. On failure the file is truncated and
/// the hash restored to where they were.
async fn append(
    st: &AppState,
    up: &mut Upload,
    path: &Path,
    body: Incoming,
    expect: &Expect,
) -> ApiResult<u64> {
    let (size, hasher) = (up.size, up.hasher.clone());
    let res = append_inner(st, up, path, body, expect).await;
    if res.is_err() {
        up.size = size;
        up.hasher = hasher;
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = f.set_len(size);
        }
    }
    res
}

async fn append_inner(
    st: &AppState,
    up: &mut Upload,
    path: &Path,
    body: Incoming,
    expect: &Expect,
) -> ApiResult<u64> {
    // Opened per request: an idle session holds no file descriptor. No `create`: a session
    // expired meanwhile has no file, and that is an unknown upload.
    let mut f = tokio::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::upload_unknown(),
            _ => ApiError::from(e),
        })?;
    let res = copy_body(st, up.size, &mut up.hasher, &mut f, body, expect).await;
    // tokio's File finishes a write in the background: wait for it, on failure too, so that
    // nothing lands in the file after the caller's rollback truncated it.
    let flushed = f.flush().await;
    let n = res?;
    flushed?;
    up.size += n;
    Ok(n)
}

async fn copy_body(
    st: &AppState,
    size: u64,
    hasher: &mut Sha256,
    f: &mut tokio::fs::File,
    mut body: Incoming,
    expect: &Expect,
) -> ApiResult<u64> {
    let limit = st.limits.max_upload_size;
    let mut n = 0u64;
    loop {
        let frame = match tokio::time::timeout(st.limits.body_read_timeout, body.frame()).await {
            Err(_) => {
                return Err(ApiError::spec(
                    StatusCode::REQUEST_TIMEOUT,
                    Code::BlobUploadInvalid,
                    "request body stalled",
                ))
            }
            Ok(None) => break,
            Ok(Some(frame)) => {
                frame.map_err(|e| ApiError::upload_invalid(format!("reading request body: {e}")))?
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = data.len() as u64;
        n = n.checked_add(len).ok_or_else(|| too_large(limit))?;
        if let Some(want) = expect.len {
            if n > want {
                return Err((expect.mismatch)(format!(
                    "body is longer than its Content-Range ({want} bytes)"
                )));
            }
        }
        if size.checked_add(n).is_none_or(|t| t > limit) {
            return Err(too_large(limit));
        }
        hasher.update(&data);
        f.write_all(&data).await?;
        st.metrics.add_received(len);
    }
    if let Some(want) = expect.len {
        if n != want {
            return Err((expect.mismatch)(format!(
                "body has {n} bytes but its Content-Range says {want}"
            )));
        }
    }
    Ok(n)
}

/// `Content-Range: a-b` (or `bytes a-b`, or `bytes a-b/total`) → (a, b).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let v = v.trim();
    let v = v
        .strip_prefix("bytes")
        .map(|x| x.trim_start_matches([' ', '=']))
        .unwrap_or(v);
    let v = v.split('/').next()?;
    let (a, b) = v.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (b >= a).then_some((a, b))
}

/// Check a chunk against the session before reading it: its `Content-Range` must continue the
/// upload and agree with `Content-Length`, and the upload must stay within the size limit.
/// Returns what the body must then amount to.
fn check_chunk(
    st: &AppState,
    req: &Request<Incoming>,
    name: &RepoName,
    uuid: &str,
    size: u64,
) -> ApiResult<Expect> {
    let (loc, id) = (location(name, uuid), uuid.to_string());
    let mismatch = move |message: String| ApiError::UploadRange {
        location: loc.clone(),
        uuid: id.clone(),
        size,
        message,
    };
    let cl =
        header_str(req.headers(), http::header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if cl.is_some_and(|cl| size.saturating_add(cl) > st.limits.max_upload_size) {
        return Err(too_large(st.limits.max_upload_size));
    }
    let mut len = None;
    if let Some(cr) = header_str(req.headers(), http::header::CONTENT_RANGE) {
        let Some((a, b)) = parse_content_range(cr) else {
            return Err(mismatch(format!("malformed Content-Range {cr:?}")));
        };
        if a != size {
            return Err(mismatch(format!(
                "chunk starts at {a}, upload has {size} bytes"
            )));
        }
        let want = b - a + 1;
        if cl.is_some_and(|cl| cl != want) {
            return Err(mismatch(format!(
                "Content-Range {a}-{b} does not match Content-Length {}",
                cl.unwrap_or_default()
            )));
        }
        len = Some(want);
    }
    Ok(Expect {
        len,
        mismatch: Box::new(mismatch),
    })
}

/// Verify and move a finished upload into the blob store, linking it to the repository.
async fn commit(
    st: &AppState,
    name: &RepoName,
    up: &mut Upload,
    path: &Path,
    want: &Digest,
) -> ApiResult<()> {
    let got = Digest::from_sha256(std::mem::take(&mut up.hasher));
    if &got != want {
        let _ = tokio::fs::remove_file(path).await;
        return Err(ApiError::digest_invalid("provided digest did not match uploaded content")
            .with_detail(serde_json::json!({ "expected": want.as_str(), "actual": got.as_str(), "size": up.size })));
    }
    let f = tokio::fs::File::open(path).await?;
    let on_disk = f.metadata().await?.len();
    if on_disk != up.size {
        // The hash covers `up.size` bytes; anything else in the file would go unverified.
        let _ = tokio::fs::remove_file(path).await;
        return Err(ApiError::Internal(crate::error::Error::Task(format!(
            "upload file has {on_disk} bytes, session counted {}",
            up.size
        ))));
    }
    f.sync_all().await?;
    let (store, path, d, name) = (
        st.store.clone(),
        path.to_path_buf(),
        want.clone(),
        name.clone(),
    );
    tokio::task::spawn_blocking(move || {
        store.commit_blob(&path, &d)?;
        store.link_blob(&name, &d)
    })
    .await
    .map_err(|e| ApiError::Internal(crate::error::Error::Task(e.to_string())))??;
    Ok(())
}

/// `POST /v2/<name>/blobs/uploads/` (`?digest=` monolithic, `?mount=&from=` cross-repo mount).
pub async fn start(
    st: &Arc<AppState>,
    name: &RepoName,
    req: Request<Incoming>,
    host: &str,
) -> ApiResult<Resp> {
    let q = query_params(req.uri().query());
    if let Some(m) = param(&q, "mount") {
        let d = parse_digest(m)?;
        // As Distribution: a mount needs `from`, pull rights on it and the blob in it.
        // Without `from`, anyone with push anywhere could link any blob whose digest they know.
        let source_ok = param(&q, "from")
            .and_then(RepoName::parse)
            .is_some_and(|f| {
                st.store.blob_linked(&f, &d)
                    && st
                        .auth
                        .authorize(
                            header_str(req.headers(), http::header::AUTHORIZATION),
                            &Need::Pull(f.clone()),
                            host,
                            now_secs(),
                        )
                        .is_ok()
            });
        if source_ok {
            st.store.link_blob(name, &d)?;
            return Ok(created(name, &d));
        }
        // Fall through to a regular upload session (202), as the spec asks.
    } else if let Some(dg) = param(&q, "digest") {
        let d = parse_digest(dg)?;
        let path = st.store.upload_path(&random_id());
        let mut up = Upload {
            repo: name.clone(),
            size: 0,
            hasher: Sha256::new(),
            touched: std::time::Instant::now(),
        };
        let res = async {
            let expect = check_chunk(st, &req, name, "", 0)?;
            tokio::fs::File::create(&path).await?;
            append(st, &mut up, &path, req.into_body(), &expect).await?;
            commit(st, name, &mut up, &path, &d).await
        }
        .await;
        let _ = tokio::fs::remove_file(&path).await;
        res?;
        return Ok(created(name, &d));
    }
    let uuid = st.uploads.open(name)?;
    if let Err(e) = tokio::fs::File::create(st.uploads.path(&uuid)).await {
        st.uploads.remove(&uuid);
        return Err(e.into());
    }
    let mut r = status_only(StatusCode::ACCEPTED);
    upload_headers(&mut r, &location(name, &uuid), &uuid, 0);
    Ok(r)
}

fn session(st: &AppState, name: &RepoName, uuid: &str) -> ApiResult<Session> {
    st.uploads
        .get(uuid)
        .filter(|s| s.try_lock().map_or(true, |u| &u.repo == name))
        .ok_or_else(ApiError::upload_unknown)
}

/// `PATCH`: append a chunk. Without `Content-Range` (skopeo) the body is appended as is.
pub async fn patch(
    st: &Arc<AppState>,
    name: &RepoName,
    uuid: &str,
    req: Request<Incoming>,
) -> ApiResult<Resp> {
    let s = session(st, name, uuid)?;
    let mut up = s.lock().await;
    if &up.repo != name {
        return Err(ApiError::upload_unknown());
    }
    let expect = check_chunk(st, &req, name, uuid, up.size)?;
    let res = append(
        st,
        &mut up,
        &st.uploads.path(uuid),
        req.into_body(),
        &expect,
    )
    .await;
    up.touched = std::time::Instant::now();
    res?;
    let mut r = status_only(StatusCode::ACCEPTED);
    upload_headers(&mut r, &location(name, uuid), uuid, up.size);
    Ok(r)
}

/// `PUT ?digest=`: optional last chunk, verify, commit.
pub async fn finish(
    st: &Arc<AppState>,
    name: &RepoName,
    uuid: &str,
    req: Request<Incoming>,
) -> ApiResult<Resp> {
    let q = query_params(req.uri().query());
    let Some(dg) = param(&q, "digest") else {
        return Err(ApiError::digest_invalid("digest parameter missing"));
    };
    let d = parse_digest(dg)?;
    let s = session(st, name, uuid)?;
    let mut up = s.lock().await;
    if &up.repo != name {
        return Err(ApiError::upload_unknown());
    }
    up.touched = std::time::Instant::now();
    let expect = check_chunk(st, &req, name, uuid, up.size)?;
    let path = st.uploads.path(uuid);
    // A last chunk that fails (416, 413, stall) leaves the session to resume, as a PATCH would.
    append(st, &mut up, &path, req.into_body(), &expect).await?;
    let res = commit(st, name, &mut up, &path, &d).await;
    // The session ends either way: a failed digest check leaves nothing to resume.
    st.uploads.remove(uuid);
    res?;
    Ok(created(name, &d))
}

pub async fn status(st: &Arc<AppState>, name: &RepoName, uuid: &str) -> ApiResult<Resp> {
    let s = session(st, name, uuid)?;
    let up = s.lock().await;
    if &up.repo != name {
        return Err(ApiError::upload_unknown());
    }
    let mut r = status_only(StatusCode::NO_CONTENT);
    upload_headers(&mut r, &location(name, uuid), uuid, up.size);
    Ok(r)
}

pub fn cancel(st: &Arc<AppState>, name: &RepoName, uuid: &str) -> ApiResult<Resp> {
    session(st, name, uuid)?;
    st.uploads.remove(uuid);
    Ok(status_only(StatusCode::NO_CONTENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5, 9)));
        assert_eq!(parse_content_range("bytes=5-9"), Some((5, 9)));
        assert_eq!(parse_content_range("9-5"), None);
        assert_eq!(parse_content_range("x"), None);
    }
}
