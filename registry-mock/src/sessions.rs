//! Blob-upload sessions: the open sessions with their running hash, capped globally and per
//! repository, expired when idle. A session holds no file descriptor between requests: its
//! bytes live in `uploads/<uuid>` (see [`Store::upload_path`]), opened per request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::StatusCode;
use sha2::{Digest as _, Sha256};

use crate::error::{ApiError, Code};
use crate::names::RepoName;
use crate::store::{random_id, Store};
use crate::Limits;

/// One upload session: what has been received so far.
pub struct Upload {
    pub repo: RepoName,
    /// Bytes in the session's file.
    pub size: u64,
    /// Hash of those bytes.
    pub hasher: Sha256,
    /// Last activity, for expiring abandoned sessions.
    pub touched: Instant,
}

pub type Session = Arc<tokio::sync::Mutex<Upload>>;

struct Entry {
    repo: RepoName,
    upload: Session,
}

pub struct Sessions {
    store: Store,
    map: Mutex<HashMap<String, Entry>>,
    max_total: usize,
    max_per_repo: usize,
    idle: Duration,
}

impl Sessions {
    pub fn new(store: Store, limits: &Limits) -> Sessions {
        Sessions {
            store,
            map: Mutex::new(HashMap::new()),
            max_total: limits.max_upload_sessions,
            max_per_repo: limits.max_upload_sessions_per_repo,
            idle: limits.upload_idle_timeout,
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where a session's bytes are.
    pub fn path(&self, uuid: &str) -> PathBuf {
        self.store.upload_path(uuid)
    }

    /// Register a new, empty session for `repo` (the caller creates its file), or refuse with
    /// 429 TOOMANYREQUESTS when a cap is reached.
    pub fn open(&self, repo: &RepoName) -> Result<String, ApiError> {
        let mut map = self.map();
        let too_many = |what: &str, max: usize| {
            ApiError::spec(
                StatusCode::TOO_MANY_REQUESTS,
                Code::TooManyRequests,
                format!(
                    "too many open upload sessions {what} (limit {max}); finish or cancel some"
                ),
            )
        };
        if map.len() >= self.max_total {
            return Err(too_many("in the registry", self.max_total));
        }
        if map.values().filter(|e| &e.repo == repo).count() >= self.max_per_repo {
            return Err(too_many("in this repository", self.max_per_repo));
        }
        let uuid = random_id();
        let upload = Upload {
            repo: repo.clone(),
            size: 0,
            hasher: Sha256::new(),
            touched: Instant::now(),
        };
        map.insert(
            uuid.clone(),
            Entry {
                repo: repo.clone(),
                upload: Arc::new(tokio::sync::Mutex::new(upload)),
            },
        );
        Ok(uuid)
    }

    pub fn get(&self, uuid: &str) -> Option<Session> {
        self.map().get(uuid).map(|e| e.upload.clone())
    }

    /// End a session and delete its file.
    pub fn remove(&self, uuid: &str) -> bool {
        let found = self.map().remove(uuid).is_some();
        if found {
            let _ = std::fs::remove_file(self.path(uuid));
        }
        found
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Drop sessions idle past the configured timeout with their files (busy ones are skipped).
    pub fn expire_idle(&self) {
        let stale: Vec<String> = {
            let mut map = self.map();
            let stale: Vec<String> = map
                .iter()
                .filter(|(_, e)| {
                    e.upload
                        .try_lock()
                        .is_ok_and(|u| u.touched.elapsed() > self.idle)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in &stale {
                map.remove(k);
            }
            stale
        };
        for k in stale {
            let _ = std::fs::remove_file(self.path(&k));
            tracing::info!(upload = %k, "expired idle upload session");
        }
    }

    /// Drop every session with its file (shutdown).
    pub fn clear(&self) {
        let all: Vec<String> = self.map().drain().map(|(k, _)| k).collect();
        for k in all {
            let _ = std::fs::remove_file(self.path(&k));
        }
    }
}
