//! Compiles the `.proto` files with `protox` (pure Rust, no system `protoc`) and generates the
//! prost messages plus tonic clients and servers. The encoded `FileDescriptorSet` is written to
//! `$OUT_DIR/flotilla_descriptor.bin` for gRPC server reflection.

use std::{env, fs, path::PathBuf};

use protox::prost::Message as _;

const PROTO_DIR: &str = "proto";
const PROTO_FILES: &[&str] = &[
    "armada.proto",
    "metrics.proto",
    "mvcc.proto",
    "replication.proto",
    "maintenance.proto",
    "flotilla.proto",
];
/// Internal node-to-node protocol: compiled like the others but kept out of the reflection
/// descriptor set, which describes the public API only.
const INTERNAL_PROTO_FILES: &[&str] = &["flotilla_raft.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");
    for file in PROTO_FILES.iter().chain(INTERNAL_PROTO_FILES) {
        println!("cargo:rerun-if-changed={PROTO_DIR}/{file}");
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // File names are given relative to the include dir so that descriptor names are flat
    // (`armada.proto`, `mvcc.proto`, ...) exactly like Armada's, which matters for reflection.
    // `google/protobuf/struct.proto` is provided by protox's built-in well-known types and is
    // included in the set (include_imports), so reflection clients can resolve it.
    let fds = protox::compile(PROTO_FILES, [PROTO_DIR])?;

    fs::write(out_dir.join("flotilla_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds(protox::compile(INTERNAL_PROTO_FILES, [PROTO_DIR])?)?;

    Ok(())
}
