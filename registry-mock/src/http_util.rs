//! Response builders, header parsing and small wire helpers shared by the routes.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

/// Every response body: boxed so routes can return JSON or a streamed file.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;
pub type Resp = Response<Body>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub(crate) fn with_body(status: StatusCode, content_type: &'static str, body: Bytes) -> Resp {
    let len = body.len();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

pub fn plain(status: StatusCode, text: &'static str) -> Resp {
    with_body(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    )
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    // invariant: serialising a serde_json::Value cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    with_body(status, "application/json", Bytes::from(body))
}

/// A response with no body but an explicit `Content-Length: 0`.
pub fn status_only(status: StatusCode) -> Resp {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(0u64));
    r
}

pub fn set_header(r: &mut Resp, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// `Location`, `Range: 0-<last>` and `Docker-Upload-UUID` of an upload session.
pub fn upload_headers(r: &mut Resp, location: &str, uuid: &str, size: u64) {
    set_header(r, "location", location);
    // Distribution reports an empty upload as 0-0 and otherwise the last byte inclusive.
    set_header(r, "range", &format!("0-{}", size.saturating_sub(1)));
    set_header(r, "docker-upload-uuid", uuid);
}

/// Query string parameters (percent-decoded). Repeated keys keep the first value.
pub fn query_params(query: Option<&str>) -> Vec<(String, String)> {
    match query {
        Some(q) => form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        None => Vec::new(),
    }
}

pub fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub fn header_str(h: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// All media types in every `Accept` header line (skopeo sends several lines).
pub fn accepted_types(h: &HeaderMap) -> Vec<String> {
    h.get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// A single byte range resolved against a length: inclusive `(start, end)`.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum RangeSpec {
    /// No (usable) Range header: send everything.
    Full,
    Partial(u64, u64),
    Unsatisfiable,
}

/// Parse `Range: bytes=a-b | a- | -n` against `len`. Multi-range requests are served whole
/// (RFC 9110 allows ignoring Range); malformed headers are ignored likewise.
pub fn parse_range(value: Option<&str>, len: u64) -> RangeSpec {
    let Some(v) = value else {
        return RangeSpec::Full;
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last n bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeSpec::Full;
        };
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Partial(len.saturating_sub(n), len - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeSpec::Full;
    };
    let end = if b.is_empty() {
        len.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(len.saturating_sub(1)),
            Ok(_) => return RangeSpec::Unsatisfiable,
            Err(_) => return RangeSpec::Full,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Partial(start, end)
}

/// Seconds since the Unix epoch → RFC 3339 UTC (`2024-01-02T03:04:05Z`).
pub fn rfc3339(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Why [`collect_body`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("body stalled for more than {0:?}")]
    Stalled(std::time::Duration),
    #[error("reading body: {0}")]
    Read(#[from] hyper::Error),
}

/// Read a whole request body of at most `limit` bytes, giving up when the client pauses longer
/// than `idle` between two pieces (a stalled client must not hold a handler forever).
pub async fn collect_body(
    mut body: hyper::body::Incoming,
    limit: usize,
    idle: std::time::Duration,
) -> Result<Bytes, BodyError> {
    let mut out = bytes::BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(BodyError::Stalled(idle)),
            Ok(None) => return Ok(out.freeze()),
            Ok(Some(f)) => f?,
        };
        if let Ok(data) = frame.into_data() {
            if out.len().saturating_add(data.len()) > limit {
                return Err(BodyError::TooLarge(limit));
            }
            out.extend_from_slice(&data);
        }
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeSpec::Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), RangeSpec::Partial(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), RangeSpec::Partial(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), RangeSpec::Partial(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), RangeSpec::Partial(0, 9));
        assert_eq!(
            parse_range(Some("bytes=5-100"), 10),
            RangeSpec::Partial(5, 9)
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), RangeSpec::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeSpec::Full);
    }

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
