//! Persistent overlayfs snapshotter with containerd's overlay semantics: every snapshot owns
//! `snapshots/<id>/{fs,work}`; active snapshots mount as overlay (parents as lowerdirs, nearest
//! first) or a rw bind when they have no parent; views mount read-only. containerd performs the
//! mounts itself (we are a proxy plugin); we only describe them.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tracing::{debug, info, warn};

use super::filter::Filter;
use super::remote::{RemoteLayers, RemoteOutcome};
use super::store::{MetaStore, Record};
use super::{FieldPath, Info, Kind, Mount, Result, SnapshotError, Snapshotter, Usage};
use crate::labels::{Labels, LABEL_REMOTE};

/// Cheap-to-clone handle; all state lives in `Inner`.
#[derive(Clone)]
pub struct OverlaySnapshotter {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    store: Mutex<MetaStore>,
    remote: Option<RemoteLayers>,
}

impl OverlaySnapshotter {
    /// Opens (creating if needed) a snapshotter rooted at `root`. `remote` enables the
    /// remote-layer path (on whenever teleportd has `--registry`).
    pub fn open(root: &Path, remote: Option<RemoteLayers>) -> Result<Self> {
        // 0700 (and fixed at start if wider): the FUSE mounts below are `allow_other`.
        for d in [root.to_owned(), root.join("snapshots"), root.join("merged")] {
            crate::private::dir(&d).map_err(SnapshotError::io(format!("creating {d:?}")))?;
        }
        let store = MetaStore::open(root)?;
        info!(root = %root.display(), snapshots = store.iter().count(), "snapshotter opened");
        Ok(OverlaySnapshotter {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                store: Mutex::new(store),
                remote,
            }),
        })
    }

    /// After a restart (per-layer mode): mount every remote snapshot again from its recorded
    /// labels, all at once; mounts a fuse manager that outlived teleportd still serves are left
    /// alone. Failures are logged; such a snapshot stays in metadata (containers on it fail to
    /// start). Merged lowers are mounted on demand by the next Prepare/View/Mounts.
    pub async fn restore_remote(&self) {
        let Some(remote) = &self.inner.remote else {
            return;
        };
        if remote.merged() {
            return;
        }
        let todo: Vec<(PathBuf, Labels)> = self
            .store()
            .iter()
            .filter(|(_, r)| r.labels.contains_key(LABEL_REMOTE))
            .map(|(_, r)| (self.snapshot_dir(r.id).join("fs"), r.labels.clone()))
            .collect();
        if todo.is_empty() {
            return;
        }
        match remote.ensure_layers(&todo).await {
            Ok(()) => info!(snapshots = todo.len(), "remote snapshots mounted"),
            Err(e) => warn!(error = %e, "remote snapshots could not all be re-mounted"),
        }
    }

    /// Clean stop: unmount remote layers (after gRPC has stopped).
    pub async fn shutdown(&self) {
        if let Some(remote) = &self.inner.remote {
            remote.unmount_all().await;
        }
    }

    /// Fetch counters per live remote mount (empty without the remote path).
    pub async fn mount_stats(&self) -> Vec<(PathBuf, crate::fetch::CountersSnapshot)> {
        match &self.inner.remote {
            Some(r) => r.stats().await,
            None => Vec::new(),
        }
    }

    /// The fuse manager's latency histograms as OpenMetrics families ("" without remote).
    pub async fn mount_timings(&self) -> String {
        match &self.inner.remote {
            Some(r) => r.timings().await,
            None => String::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn store(&self) -> MutexGuard<'_, MetaStore> {
        // A panic while holding the lock cannot leave the store half-written (transact swaps
        // only after a successful write), so a poisoned lock is still consistent.
        self.inner
            .store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        snapshot_dir(&self.inner.root, id)
    }

    fn mounts_of(&self, store: &MetaStore, key: &str) -> Result<(Vec<Mount>, Needs)> {
        let rec = store.require(key)?;
        let parents = store.parent_ids(key)?;
        let fs_of = |id: u64| self.snapshot_dir(id).join("fs").display().to_string();
        let merged_mode = self.inner.remote.as_ref().is_some_and(|r| r.merged());
        if !merged_mode {
            let lowers: Vec<String> = parents.iter().map(|&p| fs_of(p)).collect();
            // Per-layer mode attaches remote layers on first use: every remote lower of this
            // snapshot is mounted (all at once) before its mounts are handed out.
            let mut needs = Needs::default();
            if self.inner.remote.is_some() {
                for (_, r) in store.parent_chain(key)? {
                    if r.labels.contains_key(LABEL_REMOTE) {
                        needs
                            .layers
                            .push((self.snapshot_dir(r.id).join("fs"), r.labels.clone()));
                    }
                }
            }
            return Ok((
                mounts_for(&self.inner.root, rec.kind, rec.id, &lowers),
                needs,
            ));
        }
        // Merged mode: the bottom run of remote layers is one FUSE mount of their merged tree.
        // Remote layers above a local one (an image sharing a base that was unpacked locally)
        // keep per-layer mounts: their whiteouts must still hide files of the local layers.
        let chain = store.parent_chain(key)?;
        let is_remote = |r: &Record| r.labels.contains_key(LABEL_REMOTE);
        let split = chain
            .iter()
            .rposition(|(_, r)| !is_remote(r))
            .map_or(0, |i| i + 1);
        let mut needs = Needs::default();
        let mut lowers = Vec::with_capacity(split.saturating_add(1));
        for (_, r) in &chain[..split] {
            if is_remote(r) {
                let dir = self.snapshot_dir(r.id).join("fs");
                needs.layers.push((dir, r.labels.clone()));
            }
            lowers.push(fs_of(r.id));
        }
        if let Some((_, top)) = chain.get(split) {
            let dir = self.merged_dir(top.id);
            lowers.push(dir.display().to_string());
            let layers = chain[split..]
                .iter()
                .rev()
                .map(|(_, r)| r.labels.clone())
                .collect();
            needs.merged = Some((dir, layers));
        }
        Ok((
            mounts_for(&self.inner.root, rec.kind, rec.id, &lowers),
            needs,
        ))
    }

    fn merged_dir(&self, top_id: u64) -> PathBuf {
        self.inner.root.join("merged").join(top_id.to_string())
    }

    /// Mounts for `key`, making sure the remote lowers it needs are mounted.
    async fn mounts_ready(&self, key: &str) -> Result<Vec<Mount>> {
        let (mounts, needs) = {
            let store = self.store();
            self.mounts_of(&store, key)?
        };
        // Refused before anything is attached: such a stack could never be mounted, and
        // attaching hundreds of FUSE layers first would only delay the error.
        let lowers = overlay_lowers(&mounts);
        if lowers > OVERLAY_MAX_LOWERS {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} needs {lowers} overlay lower layers but overlayfs stacks at \
                 most {OVERLAY_MAX_LOWERS}: squash the image, or (remote layers) run teleportd \
                 with --mount-mode merged, which mounts a whole image as one lower layer"
            )));
        }
        let Some(remote) = &self.inner.remote else {
            return Ok(mounts);
        };
        remote.ensure_layers(&needs.layers).await?;
        if let Some((dir, layers)) = &needs.merged {
            fs::create_dir_all(dir).map_err(SnapshotError::io(format!("creating {dir:?}")))?;
            remote.ensure_merged(layers, dir).await?;
        }
        Ok(mounts)
    }

    /// Prepare/View: a new snapshot on top of committed `parent`.
    fn create(&self, kind: Kind, key: String, parent: String, labels: Labels) -> Result<()> {
        if key.is_empty() {
            return Err(SnapshotError::InvalidArgument("empty snapshot key".into()));
        }
        let parent = (!parent.is_empty()).then_some(parent);
        let mut store = self.store();
        if store.get(&key).is_some() {
            return Err(SnapshotError::AlreadyExists(key));
        }
        if let Some(p) = &parent {
            let prec = store.require(p)?;
            if prec.kind != Kind::Committed {
                return Err(SnapshotError::InvalidArgument(format!(
                    "parent {p:?} is not a committed snapshot"
                )));
            }
        }
        let now = SystemTime::now();
        self.transact_with_dirs(&mut store, kind, |t, id| {
            let rec = Record {
                id,
                kind,
                parent,
                labels,
                created: now,
                updated: now,
                usage: None,
            };
            t.insert(key.clone(), rec)
        })?;
        debug!(%key, ?kind, "snapshot created");
        Ok(())
    }

    /// Allocates an id, makes its directories and records the snapshot `f` inserts, in one
    /// metadata transaction. Any failure — `f`'s or the metadata write's — removes the
    /// directories again, and leftovers of an earlier failure under the same id (the id was
    /// not persisted, so it is handed out again) are cleared first: a failed write never
    /// wedges the next Prepare.
    fn transact_with_dirs<R>(
        &self,
        store: &mut MetaStore,
        kind: Kind,
        f: impl FnOnce(&mut super::store::Txn<'_>, u64) -> Result<R>,
    ) -> Result<R> {
        let mut made: Option<PathBuf> = None;
        let r = store.transact(|t| {
            let id = t.alloc_id();
            let dir = self.snapshot_dir(id);
            make_dirs(&dir, kind)?;
            made = Some(dir);
            f(t, id)
        });
        if let (Err(_), Some(dir)) = (&r, made) {
            if let Err(e) = fs::remove_dir_all(&dir) {
                warn!(dir = %dir.display(), error = %e, "leaving dir of a failed create for cleanup");
            }
        }
        r
    }

    /// Creates committed snapshot `name` directly (remote layers: nothing to unpack).
    fn create_committed(&self, name: &str, parent: &str, labels: Labels) -> Result<u64> {
        let mut store = self.store();
        if store.get(name).is_some() {
            return Err(SnapshotError::AlreadyExists(name.to_owned()));
        }
        let parent = (!parent.is_empty()).then(|| parent.to_owned());
        if let Some(p) = &parent {
            store.require(p)?;
        }
        let now = SystemTime::now();
        self.transact_with_dirs(&mut store, Kind::Committed, |t, id| {
            t.insert(
                name.to_owned(),
                Record {
                    id,
                    kind: Kind::Committed,
                    parent,
                    labels,
                    created: now,
                    updated: now,
                    usage: Some(Usage::default()),
                },
            )?;
            Ok(id)
        })
    }

    async fn prepare_impl(
        &self,
        key: String,
        parent: String,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        if let Some(remote) = &self.inner.remote {
            match remote.decide(&labels).await {
                RemoteOutcome::Remote { target, layer }
                    if remote
                        .verify(&layer, &target, &parent)
                        .await
                        .inspect_err(|why| {
                            warn!(%target, layer = %layer.digest, reason = %why,
                                "remote layer refused: unpacking it normally (containerd checks its diff ID)");
                        })
                        .is_ok() =>
                {
                    // A layer the registry cannot serve fails the pull, never a later start.
                    remote.validate(&layer)?;
                    let mut l = labels.clone();
                    l.insert(LABEL_REMOTE.into(), "true".into());
                    // Nothing is mounted at pull time: the layer is attached when a container
                    // first needs it (`mounts_ready`), all of an image's layers at once, so a
                    // pull costs one metadata write per layer whatever the layer count.
                    match self.create_committed(&target, &parent, l) {
                        Ok(_) => {
                            info!(%target, layer = %layer.digest, "remote layer recorded");
                        }
                        // Someone already has it: that is what AlreadyExists tells containerd.
                        Err(SnapshotError::AlreadyExists(_)) => {}
                        Err(e) => return Err(e),
                    }
                    return Err(SnapshotError::AlreadyExists(target));
                }
                RemoteOutcome::Local | RemoteOutcome::Remote { .. } => {}
            }
        }
        let this = self.clone();
        let k = key.clone();
        blocking(move || this.create(Kind::Active, k, parent, labels)).await?;
        self.mounts_ready(&key).await
    }

    async fn remove_impl(&self, key: String) -> Result<()> {
        let has_children = |store: &MetaStore| -> Result<()> {
            if store.has_children(&key) {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?}: it has children"
                )));
            }
            Ok(())
        };
        let rec = {
            let store = self.store();
            let rec = store.require(&key)?.clone();
            has_children(&store)?;
            rec
        };
        let dir = self.snapshot_dir(rec.id);
        // Unmount first: a mount that cannot be taken away keeps its metadata, so a retried
        // Remove (or the next start's restore) still knows it; deleting the record first would
        // orphan the mount.
        if let (Some(remote), true) = (&self.inner.remote, rec.labels.contains_key(LABEL_REMOTE)) {
            remote.unmount_layer(&dir.join("fs")).await?;
            let merged = self.merged_dir(rec.id);
            remote.unmount_layer(&merged).await?;
            let _ = fs::remove_dir(&merged);
        }
        {
            let mut store = self.store();
            has_children(&store)?;
            store.transact(|t| {
                let r = t.remove(&key)?;
                if r.id != rec.id {
                    return Err(SnapshotError::FailedPrecondition(format!(
                        "snapshot {key:?} changed during remove"
                    )));
                }
                Ok(())
            })?;
        }
        // Metadata is authoritative; a directory we fail to delete now is an orphan Cleanup
        // removes later (ids are never reused).
        blocking(move || {
            if let Err(e) = fs::remove_dir_all(&dir) {
                warn!(dir = %dir.display(), error = %e, "leaving orphan snapshot dir for cleanup");
            }
            Ok(())
        })
        .await?;
        debug!(%key, "snapshot removed");
        Ok(())
    }
}

fn snapshot_dir(root: &Path, id: u64) -> PathBuf {
    root.join("snapshots").join(id.to_string())
}

fn make_dirs(dir: &Path, kind: Kind) -> Result<()> {
    // Ids are never reused once recorded: anything here is the leftover of a failed create.
    match fs::remove_dir_all(dir) {
        Ok(()) => warn!(dir = %dir.display(), "removed leftover dir of a failed create"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(SnapshotError::io(format!("clearing {dir:?}"))(e)),
    }
    let fs_dir = dir.join("fs");
    crate::private::dir(dir).map_err(SnapshotError::io(format!("creating {dir:?}")))?;
    // The upper dir is the container's `/`: 0755 like containerd's overlay, whatever the
    // umask (the snapshot dir above it is 0700).
    let mk = |d: &Path, mode: u32| {
        fs::create_dir(d)
            .and_then(|()| crate::private::set_mode(d, mode))
            .map_err(SnapshotError::io(format!("creating {d:?}")))
    };
    mk(&fs_dir, 0o755)?;
    if kind == Kind::Active {
        mk(&dir.join("work"), 0o700)?;
    }
    Ok(())
}

/// Lower layers one overlayfs mount can stack (the kernel's `OVL_MAX_STACK`).
pub const OVERLAY_MAX_LOWERS: usize = 500;

/// The number of lower directories of the overlay mount among `mounts` (0 without one).
fn overlay_lowers(mounts: &[Mount]) -> usize {
    mounts
        .iter()
        .flat_map(|m| m.options.iter())
        .filter_map(|o| o.strip_prefix("lowerdir="))
        .map(|l| l.split(':').count())
        .max()
        .unwrap_or(0)
}

/// The mounts containerd's overlay snapshotter would return for a snapshot `id` of `kind` whose
/// lower directories (its ancestors' trees, nearest first) are `lowers`.
pub fn mounts_for(root: &Path, kind: Kind, id: u64, lowers: &[String]) -> Vec<Mount> {
    let fs_of = |id: u64| snapshot_dir(root, id).join("fs").display().to_string();
    let bind = |source: String, ro: bool| Mount {
        kind: "bind".into(),
        source,
        options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
    };
    match (kind, lowers) {
        (Kind::Active, []) => vec![bind(fs_of(id), false)],
        // Overlay needs at least two lower dirs without an upper: one parent is a plain ro bind.
        (Kind::View | Kind::Committed, []) => vec![bind(fs_of(id), true)],
        (Kind::View | Kind::Committed, [only]) => vec![bind(only.clone(), true)],
        (_, lowers) => {
            let mut options = vec!["index=off".to_string()];
            if kind == Kind::Active {
                let dir = snapshot_dir(root, id);
                options.push(format!("workdir={}", dir.join("work").display()));
                options.push(format!("upperdir={}", dir.join("fs").display()));
            }
            options.push(format!("lowerdir={}", lowers.join(":")));
            vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options,
            }]
        }
    }
}

/// Remote mounts a snapshot's lowers need in merged mode.
#[derive(Default)]
struct Needs {
    /// The bottom run of remote layers: mount dir and labels, bottom → top.
    merged: Option<(PathBuf, Vec<Labels>)>,
    /// Remote layers above a local one: per-layer mounts at their `fs` dirs.
    layers: Vec<(PathBuf, Labels)>,
}

/// Disk usage like containerd's `fs.DiskUsage`: allocated blocks and inodes, hard links counted
/// once, symlinks not followed.
pub fn disk_usage(dir: &Path) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let md =
            fs::symlink_metadata(&path).map_err(SnapshotError::io(format!("stat {path:?}")))?;
        if seen.insert((md.dev(), md.ino())) {
            usage.inodes = usage.inodes.saturating_add(1);
            let bytes = i64::try_from(md.blocks().saturating_mul(512)).unwrap_or(i64::MAX);
            usage.size = usage.size.saturating_add(bytes);
        }
        if md.is_dir() {
            for e in fs::read_dir(&path).map_err(SnapshotError::io(format!("reading {path:?}")))? {
                stack.push(
                    e.map_err(SnapshotError::io(format!("reading {path:?}")))?
                        .path(),
                );
            }
        }
    }
    Ok(usage)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SnapshotError::Io {
            context: "snapshot worker".into(),
            source: std::io::Error::other(e),
        })?
}

impl Snapshotter for OverlaySnapshotter {
    async fn prepare(&self, key: String, parent: String, labels: Labels) -> Result<Vec<Mount>> {
        let started = std::time::Instant::now();
        let r = self.prepare_impl(key, parent, labels).await;
        crate::timing::daemon().prepare(started);
        r
    }

    async fn view(&self, key: String, parent: String, labels: Labels) -> Result<Vec<Mount>> {
        let this = self.clone();
        let k = key.clone();
        blocking(move || this.create(Kind::View, k, parent, labels)).await?;
        self.mounts_ready(&key).await
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>> {
        self.mounts_ready(&key).await
    }

    async fn commit(&self, name: String, key: String, labels: Labels) -> Result<()> {
        if name.is_empty() {
            return Err(SnapshotError::InvalidArgument("empty commit name".into()));
        }
        let id = {
            let store = self.store();
            let rec = store.require(&key)?;
            if rec.kind != Kind::Active {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            if store.get(&name).is_some() {
                return Err(SnapshotError::AlreadyExists(name));
            }
            rec.id
        };
        // Measured outside the lock: du of a big layer takes a while. Commit freezes the tree.
        let fs_dir = self.snapshot_dir(id).join("fs");
        let usage = blocking(move || disk_usage(&fs_dir)).await?;
        let now = SystemTime::now();
        let mut store = self.store();
        store.transact(|t| {
            let mut rec = t.remove(&key)?;
            if rec.id != id || rec.kind != Kind::Active {
                // Removed and re-prepared while we measured.
                return Err(SnapshotError::FailedPrecondition(format!(
                    "snapshot {key:?} changed during commit"
                )));
            }
            rec.kind = Kind::Committed;
            rec.labels = labels;
            rec.created = now;
            rec.updated = now;
            rec.usage = Some(usage);
            t.insert(name.clone(), rec)
        })?;
        debug!(%key, %name, "snapshot committed");
        Ok(())
    }

    async fn remove(&self, key: String) -> Result<()> {
        self.remove_impl(key).await
    }

    async fn stat(&self, key: String) -> Result<Info> {
        Ok(self.store().require(&key)?.info(&key))
    }

    async fn update(&self, info: Info, fields: Vec<FieldPath>) -> Result<Info> {
        let key = info.name.clone();
        let mut store = self.store();
        store.transact(|t| {
            let rec = t.get_mut(&key)?;
            if fields.is_empty() {
                rec.labels = info.labels;
            } else {
                for f in &fields {
                    match f {
                        FieldPath::Labels => rec.labels = info.labels.clone(),
                        FieldPath::Label(l) => match info.labels.get(l) {
                            Some(v) if !v.is_empty() => {
                                rec.labels.insert(l.clone(), v.clone());
                            }
                            _ => {
                                rec.labels.remove(l);
                            }
                        },
                    }
                }
            }
            rec.updated = SystemTime::now();
            Ok(rec.info(&key))
        })
    }

    async fn list(&self, filters: Vec<String>) -> Result<Vec<Info>> {
        let filter = Filter::parse(&filters)?;
        let store = self.store();
        Ok(store
            .iter()
            .map(|(k, r)| r.info(k))
            .filter(|i| filter.matches(i))
            .collect())
    }

    async fn usage(&self, key: String) -> Result<Usage> {
        let (kind, id, frozen) = {
            let store = self.store();
            let r = store.require(&key)?;
            (r.kind, r.id, r.usage)
        };
        match (kind, frozen) {
            (Kind::Active, _) => {
                let fs_dir = self.snapshot_dir(id).join("fs");
                blocking(move || disk_usage(&fs_dir)).await
            }
            (_, usage) => Ok(usage.unwrap_or_default()),
        }
    }

    async fn cleanup(&self) -> Result<()> {
        let orphans: Vec<PathBuf> = {
            // Under the lock: create() makes directories and records them under it too.
            let store = self.store();
            let live: HashSet<u64> = store.ids().collect();
            let dir = self.inner.root.join("snapshots");
            let mut out = Vec::new();
            for e in fs::read_dir(&dir).map_err(SnapshotError::io(format!("reading {dir:?}")))? {
                let e = e.map_err(SnapshotError::io(format!("reading {dir:?}")))?;
                let keep = e
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|id| live.contains(&id));
                if !keep {
                    out.push(e.path());
                }
            }
            out
        };
        blocking(move || {
            for p in orphans {
                info!(dir = %p.display(), "removing orphan snapshot dir");
                let r = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                r.map_err(SnapshotError::io(format!("removing {p:?}")))?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn mount_computation_matches_containerd_overlay() {
        let r = Path::new("/r");
        let lw = |ids: &[u64]| -> Vec<String> {
            ids.iter().map(|i| format!("/r/snapshots/{i}/fs")).collect()
        };
        let bind = |s: &str, ro: &str| Mount {
            kind: "bind".into(),
            source: s.into(),
            options: vec![ro.into(), "rbind".into()],
        };
        assert_eq!(
            mounts_for(r, Kind::Active, 1, &[]),
            vec![bind("/r/snapshots/1/fs", "rw")]
        );
        assert_eq!(
            mounts_for(r, Kind::View, 4, &lw(&[3])),
            vec![bind("/r/snapshots/3/fs", "ro")]
        );
        assert_eq!(
            mounts_for(r, Kind::View, 4, &[]),
            vec![bind("/r/snapshots/4/fs", "ro")]
        );
        let m = mounts_for(r, Kind::Active, 9, &lw(&[3, 2, 1]));
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].kind.as_str(), m[0].source.as_str()),
            ("overlay", "overlay")
        );
        assert_eq!(
            m[0].options,
            vec![
                "index=off",
                "workdir=/r/snapshots/9/work",
                "upperdir=/r/snapshots/9/fs",
                "lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs:/r/snapshots/1/fs",
            ]
        );
        let v = mounts_for(r, Kind::View, 9, &lw(&[3, 2]));
        assert_eq!(
            v[0].options,
            vec!["index=off", "lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs"]
        );
        assert_eq!(overlay_lowers(&m), 3);
        assert_eq!(overlay_lowers(&mounts_for(r, Kind::Active, 1, &[])), 0);
        let many: Vec<u64> = (1..=600).collect();
        assert_eq!(
            overlay_lowers(&mounts_for(r, Kind::Active, 601, &lw(&many))),
            600
        );
    }

    #[tokio::test]
    async fn a_stack_deeper_than_overlayfs_allows_is_refused_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = OverlaySnapshotter::open(dir.path(), None).unwrap();
        let mut parent = String::new();
        for i in 0..=OVERLAY_MAX_LOWERS {
            let key = format!("l{i}");
            s.prepare(format!("a{i}"), parent.clone(), labels(&[]))
                .await
                .unwrap();
            s.commit(key.clone(), format!("a{i}"), labels(&[]))
                .await
                .unwrap();
            parent = key;
        }
        let e = s
            .prepare("c".into(), parent, labels(&[]))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SnapshotError::FailedPrecondition(_)), "{e}");
        assert!(
            msg.contains("501") && msg.contains("500") && msg.contains("merged"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn lifecycle_semantics_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let s = OverlaySnapshotter::open(dir.path(), None).unwrap();
        let m = s
            .prepare("a-active".into(), "".into(), labels(&[]))
            .await
            .unwrap();
        assert_eq!(m[0].kind, "bind");
        let upper = PathBuf::from(&m[0].source);
        fs::write(upper.join("f"), vec![7u8; 10_000]).unwrap();
        // Key collision.
        assert!(matches!(
            s.prepare("a-active".into(), "".into(), labels(&[])).await,
            Err(SnapshotError::AlreadyExists(_))
        ));
        // Parent must exist and be committed.
        assert!(matches!(
            s.prepare("x".into(), "nope".into(), labels(&[])).await,
            Err(SnapshotError::NotFound(_))
        ));
        assert!(matches!(
            s.prepare("x".into(), "a-active".into(), labels(&[])).await,
            Err(SnapshotError::InvalidArgument(_))
        ));
        let active_usage = s.usage("a-active".into()).await.unwrap();
        assert_eq!(active_usage.inodes, 2);
        assert!(active_usage.size >= 10_000);
        s.commit("a".into(), "a-active".into(), labels(&[("l", "1")]))
            .await
            .unwrap();
        assert!(matches!(
            s.stat("a-active".into()).await,
            Err(SnapshotError::NotFound(_))
        ));
        let a = s.stat("a".into()).await.unwrap();
        assert_eq!((a.kind, a.parent.as_str()), (Kind::Committed, ""));
        assert_eq!(a.labels, labels(&[("l", "1")]));
        assert_eq!(s.usage("a".into()).await.unwrap(), active_usage);
        // Committing a committed snapshot is a precondition failure.
        assert!(matches!(
            s.commit("z".into(), "a".into(), labels(&[])).await,
            Err(SnapshotError::FailedPrecondition(_))
        ));

        s.prepare("b-active".into(), "a".into(), labels(&[]))
            .await
            .unwrap();
        s.commit("b".into(), "b-active".into(), labels(&[]))
            .await
            .unwrap();
        let m = s
            .prepare("c".into(), "b".into(), labels(&[]))
            .await
            .unwrap();
        assert_eq!(m[0].kind, "overlay");
        let v = s.view("v".into(), "a".into(), labels(&[])).await.unwrap();
        assert_eq!(
            v,
            vec![Mount {
                kind: "bind".into(),
                source: upper.display().to_string(),
                options: vec!["ro".into(), "rbind".into()]
            }]
        );
        assert_eq!(s.mounts("c".into()).await.unwrap(), m);
        assert_eq!(s.stat("v".into()).await.unwrap().kind, Kind::View);

        // Update: single label set/delete, whole-map replace, updated time moves.
        let mut i = s.stat("b".into()).await.unwrap();
        i.labels = labels(&[("x", "1"), ("y", "2")]);
        let u = s
            .update(i.clone(), vec![FieldPath::Label("x".into())])
            .await
            .unwrap();
        assert_eq!(u.labels, labels(&[("x", "1")]));
        i.labels = labels(&[]);
        let u = s
            .update(i.clone(), vec![FieldPath::Label("x".into())])
            .await
            .unwrap();
        assert_eq!(u.labels, labels(&[]));
        i.labels = labels(&[("k", "v")]);
        let u = s.update(i, vec![]).await.unwrap();
        assert_eq!(u.labels, labels(&[("k", "v")]));
        assert!(u.updated >= u.created);

        // Remove refuses parents with children.
        assert!(matches!(
            s.remove("b".into()).await,
            Err(SnapshotError::FailedPrecondition(_))
        ));
        let names = |v: Vec<Info>| {
            let mut n: Vec<String> = v.into_iter().map(|i| i.name).collect();
            n.sort();
            n
        };
        assert_eq!(names(s.list(vec![]).await.unwrap()), ["a", "b", "c", "v"]);
        assert_eq!(
            names(s.list(vec!["parent==a".into()]).await.unwrap()),
            ["b", "v"]
        );

        // Persistence: a second instance on the same root sees the same snapshots.
        drop(s);
        let s = OverlaySnapshotter::open(dir.path(), None).unwrap();
        assert_eq!(names(s.list(vec![]).await.unwrap()), ["a", "b", "c", "v"]);
        assert_eq!(s.stat("a".into()).await.unwrap(), a);
        for k in ["c", "v", "b", "a"] {
            s.remove(k.into()).await.unwrap();
        }
        assert!(s.list(vec![]).await.unwrap().is_empty());
        assert_eq!(
            fs::read_dir(dir.path().join("snapshots")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn failed_metadata_write_does_not_wedge_the_next_prepare() {
        let dir = tempfile::tempdir().unwrap();
        let s = OverlaySnapshotter::open(dir.path(), None).unwrap();
        // A directory where the metadata temp file goes: the write fails after mkdir.
        let tmp = dir.path().join("metadata.json.tmp");
        fs::create_dir(&tmp).unwrap();
        assert!(matches!(
            s.prepare("k".into(), "".into(), labels(&[])).await,
            Err(SnapshotError::Io { .. })
        ));
        assert!(s.stat("k".into()).await.is_err());
        fs::remove_dir(&tmp).unwrap();
        // The same id is handed out again; its leftover dirs must not get in the way.
        let m = s.prepare("k".into(), "".into(), labels(&[])).await.unwrap();
        assert_eq!(m[0].kind, "bind");
        s.commit("c".into(), "k".into(), labels(&[])).await.unwrap();
        let m = s.prepare("k2".into(), "c".into(), labels(&[])).await;
        assert!(m.is_ok(), "{m:?}");
        // And a leftover of an id that was never recorded is cleared the same way.
        fs::create_dir_all(dir.path().join("snapshots/3/work")).unwrap();
        s.prepare("k3".into(), "c".into(), labels(&[]))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn cleanup_removes_only_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let s = OverlaySnapshotter::open(dir.path(), None).unwrap();
        s.prepare("k".into(), "".into(), labels(&[])).await.unwrap();
        fs::create_dir_all(dir.path().join("snapshots/999/fs/x")).unwrap();
        fs::create_dir_all(dir.path().join("snapshots/junk")).unwrap();
        s.cleanup().await.unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["1"]);
    }

    mod remote_path {
        //! The remote decision with test doubles for the registry and the (not yet built) FUSE
        //! mounter: what the snapshotter does with their answers.
        use super::*;
        use crate::fetch::MountStatus;
        use crate::labels::{
            LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER_DIGEST, LABEL_CRI_MANIFEST_DIGEST,
            LABEL_TARGET_REF,
        };
        use crate::remote::{ImageRef, LayerMounter, LayerRef, RemoteError, RemoteResolver};
        use crate::snapshot::remote::RemoteLayers;
        use futures::future::BoxFuture;
        use std::sync::atomic::{AtomicUsize, Ordering};

        const M_REMOTE: &str =
            "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        const M_LOCAL: &str =
            "sha256:2222222222222222222222222222222222222222222222222222222222222222";

        struct Registry {
            calls: AtomicUsize,
        }
        impl RemoteResolver for Registry {
            fn resolve<'a>(
                &'a self,
                image: &'a ImageRef,
            ) -> BoxFuture<'a, crate::remote::Result<MountStatus>> {
                self.calls.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    Ok(if image.manifest == M_REMOTE {
                        MountStatus::Ready(Arc::new(crate::fetch::MountInfo {
                            schema_version: 1,
                            repository: image.repo.clone(),
                            manifest_digest: M_REMOTE.parse().unwrap(),
                            format_version: 1,
                            layers: vec![],
                            media_type: None,
                            manifests: vec![],
                        }))
                    } else {
                        MountStatus::NotEnabled
                    })
                })
            }
        }
        struct Mounter;
        impl LayerMounter for Mounter {
            // The doubles' /mount answer lists no layers: every layer but "broken" is served.
            fn validate(&self, layer: &LayerRef) -> crate::remote::Result<()> {
                if layer.digest == "sha256:broken" {
                    return Err(RemoteError::Layer {
                        digest: layer.digest.clone(),
                        manifest: layer.image.manifest.clone(),
                        reason: "no such layer".into(),
                    });
                }
                Ok(())
            }
            fn mount_layer<'a>(
                &'a self,
                layer: &'a LayerRef,
                target: &'a Path,
            ) -> BoxFuture<'a, crate::remote::Result<()>> {
                Box::pin(async move {
                    if layer.digest == "sha256:broken" {
                        return Err(RemoteError::Layer {
                            digest: layer.digest.clone(),
                            manifest: layer.image.manifest.clone(),
                            reason: "no such layer".into(),
                        });
                    }
                    fs::write(target.join("layer"), &layer.digest).unwrap();
                    Ok(())
                })
            }
            fn unmount_layer<'a>(
                &'a self,
                target: &'a Path,
            ) -> BoxFuture<'a, crate::remote::Result<()>> {
                Box::pin(async move {
                    if target.join("busy").exists() {
                        return Err(RemoteError::Layer {
                            digest: String::new(),
                            manifest: String::new(),
                            reason: "target is busy".into(),
                        });
                    }
                    let _ = fs::remove_file(target.join("layer"));
                    let _ = fs::remove_file(target.join("merged"));
                    Ok(())
                })
            }
            fn mount_merged<'a>(
                &'a self,
                layers: &'a [LayerRef],
                target: &'a Path,
            ) -> BoxFuture<'a, crate::remote::Result<()>> {
                Box::pin(async move {
                    let order: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
                    fs::write(target.join("merged"), order.join(",")).unwrap();
                    Ok(())
                })
            }
            fn unmount_all(&self) -> BoxFuture<'_, ()> {
                Box::pin(async {})
            }
            fn is_mounted<'a>(&'a self, target: &'a Path) -> BoxFuture<'a, bool> {
                let m = target.join("layer").exists() || target.join("merged").exists();
                Box::pin(async move { m })
            }
        }

        fn cri(manifest: &str, layer: &str, target: &str) -> Labels {
            labels(&[
                (LABEL_TARGET_REF, target),
                (LABEL_CRI_LAYER_DIGEST, layer),
                (LABEL_CRI_IMAGE_REF, "127.0.0.1:5000/team/app:v1"),
                (LABEL_CRI_MANIFEST_DIGEST, manifest),
            ])
        }

        fn setup() -> (tempfile::TempDir, OverlaySnapshotter, Arc<Registry>) {
            setup_mode(false)
        }

        fn setup_mode(merged: bool) -> (tempfile::TempDir, OverlaySnapshotter, Arc<Registry>) {
            let dir = tempfile::tempdir().unwrap();
            let reg = Arc::new(Registry {
                calls: AtomicUsize::new(0),
            });
            let remote = RemoteLayers::new(reg.clone(), Arc::new(Mounter), merged);
            let s = OverlaySnapshotter::open(dir.path(), Some(remote)).unwrap();
            (dir, s, reg)
        }

        #[tokio::test]
        async fn remote_image_commits_under_target_and_answers_already_exists() {
            let (_d, s, reg) = setup();
            let e = s
                .prepare(
                    "ns/1/extract-1 c1".into(),
                    "".into(),
                    cri(M_REMOTE, "sha256:l1", "c1"),
                )
                .await
                .unwrap_err();
            assert!(
                matches!(e, SnapshotError::AlreadyExists(ref t) if t == "c1"),
                "{e}"
            );
            let e = s
                .prepare(
                    "ns/2/extract-2 c2".into(),
                    "c1".into(),
                    cri(M_REMOTE, "sha256:l2", "c2"),
                )
                .await
                .unwrap_err();
            assert!(
                matches!(e, SnapshotError::AlreadyExists(ref t) if t == "c2"),
                "{e}"
            );
            let c2 = s.stat("c2".into()).await.unwrap();
            assert_eq!((c2.kind, c2.parent.as_str()), (Kind::Committed, "c1"));
            assert_eq!(
                c2.labels.get(LABEL_REMOTE).map(String::as_str),
                Some("true")
            );
            assert_eq!(
                c2.labels.get(LABEL_TARGET_REF).map(String::as_str),
                Some("c2")
            );
            // What containerd's metadata layer then looks up.
            let found = s
                .list(vec![
                    r#"labels."containerd.io/snapshot.ref"==c2,parent=="c1""#.into(),
                ])
                .await
                .unwrap();
            assert_eq!(found.len(), 1);
            assert!(
                s.stat("ns/2/extract-2 c2".into()).await.is_err(),
                "no active left"
            );
            assert_eq!(
                reg.calls.load(Ordering::SeqCst),
                1,
                "decided once per image"
            );
            // Attached on first use: nothing mounted by the pull, both layers by a container.
            let fs_dir = s.root().join("snapshots/2/fs/layer");
            assert!(!fs_dir.exists(), "mounted at pull time");
            s.prepare("ctr".into(), "c2".into(), labels(&[]))
                .await
                .unwrap();
            assert_eq!(fs::read_to_string(fs_dir).unwrap(), "sha256:l2");
            let fs_dir = s.root().join("snapshots/1/fs/layer");
            assert_eq!(fs::read_to_string(fs_dir).unwrap(), "sha256:l1");
            // A second pull of the same layer (another namespace) also gets AlreadyExists.
            let e = s
                .prepare(
                    "ns2/9/extract c1".into(),
                    "".into(),
                    cri(M_REMOTE, "sha256:l1", "c1"),
                )
                .await
                .unwrap_err();
            assert!(matches!(e, SnapshotError::AlreadyExists(_)));
        }

        #[tokio::test]
        async fn remove_unmounts_before_deleting_metadata() {
            let (_d, s, _reg) = setup();
            let _ = s
                .prepare("k1".into(), "".into(), cri(M_REMOTE, "sha256:l1", "c1"))
                .await;
            s.prepare("ctr".into(), "c1".into(), labels(&[]))
                .await
                .unwrap();
            s.remove("ctr".into()).await.unwrap();
            let fs_dir = s.root().join("snapshots/1/fs");
            assert!(fs_dir.join("layer").exists(), "mounted on first use");
            fs::write(fs_dir.join("busy"), b"").unwrap();
            assert!(s.remove("c1".into()).await.is_err(), "unmount failed");
            // The mount is still known: a retried Remove can take it away.
            assert_eq!(s.stat("c1".into()).await.unwrap().kind, Kind::Committed);
            fs::remove_file(fs_dir.join("busy")).unwrap();
            s.remove("c1".into()).await.unwrap();
            assert!(s.stat("c1".into()).await.is_err());
            assert!(!fs_dir.exists());
        }

        #[tokio::test]
        async fn merged_mode_mounts_one_merged_lower_for_the_container() {
            let (_d, s, _reg) = setup_mode(true);
            for (i, (parent, target)) in [("", "c1"), ("c1", "c2"), ("c2", "c3")].iter().enumerate()
            {
                let e = s
                    .prepare(
                        format!("k{i}"),
                        parent.to_string(),
                        cri(M_REMOTE, &format!("sha256:l{i}"), target),
                    )
                    .await
                    .unwrap_err();
                assert!(matches!(e, SnapshotError::AlreadyExists(_)));
            }
            // Nothing mounted per layer.
            assert!(!s.root().join("snapshots/1/fs/layer").exists());
            let m = s
                .prepare("ctr".into(), "c3".into(), labels(&[]))
                .await
                .unwrap();
            let merged = s.root().join("merged/3");
            let lower = format!("lowerdir={}", merged.display());
            assert!(m[0].options.contains(&lower), "{m:?}");
            assert_eq!(
                fs::read_to_string(merged.join("merged")).unwrap(),
                "sha256:l0,sha256:l1,sha256:l2",
                "bottom → top"
            );
            // A view of the image alone is a read-only bind of the merged tree.
            let v = s.view("v".into(), "c3".into(), labels(&[])).await.unwrap();
            assert_eq!(v[0].source, merged.display().to_string());
            // A local layer on top of the remote run stays a separate lower dir.
            s.prepare("up".into(), "c3".into(), labels(&[]))
                .await
                .unwrap();
            s.commit("local".into(), "up".into(), labels(&[]))
                .await
                .unwrap();
            let m = s
                .prepare("ctr2".into(), "local".into(), labels(&[]))
                .await
                .unwrap();
            let lowers = m[0]
                .options
                .iter()
                .find(|o| o.starts_with("lowerdir="))
                .unwrap();
            assert!(
                lowers.ends_with(&format!(":{}", merged.display())),
                "{lowers}"
            );
            // A remote image on a base that was unpacked locally: its layers are mounted one
            // by one so their whiteouts still apply to the local base.
            let e = s
                .prepare(
                    "k9".into(),
                    "local".into(),
                    cri(M_REMOTE, "sha256:l9", "c9"),
                )
                .await
                .unwrap_err();
            assert!(matches!(e, SnapshotError::AlreadyExists(_)));
            let m = s
                .prepare("ctr3".into(), "c9".into(), labels(&[]))
                .await
                .unwrap();
            let lowers = m[0]
                .options
                .iter()
                .find(|o| o.starts_with("lowerdir="))
                .unwrap();
            let dirs: Vec<&str> = lowers["lowerdir=".len()..].split(':').collect();
            assert_eq!(dirs.len(), 3, "c9, local, merged: {lowers}");
            assert_eq!(
                fs::read_to_string(Path::new(dirs[0]).join("layer")).unwrap(),
                "sha256:l9"
            );
            assert_eq!(dirs[2], merged.display().to_string());
            for k in ["ctr3", "c9", "ctr2", "local", "ctr", "v", "c3"] {
                s.remove(k.into()).await.unwrap();
            }
            assert!(
                !merged.exists(),
                "merged mount dir removed with its top layer"
            );
        }

        #[tokio::test]
        async fn remote_image_never_falls_back_for_a_middle_layer() {
            let (_d, s, _reg) = setup();
            let _ = s
                .prepare("k1".into(), "".into(), cri(M_REMOTE, "sha256:l1", "c1"))
                .await;
            let e = s
                .prepare(
                    "k2".into(),
                    "c1".into(),
                    cri(M_REMOTE, "sha256:broken", "c2"),
                )
                .await
                .unwrap_err();
            assert!(
                matches!(e, SnapshotError::Remote(_)),
                "error, not a local fallback: {e}"
            );
            assert!(
                s.stat("c2".into()).await.is_err(),
                "failed layer not left committed"
            );
            assert!(s.stat("k2".into()).await.is_err());
        }

        #[tokio::test]
        async fn not_enabled_or_unlabelled_prepares_locally() {
            let (_d, s, reg) = setup();
            let m = s
                .prepare("k1".into(), "".into(), cri(M_LOCAL, "sha256:l1", "c1"))
                .await
                .unwrap();
            assert_eq!(m[0].kind, "bind");
            s.commit("c1".into(), "k1".into(), labels(&[]))
                .await
                .unwrap();
            let m = s
                .prepare("k2".into(), "c1".into(), cri(M_LOCAL, "sha256:l2", "c2"))
                .await
                .unwrap();
            assert_eq!(m[0].kind, "overlay");
            assert_eq!(reg.calls.load(Ordering::SeqCst), 1, "local decision reused");
            let m = s
                .prepare("k3".into(), "".into(), labels(&[]))
                .await
                .unwrap();
            assert_eq!(m[0].kind, "bind");
            assert_eq!(
                reg.calls.load(Ordering::SeqCst),
                1,
                "no CRI labels: no registry call"
            );
        }
    }
}
