//! What a fuse manager serves with, and the [`Fingerprint`] of it that a teleportd compares on
//! connect.

use std::path::PathBuf;

use sha2::Digest as _;

use super::proto::{Fingerprint, PROTOCOL_VERSION};
use crate::fetch::Credentials;

/// What a manager serves with.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// teleportd's root: the socket, pid and log files live here.
    pub root: PathBuf,
    pub registry: String,
    pub credentials: Option<Credentials>,
    pub cache_dir: PathBuf,
    /// Learned start profiles (replay and record); see [`crate::fetch::ClientOptions::start_profile`].
    pub start_profile: bool,
    /// See [`crate::fetch::ClientOptions::profile_window`].
    pub profile_window: std::time::Duration,
    /// See [`crate::fs::MountOptions::prefetch_layers`].
    pub prefetch_layers: bool,
    /// See [`crate::fetch::ClientOptions::cache_max_bytes`].
    pub cache_max_bytes: Option<u64>,
}

impl ManagerConfig {
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            registry: self.registry.clone(),
            cache_dir: self.cache_dir.clone(),
            user: self.credentials.as_ref().map(|c| c.username.clone()),
            password_sha256: self
                .credentials
                .as_ref()
                .map(|c| hex::encode(sha2::Sha256::digest(c.password.as_bytes()))),
            start_profile: self.start_profile,
            profile_window_ms: u64::try_from(self.profile_window.as_millis()).unwrap_or(u64::MAX),
            prefetch_layers: self.prefetch_layers,
            cache_max_bytes: self.cache_max_bytes,
        }
    }
}
