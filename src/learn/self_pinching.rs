//! Self-pinching gates: one learnable threshold per layer, trained with the weights in a
//! single pass (seed 004, "Effective and efficient one-pass compression of speech
//! foundation models using sparsity-aware self-pinching gates", 2025).
//!
//! The summary we have fixes: layer-level tied gates, each holding a single learnable
//! threshold; neuron-level (channel) pruning; the gates trained jointly with the
//! uncompressed model, so that pruning and fine-tuning are one stage; sparsity-aware, with
//! a controllable sparsity. It leaves open what a gate compares with its threshold and how
//! the sparsity is controlled. Our reading:
//!
//! - each channel j of group g has a fixed importance `a_j`: the summed L1 norm of every
//!   parameter slice it carries ([`crate::prune::channel_scores`]), divided by the group's
//!   largest, so in (0, 1];
//! - the gate of group g has one threshold `t_g` (initially 0: every channel open), and
//!   channel j's gate is `1[a_j > t_g]` forward, with the gradient of the relaxation
//!   `sigmoid((a_j - t_g) / T)` backward (straight-through, temperature T);
//! - sparsity is held by the same Lagrangian as [`super::hard_concrete`] on the expected
//!   cost share, with `k_g = sum_j sigmoid((a_j - t_g) / T)` channels kept in group g;
//! - the weights train at every step with the gates (the caller's `on_grads`).
//!
//! The final mask ranks channels by `a_j - t_g` under the budget exactly
//! ([`crate::prune::masks_from_scores`]): within a layer by importance, across layers by
//! the learned thresholds.
use super::gumbel::{gate_grad, gate_var, Scores};
use super::hard_concrete::{ExpectedCost, HcStats};
use crate::analysis::{Group, Groups};
use crate::error::{Error, Result};
use crate::gates::gate_name;
use crate::ir::Ir;
use crate::prune::{channel_scores, Criterion};
use candle_core::Tensor as CTensor;
use std::collections::{BTreeMap, HashMap};

/// Hyper-parameters of the self-pinching learner.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SpConfig {
    /// Temperature of the relaxation, in units of normalised importance.
    pub temperature: f64,
    /// Adam step size on the thresholds.
    pub lr: f64,
    pub lambda_lr: f64,
    pub warmup: usize,
    pub iters: usize,
    pub seed: u64,
    /// Share of the scope's cost to keep.
    pub target: f64,
    pub measure: crate::prune::Measure,
}

impl Default for SpConfig {
    fn default() -> Self {
        SpConfig {
            temperature: 0.05,
            lr: 0.01,
            lambda_lr: 0.5,
            warmup: 100,
            iters: 500,
            seed: 0,
            target: 0.5,
            measure: crate::prune::Measure::Macs,
        }
    }
}

impl SpConfig {
    /// The target share at `step` ([`super::hard_concrete::ramped_target`]).
    pub fn target_at(&self, step: usize) -> f64 {
        super::hard_concrete::ramped_target(self.target, self.warmup, step)
    }
}

/// Normalised channel importances `a_j` of the learned groups (module docs).
///
/// Errors: an initializer that cannot be read.
pub fn importances(
    ir: &Ir,
    groups: &Groups,
    cands: &[&Group],
) -> Result<BTreeMap<usize, Vec<f64>>> {
    cands
        .iter()
        .map(|g| {
            let s = channel_scores(ir, groups, g, Criterion::L1)?;
            let top = s.iter().copied().fold(0.0, f64::max).max(1e-12);
            Ok((g.id, s.into_iter().map(|v| v / top).collect()))
        })
        .collect()
}

/// New learner state: one threshold per group at 0 (stored as that group's only score).
pub fn init_scores(groups: &[&Group]) -> Scores {
    let mut s = Scores::new(groups, 0.0);
    for v in s
        .theta
        .values_mut()
        .chain(s.m.values_mut())
        .chain(s.v.values_mut())
    {
        v.truncate(1);
    }
    s
}

/// Per-channel scores for the final ranking: `a_j - t_g`.
pub fn channel_ranking(scores: &Scores, a: &BTreeMap<usize, Vec<f64>>) -> HashMap<usize, Vec<f64>> {
    a.iter()
        .map(|(&g, aj)| {
            let t = scores
                .theta
                .get(&g)
                .and_then(|t| t.first())
                .copied()
                .unwrap_or(0.0);
            (g, aj.iter().map(|&x| x - t).collect())
        })
        .collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// One step: gates from the thresholds, the task loss, its gradient to the thresholds
/// (straight-through) plus the Lagrangian term's; Adam on the thresholds, ascent on the
/// multipliers. `on_grads` updates the weights.
///
/// Errors: the forward pass or the loss.
#[allow(clippy::too_many_arguments)]
pub fn step(
    device: &candle_core::Device,
    dtype: candle_core::DType,
    scores: &mut Scores,
    a: &BTreeMap<usize, Vec<f64>>,
    cfg: &SpConfig,
    cost: &ExpectedCost,
    loss_of: &mut dyn FnMut(&HashMap<String, CTensor>) -> Result<CTensor>,
    on_grads: &mut dyn FnMut(&mut candle_core::backprop::GradStore) -> Result<()>,
) -> Result<HcStats> {
    let e = Error::candle("self-pinching learner");
    let mut gates = HashMap::new();
    let mut vars = vec![];
    let (mut open, mut total) = (0usize, 0usize);
    let mut expected = BTreeMap::new();
    for (&g, aj) in a {
        let t = scores.theta[&g][0];
        let fwd: Vec<f32> = aj.iter().map(|&x| (x > t) as u8 as f32).collect();
        open += fwd.iter().filter(|&&v| v > 0.0).count();
        total += fwd.len();
        expected.insert(
            g,
            aj.iter()
                .map(|&x| sigmoid((x - t) / cfg.temperature))
                .sum::<f64>(),
        );
        let var = gate_var(fwd, device, dtype)?;
        gates.insert(gate_name(g), var.as_tensor().clone());
        vars.push((g, var));
    }
    let loss = loss_of(&gates)?;
    let lv = super::loss::scalar(&loss)?;
    let mut grads = match lv.is_finite() {
        true => Some(loss.backward().map_err(e)?),
        false => None,
    };
    if let Some(gs) = grads.as_mut() {
        on_grads(gs)?;
    }
    let (s, slope) = cost.share(&expected);
    let tgt = cfg.target_at(scores.step);
    let dpen_ds = scores.penalty_slope(s, tgt);
    scores.step += 1;
    for (g, var) in vars {
        let aj = &a[&g];
        let t = scores.theta[&g][0];
        let dl = gate_grad(grads.as_ref(), &var, aj.len())?;
        let sl = slope.get(&g).copied().unwrap_or(0.0);
        // d gate_j / d t = -sigmoid'((a_j - t) / T) / T, for the task and the cost alike
        let grad: f64 = aj
            .iter()
            .zip(&dl)
            .map(|(&x, &task)| {
                let p = sigmoid((x - t) / cfg.temperature);
                (task + dpen_ds * sl) * (-p * (1.0 - p) / cfg.temperature)
            })
            .sum();
        scores.adam(g, &[grad], cfg.lr);
    }
    scores.climb(s, tgt, cfg.lambda_lr);
    Ok(HcStats {
        loss: lv,
        expected: s,
        target: tgt,
        kept: open as f64 / total.max(1) as f64,
    })
}
