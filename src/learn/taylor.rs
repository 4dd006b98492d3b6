//! First-order Taylor channel importance on the gate graph (Molchanov et al. 2019,
//! "Importance Estimation for Neural Network Pruning", eq. 8 with gates): with every gate
//! at 1, the importance of channel j is the mean over crops of `(g_j ∂L/∂g_j)² =
//! (∂L/∂g_j)²`, the squared first-order estimate of the loss change when the channel is
//! removed. A data-driven baseline for `prune --criterion taylor --data DIR`; the scores
//! go through the same global-threshold budget as learned scores
//! ([`crate::prune::masks_from_scores`]).
use super::data::crops;
use super::loss::{on_targets, Loss};
use super::run::gated_graph;
use crate::error::{Error, Result};
use crate::gates::gate_name;
use crate::onnx::ModelProto;
use crate::prune::Budget;
use candle_core::{Tensor as CTensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// Taylor scores per prunable group in the budget's scope: group id -> `[C]` importances.
/// Needs references (at the unpruned model a teacher's gradient is zero).
///
/// Errors: data without references, an op without a Candle lowering.
pub fn taylor_scores(
    model: &ModelProto,
    data: &Path,
    samples: usize,
    crops_per_file: usize,
    budget: &Budget,
    loss: Loss,
    device: &candle_core::Device,
) -> Result<HashMap<usize, Vec<f64>>> {
    let e = Error::candle("taylor");
    let (graph, cands) = gated_graph(model, samples, budget, device)?;
    let items: Vec<_> = crops(data, samples, crops_per_file, None)?
        .into_iter()
        .flatten()
        .collect();
    let (vars, gates) = unit_gates(&graph, &cands)?;
    let mut scores: HashMap<usize, Vec<f64>> =
        cands.iter().map(|g| (g.id, vec![0.0; g.size])).collect();
    for it in &items {
        let y = graph.forward(&graph.input(&it.input)?, &gates)?;
        let grads = on_targets(&y, &it.targets, loss)?.backward().map_err(e)?;
        add_squared_grads(&grads, &vars, &mut scores, 1.0 / items.len() as f64)?;
    }
    Ok(scores)
}

/// Every candidate group's gate at 1 as a `Var` (group id, `[C]`), and the same tensors
/// by gate name for [`crate::learn::CandleGraph::forward`].
///
/// Errors: a Candle failure.
pub(crate) fn unit_gates(
    graph: &crate::learn::CandleGraph,
    cands: &[crate::analysis::Group],
) -> Result<(Vec<(usize, Var)>, HashMap<String, CTensor>)> {
    let e = Error::candle("gates");
    let vars: Vec<(usize, Var)> = cands
        .iter()
        .map(|g| {
            let ones = CTensor::ones(g.size, graph.dtype(), graph.device()).map_err(e)?;
            Ok((g.id, Var::from_tensor(&ones).map_err(e)?))
        })
        .collect::<Result<_>>()?;
    let gates = vars
        .iter()
        .map(|(id, v)| (gate_name(*id), v.as_tensor().clone()))
        .collect();
    Ok((vars, gates))
}

/// Adds `weight · (∂L/∂g_j)²` of every gate in `vars` to `scores` (group id -> `[C]`).
///
/// Errors: a Candle failure.
pub(crate) fn add_squared_grads(
    grads: &candle_core::backprop::GradStore,
    vars: &[(usize, Var)],
    scores: &mut HashMap<usize, Vec<f64>>,
    weight: f64,
) -> Result<()> {
    for (id, v) in vars {
        let Some(g) = grads.get(v.as_tensor()) else {
            continue;
        };
        let g: Vec<f64> = g
            .to_dtype(candle_core::DType::F64)
            .and_then(|g| g.to_vec1())
            .map_err(Error::candle("gates"))?;
        if let Some(s) = scores.get_mut(id) {
            for (s, gj) in s.iter_mut().zip(g) {
                *s += weight * gj * gj;
            }
        }
    }
    Ok(())
}

/// Masks under `budget` from Taylor scores on `data` (crops of `samples`, 2 per mixture,
/// negative SI-SDR): [`taylor_scores`] then [`crate::prune::masks_from_scores`].
///
/// Errors: those of [`taylor_scores`] and of the budget.
pub fn taylor_masks(
    ir: &crate::ir::Ir,
    groups: &crate::analysis::Groups,
    budget: &Budget,
    data: &Path,
    samples: usize,
    device: &candle_core::Device,
) -> Result<crate::prune::Budgeted> {
    let scores = taylor_scores(&ir.model, data, samples, 2, budget, Loss::SiSdr, device)?;
    crate::prune::masks_from_scores(ir, groups, budget, &scores)
}
