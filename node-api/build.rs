//! Compiles the vendored `.proto` files with `protox` (a protobuf compiler written in Rust, with
//! the well-known `google/protobuf/*` types built in) and hands the descriptors to
//! `tonic-prost-build`: building the workspace needs no system `protoc` and no system headers.

const PROTOS: &[&str] = &[
    "proto/github.com/containerd/containerd/api/types/mount.proto",
    "proto/github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto",
    "proto/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
