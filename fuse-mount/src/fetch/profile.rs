//! Learned start profiles, client side: the wire document, the per-layer [`Recorder`] of what
//! readers read on a first start, and the replay [`plan`] that turns a stored profile into
//! prefetch jobs.
//!
//! What is recorded: the byte range of every *reader* request (FUSE read) during the window,
//! whether it missed or hit the chunk cache — not what prefetch or read-ahead fetched beyond it.
//! A hit is recorded too because on the recording node it is often an accident (a read-ahead of
//! this very start, another image sharing the layer, a cache left from an earlier run); the node
//! replaying the profile has none of that, so it needs every range the start actually read.
//! Background fetches are never recorded: they are guesses, and a whole-layer prefetch would
//! turn the profile into "everything".

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most ranges one recording holds: keeps the JSON body well under the registry's 1 MiB cap
/// (and below the document's own limit, [`emulator::profile::MAX_RANGES`]).
pub(crate) const MAX_RANGES: usize = 32 * 1024;
/// How many of the latest ranges a new read may extend: reads of one file by several threads
/// interleave with other files, so "the previous range" alone would rarely be adjacent.
const MERGE_LOOKBACK: usize = 16;

/// What the registry said about this layer's profile when the mount asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Remote {
    /// Not asked yet, or the answer failed: never upload (we might overwrite nothing useful, but
    /// a node that cannot read profiles should not write them either).
    Unknown,
    Absent,
    Present,
}

#[derive(Debug)]
struct State {
    ranges: Vec<(u64, u64)>,
    /// Set by the first recorded read.
    closes_at: Option<Instant>,
    closed: bool,
    remote: Remote,
}

/// What a [`Recorder::record`] call asks the caller to do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    Nothing,
    /// First range: start the window's timer.
    Started,
    /// The window had passed: upload these ranges (the recording is closed).
    Upload(Vec<(u64, u64)>),
}

/// First-access-ordered reader ranges of one layer handle, until the window closes.
#[derive(Debug)]
pub(crate) struct Recorder {
    state: Mutex<State>,
    window: Duration,
}

impl Recorder {
    pub(crate) fn new(window: Duration) -> Recorder {
        Recorder {
            state: Mutex::new(State {
                ranges: Vec::new(),
                closes_at: None,
                closed: false,
                remote: Remote::Unknown,
            }),
            window,
        }
    }

    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// Note what the registry said; `Present` also ends recording (nothing will be uploaded).
    pub(crate) fn set_remote(&self, r: Remote) {
        if let Ok(mut s) = self.state.lock() {
            s.remote = r;
            if r == Remote::Present {
                s.closed = true;
                s.ranges = Vec::new();
            }
        }
    }

    /// Record a reader's `offset..offset+len` (cheap: one lock, a short scan).
    pub(crate) fn record(&self, offset: u64, len: u64) -> Recorded {
        let Ok(mut s) = self.state.lock() else {
            return Recorded::Nothing;
        };
        if s.closed || len == 0 {
            return Recorded::Nothing;
        }
        let now = Instant::now();
        let started = match s.closes_at {
            Some(t) if now >= t => {
                drop(s);
                return self.close().map_or(Recorded::Nothing, Recorded::Upload);
            }
            Some(_) => false,
            None => {
                s.closes_at = Some(now + self.window);
                true
            }
        };
        let end = offset.saturating_add(len);
        let n = s.ranges.len();
        let merged = s.ranges[n.saturating_sub(MERGE_LOOKBACK)..]
            .iter_mut()
            .rev()
            .find(|(o, l)| offset <= o.saturating_add(*l) && *o <= end)
            .map(|r| {
                let a = r.0.min(offset);
                let b = r.0.saturating_add(r.1).max(end);
                *r = (a, b - a);
            })
            .is_some();
        if !merged && n < MAX_RANGES {
            s.ranges.push((offset, len));
        }
        if started {
            Recorded::Started
        } else {
            Recorded::Nothing
        }
    }

    /// Close the recording (once). Returns the ranges to upload: only when the registry had no
    /// profile for the layer and something was read.
    pub(crate) fn close(&self) -> Option<Vec<(u64, u64)>> {
        let mut s = self.state.lock().ok()?;
        if s.closed {
            return None;
        }
        s.closed = true;
        let ranges = std::mem::take(&mut s.ranges);
        (s.remote == Remote::Absent && !ranges.is_empty()).then_some(ranges)
    }
}

/// How much profile data (in first-access order) is reordered by offset at a time: large enough
/// that neighbouring files read by different threads end up in one request, small enough that
/// what the start reads first is still fetched first.
const PLAN_WINDOW: u64 = 4 << 20;
/// Bytes between two profile ranges that are fetched anyway to join them into one request.
/// Small: replay runs 16 requests at once, so round trips overlap and the link's bytes are what
/// a start waits for (measured at 1 Gbit/s + 5 ms: a 128 KiB gap fetched 25% more bytes and
/// made the 29-layer start slower, 0.59 s vs 0.49 s ready at scale 0.3).
pub(crate) const JOIN_GAP_BYTES: u64 = 16 << 10;

/// Turn profile ranges (as chunk spans `first..=last`, in first-access order, with each chunk's
/// length) into prefetch jobs: per [`PLAN_WINDOW`] of data, spans sorted by offset and joined
/// when adjacent or at most `join_gap` chunks apart, each job at most `request_max` bytes.
pub(crate) fn plan(
    spans: &[(usize, usize)],
    chunk_len: impl Fn(usize) -> u64,
    request_max: u64,
    join_gap: usize,
) -> Vec<(usize, usize)> {
    let span_bytes = |&(a, b): &(usize, usize)| (a..=b).map(&chunk_len).sum::<u64>();
    let mut jobs = Vec::new();
    let mut batch: Vec<(usize, usize)> = Vec::new();
    let mut batch_bytes = 0u64;
    let flush = |batch: &mut Vec<(usize, usize)>, jobs: &mut Vec<(usize, usize)>| {
        batch.sort_unstable();
        let mut cur: Option<(usize, usize, u64)> = None;
        for &(a, b) in batch.iter() {
            let bytes = span_bytes(&(a, b));
            cur = match cur {
                Some((ca, cb, cbytes))
                    if a <= cb.saturating_add(join_gap).saturating_add(1)
                        && cbytes + bytes <= request_max =>
                {
                    let nb = cb.max(b);
                    Some((ca, nb, span_bytes(&(ca, nb))))
                }
                Some(c) => {
                    jobs.push((c.0, c.1));
                    Some((a, b, bytes))
                }
                None => Some((a, b, bytes)),
            };
        }
        if let Some(c) = cur {
            jobs.push((c.0, c.1));
        }
        batch.clear();
    };
    for &s in spans {
        batch_bytes += span_bytes(&s);
        batch.push(s);
        if batch_bytes >= PLAN_WINDOW {
            flush(&mut batch, &mut jobs);
            batch_bytes = 0;
        }
    }
    flush(&mut batch, &mut jobs);
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_merges_and_uploads_only_when_absent() {
        let r = Recorder::new(Duration::from_secs(60));
        assert_eq!(r.record(100, 10), Recorded::Started);
        assert_eq!(r.record(0, 10), Recorded::Nothing);
        // Extends the first range (adjacent), not a new one.
        assert_eq!(r.record(110, 20), Recorded::Nothing);
        r.set_remote(Remote::Absent);
        assert_eq!(r.close(), Some(vec![(100, 30), (0, 10)]));
        assert_eq!(r.close(), None, "closes once");
        assert_eq!(r.record(5, 5), Recorded::Nothing);

        let r = Recorder::new(Duration::from_secs(60));
        r.record(0, 1);
        assert_eq!(r.close(), None, "registry answer unknown: no upload");
        let r = Recorder::new(Duration::from_secs(60));
        r.set_remote(Remote::Present);
        assert_eq!(r.record(0, 1), Recorded::Nothing);
    }

    #[test]
    fn recorder_window_closes_on_a_late_read() {
        let r = Recorder::new(Duration::ZERO);
        r.set_remote(Remote::Absent);
        assert_eq!(r.record(0, 4), Recorded::Started);
        assert_eq!(r.record(8, 4), Recorded::Upload(vec![(0, 4)]));
        assert_eq!(r.close(), None);
    }

    #[test]
    fn plan_keeps_order_per_window_and_joins_neighbours() {
        // 1-byte "chunks" make the arithmetic visible; window far larger than the data.
        let jobs = plan(&[(10, 10), (0, 1), (12, 13), (50, 50)], |_| 1, 1000, 2);
        assert_eq!(jobs, vec![(0, 1), (10, 13), (50, 50)]);
        // Without a gap allowance only touching spans join.
        let jobs = plan(&[(10, 10), (12, 13), (14, 14)], |_| 1, 1000, 0);
        assert_eq!(jobs, vec![(10, 10), (12, 14)]);
        // Request cap splits a run.
        let jobs = plan(&[(0, 3), (4, 7)], |_| 1, 4, 2);
        assert_eq!(jobs, vec![(0, 3), (4, 7)]);
        // Windows keep first-access order: the second window's spans come after the first's.
        let big = PLAN_WINDOW;
        let jobs = plan(&[(5, 5), (1, 1)], |_| big, u64::MAX, 2);
        assert_eq!(jobs, vec![(5, 5), (1, 1)]);
    }
}
