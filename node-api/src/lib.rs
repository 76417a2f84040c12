//! node-api: the gRPC APIs a node speaks, generated from the `.proto` files vendored under
//! `proto/` (containerd's Snapshots v1 and its `Mount` type; Kubernetes CRI `runtime.v1`), and
//! [`connect`] for a unix-socket channel. Modules mirror the protobuf packages so generated code
//! can name types across packages.

#![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]

/// containerd's API (`containerd.*`).
pub mod containerd {
    /// `containerd.types`: the `Mount` a snapshotter returns.
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    /// `containerd.services.*`.
    pub mod services {
        /// `containerd.services.snapshots`.
        pub mod snapshots {
            /// `containerd.services.snapshots.v1`: messages, client and server.
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}

/// Kubernetes CRI (`runtime.v1`): what kubelet speaks to containerd.
pub mod runtime {
    /// `runtime.v1`: messages and the Runtime and Image service clients and servers.
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

pub use containerd::services::snapshots::v1 as snapshots;
pub use containerd::types;
pub use runtime::v1 as cri;

/// A gRPC channel over the unix socket at `path` (containerd's and teleportd's sockets). The URI
/// is a placeholder: the connector dials the socket.
pub async fn connect(
    path: impl AsRef<std::path::Path>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.as_ref().to_path_buf();
    tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}
