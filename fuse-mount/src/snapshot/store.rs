//! Persistent snapshot metadata: one JSON document rewritten atomically (temp file, fsync,
//! rename, fsync of the directory) on every change. Small (~100 snapshots), so a full rewrite
//! per mutation is cheap and keeps crash semantics trivial: either the old or the new document.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Info, Kind, Result, SnapshotError, Usage};
use crate::labels::Labels;

const FILE_NAME: &str = "metadata.json";
const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Directory number: `snapshots/<id>/{fs,work}`. Never reused.
    pub id: u64,
    pub kind: Kind,
    pub parent: Option<String>,
    pub labels: Labels,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Frozen at commit time (committed snapshots never change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl Record {
    pub fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_owned(),
            parent: self.parent.clone().unwrap_or_default(),
            kind: self.kind,
            labels: self.labels.clone(),
            created: self.created,
            updated: self.updated,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Document {
    version: u32,
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
}

#[derive(Debug)]
pub struct MetaStore {
    path: PathBuf,
    doc: Document,
}

impl MetaStore {
    /// Opens (or creates, empty) the metadata under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE_NAME);
        let doc = match fs::read(&path) {
            Ok(bytes) => {
                let doc: Document = serde_json::from_slice(&bytes).map_err(|source| {
                    SnapshotError::CorruptMetadata {
                        path: path.clone(),
                        source,
                    }
                })?;
                if doc.version != VERSION {
                    return Err(SnapshotError::FailedPrecondition(format!(
                        "metadata {path:?} has version {}, this teleportd reads {VERSION}",
                        doc.version
                    )));
                }
                doc
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Document {
                version: VERSION,
                next_id: 1,
                snapshots: BTreeMap::new(),
            },
            Err(e) => return Err(SnapshotError::io(format!("reading {path:?}"))(e)),
        };
        Ok(MetaStore { path, doc })
    }

    pub fn get(&self, key: &str) -> Option<&Record> {
        self.doc.snapshots.get(key)
    }

    pub fn require(&self, key: &str) -> Result<&Record> {
        self.get(key)
            .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Record)> {
        self.doc.snapshots.iter()
    }

    pub fn has_children(&self, key: &str) -> bool {
        self.doc
            .snapshots
            .values()
            .any(|r| r.parent.as_deref() == Some(key))
    }

    /// Directory ids of `key`'s ancestors, nearest first (overlay lowerdir order).
    pub fn parent_ids(&self, key: &str) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut cur = self.require(key)?.parent.clone();
        while let Some(p) = cur {
            let rec = self.get(&p).ok_or_else(|| {
                SnapshotError::FailedPrecondition(format!("parent {p:?} of {key:?} is missing"))
            })?;
            ids.push(rec.id);
            // A cycle can only come from a hand-edited file; do not loop forever on it.
            if ids.len() > self.doc.snapshots.len() {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "parent chain of {key:?} has a cycle"
                )));
            }
            cur = rec.parent.clone();
        }
        Ok(ids)
    }

    /// `key`'s ancestors (name, record), nearest first.
    pub fn parent_chain(&self, key: &str) -> Result<Vec<(&String, &Record)>> {
        let mut out = Vec::new();
        let mut cur = self.require(key)?.parent.as_deref();
        while let Some(p) = cur {
            let (name, rec) = self.doc.snapshots.get_key_value(p).ok_or_else(|| {
                SnapshotError::FailedPrecondition(format!("parent {p:?} of {key:?} is missing"))
            })?;
            out.push((name, rec));
            if out.len() > self.doc.snapshots.len() {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "parent chain of {key:?} has a cycle"
                )));
            }
            cur = rec.parent.as_deref();
        }
        Ok(out)
    }

    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.doc.snapshots.values().map(|r| r.id)
    }

    /// Applies `f` to a copy, persists it, and only then makes it current: a failed write leaves
    /// memory and disk unchanged.
    pub fn transact<R>(&mut self, f: impl FnOnce(&mut Txn<'_>) -> Result<R>) -> Result<R> {
        let mut doc = self.doc.clone();
        let r = f(&mut Txn { doc: &mut doc })?;
        write_atomic(&self.path, &doc)?;
        self.doc = doc;
        Ok(r)
    }
}

pub struct Txn<'a> {
    doc: &'a mut Document,
}

impl Txn<'_> {
    pub fn alloc_id(&mut self) -> u64 {
        let id = self.doc.next_id;
        self.doc.next_id = id.saturating_add(1);
        id
    }
    pub fn insert(&mut self, key: String, rec: Record) -> Result<()> {
        if self.doc.snapshots.contains_key(&key) {
            return Err(SnapshotError::AlreadyExists(key));
        }
        self.doc.snapshots.insert(key, rec);
        Ok(())
    }
    pub fn remove(&mut self, key: &str) -> Result<Record> {
        self.doc
            .snapshots
            .remove(key)
            .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))
    }
    pub fn get_mut(&mut self, key: &str) -> Result<&mut Record> {
        self.doc
            .snapshots
            .get_mut(key)
            .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))
    }
}

fn write_atomic(path: &Path, doc: &Document) -> Result<()> {
    let bytes = serde_json::to_vec(doc).map_err(|source| SnapshotError::CorruptMetadata {
        path: path.to_owned(),
        source,
    })?;
    let tmp = path.with_extension("json.tmp");
    let ctx = || format!("writing {tmp:?}");
    let mut f = crate::private::create(&tmp).map_err(SnapshotError::io(ctx()))?;
    f.write_all(&bytes).map_err(SnapshotError::io(ctx()))?;
    f.sync_all().map_err(SnapshotError::io(ctx()))?;
    drop(f);
    fs::rename(&tmp, path).map_err(SnapshotError::io(format!("renaming to {path:?}")))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(SnapshotError::io(format!("syncing {dir:?}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, kind: Kind, parent: Option<&str>) -> Record {
        Record {
            id,
            kind,
            parent: parent.map(str::to_owned),
            labels: Labels::from([("a".into(), id.to_string())]),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::now(),
            usage: None,
        }
    }

    #[test]
    fn persists_across_reopen_and_chains_parents() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = MetaStore::open(dir.path()).unwrap();
        s.transact(|t| {
            let a = t.alloc_id();
            t.insert("a".into(), rec(a, Kind::Committed, None))?;
            let b = t.alloc_id();
            t.insert("b".into(), rec(b, Kind::Committed, Some("a")))?;
            let c = t.alloc_id();
            t.insert("c".into(), rec(c, Kind::Active, Some("b")))
        })
        .unwrap();
        let s2 = MetaStore::open(dir.path()).unwrap();
        assert_eq!(s2.get("c"), s.get("c"));
        assert_eq!(s2.parent_ids("c").unwrap(), vec![2, 1]);
        assert_eq!(s2.parent_ids("a").unwrap(), Vec::<u64>::new());
        assert!(s2.has_children("a"));
        assert!(!s2.has_children("c"));
        // Ids keep counting after a reopen: never reused.
        let mut s2 = s2;
        let id = s2.transact(|t| Ok(t.alloc_id())).unwrap();
        assert_eq!(id, 4);
    }

    #[test]
    fn failed_transaction_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = MetaStore::open(dir.path()).unwrap();
        s.transact(|t| t.insert("a".into(), rec(1, Kind::Active, None)))
            .unwrap();
        let err = s
            .transact(|t| {
                t.remove("a")?;
                t.insert("b".into(), rec(2, Kind::Active, None))?;
                t.insert("b".into(), rec(3, Kind::Active, None))
            })
            .unwrap_err();
        assert!(matches!(err, SnapshotError::AlreadyExists(k) if k == "b"));
        assert!(s.get("a").is_some() && s.get("b").is_none());
        let s2 = MetaStore::open(dir.path()).unwrap();
        assert!(s2.get("a").is_some() && s2.get("b").is_none());
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        assert!(matches!(
            MetaStore::open(dir.path()),
            Err(SnapshotError::CorruptMetadata { .. })
        ));
    }
}
