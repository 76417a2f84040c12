//! Learned start profiles over HTTP:
//! `GET|HEAD|PUT|DELETE /mount/v1/{repo}/_profiles/{layer-digest}`, stored per repository (see
//! [`crate::profile`]).
//!
//! GET answers 200 with the stored profile (see [`emulator::profile`] for the format), 404
//! `PROFILE_UNKNOWN` when none is stored in this repository, 404 `BLOB_UNKNOWN` when `{layer}` is
//! not an expanded layer of the repository. PUT (push scope, like every repository write) answers
//! 201 when it stored a new profile, 200 when it replaced this repository's profile, 400
//! `PROFILE_INVALID` for a body that is too large, does not decode, or breaks the document's
//! bounds (ranges outside the data blob, too many, or adding up to more than the bound). The
//! stored body is the canonical one (overlaps cut out). DELETE (push scope) answers 202, or 404
//! `PROFILE_UNKNOWN`.

use std::sync::Arc;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use crate::error::{ApiError, ApiResult, Code};
use crate::expansion::ExpandedInfo;
use crate::http_util::{self, Resp};
use crate::names::RepoName;
use crate::profile::{self, Profile, MAX_BODY};
use crate::routes::blobs::parse_digest;
use crate::state::AppState;

fn unknown() -> ApiError {
    ApiError::spec(
        StatusCode::NOT_FOUND,
        Code::ProfileUnknown,
        "no start profile for this layer in this repository",
    )
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::spec(StatusCode::BAD_REQUEST, Code::ProfileInvalid, message)
}

/// The expansion result of `digest` if it is an expanded layer linked into `name`.
fn expanded_layer(
    st: &AppState,
    name: &RepoName,
    digest: &str,
) -> ApiResult<(emulator::Digest, ExpandedInfo)> {
    let d = parse_digest(digest)?;
    let info = match st.expander.layer_status(&d) {
        Some(s) if st.store.blob_linked(name, &d) => s.result,
        _ => None,
    };
    match info {
        Some(i) => Ok((d, i)),
        None => Err(ApiError::blob_unknown(digest)
            .with_detail(json!({ "digest": digest, "reason": "no expanded layer" }))),
    }
}

pub fn get(st: &Arc<AppState>, name: &RepoName, digest: &str, head: bool) -> ApiResult<Resp> {
    let (d, _) = expanded_layer(st, name, digest)?;
    let Some(body) = profile::read(&st.store, name, &d)? else {
        return Err(unknown());
    };
    let len = body.len();
    let mut r = http::Response::new(http_util::full(if head { Vec::new() } else { body }));
    http_util::set_header(&mut r, "content-type", "application/json");
    http_util::set_header(&mut r, "content-length", &len.to_string());
    Ok(r)
}

pub async fn put(
    st: &Arc<AppState>,
    name: &RepoName,
    digest: &str,
    req: Request<Incoming>,
) -> ApiResult<Resp> {
    let (d, info) = expanded_layer(st, name, digest)?;
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| invalid(format!("reading body (at most {MAX_BODY} bytes): {e}")))?
        .to_bytes();
    st.metrics.add_received(body.len() as u64);
    let profile = Profile::decode(&body, info.data_size).map_err(|e| invalid(e.to_string()))?;
    let (store, repo, bytes) = (st.store.clone(), name.clone(), profile.encode());
    let replaced = tokio::task::spawn_blocking(move || profile::write(&store, &repo, &d, &bytes))
        .await
        .map_err(|e| ApiError::Internal(crate::error::Error::Task(e.to_string())))??;
    tracing::info!(repo = %name, layer = digest, ranges = profile.ranges.len(), replaced, "start profile");
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(http_util::json(
        status,
        &json!({ "layer": digest, "ranges": profile.ranges.len(), "stored": true, "replaced": replaced }),
    ))
}

pub fn delete(st: &Arc<AppState>, name: &RepoName, digest: &str) -> ApiResult<Resp> {
    let d = parse_digest(digest)?;
    if !profile::delete(&st.store, name, &d)? {
        return Err(unknown());
    }
    tracing::info!(repo = %name, layer = digest, "start profile deleted");
    Ok(http_util::json(
        StatusCode::ACCEPTED,
        &json!({ "layer": digest, "deleted": true }),
    ))
}
