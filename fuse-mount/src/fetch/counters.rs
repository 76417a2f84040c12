//! Per-mount fetch counters, cheap to bump from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters (atomics). One per mount; share with `Arc`.
#[derive(Debug, Default)]
pub struct Counters {
    bytes_fetched: AtomicU64,
    chunks_fetched: AtomicU64,
    fetches: AtomicU64,
    cache_hits: AtomicU64,
    fetch_errors: AtomicU64,
    bytes_read: AtomicU64,
}

/// A point-in-time copy, e.g. for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Data bytes fetched from the registry (chunk payloads).
    pub bytes_fetched: u64,
    /// Chunks fetched from the registry.
    pub chunks_fetched: u64,
    /// Range requests that brought those chunks (one per run of adjacent missing chunks).
    pub fetches: u64,
    /// Chunk lookups served by the node's chunk cache.
    pub cache_hits: u64,
    /// Fetches that failed after retries (each surfaced as EIO to a reader, or a failed prefetch).
    pub fetch_errors: u64,
    /// File bytes returned to readers.
    pub bytes_read: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            bytes_fetched: self.bytes_fetched.load(Ordering::Relaxed),
            chunks_fetched: self.chunks_fetched.load(Ordering::Relaxed),
            fetches: self.fetches.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            fetch_errors: self.fetch_errors.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
        }
    }
    /// One range request that brought `chunks` chunks, `bytes` bytes.
    pub(crate) fn fetched(&self, chunks: u64, bytes: u64) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        self.chunks_fetched.fetch_add(chunks, Ordering::Relaxed);
        self.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
    }
    pub(crate) fn hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn error(&self) {
        self.fetch_errors.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn read(&self, bytes: u64) {
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }
}
