//! Generates only the containerd Snapshots *server* from the vendored protos. Message types come
//! from `containerd-client` (extern_path) so every gRPC type shares one tonic/prost version.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".containerd.types", "::containerd_client::types")
        .extern_path(
            ".containerd.services.snapshots.v1",
            "::containerd_client::services::v1::snapshots",
        )
        .compile_protos(
            &["proto/github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto"],
            &["proto"],
        )?;
    Ok(())
}
