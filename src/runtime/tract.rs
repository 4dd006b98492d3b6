//! tract-onnx runner: one optimized plan per (model, input shape).
use crate::error::{Error, Result};
use crate::onnx::{self, ModelProto};
use tract_onnx::prelude::*;

pub struct TractModel {
    plan: std::sync::Arc<TypedSimplePlan>,
    shape: Vec<usize>,
    staged: Vec<f32>,
    /// The other graph inputs' values, fed on every run ([`super::side_inputs`]).
    side: Vec<Tensor>,
}

impl TractModel {
    /// Optimizes `model` for a single f32 input of `shape` (e.g. `[1, 1, T]`).
    pub fn new(model: &ModelProto, shape: &[usize]) -> Result<TractModel> {
        // Intermediate value_info is only a hint, and exporters write it for the traced
        // length (torch.export specialises some dims): tract would hold us to it.
        let mut model = model.clone();
        if let Some(g) = model.graph.as_mut() {
            g.value_info.clear();
        }
        let bytes = onnx::encode(&model);
        let err = |e: TractError| Error::Runtime(format!("tract: {e:#}"));
        let mut side = vec![];
        for s in super::side_inputs(&model, shape) {
            let n: usize = s.shape.iter().product();
            let t = match s.elem_type {
                7 => Tensor::from_shape(&s.shape, &vec![s.fill; n]),
                6 => Tensor::from_shape(&s.shape, &vec![s.fill as i32; n]),
                9 => Tensor::from_shape(&s.shape, &vec![s.fill != 0; n]),
                _ => Tensor::from_shape(&s.shape, &s.floats()),
            }
            .map_err(err)?;
            side.push(t);
        }
        let mut m = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .map_err(err)?
            .with_input_fact(0, f32::fact(shape).into())
            .map_err(err)?;
        for (i, t) in side.iter().enumerate() {
            m = m
                .with_input_fact(i + 1, InferenceFact::from(t.clone()))
                .map_err(err)?;
        }
        let plan = m
            .into_optimized()
            .map_err(err)?
            .into_runnable()
            .map_err(err)?;
        Ok(TractModel {
            plan,
            shape: shape.to_vec(),
            staged: vec![],
            side,
        })
    }

    /// Runs on `x` (row-major, `shape` elements); returns every float output, flattened
    /// and concatenated in order.
    pub fn run(&self, x: &[f32]) -> Result<Vec<f32>> {
        let err = |e: TractError| Error::Runtime(format!("tract: {e:#}"));
        let t =
            tract_ndarray::ArrayD::from_shape_vec(tract_ndarray::IxDyn(&self.shape), x.to_vec())
                .map_err(|e| Error::Runtime(e.to_string()))?;
        let mut inputs: TVec<TValue> = tvec!(Tensor::from(t).into());
        inputs.extend(self.side.iter().map(|s| s.clone().into()));
        let out = self.plan.run(inputs).map_err(err)?;
        // every float output, in order
        let mut y = vec![];
        for o in out.iter() {
            if let Ok(v) = o.to_plain_array_view::<f32>() {
                y.extend(v.iter().copied());
            }
        }
        Ok(y)
    }

    /// Makes `x` the input of [`TractModel::timed_run`].
    pub fn stage(&mut self, x: &[f32]) {
        self.staged = x.to_vec();
    }

    /// One run on the staged input, in seconds.
    pub fn timed_run(&self) -> Result<f64> {
        let t = std::time::Instant::now();
        self.run(&self.staged)?;
        Ok(t.elapsed().as_secs_f64())
    }
}

/// The original model as a [`crate::learn::data::Teacher`] on tract: one optimized plan per
/// input length, made on first use and kept.
pub struct TractTeacher {
    model: ModelProto,
    plans: std::sync::Mutex<std::collections::HashMap<usize, std::sync::Arc<TractModel>>>,
}

impl TractTeacher {
    /// `model` as a shared teacher for the learners.
    pub fn shared(model: ModelProto) -> crate::learn::data::SharedTeacher {
        std::sync::Arc::new(TractTeacher {
            model,
            plans: Default::default(),
        })
    }
}

impl crate::learn::data::Teacher for TractTeacher {
    fn model(&self) -> &ModelProto {
        &self.model
    }

    fn run(&self, x: &[f32]) -> Result<Vec<f32>> {
        let plan = {
            let mut plans = self
                .plans
                .lock()
                .map_err(|_| Error::Runtime("tract: a teacher plan panicked".into()))?;
            match plans.get(&x.len()) {
                Some(p) => p.clone(),
                None => {
                    let p = std::sync::Arc::new(TractModel::new(&self.model, &[1, 1, x.len()])?);
                    plans.insert(x.len(), p.clone());
                    p
                }
            }
        };
        plan.run(x)
    }
}
