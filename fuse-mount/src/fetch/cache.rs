//! The node's on-disk chunk cache: content-addressed by sha256, so an identical chunk of any
//! layer of any image is stored (and fetched) once.
//!
//! Chunks are appended to pack files, not stored one file each: a cold start writes thousands
//! of 16 KiB chunks at once, and creating that many inodes (right after a recycle deleted as
//! many) made ext4's inode allocator the bottleneck of a whole start (measured: prefetch threads
//! spent >70% in `recently_deleted` / `find_inode_bit`). Each cache instance appends to packs of
//! its own (`ROOT/packs/<id>.dat`) and logs every stored chunk as one line `hex offset len` in
//! `<id>.idx`, written only after the pack's data is fsynced (records are batched, one fsync per
//! batch); on open, every pack's log is loaded, a record whose bytes are not all in the data file
//! is ignored, and every loaded chunk is verified against its digest on its first read — a
//! torn or rotted record is dropped and fetched again, never served. Chunks are verified before
//! they are stored. With a size cap, whole packs are evicted, least recently used first. Layer
//! indexes (few, larger) stay one file each (`ROOT/index/<hex>`). A chunk the disk cannot take
//! (full, read-only, I/O error) is kept in a bounded in-memory spill instead, so a failing
//! cache disk costs re-fetches, never a read.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use emulator::Digest;

use super::{Error, Result};

/// A pack is rotated once it holds this much (less under a size cap, see [`ChunkCache::open`]).
const PACK_MAX: u64 = 1 << 30;
/// Records wait for one data fsync per this many before their log lines are written.
const LOG_BATCH: usize = 64;
/// Most bytes of chunks held in memory when the disk refuses them (oldest dropped first).
const SPILL_MAX: u64 = 64 << 20;

/// Verified chunks the disk could not store, by digest hex, oldest first.
#[derive(Debug, Default)]
struct Spill {
    chunks: HashMap<String, Arc<Vec<u8>>>,
    order: VecDeque<String>,
    bytes: u64,
}

/// Where a cached chunk is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    pack: usize,
    offset: u64,
    len: u32,
    /// Checked against its digest since this process stored or loaded it: chunks loaded from
    /// disk are verified on their first read (a torn or rotted record is dropped, not served).
    verified: bool,
}

/// One pack file: its data, its record log (packs this instance appends to) and how much and
/// how recently it is used (LRU eviction under a size cap).
#[derive(Debug)]
struct Pack {
    data: Arc<File>,
    log: Option<Arc<File>>,
    base: PathBuf,
    bytes: AtomicU64,
    last_use: AtomicU64,
}

/// The pack this instance appends to.
#[derive(Debug)]
struct Writer {
    pack: usize,
    data: Arc<File>,
    len: u64,
}

/// Disk layout: `ROOT/packs/<id>.{dat,idx}`, `ROOT/index/<hex>`, `ROOT/tmp/`.
#[derive(Debug)]
pub struct ChunkCache {
    root: PathBuf,
    /// Every chunk known present, by digest hex.
    known: RwLock<HashMap<String, Loc>>,
    /// Pack files by number (this instance's numbering); `None` once evicted.
    packs: RwLock<Vec<Option<Arc<Pack>>>>,
    writer: Mutex<Option<Writer>>,
    /// Log lines of stored chunks waiting for their pack's data fsync: (pack, line).
    pending: Mutex<Vec<(usize, String)>>,
    tmp_seq: AtomicU64,
    /// Size cap of the pack files (`None`: unbounded) and what they hold now.
    max_bytes: Option<u64>,
    pack_max: u64,
    total: AtomicU64,
    /// LRU clock.
    tick: AtomicU64,
    spill: Mutex<Spill>,
}

impl Drop for ChunkCache {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "chunk cache: last records not written");
        }
    }
}

impl ChunkCache {
    /// Opens the cache at `root`; with `max_bytes`, the pack files are kept under that size by
    /// evicting whole packs, least recently used first (packs are then at most an eighth of
    /// the cap, so one eviction frees a small share).
    pub(crate) fn open(root: PathBuf, max_bytes: Option<u64>) -> Result<ChunkCache> {
        // 0700 whatever the umask, also when an older teleportd made them wider.
        for p in [
            root.clone(),
            root.join("packs"),
            root.join("index"),
            root.join("tmp"),
        ] {
            crate::private::dir(&p).map_err(|source| Error::Cache { path: p, source })?;
        }
        let pack_max = max_bytes.map_or(PACK_MAX, |m| (m / 8).clamp(16 << 10, PACK_MAX));
        let cache = ChunkCache {
            root,
            known: RwLock::new(HashMap::new()),
            packs: RwLock::new(Vec::new()),
            writer: Mutex::new(None),
            pending: Mutex::new(Vec::new()),
            tmp_seq: AtomicU64::new(0),
            max_bytes,
            pack_max,
            total: AtomicU64::new(0),
            tick: AtomicU64::new(1),
            spill: Mutex::new(Spill::default()),
        };
        cache.load()?;
        cache.enforce_cap();
        Ok(cache)
    }

    /// Loads every pack's log written by earlier (or other) instances.
    fn load(&self) -> Result<()> {
        let dir = self.root.join("packs");
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Cache { path, source }
        };
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        let mut packs = self.packs.write().unwrap_or_else(|p| p.into_inner());
        for entry in fs::read_dir(&dir).map_err(err(&dir))? {
            let log_path = entry.map_err(err(&dir))?.path();
            if log_path.extension().is_none_or(|e| e != "idx") {
                continue;
            }
            let data_path = log_path.with_extension("dat");
            let Ok(data) = File::open(&data_path) else {
                continue;
            };
            for p in [&log_path, &data_path] {
                crate::private::set_mode(p, crate::private::FILE_MODE).map_err(err(p))?;
            }
            let size = data.metadata().map_err(err(&data_path))?.len();
            let text = fs::read_to_string(&log_path).map_err(err(&log_path))?;
            let pack = packs.len();
            packs.push(Some(Arc::new(Pack {
                data: Arc::new(data),
                log: None,
                base: log_path.with_extension(""),
                bytes: AtomicU64::new(size),
                last_use: AtomicU64::new(0),
            })));
            self.total.fetch_add(size, Ordering::Relaxed);
            for line in text.lines() {
                let mut it = line.split(' ');
                let (Some(hex), Some(off), Some(len), None) =
                    (it.next(), it.next(), it.next(), it.next())
                else {
                    continue;
                };
                let (Ok(offset), Ok(len)) = (off.parse::<u64>(), len.parse::<u32>()) else {
                    continue;
                };
                let whole = offset
                    .checked_add(u64::from(len))
                    .is_some_and(|end| end <= size);
                if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && whole {
                    known.insert(
                        hex.to_string(),
                        Loc {
                            pack,
                            offset,
                            len,
                            verified: false,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes the pack files hold now.
    pub fn size(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn index_path(&self, d: &Digest) -> PathBuf {
        self.root.join("index").join(d.hex())
    }

    fn loc(&self, d: &Digest) -> Option<Loc> {
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(d.hex())
            .copied()
    }

    fn pack(&self, n: usize) -> Option<Arc<Pack>> {
        let packs = self.packs.read().unwrap_or_else(|p| p.into_inner());
        packs.get(n).cloned().flatten()
    }

    /// Whether the chunk is cached.
    pub fn contains(&self, d: &Digest) -> bool {
        self.loc(d).is_some() || self.spilled(d).is_some()
    }

    fn spilled(&self, d: &Digest) -> Option<Arc<Vec<u8>>> {
        let spill = self.spill.lock().unwrap_or_else(|p| p.into_inner());
        spill.chunks.get(d.hex()).cloned()
    }

    /// Keeps a verified chunk the disk refused in memory, dropping the oldest over [`SPILL_MAX`].
    fn spill(&self, d: &Digest, bytes: &[u8]) {
        let mut spill = self.spill.lock().unwrap_or_else(|p| p.into_inner());
        if spill.chunks.contains_key(d.hex()) {
            return;
        }
        spill.bytes += bytes.len() as u64;
        spill
            .chunks
            .insert(d.hex().to_string(), Arc::new(bytes.to_vec()));
        spill.order.push_back(d.hex().to_string());
        while spill.bytes > SPILL_MAX {
            let Some(old) = spill.order.pop_front() else {
                break;
            };
            if let Some(b) = spill.chunks.remove(&old) {
                spill.bytes -= b.len() as u64;
            }
        }
    }

    /// Read `buf.len()` bytes at `offset` inside the cached chunk. A chunk loaded from disk is
    /// verified against its digest on its first read; a bad one is dropped and reported as not
    /// cached (the caller fetches it again).
    pub(crate) fn read_chunk(&self, d: &Digest, offset: u64, buf: &mut [u8]) -> Result<()> {
        let missing = |what: &str| Error::Cache {
            path: self.root.join("packs"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("{d}: {what}")),
        };
        let io_err = |source| Error::Cache {
            path: self.root.join("packs"),
            source,
        };
        let Some(loc) = self.loc(d) else {
            let whole = self.spilled(d).ok_or_else(|| missing("not cached"))?;
            let from = usize::try_from(offset).map_err(|_| missing("read past the chunk"))?;
            let part = from
                .checked_add(buf.len())
                .and_then(|to| whole.get(from..to))
                .ok_or_else(|| missing("read past the chunk"))?;
            buf.copy_from_slice(part);
            return Ok(());
        };
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > u64::from(loc.len)) {
            return Err(missing("read past the chunk"));
        }
        let Some(pack) = self.pack(loc.pack) else {
            self.forget(d, loc.pack);
            return Err(missing("pack evicted"));
        };
        pack.last_use
            .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        if !loc.verified {
            let mut whole = vec![0u8; loc.len as usize];
            pack.data
                .read_exact_at(&mut whole, loc.offset)
                .map_err(io_err)?;
            let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
            if Digest::sha256_of(&whole) != *d {
                tracing::warn!(chunk = %d, pack = %pack.base.display(), "cached chunk is corrupt; dropped");
                known.remove(d.hex());
                return Err(missing("corrupt on disk"));
            }
            if let Some(l) = known.get_mut(d.hex()) {
                l.verified = true;
            }
            drop(known);
            let from = offset as usize;
            buf.copy_from_slice(&whole[from..from + buf.len()]);
            return Ok(());
        }
        pack.data
            .read_exact_at(buf, loc.offset + offset)
            .map_err(io_err)
    }

    /// A new pack for this instance (the writer lock is held).
    fn new_pack(&self) -> Result<Writer> {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let base = self
            .root
            .join("packs")
            .join(format!("{}-{nanos}-{seq}", std::process::id()));
        let open = |path: PathBuf, append: bool| {
            crate::private::open_options()
                .create_new(true)
                .read(true)
                .write(!append)
                .append(append)
                .open(&path)
                .map(Arc::new)
                .map_err(|source| Error::Cache { path, source })
        };
        let data = open(base.with_extension("dat"), false)?;
        let log = open(base.with_extension("idx"), true)?;
        let mut packs = self.packs.write().unwrap_or_else(|p| p.into_inner());
        packs.push(Some(Arc::new(Pack {
            data: Arc::clone(&data),
            log: Some(log),
            base,
            bytes: AtomicU64::new(0),
            last_use: AtomicU64::new(self.tick.fetch_add(1, Ordering::Relaxed)),
        })));
        Ok(Writer {
            pack: packs.len() - 1,
            data,
            len: 0,
        })
    }

    /// Store a verified chunk (a no-op when it is cached already). It is readable at once; its
    /// log record, which makes it visible to a later process, is written only after the pack's
    /// data is fsynced (in batches of [`LOG_BATCH`]). When the disk refuses it, it is kept in
    /// the memory spill: a cache failure never fails the read that fetched the chunk.
    pub(crate) fn put_chunk(&self, d: &Digest, bytes: &[u8]) -> Result<()> {
        if self.contains(d) {
            return Ok(());
        }
        if let Err(e) = self.put_chunk_on_disk(d, bytes) {
            tracing::warn!(chunk = %d, error = %e, "chunk cache write failed; kept in memory");
            self.spill(d, bytes);
        }
        Ok(())
    }

    fn put_chunk_on_disk(&self, d: &Digest, bytes: &[u8]) -> Result<()> {
        let len = u32::try_from(bytes.len()).map_err(|_| Error::Cache {
            path: self.root.join("packs"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "chunk over 4 GiB"),
        })?;
        // Reserve the space under the lock; copy the bytes outside it.
        let (pack, offset, data) = {
            let mut slot = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let w = match slot.as_mut() {
                Some(w) if w.len + u64::from(len) <= self.pack_max => w,
                _ => {
                    // The old pack's records go to its log before it is left behind.
                    self.flush()?;
                    slot.insert(self.new_pack()?)
                }
            };
            let offset = w.len;
            w.len += u64::from(len);
            (w.pack, offset, Arc::clone(&w.data))
        };
        let path = || self.root.join("packs");
        data.write_all_at(bytes, offset)
            .map_err(|source| Error::Cache {
                path: path(),
                source,
            })?;
        if let Some(p) = self.pack(pack) {
            p.bytes.fetch_add(u64::from(len), Ordering::Relaxed);
            p.last_use
                .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        }
        self.total.fetch_add(u64::from(len), Ordering::Relaxed);
        {
            let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
            // Not when its pack was evicted while the bytes were written.
            if self.pack(pack).is_some() {
                known.insert(
                    d.hex().to_string(),
                    Loc {
                        pack,
                        offset,
                        len,
                        verified: true,
                    },
                );
            }
        }
        let batch = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.push((pack, format!("{} {offset} {len}\n", d.hex())));
            pending.len() >= LOG_BATCH
        };
        if batch {
            self.flush()?;
        }
        self.enforce_cap();
        Ok(())
    }

    /// Makes the stored chunks durable: fsync each pack's data, then append their records.
    pub(crate) fn flush(&self) -> Result<()> {
        let lines = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut by_pack: HashMap<usize, String> = HashMap::new();
        for (pack, line) in lines {
            by_pack.entry(pack).or_default().push_str(&line);
        }
        for (n, text) in by_pack {
            // An evicted pack's records have nothing left to describe.
            let Some(pack) = self.pack(n) else { continue };
            let Some(log) = &pack.log else { continue };
            let path = || pack.base.with_extension("dat");
            pack.data.sync_data().map_err(|source| Error::Cache {
                path: path(),
                source,
            })?;
            // One O_APPEND write per batch: records never interleave.
            (&**log)
                .write_all(text.as_bytes())
                .map_err(|source| Error::Cache {
                    path: path(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Evicts least recently used packs while the cache is over its cap.
    fn enforce_cap(&self) {
        let Some(max) = self.max_bytes else { return };
        while self.total.load(Ordering::Relaxed) > max {
            let victim = {
                let packs = self.packs.read().unwrap_or_else(|p| p.into_inner());
                packs
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| {
                        p.as_ref().map(|p| (i, p.last_use.load(Ordering::Relaxed)))
                    })
                    .min_by_key(|&(_, t)| t)
                    .map(|(i, _)| i)
            };
            let Some(victim) = victim else { return };
            self.evict(victim);
        }
    }

    /// Forgets chunk `d` if it is still recorded in pack `pack`.
    fn forget(&self, d: &Digest, pack: usize) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if known.get(d.hex()).is_some_and(|l| l.pack == pack) {
            known.remove(d.hex());
        }
    }

    /// Drops pack `n`: its chunks are no longer known and its files are deleted (readers that
    /// already hold it finish on the open file).
    fn evict(&self, n: usize) {
        {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            if w.as_ref().is_some_and(|w| w.pack == n) {
                *w = None;
            }
        }
        let Some(pack) = self
            .packs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(n)
            .and_then(Option::take)
        else {
            return;
        };
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, l| l.pack != n);
        self.total
            .fetch_sub(pack.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        for ext in ["idx", "dat"] {
            let _ = fs::remove_file(pack.base.with_extension(ext));
        }
        tracing::debug!(pack = %pack.base.display(), bytes = pack.bytes.load(Ordering::Relaxed), "chunk pack evicted");
    }

    pub(crate) fn get_index(&self, d: &Digest) -> Option<Vec<u8>> {
        let bytes = fs::read(self.index_path(d)).ok()?;
        // A damaged entry is ignored (and later overwritten), never trusted.
        (Digest::sha256_of(&bytes) == *d).then_some(bytes)
    }

    pub(crate) fn put_index(&self, d: &Digest, bytes: &[u8]) -> Result<()> {
        self.put(&self.index_path(d), bytes)
    }

    fn put(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| Error::Cache {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}-{seq}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = crate::private::create(&tmp)?;
            f.write_all(bytes)?;
            fs::rename(&tmp, path)
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            Error::Cache {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn chunk(n: u8, len: usize) -> (Digest, Vec<u8>) {
        let b = vec![n; len];
        (Digest::sha256_of(&b), b)
    }

    #[test]
    fn chunks_survive_reopen_and_torn_records_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let (d1, b1) = chunk(1, 16384);
        let (d2, b2) = chunk(2, 100);
        let (d3, _) = chunk(3, 10);
        {
            let c = ChunkCache::open(root.clone(), None).unwrap();
            c.put_chunk(&d1, &b1).unwrap();
            c.put_chunk(&d2, &b2).unwrap();
            c.put_chunk(&d1, &b1).unwrap(); // stored once
            let mut buf = vec![0; 50];
            c.read_chunk(&d2, 25, &mut buf).unwrap();
            assert_eq!(buf, vec![2; 50]);
            assert!(c.read_chunk(&d2, 60, &mut buf).is_err(), "past the chunk");
            assert!(!c.contains(&d3));
        }
        // A crash after a record but before its bytes, and a torn last line.
        let log = fs::read_dir(root.join("packs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "idx"))
            .unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 2);
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        write!(f, "{} 999999 10\n{} 0", d3.hex(), d3.hex()).unwrap();

        let c = ChunkCache::open(root, None).unwrap();
        assert!(c.contains(&d1) && c.contains(&d2));
        assert!(!c.contains(&d3), "record without its bytes");
        let mut buf = vec![0; b1.len()];
        c.read_chunk(&d1, 0, &mut buf).unwrap();
        assert_eq!(buf, b1);
        // A second instance appends to a pack of its own.
        let (d4, b4) = chunk(4, 4096);
        c.put_chunk(&d4, &b4).unwrap();
        let mut buf = vec![0; 4096];
        c.read_chunk(&d4, 0, &mut buf).unwrap();
        assert_eq!(buf, b4);
    }

    fn dat_files(root: &Path) -> Vec<PathBuf> {
        fs::read_dir(root.join("packs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "dat"))
            .collect()
    }

    #[test]
    fn a_corrupt_pack_record_is_dropped_on_first_read_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let (d1, b1) = chunk(1, 4096);
        let (d2, b2) = chunk(2, 4096);
        {
            let c = ChunkCache::open(root.clone(), None).unwrap();
            c.put_chunk(&d1, &b1).unwrap();
            c.put_chunk(&d2, &b2).unwrap();
        }
        // Rot one byte of the first chunk on disk.
        let dat = dat_files(&root).pop().unwrap();
        let f = fs::OpenOptions::new().write(true).open(&dat).unwrap();
        f.write_all_at(&[0xff], 100).unwrap();
        let c = ChunkCache::open(root, None).unwrap();
        let mut buf = vec![0; 10];
        assert!(
            c.read_chunk(&d1, 0, &mut buf).is_err(),
            "corrupt chunk served"
        );
        assert!(!c.contains(&d1), "corrupt record dropped");
        c.read_chunk(&d2, 0, &mut buf).unwrap();
        assert_eq!(buf, b2[..10]);
        // Stored again, it is served from its new place.
        c.put_chunk(&d1, &b1).unwrap();
        c.read_chunk(&d1, 95, &mut buf).unwrap();
        assert_eq!(buf, b1[95..105]);
    }

    #[test]
    fn the_cache_stays_under_its_cap_evicting_least_recently_used_packs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let cap = 64 << 10;
        let c = ChunkCache::open(root.clone(), Some(cap)).unwrap();
        let (hot, hot_bytes) = chunk(0, 4096);
        c.put_chunk(&hot, &hot_bytes).unwrap();
        let mut all = Vec::new();
        for n in 1..=60u8 {
            let (d, b) = chunk(n, 4096);
            c.put_chunk(&d, &b).unwrap();
            all.push(d);
            let mut buf = vec![0; 16];
            c.read_chunk(&hot, 0, &mut buf).unwrap();
            let on_disk: u64 = dat_files(&root)
                .iter()
                .map(|p| fs::metadata(p).unwrap().len())
                .sum();
            assert!(
                c.size() <= cap && on_disk <= cap,
                "{} / {on_disk} > {cap}",
                c.size()
            );
        }
        // Packs hold 4 chunks here (an eighth of the cap): the hot chunk's pack stays, with
        // chunks 1..=3; the next pack, the oldest unused, went.
        assert!(c.contains(&hot), "a chunk in use is kept");
        assert!(c.contains(&all[0]));
        assert!(!c.contains(&all[3]), "the oldest unused pack is evicted");
        assert!(c.contains(&all[59]));
        drop(c);
        // Reopened under the same cap, what is left is consistent.
        let c = ChunkCache::open(root, Some(cap)).unwrap();
        assert!(c.size() <= cap);
        let mut buf = vec![0; 4096];
        c.read_chunk(&all[59], 0, &mut buf).unwrap();
        assert_eq!(buf, vec![60; 4096]);
    }
}
