//! Compiles `protos/onnx.proto` with prost-build through protox (no protoc binary needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos/onnx.proto");
    let fds = protox::compile(["protos/onnx.proto"], ["protos"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
