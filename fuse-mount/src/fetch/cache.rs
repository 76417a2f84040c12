//! The node's on-disk chunk cache: content-addressed by sha256, so an identical chunk of any
//! layer of any image is stored (and fetched) once. Entries are only ever written whole, after
//! their digest was checked, via write-to-temp + rename: a reader never sees a partial chunk.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use emulator::Digest;

use super::{Error, Result};

/// Disk layout: `ROOT/chunks/<hex[0..2]>/<hex>`, `ROOT/index/<hex>`, `ROOT/tmp/`.
#[derive(Debug)]
pub struct ChunkCache {
    root: PathBuf,
    /// Digests known present: saves a stat per chunk on the hot read path.
    known: RwLock<HashSet<String>>,
    tmp_seq: AtomicU64,
}

impl ChunkCache {
    pub(crate) fn open(root: PathBuf) -> Result<ChunkCache> {
        for sub in ["chunks", "index", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|source| Error::Cache { path: p, source })?;
        }
        Ok(ChunkCache {
            root,
            known: RwLock::new(HashSet::new()),
            tmp_seq: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn chunk_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join("chunks").join(&hex[..2]).join(hex)
    }

    fn index_path(&self, d: &Digest) -> PathBuf {
        self.root.join("index").join(d.hex())
    }

    /// Whether the chunk is cached.
    pub fn contains(&self, d: &Digest) -> bool {
        if self
            .known
            .read()
            .map(|k| k.contains(d.hex()))
            .unwrap_or(false)
        {
            return true;
        }
        // Entries from an earlier run are found on disk once, then remembered.
        if self.chunk_path(d).is_file() {
            self.remember(d);
            return true;
        }
        false
    }

    fn remember(&self, d: &Digest) {
        if let Ok(mut k) = self.known.write() {
            k.insert(d.hex().to_string());
        }
    }

    /// Read `buf.len()` bytes at `offset` inside the cached chunk.
    pub(crate) fn read_chunk(&self, d: &Digest, offset: u64, buf: &mut [u8]) -> Result<()> {
        let path = self.chunk_path(d);
        let f = File::open(&path).map_err(|source| Error::Cache {
            path: path.clone(),
            source,
        })?;
        f.read_exact_at(buf, offset)
            .map_err(|source| Error::Cache { path, source })
    }

    /// Store a verified chunk.
    pub(crate) fn put_chunk(&self, d: &Digest, bytes: &[u8]) -> Result<()> {
        let path = self.chunk_path(d);
        self.put(&path, bytes)?;
        self.remember(d);
        Ok(())
    }

    pub(crate) fn get_index(&self, d: &Digest) -> Option<Vec<u8>> {
        let bytes = fs::read(self.index_path(d)).ok()?;
        // A damaged entry is ignored (and later overwritten), never trusted.
        (Digest::sha256_of(&bytes) == *d).then_some(bytes)
    }

    pub(crate) fn put_index(&self, d: &Digest, bytes: &[u8]) -> Result<()> {
        self.put(&self.index_path(d), bytes)
    }

    fn put(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| Error::Cache {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}-{seq}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            fs::rename(&tmp, path)
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            Error::Cache {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}
