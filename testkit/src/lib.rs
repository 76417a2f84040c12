//! testkit: the workspace's one test kit — prerequisites (fail in CI, skip with a reason
//! elsewhere), a registry (in-process or the real binary) with images pushed, teleportd and
//! containerd processes, temp dirs and kernel mounts, each behind a guard that cleans up on
//! drop (kill by PID, unmount, remove the directory), and the checks tests make on processes
//! (peak RSS, descriptors) and on the mount table. Used by every crate's integration tests as a
//! dev-dependency; never by library code. Depends on registry-mock, fuse-mount and emulator as
//! libraries (the mount table is read with fuse-mount's one mountinfo parser).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bins;
pub mod image;
pub mod mounts;
pub mod node;
pub mod prereq;
pub mod process;
pub mod registry;
pub mod wait;

pub use bins::{bin, containerd_bin, path_with_containerd_dir};
pub use image::{expected_tree, layer, oci_archive, test_image, Node, BUSYBOX, TREE_CMD};
pub use mounts::{fuse_mounts_under, mounts_under, KernelMount, NoMountsLeft, TestDir, Tmpfs};
pub use prereq::{prerequisites, require, Need};
pub use process::{
    catches_signal, fd_count, file_fd_count, peak_rss_kib, processes_mentioning, rss_kib,
    Containerd, ManagerGuard, Teleportd,
};
pub use wait::{poll_until, tail, wait_for};
