//! `GET /oauth2/token` (basic auth, ACR and Docker style) and `POST /oauth2/token`
//! (OAuth2 password grant, as containerd sends first).

use std::sync::Arc;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::auth::{parse_scopes, Access, Auth, Caller, TOKEN_TTL};
use crate::error::{ApiError, ApiResult};
use crate::http_util::{header_str, json, now_secs, query_params, rfc3339, Resp};
use crate::state::AppState;

fn unauthorized(st: &AppState, host: &str) -> ApiError {
    ApiError::Unauthorized {
        challenge: format!("Basic realm=\"{}://{host}/oauth2/token\"", st.auth.scheme()),
        message: "invalid username or password".into(),
    }
}

fn scopes_of(params: &[(String, String)]) -> Vec<Access> {
    params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| parse_scopes(v))
        .collect()
}

fn respond(st: &AppState, caller: Caller, scopes: Vec<Access>) -> Resp {
    let now = now_secs();
    let (token, granted) = st.auth.issue(&caller, scopes, now);
    let scope: Vec<String> = granted
        .iter()
        .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "access_token": token,
            "token": token,
            "expires_in": TOKEN_TTL,
            "issued_at": rfc3339(now),
            "scope": scope.join(" "),
        }),
    )
}

pub fn get(st: &Arc<AppState>, req: &Request<Incoming>, host: &str) -> ApiResult<Resp> {
    let q = query_params(req.uri().query());
    let caller = match header_str(req.headers(), http::header::AUTHORIZATION) {
        None => Caller::Anonymous,
        Some(h) => match Auth::basic(h) {
            Some((u, p)) if !st.auth.enabled() || st.auth.check_password(&u, &p) => Caller::User(u),
            _ => return Err(unauthorized(st, host)),
        },
    };
    if matches!(caller, Caller::Anonymous) && st.auth.enabled() && !st.auth.anonymous_pull() {
        return Err(unauthorized(st, host));
    }
    Ok(respond(st, caller, scopes_of(&q)))
}

pub async fn post(st: &Arc<AppState>, req: Request<Incoming>, host: &str) -> ApiResult<Resp> {
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| ApiError::unsupported(format!("reading token request: {e}")))?
        .to_bytes();
    let form: Vec<(String, String)> = form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |k: &str| form.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
    match get("grant_type") {
        Some("password") => {}
        other => {
            return Err(ApiError::unsupported(format!(
                "unsupported grant_type {other:?}"
            )))
        }
    }
    let (Some(u), Some(p)) = (get("username"), get("password")) else {
        return Err(unauthorized(st, host));
    };
    if st.auth.enabled() && !st.auth.check_password(u, p) {
        return Err(unauthorized(st, host));
    }
    Ok(respond(st, Caller::User(u.to_string()), scopes_of(&form)))
}
