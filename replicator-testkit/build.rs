//! Compiles the protocol definitions in `proto/` with protox (pure Rust, no `protoc`)
//! and generates the tonic servers the in-process EventStoreDB server implements,
//! and clients (the benchmarks use one as a baseline writer with TCP_NODELAY set),
//! and the proto2 messages of the legacy TCP protocol (`proto/tcp.proto`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/shared.proto",
        "proto/status.proto",
        "proto/streams.proto",
        "proto/persistent.proto",
        "proto/serverfeatures.proto",
        "proto/gossip.proto",
        "proto/projections.proto",
        "proto/tcp.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(["."])
        .extern_path(".event_store.client.Empty", "()")
        .compile_fds(descriptors)?;
    Ok(())
}
