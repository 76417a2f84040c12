//! `GET|HEAD|DELETE /v2/<name>/blobs/<digest>`, and the ranged file responses shared with `/mount`.

use std::path::Path;
use std::sync::Arc;

use emulator::Digest;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::AsyncSeekExt;

use crate::error::{ApiError, ApiResult};
use crate::http_util::{empty, header_str, parse_range, set_header, status_only, RangeSpec, Resp};
use crate::link::file_body;
use crate::metrics::ServedKind;
use crate::names::RepoName;
use crate::state::AppState;

pub fn parse_digest(s: &str) -> ApiResult<Digest> {
    s.parse::<Digest>()
        .map_err(|_| ApiError::digest_invalid(format!("invalid digest {s:?}")))
}

/// Serve a file (or a `Range` of it) with paced, counted body. `size` is the file's length.
#[allow(clippy::too_many_arguments)]
pub async fn serve_file(
    st: &AppState,
    path: &Path,
    size: u64,
    req: &Request<Incoming>,
    head: bool,
    kind: ServedKind,
    content_type: &str,
    digest: Option<&Digest>,
) -> ApiResult<Resp> {
    let range = parse_range(header_str(req.headers(), http::header::RANGE), size);
    let (status, start, len) = match range {
        RangeSpec::Full => (StatusCode::OK, 0, size),
        RangeSpec::Partial(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeSpec::Unsatisfiable => {
            return Err(ApiError::RangeNotSatisfiable {
                size,
                message: "requested range not satisfiable".into(),
            })
        }
    };
    let body = if head || len == 0 {
        empty()
    } else {
        let mut f = tokio::fs::File::open(path).await?;
        if start > 0 {
            f.seek(std::io::SeekFrom::Start(start)).await?;
        }
        file_body(f, len, st.limiter.clone(), st.metrics.clone(), kind)
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    set_header(&mut r, "content-type", content_type);
    set_header(&mut r, "content-length", &len.to_string());
    set_header(&mut r, "accept-ranges", "bytes");
    if let Some(d) = digest {
        set_header(&mut r, "docker-content-digest", d.as_str());
        set_header(&mut r, "etag", &format!("\"{d}\""));
    }
    if status == StatusCode::PARTIAL_CONTENT {
        set_header(
            &mut r,
            "content-range",
            &format!("bytes {}-{}/{}", start, start + len - 1, size),
        );
    }
    Ok(r)
}

pub async fn get(
    st: &Arc<AppState>,
    name: &RepoName,
    digest: &str,
    req: &Request<Incoming>,
    head: bool,
) -> ApiResult<Resp> {
    let d = parse_digest(digest)?;
    let Some(size) = st.store.repo_blob_size(name, &d) else {
        return Err(ApiError::blob_unknown(digest));
    };
    let kind = st.metrics.blob_kind(&d);
    serve_file(
        st,
        &st.store.blob_path(&d),
        size,
        req,
        head,
        kind,
        "application/octet-stream",
        Some(&d),
    )
    .await
}

pub fn delete(st: &Arc<AppState>, name: &RepoName, digest: &str) -> ApiResult<Resp> {
    let d = parse_digest(digest)?;
    if !st.store.unlink_blob(name, &d)? {
        return Err(ApiError::blob_unknown(digest));
    }
    // The content stays (it may be linked elsewhere); this registry does no garbage collection.
    Ok(status_only(StatusCode::ACCEPTED))
}
