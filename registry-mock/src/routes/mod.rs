//! HTTP routing: path → [`Route`], authorisation (with the failed-login rate limit), dispatch
//! to the handler modules, request metrics (bounded labels: route templates and known
//! methods), and the single translation of [`ApiError`] into a response.

pub mod acr;
pub mod blobs;
pub mod manifests;
pub mod profiles;
pub mod token;
pub mod uploads;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use crate::auth::{guess_fingerprint, Auth, FailKey, Need};
use crate::error::{ApiError, ApiResult};
use crate::http_util::{header_str, now_secs, Resp};
use crate::names::RepoName;
use crate::state::AppState;

/// Which expanded-layer file `/mount/v1/…/_layers/…/{index,data}` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Index,
    Data,
    /// The data blob's frame table (`emulator::frames`).
    Frames,
    /// The data blob's seekable zstd encoding.
    FramedData,
}

#[derive(Debug)]
pub enum Route {
    Base,
    Catalog,
    Token,
    Metrics,
    Manifest {
        name: RepoName,
        reference: String,
    },
    Blob {
        name: RepoName,
        digest: String,
    },
    UploadStart {
        name: RepoName,
    },
    Upload {
        name: RepoName,
        uuid: String,
    },
    Tags {
        name: RepoName,
    },
    Referrers {
        name: RepoName,
        digest: String,
    },
    AcrRepo {
        name: RepoName,
    },
    AcrExpand {
        name: RepoName,
    },
    MountManifest {
        name: RepoName,
        digest: String,
    },
    MountLayer {
        name: RepoName,
        digest: String,
        part: Part,
    },
    /// A layer's learned start profile (`routes::profiles`).
    MountProfile {
        name: RepoName,
        digest: String,
    },
}

impl Route {
    /// Route template used as the metrics label.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Base => "/v2/",
            Route::Catalog => "/v2/_catalog",
            Route::Token => "/oauth2/token",
            Route::Metrics => "/metrics",
            Route::Manifest { .. } => "/v2/{name}/manifests/{reference}",
            Route::Blob { .. } => "/v2/{name}/blobs/{digest}",
            Route::UploadStart { .. } => "/v2/{name}/blobs/uploads/",
            Route::Upload { .. } => "/v2/{name}/blobs/uploads/{uuid}",
            Route::Tags { .. } => "/v2/{name}/tags/list",
            Route::Referrers { .. } => "/v2/{name}/referrers/{digest}",
            Route::AcrRepo { .. } => "/acr/v1/{name}",
            Route::AcrExpand { .. } => "/acr/v1/{name}/_expand",
            Route::MountManifest { .. } => "/mount/v1/{name}/_manifests/{digest}",
            Route::MountLayer {
                part: Part::Index, ..
            } => "/mount/v1/{name}/_layers/{digest}/index",
            Route::MountLayer {
                part: Part::Data, ..
            } => "/mount/v1/{name}/_layers/{digest}/data",
            Route::MountLayer {
                part: Part::Frames, ..
            } => "/mount/v1/{name}/_layers/{digest}/frames",
            Route::MountLayer {
                part: Part::FramedData,
                ..
            } => "/mount/v1/{name}/_layers/{digest}/data.zst",
            Route::MountProfile { .. } => "/mount/v1/{name}/_profiles/{digest}",
        }
    }
}

/// One path segment, percent-decoded (an invalid escape stays as it is).
fn pct_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn name_of(segs: &[String]) -> ApiResult<RepoName> {
    let joined = segs.join("/");
    RepoName::parse(&joined).ok_or_else(|| ApiError::name_invalid(&joined))
}

/// Map a path to a route. Repository names are multi-component, so the route is recognised
/// from the end of the path.
pub fn parse_route(path: &str) -> ApiResult<Route> {
    match path {
        "/v2" | "/v2/" => return Ok(Route::Base),
        "/v2/_catalog" => return Ok(Route::Catalog),
        "/oauth2/token" => return Ok(Route::Token),
        "/metrics" => return Ok(Route::Metrics),
        _ => {}
    }
    let segs: Vec<String> = path.split('/').map(pct_decode).collect();
    // segs[0] is "" (leading slash).
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let n = s.len();
    if n >= 4 && s[1] == "v2" {
        let rest = &segs[2..];
        let r = rest.len();
        if r >= 3 && rest[r - 3] == "blobs" && rest[r - 2] == "uploads" {
            let name = name_of(&rest[..r - 3])?;
            return Ok(if rest[r - 1].is_empty() {
                Route::UploadStart { name }
            } else {
                Route::Upload {
                    name,
                    uuid: rest[r - 1].clone(),
                }
            });
        }
        if r >= 3 && rest[r - 2] == "blobs" && rest[r - 1] == "uploads" {
            return Ok(Route::UploadStart {
                name: name_of(&rest[..r - 2])?,
            });
        }
        if r >= 3 && rest[r - 2] == "tags" && rest[r - 1] == "list" {
            return Ok(Route::Tags {
                name: name_of(&rest[..r - 2])?,
            });
        }
        if r >= 3 && rest[r - 2] == "manifests" {
            return Ok(Route::Manifest {
                name: name_of(&rest[..r - 2])?,
                reference: rest[r - 1].clone(),
            });
        }
        if r >= 3 && rest[r - 2] == "blobs" {
            return Ok(Route::Blob {
                name: name_of(&rest[..r - 2])?,
                digest: rest[r - 1].clone(),
            });
        }
        if r >= 3 && rest[r - 2] == "referrers" {
            return Ok(Route::Referrers {
                name: name_of(&rest[..r - 2])?,
                digest: rest[r - 1].clone(),
            });
        }
        return Err(ApiError::NotFound);
    }
    if n >= 4 && s[1] == "acr" && s[2] == "v1" {
        let rest = &segs[3..];
        let r = rest.len();
        if r >= 2 && rest[r - 1] == "_expand" {
            return Ok(Route::AcrExpand {
                name: name_of(&rest[..r - 1])?,
            });
        }
        return Ok(Route::AcrRepo {
            name: name_of(rest)?,
        });
    }
    if n >= 6 && s[1] == "mount" && s[2] == "v1" {
        let rest = &segs[3..];
        let r = rest.len();
        if r >= 3 && rest[r - 2] == "_manifests" {
            return Ok(Route::MountManifest {
                name: name_of(&rest[..r - 2])?,
                digest: rest[r - 1].clone(),
            });
        }
        if r >= 3 && rest[r - 2] == "_profiles" {
            return Ok(Route::MountProfile {
                name: name_of(&rest[..r - 2])?,
                digest: rest[r - 1].clone(),
            });
        }
        if r >= 4 && rest[r - 3] == "_layers" {
            let part = match rest[r - 1].as_str() {
                "index" => Part::Index,
                "data" => Part::Data,
                "frames" => Part::Frames,
                "data.zst" => Part::FramedData,
                _ => return Err(ApiError::NotFound),
            };
            return Ok(Route::MountLayer {
                name: name_of(&rest[..r - 3])?,
                digest: rest[r - 2].clone(),
                part,
            });
        }
    }
    Err(ApiError::NotFound)
}

fn need_for(route: &Route, method: &Method) -> Need {
    let write = !matches!(*method, Method::GET | Method::HEAD);
    match route {
        Route::Token | Route::Metrics => Need::Nothing,
        Route::Base => Need::Base,
        Route::Catalog => Need::Catalog,
        Route::Manifest { name, .. } | Route::Blob { name, .. } if *method == Method::DELETE => {
            Need::Delete(name.clone())
        }
        Route::Upload { name, .. } | Route::UploadStart { name } => Need::Push(name.clone()),
        Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::AcrRepo { name }
        | Route::AcrExpand { name }
        | Route::MountProfile { name, .. } => {
            if write {
                Need::Push(name.clone())
            } else {
                Need::Pull(name.clone())
            }
        }
        Route::Tags { name }
        | Route::Referrers { name, .. }
        | Route::MountManifest { name, .. }
        | Route::MountLayer { name, .. } => Need::Pull(name.clone()),
    }
}

/// The host clients reach us by: the request's Host header, else our bound address.
fn realm_host(st: &AppState, req: &Request<Incoming>) -> String {
    header_str(req.headers(), http::header::HOST)
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
        .map(str::to_string)
        .unwrap_or_else(|| st.addr.to_string())
}

/// The client's address, put into each request's extensions by the server loop.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// The metrics label of a method: the method itself when known, else `other` (a client
/// chooses the method string, and labels must stay a small, fixed set).
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// If this request is a login attempt (basic credentials, or the password grant), the keys
/// its failure counts against — the client's address and the user name when it shows — and
/// the fingerprint of the guess when the password shows.
fn login_keys(req: &Request<Incoming>, route: Option<&Route>) -> (Vec<FailKey>, Option<u64>) {
    let basic = header_str(req.headers(), http::header::AUTHORIZATION).and_then(Auth::basic);
    let grant = matches!(route, Some(Route::Token)) && req.method() == Method::POST;
    if basic.is_none() && !grant {
        return (Vec::new(), None);
    }
    let mut keys: Vec<FailKey> = req
        .extensions()
        .get::<Peer>()
        .map(|p| FailKey::Addr(p.0.ip()))
        .into_iter()
        .collect();
    let mut guess = None;
    if let Some((user, pass)) = basic {
        keys.push(FailKey::user(&user));
        guess = Some(guess_fingerprint(&user, &pass));
    }
    (keys, guess)
}

/// Entry point for every request.
pub async fn handle(st: Arc<AppState>, req: Request<Incoming>) -> Resp {
    if !st.link.latency.is_zero() {
        tokio::time::sleep(st.link.latency).await;
    }
    let method = method_label(req.method());
    let path = req.uri().path().to_string();
    let route = parse_route(&path);
    let (login, guess) = login_keys(&req, route.as_ref().ok());
    let blocked = st.auth.fails().blocked(&login);
    let (label, resp) = match route {
        Ok(route) => {
            let label = route.template();
            let res = match blocked {
                Some(wait) => Err(ApiError::TooManyRequests {
                    retry_after: wait.as_secs().max(1),
                    message: "too many failed logins; try again later".into(),
                }),
                None => dispatch(&st, route, req).await,
            };
            (label, res.unwrap_or_else(ApiError::into_response))
        }
        Err(e) => ("unmatched", e.into_response()),
    };
    if !login.is_empty() && resp.status() == StatusCode::UNAUTHORIZED {
        st.auth.fails().failed(&login, guess);
    }
    tracing::debug!(method, %path, status = resp.status().as_u16(), "request");
    st.metrics.request(label, method, resp.status().as_u16());
    let mut resp = resp;
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        http::HeaderValue::from_static("registry/2.0"),
    );
    resp
}

async fn dispatch(st: &Arc<AppState>, route: Route, req: Request<Incoming>) -> ApiResult<Resp> {
    let method = req.method().clone();
    let need = need_for(&route, &method);
    let host = realm_host(st, &req);
    st.auth.authorize(
        header_str(req.headers(), http::header::AUTHORIZATION),
        &need,
        &host,
        now_secs(),
    )?;
    use Method as M;
    match (route, method) {
        (Route::Base, M::GET | M::HEAD) => Ok(crate::http_util::json(
            StatusCode::OK,
            &serde_json::json!({}),
        )),
        (Route::Metrics, M::GET) => Ok(metrics_response(st)),
        (Route::Token, M::GET) => token::get(st, &req, &host),
        (Route::Token, M::POST) => token::post(st, req, &host).await,
        (Route::Catalog, M::GET) => manifests::catalog(st, &req),
        (Route::Tags { name }, M::GET) => manifests::tags(st, &name, &req),
        (Route::Referrers { name, digest }, M::GET) => {
            manifests::referrers(st, &name, &digest, &req)
        }
        (Route::Manifest { name, reference }, m @ (M::GET | M::HEAD)) => {
            manifests::get(st, &name, &reference, &req, m == M::HEAD)
        }
        (Route::Manifest { name, reference }, M::PUT) => {
            manifests::put(st, &name, &reference, req).await
        }
        (Route::Manifest { name, reference }, M::DELETE) => {
            manifests::delete(st, &name, &reference)
        }
        (Route::Blob { name, digest }, m @ (M::GET | M::HEAD)) => {
            blobs::get(st, &name, &digest, &req, m == M::HEAD).await
        }
        (Route::Blob { name, digest }, M::DELETE) => blobs::delete(st, &name, &digest),
        (Route::UploadStart { name }, M::POST) => uploads::start(st, &name, req, &host).await,
        (Route::Upload { name, uuid }, M::PATCH) => uploads::patch(st, &name, &uuid, req).await,
        (Route::Upload { name, uuid }, M::PUT) => uploads::finish(st, &name, &uuid, req).await,
        (Route::Upload { name, uuid }, M::GET) => uploads::status(st, &name, &uuid).await,
        (Route::Upload { name, uuid }, M::DELETE) => uploads::cancel(st, &name, &uuid),
        (Route::AcrRepo { name }, M::GET) => acr::get_repo(st, &name, &host),
        (Route::AcrRepo { name }, M::PATCH) => acr::patch_repo(st, &name, req, &host).await,
        (Route::AcrExpand { name }, M::POST) => acr::expand(st, &name, req).await,
        (Route::MountManifest { name, digest }, M::GET | M::HEAD) => {
            acr::mount_manifest(st, &name, &digest)
        }
        (Route::MountLayer { name, digest, part }, m @ (M::GET | M::HEAD)) => {
            acr::mount_layer(st, &name, &digest, part, &req, m == M::HEAD).await
        }
        (Route::MountProfile { name, digest }, m @ (M::GET | M::HEAD)) => {
            profiles::get(st, &name, &digest, m == M::HEAD)
        }
        (Route::MountProfile { name, digest }, M::PUT) => {
            profiles::put(st, &name, &digest, req).await
        }
        (Route::MountProfile { name, digest }, M::DELETE) => profiles::delete(st, &name, &digest),
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn metrics_response(st: &AppState) -> Resp {
    let body = st.metrics.render();
    let mut r = http::Response::new(crate::http_util::full(body));
    crate::http_util::set_header(&mut r, "content-type", crate::metrics::CONTENT_TYPE);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(parse_route("/v2/"), Ok(Route::Base)));
        assert!(matches!(
            parse_route("/v2/library/redis/manifests/latest"),
            Ok(Route::Manifest { .. })
        ));
        match parse_route(&format!("/v2/a/b/blobs/{d}")) {
            Ok(Route::Blob { name, digest }) => {
                assert_eq!(name.as_str(), "a/b");
                assert_eq!(digest, d);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_route("/v2/a/blobs/uploads/"),
            Ok(Route::UploadStart { .. })
        ));
        assert!(matches!(
            parse_route("/v2/a/blobs/uploads"),
            Ok(Route::UploadStart { .. })
        ));
        assert!(matches!(
            parse_route("/v2/a/blobs/uploads/xyz"),
            Ok(Route::Upload { .. })
        ));
        assert!(matches!(
            parse_route("/v2/blobs/blobs/abc"),
            Ok(Route::Blob { .. })
        ));
        assert!(matches!(
            parse_route("/v2/a/tags/list"),
            Ok(Route::Tags { .. })
        ));
        assert!(matches!(
            parse_route("/v2/Bad/tags/list"),
            Err(ApiError::Spec { .. })
        ));
        assert!(matches!(
            parse_route("/acr/v1/x/y"),
            Ok(Route::AcrRepo { .. })
        ));
        assert!(matches!(
            parse_route("/acr/v1/x/_expand"),
            Ok(Route::AcrExpand { .. })
        ));
        assert!(matches!(
            parse_route(&format!("/mount/v1/x/_manifests/{d}")),
            Ok(Route::MountManifest { .. })
        ));
        assert!(matches!(
            parse_route(&format!("/mount/v1/x/y/_layers/{d}/data")),
            Ok(Route::MountLayer {
                part: Part::Data,
                ..
            })
        ));
        assert!(matches!(
            parse_route(&format!("/mount/v1/x/y/_profiles/{d}")),
            Ok(Route::MountProfile { name, .. }) if name.as_str() == "x/y"
        ));
        assert!(matches!(parse_route("/nope"), Err(ApiError::NotFound)));
        assert!(
            matches!(parse_route("/v2/a/manifests/sha256%3Aab"), Ok(Route::Manifest { reference, .. }) if reference == "sha256:ab")
        );
        assert_eq!(pct_decode("%zz%4"), "%zz%4");
    }
}
