//! Registry client for expanded layers: the `/mount` JSON, index blobs, and file bytes by HTTP
//! Range into a node-wide, content-addressed chunk cache.
//!
//! Blocking API on purpose: FUSE worker threads call it. The HTTP work runs on a small tokio
//! runtime the [`Client`] owns, so callers need no runtime; async callers use the `async` variants
//! (`resolve`, `open_layer`), which run on that runtime too.

mod cache;
mod counters;
mod http;
mod layer;
mod profile;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

pub use cache::ChunkCache;
pub use counters::{Counters, CountersSnapshot};
pub use emulator::mount::{BlobRef, LayerInfo, MountInfo, MountStatus};
pub use layer::{LayerHandle, LocalSource};
pub use registry_client::Credentials;

use emulator::Digest;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] registry_client::Error),
    #[error("blob {expected}: digest mismatch (got {actual})")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("index of layer {layer}: {source}")]
    Index {
        layer: String,
        #[source]
        source: emulator::Error,
    },
    #[error("index of layer {layer} does not match /mount: {reason}")]
    IndexMismatch { layer: String, reason: String },
    #[error("range {offset}+{len} outside the data blob ({size} bytes)")]
    Range { offset: u64, len: u64, size: u64 },
    /// A compressed frame (or its table) the registry sent is not what the table declares.
    #[error("layer {layer}: compressed data: {source}")]
    Frames {
        layer: String,
        #[source]
        source: emulator::frames::FrameError,
    },
    #[error("chunk {digest}: fetch failed: {reason}")]
    ChunkFailed { digest: Digest, reason: String },
    #[error("chunk cache {path:?}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("local data source: {0}")]
    Local(#[source] std::io::Error),
    #[error("client runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("client task failed: {0}")]
    Join(String),
}

/// Tunables of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Upper bound for one read's fetch, retries included: past it the read fails (EIO).
    pub read_deadline: Duration,
    /// Timeout of one HTTP request (capped by what is left of `read_deadline`).
    pub request_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Attempts per range request (first try included).
    pub max_attempts: u32,
    /// First retry backoff; doubles per attempt.
    pub retry_backoff: Duration,
    /// Adjacent missing chunks are fetched with one Range request up to this many bytes.
    pub coalesce_max: u64,
    /// Background prefetch threads (low priority: they only take queued work). Also the number
    /// of start-profile range requests in flight at once: replay is latency-bound (a start's
    /// ranges are small and scattered), so it takes many concurrent requests to fill the link;
    /// the threads mostly wait on the network.
    pub prefetch_workers: usize,
    /// Learned start profiles: replay a layer's stored profile when it is mounted, and record
    /// and upload one when it has none.
    pub start_profile: bool,
    /// How long after a layer's first read its start profile keeps recording.
    pub profile_window: Duration,
    /// Largest range request a profile replay makes: small enough that a reader waiting for a
    /// chunk in such a flight waits ~10 ms at 1 Gbit/s, large enough to amortise a round trip.
    pub profile_request_max: u64,
    /// Runtime worker threads for HTTP.
    pub http_threads: usize,
    /// Size cap of the chunk cache's pack files (least recently used packs are evicted);
    /// `None`: unbounded.
    pub cache_max_bytes: Option<u64>,
    /// Fetch layer data as the registry's zstd frames when its `/mount` answer offers them
    /// (else plain ranges of the expanded data, as with a registry that does not).
    pub compressed_wire: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            read_deadline: Duration::from_secs(10),
            request_timeout: Duration::from_secs(4),
            connect_timeout: Duration::from_secs(2),
            max_attempts: 5,
            retry_backoff: Duration::from_millis(100),
            coalesce_max: 8 << 20,
            prefetch_workers: 16,
            start_profile: true,
            profile_window: Duration::from_secs(10),
            profile_request_max: 1 << 20,
            http_threads: 2,
            cache_max_bytes: None,
            compressed_wire: true,
        }
    }
}

/// A prefetch job: fetch chunks `first..=last` of a layer into the cache.
pub(crate) struct PrefetchJob {
    layer: LayerHandle,
    first: usize,
    last: usize,
    counters: Arc<Counters>,
    purpose: Purpose,
}

/// Why chunks are being made present: decides what is counted, and that only reads record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A reader is waiting.
    Read,
    /// Background prefetch (open, whole-layer).
    Prefetch,
    /// Replay of a learned start profile.
    Profile,
}

/// One in-flight chunk fetch others can wait for (single-flight).
#[derive(Default)]
pub(crate) struct Flight {
    done: Mutex<Option<std::result::Result<(), String>>>,
    cv: std::sync::Condvar,
}

/// Registry client + chunk cache. Cheap to clone; share one per node.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The registry: tokens, retries, size caps, same-origin URLs (see `registry_client`).
    pub(crate) registry: registry_client::RegistryClient,
    /// Owned runtime; `Option` so Drop can shut it down without blocking (safe inside async code).
    pub(crate) rt: Option<tokio::runtime::Runtime>,
    pub(crate) cache: ChunkCache,
    /// Chunk hex digest → in-flight fetch.
    pub(crate) flights: Mutex<HashMap<String, Arc<Flight>>>,
    pub(crate) opts: ClientOptions,
    prefetch_tx: Mutex<Option<mpsc::Sender<PrefetchJob>>>,
    /// Start-profile uploads still running (awaited, with a deadline, at shutdown).
    uploads: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the prefetch threads once they finish their current job.
        if let Ok(mut tx) = self.prefetch_tx.lock() {
            tx.take();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("registry", &self.inner.registry.base().as_str())
            .field("cache", &self.inner.cache.root())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `registry_url` (e.g. `http://127.0.0.1:5000`) with its chunk cache in
    /// `cache_dir` (created if missing; shared by every mount and image of the node).
    pub fn new(
        registry_url: &str,
        creds: Option<Credentials>,
        cache_dir: impl Into<PathBuf>,
        opts: ClientOptions,
    ) -> Result<Client> {
        let registry = registry_client::RegistryClient::new(
            registry_url,
            creds,
            registry_client::Options {
                request_timeout: opts.request_timeout,
                connect_timeout: opts.connect_timeout,
                max_attempts: opts.max_attempts,
                retry_backoff: opts.retry_backoff,
                extra_root: crate::config::extra_root(),
                ..Default::default()
            },
        )?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.http_threads.max(1))
            .thread_name("teleport-http")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let cache = ChunkCache::open(cache_dir.into(), opts.cache_max_bytes)?;
        let (tx, rx) = mpsc::channel::<PrefetchJob>();
        let client = Client {
            inner: Arc::new(Inner {
                registry,
                rt: Some(rt),
                cache,
                flights: Mutex::new(HashMap::new()),
                opts: opts.clone(),
                prefetch_tx: Mutex::new(Some(tx)),
                uploads: Mutex::new(Vec::new()),
            }),
        };
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..opts.prefetch_workers {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("teleport-prefetch-{i}"))
                .spawn(move || prefetch_worker(&rx))
                .map_err(Error::Runtime)?;
        }
        Ok(client)
    }

    /// New registry credentials for every later token request (tokens got with the old ones
    /// are dropped); mounts keep being served.
    pub fn set_credentials(&self, creds: Option<Credentials>) {
        self.inner.registry.set_credentials(creds);
    }

    /// The node-wide chunk cache.
    pub fn cache(&self) -> &ChunkCache {
        &self.inner.cache
    }

    /// Ask the registry whether `manifest_digest` of `repo` is expanded (`GET /mount/v1/...`).
    pub async fn resolve(&self, repo: &str, manifest_digest: &Digest) -> Result<MountStatus> {
        let this = self.clone();
        let repo = repo.to_string();
        let digest = manifest_digest.clone();
        self.spawn(async move { this.resolve_async(&repo, &digest).await })
            .await
    }

    /// Blocking [`Client::resolve`]; must not be called from inside an async runtime.
    pub fn resolve_blocking(&self, repo: &str, manifest_digest: &Digest) -> Result<MountStatus> {
        self.block_on(self.resolve_async(repo, manifest_digest))
    }

    /// Fetch (or load from the cache), verify and decode a layer's index; the handle reads the
    /// layer's data lazily from the registry.
    pub async fn open_layer(&self, repo: &str, layer: &LayerInfo) -> Result<LayerHandle> {
        let this = self.clone();
        let repo = repo.to_string();
        let layer = layer.clone();
        self.spawn(async move { this.open_layer_async(&repo, &layer).await })
            .await
    }

    /// Blocking [`Client::open_layer`]; must not be called from inside an async runtime.
    pub fn open_layer_blocking(&self, repo: &str, layer: &LayerInfo) -> Result<LayerHandle> {
        self.block_on(self.open_layer_async(repo, layer))
    }

    /// A layer whose data blob is local (a file or bytes), read through the same chunk cache and
    /// digest checks as a remote one. Used for tests, tools and pre-seeded nodes.
    pub fn local_layer(&self, index: emulator::Index, data: Arc<dyn LocalSource>) -> LayerHandle {
        LayerHandle::new(self.clone(), index, layer::Source::Local(data))
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        match &self.inner.rt {
            Some(rt) => rt.block_on(fut),
            // invariant: `rt` is only taken in Drop, after which no `&self` exists.
            None => unreachable!("client runtime used after drop"),
        }
    }

    async fn spawn<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let handle = match &self.inner.rt {
            Some(rt) => rt.spawn(fut),
            None => return Err(Error::Join("client runtime gone".into())),
        };
        handle.await.map_err(|e| Error::Join(e.to_string()))?
    }

    /// Run a start-profile upload in the background, tracked for [`Client::flush_uploads`].
    pub(crate) fn spawn_upload(
        &self,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let Some(rt) = &self.inner.rt else {
            return;
        };
        let h = rt.spawn(task);
        if let Ok(mut u) = self.inner.uploads.lock() {
            u.retain(|h| !h.is_finished());
            u.push(h);
        }
    }

    /// Wait (at most `timeout`) for start-profile uploads still running, e.g. those that
    /// unmounting just started, so that a stopping process does not cut them off.
    pub async fn flush_uploads(&self, timeout: Duration) {
        let pending: Vec<_> = match self.inner.uploads.lock() {
            Ok(mut u) => u.drain(..).collect(),
            Err(_) => return,
        };
        if pending.is_empty() {
            return;
        }
        let n = pending.len();
        if tokio::time::timeout(timeout, futures::future::join_all(pending))
            .await
            .is_err()
        {
            tracing::warn!(
                uploads = n,
                "start profile uploads still running at shutdown"
            );
        }
    }

    pub(crate) fn queue_prefetch(
        &self,
        layer: &LayerHandle,
        first: usize,
        last: usize,
        counters: &Arc<Counters>,
        purpose: Purpose,
    ) {
        let job = PrefetchJob {
            layer: layer.clone(),
            first,
            last,
            counters: Arc::clone(counters),
            purpose,
        };
        if let Ok(tx) = self.inner.prefetch_tx.lock() {
            if let Some(tx) = tx.as_ref() {
                // A closed queue only means the client is shutting down.
                let _ = tx.send(job);
            }
        }
    }
}

fn prefetch_worker(rx: &Mutex<mpsc::Receiver<PrefetchJob>>) {
    lower_thread_priority();
    loop {
        let job = match rx.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let res = job
            .layer
            .prefetch_now(job.first, job.last, &job.counters, job.purpose);
        if let Err(e) = res {
            tracing::debug!(error = %e, "prefetch failed");
        }
        if job.purpose == Purpose::Profile {
            job.counters.profile_job_done();
        }
    }
}

/// Prefetch must not compete with reads a container is waiting on.
fn lower_thread_priority() {
    // SAFETY: setpriority on the calling thread (who = 0 with PRIO_PROCESS applies to the
    // calling thread on Linux); no pointers involved.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}
