//! One expanded layer opened for reading: its index plus lazy, chunked, cached access to its data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use emulator::format::ChunkInfo;
use emulator::{Digest, Index};

use super::profile::{self, Recorded, Recorder, Remote};
use super::{Client, Counters, Error, Flight, Purpose, Result};

/// A streaming reader's read-ahead is refilled when the chunk this fraction into its window is
/// neither cached nor coming. 1/2 and 3/4 measured alike on `benches/fuse_cold.rs` (1 ms round
/// trips); 3/4 leaves a reader that caught up with one request the next ones still in flight.
const STREAM_REFILL: (usize, usize) = (3, 4);

/// A local data blob (file or bytes) standing in for the registry.
pub trait LocalSource: Send + Sync + 'static {
    /// Fill `buf` from `offset`; short only at end of data.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl<T: emulator::reader::RangeSource + Send + Sync + 'static> LocalSource for T {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        emulator::reader::RangeSource::read_at(self, offset, buf)
    }
}

pub(crate) enum Source {
    Remote {
        repo: String,
        url: String,
        /// The layer's (compressed) digest: the key of its start profile.
        layer: Digest,
        /// The data's compressed encoding, when offered and on: data is fetched as frames.
        frames: Option<Arc<Framed>>,
    },
    Local(Arc<dyn LocalSource>),
}

/// A layer's data as the registry's seekable zstd frames: where they are, and the validated
/// table mapping data offsets to them.
pub(crate) struct Framed {
    pub(crate) url: String,
    pub(crate) table: emulator::frames::FrameTable,
}

/// A readable layer. Cheap to clone.
#[derive(Clone)]
pub struct LayerHandle {
    inner: Arc<LayerInner>,
}

struct LayerInner {
    client: Client,
    index: Index,
    source: Source,
    /// Start-profile recording (remote layers with profiles on).
    recorder: Option<Recorder>,
    /// The profile lookup/replay runs once per handle, however many mounts share it.
    profile_started: std::sync::atomic::AtomicBool,
}

impl LayerInner {
    /// Close the recording and, if it is to be uploaded, PUT it in the background (once; errors
    /// are logged, never surfaced to a reader).
    fn finish_recording(&self) {
        if let Some(ranges) = self.recorder.as_ref().and_then(Recorder::close) {
            self.upload(ranges);
        }
    }

    fn upload(&self, ranges: Vec<(u64, u64)>) {
        let Source::Remote { repo, layer, .. } = &self.source else {
            return;
        };
        let (client, repo, layer) = (self.client.clone(), repo.clone(), layer.clone());
        let n = ranges.len();
        let task = async move {
            match client.put_profile(&repo, &layer, ranges).await {
                Ok(()) => tracing::info!(%repo, %layer, ranges = n, "start profile uploaded"),
                Err(e) => tracing::warn!(%repo, %layer, error = %e, "start profile upload failed"),
            }
        };
        self.client.spawn_upload(task);
    }
}

impl Drop for LayerInner {
    fn drop(&mut self) {
        // Unmounted (or the last reader gone) before the window closed: upload what we have.
        self.finish_recording();
    }
}

impl std::fmt::Debug for LayerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerHandle")
            .field("diff_id", &self.inner.index.diff_id)
            .field("data_size", &self.inner.index.data_size)
            .finish_non_exhaustive()
    }
}

/// Completes a flight exactly once, even on an early return or panic, so waiters never hang.
struct FlightGuard<'a> {
    client: &'a Client,
    key: String,
    flight: Arc<Flight>,
    done: bool,
}

impl FlightGuard<'_> {
    fn finish(&mut self, res: std::result::Result<(), String>) {
        if self.done {
            return;
        }
        self.done = true;
        if let Ok(mut f) = self.client.inner.flights.lock() {
            f.remove(&self.key);
        }
        if let Ok(mut d) = self.flight.done.lock() {
            *d = Some(res);
        }
        self.flight.cv.notify_all();
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.finish(Err("fetch abandoned".into()));
    }
}

impl LayerHandle {
    pub(crate) fn new(client: Client, index: Index, source: Source) -> LayerHandle {
        let opts = &client.inner.opts;
        let recorder = (opts.start_profile && matches!(source, Source::Remote { .. }))
            .then(|| Recorder::new(opts.profile_window));
        LayerHandle {
            inner: Arc::new(LayerInner {
                client,
                index,
                source,
                recorder,
                profile_started: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Start-profile work for a freshly mounted layer, in the background so the mount pays no
    /// round trip: ask the registry for the layer's profile; replay it on the prefetch queue if
    /// there is one (counted in `counters`), else let this mount's recording be uploaded.
    /// A no-op for local layers or with profiles off.
    pub fn start_profile(&self, counters: &Arc<Counters>) {
        if self.inner.recorder.is_none()
            || self
                .inner
                .profile_started
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let Source::Remote { repo, layer, .. } = &self.inner.source else {
            return;
        };
        let (this, counters) = (self.clone(), Arc::clone(counters));
        let (repo, layer) = (repo.clone(), layer.clone());
        let task = async move {
            let res = this.inner.client.get_profile(&repo, &layer).await;
            let Some(rec) = this.inner.recorder.as_ref() else {
                return;
            };
            match res {
                Ok(Some(ranges)) => {
                    rec.set_remote(Remote::Present);
                    this.replay(&ranges, &counters);
                }
                Ok(None) => rec.set_remote(Remote::Absent),
                Err(e) => {
                    tracing::warn!(%repo, %layer, error = %e, "start profile lookup failed");
                }
            }
        };
        if let Some(rt) = &self.inner.client.inner.rt {
            rt.spawn(task);
        }
    }

    /// Queue a stored profile's ranges as prefetch jobs (see [`profile::plan`]).
    fn replay(&self, ranges: &[(u64, u64)], counters: &Arc<Counters>) {
        // Ranges the index does not cover come from a profile for other content: skip them.
        let spans: Vec<(usize, usize)> = ranges
            .iter()
            .filter_map(|&(o, l)| self.chunk_span(o, l).ok())
            .collect();
        let chunks = &self.inner.index.chunks;
        let opts = &self.inner.client.inner.opts;
        let max = opts.profile_request_max.min(opts.coalesce_max).max(1);
        let gap = profile::JOIN_GAP_BYTES / u64::from(self.inner.index.chunk_size.max(1));
        let gap = usize::try_from(gap).unwrap_or(0);
        let jobs = profile::plan(&spans, |i| u64::from(chunks[i].len), max, gap);
        tracing::debug!(
            diff_id = %self.inner.index.diff_id,
            ranges = ranges.len(),
            jobs = jobs.len(),
            "replaying start profile"
        );
        // Counted before queueing so "done == queued" never holds early.
        counters.profile_layer(jobs.len() as u64);
        for (first, last) in jobs {
            self.inner
                .client
                .queue_prefetch(self, first, last, counters, Purpose::Profile);
        }
    }

    /// Record a reader's range in the start profile; starts the window timer on the first one.
    fn record(&self, offset: u64, len: u64) {
        let Some(rec) = &self.inner.recorder else {
            return;
        };
        match rec.record(offset, len) {
            Recorded::Nothing => {}
            // A read after the window closed it: the timer found nothing left to do.
            Recorded::Upload(ranges) => self.inner.upload(ranges),
            Recorded::Started => {
                let weak = Arc::downgrade(&self.inner);
                let window = rec.window();
                if let Some(rt) = &self.inner.client.inner.rt {
                    rt.spawn(async move {
                        tokio::time::sleep(window).await;
                        if let Some(inner) = weak.upgrade() {
                            inner.finish_recording();
                        }
                    });
                }
            }
        }
    }

    /// The decoded, validated index.
    pub fn index(&self) -> &Index {
        &self.inner.index
    }

    /// The client this layer reads through.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Indices of the chunks covering `offset..offset+len` of the data blob (`len > 0`).
    pub fn chunk_span(&self, offset: u64, len: u64) -> Result<(usize, usize)> {
        let idx = &self.inner.index;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= idx.data_size && len > 0)
            .ok_or(Error::Range {
                offset,
                len,
                size: idx.data_size,
            })?;
        let chunks = &idx.chunks;
        // Chunks are sorted by offset and cover the blob: binary search the containing ones.
        let first = chunks.partition_point(|c| c.offset + u64::from(c.len) <= offset);
        let last = chunks.partition_point(|c| c.offset < end);
        if first >= chunks.len() || last == 0 || last - 1 < first {
            return Err(Error::Range {
                offset,
                len,
                size: idx.data_size,
            });
        }
        Ok((first, last - 1))
    }

    /// Whether the chunk holding data byte `offset` is in the node's cache (no fetch).
    pub fn is_cached(&self, offset: u64) -> bool {
        self.chunk_span(offset, 1)
            .ok()
            .and_then(|(first, _)| self.inner.index.chunks.get(first))
            .is_some_and(|c| self.inner.client.inner.cache.contains(&c.digest))
    }

    /// Read data-blob bytes `offset..offset+buf.len()` (fetching missing chunks, verified, into
    /// the cache). Fails within the client's read deadline when the registry cannot serve.
    pub fn read_data(&self, offset: u64, buf: &mut [u8], counters: &Counters) -> Result<()> {
        self.read_data_with(offset, buf, 0, counters, None)
    }

    /// [`LayerHandle::read_data`] that also makes the data up to `fetch_end` present, missing
    /// chunks in the same requests as the read's own: the rest of a file a reader is likely to
    /// read next costs no extra round trip. `fetch_end` at or below the read's end changes
    /// nothing; past the data size it is clamped.
    ///
    /// A streaming reader — its own chunks already cached or being fetched — does not wait for
    /// its read-ahead: once the data fetched or coming ahead of it falls below three quarters
    /// of the window, the rest of the window is fetched in the background, so a sequential
    /// read keeps several requests in flight while it consumes the current one instead of
    /// paying a round trip per read.
    pub fn read_data_ahead(
        &self,
        offset: u64,
        buf: &mut [u8],
        fetch_end: u64,
        counters: &Arc<Counters>,
    ) -> Result<()> {
        self.read_data_with(offset, buf, fetch_end, counters, Some(counters))
    }

    /// [`LayerHandle::read_data_ahead`]; `background`: the counters a background read-ahead
    /// fetch counts into (`None`: read-ahead always rides along with the read's own fetch).
    fn read_data_with(
        &self,
        offset: u64,
        buf: &mut [u8],
        fetch_end: u64,
        counters: &Counters,
        background: Option<&Arc<Counters>>,
    ) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(buf.len() as u64).ok_or(Error::Range {
            offset,
            len: buf.len() as u64,
            size: self.inner.index.data_size,
        })?;
        let (first, last) = self.chunk_span(offset, buf.len() as u64)?;
        let ahead_end = fetch_end.min(self.inner.index.data_size);
        let fetch_last = if ahead_end > end {
            self.chunk_span(offset, ahead_end - offset)?.1
        } else {
            last
        };
        match background {
            Some(bg) if fetch_last > last && (first..=last).all(|i| self.present_or_coming(i)) => {
                // Streaming: refill the window once less than `STREAM_REFILL` of it is covered,
                // so a request is a quarter window (large enough to amortise a round trip) and
                // a reader that caught up with one still has the next ones in flight.
                let (num, den) = STREAM_REFILL;
                let mark = last + ((fetch_last - last) * num).div_ceil(den);
                if !self.present_or_coming(mark.min(fetch_last)) {
                    self.fetch_behind(last + 1, fetch_last, bg);
                }
                self.ensure_chunks(first, last, last, counters, Purpose::Read)?;
            }
            _ => self.ensure_chunks(first, fetch_last, last, counters, Purpose::Read)?,
        }
        let cache = &self.inner.client.inner.cache;
        for (i, c) in self.inner.index.chunks[first..=last].iter().enumerate() {
            let c_end = c.offset + u64::from(c.len);
            let a = offset.max(c.offset);
            let b = end.min(c_end);
            if a >= b {
                continue;
            }
            let dst = &mut buf[(a - offset) as usize..(b - offset) as usize];
            if cache.read_chunk(&c.digest, a - c.offset, dst).is_err() {
                // Evicted since, or found corrupt on disk (and dropped): fetch it again.
                let i = first + i;
                self.ensure_chunks(i, i, i, counters, Purpose::Read)?;
                cache.read_chunk(&c.digest, a - c.offset, dst)?;
            }
        }
        counters.read(buf.len() as u64);
        self.record(offset, buf.len() as u64);
        Ok(())
    }

    /// Whether chunk `i` is cached or some thread is fetching it now.
    fn present_or_coming(&self, i: usize) -> bool {
        let Some(c) = self.inner.index.chunks.get(i) else {
            return true;
        };
        let client = &self.inner.client.inner;
        client.cache.contains(&c.digest)
            || client
                .flights
                .lock()
                .is_ok_and(|f| f.contains_key(c.digest.hex()))
    }

    /// Fetch the missing chunks of `first..=last` on the client runtime's blocking pool, not
    /// waited for: a reader's read-ahead. Not the prefetch queue: its low-priority threads
    /// may be busy with a profile replay, and a reader will want these bytes shortly.
    fn fetch_behind(&self, first: usize, last: usize, counters: &Arc<Counters>) {
        let Some(rt) = &self.inner.client.inner.rt else {
            return;
        };
        let (this, counters) = (self.clone(), Arc::clone(counters));
        rt.spawn_blocking(move || {
            if let Err(e) = this.ensure_chunks(first, last, last, &counters, Purpose::Prefetch) {
                tracing::debug!(error = %e, "read-ahead fetch failed");
            }
        });
    }

    /// Queue a low-priority background fetch of the chunks covering `offset..offset+len`.
    pub fn prefetch(&self, offset: u64, len: u64, counters: &Arc<Counters>) {
        if let Ok((first, last)) = self.chunk_span(offset, len) {
            self.inner
                .client
                .queue_prefetch(self, first, last, counters, Purpose::Prefetch);
        }
    }

    /// Queue a low-priority background fetch of the whole layer.
    pub fn prefetch_all(&self, counters: &Arc<Counters>) {
        let n = self.inner.index.chunks.len();
        if n > 0 {
            self.inner
                .client
                .queue_prefetch(self, 0, n - 1, counters, Purpose::Prefetch);
        }
    }

    /// Background fetch of chunks `first..=last`, in batches of at most `coalesce_max` bytes so
    /// that a reader waiting on one of them never waits for a whole layer.
    pub(crate) fn prefetch_now(
        &self,
        first: usize,
        last: usize,
        counters: &Counters,
        purpose: Purpose,
    ) -> Result<()> {
        let opts = &self.inner.client.inner.opts;
        // Profile replay keeps its requests short: a reader that needs a chunk of one waits
        // for the whole request (single-flight).
        let max = match purpose {
            Purpose::Profile => opts.profile_request_max.min(opts.coalesce_max),
            Purpose::Read | Purpose::Prefetch => opts.coalesce_max,
        };
        let per = (max / u64::from(self.inner.index.chunk_size.max(1))).max(1);
        let per = usize::try_from(per).unwrap_or(usize::MAX);
        let last = last.min(self.inner.index.chunks.len().saturating_sub(1));
        let mut i = first;
        while i <= last && i < self.inner.index.chunks.len() {
            let j = last.min(i.saturating_add(per - 1));
            self.ensure_chunks(i, j, j, counters, purpose)?;
            i = j + 1;
        }
        Ok(())
    }

    /// Make chunks `first..=last` present in the cache: cached ones count as hits; missing ones
    /// this call leads are fetched in coalesced runs; ones another thread is fetching are waited
    /// for (single-flight).
    /// `purpose`: a reader waits for these (cache hits are counted only then), or a background
    /// prefetch / profile replay (its bytes counted as such).
    /// Only chunks `first..=need_last` can fail the call: the ones after it are read-ahead,
    /// fetched along in the same requests but neither waited for nor required.
    pub(crate) fn ensure_chunks(
        &self,
        first: usize,
        last: usize,
        need_last: usize,
        counters: &Counters,
        purpose: Purpose,
    ) -> Result<()> {
        let reading = purpose == Purpose::Read;
        let hit = || {
            if reading {
                counters.hit();
            }
        };
        let client = &self.inner.client;
        let cache = &client.inner.cache;
        let chunks = &self.inner.index.chunks;
        let mut lead: Vec<(usize, FlightGuard<'_>)> = Vec::new();
        let mut wait: Vec<(Digest, Arc<Flight>)> = Vec::new();
        // With compressed frames, the frames covering these chunks are fetched and decoded
        // whole anyway: this call leads every missing chunk in them, so their bytes are kept
        // rather than decoded and dropped (and a reader of a neighbour waits for this flight
        // instead of fetching the same frame again).
        let (scan_first, scan_last) = self.frame_chunks(first, last);
        let wanted = |i: usize| (first..=last).contains(&i);
        for (i, c) in chunks
            .iter()
            .enumerate()
            .take(scan_last + 1)
            .skip(scan_first)
        {
            if cache.contains(&c.digest) {
                if wanted(i) {
                    hit();
                }
                continue;
            }
            let key = c.digest.hex().to_string();
            let mut flights = client
                .inner
                .flights
                .lock()
                .map_err(|_| Error::ChunkFailed {
                    digest: c.digest.clone(),
                    reason: "flight table poisoned".into(),
                })?;
            if let Some(f) = flights.get(&key) {
                // Read-ahead another thread is fetching is its business, not this read's.
                if i >= first && i <= need_last {
                    wait.push((c.digest.clone(), Arc::clone(f)));
                }
            } else if lead.iter().any(|(_, g)| g.key == key) {
                // The same content twice in one range: fetched once by this call.
            } else if cache.contains(&c.digest) {
                // Finished between the first check and taking the lock.
                if wanted(i) {
                    hit();
                }
            } else {
                let flight = Arc::new(Flight::default());
                flights.insert(key.clone(), Arc::clone(&flight));
                lead.push((
                    i,
                    FlightGuard {
                        client,
                        key,
                        flight,
                        done: false,
                    },
                ));
            }
        }
        // One budget for the whole call: a reader gets its answer (or EIO) within it.
        let deadline = Instant::now() + client.inner.opts.read_deadline;
        // Runs: consecutive chunk indices, up to `coalesce_max` bytes each.
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        let mut start = 0;
        while start < lead.len() {
            let mut end = start + 1;
            let mut bytes = u64::from(chunks[lead[start].0].len);
            while end < lead.len()
                && lead[end].0 == lead[end - 1].0 + 1
                && bytes + u64::from(chunks[lead[end].0].len) <= client.inner.opts.coalesce_max
            {
                bytes += u64::from(chunks[lead[end].0].len);
                end += 1;
            }
            runs.push(start..end);
            start = end;
        }
        let run_idxs: Vec<Vec<usize>> = runs
            .iter()
            .map(|r| lead[r.clone()].iter().map(|(i, _)| *i).collect())
            .collect();
        // Runs go out concurrently: a range split by cached chunks still costs one round trip.
        let results = self.fetch_runs(&run_idxs, deadline, counters);
        let mut first_err: Option<Error> = None;
        for ((r, idxs), res) in runs.into_iter().zip(&run_idxs).zip(results) {
            let run = &mut lead[r];
            match res {
                Ok(n) => {
                    counters.fetched(idxs.len() as u64, n);
                    match purpose {
                        Purpose::Read => counters.demand_fetch(),
                        Purpose::Profile => counters.profile_prefetched(n),
                        Purpose::Prefetch => {}
                    }
                    for (_, g) in run.iter_mut() {
                        g.finish(Ok(()));
                    }
                }
                Err(e) => {
                    counters.error();
                    let msg = e.to_string();
                    for (i, g) in run.iter_mut() {
                        // Chunks of the run that did arrive intact are stored: say so.
                        if cache.contains(&chunks[*i].digest) {
                            g.finish(Ok(()));
                        } else {
                            g.finish(Err(msg.clone()));
                        }
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        // A leader elsewhere is bounded by its own budget; ours caps the wait regardless.
        let wait_deadline = deadline.max(Instant::now() + Duration::from_millis(100));
        for (digest, f) in wait {
            wait_flight(&f, &digest, wait_deadline)?;
            hit();
        }
        match first_err {
            // A failed run fails the call only if a chunk it needs did not arrive (a run's
            // good chunks are stored even when one of its others failed).
            Some(e)
                if !chunks[first..=need_last.min(last)]
                    .iter()
                    .all(|c| cache.contains(&c.digest)) =>
            {
                Err(e)
            }
            _ => Ok(()),
        }
    }

    /// Chunk indices `first..=last` widened to the chunks of the compressed frames covering
    /// them (unchanged without frames).
    fn frame_chunks(&self, first: usize, last: usize) -> (usize, usize) {
        let Source::Remote {
            frames: Some(z), ..
        } = &self.inner.source
        else {
            return (first, last);
        };
        let chunks = &self.inner.index.chunks;
        let (Some(a), Some(b)) = (chunks.get(first), chunks.get(last)) else {
            return (first, last);
        };
        let t = &z.table;
        t.covering(a.offset, b.offset + u64::from(b.len))
            .and_then(|(f, l)| t.data_span(f, l))
            .and_then(|(s, e)| self.chunk_span(s, e - s).ok())
            .map_or((first, last), |(a, b)| (a.min(first), b.max(last)))
    }

    /// Fetch each run of chunks (consecutive indices) with one request, all runs at once;
    /// verify and store each chunk. Returns, per run, the bytes fetched.
    fn fetch_runs(
        &self,
        runs: &[Vec<usize>],
        deadline: Instant,
        counters: &Counters,
    ) -> Vec<Result<u64>> {
        if let Source::Remote {
            repo,
            frames: Some(z),
            layer,
            ..
        } = &self.inner.source
        {
            return self.fetch_runs_framed(repo, layer, z, runs, deadline, counters);
        }
        let chunks = &self.inner.index.chunks;
        let span = |idxs: &[usize]| -> Option<(u64, u64)> {
            let (&a, &b) = (idxs.first()?, idxs.last()?);
            Some((
                chunks[a].offset,
                chunks[b].offset + u64::from(chunks[b].len),
            ))
        };
        let t0 = Instant::now();
        let bodies: Vec<Result<Vec<u8>>> = match &self.inner.source {
            Source::Remote { repo, url, .. } => {
                let client = &self.inner.client;
                let futs = runs.iter().map(|idxs| async move {
                    match span(idxs) {
                        Some((start, end)) => {
                            let started = Instant::now();
                            let r = client
                                .get_range(repo, url, (start, end - 1), deadline)
                                .await;
                            crate::timing::manager().range_fetch(started);
                            r
                        }
                        None => Ok(Vec::new()),
                    }
                });
                client.block_on(futures::future::join_all(futs))
            }
            Source::Local(src) => runs
                .iter()
                .map(|idxs| match span(idxs) {
                    Some((start, end)) => read_local(src.as_ref(), start, end),
                    None => Ok(Vec::new()),
                })
                .collect(),
        };
        tracing::trace!(
            runs = runs.len(),
            chunks = runs.iter().map(Vec::len).sum::<usize>(),
            took = ?t0.elapsed(),
            "fetched"
        );
        runs.iter()
            .zip(bodies)
            .map(|(idxs, body)| {
                let Some((start, end)) = span(idxs) else {
                    return Ok(0);
                };
                let body = body?;
                counters.wire(body.len() as u64, 0);
                self.store_run(idxs, start, &body)?;
                Ok(end - start)
            })
            .collect()
    }

    /// [`LayerHandle::fetch_runs`] through the registry's compressed frames: runs whose frames
    /// touch or overlap share one ranged GET of those frames (never a frame twice, never one
    /// no run needs); each frame is decoded into exactly its declared length and every chunk
    /// is verified against the index before it is stored, as on the plain path.
    ///
    /// The cache keeps chunks uncompressed: a read then costs one pread and no decode, the
    /// chunk cache stays content-addressed by the index's digests (shared with plain-range
    /// layers and checked on first read after a restart), and the wire is where bytes cost.
    fn fetch_runs_framed(
        &self,
        repo: &str,
        layer: &Digest,
        z: &Framed,
        runs: &[Vec<usize>],
        deadline: Instant,
        counters: &Counters,
    ) -> Vec<Result<u64>> {
        let chunks = &self.inner.index.chunks;
        let t = &z.table;
        let max = self.inner.client.inner.opts.coalesce_max;
        // Per run: its data span and the frames covering it.
        let spans: Vec<Option<(u64, u64, usize, usize)>> = runs
            .iter()
            .map(|idxs| {
                let (&a, &b) = (idxs.first()?, idxs.last()?);
                let (s, e) = (
                    chunks[a].offset,
                    chunks[b].offset + u64::from(chunks[b].len),
                );
                let (f, l) = t.covering(s, e)?;
                Some((s, e, f, l))
            })
            .collect();
        // Groups of runs (in data order) fetched by one request: frames first..=last.
        let mut groups: Vec<(usize, usize, Vec<usize>)> = Vec::new();
        for (r, sp) in spans.iter().enumerate() {
            let Some((_, _, f, l)) = *sp else { continue };
            if let Some(g) = groups.last_mut() {
                let joined = t
                    .data_span(g.0, l.max(g.1))
                    .map_or(u64::MAX, |(s, e)| e - s);
                if f <= g.1 + 1 && joined <= max {
                    g.1 = g.1.max(l);
                    g.2.push(r);
                    continue;
                }
            }
            groups.push((f, l, vec![r]));
        }
        let client = &self.inner.client;
        let futs = groups.iter().map(|&(f, l, _)| async move {
            let Some((cs, ce)) = t.compressed_span(f, l) else {
                return Ok(Vec::new());
            };
            let started = Instant::now();
            let r = client.get_range(repo, &z.url, (cs, ce - 1), deadline).await;
            crate::timing::manager().range_fetch(started);
            r
        });
        let bodies = client.block_on(futures::future::join_all(futs));
        let mut out: Vec<Option<Result<u64>>> = runs.iter().map(|_| None).collect();
        for ((f, l, members), body) in groups.into_iter().zip(bodies) {
            let decoded = body.and_then(|b| {
                counters.wire(b.len() as u64, (l - f + 1) as u64);
                decode_frames(t, f, l, &b).map_err(|source| Error::Frames {
                    layer: layer.to_string(),
                    source,
                })
            });
            match decoded {
                Ok((ds, data, bad)) => {
                    // Chunks of bad frames fail their digests (their bytes are zeros) and are
                    // not stored; the good frames' chunks are. Say why with the frame's error.
                    let bad = bad.map(|source| Error::Frames {
                        layer: layer.to_string(),
                        source,
                    });
                    if let Some(e) = &bad {
                        tracing::warn!(%layer, error = %e, "corrupt compressed frame");
                    }
                    let reason = bad.as_ref().map(ToString::to_string);
                    let mut bad = bad;
                    for r in members {
                        let res = self
                            .store_run(&runs[r], ds, &data)
                            .map(|()| spans[r].map_or(0, |(s, e, _, _)| e - s))
                            .map_err(|e| match (bad.take(), &reason) {
                                (Some(frame_err), _) => frame_err,
                                (None, Some(why)) => Error::ChunkFailed {
                                    digest: chunks[runs[r][0]].digest.clone(),
                                    reason: why.clone(),
                                },
                                (None, None) => e,
                            });
                        out[r] = Some(res);
                    }
                }
                Err(e) => {
                    tracing::warn!(%layer, frames = ?(f..=l), error = %e, "compressed fetch failed");
                    // The first run gets the typed error, the others say what it was.
                    let reason = e.to_string();
                    let mut e = Some(e);
                    for r in members {
                        out[r] = Some(Err(e.take().unwrap_or_else(|| Error::ChunkFailed {
                            digest: chunks[runs[r][0]].digest.clone(),
                            reason: reason.clone(),
                        })));
                    }
                }
            }
        }
        // A run no frame covers cannot happen with a table checked against the index at open;
        // should it, the run fails rather than passing as fetched.
        out.into_iter()
            .zip(runs)
            .map(|(res, idxs)| {
                res.unwrap_or_else(|| {
                    let c = idxs.first().and_then(|&i| chunks.get(i));
                    Err(Error::Range {
                        offset: c.map_or(0, |c| c.offset),
                        len: c.map_or(0, |c| u64::from(c.len)),
                        size: t.data_size,
                    })
                })
            })
            .collect()
    }

    /// Verify each chunk of a fetched run against the index and store it; a bad chunk is not
    /// stored (the first such error is returned) but does not keep the good ones out.
    fn store_run(&self, idxs: &[usize], start: u64, bytes: &[u8]) -> Result<()> {
        let chunks = &self.inner.index.chunks;
        let cache = &self.inner.client.inner.cache;
        let mut first_err = None;
        for &i in idxs {
            let c: &ChunkInfo = &chunks[i];
            let from = (c.offset - start) as usize;
            let res = match bytes.get(from..from + c.len as usize) {
                None => Err(Error::Range {
                    offset: c.offset,
                    len: u64::from(c.len),
                    size: start + bytes.len() as u64,
                }),
                Some(part) => {
                    let got = Digest::sha256_of(part);
                    if got == c.digest {
                        cache.put_chunk(&c.digest, part)
                    } else {
                        Err(Error::DigestMismatch {
                            expected: c.digest.clone(),
                            actual: got,
                        })
                    }
                }
            };
            if let Err(e) = res {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Decode frames `first..=last` from one response body, frame by frame: returns the data
/// offset they start at, their data (a frame that fails to decode left as zeros, so only its
/// own chunks fail their digests) and the first frame error. A body of the wrong length fails
/// the whole group.
fn decode_frames(
    t: &emulator::frames::FrameTable,
    first: usize,
    last: usize,
    body: &[u8],
) -> std::result::Result<
    (u64, Vec<u8>, Option<emulator::frames::FrameError>),
    emulator::frames::FrameError,
> {
    let range = |reason: String| emulator::frames::FrameError::Range {
        first,
        last,
        reason,
    };
    let ((cs, ce), (ds, de)) = t
        .compressed_span(first, last)
        .zip(t.data_span(first, last))
        .ok_or_else(|| range("no such frames".into()))?;
    if body.len() as u64 != ce - cs {
        return Err(range(format!(
            "{} compressed bytes, want {}",
            body.len(),
            ce - cs
        )));
    }
    let mut data = vec![0u8; usize::try_from(de - ds).map_err(|e| range(e.to_string()))?];
    let mut bad = None;
    for (i, f) in t.frames[first..=last].iter().enumerate() {
        let src = &body[(f.compressed_offset - cs) as usize..(f.compressed_end() - cs) as usize];
        match t.decompress(first + i, first + i, src) {
            Ok(out) => data[(f.offset - ds) as usize..][..out.len()].copy_from_slice(&out),
            Err(e) => {
                bad.get_or_insert(e);
            }
        }
    }
    Ok((ds, data, bad))
}

fn read_local(src: &dyn LocalSource, start: u64, end: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; (end - start) as usize];
    let mut done = 0;
    while done < buf.len() {
        let n = src
            .read_at(start + done as u64, &mut buf[done..])
            .map_err(Error::Local)?;
        if n == 0 {
            return Err(Error::Local(std::io::ErrorKind::UnexpectedEof.into()));
        }
        done += n;
    }
    Ok(buf)
}

fn wait_flight(f: &Flight, digest: &Digest, deadline: Instant) -> Result<()> {
    let failed = |reason: String| Error::ChunkFailed {
        digest: digest.clone(),
        reason,
    };
    let mut done = f
        .done
        .lock()
        .map_err(|_| failed("flight poisoned".into()))?;
    loop {
        match &*done {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => return Err(failed(e.clone())),
            None => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(failed("timed out waiting for another fetch".into()));
        }
        done =
            f.cv.wait_timeout(done, left)
                .map_err(|_| failed("flight poisoned".into()))?
                .0;
    }
}

// Handles cross FUSE worker threads.
const _: () = {
    const fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<LayerHandle>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::{ClientOptions, Counters};
    use registry_client::testserver::{partial, range_of, respond, serve};

    /// A remote layer of `index` at `url`'s `/data` (and `/data.zst` when `frames`), its chunk
    /// cache in `cache`; the client too, for tests that look into it.
    fn remote_layer(
        url: &str,
        cache: &std::path::Path,
        opts: ClientOptions,
        index: &Index,
        frames: Option<Arc<Framed>>,
    ) -> (Client, LayerHandle) {
        let client = Client::new(url, None, cache, opts).unwrap();
        let source = Source::Remote {
            repo: "r".into(),
            url: "/data".into(),
            layer: Digest::sha256_of(b"layer"),
            frames,
        };
        let layer = LayerHandle::new(client.clone(), index.clone(), source);
        (client, layer)
    }

    /// A layer with one file of `n` distinct 16 KiB chunks, expanded; returns its index and
    /// data blob.
    pub(crate) fn expanded(n: usize) -> (Index, Vec<u8>) {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let content: Vec<u8> = (0..n * (16 << 10))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        expanded_file(&content)
    }

    /// Compressible, distinct-per-chunk content of `n` 16 KiB chunks.
    fn text(n: usize) -> Vec<u8> {
        (0..n * (16 << 10))
            .map(|i| {
                if i % 64 == 0 {
                    (i / 64 % 251) as u8
                } else {
                    b"from flask import Flask, render_template\n"[i % 40]
                }
            })
            .collect()
    }

    /// A layer holding `content` as one file, expanded.
    fn expanded_file(content: &[u8]) -> (Index, Vec<u8>) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "f", content).unwrap();
        let tar = tar.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("d"))
            .unwrap();
        let opts = emulator::ExpandOptions {
            chunk_size: 16 << 10,
            ..Default::default()
        };
        let ex = emulator::expand_to_file(
            &tar[..],
            Some(emulator::oci::MT_OCI_LAYER_TAR),
            None,
            &mut f,
            &opts,
        )
        .unwrap();
        let data = std::fs::read(dir.path().join("d")).unwrap();
        (ex.index, data)
    }

    #[test]
    fn only_the_chunks_a_read_needs_can_fail_it() {
        let (index, data) = expanded(4);
        assert!(index.chunks.len() >= 4, "{}", index.chunks.len());
        let bad = index.chunks[2].offset;
        let served = data.clone();
        // The registry fails every request for the range starting at chunk 2.
        let srv = serve(move |req| match range_of(req) {
            Some((a, _)) if a == bad => respond(500, &[], Vec::new()),
            Some(r) => partial(&served, r),
            None => respond(400, &[], Vec::new()),
        });
        let dir = tempfile::tempdir().unwrap();
        let opts = ClientOptions {
            max_attempts: 1,
            start_profile: false,
            ..Default::default()
        };
        let (_, layer) = remote_layer(&srv.url, dir.path(), opts, &index, None);
        let counters = Arc::new(Counters::default());
        let c = &index.chunks;
        // Chunk 1 cached: a read of chunk 0 with read-ahead through chunk 2 makes two runs.
        let mut buf = vec![0u8; 10];
        layer.read_data(c[1].offset, &mut buf, &counters).unwrap();
        let mut buf = vec![0u8; 100];
        let ahead = c[2].offset + u64::from(c[2].len);
        let r = layer.read_data_ahead(c[0].offset, &mut buf, ahead, &counters);
        assert!(r.is_ok(), "the read's own bytes arrived: {r:?}");
        assert_eq!(buf, data[c[0].offset as usize..][..100]);
        // Chunk 2 itself really cannot be had.
        let r = layer.read_data(c[2].offset, &mut buf, &counters);
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn a_streaming_reader_keeps_requests_in_flight_without_waiting_for_them() {
        use std::sync::{Condvar, Mutex};
        use std::time::Duration;
        let (index, data) = expanded(20);
        let c = index.chunks.clone();
        assert!(c.len() >= 16, "{}", c.len());
        // Requests for chunk 9 onwards are held until the test opens the gate (bounded, so a
        // reader that does wait fails the test instead of hanging it).
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (g, served, held_from) = (gate.clone(), data.clone(), c[9].offset);
        let seen = log.clone();
        let srv = serve(move |req| {
            let Some((a, b)) = range_of(req) else {
                return respond(400, &[], Vec::new());
            };
            seen.lock().unwrap().push((a, b));
            if a >= held_from {
                let open = g.0.lock().unwrap();
                let _open =
                    g.1.wait_timeout_while(open, Duration::from_secs(20), |o| !*o)
                        .unwrap();
            }
            partial(&served, (a, b))
        });
        let dir = tempfile::tempdir().unwrap();
        let opts = ClientOptions {
            start_profile: false,
            compressed_wire: false,
            ..Default::default()
        };
        let (client, layer) = remote_layer(&srv.url, dir.path(), opts, &index, None);
        let counters = Arc::new(Counters::default());
        // One chunk per read, read-ahead 8 chunks past it: read 0 fetches chunks 0..=8 and
        // waits; reads 3 and 6 find less than 3/4 of their window covered and send 9..=11
        // and 12..=14 without waiting — both held by the registry while reads go on.
        let read = |i: usize| {
            let mut buf = vec![0u8; c[i].len as usize];
            let ahead = c[(i + 8).min(c.len() - 1)].offset + u64::from(c[i].len);
            layer
                .read_data_ahead(c[i].offset, &mut buf, ahead, &counters)
                .unwrap();
            assert_eq!(buf, data[c[i].offset as usize..][..buf.len()], "chunk {i}");
        };
        for i in 0..=6 {
            read(i);
        }
        let in_flight = |i: usize| {
            client
                .inner
                .flights
                .lock()
                .unwrap()
                .contains_key(c[i].digest.hex())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(in_flight(9) && in_flight(12)) {
            assert!(
                Instant::now() < deadline,
                "two read-ahead requests in flight at once"
            );
            std::thread::yield_now();
        }
        // Reads 0..=6 returned with both still held: none of them waited for its read-ahead.
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        // The rest streams on, right.
        for i in 7..c.len() {
            read(i);
        }
        // Those two were two requests, not one covering both (both were answered by now).
        let log = log.lock().unwrap();
        let first_held = log.iter().find(|r| r.0 == c[9].offset);
        assert!(
            first_held.is_some_and(|&(_, b)| b < c[12].offset),
            "{log:?}"
        );
        let s = counters.snapshot();
        assert_eq!(s.bytes_fetched, index.data_size, "each chunk once: {s:?}");
        assert!(s.fetches >= 3, "{s:?}");
    }

    #[test]
    fn corrupt_cached_bytes_are_fetched_again_after_a_restart() {
        let (index, data) = expanded(2);
        let served = data.clone();
        let requests = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let n = requests.clone();
        let srv = serve(move |req| {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match range_of(req) {
                Some(r) => partial(&served, r),
                None => respond(400, &[], Vec::new()),
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let opts = ClientOptions {
                start_profile: false,
                ..Default::default()
            };
            remote_layer(&srv.url, dir.path(), opts, &index, None).1
        };
        let counters = Counters::default();
        let mut buf = vec![0u8; 1000];
        {
            let layer = open();
            layer.read_data(0, &mut buf, &counters).unwrap();
        }
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Rot the cached bytes on disk, then "restart".
        for e in std::fs::read_dir(dir.path().join("packs")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|e| e == "dat") {
                let mut b = std::fs::read(&p).unwrap();
                for x in &mut b[..100] {
                    *x ^= 0x5a;
                }
                std::fs::write(&p, b).unwrap();
            }
        }
        let layer = open();
        let mut buf = vec![0u8; 1000];
        layer.read_data(0, &mut buf, &counters).unwrap();
        assert_eq!(buf, data[..1000], "the correct bytes, fetched again");
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A registry double serving `data` by range at `/data` and its 64 KiB-frame encoding at
    /// `/data.zst` (through `mangle`), counting the requests to each.
    struct Framed2 {
        srv: registry_client::testserver::TestServer,
        table: emulator::frames::FrameTable,
        plain_hits: Arc<std::sync::atomic::AtomicU32>,
        frame_hits: Arc<std::sync::atomic::AtomicU32>,
    }

    fn framed_server(
        data: &[u8],
        mangle: impl FnOnce(&mut Vec<u8>, &mut emulator::frames::FrameTable),
    ) -> Framed2 {
        use std::sync::atomic::{AtomicU32, Ordering};
        let mut z = Vec::new();
        let mut table = emulator::frames::encode_seekable(data, &mut z, 64 << 10, 3).unwrap();
        mangle(&mut z, &mut table);
        let (plain_hits, frame_hits) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (p, f, plain) = (plain_hits.clone(), frame_hits.clone(), data.to_vec());
        let srv = serve(move |req| {
            let Some(r) = range_of(req) else {
                return respond(400, &[], Vec::new());
            };
            match req.uri().path() {
                "/data" => {
                    p.fetch_add(1, Ordering::SeqCst);
                    partial(&plain, r)
                }
                "/data.zst" => {
                    f.fetch_add(1, Ordering::SeqCst);
                    partial(&z, r)
                }
                _ => respond(404, &[], Vec::new()),
            }
        });
        Framed2 {
            srv,
            table,
            plain_hits,
            frame_hits,
        }
    }

    fn framed_layer(srv: &Framed2, index: &Index, cache: &std::path::Path) -> LayerHandle {
        let opts = ClientOptions {
            max_attempts: 1,
            start_profile: false,
            ..Default::default()
        };
        let frames = Arc::new(Framed {
            url: "/data.zst".into(),
            table: srv.table.clone(),
        });
        remote_layer(&srv.srv.url, cache, opts, index, Some(frames)).1
    }

    #[test]
    fn reads_through_compressed_frames_are_right_and_cheaper_on_the_wire() {
        use std::sync::atomic::Ordering;
        let (index, data) = expanded_file(&text(40));
        let srv = framed_server(&data, |_, _| {});
        let dir = tempfile::tempdir().unwrap();
        let layer = framed_layer(&srv, &index, dir.path());
        let counters = Arc::new(Counters::default());
        // A small read in the middle of frame 1: that frame comes, whole, and nothing else.
        let mut buf = vec![0u8; 5000];
        layer.read_data(70_000, &mut buf, &counters).unwrap();
        assert_eq!(buf, data[70_000..75_000]);
        let s = counters.snapshot();
        assert_eq!((s.frames_fetched, s.fetches), (1, 1), "{s:?}");
        assert_eq!(
            s.bytes_fetched,
            64 << 10,
            "the frame's chunks, all kept: {s:?}"
        );
        assert!(s.wire_bytes * 4 < s.bytes_fetched, "{s:?}");
        // Its neighbours in that frame are cached now: no request.
        layer.read_data(65_536, &mut buf, &counters).unwrap();
        assert_eq!(buf, data[65_536..70_536]);
        assert_eq!(counters.snapshot().frames_fetched, 1);
        // A read spanning frames 2..=4, with read-ahead: one GET of the covering frames.
        let mut big = vec![0u8; 150_000];
        layer
            .read_data_ahead(140_000, &mut big, 300_000, &counters)
            .unwrap();
        assert_eq!(big, data[140_000..290_000]);
        let s = counters.snapshot();
        assert_eq!((s.frames_fetched, s.fetches), (4, 2), "{s:?}");
        // Everything: right bytes; the plain data was never asked for.
        let mut all = vec![0u8; data.len()];
        layer.read_data(0, &mut all, &counters).unwrap();
        assert_eq!(all, data);
        let s = counters.snapshot();
        assert_eq!(s.bytes_fetched, data.len() as u64, "{s:?}");
        assert!(s.wire_bytes * 4 < s.bytes_fetched, "{s:?}");
        assert_eq!(s.frames_fetched, srv.table.frames.len() as u64);
        assert_eq!(srv.plain_hits.load(Ordering::SeqCst), 0);
        assert!(srv.frame_hits.load(Ordering::SeqCst) >= 3);
    }

    #[test]
    fn a_corrupt_or_substituted_frame_is_refused_and_nothing_bad_is_cached() {
        let (index, data) = expanded_file(&text(12));
        // Frame 1's bytes flipped: zstd refuses them (or decodes wrong bytes the chunk
        // digests refuse).
        let flipped = framed_server(&data, |z, t| {
            let f = t.frames[1];
            let mid = (f.compressed_offset + u64::from(f.compressed_len) / 2) as usize;
            for b in &mut z[mid..mid + 8] {
                *b ^= 0x5a;
            }
        });
        // Frame 1 replaced by a valid frame of other bytes of the same length: it decodes,
        // and only the chunk digests can tell.
        let other: Vec<u8> = data[..64 << 10].iter().map(|b| b.wrapping_add(1)).collect();
        let mut forged = Vec::new();
        emulator::frames::encode_seekable(&other[..], &mut forged, 64 << 10, 3).unwrap();
        let substituted = framed_server(&data, move |z, t| {
            let f = t.frames[1];
            let (a, b) = (f.compressed_offset as usize, f.compressed_end() as usize);
            z.splice(a..b, forged.iter().copied());
            // The (lying) table lines up with the forged frame.
            t.frames[1].compressed_len = forged.len() as u32;
            let mut at = 0;
            for f in &mut t.frames {
                f.compressed_offset = at;
                at = f.compressed_end();
            }
        });
        for (what, srv) in [("flipped", flipped), ("substituted", substituted)] {
            let dir = tempfile::tempdir().unwrap();
            let layer = framed_layer(&srv, &index, dir.path());
            let counters = Counters::default();
            // The whole of frame 1: whichever of its chunks the damage hits is needed.
            let mut buf = vec![0u8; 64 << 10];
            let r = layer.read_data(64 << 10, &mut buf, &counters);
            assert!(
                matches!(r, Err(Error::Frames { .. } | Error::DigestMismatch { .. })),
                "{what}: {r:?}"
            );
            if what == "substituted" {
                assert!(matches!(r, Err(Error::DigestMismatch { .. })), "{r:?}");
            }
            assert!(buf.iter().all(|&b| b == 0), "no bytes reached the reader");
            // What was cached of that frame is only chunks whose digests matched.
            for c in layer.index().chunks.iter().filter(|c| c.offset >= 64 << 10) {
                let mut got = vec![0u8; c.len as usize];
                if layer.client().cache().contains(&c.digest) {
                    layer
                        .client()
                        .cache()
                        .read_chunk(&c.digest, 0, &mut got)
                        .unwrap();
                    assert_eq!(got, data[c.offset as usize..][..c.len as usize]);
                }
            }
            assert!(counters.snapshot().fetch_errors >= 1);
            // The frames around it are fine.
            let mut buf = vec![0u8; 1000];
            layer.read_data(1000, &mut buf, &counters).unwrap();
            assert_eq!(buf, data[1000..2000]);
        }
    }
}
