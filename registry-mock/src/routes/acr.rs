//! ACR extras: repository attributes (`/acr/v1/{repo}`), explicit expansion
//! (`POST /acr/v1/{repo}/_expand`, ours) and Teleport's `/mount/v1` API.
//!
//! `/mount/v1/{repo}/_manifests/{digest}` answers 200 (every layer expanded, body below), 409
//! (a layer pending or expanding), 404 (repository not teleport-enabled, `MANIFEST_UNKNOWN` for a
//! manifest not in the repository (never pushed or deleted), or the image was never queued:
//! pushed before enabling and not `_expand`ed) and 500 `EXPANSION_FAILED` with the failing layer
//! and reason in `detail` when a layer could not be expanded, failed too often (crash loop), or
//! is not the layer the image config claims (diff_id mismatch).
//!
//! The 200 body is [`emulator::mount::MountInfo`] (typed and versioned there, parsed by the node
//! with the same type); the 409 body is an error with code `EXPANSION_PENDING` and
//! `detail.layers = [{"digest","state"}]`; 404 uses `EXPANSION_UNKNOWN`. Only filesystem layers
//! are listed (artifact blobs and foreign layers are not expanded).

use std::sync::Arc;

use emulator::{mount, Digest};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult, Code};
use crate::expansion::{ExpandedInfo, ImageStatus};
use crate::http_util::{self, rfc3339, Resp};
use crate::metrics::ServedKind;
use crate::names::RepoName;
use crate::routes::blobs::{parse_digest, serve_file};
use crate::routes::manifests::touch_repo;
use crate::routes::Part;
use crate::state::AppState;
use crate::store::{LayerRef, RepoAttrs};

fn attributes(st: &AppState, name: &RepoName, host: &str, a: &RepoAttrs) -> ApiResult<Value> {
    Ok(json!({
        "registry": host,
        "imageName": name.as_str(),
        "createdTime": rfc3339(a.created_time),
        "lastUpdateTime": rfc3339(a.last_update_time),
        "manifestCount": st.store.manifests(name)?.len(),
        "tagCount": st.store.tags(name)?.len(),
        "changeableAttributes": {
            "deleteEnabled": true,
            "writeEnabled": true,
            "readEnabled": true,
            "listEnabled": true,
            "teleportEnabled": a.teleport_enabled,
        }
    }))
}

pub fn get_repo(st: &Arc<AppState>, name: &RepoName, host: &str) -> ApiResult<Resp> {
    if !st.store.repo_exists(name) {
        return Err(ApiError::name_unknown(name.as_str()));
    }
    let a = st.store.read_attrs(name)?.unwrap_or_default();
    Ok(http_util::json(
        StatusCode::OK,
        &attributes(st, name, host, &a)?,
    ))
}

/// `PATCH /acr/v1/{repo}` with `{"teleportEnabled": bool}`. The other changeable attributes are
/// accepted only with their (fixed) value `true`: this registry does not enforce them.
pub async fn patch_repo(
    st: &Arc<AppState>,
    name: &RepoName,
    req: Request<Incoming>,
    host: &str,
) -> ApiResult<Resp> {
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| ApiError::unsupported(format!("reading body: {e}")))?
        .to_bytes();
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::unsupported(format!("invalid JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::unsupported("expected a JSON object"));
    };
    let mut teleport = None;
    for (k, val) in obj {
        match (k.as_str(), val) {
            ("teleportEnabled", Value::Bool(b)) => teleport = Some(*b),
            (
                "deleteEnabled" | "writeEnabled" | "readEnabled" | "listEnabled",
                Value::Bool(true),
            ) => {}
            _ => {
                return Err(ApiError::unsupported(format!(
                    "unsupported attribute {k}={val}"
                )))
            }
        }
    }
    let a = {
        let _g = st.attrs_lock.lock().await;
        let now = http_util::now_secs();
        let mut a = st.store.read_attrs(name)?.unwrap_or(RepoAttrs {
            created_time: now,
            ..RepoAttrs::default()
        });
        if let Some(t) = teleport {
            a.teleport_enabled = t;
        }
        a.last_update_time = now;
        st.store.write_attrs(name, &a)?;
        a
    };
    Ok(http_util::json(
        StatusCode::OK,
        &attributes(st, name, host, &a)?,
    ))
}

/// `POST /acr/v1/{repo}/_expand` (ours): expand one image (`{"digest": …}`) or every manifest of
/// the repository, e.g. images pushed before the repository was enabled. Failed layers are retried.
pub async fn expand(
    st: &Arc<AppState>,
    name: &RepoName,
    req: Request<Incoming>,
) -> ApiResult<Resp> {
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| ApiError::unsupported(format!("reading body: {e}")))?
        .to_bytes();
    let digest = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::unsupported(format!("invalid JSON: {e}")))?;
        match v.get("digest") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(parse_digest(s)?),
            Some(other) => return Err(ApiError::unsupported(format!("invalid digest {other}"))),
        }
    };
    if !st.store.repo_exists(name) {
        return Err(ApiError::name_unknown(name.as_str()));
    }
    if !st
        .store
        .read_attrs(name)?
        .is_some_and(|a| a.teleport_enabled)
    {
        return Err(ApiError::denied("repository is not teleport-enabled"));
    }
    let digests = match digest {
        Some(d) => {
            if st.store.manifest_media_type(name, &d)?.is_none() {
                return Err(ApiError::manifest_unknown(d.as_str()));
            }
            vec![d]
        }
        None => st.store.manifests(name)?,
    };
    let (ex, n, ds) = (st.expander.clone(), name.clone(), digests.clone());
    tokio::task::spawn_blocking(move || ds.iter().try_for_each(|d| ex.request_image(&n, d, true)))
        .await
        .map_err(|e| ApiError::Internal(crate::error::Error::Task(e.to_string())))??;
    let _ = touch_repo(st, name).await?;
    let list: Vec<&str> = digests.iter().map(Digest::as_str).collect();
    Ok(http_util::json(
        StatusCode::ACCEPTED,
        &json!({ "repository": name.as_str(), "queued": list }),
    ))
}

/// One layer of a `/mount` answer; its compressed encoding is advertised only with `frames`
/// (the registry's wire compression on).
fn layer_info(name: &RepoName, l: &LayerRef, i: &ExpandedInfo, frames: bool) -> mount::LayerInfo {
    let base = format!("/mount/v1/{name}/_layers/{}", l.digest);
    mount::LayerInfo {
        digest: l.digest.clone(),
        media_type: l.media_type.clone(),
        size: l.size,
        diff_id: i.diff_id.clone(),
        uncompressed_size: i.uncompressed_size,
        index: mount::BlobRef {
            url: format!("{base}/index"),
            size: i.index_size,
            digest: i.index_digest.clone(),
        },
        data: mount::BlobRef {
            url: format!("{base}/data"),
            size: i.data_size,
            digest: i.data_digest.clone(),
        },
        chunk_size: i.chunk_size,
        entries: i.entries,
        frames: i
            .frames
            .as_ref()
            .filter(|_| frames)
            .map(|f| mount::FramesRef {
                encoding: mount::FRAMES_ENCODING_ZSTD.into(),
                frame_size: f.frame_size,
                table: mount::BlobRef {
                    url: format!("{base}/frames"),
                    size: f.table_size,
                    digest: f.table_digest.clone(),
                },
                data: mount::BlobRef {
                    url: format!("{base}/data.zst"),
                    size: f.data_size,
                    digest: f.data_digest.clone(),
                },
            }),
    }
}

fn not_enabled(message: &str) -> ApiError {
    ApiError::spec(StatusCode::NOT_FOUND, Code::ExpansionUnknown, message)
}

pub fn mount_manifest(st: &Arc<AppState>, name: &RepoName, digest: &str) -> ApiResult<Resp> {
    let d = parse_digest(digest)?;
    if !st
        .store
        .read_attrs(name)?
        .is_some_and(|a| a.teleport_enabled)
    {
        return Err(not_enabled("repository is not teleport-enabled"));
    }
    // A deleted manifest keeps its expansion record (and its layers may serve other images):
    // what decides is whether the repository still holds the manifest.
    if st.store.manifest_media_type(name, &d)?.is_none() {
        return Err(ApiError::manifest_unknown(d.as_str()));
    }
    let ready = match st.expander.image_status(name, &d)? {
        ImageStatus::NotQueued => return Err(not_enabled("image was not queued for expansion")),
        ImageStatus::InProgress(layers) => {
            let detail: Vec<Value> = layers
                .iter()
                .map(|(d, s)| json!({ "digest": d.as_str(), "state": s }))
                .collect();
            return Err(ApiError::spec(
                StatusCode::CONFLICT,
                Code::ExpansionPending,
                "expanding layers",
            )
            .with_detail(json!({ "layers": detail })));
        }
        ImageStatus::Failed { layer, reason } => {
            return Err(ApiError::spec(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::ExpansionFailed,
                "layer expansion failed",
            )
            .with_detail(json!({ "layer": layer.as_str(), "reason": reason })));
        }
        ImageStatus::Ready(layers) => layers,
    };
    let rec = st.store.read_image_record(name, &d)?;
    let frames = st.expander.wire_compression();
    let mut body = mount::MountInfo {
        schema_version: mount::MOUNT_SCHEMA_VERSION,
        repository: name.as_str().to_string(),
        manifest_digest: d.clone(),
        format_version: emulator::FormatVersion::CURRENT as u32,
        layers: Vec::new(),
        media_type: None,
        manifests: Vec::new(),
    };
    match rec {
        Some(r) if !r.children.is_empty() => {
            // An index: the layers are per child manifest, under "manifests".
            for c in &r.children {
                let layers = match st.expander.image_status(name, &c.digest)? {
                    ImageStatus::Ready(ls) => ls
                        .iter()
                        .map(|(l, i)| layer_info(name, l, i, frames))
                        .collect(),
                    _ => Vec::new(),
                };
                body.manifests.push(mount::ChildMount {
                    digest: c.digest.clone(),
                    media_type: c.media_type.clone(),
                    platform: c.platform.clone(),
                    layers,
                });
            }
            body.media_type = Some(r.media_type);
        }
        _ => {
            body.layers = ready
                .iter()
                .map(|(l, i)| layer_info(name, l, i, frames))
                .collect();
        }
    }
    Ok(http_util::with_body(
        StatusCode::OK,
        "application/json",
        bytes::Bytes::from(body.encode()),
    ))
}

pub async fn mount_layer(
    st: &Arc<AppState>,
    name: &RepoName,
    digest: &str,
    part: Part,
    req: &Request<Incoming>,
    head: bool,
) -> ApiResult<Resp> {
    let d = parse_digest(digest)?;
    let info = match st.expander.layer_status(&d) {
        Some(s) if st.store.blob_linked(name, &d) => s.result,
        _ => None,
    };
    let Some(info) = info else {
        return Err(ApiError::blob_unknown(digest)
            .with_detail(json!({ "digest": digest, "reason": "no expanded layer" })));
    };
    let dir = st.store.expanded_dir(&d);
    let no_frames = || {
        ApiError::blob_unknown(digest)
            .with_detail(json!({ "digest": digest, "reason": "no compressed encoding" }))
    };
    let (path, size, kind, dg) = match part {
        Part::Index => (
            dir.join("index"),
            info.index_size,
            ServedKind::ExpandedIndex,
            info.index_digest,
        ),
        Part::Data => (
            dir.join("data"),
            info.data_size,
            ServedKind::ExpandedData,
            info.data_digest,
        ),
        // The table is metadata a node reads once per layer, like the index.
        Part::Frames => {
            let f = info.frames.ok_or_else(no_frames)?;
            (
                dir.join("frames"),
                f.table_size,
                ServedKind::ExpandedIndex,
                f.table_digest,
            )
        }
        Part::FramedData => {
            let f = info.frames.ok_or_else(no_frames)?;
            (
                dir.join("data.zst"),
                f.data_size,
                ServedKind::ExpandedFrames,
                f.data_digest,
            )
        }
    };
    serve_file(
        st,
        &path,
        size,
        req,
        head,
        kind,
        "application/octet-stream",
        Some(&dg),
    )
    .await
}
