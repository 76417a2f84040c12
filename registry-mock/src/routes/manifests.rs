//! Manifests (GET/HEAD/PUT/DELETE), tags list, catalog and the referrers API.

use std::sync::Arc;

use bytes::Bytes;
use emulator::oci::MT_OCI_INDEX;
use emulator::Digest;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::error::{ApiError, ApiResult, Code};
use crate::http_util::{
    accepted_types, collect_body, empty, header_str, json, now_secs, param, query_params,
    set_header, status_only, BodyError, Resp,
};
use crate::link::bytes_body;
use crate::manifest::{self, Kind};
use crate::metrics::ServedKind;
use crate::names::{Reference, RepoName};
use crate::routes::blobs::parse_digest;
use crate::state::AppState;
use crate::store::{RepoAttrs, Store};
use emulator::oci::Descriptor;

/// Manifests larger than this are refused (the distribution spec suggests at least 4 MiB).
pub const MAX_MANIFEST: usize = 4 * 1024 * 1024;

/// Levels of indexes one index may nest (the index itself is level 1; image manifests do not
/// count). Multi-platform images use 1, attestations 2; more is hostile.
pub const MAX_INDEX_DEPTH: usize = 8;

/// Manifests one index may reach in all, across every level.
pub const MAX_INDEX_NODES: usize = 10_000;

fn parse_reference(s: &str) -> ApiResult<Reference> {
    Reference::parse(s).ok_or_else(|| {
        if s.contains(':') {
            ApiError::digest_invalid(format!("invalid digest {s:?}"))
        } else {
            ApiError::spec(
                StatusCode::BAD_REQUEST,
                Code::TagInvalid,
                format!("invalid tag {s:?}"),
            )
        }
    })
}

/// Resolve a reference to a digest in the repository.
fn resolve(st: &AppState, name: &RepoName, reference: &Reference) -> ApiResult<Digest> {
    let d = match reference {
        Reference::Digest(d) => Some(d.clone()),
        Reference::Tag(t) => st.store.resolve_tag(name, t)?,
    };
    match d {
        Some(d) if st.store.manifest_media_type(name, &d)?.is_some() => Ok(d),
        _ if !st.store.repo_exists(name) => Err(ApiError::name_unknown(name.as_str())),
        _ => Err(ApiError::manifest_unknown(&reference.to_string())),
    }
}

pub fn get(
    st: &Arc<AppState>,
    name: &RepoName,
    reference: &str,
    req: &Request<Incoming>,
    head: bool,
) -> ApiResult<Resp> {
    let reference = parse_reference(reference)?;
    let d = resolve(st, name, &reference)?;
    let Some((mt, bytes)) = st.store.read_manifest(name, &d)? else {
        return Err(ApiError::manifest_unknown(&reference.to_string()));
    };
    // Content negotiation: we never convert formats, so the stored type is returned even when
    // the client's Accept list lacks it (as most registries do); log the mismatch.
    let accepted = accepted_types(req.headers());
    if !accepted.is_empty() && !accepted.iter().any(|a| a == &mt || a == "*/*") {
        tracing::debug!(%name, %d, stored = %mt, ?accepted, "manifest media type not in Accept; returning it anyway");
    }
    let len = bytes.len();
    let body = if head {
        empty()
    } else {
        bytes_body(
            Bytes::from(bytes),
            st.limiter.clone(),
            st.metrics.clone(),
            ServedKind::Manifest,
        )
    };
    let mut r = Response::new(body);
    set_header(&mut r, "content-type", &mt);
    set_header(&mut r, "content-length", &len.to_string());
    set_header(&mut r, "docker-content-digest", d.as_str());
    set_header(&mut r, "etag", &format!("\"{d}\""));
    Ok(r)
}

async fn read_body(
    st: &AppState,
    req: Request<Incoming>,
    limit: usize,
) -> ApiResult<(Option<String>, Bytes)> {
    let ct = header_str(req.headers(), http::header::CONTENT_TYPE).map(str::to_string);
    let too_large = || {
        ApiError::spec(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::SizeInvalid,
            "body too large",
        )
    };
    if header_str(req.headers(), http::header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|cl| cl > limit as u64)
    {
        return Err(too_large());
    }
    let body = collect_body(req.into_body(), limit, st.limits.body_read_timeout)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(_) => too_large(),
            BodyError::Stalled(_) => ApiError::spec(
                StatusCode::REQUEST_TIMEOUT,
                Code::ManifestInvalid,
                e.to_string(),
            ),
            BodyError::Read(_) => ApiError::manifest_invalid(e.to_string()),
        })?;
    Ok((ct, body))
}

/// Check the manifests an index refers to, in this repository: its direct children must be
/// there; indexes below may nest at most [`MAX_INDEX_DEPTH`] levels and reach at most
/// [`MAX_INDEX_NODES`] manifests; a cycle is refused. (Children are pushed before their index
/// and addressed by content, so a cycle needs a tampered store; the walk must end regardless.)
/// Depth-first with an explicit stack: hostile input cannot overflow the call stack. Any code
/// that walks stored indexes (the expander) can call this first.
pub fn check_index_tree(
    store: &Store,
    name: &RepoName,
    own: &Digest,
    children: &[Descriptor],
) -> ApiResult<()> {
    enum Step {
        Enter(Digest, usize),
        Leave(Digest),
    }
    let children = children
        .iter()
        .map(manifest::digest)
        .collect::<Result<Vec<Digest>, String>>()
        .map_err(ApiError::manifest_invalid)?;
    for c in &children {
        if store.manifest_media_type(name, c)?.is_none() {
            return Err(ApiError::spec(
                StatusCode::BAD_REQUEST,
                Code::ManifestBlobUnknown,
                "manifest unknown to registry",
            )
            .with_detail(serde_json::json!({ "digest": c.as_str() })));
        }
    }
    let mut on_path = std::collections::HashSet::from([own.clone()]);
    let mut done = std::collections::HashSet::new();
    let mut stack: Vec<Step> = children
        .iter()
        .rev()
        .map(|c| Step::Enter(c.clone(), 2))
        .collect();
    while let Some(step) = stack.pop() {
        let (d, level) = match step {
            Step::Leave(d) => {
                on_path.remove(&d);
                done.insert(d);
                continue;
            }
            Step::Enter(d, level) => (d, level),
        };
        if on_path.contains(&d) {
            return Err(ApiError::manifest_invalid(format!(
                "index refers to itself through {d} (a cycle)"
            )));
        }
        if done.contains(&d) {
            continue;
        }
        if done.len() + on_path.len() >= MAX_INDEX_NODES {
            return Err(ApiError::manifest_invalid(format!(
                "index reaches more than {MAX_INDEX_NODES} manifests"
            )));
        }
        // A grandchild may have been deleted since: nothing below it to check.
        let Some((mt, bytes)) = store.read_manifest(name, &d)? else {
            done.insert(d);
            continue;
        };
        let Ok(m) = manifest::parse(&bytes, Some(&mt)) else {
            done.insert(d);
            continue;
        };
        let Kind::Index(index) = m.kind else {
            done.insert(d);
            continue;
        };
        if level > MAX_INDEX_DEPTH {
            return Err(ApiError::manifest_invalid(format!(
                "indexes nested deeper than {MAX_INDEX_DEPTH} levels"
            )));
        }
        on_path.insert(d.clone());
        stack.push(Step::Leave(d));
        // A stored child that is not sha256 cannot have been pushed here: nothing to walk.
        stack.extend(
            index
                .manifests()
                .iter()
                .rev()
                .filter_map(|c| manifest::digest(c).ok())
                .map(|c| Step::Enter(c, level + 1)),
        );
    }
    Ok(())
}

pub async fn put(
    st: &Arc<AppState>,
    name: &RepoName,
    reference: &str,
    req: Request<Incoming>,
) -> ApiResult<Resp> {
    let reference = parse_reference(reference)?;
    let (ct, bytes) = read_body(st, req, MAX_MANIFEST).await?;
    st.metrics.add_received(bytes.len() as u64);
    let m = manifest::parse(&bytes, ct.as_deref()).map_err(ApiError::manifest_invalid)?;
    let digest = Digest::sha256_of(&bytes);
    if let Reference::Digest(want) = &reference {
        if want != &digest {
            return Err(
                ApiError::digest_invalid("manifest digest does not match its content").with_detail(
                    serde_json::json!({ "expected": want.as_str(), "actual": digest.as_str() }),
                ),
            );
        }
    }
    // Everything the manifest references must already be in this repository.
    match &m.kind {
        Kind::Image(image) => {
            for desc in std::iter::once(image.config()).chain(image.layers()) {
                if desc.urls().as_ref().is_some_and(|u| !u.is_empty()) {
                    continue; // Foreign layer: fetched from its URLs, never pushed here.
                }
                let d = manifest::digest(desc).map_err(ApiError::manifest_invalid)?;
                match st.store.repo_blob_size(name, &d) {
                    None => {
                        return Err(ApiError::spec(
                            StatusCode::BAD_REQUEST,
                            Code::ManifestBlobUnknown,
                            "blob unknown to registry",
                        )
                        .with_detail(serde_json::json!({ "digest": d.as_str() })))
                    }
                    Some(size) if size != desc.size() => {
                        return Err(ApiError::manifest_invalid(format!(
                            "descriptor {d} says size {} but the blob has {size}",
                            desc.size()
                        )))
                    }
                    Some(_) => {}
                }
            }
        }
        Kind::Index(index) => check_index_tree(&st.store, name, &digest, index.manifests())?,
    }
    let (store, n, mt, b, tag) = (
        st.store.clone(),
        name.clone(),
        m.media_type.clone(),
        bytes.clone(),
        match &reference {
            Reference::Tag(t) => Some(t.clone()),
            Reference::Digest(_) => None,
        },
    );
    tokio::task::spawn_blocking(move || -> crate::error::Result<()> {
        let d = store.put_manifest(&n, &mt, &b)?;
        if let Some(t) = tag {
            store.set_tag(&n, &t, &d)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| ApiError::Internal(crate::error::Error::Task(e.to_string())))??;
    st.metrics.note_manifest(&m);
    let enabled = touch_repo(st, name).await?.teleport_enabled;
    if enabled {
        // ACR: a push to a teleport-enabled repository queues its layers; the response does not wait.
        let (ex, n, d) = (st.expander.clone(), name.clone(), digest.clone());
        tokio::task::spawn_blocking(move || ex.request_image(&n, &d, false))
            .await
            .map_err(|e| ApiError::Internal(crate::error::Error::Task(e.to_string())))??;
    }
    let mut r = status_only(StatusCode::CREATED);
    set_header(
        &mut r,
        "location",
        &format!("/v2/{name}/manifests/{digest}"),
    );
    set_header(&mut r, "docker-content-digest", digest.as_str());
    if let Some(s) = m.subject() {
        set_header(&mut r, "oci-subject", s.digest().as_ref());
    }
    Ok(r)
}

/// Create or update the repository's attributes after a write; returns them.
pub async fn touch_repo(st: &AppState, name: &RepoName) -> ApiResult<RepoAttrs> {
    let _g = st.attrs_lock.lock().await;
    let now = now_secs();
    let mut a = st.store.read_attrs(name)?.unwrap_or(RepoAttrs {
        created_time: now,
        ..RepoAttrs::default()
    });
    a.last_update_time = now;
    st.store.write_attrs(name, &a)?;
    Ok(a)
}

pub fn delete(st: &Arc<AppState>, name: &RepoName, reference: &str) -> ApiResult<Resp> {
    let reference = parse_reference(reference)?;
    let found = match &reference {
        Reference::Tag(t) => st.store.delete_tag(name, t)?,
        Reference::Digest(d) => st.store.delete_manifest(name, d)?,
    };
    if !found {
        return Err(if st.store.repo_exists(name) {
            ApiError::manifest_unknown(&reference.to_string())
        } else {
            ApiError::name_unknown(name.as_str())
        });
    }
    Ok(status_only(StatusCode::ACCEPTED))
}

/// `?n=&last=` pagination over a sorted list; returns the page and the `Link` header if more.
fn paginate(
    all: Vec<String>,
    req: &Request<Incoming>,
    base: &str,
) -> ApiResult<(Vec<String>, Option<String>)> {
    let q = query_params(req.uri().query());
    let last = param(&q, "last");
    let n = match param(&q, "n") {
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| ApiError::unsupported(format!("invalid n={v:?}")))?,
        ),
        None => None,
    };
    let rest: Vec<String> = all
        .into_iter()
        .filter(|x| last.is_none_or(|l| x.as_str() > l))
        .collect();
    let Some(n) = n else { return Ok((rest, None)) };
    if rest.len() <= n {
        return Ok((rest, None));
    }
    let page: Vec<String> = rest.into_iter().take(n).collect();
    let link = page.last().map(|l| {
        let enc: String = form_urlencoded::byte_serialize(l.as_bytes()).collect();
        format!("<{base}?n={n}&last={enc}>; rel=\"next\"")
    });
    Ok((page, link))
}

pub fn tags(st: &Arc<AppState>, name: &RepoName, req: &Request<Incoming>) -> ApiResult<Resp> {
    if !st.store.repo_exists(name) {
        return Err(ApiError::name_unknown(name.as_str()));
    }
    let (page, link) = paginate(st.store.tags(name)?, req, &format!("/v2/{name}/tags/list"))?;
    let mut r = json(
        StatusCode::OK,
        &serde_json::json!({ "name": name.as_str(), "tags": page }),
    );
    if let Some(l) = link {
        set_header(&mut r, "link", &l);
    }
    Ok(r)
}

pub fn catalog(st: &Arc<AppState>, req: &Request<Incoming>) -> ApiResult<Resp> {
    let (page, link) = paginate(st.store.repositories()?, req, "/v2/_catalog")?;
    let mut r = json(StatusCode::OK, &serde_json::json!({ "repositories": page }));
    if let Some(l) = link {
        set_header(&mut r, "link", &l);
    }
    Ok(r)
}

pub fn referrers(
    st: &Arc<AppState>,
    name: &RepoName,
    digest: &str,
    req: &Request<Incoming>,
) -> ApiResult<Resp> {
    let subject = parse_digest(digest)?;
    let q = query_params(req.uri().query());
    let filter = param(&q, "artifactType");
    let mut out = Vec::new();
    for d in st.store.manifests(name)? {
        let Some((mt, bytes)) = st.store.read_manifest(name, &d)? else {
            continue;
        };
        let Ok(m) = manifest::parse(&bytes, Some(&mt)) else {
            continue;
        };
        if m.subject().map(|s| s.digest().as_ref()) != Some(subject.as_str()) {
            continue;
        }
        let at = m.effective_artifact_type();
        if let Some(f) = filter {
            if at.as_deref() != Some(f) {
                continue;
            }
        }
        let mut desc =
            serde_json::json!({ "mediaType": mt, "digest": d.as_str(), "size": bytes.len() });
        if let Some(a) = at {
            desc["artifactType"] = serde_json::Value::String(a);
        }
        if let Some(a) = m.annotations() {
            desc["annotations"] = serde_json::json!(a);
        }
        out.push(desc);
    }
    let body =
        serde_json::json!({ "schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": out });
    let mut r = json(StatusCode::OK, &body);
    set_header(&mut r, "content-type", MT_OCI_INDEX);
    if filter.is_some() {
        set_header(&mut r, "oci-filters-applied", "artifactType");
    }
    Ok(r)
}
