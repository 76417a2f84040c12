//! Mount table inspection and teardown: find every mount under a directory and unmount it,
//! deepest first, so a node's root can be deleted without reaching into a live mount.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// Undo mountinfo's octal escapes (`\040` for space and friends).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse mountinfo text. Malformed lines are skipped (the kernel's format is fixed; this only
/// guards against surprises).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fs_type = post.next()?;
            let source = post.next().unwrap_or("");
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: fs_type.to_string(),
                source: unescape(source),
            })
        })
        .collect()
}

/// Current mounts of this process's mount namespace.
pub fn mounts() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(Error::io("read /proc/self/mountinfo"))?;
    Ok(parse_mountinfo(&text))
}

/// Mounts at or below `dir`, deepest (then most recent) first: the order to unmount them in.
pub fn mounts_under(dir: &Path) -> Result<Vec<MountEntry>> {
    let all = mounts()?;
    Ok(select_under(all, dir))
}

fn select_under(all: Vec<MountEntry>, dir: &Path) -> Vec<MountEntry> {
    let mut under: Vec<(usize, MountEntry)> = all
        .into_iter()
        .enumerate()
        .filter(|(_, m)| m.mount_point.starts_with(dir))
        .collect();
    under.sort_by(|(ia, a), (ib, b)| {
        let da = a.mount_point.components().count();
        let db = b.mount_point.components().count();
        db.cmp(&da).then(ib.cmp(ia))
    });
    under.into_iter().map(|(_, m)| m).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/root rw
30 22 0:26 / /tmp/n/state/a rw shared:2 - tmpfs shm rw
31 30 0:27 / /tmp/n/state/a/b rw shared:3 - overlay overlay rw,lowerdir=/x
32 22 0:28 / /tmp/n2/x rw shared:4 - tmpfs t rw
33 22 0:29 / /tmp/n/with\\040space rw shared:5 - fuse.teleportd teleportd rw
";

    #[test]
    fn parses_and_orders_deepest_first() {
        let all = parse_mountinfo(SAMPLE);
        assert_eq!(all.len(), 5);
        assert_eq!(all[4].mount_point, PathBuf::from("/tmp/n/with space"));
        assert_eq!(all[4].fs_type, "fuse.teleportd");
        let under = select_under(all, Path::new("/tmp/n"));
        let points: Vec<_> = under.iter().map(|m| m.mount_point.clone()).collect();
        assert_eq!(
            points,
            vec![
                PathBuf::from("/tmp/n/state/a/b"),
                PathBuf::from("/tmp/n/state/a"),
                PathBuf::from("/tmp/n/with space"),
            ]
        );
    }

    #[test]
    fn unescape_keeps_plain_backslashes() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("a\\x"), "a\\x");
        assert_eq!(unescape("end\\"), "end\\");
    }
}
