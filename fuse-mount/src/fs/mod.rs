//! Read-only lazy FUSE filesystem over expanded layers.
//!
//! Two shapes: [`mount_layer`] presents one layer in overlayfs form (whiteouts as 0/0 char
//! devices, opaque dirs as `trusted.overlay.opaque=y`) for an overlayfs stack; [`mount_merged`]
//! presents a whole image's merged tree as one lower dir. The inode table is built in memory at
//! mount time (no data fetched, no per-file syscalls); file bytes are fetched on read, in chunks,
//! through the node's chunk cache. Requests are served by several worker threads, each on its
//! own cloned `/dev/fuse` fd, so slow fetches do not block other readers.

mod fuse;
mod neighbour;
mod tree;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use fuser::{MountOption, SessionACL, SessionUnmounter};

use crate::fetch::{Counters, LayerHandle};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("mount {path:?}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unmount {path:?}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("merging layers: {0}")]
    Merge(#[source] emulator::Error),
    #[error("mount_merged needs at least one layer")]
    NoLayers,
}

/// Mount tunables.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Source name shown in `/proc/self/mountinfo` (`teleport` by default).
    pub fs_name: String,
    /// FUSE worker threads (each with its own cloned `/dev/fuse` fd).
    pub threads: usize,
    /// Let every user (and overlayfs acting for containers) access the mount.
    pub allow_other: bool,
    /// Attribute / entry cache TTL handed to the kernel: contents are immutable.
    pub ttl: Duration,
    /// On open of a file larger than `read_ahead`, queue a background fetch of the part the
    /// first read's read-ahead does not cover (up to `prefetch_on_open_max` file size).
    pub prefetch_on_open: bool,
    /// Files above this size are not prefetched on open (a large file is often only probed).
    pub prefetch_on_open_max: u64,
    /// A read that misses also fetches up to this many more bytes of the file, in the same
    /// request: files are mostly read whole and sequentially, and one more round trip costs
    /// more than these bytes on an in-region link (5 ms at 1 Gbit/s ≈ 600 KB).
    pub read_ahead: u64,
    /// When the first read of a file of at most `read_ahead` bytes misses and no other read of
    /// the mount is waiting, the same request also fetches this many bytes past the file's
    /// end: the files that follow it in the layer's data, in tar order (mostly its directory's
    /// neighbours). 0 = off. See `fs/neighbour.rs`.
    pub neighbour_ahead: u64,
    /// The kernel's read-ahead for this mount, KiB (its backing device's `read_ahead_kb`);
    /// `None` keeps the kernel's default (128 KiB for FUSE).
    pub kernel_read_ahead_kb: Option<u32>,
    /// At mount, queue a background fetch of every layer's whole data (low priority).
    pub prefetch_layers: bool,
    /// How long `unmount` waits for the FUSE threads after a clean unmount.
    pub join_timeout: Duration,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fs_name: "teleport".into(),
            // Each thread blocks for a whole fetch on a miss: enough of them that a start's
            // parallel readers (plus the kernel's async readahead) all have requests in flight.
            threads: 16,
            allow_other: true,
            ttl: Duration::from_secs(3600),
            prefetch_on_open: true,
            prefetch_on_open_max: 64 << 20,
            read_ahead: 2 << 20,
            neighbour_ahead: 256 << 10,
            kernel_read_ahead_kb: None,
            prefetch_layers: false,
            join_timeout: Duration::from_secs(5),
        }
    }
}

/// A live FUSE mount. Unmounts on [`MountHandle::unmount`] or Drop; when the mount is busy it
/// is detached lazily (`umount2(MNT_DETACH)`) and keeps serving open files until released.
pub struct MountHandle {
    mountpoint: PathBuf,
    counters: Arc<Counters>,
    unmounter: Option<SessionUnmounter>,
    thread: Option<JoinHandle<()>>,
    finished: mpsc::Receiver<()>,
    join_timeout: Duration,
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountHandle")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

/// Mount one layer in overlayfs form at `path` (an existing empty directory).
///
/// Directories the layer only implies (a child without its parent's tar entry) get
/// `0755 root:root mtime 0`; use [`mount_layer_over`] to give them their lower attributes.
pub fn mount_layer(
    path: impl AsRef<Path>,
    layer: LayerHandle,
    opts: &MountOptions,
) -> Result<MountHandle> {
    mount_layer_over(path, layer, &[], opts)
}

/// [`mount_layer`] for a layer stacked on `lowers` (bottom → top, the layers below it): an
/// implied directory takes the attributes the directory has in the lower layers' merged view,
/// as containerd does when it unpacks such a layer, so the overlayfs stack shows exactly the
/// merged view. Costs a merge of the lowers, and only when the layer implies a directory.
pub fn mount_layer_over(
    path: impl AsRef<Path>,
    layer: LayerHandle,
    lowers: &[LayerHandle],
    opts: &MountOptions,
) -> Result<MountHandle> {
    let mut entries = emulator::merge::overlay_form(layer.index());
    if !lowers.is_empty() {
        inherit_implied_dirs(&mut entries, layer.index(), lowers)?;
    }
    let tree = tree::Tree::build(entries.iter().map(|e| (e, 0, None)));
    mount_tree(path.as_ref(), tree, vec![layer], opts)
}

fn inherit_implied_dirs(
    entries: &mut [emulator::Entry],
    layer: &emulator::Index,
    lowers: &[LayerHandle],
) -> Result<()> {
    use emulator::EntryKind;
    let own: std::collections::HashSet<&str> = layer
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Dir)
        .map(|e| e.path.as_str())
        .collect();
    let implied: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == EntryKind::Dir && !own.contains(e.path.as_str()))
        .map(|(i, _)| i)
        .collect();
    if implied.is_empty() {
        return Ok(());
    }
    let indexes: Vec<&emulator::Index> = lowers.iter().map(LayerHandle::index).collect();
    let below = emulator::merge::merge(&indexes).map_err(Error::Merge)?;
    for i in implied {
        let e = &mut entries[i];
        let Some(lower) = below
            .get(&e.path)
            .filter(|m| m.entry.kind == EntryKind::Dir)
        else {
            continue;
        };
        let opaque = e
            .xattrs
            .iter()
            .find(|(k, _)| k == emulator::merge::OVERLAY_OPAQUE_XATTR)
            .cloned();
        e.mode = lower.entry.mode;
        e.uid = lower.entry.uid;
        e.gid = lower.entry.gid;
        e.mtime = lower.entry.mtime;
        e.xattrs = lower.entry.xattrs.clone();
        if let Some(o) = opaque {
            e.xattrs.retain(|(k, _)| *k != o.0);
            e.xattrs.push(o);
        }
    }
    Ok(())
}

/// Mount the merged view of `layers` (bottom → top) at `path`.
pub fn mount_merged(
    path: impl AsRef<Path>,
    layers: Vec<LayerHandle>,
    opts: &MountOptions,
) -> Result<MountHandle> {
    if layers.is_empty() {
        return Err(Error::NoLayers);
    }
    let t0 = std::time::Instant::now();
    let indexes: Vec<&emulator::Index> = layers.iter().map(LayerHandle::index).collect();
    let merged = emulator::merge::merge(&indexes).map_err(Error::Merge)?;
    let t_merge = t0.elapsed();
    let tree = tree::Tree::build(
        merged
            .entries
            .values()
            .map(|m| (&m.entry, m.layer, m.origin.map(|o| (m.layer, o)))),
    );
    tracing::debug!(
        layers = layers.len(),
        nodes = tree.nodes.len(),
        merge = ?t_merge,
        build = ?(t0.elapsed() - t_merge),
        "merged inode table built"
    );
    mount_tree(path.as_ref(), tree, layers, opts)
}

/// fuser gives every FUSE thread a 16 MiB request buffer from `calloc`. Under glibc's dynamic
/// mmap threshold these can come from malloc arenas, where calloc zeroes (touches) all 16 MiB:
/// measured 2.6 GB RSS, 1.5 s of CPU and +0.7 s of pull for 29 per-layer mounts × 16 threads.
/// A fixed threshold keeps large blocks as lazily-zeroed mmaps, so a thread's buffer costs only
/// the pages its small read-only requests touch (same mounts: 24 MB RSS). Process-wide and
/// idempotent; large blocks are what mmap is for anyway.
fn keep_large_allocations_mmapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator tuning; no pointers involved.
            let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
            if ok != 1 {
                tracing::debug!("mallopt(M_MMAP_THRESHOLD) refused");
            }
        });
    }
}

/// Sets the kernel read-ahead of the FUSE mount at `path` (`/sys/class/bdi/MAJ:MIN/read_ahead_kb`).
/// FUSE caps its devices at 128 KiB whatever the init reply asks; a bigger window keeps more
/// sequential reads in flight. A performance hint: failure is logged, not fatal.
fn set_read_ahead(path: &Path, kb: u32) {
    let dev = crate::mountinfo::read()
        .unwrap_or_default()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
        .map(|m| m.dev);
    let Some(dev) = dev else {
        tracing::debug!(path = %path.display(), "read-ahead: mount not in mountinfo");
        return;
    };
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, kb.to_string()) {
        tracing::debug!(knob, error = %e, "read-ahead not set");
    }
}

fn mount_tree(
    path: &Path,
    tree: tree::Tree,
    layers: Vec<LayerHandle>,
    opts: &MountOptions,
) -> Result<MountHandle> {
    keep_large_allocations_mmapped();
    let counters = Arc::new(Counters::default());
    if opts.prefetch_layers {
        for l in &layers {
            l.prefetch_all(&counters);
        }
    }
    for l in &layers {
        // Background: the mount itself never waits for the profile lookup.
        l.start_profile(&counters);
    }
    let fs = fuse::TeleportFs {
        tree,
        neighbours: neighbour::NeighbourAhead::new(opts.neighbour_ahead),
        layers,
        counters: Arc::clone(&counters),
        ttl: opts.ttl,
        prefetch_on_open: opts.prefetch_on_open,
        prefetch_on_open_max: opts.prefetch_on_open_max,
        read_ahead: opts.read_ahead,
        trace_mount: crate::trace::enabled()
            .then(|| crate::trace::mount_id(&path.to_string_lossy())),
    };
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(opts.fs_name.clone()),
        MountOption::Subtype("teleport".into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        // Overlayfs checks suid/dev against its own mount, not its lowers': a container's
        // setuid binaries still work, while the FUSE mount itself grants nothing.
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::Exec,
        MountOption::NoAtime,
    ];
    cfg.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(opts.threads.max(1));
    cfg.clone_fd = true;
    let mount_err = |source| Error::Mount {
        path: path.to_path_buf(),
        source,
    };
    let t0 = std::time::Instant::now();
    let mut session = fuser::Session::new(fs, path, &cfg).map_err(mount_err)?;
    let unmounter = session.unmount_callable();
    let (tx, finished) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("teleport-fuse".into())
        .spawn(move || {
            if let Err(e) = session.run() {
                tracing::warn!(error = %e, "fuse session ended with error");
            }
            let _ = tx.send(());
        })
        .map_err(mount_err)?;
    tracing::debug!(path = %path.display(), took = ?t0.elapsed(), "mounted");
    if let Some(kb) = opts.kernel_read_ahead_kb {
        set_read_ahead(path, kb);
    }
    Ok(MountHandle {
        mountpoint: path.to_path_buf(),
        counters,
        unmounter: Some(unmounter),
        thread: Some(thread),
        finished,
        join_timeout: opts.join_timeout,
    })
}

impl MountHandle {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// This mount's live fetch counters.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Serve until someone else unmounts the filesystem (e.g. a `teleportd` child process
    /// that keeps a mount alive across daemon restarts).
    pub fn wait(mut self) {
        // Unmounted from outside: nothing for Drop to do.
        self.unmounter.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Unmount; a busy mount is detached lazily instead (then this still returns `Ok`).
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_inner()
    }

    /// Unmount unless the mount is in use (overlayfs stacked on it, open files, a cwd): then
    /// it stays mounted and served, and is handed back.
    pub fn unmount_if_idle(mut self) -> std::result::Result<(), MountHandle> {
        match nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::empty()) {
            Err(nix::errno::Errno::EBUSY) => Err(self),
            // Unmounted (the session thread ends now), or not mounted any more.
            Ok(()) | Err(_) => {
                self.unmounter.take();
                self.join_session();
                Ok(())
            }
        }
    }

    fn join_session(&mut self) {
        if self.finished.recv_timeout(self.join_timeout).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        } else {
            tracing::warn!(path = %self.mountpoint.display(), "fuse threads did not stop in time");
            self.thread.take();
        }
    }

    fn unmount_inner(&mut self) -> Result<()> {
        let Some(mut u) = self.unmounter.take() else {
            return Ok(());
        };
        let mut detached = false;
        if let Err(e) = u.unmount() {
            tracing::info!(path = %self.mountpoint.display(), error = %e, "unmount failed, detaching");
            detach(&self.mountpoint).map_err(|source| Error::Unmount {
                path: self.mountpoint.clone(),
                source,
            })?;
            detached = true;
        }
        if detached {
            // Open files keep the connection alive; the session thread ends when they close.
            self.thread.take();
            return Ok(());
        }
        self.join_session();
        Ok(())
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!(error = %e, "unmount on drop failed");
        }
    }
}

/// `umount2(path, MNT_DETACH)`; "not mounted" counts as done.
pub fn detach(path: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
