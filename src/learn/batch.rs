//! Batched training of models exported for batch 1: the model rewritten so that its first
//! input takes `B` items, then checked by running it.
//!
//! An export made at batch 1 often computes with that 1: a Reshape to `[1, 1, 512, -1]`
//! (the real Conv-TasNet's mask) merges whatever comes in into one item.
//! [`crate::ops::widen_batch`]
//! declares axis 0 of the first input as `B` and lets each such Reshape copy axis 0 from
//! its input ([`crate::ops::batch_following_target`]). Whether every node now keeps the
//! items apart is not read from the graph but measured: [`check`] runs the rewritten graph
//! on two different items and compares each with the original graph's output for that
//! item alone. A graph that mixes items (a norm over the batch axis, a Reshape that folds
//! it into another axis) fails the check and is refused.
use super::CandleGraph;
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::onnx::ModelProto;
use candle_core::{DType, Device};
use std::collections::HashMap;

/// Checks that `model` widened ([`crate::ops::widen_batch`], checked at batch 2) computes
/// each item as `model` computes it alone, at `samples` input samples, on the CPU in f32.
/// Returns the relative error.
///
/// Errors: the rewritten graph does not infer or run, or mixes items (relative error above
/// 1e-4), named as such.
pub fn check(model: &ModelProto, samples: usize) -> Result<f64> {
    let cpu = Device::Cpu;
    let one = CandleGraph::new(Ir::new(model.clone(), samples)?, &cpu, DType::F32, &[])?;
    let n: usize = one.input_shape().iter().product();
    let items: Vec<Vec<f32>> = (0..2u64).map(|s| noise(n, s)).collect();
    let none = HashMap::new();
    let e = Error::candle("batch check");
    let flat: Vec<f32> = items.concat();
    let y2 = crate::ops::widen_batch(model, 2)
        .and_then(|w| Ir::new(w, samples))
        .and_then(|ir| CandleGraph::new(ir, &cpu, DType::F32, &[]))
        .and_then(|two| two.forward(&two.input(&flat)?, &none))
        .map_err(|err| {
            Error::Graph(format!(
                "batch: the model does not run at batch 2 ({err}): it computes with its \
                 batch of 1; train at batch 1"
            ))
        })?;
    if y2.dims().first() != Some(&2) {
        return Err(Error::Graph(format!(
            "batch: the output at batch 2 has shape {:?}, no batch axis of 2: the model merges \
             batch items; train at batch 1",
            y2.dims()
        )));
    }
    let mut worst = 0f64;
    for (i, x) in items.iter().enumerate() {
        let y1 = one.forward(&one.input(x)?, &none)?;
        let a: Vec<f32> = y1.flatten_all().and_then(|t| t.to_vec1()).map_err(&e)?;
        let b: Vec<f32> = y2
            .narrow(0, i, 1)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(&e)?;
        if a.len() != b.len() {
            return Err(Error::Graph(format!(
                "batch: item {i} has {} output values in a batch of 2, {} alone: the graph \
                 does not keep batch items apart; train at batch 1",
                b.len(),
                a.len()
            )));
        }
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let err = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale;
        worst = worst.max(err as f64);
    }
    if worst > 1e-4 {
        return Err(Error::Graph(format!(
            "batch: the model computes an item differently in a batch of 2 (relative error \
             {worst:.2e}): it mixes batch items; train at batch 1"
        )));
    }
    Ok(worst)
}

/// `n` deterministic noise samples in [-0.5, 0.5) from `seed`.
fn noise(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect()
}
