//! fuse-mount: the node agent `teleportd`, a containerd proxy snapshotter (persistent overlayfs
//! snapshots over gRPC on a unix socket, [`snapshot`], [`grpc`], [`daemon`]) that can mount
//! registry-expanded layers lazily over FUSE instead of downloading them ([`remote`], [`fs`],
//! [`fetch`]). Talks to the registry over HTTP only; must not depend on registry-mock or testbed.

pub mod config;
pub mod containerd_config;
pub mod convert;
pub mod daemon;
pub mod fetch;
pub mod fs;
pub mod grpc;
pub mod labels;
pub mod manager;
pub mod metrics;
pub mod mountinfo;
pub mod private;
pub mod remote;
pub mod snapshot;
pub mod timing;
pub mod trace;

pub use node_api;
