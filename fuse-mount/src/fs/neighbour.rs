//! Neighbour-ahead: whether a small file's first-read miss also fetches the bytes after the
//! file (the files that follow it in the layer's data, in tar order — mostly its directory).
//!
//! Only a reader that waits alone gets them. An interpreter's start opens its modules one
//! after another, each a miss and a round trip, and the files after a module are often the
//! next it opens: one request instead of many. A start that reads in parallel (the fixture's
//! 8 readers) gains little: its misses' waits overlap anyway, and the extra bytes only compete
//! with them for the link and the CPU. Chosen by replaying kept start traces offline
//! (`testbed compare --keep-traces`, `scripts/neighbour-replay.py`): none of a python start's
//! 157 misses overlapped another, 97% of the fixture's did; "alone" keeps python's gain from a
//! fixed window (268 → 109 misses) and the fixture's bytes near none at all (86 MB vs 77 MB
//! without, 279 MB with a fixed window). A per-layer rule that narrowed windows whose bytes
//! went unread was tried too and dropped: on top of "alone" it changed nothing on the fixture
//! and cost the python image misses (most on its one-layer squashed twin).

use std::sync::atomic::{AtomicUsize, Ordering};

/// One mount's neighbour-ahead: the window and the reads waiting on the registry now.
#[derive(Debug)]
pub(crate) struct NeighbourAhead {
    bytes: u64,
    waiting: AtomicUsize,
}

/// A read waiting on the registry, from [`NeighbourAhead::wait`] until dropped.
pub(crate) struct Waiting<'a> {
    count: &'a AtomicUsize,
    alone: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl NeighbourAhead {
    /// `bytes` past a file's end; 0 turns neighbour-ahead off.
    pub(crate) fn new(bytes: u64) -> Self {
        NeighbourAhead {
            bytes,
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

    /// A small file's first read; `miss` is its wait when its first byte is not cached yet.
    /// Returns how many bytes past the file's end its request should also fetch (0: none).
    pub(crate) fn first_read(&self, miss: Option<&Waiting<'_>>) -> u64 {
        match miss {
            Some(w) if w.alone => self.bytes,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 256 << 10;

    #[test]
    fn a_miss_that_waits_alone_brings_its_neighbours() {
        let n = NeighbourAhead::new(MAX);
        assert_eq!(n.first_read(Some(&n.wait())), MAX);
        assert_eq!(n.first_read(None), 0, "a cached first read fetches nothing");
    }

    #[test]
    fn a_miss_while_others_wait_brings_none() {
        let n = NeighbourAhead::new(MAX);
        let first = n.wait();
        let second = n.wait();
        assert_eq!(n.first_read(Some(&second)), 0);
        assert_eq!(n.first_read(Some(&first)), MAX);
        drop(second);
        drop(first);
        assert_eq!(
            n.first_read(Some(&n.wait())),
            MAX,
            "finished waits are no longer counted"
        );
    }

    #[test]
    fn zero_is_off() {
        let n = NeighbourAhead::new(0);
        assert_eq!(n.first_read(Some(&n.wait())), 0);
    }
}
