//! Expansion on push: a background worker pool turns each layer blob into an expanded layer
//! (index + data, via [`emulator::expand`]) once per layer digest, shared by every repository and
//! image. Each layer's state (pending / expanding / expanded / failed) is persisted in
//! `expanded/sha256/<hex>/state.json`; pending and expanding layers are re-queued at start.
//! Per-image records (what was requested, which layers) live in the store.
//!
//! Crash loops: every start of a layer's expansion is counted in its state (`attempts`) before
//! it runs; a layer found still "expanding" at start (the process died: killed, out of memory)
//! that has used its attempts is marked failed instead of re-queued. A clean shutdown gives back
//! the attempt it interrupted.
//!
//! Layer substitution: a layer is expanded once per blob digest, but whether it is the layer an
//! image *claims* is a property of the image: when every layer of an image is expanded, each
//! layer's computed diff_id (sha256 of its uncompressed tar) is compared with the image config's
//! `rootfs.diff_ids[i]`; on a mismatch the image is failed (and `/mount` says why), while another
//! image honestly using the same blob is not affected.

use std::collections::HashMap;
use std::fs;
use std::io::{BufReader, BufWriter, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use emulator::Digest;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::http_util::now_secs;
use crate::manifest::{self, Kind};
use crate::metrics::Metrics;
use crate::names::RepoName;
use crate::store::{ChildRef, ImageRecord, LayerRef, Store};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Expanding,
    Expanded,
    Failed,
}

/// What an expansion produced (persisted, and served by `/mount`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpandedInfo {
    pub index_digest: Digest,
    pub index_size: u64,
    pub data_digest: Digest,
    pub data_size: u64,
    pub chunk_size: u32,
    pub entries: u64,
    pub diff_id: Digest,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub seconds: f64,
    /// The data blob's seekable zstd encoding (absent: produced with it off, or by an older
    /// registry).
    #[serde(default)]
    pub frames: Option<FramesInfo>,
}

/// The compressed encoding of a data blob: `expanded/sha256/<hex>/{frames,data.zst}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FramesInfo {
    pub frame_size: u32,
    pub table_digest: Digest,
    pub table_size: u64,
    pub data_digest: Digest,
    pub data_size: u64,
}

/// `state.json` of one layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerStatus {
    pub state: State,
    pub media_type: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub result: Option<ExpandedInfo>,
    /// Expansion runs started (persisted before each run, so a crash counts).
    #[serde(default)]
    pub attempts: u32,
}

/// The aggregated state of an image for `/mount`.
#[derive(Debug)]
pub enum ImageStatus {
    /// Never requested for expansion in this repository.
    NotQueued,
    /// Some layer is pending or expanding.
    InProgress(Vec<(Digest, State)>),
    /// A layer failed.
    Failed { layer: Digest, reason: String },
    /// Every layer expanded, in manifest order (children in index order for an index).
    Ready(Vec<(LayerRef, ExpandedInfo)>),
}

#[derive(Clone)]
pub struct Expander {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    metrics: Arc<Metrics>,
    states: Mutex<HashMap<Digest, LayerStatus>>,
    tx: mpsc::UnboundedSender<Digest>,
    cancelled: Arc<AtomicBool>,
    tasks: Mutex<Option<tokio::task::JoinHandle<()>>>,
    chunk_size: u32,
    /// Frame size of the data blob's seekable zstd encoding; `None`: not produced.
    frame_size: Option<u32>,
    /// Compare computed diff_ids with the image config's (off only to play an older or lying
    /// registry, so a node's own check can be tested).
    check_diff_ids: AtomicBool,
}

/// Default number of expansion runs a layer gets before a crash during the last one fails it.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Largest image config read to check diff_ids.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Smallest chunk size the registry expands with (what `emulator::expand` accepts).
pub const MIN_EXPANSION_CHUNK_SIZE: u32 = emulator::MIN_EXPAND_CHUNK_SIZE;

/// Default chunk size of expansions. A node fetches whole chunks (each is verified by its digest)
/// and small files share chunks, so a start reading a few % of an image's small files fetched
/// 9× its working set at 1 MiB chunks, 1.9× at 64 KiB and 1.4× at 16 KiB (measured with the
/// testbed's azure-vote-front fixture at scale 0.1). A file spanning chunks still costs one request (the node coalesces adjacent
/// chunks); the index grows by 32 bytes per chunk (0.2% of the data at 16 KiB).
pub const DEFAULT_EXPANSION_CHUNK_SIZE: u32 = 16 << 10;

/// Default frame size of the compressed wire encoding (data bytes per zstd frame): the chunk
/// size, so a miss fetches and decodes its own chunks only. Measured (`emulator` example
/// `wire_frames`; README, "Compressed bytes on the wire"): a start-like 6% of the files costs
/// 1.07–1.22× their own zstd size on the wire at 16 KiB frames, 1.3–2.3× at 64 KiB and
/// 2.5–5.9× at 256 KiB, while 16 KiB frames lose only 3–6% of ratio against 64 KiB ones.
pub const DEFAULT_WIRE_FRAME_SIZE: u32 = 16 << 10;

/// Whether `emulator::expand` accepts `cs` as a chunk size.
pub fn valid_chunk_size(cs: u32) -> bool {
    cs.is_power_of_two()
        && (MIN_EXPANSION_CHUNK_SIZE..=emulator::format::v1::MAX_CHUNK_SIZE).contains(&cs)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads fail once shutdown is requested, so an in-flight expansion stops promptly.
struct CancelReader<R> {
    inner: R,
    cancelled: Arc<AtomicBool>,
}

impl<R: Read> Read for CancelReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("registry shutting down"));
        }
        self.inner.read(buf)
    }
}

impl Expander {
    /// Whether `/mount` refuses an image whose config claims other diff_ids than its layers
    /// have (on by default; see [`crate::Config::check_diff_ids`]).
    pub fn set_check_diff_ids(&self, on: bool) {
        self.inner.check_diff_ids.store(on, Ordering::Relaxed);
    }

    /// Load persisted layer states, start the dispatcher and re-queue unfinished layers.
    /// `chunk_size` is the expanded format's chunk size (checked here, so a bad value fails the
    /// start rather than every expansion).
    /// `frame_size`: also produce the data blob's seekable zstd encoding with frames of this
    /// many data bytes (`None`: do not).
    pub fn start(
        store: Store,
        metrics: Arc<Metrics>,
        workers: usize,
        chunk_size: u32,
        frame_size: Option<u32>,
        max_attempts: u32,
    ) -> Result<Expander> {
        if !valid_chunk_size(chunk_size) {
            return Err(Error::ChunkSize(chunk_size));
        }
        if let Some(fs) = frame_size.filter(|&fs| !emulator::frames::valid_frame_size(fs)) {
            return Err(Error::FrameSize(fs));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut states = HashMap::new();
        let mut requeue = Vec::new();
        for d in store.expanded_layers()? {
            let p = store.expanded_dir(&d).join("state.json");
            let Ok(b) = fs::read(&p) else { continue };
            match serde_json::from_slice::<LayerStatus>(&b) {
                Ok(mut s) => {
                    if s.state == State::Expanding && s.attempts >= max_attempts.max(1) {
                        // It was running when the process died, for the last time allowed.
                        s.state = State::Failed;
                        s.reason = Some(format!(
                            "expansion did not finish in {} attempts (the registry stopped while \
                             expanding it: killed or out of memory)",
                            s.attempts
                        ));
                        tracing::warn!(layer = %d, attempts = s.attempts, "layer failed: crash loop");
                        if let Err(e) = write_state(&store, &d, &s) {
                            tracing::error!(layer = %d, error = %e, "persisting layer state");
                        }
                    } else if matches!(s.state, State::Pending | State::Expanding) {
                        s.state = State::Pending;
                        requeue.push(d.clone());
                    }
                    states.insert(d, s);
                }
                Err(e) => tracing::warn!(path = ?p, error = %e, "ignoring unreadable layer state"),
            }
        }
        let inner = Arc::new(Inner {
            store,
            metrics,
            states: Mutex::new(states),
            tx,
            cancelled: Arc::new(AtomicBool::new(false)),
            tasks: Mutex::new(None),
            chunk_size,
            frame_size,
            check_diff_ids: AtomicBool::new(true),
        });
        let handle = tokio::spawn(dispatch(inner.clone(), rx, workers.max(1)));
        *lock(&inner.tasks) = Some(handle);
        let ex = Expander { inner };
        for d in requeue {
            tracing::info!(layer = %d, "re-queueing unfinished expansion");
            let _ = ex.inner.tx.send(d);
        }
        Ok(ex)
    }

    /// Stop taking work, cancel running expansions and wait for the workers.
    pub async fn shutdown(&self) {
        self.inner.cancelled.store(true, Ordering::Relaxed);
        let h = lock(&self.inner.tasks).take();
        if let Some(h) = h {
            h.abort();
            let _ = h.await;
        }
        // The runs interrupted here did not crash: give their attempt back.
        let st = lock(&self.inner.states);
        for (d, s) in st.iter().filter(|(_, s)| s.state == State::Expanding) {
            let s = LayerStatus {
                state: State::Pending,
                attempts: s.attempts.saturating_sub(1),
                ..s.clone()
            };
            if let Err(e) = write_state(&self.inner.store, d, &s) {
                tracing::error!(layer = %d, error = %e, "persisting layer state");
            }
        }
    }

    /// Whether the compressed wire encoding is produced (and so advertised by `/mount`).
    pub fn wire_compression(&self) -> bool {
        self.inner.frame_size.is_some()
    }

    pub fn layer_status(&self, d: &Digest) -> Option<LayerStatus> {
        lock(&self.inner.states).get(d).cloned()
    }

    /// Queue a layer unless it is already queued, running or done. `retry_failed` re-queues a
    /// failed layer (explicit `_expand`).
    pub fn enqueue(&self, layer: &LayerRef, retry_failed: bool) -> Result<()> {
        let status = {
            let mut st = lock(&self.inner.states);
            match st.get(&layer.digest) {
                Some(s) if s.state != State::Failed || !retry_failed => return Ok(()),
                _ => {}
            }
            let s = LayerStatus {
                state: State::Pending,
                media_type: layer.media_type.clone(),
                reason: None,
                result: None,
                attempts: 0,
            };
            st.insert(layer.digest.clone(), s.clone());
            s
        };
        write_state(&self.inner.store, &layer.digest, &status)?;
        self.inner.metrics.layer_state("queued");
        let _ = self.inner.tx.send(layer.digest.clone());
        Ok(())
    }

    /// Record `digest` (a manifest of `repo`) as requested for expansion and queue its layers;
    /// an index records and requests its child manifests too.
    pub fn request_image(
        &self,
        repo: &RepoName,
        digest: &Digest,
        retry_failed: bool,
    ) -> Result<()> {
        let store = &self.inner.store;
        let Some((mt, bytes)) = store.read_manifest(repo, digest)? else {
            return Ok(());
        };
        let Ok(m) = manifest::parse(&bytes, Some(&mt)) else {
            tracing::warn!(%repo, %digest, "stored manifest no longer parses; not expanding");
            return Ok(());
        };
        let mut record = ImageRecord {
            requested_time: now_secs(),
            media_type: mt,
            layers: Vec::new(),
            children: Vec::new(),
        };
        match &m.kind {
            Kind::Image(image) => {
                for l in image.layers() {
                    let media_type = l.media_type().to_string();
                    let foreign = l.urls().as_ref().is_some_and(|u| !u.is_empty());
                    if !is_expandable(&media_type, foreign) {
                        continue;
                    }
                    let lr = LayerRef {
                        digest: manifest::digest(l).map_err(Error::StoredManifest)?,
                        media_type,
                        size: l.size(),
                    };
                    self.enqueue(&lr, retry_failed)?;
                    record.layers.push(lr);
                }
            }
            Kind::Index(index) => {
                for c in index.manifests() {
                    let child = manifest::digest(c).map_err(Error::StoredManifest)?;
                    if store.manifest_media_type(repo, &child)?.is_some() {
                        self.request_image(repo, &child, retry_failed)?;
                    }
                    record.children.push(ChildRef {
                        digest: child,
                        media_type: c.media_type().to_string(),
                        platform: c
                            .platform()
                            .as_ref()
                            .and_then(|p| serde_json::to_value(p).ok())
                            .unwrap_or_default(),
                    });
                }
            }
        }
        store.write_image_record(repo, digest, &record)
    }

    /// The state of an image in a repository.
    pub fn image_status(&self, repo: &RepoName, digest: &Digest) -> Result<ImageStatus> {
        let mut layers = Vec::new();
        if !self.collect_layers(repo, digest, &mut layers, 0)? {
            return Ok(ImageStatus::NotQueued);
        }
        let st = lock(&self.inner.states);
        let mut ready = Vec::new();
        let mut progress = Vec::new();
        for l in layers {
            match st.get(&l.digest) {
                Some(LayerStatus {
                    state: State::Failed,
                    reason,
                    ..
                }) => {
                    return Ok(ImageStatus::Failed {
                        layer: l.digest,
                        reason: reason.clone().unwrap_or_default(),
                    });
                }
                Some(LayerStatus {
                    state: State::Expanded,
                    result: Some(info),
                    ..
                }) => ready.push((l, info.clone())),
                Some(s) => progress.push((l.digest, s.state)),
                // Requested but the state vanished (deleted directory): treat as pending.
                None => progress.push((l.digest, State::Pending)),
            }
        }
        drop(st);
        if !progress.is_empty() {
            return Ok(ImageStatus::InProgress(progress));
        }
        let computed: HashMap<&Digest, &Digest> =
            ready.iter().map(|(l, i)| (&l.digest, &i.diff_id)).collect();
        let check = self.inner.check_diff_ids.load(Ordering::Relaxed);
        if let Some((layer, reason)) = check
            .then(|| self.diff_id_mismatch(repo, digest, &computed, 0))
            .transpose()?
            .flatten()
        {
            tracing::warn!(%repo, image = %digest, %layer, %reason, "image refused for teleport");
            return Ok(ImageStatus::Failed { layer, reason });
        }
        Ok(ImageStatus::Ready(ready))
    }

    /// The first layer of `digest` (children's for an index) whose computed diff_id differs from
    /// what the image config claims, with the reason; also when the config cannot say.
    fn diff_id_mismatch(
        &self,
        repo: &RepoName,
        digest: &Digest,
        computed: &HashMap<&Digest, &Digest>,
        depth: u32,
    ) -> Result<Option<(Digest, String)>> {
        let store = &self.inner.store;
        let Some(rec) = store.read_image_record(repo, digest)? else {
            return Ok(None);
        };
        if depth < 2 {
            for c in &rec.children {
                if let Some(m) = self.diff_id_mismatch(repo, &c.digest, computed, depth + 1)? {
                    return Ok(Some(m));
                }
            }
        }
        if rec.layers.is_empty() {
            return Ok(None);
        }
        let first = rec.layers[0].digest.clone();
        let fail = |layer: &Digest, why: String| Ok(Some((layer.clone(), why)));
        let Some((mt, bytes)) = store.read_manifest(repo, digest)? else {
            return fail(&first, format!("manifest {digest} is gone"));
        };
        let Ok(m) = manifest::parse(&bytes, Some(&mt)) else {
            return fail(&first, "manifest no longer parses".into());
        };
        let Kind::Image(image) = m.kind else {
            return Ok(None);
        };
        let (config, layers) = (image.config(), image.layers());
        let config_digest = manifest::digest(config).map_err(Error::StoredManifest)?;
        let path = store.blob_path(&config_digest);
        let claimed = match fs::File::open(&path) {
            Ok(f) => {
                let mut b = Vec::new();
                f.take(MAX_CONFIG_BYTES + 1)
                    .read_to_end(&mut b)
                    .map_err(Error::io(&path))?;
                if b.len() as u64 > MAX_CONFIG_BYTES {
                    return fail(
                        &first,
                        format!("image config is over {MAX_CONFIG_BYTES} bytes"),
                    );
                }
                match emulator::oci::from_json::<emulator::oci::ImageConfiguration>(&b)
                    .and_then(|c| emulator::oci::diff_ids(&c))
                {
                    Ok(diff_ids) => diff_ids,
                    Err(e) => {
                        return fail(
                            &first,
                            format!(
                                "image config does not parse (its rootfs.diff_ids are needed): {e}"
                            ),
                        )
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return fail(&first, format!("image config {config_digest} is missing"));
            }
            Err(e) => return Err(Error::io(&path)(e)),
        };
        if claimed.len() != layers.len() {
            return fail(
                &first,
                format!(
                    "image config lists {} diff_ids for {} layers",
                    claimed.len(),
                    layers.len()
                ),
            );
        }
        for (i, (l, want)) in layers.iter().zip(&claimed).enumerate() {
            let l = manifest::digest(l).map_err(Error::StoredManifest)?;
            let Some(got) = computed.get(&l) else {
                continue; // Not a filesystem layer: not expanded, nothing to compare.
            };
            if *got != want {
                return fail(
                    &l,
                    format!(
                        "diff_id mismatch: image config claims {want} for layer {i} but its \
                         content is {got}"
                    ),
                );
            }
        }
        Ok(None)
    }

    /// Layers of an image (children's for an index); false when the image was never requested.
    fn collect_layers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        out: &mut Vec<LayerRef>,
        depth: u32,
    ) -> Result<bool> {
        if depth > 2 {
            return Ok(true);
        }
        let Some(rec) = self.inner.store.read_image_record(repo, digest)? else {
            return Ok(false);
        };
        out.extend(rec.layers);
        for c in rec.children {
            // A child that is not in the repository (not pushed) has nothing to expand.
            let _ = self.collect_layers(repo, &c.digest, out, depth + 1)?;
        }
        Ok(true)
    }
}

/// Filesystem layers are expanded; artifact blobs (signatures, SBOMs, the OCI empty
/// descriptor) and foreign / non-distributable layers (never pushed here) are skipped.
pub fn is_expandable(media_type: &str, foreign: bool) -> bool {
    let fs_layer = media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.");
    fs_layer
        && !foreign
        && !media_type.contains("foreign")
        && !media_type.contains("nondistributable")
}

fn write_state(store: &Store, d: &Digest, s: &LayerStatus) -> Result<()> {
    let p = store.expanded_dir(d).join("state.json");
    let b = serde_json::to_vec_pretty(s).map_err(|source| Error::Json {
        path: p.clone(),
        source,
    })?;
    store.atomic_write(&p, &b)
}

async fn dispatch(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Digest>, workers: usize) {
    let sem = Arc::new(Semaphore::new(workers));
    let mut running = JoinSet::new();
    // Aborting this task drops the JoinSet, which aborts the (async parts of) running jobs;
    // their blocking halves see `cancelled` and stop at the next read.
    while let Some(d) = rx.recv().await {
        while running.try_join_next().is_some() {}
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let inner = inner.clone();
        running.spawn(async move {
            let _permit = permit;
            run_one(&inner, d).await;
        });
    }
}

async fn run_one(inner: &Arc<Inner>, d: Digest) {
    let (media_type, attempts) = {
        let mut st = lock(&inner.states);
        let Some(s) = st.get_mut(&d) else { return };
        if s.state != State::Pending {
            return; // Duplicate queue entry.
        }
        s.state = State::Expanding;
        s.attempts = s.attempts.saturating_add(1);
        (s.media_type.clone(), s.attempts)
    };
    let expanding = LayerStatus {
        state: State::Expanding,
        media_type: media_type.clone(),
        reason: None,
        result: None,
        attempts,
    };
    if let Err(e) = write_state(&inner.store, &d, &expanding) {
        tracing::error!(layer = %d, error = %e, "persisting layer state");
    }
    tracing::info!(layer = %d, "expanding layer");
    let (chunk_size, frame_size) = (inner.chunk_size, inner.frame_size);
    let (store, cancelled, d2, mt2) = (
        inner.store.clone(),
        inner.cancelled.clone(),
        d.clone(),
        media_type.clone(),
    );
    let res = tokio::task::spawn_blocking(move || {
        expand_layer(&store, &d2, &mt2, chunk_size, frame_size, &cancelled)
    })
    .await;
    if inner.cancelled.load(Ordering::Relaxed) {
        return; // Shutting down: leave the persisted "expanding" state for the next start.
    }
    let status = match res {
        Ok(Ok(info)) => {
            inner.metrics.expansion_done(info.seconds);
            inner.metrics.layer_state("expanded");
            tracing::info!(layer = %d, seconds = info.seconds, entries = info.entries, "layer expanded");
            LayerStatus {
                state: State::Expanded,
                media_type,
                reason: None,
                result: Some(info),
                attempts,
            }
        }
        Ok(Err(e)) => {
            inner.metrics.layer_state("failed");
            tracing::warn!(layer = %d, error = %e, "layer expansion failed");
            LayerStatus {
                state: State::Failed,
                media_type,
                reason: Some(failure_reason(&e)),
                result: None,
                attempts,
            }
        }
        Err(join) => {
            inner.metrics.layer_state("failed");
            tracing::error!(layer = %d, error = %join, "expansion task panicked");
            LayerStatus {
                state: State::Failed,
                media_type,
                reason: Some("expansion task panicked".into()),
                result: None,
                attempts,
            }
        }
    };
    if let Err(e) = write_state(&inner.store, &d, &status) {
        tracing::error!(layer = %d, error = %e, "persisting layer state");
    }
    lock(&inner.states).insert(d, status);
}

fn failure_reason(e: &Error) -> String {
    match e {
        Error::Expand { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// Expand one layer blob into `expanded/sha256/<hex>/{index,data}`, and with a `frame_size`
/// the data's seekable zstd encoding into `{frames,data.zst}` (blocking).
fn expand_layer(
    store: &Store,
    d: &Digest,
    media_type: &str,
    chunk_size: u32,
    frame_size: Option<u32>,
    cancelled: &Arc<AtomicBool>,
) -> Result<ExpandedInfo> {
    let t0 = Instant::now();
    let blob = store.blob_path(d);
    let f = fs::File::open(&blob).map_err(Error::io(&blob))?;
    let reader = CancelReader {
        inner: BufReader::with_capacity(1 << 20, f),
        cancelled: cancelled.clone(),
    };
    let tmp = store.tmp_path();
    let out = fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let mt = (!media_type.is_empty()).then_some(media_type);
    let res = emulator::expand(
        reader,
        mt,
        Some(d),
        &mut w,
        &emulator::ExpandOptions {
            chunk_size,
            ..Default::default()
        },
    );
    let ex = match res {
        Ok(ex) => ex,
        Err(source) => {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Expand {
                layer: d.to_string(),
                source,
            });
        }
    };
    // The expander may seek back over de-duplicated content: cut the file to the data size.
    let finish = |tmp: &Path| -> Result<()> {
        let f = w.into_inner().map_err(|e| Error::io(tmp)(e.into_error()))?;
        f.set_len(ex.index.data_size)
            .and_then(|()| f.sync_all())
            .map_err(Error::io(tmp))
    };
    if let Err(e) = finish(&tmp) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if cancelled.load(Ordering::Relaxed) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Task("cancelled".into()));
    }
    let dir = store.expanded_dir(d);
    fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    store.atomic_write(&dir.join("index"), &ex.index_bytes)?;
    let data = dir.join("data");
    fs::rename(&tmp, &data).map_err(Error::io(&data))?;
    crate::store::sync_dir(&dir)?;
    let data_size = fs::metadata(&data).map_err(Error::io(&data))?.len();
    let frames = match frame_size {
        Some(fs) => Some(encode_frames(
            store,
            &dir,
            &data,
            fs,
            &ex.index.data_digest,
            cancelled,
        )?),
        None => None,
    };
    Ok(ExpandedInfo {
        index_digest: Digest::sha256_of(&ex.index_bytes),
        index_size: ex.index_bytes.len() as u64,
        data_digest: ex.index.data_digest.clone(),
        data_size,
        chunk_size: ex.index.chunk_size,
        entries: ex.index.entries.len() as u64,
        diff_id: ex.index.diff_id.clone(),
        compressed_size: ex.compressed_size,
        uncompressed_size: ex.uncompressed_size,
        seconds: t0.elapsed().as_secs_f64(),
        frames,
    })
}

/// Write the seekable zstd encoding of `data` (the expanded data blob in `dir`) and its frame
/// table beside it; the table's data digest must be the index's.
fn encode_frames(
    store: &Store,
    dir: &Path,
    data: &Path,
    frame_size: u32,
    data_digest: &Digest,
    cancelled: &Arc<AtomicBool>,
) -> Result<FramesInfo> {
    let src = fs::File::open(data).map_err(Error::io(data))?;
    let reader = CancelReader {
        inner: BufReader::with_capacity(1 << 20, src),
        cancelled: cancelled.clone(),
    };
    let tmp = store.tmp_path();
    let out = fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let encoded = emulator::frames::encode_seekable(
        reader,
        &mut w,
        frame_size,
        emulator::frames::DEFAULT_LEVEL,
    );
    let table = match encoded {
        Ok(t) if t.data_digest == *data_digest => t,
        Ok(t) => {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Frames {
                data: data.to_path_buf(),
                reason: format!(
                    "read data {} but the index says {data_digest}",
                    t.data_digest
                ),
            });
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Frames {
                data: data.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    let synced = w
        .into_inner()
        .map_err(|e| Error::io(&tmp)(e.into_error()))
        .and_then(|f| f.sync_all().map_err(Error::io(&tmp)));
    if let Err(e) = synced {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let zdata = dir.join("data.zst");
    fs::rename(&tmp, &zdata).map_err(Error::io(&zdata))?;
    let table_bytes = table.encode();
    store.atomic_write(&dir.join("frames"), &table_bytes)?;
    crate::store::sync_dir(dir)?;
    Ok(FramesInfo {
        frame_size,
        table_digest: Digest::sha256_of(&table_bytes),
        table_size: table_bytes.len() as u64,
        data_digest: table.compressed_digest,
        data_size: table.compressed_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_the_expander_accepts() {
        assert!(valid_chunk_size(DEFAULT_EXPANSION_CHUNK_SIZE));
        assert!(valid_chunk_size(16 << 10));
        assert!(valid_chunk_size(1 << 20));
        assert!(valid_chunk_size(16 << 20));
        assert!(!valid_chunk_size(8 << 10));
        assert!(!valid_chunk_size(32 << 20));
        assert!(!valid_chunk_size(100_000));
        assert!(!valid_chunk_size(0));
    }

    #[tokio::test]
    async fn start_refuses_a_chunk_size_the_expander_would_reject() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = crate::Config::new(dir.path());
        cfg.expansion_chunk_size = 8 << 10;
        assert!(matches!(
            crate::start(cfg).await,
            Err(Error::ChunkSize(8192))
        ));
    }

    #[test]
    fn expandable_media_types() {
        assert!(is_expandable(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            false
        ));
        assert!(is_expandable(
            "application/vnd.oci.image.layer.v1.tar",
            false
        ));
        assert!(is_expandable(
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            false
        ));
        assert!(!is_expandable(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            true
        ));
        assert!(!is_expandable(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            false
        ));
        assert!(!is_expandable("application/vnd.oci.empty.v1+json", false));
        assert!(!is_expandable(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            true
        ));
    }
}
