//! The node's on-disk chunk cache: content-addressed by sha256, so an identical chunk of any
//! layer of any image is stored (and fetched) once.
//!
//! Chunks are appended to pack files, not stored one file each: a cold start writes thousands
//! of 16 KiB chunks at once, and creating that many inodes (right after a recycle deleted as
//! many) made ext4's inode allocator the bottleneck of a whole start (measured: prefetch threads
//! spent >70% in `recently_deleted` / `find_inode_bit`). Each cache instance appends to packs of
//! its own (`ROOT/packs/<id>.dat`) and logs every stored chunk as one line `hex offset len` in
//! `<id>.idx`, written after the bytes; on open, every pack's log is loaded, and a record whose
//! bytes are not all in the data file (a crash mid-write) is ignored. Chunks are verified before
//! they are stored; layer indexes (few, larger) stay one file each (`ROOT/index/<hex>`).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use emulator::Digest;

use super::{Error, Result};

/// A pack is rotated once it holds this much.
const PACK_MAX: u64 = 1 << 30;

/// Where a cached chunk is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    pack: usize,
    offset: u64,
    len: u32,
}

/// The pack this instance appends to.
#[derive(Debug)]
struct Writer {
    pack: usize,
    data: Arc<File>,
    log: Arc<File>,
    len: u64,
}

/// Disk layout: `ROOT/packs/<id>.{dat,idx}`, `ROOT/index/<hex>`, `ROOT/tmp/`.
#[derive(Debug)]
pub struct ChunkCache {
    root: PathBuf,
    /// Every chunk known present, by digest hex.
    known: RwLock<HashMap<String, Loc>>,
    /// Open pack data files, by pack number (this instance's numbering).
    packs: RwLock<Vec<Arc<File>>>,
    writer: Mutex<Option<Writer>>,
    tmp_seq: AtomicU64,
}

impl ChunkCache {
    pub(crate) fn open(root: PathBuf) -> Result<ChunkCache> {
        // 0700 whatever the umask, also when an older teleportd made them wider.
        for p in [
            root.clone(),
            root.join("packs"),
            root.join("index"),
            root.join("tmp"),
        ] {
            crate::private::dir(&p).map_err(|source| Error::Cache { path: p, source })?;
        }
        let cache = ChunkCache {
            root,
            known: RwLock::new(HashMap::new()),
            packs: RwLock::new(Vec::new()),
            writer: Mutex::new(None),
            tmp_seq: AtomicU64::new(0),
        };
        cache.load()?;
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
            packs.push(Arc::new(data));
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
                    known.insert(hex.to_string(), Loc { pack, offset, len });
                }
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
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

    /// Whether the chunk is cached.
    pub fn contains(&self, d: &Digest) -> bool {
        self.loc(d).is_some()
    }

    /// Read `buf.len()` bytes at `offset` inside the cached chunk.
    pub(crate) fn read_chunk(&self, d: &Digest, offset: u64, buf: &mut [u8]) -> Result<()> {
        let missing = |what: &str| Error::Cache {
            path: self.root.join("packs"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("{d}: {what}")),
        };
        let loc = self.loc(d).ok_or_else(|| missing("not cached"))?;
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > u64::from(loc.len)) {
            return Err(missing("read past the chunk"));
        }
        let file = {
            let packs = self.packs.read().unwrap_or_else(|p| p.into_inner());
            packs.get(loc.pack).cloned()
        }
        .ok_or_else(|| missing("pack not open"))?;
        file.read_exact_at(buf, loc.offset + offset)
            .map_err(|source| Error::Cache {
                path: self.root.join("packs"),
                source,
            })
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
        packs.push(Arc::clone(&data));
        Ok(Writer {
            pack: packs.len() - 1,
            data,
            log,
            len: 0,
        })
    }

    /// Store a verified chunk (a no-op when it is cached already).
    pub(crate) fn put_chunk(&self, d: &Digest, bytes: &[u8]) -> Result<()> {
        if self.contains(d) {
            return Ok(());
        }
        let len = u32::try_from(bytes.len()).map_err(|_| Error::Cache {
            path: self.root.join("packs"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "chunk over 4 GiB"),
        })?;
        // Reserve the space under the lock; copy the bytes outside it.
        let (pack, offset, data, log) = {
            let mut slot = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let w = match slot.as_mut() {
                Some(w) if w.len + u64::from(len) <= PACK_MAX => w,
                _ => slot.insert(self.new_pack()?),
            };
            let offset = w.len;
            w.len += u64::from(len);
            (w.pack, offset, Arc::clone(&w.data), Arc::clone(&w.log))
        };
        let path = || self.root.join("packs");
        data.write_all_at(bytes, offset)
            .map_err(|source| Error::Cache {
                path: path(),
                source,
            })?;
        // One short O_APPEND write per record: records never interleave.
        let line = format!("{} {offset} {len}\n", d.hex());
        (&*log)
            .write_all(line.as_bytes())
            .map_err(|source| Error::Cache {
                path: path(),
                source,
            })?;
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(d.hex().to_string(), Loc { pack, offset, len });
        Ok(())
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
            let c = ChunkCache::open(root.clone()).unwrap();
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

        let c = ChunkCache::open(root).unwrap();
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
}
