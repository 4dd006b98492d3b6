//! Runtimes: tract (pure Rust, always available) and ONNX Runtime (`ort`, load-dynamic).
pub mod ort;
pub mod tract;

/// Relative error `max|a - b| / max|a|` (0 when both are empty).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let scale = a
        .iter()
        .fold(0f64, |m, &v| m.max(v.abs() as f64))
        .max(1e-12);
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    diff / scale
}
