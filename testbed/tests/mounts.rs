//! Unmounting everything under a directory, deepest first, with real mounts (root).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

fn mount_tmpfs(at: &std::path::Path) {
    std::fs::create_dir_all(at).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "tbtest"])
        .arg(at)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs at {}", at.display());
}

/// Unmounts everything under the temp dir even when an assertion fails midway.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = testbed::mounts::unmount_all_under(&self.0);
    }
}

#[test]
fn unmounts_nested_and_stacked_then_removes() {
    if !common::prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(tmp.path().to_path_buf());
    let root = tmp.path().join("node");
    let a = root.join("state/a");
    mount_tmpfs(&a);
    mount_tmpfs(&a.join("b c")); // nested, with a space (escaped in mountinfo)
    mount_tmpfs(&a); // stacked on the same mount point
    std::fs::write(a.join("file"), b"x").unwrap();
    let outside = tmp.path().join("outside");
    mount_tmpfs(&outside);

    assert_eq!(common::mounts_under(&root).len(), 3);
    // The stacked mount hides the nested one: a lazy detach of the lower one takes it along.
    let removed = testbed::mounts::unmount_all_under(&root).unwrap();
    assert!(removed >= 2, "{removed}");
    assert!(common::mounts_under(&root).is_empty());
    // A mount beside the node's directory is not touched.
    assert_eq!(common::mounts_under(&outside).len(), 1);

    testbed::mounts::remove_tree(&root).unwrap();
    assert!(!root.exists());
    testbed::mounts::unmount_all_under(&outside).unwrap();
}
