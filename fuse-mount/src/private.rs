//! Node state is private to root: teleportd's root, snapshot, merged and cache directories are
//! 0700 and their files 0600 whatever the umask, and unix sockets are only ever reachable with
//! mode 0600. The FUSE mounts below them are `allow_other` (overlayfs and containers read
//! them), so the parent directory's 0700 is what keeps other users out, as with containerd's
//! own overlay snapshotter.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents, 0700) and makes `dir` itself 0700, also when it existed
/// with a wider mode (state left by an older teleportd).
pub fn dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    set_mode(dir, DIR_MODE)
}

/// Sets `path`'s permission bits to `mode` unless they already are.
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    let md = fs::metadata(path)?;
    if md.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// `OpenOptions` that create files 0600.
pub fn open_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Creates (truncating) a 0600 file.
pub fn create(path: &Path) -> io::Result<File> {
    open_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Binds a unix socket at `path` that is never reachable with a wider mode than 0600: it is
/// bound inside a fresh 0700 directory next to `path`, set to 0600 there, then renamed into
/// place (no process-wide umask change, no window after bind). `path` is replaced.
pub fn bind_unix(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "socket path has no name"))?;
    let staging = parent.join(format!(
        ".{}.bind-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&staging);
    DirBuilder::new().mode(DIR_MODE).create(&staging)?;
    let res = (|| {
        set_mode(&staging, DIR_MODE)?;
        let tmp = staging.join("s");
        let l = std::os::unix::net::UnixListener::bind(&tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(FILE_MODE))?;
        fs::rename(&tmp, path)?;
        Ok(l)
    })();
    let _ = fs::remove_dir_all(&staging);
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn dirs_files_and_sockets_are_private_whatever_the_umask() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o700,
            "fixed"
        );
        create(&d.join("f")).unwrap();
        assert_eq!(
            fs::metadata(d.join("f")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let s = d.join("sock");
        let _l = bind_unix(&s).unwrap();
        let md = fs::symlink_metadata(&s).unwrap();
        assert!(md.file_type().is_socket());
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        std::os::unix::net::UnixStream::connect(&s).unwrap();
        // Nothing of the staging directory is left.
        assert_eq!(fs::read_dir(&d).unwrap().count(), 2);
    }
}
