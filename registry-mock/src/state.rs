//! The shared application state handed to every request: a cheap `Arc` over the parts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::Sha256;

use crate::auth::Auth;
use crate::expansion::Expander;
use crate::link::{Limiter, LinkConfig};
use crate::metrics::Metrics;
use crate::names::RepoName;
use crate::store::Store;

/// An upload session. Its bytes go to `path` as they arrive, hashed on the way.
pub struct Upload {
    pub repo: RepoName,
    pub path: PathBuf,
    pub file: tokio::fs::File,
    pub size: u64,
    pub hasher: Sha256,
    /// Last activity, for expiring abandoned sessions.
    pub touched: std::time::Instant,
}

/// Upload sessions idle this long are dropped (with their partial file).
pub const UPLOAD_IDLE_EXPIRY: std::time::Duration = std::time::Duration::from_secs(3600);

pub struct AppState {
    pub store: Store,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    pub expander: Expander,
    pub uploads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Upload>>>>,
    pub limiter: Option<Arc<Limiter>>,
    pub link: LinkConfig,
    pub addr: SocketAddr,
    /// Serialises read-modify-write of repository attributes.
    pub attrs_lock: tokio::sync::Mutex<()>,
}

impl AppState {
    pub fn upload(&self, uuid: &str) -> Option<Arc<tokio::sync::Mutex<Upload>>> {
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uuid)
            .cloned()
    }
    pub fn remove_upload(&self, uuid: &str) -> Option<Arc<tokio::sync::Mutex<Upload>>> {
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uuid)
    }
    /// Drop sessions idle past [`UPLOAD_IDLE_EXPIRY`] (busy sessions are skipped).
    pub fn expire_uploads(&self) {
        let mut map = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        let stale: Vec<String> = map
            .iter()
            .filter(|(_, u)| {
                u.try_lock()
                    .is_ok_and(|u| u.touched.elapsed() > UPLOAD_IDLE_EXPIRY)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            map.remove(&k);
            let _ = std::fs::remove_file(self.store.upload_path(&k));
            tracing::info!(upload = %k, "expired idle upload session");
        }
    }

    pub fn insert_upload(&self, uuid: String, u: Upload) {
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uuid, Arc::new(tokio::sync::Mutex::new(u)));
    }
}
