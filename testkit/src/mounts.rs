//! The mount table as tests see it (fuse-mount's mountinfo parser) and guards that leave no
//! mount behind: a temp dir that unmounts what is left under it, kernel mounts made by a test,
//! a tmpfs, and a check that fails a test leaving mounts.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use fuse_mount::mountinfo;

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    mountinfo::under(dir)
        .into_iter()
        .map(|m| m.mount_point.display().to_string())
        .collect()
}

/// FUSE mount points at or under `dir`.
pub fn fuse_mounts_under(dir: &Path) -> Vec<PathBuf> {
    mountinfo::under(dir)
        .into_iter()
        .filter(|m| m.fs_type.starts_with("fuse"))
        .map(|m| m.mount_point)
        .collect()
}

/// Lazily detaches everything still mounted at or under `dir`, deepest first.
pub fn detach_all_under(dir: &Path) -> Vec<String> {
    let left = mounts_under(dir);
    for mp in &left {
        let _ = fuse_mount::fs::detach(Path::new(mp));
    }
    left
}

/// A test's temp dir under /tmp (short: overlay options and socket paths must stay small);
/// on drop it detaches anything still mounted under it, then removes it.
pub struct TestDir(pub tempfile::TempDir);

impl TestDir {
    pub fn new() -> TestDir {
        TestDir(
            tempfile::Builder::new()
                .prefix("tpd")
                .tempdir_in("/tmp")
                .expect("temp dir in /tmp"),
        )
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        for mp in detach_all_under(self.path()) {
            eprintln!("unmounted leftover {mp}");
        }
    }
}

/// Fails the test if anything is still mounted under `dir` when dropped (declare it before the
/// mount guards: it drops after them), detaching what it finds either way.
pub struct NoMountsLeft(pub PathBuf);

impl Drop for NoMountsLeft {
    fn drop(&mut self) {
        let left = detach_all_under(&self.0);
        if !std::thread::panicking() {
            assert!(left.is_empty(), "mounts left behind: {left:?}");
        }
    }
}

/// A kernel mount made by the test (a read-only overlayfs); detached on drop, even on panic.
pub struct KernelMount(pub PathBuf);

impl KernelMount {
    pub fn overlay(target: &Path, lowers_top_first: &[&Path]) -> KernelMount {
        let lower: Vec<String> = lowers_top_first
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let opts = CString::new(format!("lowerdir={}", lower.join(":"))).unwrap();
        let t = CString::new(target.as_os_str().as_bytes()).unwrap();
        let src = CString::new("overlay").unwrap();
        // SAFETY: all pointers are valid NUL-terminated strings for the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                t.as_ptr(),
                src.as_ptr(),
                libc::MS_RDONLY,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "overlay mount: {}", std::io::Error::last_os_error());
        KernelMount(target.to_path_buf())
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = fuse_mount::fs::detach(&self.0);
    }
}

/// A tmpfs of `size` on `dir`; unmounted on drop (lazily if still busy).
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = fuse_mount::fs::detach(&self.0);
        }
    }
}
