//! The start trace: a bounded, in-order record of the FUSE opens and reads the fuse manager
//! answered, each with its wait and whether its bytes were already cached — what `teleportd
//! trace` prints and the testbed sums into a first start's breakdown. Process-wide (the fuse
//! manager's), a ring of `--trace-events` entries (0: off); the oldest are dropped and counted.
//! Depends on nothing in this crate.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What a traced operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Open,
    Read,
}

/// One answered FUSE operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the trace since the manager started (gap-free; a reader resumes from it).
    pub seq: u64,
    /// When the operation arrived, µs since the Unix epoch.
    pub at_us: u64,
    /// Index into [`Page::mounts`]' table of mount points.
    pub mount: u32,
    pub op: Op,
    pub ino: u64,
    /// Opens: the file's path inside the mount, and `len` its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Opens: where the file's bytes lie — which of the mount's layers, and where in that
    /// layer's data (files are laid out in tar order), for studying a start's locality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataAt>,
    pub offset: u64,
    pub len: u64,
    /// Reads: every byte was in the node's cache when the read arrived (no registry wait).
    pub cached: bool,
    /// From arrival to the answer, µs.
    pub wait_us: u64,
    /// The answer was an error (EIO and the like).
    #[serde(default)]
    pub failed: bool,
}

/// A file's place in the expanded layers: the mount's layer `layer` (0 = lowest), bytes from
/// `offset` of its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataAt {
    pub layer: u32,
    pub offset: u64,
}

impl Event {
    /// An event with every field zero; [`Span::finish`] fills in `seq`, `at_us` and `wait_us`.
    pub fn blank() -> Self {
        Event {
            seq: 0,
            at_us: 0,
            mount: 0,
            op: Op::Read,
            ino: 0,
            path: None,
            data: None,
            offset: 0,
            len: 0,
            cached: false,
            wait_us: 0,
            failed: false,
        }
    }
}

/// A slice of the trace: events from a cursor on, and the mount table they index.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub events: Vec<Event>,
    /// Cursor for the next call (the `seq` after the last event returned).
    pub next: u64,
    /// Events at or after the requested cursor that the ring had already dropped.
    pub dropped: u64,
    /// Mount points by the index events carry.
    pub mounts: Vec<String>,
    /// The ring's size; 0 means tracing is off.
    pub capacity: usize,
}

struct Ring {
    capacity: usize,
    events: VecDeque<Event>,
    next_seq: u64,
    mounts: Vec<String>,
}

static RING: OnceLock<Mutex<Ring>> = OnceLock::new();

fn ring() -> &'static Mutex<Ring> {
    RING.get_or_init(|| {
        Mutex::new(Ring {
            capacity: 0,
            events: VecDeque::new(),
            next_seq: 0,
            mounts: Vec::new(),
        })
    })
}

fn lock() -> std::sync::MutexGuard<'static, Ring> {
    ring().lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets the ring's size (the manager does this once at start); 0 turns tracing off.
pub fn set_capacity(capacity: usize) {
    let mut r = lock();
    r.capacity = capacity;
    while r.events.len() > capacity {
        r.events.pop_front();
    }
}

/// Whether events are kept (callers skip building them otherwise).
pub fn enabled() -> bool {
    lock().capacity > 0
}

/// The index events of the mount at `target` carry.
pub fn mount_id(target: &str) -> u32 {
    let mut r = lock();
    let i = match r.mounts.iter().position(|m| m == target) {
        Some(i) => i,
        None => {
            r.mounts.push(target.to_owned());
            r.mounts.len() - 1
        }
    };
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// An operation being timed; recorded when [`Span::finish`] is called.
pub struct Span {
    at: SystemTime,
    started: Instant,
}

impl Span {
    pub fn start() -> Self {
        Span {
            at: SystemTime::now(),
            started: Instant::now(),
        }
    }

    /// Records the finished operation (`seq`, `at_us` and `wait_us` are filled in here).
    pub fn finish(self, mut e: Event) {
        e.at_us = micros(self.at.duration_since(UNIX_EPOCH).unwrap_or_default());
        e.wait_us = micros(self.started.elapsed());
        let mut r = lock();
        if r.capacity == 0 {
            return;
        }
        e.seq = r.next_seq;
        r.next_seq += 1;
        if r.events.len() == r.capacity {
            r.events.pop_front();
        }
        r.events.push_back(e);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The `seq` the next event will get: a cursor from which [`page`] returns only what comes
/// after now.
pub fn cursor() -> u64 {
    lock().next_seq
}

/// Events with `seq >= since`, at most `max` of them.
pub fn page(since: u64, max: usize) -> Page {
    let r = lock();
    let oldest = r.events.front().map_or(r.next_seq, |e| e.seq);
    let events: Vec<Event> = r
        .events
        .iter()
        .filter(|e| e.seq >= since)
        .take(max)
        .cloned()
        .collect();
    Page {
        // Without events: where the next one will be (so `page(u64::MAX, 0).next` is "now").
        next: events
            .last()
            .map_or(since.max(oldest).min(r.next_seq), |e| e.seq + 1),
        dropped: oldest.saturating_sub(since),
        events,
        mounts: r.mounts.clone(),
        capacity: r.capacity,
    }
}

/// What a stretch of the trace adds up to: the breakdown of a start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub opens: u64,
    pub open_wait_s: f64,
    pub reads: u64,
    pub read_bytes: u64,
    /// Reads answered from the cache, and their summed wait.
    pub cached_reads: u64,
    pub cached_wait_s: f64,
    /// Reads that waited on the registry, their summed and longest wait.
    pub miss_reads: u64,
    pub miss_wait_s: f64,
    pub longest_miss_s: f64,
    pub failed: u64,
    /// From the first event's arrival to the last one's answer.
    pub span_s: f64,
    /// Time in which at least one miss was waiting (overlapping misses count once): the part
    /// of the span a start spent blocked on the registry.
    pub miss_busy_s: f64,
}

impl Summary {
    pub fn of(events: &[Event]) -> Summary {
        let mut s = Summary::default();
        let secs = |us: u64| us as f64 / 1e6;
        let mut misses: Vec<(u64, u64)> = Vec::new();
        let (mut first, mut last) = (u64::MAX, 0u64);
        for e in events {
            first = first.min(e.at_us);
            last = last.max(e.at_us.saturating_add(e.wait_us));
            s.failed += u64::from(e.failed);
            match e.op {
                Op::Open => {
                    s.opens += 1;
                    s.open_wait_s += secs(e.wait_us);
                }
                Op::Read => {
                    s.reads += 1;
                    s.read_bytes += e.len;
                    if e.cached {
                        s.cached_reads += 1;
                        s.cached_wait_s += secs(e.wait_us);
                    } else {
                        s.miss_reads += 1;
                        s.miss_wait_s += secs(e.wait_us);
                        s.longest_miss_s = s.longest_miss_s.max(secs(e.wait_us));
                        misses.push((e.at_us, e.at_us.saturating_add(e.wait_us)));
                    }
                }
            }
        }
        if first <= last {
            s.span_s = secs(last - first);
        }
        misses.sort_unstable();
        let mut busy = 0u64;
        let mut cur: Option<(u64, u64)> = None;
        for (a, b) in misses {
            cur = match cur {
                Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
                Some((ca, cb)) => {
                    busy += cb - ca;
                    Some((a, b))
                }
                None => Some((a, b)),
            };
        }
        if let Some((a, b)) = cur {
            busy += b - a;
        }
        s.miss_busy_s = secs(busy);
        s
    }
}

/// Turns pages into `teleportd trace`'s lines: time since the first event, operation, cached or
/// miss, wait, mount index and path (remembered from the file's open), offset and length.
#[derive(Default)]
pub struct Printer {
    first_us: Option<u64>,
    paths: HashMap<(u32, u64), String>,
}

fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1}M", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1}K", n as f64 / 1024.0),
        n => format!("{n}B"),
    }
}

fn wait(us: u64) -> String {
    if us >= 1000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        format!("{us}µs")
    }
}

impl Printer {
    pub fn lines(&mut self, page: &Page) -> String {
        let mut out = String::new();
        if page.dropped > 0 {
            let _ = writeln!(
                out,
                "# {} older events were dropped (--trace-events)",
                page.dropped
            );
        }
        for e in &page.events {
            let first = *self.first_us.get_or_insert(e.at_us);
            let t = e.at_us.saturating_sub(first) as f64 / 1000.0;
            if let Some(p) = &e.path {
                self.paths.insert((e.mount, e.ino), p.clone());
            }
            let path = self
                .paths
                .get(&(e.mount, e.ino))
                .cloned()
                .unwrap_or_else(|| format!("inode {}", e.ino));
            let state = match (e.failed, e.cached) {
                (true, _) => "FAILED",
                (false, true) => "cached",
                (false, false) => "miss",
            };
            let what = match e.op {
                Op::Open => format!("{path} ({})", size(e.len)),
                Op::Read => format!("{path} @{} +{}", e.offset, size(e.len)),
            };
            let op = match e.op {
                Op::Open => "open",
                Op::Read => "read",
            };
            let _ = writeln!(
                out,
                "{t:>10.3}ms {op:<4} {state:<6} {:>8}  m{} {what}",
                wait(e.wait_us),
                e.mount
            );
        }
        out
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "span {:.3} s: {} opens ({:.3} s), {} reads of {}",
            self.span_s,
            self.opens,
            self.open_wait_s,
            self.reads,
            size(self.read_bytes)
        )?;
        writeln!(
            f,
            "  cached reads {} ({:.3} s waiting)",
            self.cached_reads, self.cached_wait_s
        )?;
        writeln!(
            f,
            "  misses {} ({:.3} s summed, longest {:.3} s; registry-bound {:.3} s of the span)",
            self.miss_reads, self.miss_wait_s, self.longest_miss_s, self.miss_busy_s
        )?;
        if self.failed > 0 {
            writeln!(f, "  FAILED operations {}", self.failed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: Op, at_us: u64, wait_us: u64, cached: bool, len: u64) -> Event {
        Event {
            at_us,
            op,
            ino: 2,
            len,
            cached,
            wait_us,
            ..Event::blank()
        }
    }

    #[test]
    fn summary_adds_up_waits_and_merges_overlapping_misses() {
        let events = [
            ev(Op::Open, 1_000, 10, true, 4096),
            ev(Op::Read, 1_010, 2_000, false, 4096), // 1010..3010
            ev(Op::Read, 2_000, 2_000, false, 4096), // 2000..4000, overlaps the first
            ev(Op::Read, 5_000, 100, true, 8192),
            ev(Op::Read, 6_000, 1_000, false, 100), // 6000..7000
        ];
        let s = Summary::of(&events);
        assert_eq!(
            (s.opens, s.reads, s.cached_reads, s.miss_reads),
            (1, 4, 1, 3)
        );
        assert_eq!(s.read_bytes, 4096 * 2 + 8192 + 100);
        assert!((s.miss_wait_s - 0.005).abs() < 1e-9);
        assert!((s.longest_miss_s - 0.002).abs() < 1e-9);
        // 1010..4000 and 6000..7000.
        assert!((s.miss_busy_s - 0.003_99).abs() < 1e-9, "{}", s.miss_busy_s);
        assert!((s.span_s - 0.006).abs() < 1e-9);
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    #[test]
    fn printer_names_reads_by_the_path_of_their_open() {
        let mut open = ev(Op::Open, 1_000, 10, false, 2048);
        open.path = Some("/usr/lib/x.py".into());
        let mut read = ev(Op::Read, 1_500, 2_500, false, 2048);
        read.offset = 0;
        let mut other = ev(Op::Read, 3_000, 40, true, 10);
        other.ino = 9;
        let page = Page {
            events: vec![open, read, other],
            dropped: 3,
            ..Page::default()
        };
        let text = Printer::default().lines(&page);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].contains("3 older events were dropped"));
        assert!(lines[1].contains("open") && lines[1].contains("/usr/lib/x.py (2.0K)"));
        assert!(
            lines[2].trim_start().starts_with("0.500ms read miss"),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains("2.5ms") && lines[2].contains("/usr/lib/x.py @0 +2.0K"));
        assert!(lines[3].contains("cached") && lines[3].contains("inode 9"));
    }

    /// The ring is process-wide: this one test owns it (others build events directly).
    #[test]
    fn ring_keeps_the_newest_in_order_and_counts_what_it_dropped() {
        set_capacity(0);
        Span::start().finish(ev(Op::Read, 0, 0, true, 1));
        assert!(page(0, 100).events.is_empty(), "off: nothing kept");
        set_capacity(3);
        let m = mount_id("/m/a");
        assert_eq!(mount_id("/m/a"), m);
        let base = page(0, 100).next;
        for i in 0..5 {
            let mut e = ev(Op::Read, 0, 0, false, i);
            e.mount = m;
            Span::start().finish(e);
        }
        let p = page(base, 100);
        assert_eq!(
            p.events.iter().map(|e| e.len).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert_eq!(p.dropped, 2);
        assert_eq!(p.next, base + 5);
        assert!(p.events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert_eq!(p.mounts[m as usize], "/m/a");
        let p2 = page(p.next, 100);
        assert!(p2.events.is_empty() && p2.dropped == 0 && p2.next == p.next);
        assert_eq!(page(base + 3, 1).events.len(), 1);
        assert_eq!(page(u64::MAX, 0).next, base + 5, "a cursor at the end");
        assert_eq!(cursor(), base + 5);
        set_capacity(0);
    }
}
