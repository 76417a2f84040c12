//! testbed: the seed's A/B experiment on one machine. Owns provisioning, real containerd nodes
//! (`shuttle` = overlayfs, `teleporter` = teleportd), the kubelet-like CRI pod lifecycle, the
//! compare plan and its reports. Uses registry-mock, fixtures and teleportd as libraries or
//! binaries; never re-implements their format or merge logic.
//!
//! ```text
//! testbed provision                                  # check / install containerd, runc, fuse3 …
//! testbed compare --scale 0.01 --reps 1 --out bench-out/quick
//! testbed compare --scale 0.01 --reps 1 --fanout 4 --out bench-out/pool   # + 4 nodes per kind at once
//! testbed compare --bandwidth 1Gbit --latency 10ms --out bench-out   # full size, 3 reps
//! testbed nodes up [--dir /tmp/testbed-nodes]        # shuttle + teleporters + registry, by hand
//! testbed recycle teleporter-merged                  # stop, unmount, wipe, start
//! testbed check-expansion --registry http://127.0.0.1:PORT azure-vote-front v1
//! testbed nodes down
//! ```
//!
//! Modules: [`provision`] (prerequisites), [`node`] (one containerd + optional teleportd, with
//! recycle), [`mounts`] and [`process`] (teardown by PID and mountinfo), [`cri`] (k8s-cri client
//! over the node socket), [`pod`] and [`events`] (kubelet's path with `kubectl describe`-style
//! events), [`bed`] (fixtures, registry, node set), [`compare`] (the plan), [`measurement`]
//! (samples and image facts, shared by compare and report), [`metrics`] (registry `/metrics`
//! deltas), [`cpu`] (CPU time of this process and of the registry's threads, for pool
//! starts), [`report`] (md / json / svg), [`peers`] (SOCI nodes),
//! [`control`] (the `nodes up` control socket).

pub mod cri;
pub mod error;
pub mod mounts;
pub mod node;
pub mod process;
pub mod provision;

pub use error::{Error, Result};
pub mod bed;
pub mod compare;
pub mod control;
pub mod cpu;
pub mod events;
pub mod machine;
pub mod measurement;
pub mod metrics;
pub mod peers;
pub mod pod;
pub mod report;
