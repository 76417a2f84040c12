//! Mount table inspection and teardown: find every mount under a directory and unmount it,
//! deepest first, so a node's root can be deleted without reaching into a live mount.

use crate::error::{Error, Result};
use std::path::Path;

pub use fuse_mount::mountinfo::MountEntry;

/// Current mounts of this process's mount namespace.
pub fn mounts() -> Result<Vec<MountEntry>> {
    fuse_mount::mountinfo::read().map_err(Error::io("read /proc/self/mountinfo"))
}

/// Mounts at or below `dir`, deepest (then most recent) first: the order to unmount them in.
pub fn mounts_under(dir: &Path) -> Result<Vec<MountEntry>> {
    Ok(fuse_mount::mountinfo::select_under(mounts()?, dir))
}

fn umount2(path: &Path, flags: nix::mount::MntFlags) -> std::io::Result<()> {
    Ok(nix::mount::umount2(path, flags)?)
}

/// Unmount everything at or below `dir`. A busy mount is lazily detached (MNT_DETACH) so it
/// disappears from the tree. Returns how many mounts were removed; errors only if something is
/// still mounted under `dir` afterwards.
pub fn unmount_all_under(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    // Stacked mounts on one mount point need one pass each; bound the passes.
    for _ in 0..16 {
        let list = mounts_under(dir)?;
        if list.is_empty() {
            return Ok(removed);
        }
        for m in list {
            match umount2(&m.mount_point, nix::mount::MntFlags::empty()) {
                Ok(()) => removed += 1,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {} // already gone
                Err(e) => {
                    tracing::debug!(path = %m.mount_point.display(), error = %e, "umount busy, detaching");
                    match umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH) {
                        Ok(()) => removed += 1,
                        Err(e) => {
                            tracing::warn!(path = %m.mount_point.display(), error = %e, "umount failed")
                        }
                    }
                }
            }
        }
    }
    match mounts_under(dir)?.into_iter().next() {
        None => Ok(removed),
        Some(m) => Err(Error::StillMounted {
            path: m.mount_point,
        }),
    }
}

/// Delete `dir` recursively, but only after making sure nothing is mounted below it:
/// `remove_dir_all` through a live mount would delete the mounted filesystem's contents.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    unmount_all_under(dir)?;
    std::fs::remove_dir_all(dir).map_err(Error::io(format!("remove {}", dir.display())))
}
