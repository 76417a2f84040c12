//! Blob uploads: monolithic POST, POST+PUT, chunked PATCH (with or without `Content-Range`),
//! status, cancel and cross-repository mount. Bytes stream to disk while being hashed.

use std::sync::Arc;

use emulator::Digest;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::auth::Need;
use crate::error::{ApiError, ApiResult};
use crate::http_util::{
    header_str, now_secs, param, query_params, set_header, status_only, upload_headers, Resp,
};
use crate::names::RepoName;
use crate::routes::blobs::parse_digest;
use crate::state::{AppState, Upload};
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

/// Append a request body to an upload, hashing as it goes. Returns bytes written.
async fn append(st: &AppState, up: &mut Upload, mut body: Incoming) -> ApiResult<u64> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::upload_invalid(format!("reading request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        up.hasher.update(&data);
        up.file.write_all(&data).await?;
        let len = data.len() as u64;
        n = n
            .checked_add(len)
            .ok_or_else(|| ApiError::upload_invalid("upload too large"))?;
        up.size = up
            .size
            .checked_add(len)
            .ok_or_else(|| ApiError::upload_invalid("upload too large"))?;
        st.metrics.add_received(len);
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

/// Check a chunk's `Content-Range` continues the upload.
fn check_chunk(req: &Request<Incoming>, name: &RepoName, uuid: &str, size: u64) -> ApiResult<()> {
    let Some(cr) = header_str(req.headers(), http::header::CONTENT_RANGE) else {
        return Ok(());
    };
    let bad = |message: String| ApiError::UploadRange {
        location: location(name, uuid),
        uuid: uuid.to_string(),
        size,
        message,
    };
    let Some((a, b)) = parse_content_range(cr) else {
        return Err(bad(format!("malformed Content-Range {cr:?}")));
    };
    if a != size {
        return Err(bad(format!("chunk starts at {a}, upload has {size} bytes")));
    }
    if let Some(cl) =
        header_str(req.headers(), http::header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok())
    {
        if b - a + 1 != cl {
            return Err(bad(format!(
                "Content-Range {a}-{b} does not match Content-Length {cl}"
            )));
        }
    }
    Ok(())
}

async fn new_upload(st: &AppState, name: &RepoName) -> ApiResult<(String, Upload)> {
    let uuid = random_id();
    let path = st.store.upload_path(&uuid);
    let file = tokio::fs::File::create(&path).await?;
    Ok((
        uuid,
        Upload {
            repo: name.clone(),
            path,
            file,
            size: 0,
            hasher: Sha256::new(),
            touched: std::time::Instant::now(),
        },
    ))
}

/// Verify and move a finished upload into the blob store, linking it to the repository.
async fn commit(st: &AppState, name: &RepoName, up: &mut Upload, want: &Digest) -> ApiResult<()> {
    up.file.flush().await?;
    up.file.sync_all().await?;
    let got = Digest::from_sha256(std::mem::take(&mut up.hasher));
    if &got != want {
        let _ = tokio::fs::remove_file(&up.path).await;
        return Err(ApiError::digest_invalid("provided digest did not match uploaded content")
            .with_detail(serde_json::json!({ "expected": want.as_str(), "actual": got.as_str(), "size": up.size })));
    }
    let (store, path, d, name) = (
        st.store.clone(),
        up.path.clone(),
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
        let from = param(&q, "from").and_then(RepoName::parse);
        let source_ok = match &from {
            Some(f) => {
                st.store.blob_linked(f, &d)
                    && st
                        .auth
                        .authorize(
                            header_str(req.headers(), http::header::AUTHORIZATION),
                            &Need::Pull(f.clone()),
                            host,
                            now_secs(),
                        )
                        .is_ok()
            }
            // v1.1 allows mount without `from`: accept any blob the registry has.
            None => st.store.blob_size(&d).is_some(),
        };
        if source_ok {
            st.store.link_blob(name, &d)?;
            return Ok(created(name, &d));
        }
        // Fall through to a regular upload session (202), as the spec asks.
    } else if let Some(dg) = param(&q, "digest") {
        let d = parse_digest(dg)?;
        let (uuid, mut up) = new_upload(st, name).await?;
        let res = async {
            append(st, &mut up, req.into_body()).await?;
            commit(st, name, &mut up, &d).await
        }
        .await;
        let _ = tokio::fs::remove_file(st.store.upload_path(&uuid)).await;
        res?;
        return Ok(created(name, &d));
    }
    st.expire_uploads();
    let (uuid, up) = new_upload(st, name).await?;
    st.insert_upload(uuid.clone(), up);
    let mut r = status_only(StatusCode::ACCEPTED);
    upload_headers(&mut r, &location(name, &uuid), &uuid, 0);
    Ok(r)
}

fn session(st: &AppState, uuid: &str) -> ApiResult<Arc<tokio::sync::Mutex<Upload>>> {
    st.upload(uuid).ok_or_else(ApiError::upload_unknown)
}

/// `PATCH`: append a chunk. Without `Content-Range` (skopeo) the body is appended as is.
pub async fn patch(
    st: &Arc<AppState>,
    name: &RepoName,
    uuid: &str,
    req: Request<Incoming>,
) -> ApiResult<Resp> {
    let s = session(st, uuid)?;
    let mut up = s.lock().await;
    if &up.repo != name {
        return Err(ApiError::upload_unknown());
    }
    check_chunk(&req, name, uuid, up.size)?;
    append(st, &mut up, req.into_body()).await?;
    up.touched = std::time::Instant::now();
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
    let s = session(st, uuid)?;
    let mut up = s.lock().await;
    if &up.repo != name {
        return Err(ApiError::upload_unknown());
    }
    check_chunk(&req, name, uuid, up.size)?;
    let res = async {
        append(st, &mut up, req.into_body()).await?;
        commit(st, name, &mut up, &d).await
    }
    .await;
    // The session ends either way: a failed digest check leaves nothing to resume.
    st.remove_upload(uuid);
    let _ = tokio::fs::remove_file(&up.path).await;
    res?;
    Ok(created(name, &d))
}

pub async fn status(st: &Arc<AppState>, name: &RepoName, uuid: &str) -> ApiResult<Resp> {
    let s = session(st, uuid)?;
    let up = s.lock().await;
    if &up.repo != name {
        return Err(ApiError::upload_unknown());
    }
    let mut r = status_only(StatusCode::NO_CONTENT);
    upload_headers(&mut r, &location(name, uuid), uuid, up.size);
    Ok(r)
}

pub fn cancel(st: &Arc<AppState>, name: &RepoName, uuid: &str) -> ApiResult<Resp> {
    let s = session(st, uuid)?;
    if let Ok(up) = s.try_lock() {
        if &up.repo != name {
            return Err(ApiError::upload_unknown());
        }
    }
    if let Some(s) = st.remove_upload(uuid) {
        let path = st.store.upload_path(uuid);
        drop(s);
        let _ = std::fs::remove_file(path);
    }
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
