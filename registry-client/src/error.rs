//! The client's errors: each names the URL (or scope) it is about.

use emulator::Digest;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid registry url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("http client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: unexpected status {status}")]
    Status { url: String, status: u16 },
    #[error("{method} {url}: HTTP {status}: {body}")]
    Registry {
        method: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("token for {scope}: {reason}")]
    Auth { scope: String, reason: String },
    #[error("{url}: {source}")]
    Mount {
        url: String,
        #[source]
        source: emulator::mount::MountError,
    },
    #[error("{url}: content is {actual}, not {expected}")]
    DigestMismatch {
        url: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{url}: short body ({got} of {want} bytes)")]
    ShortBody { url: String, got: u64, want: u64 },
    #[error("{url}: gave up after {attempts} attempts: {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("{url}: invalid start profile: {reason}")]
    Profile { url: String, reason: String },
    #[error("{url}: body larger than {max} bytes")]
    TooLarge { url: String, max: u64 },
    #[error("{url}: Content-Range {got:?} does not answer bytes={want}")]
    BadContentRange {
        url: String,
        got: Option<String>,
        want: String,
    },
    #[error("{url}: {reason}")]
    Body { url: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
