//! Magnitude and random masks under a MACs budget.
//!
//! `--ratio R` asks for R of the scope's MACs to be removed (scope `separator`: the
//! separation network's MACs; `all`: the whole model's). Every prunable group in scope
//! keeps the same fraction q of its channels (at least one, optionally a multiple of
//! `round_to`); q is found by bisection on the MACs that the pruned shapes give, so the
//! achieved reduction is reported exactly. Channels are ranked per group by the summed L1
//! or L2 norm of all the group's parameter slices (every coupled weight, bias and scale),
//! as Torch-Pruning's group importance does, or at random (seeded).
//!
//! Residual and skip streams ([`crate::analysis::Group::residual`]) stay whole while the
//! other groups can meet the budget ([`Residual::Auto`]): on the real Conv-TasNet, pruning
//! them with the rest costs 13 dB of SI-SDRi at 50% and speeds ORT up by 0.76 of the MACs
//! ratio, against -0.07 dB and 0.98 when only the blocks' hidden channels are pruned. When
//! the other groups cannot meet it (a model whose MACs sit mostly in its streams, such as
//! a small TDANet), the streams are pruned too, at the same fraction, and
//! [`Budgeted::residual`] says so.
use super::{pruned_shape, Masks};
use crate::analysis::{cost::node_macs, find_regions, Group, Groups, Region};
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::onnx::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Criterion {
    L1,
    L2,
    Random,
    /// First-order Taylor on the channel gates, from data ([`crate::learn::taylor`]).
    Taylor,
    /// Label-free Fisher information of the channel gates, from data
    /// ([`crate::learn::fisher`]).
    Fisher,
}

/// What a budget counts: MACs at the IR's input length, or learnable parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    #[default]
    Macs,
    Params,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    Separator,
    All,
}

/// Summed `f` of the slices of initializer `name` along `axis`: one entry per index of
/// that axis.
fn slice_sums(ir: &Ir, name: &str, axis: usize, f: fn(f32) -> f64) -> Result<Vec<f64>> {
    let Tensor::F32(w) = ir.initializer(name)? else {
        return Ok(vec![]);
    };
    let size = w.shape()[axis];
    let mut s = vec![0f64; size];
    // row-major: the tensor is `outer` blocks of `size` contiguous runs of `inner`
    let w = w.as_standard_layout();
    let data = w.as_slice().expect("standard layout");
    let inner: usize = w.shape()[axis + 1..].iter().product();
    for (i, run) in data.chunks(inner.max(1)).enumerate() {
        s[i % size] += run.iter().map(|&v| f(v)).sum::<f64>();
    }
    Ok(s)
}

/// Per-channel importance of group `g` (higher is kept first): the summed L1 or L2 norms
/// of every parameter slice that carries a channel, the group's own initializers and those
/// of the concatenations holding it (a layer split into heads, the channels of a norm group).
pub fn channel_scores(
    ir: &Ir,
    groups: &Groups,
    g: &Group,
    criterion: Criterion,
) -> Result<Vec<f64>> {
    let f: fn(f32) -> f64 = match criterion {
        Criterion::L2 => |v| (v as f64).powi(2),
        _ => |v| (v as f64).abs(),
    };
    let mut s = vec![0f64; g.size];
    for (name, axis) in &g.params {
        for (i, v) in slice_sums(ir, name, *axis, f)?.into_iter().enumerate() {
            s[i % g.size] += v;
        }
    }
    for c in &groups.concatenated {
        let map = groups.channels_of(crate::analysis::groups::Part::Concatenated(c.id), g.id);
        if map.iter().all(Option::is_none) {
            continue;
        }
        for (name, axis) in &c.params {
            for (i, v) in slice_sums(ir, name, *axis, f)?.into_iter().enumerate() {
                if let Some(Some(k)) = map.get(i) {
                    s[*k] += v;
                }
            }
        }
    }
    Ok(s)
}

/// Result of a budgeted mask search.
pub struct Budgeted {
    pub masks: Masks,
    /// MACs of the scope before and after.
    pub scope_macs: (u64, u64),
    /// MACs of the whole model before and after.
    pub total_macs: (u64, u64),
    /// Learnable parameters of the whole model before and after.
    pub params: (u64, u64),
    /// Residual or skip streams were among the pruned groups' candidates.
    pub residual: bool,
}

/// Whether a budget may prune residual and skip streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Residual {
    /// Only when the other groups cannot meet the budget (within half a point of the
    /// scope's MACs).
    #[default]
    Auto,
    /// Never: the budget is met by the other groups as far as they can.
    Keep,
    /// Always, like every other group.
    Prune,
}

/// What to remove and how to choose channels.
#[derive(Clone, Debug)]
pub struct Budget {
    /// Share of the scope's MACs to remove, in [0, 1).
    pub ratio: f64,
    pub criterion: Criterion,
    /// Seed of the random criterion.
    pub seed: u64,
    pub scope: Scope,
    /// Kept channel counts are multiples of this (1: any count).
    pub round_to: usize,
    /// Group ids that stay whole; the budget is met by the other groups in scope.
    pub keep_groups: Vec<usize>,
    /// Whether residual and skip streams may be pruned.
    pub residual: Residual,
    /// What `ratio` is a share of (MACs unless said otherwise). Only
    /// [`masks_from_scores`] budgets parameters; the others count MACs.
    pub measure: Measure,
}

impl Budget {
    /// `ratio` of the separator's MACs by L1 norm, residual streams whole while the others
    /// suffice, any count.
    pub fn new(ratio: f64) -> Budget {
        Budget {
            ratio,
            criterion: Criterion::L1,
            seed: 0,
            scope: Scope::Separator,
            round_to: 1,
            keep_groups: vec![],
            residual: Residual::Auto,
            measure: Measure::Macs,
        }
    }
}

/// A kept-channel count in `1..=size`, rounded up to a multiple of `round_to` (capped at `size`).
fn rounded(k: usize, size: usize, round_to: usize) -> usize {
    let k = k.clamp(1, size);
    if round_to > 1 {
        (k.div_ceil(round_to) * round_to).min(size)
    } else {
        k
    }
}

/// MACs of the model and of a scope for any channel counts.
pub struct Cost<'a> {
    ir: &'a Ir,
    groups: &'a Groups,
    in_scope: Vec<bool>,
    /// Learnable initializers per node ([`crate::analysis::cost::node_param_names`]).
    params: Vec<Vec<&'a str>>,
}

impl<'a> Cost<'a> {
    pub fn new(ir: &'a Ir, groups: &'a Groups, scope: Scope) -> Cost<'a> {
        let shape = |v: &str| ir.fact(v).map(|f| f.shape.clone()).unwrap_or_default();
        let regions = find_regions(ir, &node_macs(ir, &shape));
        let in_scope = regions
            .iter()
            .map(|&r| scope == Scope::All || r == Region::Separator)
            .collect();
        Cost {
            ir,
            groups,
            in_scope,
            params: crate::analysis::cost::node_param_names(ir),
        }
    }

    /// Whether node `ni` is in the scope.
    pub fn in_scope(&self, ni: usize) -> bool {
        self.in_scope[ni]
    }

    /// (scope MACs, total MACs) with `kept[g]` channels in group `g` (others whole).
    pub fn macs(&self, kept: &HashMap<usize, usize>) -> (u64, u64) {
        let sh = |v: &str| pruned_shape(self.ir, self.groups, kept, v);
        let m = node_macs(self.ir, &sh);
        let scope = m
            .iter()
            .zip(&self.in_scope)
            .filter(|(_, &s)| s)
            .map(|(&x, _)| x)
            .sum();
        (scope, m.iter().sum())
    }

    /// (scope params, total params) with `kept[g]` channels in group `g` (others whole):
    /// each learnable initializer's elements under its pruned shape.
    pub fn params(&self, kept: &HashMap<usize, usize>) -> (u64, u64) {
        let (mut scope, mut total) = (0u64, 0u64);
        for (ni, names) in self.params.iter().enumerate() {
            let p: u64 = names
                .iter()
                .map(|v| {
                    pruned_shape(self.ir, self.groups, kept, v)
                        .iter()
                        .product::<usize>() as u64
                })
                .sum();
            total += p;
            if self.in_scope[ni] {
                scope += p;
            }
        }
        (scope, total)
    }

    /// [`Cost::macs`] or [`Cost::params`].
    pub fn amount(&self, measure: Measure, kept: &HashMap<usize, usize>) -> (u64, u64) {
        match measure {
            Measure::Macs => self.macs(kept),
            Measure::Params => self.params(kept),
        }
    }
}

/// The groups a budget may prune: prunable, wholly in scope, not kept whole; residual
/// streams as `b.residual` says ([`Residual::Auto`]: when the other groups, each cut to one
/// channel, cannot bring the scope's MACs within half a point of the target).
///
/// Errors: [`Error::Masks`] when a kept group does not exist or no group qualifies.
pub fn candidates<'g>(groups: &'g Groups, cost: &Cost, b: &Budget) -> Result<Vec<&'g Group>> {
    if let Some(&bad) = b.keep_groups.iter().find(|&&g| g >= groups.groups.len()) {
        return Err(Error::Masks(format!(
            "group {bad} does not exist ({} groups)",
            groups.groups.len()
        )));
    }
    let eligible: Vec<&Group> = groups
        .prunable()
        .filter(|g| {
            !b.keep_groups.contains(&g.id) && g.node_index.iter().all(|&n| cost.in_scope(n))
        })
        .collect();
    let plain: Vec<&Group> = eligible.iter().copied().filter(|g| !g.residual).collect();
    let with_residual = match b.residual {
        Residual::Prune => true,
        Residual::Keep => false,
        Residual::Auto => {
            let full = cost.amount(b.measure, &HashMap::new()).0 as f64;
            let least: HashMap<usize, usize> = plain.iter().map(|g| (g.id, 1)).collect();
            let target = (1.0 - b.ratio) * full;
            b.ratio > 0.0 && cost.amount(b.measure, &least).0 as f64 > target + 0.005 * full
        }
    };
    let cands = if with_residual { eligible } else { plain };
    if cands.is_empty() {
        return Err(Error::Masks(if b.residual == Residual::Keep {
            "no prunable channel group in scope outside residual streams (allow them with --residual auto or prune)".into()
        } else {
            "no prunable channel group in scope".into()
        }));
    }
    Ok(cands)
}

/// Masks that remove `b.ratio` of the scope's MACs.
///
/// Errors: [`Error::Masks`] when the ratio is outside [0, 1), a kept group does not exist,
/// or no group is prunable in scope.
pub fn masks_for_ratio(ir: &Ir, groups: &Groups, b: &Budget) -> Result<Budgeted> {
    let Budget {
        ratio,
        criterion,
        seed,
        round_to,
        ..
    } = *b;
    if !(0.0..1.0).contains(&ratio) {
        return Err(Error::Masks(format!("ratio {ratio} must be in [0, 1)")));
    }
    let cost = Cost::new(ir, groups, b.scope);
    let cands = candidates(groups, &cost, b)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut order: HashMap<usize, Vec<usize>> = HashMap::new();
    for g in &cands {
        let mut idx: Vec<usize> = (0..g.size).collect();
        if criterion == Criterion::Random {
            idx.shuffle(&mut rng);
        } else if matches!(criterion, Criterion::Taylor | Criterion::Fisher) {
            return Err(Error::Masks(format!(
                "the {criterion:?} criterion scores channels from data: give --data (prune) and use masks_from_scores"
            )));
        } else {
            let s = channel_scores(ir, groups, g, criterion)?;
            idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
        }
        order.insert(g.id, idx);
    }
    let counts = |q: f64| -> HashMap<usize, usize> {
        cands
            .iter()
            .map(|g| {
                let k = (q * g.size as f64).round() as usize;
                (g.id, rounded(k, g.size, round_to))
            })
            .collect()
    };
    let full = cost.macs(&HashMap::new());
    let target = (1.0 - ratio) * full.0 as f64;
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..24 {
        let mid = 0.5 * (lo + hi);
        if (cost.macs(&counts(mid)).0 as f64) <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(closest(
        &cost,
        Measure::Macs,
        &cands,
        &order,
        target,
        counts(lo),
        counts(hi),
    ))
}

/// Masks from learned per-channel scores (higher is kept first) under `b.ratio` of the
/// scope's MACs: one global threshold on the scores (at least one channel per group), found
/// by bisection, so that groups lose channels where the scores say they matter least.
/// Ties and the criterion/seed fields of `b` are not used.
///
/// Errors: as [`masks_for_ratio`], and a candidate group without scores of its size.
pub fn masks_from_scores(
    ir: &Ir,
    groups: &Groups,
    b: &Budget,
    scores: &HashMap<usize, Vec<f64>>,
) -> Result<Budgeted> {
    if !(0.0..1.0).contains(&b.ratio) {
        return Err(Error::Masks(format!("ratio {} must be in [0, 1)", b.ratio)));
    }
    let cost = Cost::new(ir, groups, b.scope);
    let cands = candidates(groups, &cost, b)?;
    let mut order: HashMap<usize, Vec<usize>> = HashMap::new();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    // tied scores (a learner that has not separated them yet) are told apart by their rank
    // in the group, as a share of its size: ties then give every group the same fraction
    let mut tied: HashMap<usize, Vec<f64>> = HashMap::new();
    for g in &cands {
        let s = scores
            .get(&g.id)
            .filter(|s| s.len() == g.size)
            .ok_or_else(|| {
                Error::Masks(format!("no scores of size {} for group {}", g.size, g.id))
            })?;
        let mut idx: Vec<usize> = (0..g.size).collect();
        idx.sort_by(|&x, &y| s[y].total_cmp(&s[x]).then(x.cmp(&y)));
        let mut t = s.clone();
        for (rank, &j) in idx.iter().enumerate() {
            t[j] -= 1e-9 * (1.0 + s[j].abs()) * (rank as f64 + 0.5) / g.size as f64;
        }
        for &v in &t {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        order.insert(g.id, idx);
        tied.insert(g.id, t);
    }
    let scores = &tied;
    let counts = |t: f64| -> HashMap<usize, usize> {
        cands
            .iter()
            .map(|g| {
                let k = scores[&g.id].iter().filter(|&&v| v >= t).count();
                (g.id, rounded(k, g.size, b.round_to))
            })
            .collect()
    };
    let full = cost.amount(b.measure, &HashMap::new());
    let target = (1.0 - b.ratio) * full.0 as f64;
    // a higher threshold keeps fewer channels: find the lowest one under the target
    let (mut a, mut z) = (lo - 1.0, hi + 1.0);
    for _ in 0..48 {
        let mid = 0.5 * (a + z);
        if (cost.amount(b.measure, &counts(mid)).0 as f64) <= target {
            z = mid;
        } else {
            a = mid;
        }
    }
    Ok(closest(
        &cost,
        b.measure,
        &cands,
        &order,
        target,
        counts(a),
        counts(z),
    ))
}

/// Of two channel-count choices, the one whose scope MACs land closer to `target`, as masks
/// keeping the first `k` channels of each group's `order`.
fn closest(
    cost: &Cost,
    measure: Measure,
    cands: &[&Group],
    order: &HashMap<usize, Vec<usize>>,
    target: f64,
    a: HashMap<usize, usize>,
    b: HashMap<usize, usize>,
) -> Budgeted {
    let (ma, mb) = (cost.amount(measure, &a), cost.amount(measure, &b));
    let kc = if (ma.0 as f64 - target).abs() <= (mb.0 as f64 - target).abs() {
        a
    } else {
        b
    };
    let full = cost.macs(&HashMap::new());
    let m = cost.macs(&kc);
    let mut masks = Masks::new();
    for g in cands {
        let k = kc[&g.id];
        if k < g.size {
            masks.insert(g.id, g.size, order[&g.id][..k].to_vec());
        }
    }
    Budgeted {
        masks,
        scope_macs: (full.0, m.0),
        total_macs: (full.1, m.1),
        params: (cost.params(&HashMap::new()).1, cost.params(&kc).1),
        residual: cands.iter().any(|g| g.residual),
    }
}
