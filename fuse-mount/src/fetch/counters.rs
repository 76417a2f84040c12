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
    demand_fetches: AtomicU64,
    profile_layers: AtomicU64,
    profile_bytes_prefetched: AtomicU64,
    profile_jobs_queued: AtomicU64,
    profile_jobs_done: AtomicU64,
    wire_bytes: AtomicU64,
    frames_fetched: AtomicU64,
}

/// A point-in-time copy, e.g. for `/metrics`; also the fuse manager's wire format (fields
/// missing from an older manager's answer read as 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
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
    /// Range requests a reader waited on (cache misses not covered by any prefetch).
    pub demand_fetches: u64,
    /// Layers of this mount that had a learned start profile to replay ("profile hits").
    pub profile_layers: u64,
    /// Data bytes fetched by start-profile replay.
    pub profile_bytes_prefetched: u64,
    /// Start-profile prefetch jobs queued / finished (equal: the replay is over).
    pub profile_jobs_queued: u64,
    pub profile_jobs_done: u64,
    /// Data bytes that crossed the wire for those fetches: compressed frames, or plain ranges
    /// (then equal to `bytes_fetched`). `bytes_fetched` is what they delivered uncompressed.
    pub wire_bytes: u64,
    /// Compressed (zstd) frames fetched; 0 when the data came as plain ranges.
    pub frames_fetched: u64,
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
            demand_fetches: self.demand_fetches.load(Ordering::Relaxed),
            profile_layers: self.profile_layers.load(Ordering::Relaxed),
            profile_bytes_prefetched: self.profile_bytes_prefetched.load(Ordering::Relaxed),
            profile_jobs_queued: self.profile_jobs_queued.load(Ordering::Relaxed),
            profile_jobs_done: self.profile_jobs_done.load(Ordering::Relaxed),
            wire_bytes: self.wire_bytes.load(Ordering::Relaxed),
            frames_fetched: self.frames_fetched.load(Ordering::Relaxed),
        }
    }
    pub(crate) fn demand_fetch(&self) {
        self.demand_fetches.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn profile_layer(&self, jobs: u64) {
        self.profile_layers.fetch_add(1, Ordering::Relaxed);
        self.profile_jobs_queued.fetch_add(jobs, Ordering::Relaxed);
    }
    pub(crate) fn profile_prefetched(&self, bytes: u64) {
        self.profile_bytes_prefetched
            .fetch_add(bytes, Ordering::Relaxed);
    }
    pub(crate) fn profile_job_done(&self) {
        self.profile_jobs_done.fetch_add(1, Ordering::Relaxed);
    }
    /// One range request that brought `chunks` chunks, `bytes` bytes.
    pub(crate) fn fetched(&self, chunks: u64, bytes: u64) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        self.chunks_fetched.fetch_add(chunks, Ordering::Relaxed);
        self.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
    }
    /// One response body of `bytes` data bytes on the wire, carrying `frames` compressed frames.
    pub(crate) fn wire(&self, bytes: u64, frames: u64) {
        self.wire_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.frames_fetched.fetch_add(frames, Ordering::Relaxed);
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
