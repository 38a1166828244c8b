//! Compiles `proto/inferscope/v1/*.proto` with protox (a pure-Rust protobuf compiler: no system
//! `protoc`) and generates prost types and the tonic service. The output is deterministic for a
//! given set of .proto files and crate versions.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/inferscope/v1/inferscope.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Every decoded message is checked on the wire first (crate::codec).
        .codec_path("crate::codec::BoundedCodec")
        .compile_fds(fds)?;
    Ok(())
}
