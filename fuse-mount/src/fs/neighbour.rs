//! Adaptive neighbour-ahead: how far past a small file's end a first-read miss also fetches,
//! kept per layer, widened while the files it brings along get read and narrowed while they
//! do not.
//!
//! Why adaptive: an interpreter's start opens a directory's modules one after another (the
//! bytes after a file are the next files it opens), while a start that reads scattered files
//! (the fixture's random working set) reads almost none of them — a fixed window there only
//! fills the link. The signal is exact: a window counts as used only when a later small file's
//! first read starts inside one of the layer's recent windows (not when its bytes are cached
//! for another reason, such as a start profile's replay).

use std::sync::Mutex;

/// Windows remembered per layer: enough for a few readers interleaving their directories.
const RECENT: usize = 8;
/// The narrowest window, as a fraction of the widest: a few small files, so a layer whose
/// neighbours start being read again can widen back (a window of 0 would never learn).
const MIN_SHIFT: u32 = 4;

/// One layer's state.
#[derive(Debug, Default)]
struct Window {
    /// Bytes the next miss fetches past its file's end.
    bytes: u64,
    /// Recent windows, `[start, end)` in the layer's data; a ring.
    recent: [(u64, u64); RECENT],
    next: usize,
}

/// Per-layer windows of one mount (slots as in the mount's layer list).
#[derive(Debug)]
pub(crate) struct NeighbourAhead {
    max: u64,
    min: u64,
    layers: Vec<Mutex<Window>>,
}

impl NeighbourAhead {
    /// `max` is the widest window (and the first); 0 turns neighbour-ahead off.
    pub(crate) fn new(layers: usize, max: u64) -> Self {
        NeighbourAhead {
            max,
            min: max >> MIN_SHIFT,
            layers: (0..layers)
                .map(|_| {
                    Mutex::new(Window {
                        bytes: max,
                        ..Window::default()
                    })
                })
                .collect(),
        }
    }

    /// A small file's first read: its data is `[start, end)` of layer `slot`; `cached` says its
    /// first byte is in the cache already. Returns how many bytes past `end` the read's request
    /// should also fetch (0: none).
    pub(crate) fn first_read(&self, slot: usize, start: u64, end: u64, cached: bool) -> u64 {
        let Some(w) = self.layers.get(slot) else {
            return 0;
        };
        if self.max == 0 {
            return 0;
        }
        let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
        if w.recent.iter().any(|&(s, e)| s <= start && start < e) {
            // An earlier window brought (or is bringing) this file: neighbours are being read.
            w.bytes = w.bytes.saturating_mul(2).min(self.max);
            return 0;
        }
        if cached {
            return 0;
        }
        let bytes = w.bytes;
        let i = w.next;
        w.recent[i] = (end, end.saturating_add(bytes));
        w.next = (i + 1) % RECENT;
        // Narrowed now, widened back by the hits this window earns.
        w.bytes = (bytes / 2).max(self.min);
        bytes
    }

    /// The window the next miss of layer `slot` would fetch (for tests and metrics).
    #[cfg(test)]
    fn window(&self, slot: usize) -> u64 {
        self.layers[slot]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 256 << 10;

    #[test]
    fn a_directory_read_in_order_keeps_the_window_wide() {
        let n = NeighbourAhead::new(1, MAX);
        // 40 files of 10 KB laid out back to back; read in order.
        let mut fetched_by_misses = 0;
        let mut misses = 0;
        let mut end_of_fetch = 0;
        for i in 0..40u64 {
            let (s, e) = (i * 10_000, (i + 1) * 10_000);
            let past = n.first_read(0, s, e, s < end_of_fetch);
            if past > 0 {
                misses += 1;
                fetched_by_misses += past;
                end_of_fetch = e + past;
            }
        }
        assert_eq!(misses, 2, "one miss per 256 KiB of neighbours");
        assert_eq!(n.window(0), MAX);
        assert!(fetched_by_misses <= 2 * MAX);
    }

    #[test]
    fn scattered_misses_narrow_the_window_to_its_floor_and_hits_widen_it_back() {
        let n = NeighbourAhead::new(2, MAX);
        let mut got = Vec::new();
        for i in 0..8u64 {
            // Every file 10 MB apart: none lies in an earlier window.
            got.push(n.first_read(0, i * 10_000_000, i * 10_000_000 + 5_000, false));
        }
        assert_eq!(got[..5], [MAX, MAX / 2, MAX / 4, MAX / 8, MAX / 16]);
        assert!(got[5..].iter().all(|&b| b == MAX / 16), "{got:?}");
        assert_eq!(n.window(1), MAX, "layers learn apart");
        // The file right after the last miss lies in its window: the window widens again.
        let last_end = 7 * 10_000_000 + 5_000;
        assert_eq!(n.first_read(0, last_end, last_end + 3_000, true), 0);
        assert_eq!(n.window(0), MAX / 8);
    }

    #[test]
    fn bytes_cached_for_another_reason_neither_fetch_nor_widen() {
        let n = NeighbourAhead::new(1, MAX);
        assert_eq!(n.first_read(0, 0, 100, false), MAX);
        // Far from the window, cached by a profile's replay: no fetch, no credit.
        assert_eq!(n.first_read(0, 50_000_000, 50_000_100, true), 0);
        assert_eq!(n.window(0), MAX / 2);
    }

    #[test]
    fn a_zero_max_is_off_and_unknown_slots_fetch_nothing() {
        let off = NeighbourAhead::new(1, 0);
        assert_eq!(off.first_read(0, 0, 100, false), 0);
        let on = NeighbourAhead::new(1, MAX);
        assert_eq!(on.first_read(3, 0, 100, false), 0);
    }
}
