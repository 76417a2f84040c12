//! Learned start profiles over HTTP: `GET|HEAD|PUT /mount/v1/{repo}/_profiles/{layer-digest}`.
//!
//! GET answers 200 with the stored profile (see [`crate::profile`] for the format), 404
//! `PROFILE_UNKNOWN` when none is stored, 404 `BLOB_UNKNOWN` when `{layer}` is not an expanded
//! layer of the repository. PUT (push scope, like every repository write) answers 201 when it
//! stored the profile, 200 when one was already stored and is kept (first writer wins), 400
//! `PROFILE_INVALID` for a body that is too large, does not decode, or names ranges outside the
//! layer's data blob.

use std::sync::Arc;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use crate::error::{ApiError, ApiResult, Code};
use crate::expansion::ExpandedInfo;
use crate::http_util::{self, Resp};
use crate::names::RepoName;
use crate::profile::{Profile, MAX_BODY};
use crate::routes::blobs::parse_digest;
use crate::state::AppState;

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
    let Some(body) = st.store.read_profile(&d)? else {
        return Err(ApiError::spec(
            StatusCode::NOT_FOUND,
            Code::ProfileUnknown,
            "no start profile for this layer",
        ));
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
    let (store, bytes) = (st.store.clone(), profile.encode());
    let stored = tokio::task::spawn_blocking(move || store.create_profile(&d, &bytes))
        .await
        .map_err(|e| ApiError::Internal(crate::error::Error::Task(e.to_string())))??;
    tracing::info!(repo = %name, layer = digest, ranges = profile.ranges.len(), stored, "start profile");
    let status = if stored {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(http_util::json(
        status,
        &json!({ "layer": digest, "ranges": profile.ranges.len(), "stored": stored }),
    ))
}
