//! Label-free Fisher channel importance on the gate graph (Theis et al. 2018, "Faster gaze
//! prediction with dense networks and Fisher pruning", eq. 5-6 with the model's own output
//! distribution; Liu et al. 2021, "Group Fisher Pruning").
//!
//! With a Gaussian likelihood around the model's output `y = f(x; g)` (`[S, T]`, the
//! gates `g` all at 1), the Fisher information of gate j is `E_x ‖∂y/∂g_j‖² / σ²`: the
//! squared output change, to first order, when channel j is removed. It needs neither
//! references nor a teacher other than the model itself, and at the unpruned model it is
//! not zero (a distillation loss's gradient is). The squared Jacobian column is estimated
//! by Hutchinson's trick: for a Rademacher probe `v` (entries ±1, `E[v vᵀ] = I`),
//! `E_v (vᵀ ∂y/∂g_j)² = ‖∂y/∂g_j‖²`, one probe and one backward pass per crop. Each crop's
//! probe is divided by the RMS of its output, so a crop counts by its relative change,
//! whatever its loudness. The scores go through the same global-threshold budget as learned
//! scores ([`crate::prune::masks_from_scores`]): they are in the same unit (squared relative
//! output change) in every group, so the threshold also allocates channels among groups.
use super::data::input_crops;
use super::gumbel::rng_at;
use super::run::gated_graph;
use super::taylor::{add_squared_grads, unit_gates};
use crate::error::{Error, Result};
use crate::onnx::ModelProto;
use crate::prune::Budget;
use candle_core::Tensor as CTensor;
use rand::Rng;
use std::collections::HashMap;
use std::path::Path;

/// Fisher scores per prunable group in the budget's scope: group id -> `[C]` mean squared
/// relative output change when the channel is removed (first order). `data`: a
/// LibriMix-style directory (its `mix/` crops) or any directory of audio; crops of
/// `samples` at 16 kHz, at most `crops_per_file` per file; the probes are drawn from `seed`.
///
/// Errors: unreadable or empty data, an op without a Candle lowering.
pub fn fisher_scores(
    model: &ModelProto,
    data: &Path,
    samples: usize,
    crops_per_file: usize,
    budget: &Budget,
    seed: u64,
    device: &candle_core::Device,
) -> Result<HashMap<usize, Vec<f64>>> {
    let e = Error::candle("fisher");
    let (graph, cands) = gated_graph(model, samples, budget, device)?;
    let inputs = input_crops(data, samples, crops_per_file)?;
    if inputs.is_empty() {
        return Err(Error::Data(format!(
            "{}: no crops of {samples} samples for Fisher scores",
            data.display()
        )));
    }
    let (vars, gates) = unit_gates(&graph, &cands)?;
    let mut scores: HashMap<usize, Vec<f64>> =
        cands.iter().map(|g| (g.id, vec![0.0; g.size])).collect();
    let n = inputs.len() as f64;
    for (i, x) in inputs.iter().enumerate() {
        let y = graph.forward(&graph.input(x)?, &gates)?;
        let values: Vec<f32> = y.flatten_all().and_then(|t| t.to_vec1()).map_err(e)?;
        let rms = (values.iter().map(|v| (*v as f64).powi(2)).sum::<f64>()
            / values.len().max(1) as f64)
            .sqrt();
        if rms <= 1e-12 {
            continue;
        }
        let mut rng = rng_at(seed, i);
        let probe: Vec<f32> = values
            .iter()
            .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 } / rms as f32)
            .collect();
        let probe = CTensor::from_vec(probe, y.dims(), y.device())
            .and_then(|p| p.to_dtype(y.dtype()))
            .map_err(e)?;
        let grads = (&y * &probe)
            .and_then(|p| p.sum_all())
            .and_then(|l| l.backward())
            .map_err(e)?;
        add_squared_grads(&grads, &vars, &mut scores, 1.0 / n)?;
    }
    Ok(scores)
}

/// Masks under `budget` from Fisher scores on `data` (crops of `samples`, 2 per file):
/// [`fisher_scores`] then [`crate::prune::masks_from_scores`].
///
/// Errors: those of [`fisher_scores`] and of the budget.
pub fn fisher_masks(
    ir: &crate::ir::Ir,
    groups: &crate::analysis::Groups,
    budget: &Budget,
    data: &Path,
    samples: usize,
    device: &candle_core::Device,
) -> Result<crate::prune::Budgeted> {
    let scores = fisher_scores(&ir.model, data, samples, 2, budget, budget.seed, device)?;
    crate::prune::masks_from_scores(ir, groups, budget, &scores)
}
