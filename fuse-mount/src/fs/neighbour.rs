//! Adaptive neighbour-ahead: how far past a small file's end a first-read miss also fetches,
//! kept per layer: wide while a fair share of the bytes it brings along gets read, narrower
//! while they go unread.
//!
//! Why adaptive: an interpreter's start opens a directory's modules one after another (the
//! bytes after a file are the files it opens next), while a start that reads scattered files
//! (the fixture's random working set) reads almost none of them — a fixed window there mostly
//! fills the link and the CPU. Measured on kept start traces (`testbed compare --keep-traces`,
//! replayed offline against several rules): with a fixed 256 KiB window a quarter of the window
//! bytes of a python start were read and 4% of the fixture's; a layer's own record tells the
//! two apart where a mount-wide one does not (a start first loads shared libraries, whose
//! neighbours are rarely read, then its modules, whose neighbours are).
//!
//! Only a reader that waits alone gets a window: when other reads of the mount are already
//! waiting on the registry, the start is reading in parallel (the fixture's readers: 97% of its
//! misses overlap another; none of python's imports do), each miss's wait overlaps the others',
//! and more bytes only compete with them for the link and the CPU.
//!
//! The signal is exact: a window's bytes count as used only when a later small file's first
//! read starts inside it (not when they are cached for another reason, such as a start
//! profile's replay). A window is judged once [`RECENT`] newer ones exist in its layer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Windows still earning per layer; older ones are judged.
const RECENT: usize = 4;
/// A layer's windows stay at the widest while at least 1/`USED_SHARE` of their bytes are read;
/// below that they narrow in proportion (a miss saves a round trip worth several such bytes).
const USED_SHARE: u64 = 20;
/// The narrowest window, as a fraction of the widest: a few small files, so a layer whose
/// neighbours start being read again can widen back (a window of 0 would never learn).
const MIN_SHIFT: u32 = 4;

/// One layer's record.
#[derive(Debug, Default)]
struct Layer {
    /// Recent windows: `[start, end)` in the layer's data and the bytes of it read so far.
    recent: VecDeque<(u64, u64, u64)>,
    /// Bytes of the judged windows, and of those the bytes read.
    judged: u64,
    used: u64,
}

/// Per-layer windows of one mount (slots as in the mount's layer list).
#[derive(Debug)]
pub(crate) struct NeighbourAhead {
    max: u64,
    min: u64,
    layers: Vec<Mutex<Layer>>,
    /// Reads of the mount waiting on the registry now.
    waiting: AtomicUsize,
}

/// A read waiting on the registry, from [`NeighbourAhead::wait`] until dropped.
pub(crate) struct Waiting<'a> {
    count: &'a AtomicUsize,
    alone: bool,
}

impl Waiting<'_> {
    /// No other read of the mount was waiting when this one began.
    pub(crate) fn alone(&self) -> bool {
        self.alone
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl NeighbourAhead {
    /// `max` is the widest window (and every layer's first); 0 turns neighbour-ahead off.
    pub(crate) fn new(layers: usize, max: u64) -> Self {
        NeighbourAhead {
            max,
            min: max >> MIN_SHIFT,
            layers: (0..layers).map(|_| Mutex::default()).collect(),
            waiting: AtomicUsize::new(0),
        }
    }

    /// A read that is about to wait on the registry (its bytes are not cached).
    pub(crate) fn wait(&self) -> Waiting<'_> {
        let before = self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting {
            count: &self.waiting,
            alone: before == 0,
        }
    }

    /// A small file's first read: its data is `[start, end)` of layer `slot`; `miss` is the
    /// read's wait when its first byte is not cached yet. Returns how many bytes past `end` the
    /// read's request should also fetch (0: none).
    pub(crate) fn first_read(
        &self,
        slot: usize,
        start: u64,
        end: u64,
        miss: Option<&Waiting<'_>>,
    ) -> u64 {
        if self.max == 0 {
            return 0;
        }
        let Some(l) = self.layers.get(slot) else {
            return 0;
        };
        let mut l = l.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = l.recent.iter_mut().find(|w| w.0 <= start && start < w.1) {
            // An earlier window brought (or is bringing) this file.
            w.2 += end.min(w.1) - start;
            return 0;
        }
        let Some(w) = miss else {
            return 0;
        };
        if !w.alone() {
            return 0;
        }
        let bytes = self.width(&l);
        l.recent.push_back((end, end.saturating_add(bytes), 0));
        if l.recent.len() > RECENT {
            if let Some((s, e, used)) = l.recent.pop_front() {
                l.judged += e - s;
                l.used += used;
            }
        }
        bytes
    }

    /// The window a layer's next miss fetches, from its judged windows.
    fn width(&self, l: &Layer) -> u64 {
        if l.judged == 0 || l.used.saturating_mul(USED_SHARE) >= l.judged {
            return self.max;
        }
        let scaled = u128::from(self.max) * u128::from(l.used) * u128::from(USED_SHARE)
            / u128::from(l.judged);
        u64::try_from(scaled).unwrap_or(self.max).max(self.min)
    }

    /// The window the next miss of layer `slot` would fetch (for tests).
    #[cfg(test)]
    fn window(&self, slot: usize) -> u64 {
        self.width(&self.layers[slot].lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 256 << 10;

    /// Reads files of `size` bytes laid out back to back from `from` on, every `every`-th of
    /// them, in order, as the FUSE read path asks; returns the misses' windows.
    fn read(n: &NeighbourAhead, from: u64, size: u64, files: u64, every: u64) -> Vec<u64> {
        let mut fetched_to = 0;
        let mut got = Vec::new();
        for i in (0..files).step_by(every as usize) {
            let (s, e) = (from + i * size, from + (i + 1) * size);
            let wait = (s >= fetched_to).then(|| n.wait());
            let past = n.first_read(0, s, e, wait.as_ref());
            if past > 0 {
                got.push(past);
                fetched_to = e + past;
            }
        }
        got
    }

    #[test]
    fn a_directory_read_in_order_keeps_the_window_wide() {
        let n = NeighbourAhead::new(1, MAX);
        let got = read(&n, 0, 10_000, 300, 1);
        assert!(
            got.len() as u64 <= 300 * 10_000 / MAX + 1,
            "one miss per 256 KiB of neighbours: {got:?}"
        );
        assert!(got.iter().all(|&w| w == MAX), "{got:?}");
        assert_eq!(n.window(0), MAX);
    }

    #[test]
    fn unread_neighbours_narrow_the_window_and_read_ones_widen_it_back() {
        let n = NeighbourAhead::new(2, MAX);
        // Files 1 MB apart: nothing a window brings is read.
        let got = read(&n, 0, 4_000, 4_000, 250);
        assert_eq!(
            got[..=RECENT],
            [MAX; RECENT + 1],
            "judged only after {RECENT}"
        );
        assert!(got[RECENT + 1..].iter().all(|&w| w == MAX / 16), "{got:?}");
        assert_eq!(n.window(1), MAX, "layers keep their own record");
        // Then a directory read whole, far away: its windows are read and judged, and the
        // layer's window grows back to the widest.
        let got = read(&n, 100_000_000, 4_000, 2_000, 1);
        assert_eq!(got[0], MAX / 16);
        assert!(got.windows(2).all(|w| w[0] <= w[1]), "{got:?}");
        assert_eq!(*got.last().unwrap(), MAX, "{got:?}");
    }

    #[test]
    fn the_share_of_a_windows_bytes_read_decides_its_width() {
        // Every 10th 4 KB file: a window holds about six files read, 9% of its bytes.
        let n = NeighbourAhead::new(1, MAX);
        let got = read(&n, 0, 4_000, 40_000, 10);
        assert!(got.iter().all(|&w| w == MAX), "{got:?}");
        // Every 40th: one file read per window, 1.5% of its bytes — it narrows, and a narrower
        // window holds none of them, so it ends at the narrowest.
        let n = NeighbourAhead::new(1, MAX);
        let got = read(&n, 0, 4_000, 40_000, 40);
        assert!(got.iter().any(|&w| w > MAX / 16 && w < MAX), "{got:?}");
        assert_eq!(*got.last().unwrap(), MAX / 16, "{got:?}");
    }

    #[test]
    fn bytes_cached_for_another_reason_neither_fetch_nor_count() {
        let n = NeighbourAhead::new(1, MAX);
        assert_eq!(n.first_read(0, 0, 100, Some(&n.wait())), MAX);
        // Far from the window, cached by a profile's replay: no fetch, nothing counted.
        assert_eq!(n.first_read(0, 50_000_000, 50_000_100, None), 0);
        let l = n.layers[0].lock().unwrap();
        assert_eq!(l.recent.len(), 1);
        assert_eq!(l.recent[0].2, 0);
    }

    #[test]
    fn a_miss_while_others_wait_brings_no_neighbours() {
        let n = NeighbourAhead::new(1, MAX);
        let first = n.wait();
        let second = n.wait();
        assert!(first.alone() && !second.alone());
        assert_eq!(n.first_read(0, 0, 100, Some(&second)), 0);
        drop(second);
        assert_eq!(n.first_read(0, 1_000_000, 1_000_100, Some(&first)), MAX);
        drop(first);
        assert!(n.wait().alone(), "a finished wait is no longer counted");
    }

    #[test]
    fn a_zero_max_is_off_and_unknown_slots_fetch_nothing() {
        let off = NeighbourAhead::new(1, 0);
        assert_eq!(off.first_read(0, 0, 100, Some(&off.wait())), 0);
        let on = NeighbourAhead::new(1, MAX);
        assert_eq!(on.first_read(3, 0, 100, Some(&on.wait())), 0);
    }
}
