//! Learned start profiles (the document is [`emulator::profile`]): the registry's limits and
//! storage. A profile is stored per repository and layer
//! (`repos/<name…>/_profiles/<layer-hex>.json`), so a pusher of one repository can never
//! poison what another repository's nodes replay; a pusher of the repository may replace or
//! delete it.

use std::path::PathBuf;

use emulator::Digest;

pub use emulator::profile::*;

use crate::error::{Error, Result};
use crate::names::RepoName;
use crate::store::Store;

/// Largest accepted request body.
pub const MAX_BODY: usize = 1 << 20;

fn path(store: &Store, repo: &RepoName, layer: &Digest) -> PathBuf {
    store
        .repo_dir(repo)
        .join("_profiles")
        .join(format!("{}.json", layer.hex()))
}

/// The stored profile of `layer` in `repo`, if any.
pub fn read(store: &Store, repo: &RepoName, layer: &Digest) -> Result<Option<Vec<u8>>> {
    let p = path(store, repo, layer);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(p)(e)),
    }
}

/// Store (or replace) `layer`'s profile in `repo`, atomically. Returns whether one was replaced.
pub fn write(store: &Store, repo: &RepoName, layer: &Digest, bytes: &[u8]) -> Result<bool> {
    let p = path(store, repo, layer);
    let existed = p.exists();
    store.atomic_write(&p, bytes)?;
    Ok(existed)
}

/// Delete `layer`'s profile in `repo`. Returns whether one existed.
pub fn delete(store: &Store, repo: &RepoName, layer: &Digest) -> Result<bool> {
    let p = path(store, repo, layer);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(p)(e)),
    }
}
