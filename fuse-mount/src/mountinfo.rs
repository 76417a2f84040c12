//! The one parser of `/proc/self/mountinfo` in the workspace: teleportd's fuse manager, the
//! testbed's node teardown, the benches and the test kit all read the mount table through it.

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo, the fields anyone here uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The filesystem's device, `major:minor` (a FUSE mount's backing-device name in
    /// `/sys/class/bdi`).
    pub dev: String,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,nodev,…`).
    pub options: String,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options (`lowerdir=…` of an overlay), still escaped as the kernel wrote them.
    pub super_options: String,
}

/// Decodes mountinfo's octal escapes (`\040` for a space, …); anything else is kept as is.
pub fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        match oct {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Parses mountinfo text. Malformed lines are skipped (the kernel's format is fixed; this only
/// guards against surprises).
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut pre = pre.split(' ').skip(2);
            let dev = pre.next()?.to_owned();
            let _root = pre.next()?;
            let mount_point = unescape(pre.next()?);
            let options = pre.next().unwrap_or("").to_owned();
            let mut post = post.split(' ');
            let fs_type = post.next()?.to_owned();
            let source = unescape(post.next().unwrap_or(""))
                .to_string_lossy()
                .into_owned();
            let super_options = post.next().unwrap_or("").to_owned();
            Some(MountEntry {
                dev,
                mount_point,
                options,
                fs_type,
                source,
                super_options,
            })
        })
        .collect()
}

/// The mounts of this process's mount namespace.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse(&t))
}

/// Mounts at or below `dir` (both compared as given), deepest (then most recent) first: the
/// order to unmount them in. An unreadable mount table is an empty list.
pub fn under(dir: &Path) -> Vec<MountEntry> {
    let all = read().unwrap_or_default();
    select_under(all, dir)
}

/// [`under`] over a given table.
pub fn select_under(all: Vec<MountEntry>, dir: &Path) -> Vec<MountEntry> {
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

/// The lower directories named by an overlay mount's options (unescaped).
pub fn overlay_lowers(m: &MountEntry) -> Vec<PathBuf> {
    if m.fs_type != "overlay" {
        return Vec::new();
    }
    m.super_options
        .split(',')
        .filter_map(|o| o.strip_prefix("lowerdir="))
        .flat_map(|l| l.split(':'))
        .filter(|s| !s.is_empty())
        .map(unescape)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/root rw
30 22 0:26 / /tmp/n/state/a rw shared:2 - tmpfs shm rw
31 30 0:27 / /tmp/n/state/a/b rw shared:3 - overlay overlay rw,lowerdir=/x:/y\\040z
32 22 0:28 / /tmp/n2/x rw shared:4 - tmpfs t rw
33 22 0:29 / /tmp/n/with\\040space rw shared:5 - fuse.teleportd teleportd rw
garbage
";

    #[test]
    fn parses_and_orders_deepest_first() {
        let all = parse(SAMPLE);
        assert_eq!(all.len(), 5);
        assert_eq!(all[4].mount_point, PathBuf::from("/tmp/n/with space"));
        assert_eq!(all[4].fs_type, "fuse.teleportd");
        assert_eq!(all[4].dev, "0:29");
        assert_eq!(all[1].options, "rw");
        assert_eq!(
            overlay_lowers(&all[2]),
            vec![PathBuf::from("/x"), PathBuf::from("/y z")]
        );
        let points: Vec<_> = select_under(all, Path::new("/tmp/n"))
            .into_iter()
            .map(|m| m.mount_point)
            .collect();
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
        assert_eq!(unescape(r"/a\040b/c"), PathBuf::from("/a b/c"));
        assert_eq!(unescape(r"/x\\y"), PathBuf::from(r"/x\\y"));
        assert_eq!(unescape(r"/t\0"), PathBuf::from(r"/t\0"));
        assert_eq!(unescape("end\\"), PathBuf::from("end\\"));
    }
}
