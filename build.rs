//! Compiles `protos/onnx.proto` with prost-build through protox (no protoc binary needed),
//! and with the `cuda` feature the fused kernels' CUDA source to PTX with nvcc
//! (`$CUDA_ROOT/bin/nvcc` or the `nvcc` on PATH; `CUDA_COMPUTE_CAP`, default 90).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos/onnx.proto");
    let fds = protox::compile(["protos/onnx.proto"], ["protos"])?;
    prost_build::Config::new().compile_fds(fds)?;
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        cuda_ptx()?;
    }
    Ok(())
}

fn cuda_ptx() -> Result<(), Box<dyn std::error::Error>> {
    let src = "src/ops/kernels/kernels.cu";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var("CUDA_ROOT")
        .map(|r| std::path::Path::new(&r).join("bin/nvcc"))
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| "nvcc".into());
    let out = std::path::Path::new(&std::env::var("OUT_DIR")?).join("kernels.ptx");
    let status = std::process::Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("-arch=sm_{cap}"), src, "-o"])
        .arg(&out)
        .status()
        .map_err(|e| format!("{}: {e} (the cuda feature needs nvcc)", nvcc.display()))?;
    if !status.success() {
        return Err(format!("nvcc failed on {src}").into());
    }
    Ok(())
}
