//! Runtimes: tract (pure Rust, always available) and ONNX Runtime (`ort`, load-dynamic) on
//! the CPU or, with `onnxruntime-gpu`, on a CUDA GPU.
pub mod ort;
pub mod tract;

use crate::error::Result;
use crate::onnx::ModelProto;
use serde::Serialize;

/// An inference runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// ONNX Runtime, CPU execution provider.
    Ort,
    /// ONNX Runtime, CUDA execution provider on GPU 0 (`onnxruntime-gpu`); fails loudly
    /// when the provider does not register, never falls back to the CPU.
    OrtCuda,
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
            Runtime::OrtCuda => "ort-cuda",
            Runtime::Tract => "tract",
        }
    }
}

/// A model prepared for one input shape in one runtime.
pub enum Runner {
    Ort(ort::OrtModel),
    Tract(tract::TractModel),
}

/// How a runtime runs a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// ORT CPU intra-op threads (tract runs on one).
    pub threads: usize,
    /// ORT CUDA: capture the run in a CUDA graph and replay it.
    pub cuda_graph: bool,
}

impl Runner {
    /// A runner for verification: one thread, and ORT without graph optimizations
    /// so that the compared graphs run the same kernels ([`ort::OrtModel::with_level`]).
    pub fn exact(rt: Runtime, model: &ModelProto, shape: &[usize]) -> Result<Runner> {
        use ort::{GraphOptimizationLevel as L, OrtModel, Provider};
        Ok(match rt {
            Runtime::Ort => Runner::Ort(OrtModel::with_level(
                model,
                shape,
                Provider::Cpu { threads: 1 },
                L::Disable,
            )?),
            Runtime::OrtCuda => Runner::Ort(OrtModel::with_level(
                &with_input_shape(model, shape, false),
                shape,
                Provider::Cuda { graph: false },
                L::Disable,
            )?),
            Runtime::Tract => Runner::Tract(tract::TractModel::new(model, shape)?),
        })
    }

    /// Prepares `model` for a single f32 input of `shape`; ORT CPU gets `threads` intra-op
    /// threads.
    pub fn new(rt: Runtime, model: &ModelProto, shape: &[usize], threads: usize) -> Result<Runner> {
        let s = Settings {
            threads,
            cuda_graph: false,
        };
        Runner::with_settings(rt, model, shape, s)
    }

    /// Prepares `model` for a single f32 input of `shape` with settings `s`.
    ///
    /// Errors: the runtime cannot load or optimise the model; ORT CUDA without a usable
    /// CUDA provider.
    pub fn with_settings(
        rt: Runtime,
        model: &ModelProto,
        shape: &[usize],
        s: Settings,
    ) -> Result<Runner> {
        use ort::Provider;
        Ok(match rt {
            Runtime::Ort => Runner::Ort(ort::OrtModel::new(
                model,
                shape,
                Provider::Cpu { threads: s.threads },
            )?),
            Runtime::OrtCuda => Runner::Ort(ort::OrtModel::new(
                &with_input_shape(model, shape, s.cuda_graph),
                shape,
                Provider::Cuda {
                    graph: s.cuda_graph,
                },
            )?),
            Runtime::Tract => Runner::Tract(tract::TractModel::new(model, shape)?),
        })
    }

    /// Runs on `x` (row-major); returns every float output, flattened and concatenated, on
    /// the host (a GPU session: its first output).
    pub fn run(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        match self {
            Runner::Ort(m) => m.run(x),
            Runner::Tract(m) => m.run(x),
        }
    }

    /// Makes `x` the input of [`Runner::timed_run`] (on a GPU: copied to the device once).
    pub fn stage(&mut self, x: &[f32]) -> Result<()> {
        match self {
            Runner::Ort(m) => m.stage(x),
            Runner::Tract(m) => {
                m.stage(x);
                Ok(())
            }
        }
    }

    /// One run on the staged input, in seconds (on a GPU: input and output in device
    /// memory, the clock stopped when the device has finished).
    pub fn timed_run(&mut self) -> Result<f64> {
        match self {
            Runner::Ort(m) => m.timed_run(),
            Runner::Tract(m) => m.timed_run(),
        }
    }
}

/// `model` with its first input declared with the dims of `shape`: a batch axis (axis 0)
/// declared 1 takes `shape[0]`, so that a model exported for batch 1 can run larger
/// batches; with `pin`, every symbolic axis takes its length too (static shapes let ORT fold
/// shape computations, which CUDA graphs need). Outputs' axes become symbolic and
/// intermediate `value_info` is dropped. A Reshape that holds the batch of 1 as a literal
/// follows the new batch ([`crate::ops::widen_batch`]); whether the graph then keeps items
/// apart is checked by running it (`bench` does, per model).
pub fn with_input_shape(model: &ModelProto, shape: &[usize], pin: bool) -> ModelProto {
    use crate::onnx::dims_mut as dims;
    use crate::onnx::pb::tensor_shape_proto::dimension::Value;
    let batch = shape.first().copied().unwrap_or(1);
    let mut m = model.clone();
    let declared_one = m
        .graph
        .as_mut()
        .and_then(|g| g.input.first_mut())
        .and_then(dims)
        .and_then(|d| d.first().map(|d| d.value == Some(Value::DimValue(1))))
        .unwrap_or(false);
    if batch > 1 && declared_one {
        // (a model that declares another fixed batch is left as it is: the runtime says no)
        m = crate::ops::widen_batch(model, batch).unwrap_or(m);
    }
    let Some(g) = m.graph.as_mut() else { return m };
    let mut changed = false;
    if let Some(d) = g.input.first_mut().and_then(dims) {
        for (i, (dim, &n)) in d.iter_mut().zip(shape).enumerate() {
            let new = match &dim.value {
                Some(Value::DimValue(1)) if i == 0 && n != 1 => true,
                Some(Value::DimParam(_)) | None => pin,
                _ => false,
            };
            if new {
                dim.value = Some(Value::DimValue(n as i64));
                changed = true;
            }
        }
    }
    if changed {
        for o in g.output.iter_mut() {
            for (i, dim) in dims(o).into_iter().flatten().enumerate() {
                dim.value = Some(Value::DimParam(format!("out_{i}")));
            }
        }
        g.value_info.clear();
    }
    m
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

/// A graph input after the first, and what a run feeds it.
#[derive(Clone, Debug)]
pub struct SideInput {
    pub name: String,
    /// Its dims: declared ones kept, symbolic ones 1.
    pub shape: Vec<usize>,
    /// ONNX element type (1 float, 6 int32, 7 int64, 9 bool).
    pub elem_type: i32,
    /// Every element's value for an integer input: the time extent of the first input (a
    /// sequence length). Float inputs get [`SideInput::floats`].
    pub fill: i64,
}

impl SideInput {
    /// The values of a float side input: a fixed pseudo-random pattern in [-0.05, 0.05]
    /// (not zeros, so that a check compares the paths it feeds).
    pub fn floats(&self) -> Vec<f32> {
        let n: usize = self.shape.iter().product();
        (0..n)
            .map(|i| ((i * 7919 + 13) % 1000) as f32 / 10000.0 - 0.05)
            .collect()
    }
}

/// The inputs after the first of `model`, for a first input of `shape`: integer inputs (a
/// Conformer's `lengths`) hold the first input's time extent, its last symbolic dim (the
/// largest dim of a fixed-shape input); float ones a fixed pattern ([`SideInput::floats`]).
/// Their own symbolic dims take the first input's time extent when it is their last symbolic
/// dim (a second feature stream), else 1. Initializers listed as inputs are not inputs.
pub fn side_inputs(model: &ModelProto, shape: &[usize]) -> Vec<SideInput> {
    use crate::onnx::pb::{tensor_shape_proto::dimension::Value, type_proto::Value as TV};
    let Some(g) = model.graph.as_ref() else {
        return vec![];
    };
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let decl =
        |v: &crate::onnx::ValueInfoProto| match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(TV::TensorType(tt)) => (
                tt.shape
                    .as_ref()
                    .map(|s| {
                        s.dim
                            .iter()
                            .map(|d| match d.value {
                                Some(Value::DimValue(n)) if n > 0 => Some(n as usize),
                                _ => None,
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default(),
                tt.elem_type.unwrap_or(1),
            ),
            _ => (vec![], 1),
        };
    let mut inputs = g.input.iter().filter(|i| !inits.contains(i.name()));
    let Some(first) = inputs.next() else {
        return vec![];
    };
    let (dims0, _) = decl(first);
    let extent = match dims0.iter().rposition(|d| d.is_none()) {
        Some(t) => shape.get(t).copied().unwrap_or(1),
        None => shape.iter().copied().max().unwrap_or(1),
    };
    inputs
        .map(|i| {
            let (dims, elem_type) = decl(i);
            let float = matches!(elem_type, 1 | 10 | 11 | 16);
            let time = dims.iter().rposition(|d| d.is_none());
            SideInput {
                name: i.name().to_string(),
                shape: dims
                    .iter()
                    .enumerate()
                    .map(|(k, d)| d.unwrap_or(if Some(k) == time { extent } else { 1 }))
                    .collect(),
                elem_type,
                fill: if float { 0 } else { extent as i64 },
            }
        })
        .collect()
}

/// Runs `model` in `runtime` on each of `inputs` (each fed as `[1, 1, len]`, one plan per
/// length) and returns every input's float outputs, flattened.
///
/// Errors: a model the runtime cannot run at one of the lengths.
pub fn run_each(
    runtime: Runtime,
    model: &crate::onnx::ModelProto,
    inputs: &[Vec<f32>],
) -> Result<Vec<Vec<f32>>> {
    let mut by_len: std::collections::HashMap<usize, Runner> = Default::default();
    inputs
        .iter()
        .map(|x| {
            let r = match by_len.entry(x.len()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(Runner::new(runtime, model, &[1, 1, x.len()], 1)?)
                }
            };
            r.run(x)
        })
        .collect()
}
