//! The testbed library's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while provisioning, driving nodes or writing a report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("prerequisites missing: {missing}. {hint}")]
    Prerequisites { missing: String, hint: String },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("node {node}: {what} did not happen within {timeout:?}{log}")]
    Timeout {
        node: String,
        what: String,
        timeout: Duration,
        /// Tail of the daemon log, when one helps.
        log: String,
    },

    #[error("node {node}: {process} exited early ({status}){log}")]
    DaemonExited {
        node: String,
        process: String,
        status: String,
        log: String,
    },

    #[error("{path}: still mounted after unmounting (refusing to delete under it)")]
    StillMounted { path: PathBuf },

    #[error("node {node}: CRI {call}: {status}")]
    Cri {
        node: String,
        call: &'static str,
        #[source]
        status: Box<tonic::Status>,
    },

    #[error("node {node}: cannot connect to {socket}: {source}")]
    Connect {
        node: String,
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },

    #[error("container {container} on {node}: {reason}")]
    Container {
        node: String,
        container: String,
        reason: String,
    },

    #[error("registry {url}: {reason}")]
    Registry { url: String, reason: String },

    #[error("http {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("{0}")]
    Invalid(String),

    #[error("json {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
