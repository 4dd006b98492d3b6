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
//! Residual and skip streams ([`crate::analysis::Group::residual`]) stay whole unless
//! [`Budget::prune_residual`] is set: on the real Conv-TasNet, pruning them with the rest
//! costs 13 dB of SI-SDRi at 50% and speeds ORT up by 0.76 of the MACs ratio, against
//! -0.07 dB and 0.98 when only the blocks' hidden channels are pruned.
use super::{pruned_shape, Masks};
use crate::analysis::{cost::node_macs, find_regions, Groups, Region};
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    Separator,
    All,
}

/// Per-channel importance of a group (higher is kept first).
fn scores(
    ir: &Ir,
    params: &[(String, usize)],
    size: usize,
    criterion: Criterion,
) -> Result<Vec<f64>> {
    let mut s = vec![0f64; size];
    let f: fn(f32) -> f64 = match criterion {
        Criterion::L2 => |v| (v as f64).powi(2),
        _ => |v| (v as f64).abs(),
    };
    for (name, axis) in params {
        let Tensor::F32(w) = ir.initializer(name)? else {
            continue;
        };
        // row-major: the tensor is `outer` blocks of `size` contiguous runs of `inner`
        let w = w.as_standard_layout();
        let data = w.as_slice().expect("standard layout");
        let inner: usize = w.shape()[axis + 1..].iter().product();
        for (i, run) in data.chunks(inner.max(1)).enumerate() {
            s[i % size] += run.iter().map(|&v| f(v)).sum::<f64>();
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
    /// Also prune residual and skip streams.
    pub prune_residual: bool,
}

impl Budget {
    /// `ratio` of the separator's MACs by L1 norm, residual streams whole, any count.
    pub fn new(ratio: f64) -> Budget {
        Budget {
            ratio,
            criterion: Criterion::L1,
            seed: 0,
            scope: Scope::Separator,
            round_to: 1,
            keep_groups: vec![],
            prune_residual: false,
        }
    }
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
        scope,
        round_to,
        ref keep_groups,
        prune_residual,
    } = *b;
    let keep_whole = keep_groups.as_slice();
    let shape = |v: &str| ir.fact(v).map(|f| f.shape.clone()).unwrap_or_default();
    let base = node_macs(ir, &shape);
    let regions = find_regions(ir, &base);
    let in_scope = |ni: usize| scope == Scope::All || regions[ni] == Region::Separator;
    if let Some(&bad) = keep_whole.iter().find(|&&g| g >= groups.groups.len()) {
        return Err(Error::Masks(format!(
            "group {bad} does not exist ({} groups)",
            groups.groups.len()
        )));
    }
    let cands: Vec<_> = groups
        .prunable()
        .filter(|g| {
            !keep_whole.contains(&g.id)
                && (prune_residual || !g.residual)
                && g.node_index.iter().all(|&n| in_scope(n))
        })
        .collect();
    if cands.is_empty() {
        return Err(Error::Masks(if prune_residual {
            "no prunable channel group in scope".into()
        } else {
            "no prunable channel group in scope outside residual streams (allow them with --prune-residual)".into()
        }));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut order: HashMap<usize, Vec<usize>> = HashMap::new();
    for g in &cands {
        let mut idx: Vec<usize> = (0..g.size).collect();
        if criterion == Criterion::Random {
            idx.shuffle(&mut rng);
        } else {
            let s = scores(ir, &g.params, g.size, criterion)?;
            idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
        }
        order.insert(g.id, idx);
    }
    let counts = |q: f64| -> HashMap<usize, usize> {
        cands
            .iter()
            .map(|g| {
                let mut k = ((q * g.size as f64).round() as usize).clamp(1, g.size);
                if round_to > 1 {
                    k = (k.div_ceil(round_to) * round_to).min(g.size);
                }
                (g.id, k)
            })
            .collect()
    };
    let macs = |kc: &HashMap<usize, usize>| -> (u64, u64) {
        let sh = |v: &str| pruned_shape(ir, groups, kc, v);
        let m = node_macs(ir, &sh);
        (
            m.iter()
                .enumerate()
                .filter(|(i, _)| in_scope(*i))
                .map(|(_, &x)| x)
                .sum(),
            m.iter().sum(),
        )
    };
    let full = macs(&HashMap::new());
    let target = (1.0 - ratio) * full.0 as f64;
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..24 {
        let mid = 0.5 * (lo + hi);
        if (macs(&counts(mid)).0 as f64) <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // pick whichever side lands closer to the target
    let (kl, kh) = (counts(lo), counts(hi));
    let (ml, mh) = (macs(&kl), macs(&kh));
    let (kc, m) = if (target - ml.0 as f64).abs() <= (mh.0 as f64 - target).abs() {
        (kl, ml)
    } else {
        (kh, mh)
    };
    let mut masks = Masks::new();
    for g in &cands {
        let k = kc[&g.id];
        if k < g.size {
            masks.insert(g.id, g.size, order[&g.id][..k].to_vec());
        }
    }
    Ok(Budgeted {
        masks,
        scope_macs: (full.0, m.0),
        total_macs: (full.1, m.1),
    })
}
