//! Runtimes: tract (pure Rust, always available) and ONNX Runtime (`ort`, load-dynamic).
pub mod ort;
pub mod tract;

use crate::error::Result;
use crate::onnx::ModelProto;
use serde::Serialize;

/// An inference runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// ONNX Runtime, CPU execution provider.
    Ort,
    /// tract (pure Rust, single-threaded).
    Tract,
}

impl Runtime {
    /// ORT when its library can be loaded, else tract.
    pub fn preferred() -> Runtime {
        if ort::available() {
            Runtime::Ort
        } else {
            Runtime::Tract
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Ort => "ort",
            Runtime::Tract => "tract",
        }
    }
}

/// A model prepared for one input shape in one runtime.
pub enum Runner {
    Ort(ort::OrtModel),
    Tract(tract::TractModel),
}

impl Runner {
    /// Prepares `model` for a single f32 input of `shape`; ORT gets `threads` intra-op threads.
    pub fn new(rt: Runtime, model: &ModelProto, shape: &[usize], threads: usize) -> Result<Runner> {
        Ok(match rt {
            Runtime::Ort => Runner::Ort(ort::OrtModel::new(model, shape, threads)?),
            Runtime::Tract => Runner::Tract(tract::TractModel::new(model, shape)?),
        })
    }

    /// Runs on `x` (row-major); returns the first output, flattened.
    pub fn run(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        match self {
            Runner::Ort(m) => m.run(x),
            Runner::Tract(m) => m.run(x),
        }
    }
}

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
