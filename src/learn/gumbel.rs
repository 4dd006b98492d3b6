//! The SepPrune mask learner (Li et al. 2025, section 4.2, eqs. 5-7) on the gate graph.
//!
//! Each channel j of a learned group has a score θ_j. Per step, with logistic noise
//! `g = log u - log(1 - u)`, `u ~ U(0, 1)` (the difference of two Gumbel samples: the
//! two-way Gumbel-Softmax), `π_j = sigmoid((θ_j + g_j) / τ)` and the forward mask is
//! `m_j = 1[π_j > ε]` (eq. 6). The gate graph runs with gates `m`, so the loss is the loss of
//! the pruned model itself. Backward is straight-through: `∂L/∂π = clip(∂L/∂m, -1, 1)`
//! (eq. 6), then `∂π/∂θ = π(1 - π)/τ`. Adam updates θ (eq. 7); model weights stay frozen.
//!
//! The paper writes a softmax over a layer's channels (eq. 5); with hundreds of channels no
//! entry of a softmax can exceed ε = 0.7, so this is the per-channel two-way form.
//! Beyond the paper: the final mask is deterministic (`θ_j`, no noise) and can meet an exact
//! MACs budget ([`crate::prune::masks_from_scores`]).
use super::graph::CandleGraph;
use super::loss::Loss;
use crate::analysis::Group;
use crate::error::{Error, Result};
use crate::gates::gate_name;
use candle_core::{Tensor as CTensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Hyper-parameters (paper defaults: Adam lr 0.1, 500 iterations, ε = 0.7).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GumbelConfig {
    pub eps: f64,
    pub tau: f64,
    pub lr: f64,
    pub iters: usize,
    pub seed: u64,
    /// Initial score of every channel (3.0: π ≈ 0.95 before noise, most channels kept).
    pub init: f64,
    pub loss: Loss,
}

impl Default for GumbelConfig {
    fn default() -> Self {
        GumbelConfig {
            eps: 0.7,
            tau: 1.0,
            lr: 0.1,
            iters: 500,
            seed: 0,
            init: 3.0,
            loss: Loss::SiSdr,
        }
    }
}

/// Learner state: scores and Adam moments per group; serialisable as a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scores {
    pub format: String,
    /// Steps taken so far.
    pub step: usize,
    /// Group id -> per-channel score θ.
    pub theta: BTreeMap<usize, Vec<f64>>,
    pub(crate) m: BTreeMap<usize, Vec<f64>>,
    pub(crate) v: BTreeMap<usize, Vec<f64>>,
    /// Lagrange multipliers `[lambda1, lambda2]` of a budgeted learner
    /// ([`super::hard_concrete`]); zero for the Gumbel learner.
    #[serde(default)]
    pub lambda: [f64; 2],
}

pub const FORMAT: &str = "sepprune-scores/1";

impl Scores {
    pub fn new(groups: &[&Group], init: f64) -> Scores {
        let z = |g: &&Group| (g.id, vec![0.0; g.size]);
        Scores {
            format: FORMAT.into(),
            step: 0,
            theta: groups.iter().map(|g| (g.id, vec![init; g.size])).collect(),
            m: groups.iter().map(z).collect(),
            v: groups.iter().map(z).collect(),
            lambda: [0.0; 2],
        }
    }

    /// True when this state (read from a checkpoint a user may have edited) fits `groups`:
    /// the format, one score and two Adam moments per channel of each, all finite.
    pub fn fits(&self, groups: &[&Group]) -> bool {
        let fit = |m: &BTreeMap<usize, Vec<f64>>| {
            groups.iter().all(|g| {
                m.get(&g.id)
                    .is_some_and(|t| t.len() == g.size && t.iter().all(|x| x.is_finite()))
            })
        };
        self.format == FORMAT
            && fit(&self.theta)
            && fit(&self.m)
            && fit(&self.v)
            && self.lambda.iter().all(|l| l.is_finite())
    }

    /// The scores as a map for [`crate::prune::masks_from_scores`].
    pub fn map(&self) -> HashMap<usize, Vec<f64>> {
        self.theta.iter().map(|(&k, v)| (k, v.clone())).collect()
    }

    /// One Adam step (beta 0.9 / 0.999, eps 1e-8, bias-corrected at `self.step`, which the
    /// caller has advanced) on group `id`'s scores with their gradient `grad`.
    pub(crate) fn adam(&mut self, id: usize, grad: &[f64], lr: f64) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let (c1, c2) = (
            1.0 - b1.powi(self.step as i32),
            1.0 - b2.powi(self.step as i32),
        );
        let theta = self.theta.get_mut(&id).expect("group scores");
        let m = self.m.get_mut(&id).expect("group moments");
        let v = self.v.get_mut(&id).expect("group moments");
        for (j, &g) in grad.iter().enumerate() {
            m[j] = b1 * m[j] + (1.0 - b1) * g;
            v[j] = b2 * v[j] + (1.0 - b2) * g * g;
            theta[j] -= lr * (m[j] / c1) / ((v[j] / c2).sqrt() + eps);
        }
    }

    /// `d/ds` of the Lagrangian term `lambda1 (s - t) + lambda2 (s - t)^2`
    /// ([`super::hard_concrete`]).
    pub(crate) fn penalty_slope(&self, s: f64, t: f64) -> f64 {
        self.lambda[0] + 2.0 * self.lambda[1] * (s - t)
    }

    /// The multipliers climb the Lagrangian: one gradient-ascent step of size `lr`.
    pub(crate) fn climb(&mut self, s: f64, t: f64, lr: f64) {
        self.lambda[0] += lr * (s - t);
        self.lambda[1] += lr * (s - t) * (s - t);
    }
}

/// A gate vector as a differentiable Candle `Var` on `device`, in `dtype`.
///
/// Errors: a tensor that cannot be made there.
pub(crate) fn gate_var(
    values: Vec<f32>,
    device: &candle_core::Device,
    dtype: candle_core::DType,
) -> Result<Var> {
    let e = Error::candle("gates");
    let t = CTensor::new(values, device)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(e)?;
    Var::from_tensor(&t).map_err(e)
}

/// The gradient of gate `var` (`n` entries) in `grads`, as f64: zeros where there is none
/// (no gradient store, a gate the loss does not reach) or where it is not finite.
///
/// Errors: a gradient that cannot be read.
pub(crate) fn gate_grad(
    grads: Option<&candle_core::backprop::GradStore>,
    var: &Var,
    n: usize,
) -> Result<Vec<f64>> {
    match grads.and_then(|gs| gs.get(var.as_tensor())) {
        Some(g) => Ok(g
            .to_dtype(candle_core::DType::F64)
            .and_then(|g| g.to_vec1::<f64>())
            .map_err(Error::candle("gates"))?
            .into_iter()
            .map(|v| if v.is_finite() { v } else { 0.0 })
            .collect()),
        None => Ok(vec![0.0; n]),
    }
}

/// One training example: the model input `[1, 1, T]` (flattened) and targets `[S, T]`.
#[derive(Clone)]
pub struct Item {
    pub input: Vec<f32>,
    pub targets: Vec<Vec<f32>>,
}

/// What one step reports.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct StepStats {
    pub loss: f64,
    /// Share of the learned channels whose forward mask was 1.
    pub kept: f64,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// One learner step on `item`: sample masks, run the gate graph, back-propagate to the
/// gates, update the scores. `rng` draws the logistic noise.
///
/// Errors: the forward pass (an op without a lowering) or a shape mismatch.
pub fn step(
    graph: &CandleGraph,
    scores: &mut Scores,
    cfg: &GumbelConfig,
    item: &Item,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<StepStats> {
    let x = graph.input(&item.input)?;
    let mut loss_of = |gates: &HashMap<String, CTensor>| {
        let y = graph.forward(&x, gates)?;
        super::loss::on_targets(&y, &item.targets, cfg.loss)
    };
    step_with(graph, scores, cfg, &mut loss_of, &mut |_| Ok(()), rng)
}

/// [`step`] with any task loss: `loss_of` runs the gate graph under the given gate values
/// and returns a scalar loss (a distillation loss, [`super::distill`]); `on_grads` sees the
/// gradients of that loss (to update weights trained jointly).
///
/// Errors: the forward pass or the loss.
pub fn step_with(
    graph: &CandleGraph,
    scores: &mut Scores,
    cfg: &GumbelConfig,
    loss_of: &mut dyn FnMut(&HashMap<String, CTensor>) -> Result<CTensor>,
    on_grads: &mut dyn FnMut(&mut candle_core::backprop::GradStore) -> Result<()>,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<StepStats> {
    let e = Error::candle("learner");
    let dev = graph.device();
    let mut gates = HashMap::new();
    let mut vars = vec![];
    let mut probs: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let (mut kept, mut total) = (0usize, 0usize);
    for (&id, theta) in &scores.theta {
        let pi: Vec<f64> = theta
            .iter()
            .map(|&t| {
                let u: f64 = rng.random_range(1e-9..1.0 - 1e-9);
                sigmoid((t + (u.ln() - (1.0 - u).ln())) / cfg.tau)
            })
            .collect();
        let m: Vec<f32> = pi
            .iter()
            .map(|&p| if p > cfg.eps { 1.0 } else { 0.0 })
            .collect();
        kept += m.iter().filter(|&&v| v > 0.0).count();
        total += m.len();
        let var = gate_var(m, dev, graph.dtype())?;
        gates.insert(gate_name(id), var.as_tensor().clone());
        vars.push((id, var));
        probs.insert(id, pi);
    }
    let loss = loss_of(&gates)?;
    let mut grads = loss.backward().map_err(e)?;
    let lv = super::loss::scalar(&loss)?;
    on_grads(&mut grads)?;
    // Adam on θ with the straight-through, clipped gradient
    scores.step += 1;
    for (id, var) in vars {
        let pi = &probs[&id];
        let g = gate_grad(Some(&grads), &var, pi.len())?;
        let dtheta: Vec<f64> = (0..pi.len())
            .map(|j| g[j].clamp(-1.0, 1.0) * pi[j] * (1.0 - pi[j]) / cfg.tau)
            .collect();
        scores.adam(id, &dtheta, cfg.lr);
    }
    Ok(StepStats {
        loss: lv,
        kept: kept as f64 / total.max(1) as f64,
    })
}

/// A seeded RNG for the learner's noise (its state continues across resumed runs by
/// re-seeding with `seed + step`).
pub fn rng_at(seed: u64, step: usize) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9).wrapping_add(step as u64))
}
