//! Hard-concrete gates with an L0 budget held by a Lagrangian, on the gate graph.
//!
//! Each channel j of a learned group has a gate `z_j` drawn from the hard-concrete
//! distribution (Louizos et al. 2018, "Learning sparse neural networks through L0
//! regularization", eqs. 10-12): with `u ~ U(0, 1)`,
//!
//! ```text
//! s  = sigmoid((log u - log(1 - u) + log_alpha_j) / beta)
//! z  = min(1, max(0, s (r - l) + l))                  (stretched to (l, r), clipped)
//! P(z_j != 0) = sigmoid(log_alpha_j - beta log(-l / r))                    (eq. 12)
//! ```
//!
//! with the parameterisation of FLOP (Wang et al. 2020) and DPHuBERT (Peng et al. 2023):
//! `beta = 2/3`, `l = -0.1`, `r = 1.1`, `log_alpha` initialised from a drop rate `d` as
//! `log(1 - d) - log(d)`. The gate graph runs with gates `z` (continuous), or, in the
//! straight-through variant of the task-agnostic pruning paper (Wang et al. 2023,
//! `../shared/seeds/task_agnostic_structured_pruning.txt`, section 2.2), with the hard mask
//! `1[z > 0.5]` forward and the gradient of that mask passed to `z` backward.
//!
//! The expected number of kept channels of group g, `E[k_g] = sum_j P(z_j != 0)`, gives the
//! expected cost share `s = C(E[k]) / C(full)` of the model (MACs or params, from the cost
//! model; `dC/dk_g` by a one-channel difference at the rounded expected counts, exact for
//! costs that are linear per group and the secant of bilinear ones). The budget is a
//! Lagrangian term (Wang et al. 2020, eq. 6; DPHuBERT eq. 7)
//!
//! ```text
//! L = L_task + lambda1 (s - t) + lambda2 (s - t)^2
//! ```
//!
//! minimised over `log_alpha` (Adam) and maximised over `lambda1, lambda2` (gradient
//! ascent), with the target share `t` ramped linearly from 1 to the budget over a warm-up.
//! Model weights stay frozen. The final mask is deterministic: channels ranked by
//! `log_alpha`, one global threshold meeting the budget exactly
//! ([`crate::prune::masks_from_scores`]).
use super::gumbel::{gate_grad, gate_var, Scores};
use crate::analysis::{Group, Groups};
use crate::error::{Error, Result};
use crate::gates::gate_name;
use crate::ir::Ir;
use crate::prune::{Cost, Measure};
use candle_core::Tensor as CTensor;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The hard-concrete distribution's shape: temperature `beta` and stretch interval `(l, r)`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct HardConcrete {
    pub beta: f64,
    pub l: f64,
    pub r: f64,
}

impl Default for HardConcrete {
    /// FLOP / DPHuBERT: beta 2/3, stretch (-0.1, 1.1).
    fn default() -> Self {
        HardConcrete {
            beta: 2.0 / 3.0,
            l: -0.1,
            r: 1.1,
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl HardConcrete {
    /// A gate `z` in [0, 1] for one uniform draw `u` in (0, 1), and `dz / dlog_alpha`
    /// (0 where the stretched sample is clipped).
    pub fn sample(&self, log_alpha: f64, u: f64) -> (f64, f64) {
        let s = sigmoid((u.ln() - (1.0 - u).ln() + log_alpha) / self.beta);
        let stretched = s * (self.r - self.l) + self.l;
        let z = stretched.clamp(0.0, 1.0);
        let dz = if stretched > 0.0 && stretched < 1.0 {
            (self.r - self.l) * s * (1.0 - s) / self.beta
        } else {
            0.0
        };
        (z, dz)
    }

    /// `P(z != 0)` (Louizos et al. eq. 12): the expected L0 norm of one gate.
    pub fn p_open(&self, log_alpha: f64) -> f64 {
        sigmoid(log_alpha - self.beta * (-self.l / self.r).ln())
    }

    /// The noise-free gate `min(1, max(0, sigmoid(log_alpha) (r - l) + l))`.
    pub fn deterministic(&self, log_alpha: f64) -> f64 {
        (sigmoid(log_alpha) * (self.r - self.l) + self.l).clamp(0.0, 1.0)
    }
}

/// `log_alpha` for a drop rate `d` in (0, 1): `log(1 - d) - log(d)`.
pub fn log_alpha_init(droprate: f64) -> f64 {
    let d = droprate.clamp(1e-6, 1.0 - 1e-6);
    (1.0 - d).ln() - d.ln()
}

/// Hyper-parameters of the hard-concrete learner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HcConfig {
    pub dist: HardConcrete,
    /// Forward the hard mask `1[z > 0.5]`, backward through `z` (straight-through).
    pub ste: bool,
    /// Initial drop rate of every gate (`log_alpha = log(1 - d) - log(d)`).
    pub droprate: f64,
    /// Adam step size on `log_alpha`.
    pub lr: f64,
    /// Gradient-ascent step size on the multipliers `lambda1`, `lambda2`.
    pub lambda_lr: f64,
    /// Steps over which the target share falls linearly from 1 to `target`.
    pub warmup: usize,
    pub iters: usize,
    pub seed: u64,
    /// Share of the scope's cost to keep, in (0, 1].
    pub target: f64,
    /// What `target` is a share of.
    pub measure: Measure,
}

impl Default for HcConfig {
    fn default() -> Self {
        HcConfig {
            dist: HardConcrete::default(),
            ste: false,
            droprate: 0.05,
            lr: 0.05,
            lambda_lr: 0.5,
            warmup: 100,
            iters: 300,
            seed: 0,
            target: 0.5,
            measure: Measure::Macs,
        }
    }
}

impl HcConfig {
    /// The target share at `step` ([`ramped_target`]).
    pub fn target_at(&self, step: usize) -> f64 {
        ramped_target(self.target, self.warmup, step)
    }
}

/// The target share at `step`: 1 at step 0, falling linearly to `target` at `warmup`.
pub fn ramped_target(target: f64, warmup: usize, step: usize) -> f64 {
    let ramp = match warmup {
        0 => 1.0,
        w => (step as f64 / w as f64).min(1.0),
    };
    1.0 - (1.0 - target) * ramp
}

/// The expected cost share of channel counts and its slope per group.
pub struct ExpectedCost<'a> {
    cost: Cost<'a>,
    measure: Measure,
    full: f64,
    sizes: BTreeMap<usize, usize>,
}

impl<'a> ExpectedCost<'a> {
    /// The cost model of `ir` and `groups` in `scope`, for the learned `cands`.
    pub fn new(
        ir: &'a Ir,
        groups: &'a Groups,
        scope: crate::prune::Scope,
        measure: Measure,
        cands: &[&Group],
    ) -> ExpectedCost<'a> {
        let cost = Cost::new(ir, groups, scope);
        let full = cost.amount(measure, &HashMap::new()).0.max(1) as f64;
        ExpectedCost {
            cost,
            measure,
            full,
            sizes: cands.iter().map(|g| (g.id, g.size)).collect(),
        }
    }

    /// `(s, ds/dk_g)`: the share of the scope's cost at the expected counts `k` (rounded,
    /// at least one channel per group), and per group the cost of its last channel there,
    /// as a share.
    pub fn share(&self, k: &BTreeMap<usize, f64>) -> (f64, BTreeMap<usize, f64>) {
        let counts: HashMap<usize, usize> = self
            .sizes
            .iter()
            .map(|(&g, &size)| {
                let e = k.get(&g).copied().unwrap_or(size as f64);
                (g, (e.round() as usize).clamp(1, size))
            })
            .collect();
        let at = |c: &HashMap<usize, usize>| self.cost.amount(self.measure, c).0 as f64;
        let here = at(&counts);
        let mut slope = BTreeMap::new();
        for (&g, &size) in &self.sizes {
            let mut c = counts.clone();
            let n = counts[&g];
            let d = if n > 1 {
                c.insert(g, n - 1);
                here - at(&c)
            } else if size > 1 {
                c.insert(g, 2);
                at(&c) - here
            } else {
                0.0
            };
            slope.insert(g, d / self.full);
        }
        (here / self.full, slope)
    }
}

/// What one step reports.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct HcStats {
    /// The task loss (without the Lagrangian term); NaN when undefined for this sample
    /// (that step follows the Lagrangian term alone).
    pub loss: f64,
    /// Expected share of the scope's cost kept.
    pub expected: f64,
    /// The target share at this step.
    pub target: f64,
    /// Share of the learned channels whose forward gate was non-zero.
    pub kept: f64,
}

/// New learner state: `log_alpha` from the drop rate, multipliers at 0.
pub fn init_scores(groups: &[&Group], cfg: &HcConfig) -> Scores {
    Scores::new(groups, log_alpha_init(cfg.droprate))
}

/// One step: sample gates, run the gate graph with them (`loss_of`: the task loss of the
/// gate graph under the given gate values), back-propagate to the gates, add the gradient
/// of the Lagrangian term, update `log_alpha` (Adam) and the multipliers (ascent).
/// `on_grads` sees the task loss's gradients (to update weights trained jointly); it is not
/// called for a step whose loss is undefined.
///
/// Errors: the forward pass or the loss.
#[allow(clippy::too_many_arguments)]
pub fn step(
    device: &candle_core::Device,
    dtype: candle_core::DType,
    scores: &mut Scores,
    cfg: &HcConfig,
    cost: &ExpectedCost,
    loss_of: &mut dyn FnMut(&HashMap<String, CTensor>) -> Result<CTensor>,
    on_grads: &mut dyn FnMut(&mut candle_core::backprop::GradStore) -> Result<()>,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<HcStats> {
    let e = Error::candle("hard-concrete learner");
    let mut gates = HashMap::new();
    let mut vars = vec![];
    let mut dz: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let (mut open, mut total) = (0usize, 0usize);
    for (&id, la) in &scores.theta {
        let (z, d): (Vec<f64>, Vec<f64>) = la
            .iter()
            .map(|&a| cfg.dist.sample(a, rng.random_range(1e-9..1.0 - 1e-9)))
            .unzip();
        let fwd: Vec<f32> = z
            .iter()
            .map(|&v| match cfg.ste {
                true => (v > 0.5) as u8 as f32,
                false => v as f32,
            })
            .collect();
        open += fwd.iter().filter(|&&v| v > 0.0).count();
        total += fwd.len();
        let var = gate_var(fwd, device, dtype)?;
        gates.insert(gate_name(id), var.as_tensor().clone());
        vars.push((id, var));
        dz.insert(id, d);
    }
    let loss = loss_of(&gates)?;
    let lv = super::loss::scalar(&loss)?;
    // a sample that closes a whole layer can make the task loss undefined (an L2
    // normalisation of zeros): that step then follows the Lagrangian term alone
    let mut grads = match lv.is_finite() {
        true => Some(loss.backward().map_err(e)?),
        false => None,
    };
    if let Some(g) = grads.as_mut() {
        on_grads(g)?;
    }
    // the Lagrangian term at the expected counts
    let expected: BTreeMap<usize, f64> = scores
        .theta
        .iter()
        .map(|(&g, la)| (g, la.iter().map(|&a| cfg.dist.p_open(a)).sum()))
        .collect();
    let (s, slope) = cost.share(&expected);
    let t = cfg.target_at(scores.step);
    let dpen_ds = scores.penalty_slope(s, t);
    scores.step += 1;
    for (id, var) in vars {
        let d = &dz[&id];
        let g = gate_grad(grads.as_ref(), &var, d.len())?;
        let sl = slope.get(&id).copied().unwrap_or(0.0);
        let grad: Vec<f64> = scores.theta[&id]
            .iter()
            .enumerate()
            .map(|(j, &a)| {
                let p = cfg.dist.p_open(a);
                g[j] * d[j] + dpen_ds * sl * p * (1.0 - p)
            })
            .collect();
        scores.adam(id, &grad, cfg.lr);
    }
    scores.climb(s, t, cfg.lambda_lr);
    Ok(HcStats {
        loss: lv,
        expected: s,
        target: t,
        kept: open as f64 / total.max(1) as f64,
    })
}
