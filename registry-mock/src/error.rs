//! The library's typed errors: [`Error`] for internal failures (storage, startup), [`ApiError`] for
//! what a client sees. An `ApiError` is turned into a response exactly once, in
//! [`ApiError::into_response`]; internal causes are logged there and sent as a plain 500 (a full disk: 507 `UNKNOWN`).

use std::path::PathBuf;

use http::{HeaderValue, StatusCode};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Internal failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("i/o on {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("i/o: {0}")]
    BareIo(#[from] std::io::Error),
    #[error("json in {path:?}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid bandwidth {0:?} (examples: 1Gbit, 100Mbit/s, 200MiB/s, 50MB/s)")]
    Bandwidth(String),
    #[error("invalid user spec {0:?} (want NAME:PASSWORD)")]
    UserSpec(String),
    #[error("expansion of {layer}: {source}")]
    Expand {
        layer: String,
        #[source]
        source: emulator::Error,
    },
    #[error("invalid expansion chunk size {0} (a power of two, 16 KiB ..= 16 MiB)")]
    ChunkSize(u32),
    #[error("invalid wire frame size {0} (a power of two, 4 KiB ..= 4 MiB)")]
    FrameSize(u32),
    /// The seekable zstd encoding of an expanded data blob could not be produced.
    #[error("compressed encoding of {data:?}: {reason}")]
    Frames { data: PathBuf, reason: String },
    #[error("background task failed: {0}")]
    Task(String),
    /// A stored manifest that fails the checks `manifest::parse` made when it was pushed.
    #[error("stored manifest: {0}")]
    StoredManifest(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// The registry's disk is full (or over quota): the client may retry elsewhere or later.
    fn is_storage_full(&self) -> bool {
        let io = match self {
            Error::Io { source, .. } | Error::BareIo(source) => source,
            _ => return false,
        };
        matches!(
            io.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
    }
}

/// Distribution-spec error codes (plus the few this registry adds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    RangeInvalid,
    TagInvalid,
    TooManyRequests,
    /// Ours: `/mount` on an image whose expansion failed.
    ExpansionFailed,
    /// Ours: `/mount` on an image still being expanded.
    ExpansionPending,
    /// Ours: the image or repository is not enabled / queued for expansion.
    ExpansionUnknown,
    /// Ours: a start profile body that does not decode or does not fit its layer.
    ProfileInvalid,
    /// Ours: no start profile stored for this layer yet.
    ProfileUnknown,
    /// docker/distribution's catch-all for a server-side failure (here: storage full).
    Unknown,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::TagInvalid => "TAG_INVALID",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::ExpansionFailed => "EXPANSION_FAILED",
            Code::ExpansionPending => "EXPANSION_PENDING",
            Code::ExpansionUnknown => "EXPANSION_UNKNOWN",
            Code::ProfileInvalid => "PROFILE_INVALID",
            Code::ProfileUnknown => "PROFILE_UNKNOWN",
            Code::Unknown => "UNKNOWN",
        }
    }
}

/// What a client sees when a request fails.
#[derive(Debug)]
pub enum ApiError {
    /// A distribution-spec error with its status.
    Spec {
        status: StatusCode,
        code: Code,
        message: String,
        detail: serde_json::Value,
    },
    /// 401 with a `WWW-Authenticate` challenge.
    Unauthorized {
        challenge: String,
        message: String,
    },
    /// 416 with `Content-Range: bytes */SIZE` (blob range) or upload `Range` headers.
    RangeNotSatisfiable {
        size: u64,
        message: String,
    },
    /// 416 on an upload chunk that does not continue the upload.
    UploadRange {
        location: String,
        uuid: String,
        size: u64,
        message: String,
    },
    /// 429 TOOMANYREQUESTS with `Retry-After` (seconds).
    TooManyRequests {
        retry_after: u64,
        message: String,
    },
    /// Route not found / method not allowed.
    NotFound,
    MethodNotAllowed,
    /// An internal failure: logged, sent as a plain 500.
    Internal(Error),
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Internal(e)
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::Internal(Error::BareIo(e))
    }
}

impl ApiError {
    pub fn spec(status: StatusCode, code: Code, message: impl Into<String>) -> ApiError {
        ApiError::Spec {
            status,
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
        }
    }
    pub fn with_detail(self, detail: serde_json::Value) -> ApiError {
        match self {
            ApiError::Spec {
                status,
                code,
                message,
                ..
            } => ApiError::Spec {
                status,
                code,
                message,
                detail,
            },
            other => other,
        }
    }
    pub fn blob_unknown(digest: &str) -> ApiError {
        ApiError::spec(
            StatusCode::NOT_FOUND,
            Code::BlobUnknown,
            "blob unknown to registry",
        )
        .with_detail(serde_json::json!({ "digest": digest }))
    }
    pub fn manifest_unknown(reference: &str) -> ApiError {
        ApiError::spec(
            StatusCode::NOT_FOUND,
            Code::ManifestUnknown,
            "manifest unknown",
        )
        .with_detail(serde_json::json!({ "reference": reference }))
    }
    pub fn name_unknown(name: &str) -> ApiError {
        ApiError::spec(
            StatusCode::NOT_FOUND,
            Code::NameUnknown,
            "repository name not known to registry",
        )
        .with_detail(serde_json::json!({ "name": name }))
    }
    pub fn name_invalid(name: &str) -> ApiError {
        ApiError::spec(
            StatusCode::BAD_REQUEST,
            Code::NameInvalid,
            "invalid repository name",
        )
        .with_detail(serde_json::json!({ "name": name }))
    }
    pub fn digest_invalid(message: impl Into<String>) -> ApiError {
        ApiError::spec(StatusCode::BAD_REQUEST, Code::DigestInvalid, message)
    }
    pub fn manifest_invalid(message: impl Into<String>) -> ApiError {
        ApiError::spec(StatusCode::BAD_REQUEST, Code::ManifestInvalid, message)
    }
    pub fn upload_unknown() -> ApiError {
        ApiError::spec(
            StatusCode::NOT_FOUND,
            Code::BlobUploadUnknown,
            "blob upload unknown to registry",
        )
    }
    pub fn upload_invalid(message: impl Into<String>) -> ApiError {
        ApiError::spec(StatusCode::BAD_REQUEST, Code::BlobUploadInvalid, message)
    }
    pub fn denied(message: impl Into<String>) -> ApiError {
        ApiError::spec(StatusCode::FORBIDDEN, Code::Denied, message)
    }
    pub fn unsupported(message: impl Into<String>) -> ApiError {
        ApiError::spec(StatusCode::BAD_REQUEST, Code::Unsupported, message)
    }

    /// The one place an error becomes a response.
    pub fn into_response(self) -> crate::http_util::Resp {
        use crate::http_util::plain;
        match self {
            ApiError::Spec {
                status,
                code,
                message,
                detail,
            } => json_error(status, code, &message, detail),
            ApiError::Unauthorized { challenge, message } => {
                let mut r = json_error(
                    StatusCode::UNAUTHORIZED,
                    Code::Unauthorized,
                    &message,
                    serde_json::Value::Null,
                );
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
                }
                r
            }
            ApiError::RangeNotSatisfiable { size, message } => {
                let mut r = json_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    Code::RangeInvalid,
                    &message,
                    serde_json::Value::Null,
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    r.headers_mut().insert(http::header::CONTENT_RANGE, v);
                }
                r
            }
            ApiError::UploadRange {
                location,
                uuid,
                size,
                message,
            } => {
                let mut r = json_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    Code::BlobUploadInvalid,
                    &message,
                    serde_json::Value::Null,
                );
                crate::http_util::upload_headers(&mut r, &location, &uuid, size);
                r
            }
            ApiError::TooManyRequests {
                retry_after,
                message,
            } => {
                let mut r = json_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    Code::TooManyRequests,
                    &message,
                    serde_json::Value::Null,
                );
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
                r
            }
            ApiError::NotFound => json_error(
                StatusCode::NOT_FOUND,
                Code::Unsupported,
                "no such route",
                serde_json::Value::Null,
            ),
            ApiError::MethodNotAllowed => json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unsupported,
                "method not allowed",
                serde_json::Value::Null,
            ),
            ApiError::Internal(e) if e.is_storage_full() => {
                tracing::error!(error = %e, "storage full");
                json_error(
                    StatusCode::INSUFFICIENT_STORAGE,
                    Code::Unknown,
                    "registry storage is full",
                    serde_json::Value::Null,
                )
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
            }
        }
    }
}

/// The distribution spec's error body: `{"errors":[{code,message,detail}]}`.
fn json_error(
    status: StatusCode,
    code: Code,
    message: &str,
    detail: serde_json::Value,
) -> crate::http_util::Resp {
    crate::http_util::json(
        status,
        &serde_json::json!({ "errors": [ { "code": code.as_str(), "message": message, "detail": detail } ] }),
    )
}
