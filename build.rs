//! Generates the containerd snapshots gRPC service from `proto/` with a pure-Rust protobuf
//! compiler (protox), so building stratafs needs no `protoc` on the machine. Also a client (only)
//! for the subset of the Kubernetes CRI in `proto/cri/` that `examples/cri.rs` speaks.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/containerd/types/mount.proto",
    "proto/containerd/services/snapshots/v1/snapshots.proto",
];

const CRI_PROTOS: &[&str] = &["proto/cri/v1/api.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS.iter().chain(CRI_PROTOS) {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds_path = out.join("snapshots.fds");
    std::fs::write(&fds_path, prost::Message::encode_to_vec(&fds))?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(&fds_path)
        .skip_protoc_run()
        .compile(PROTOS, &["proto"])?;

    let cri = protox::compile(CRI_PROTOS, ["proto"])?;
    let cri_path = out.join("cri.fds");
    std::fs::write(&cri_path, prost::Message::encode_to_vec(&cri))?;
    tonic_build::configure()
        .build_server(false)
        .build_client(true)
        .file_descriptor_set_path(&cri_path)
        .skip_protoc_run()
        .compile(CRI_PROTOS, &["proto"])?;
    Ok(())
}
