//! Magnitude and random masks under a MACs budget.
//!
//! `--ratio R` asks for R of the scope's MACs to be removed (scope `separator`: the
//! separation network's MACs; `all`: the whole model's). Every prunable group in scope
//! keeps the same fraction q of its channels (at least one, optionally a multiple of
//! `round_to`); q is found by bisection on the MACs that the pruned shapes give, so the
//! achieved reduction is reported exactly. Channels are ranked per group by the summed L1
//! or L2 norm of all the group's parameter slices (every coupled weight, bias and scale),
//! as Torch-Pruning's group importance does, or at random (seeded).
use super::{pruned_shape, Masks};
use crate::analysis::{cost::node_macs, find_regions, Groups, Region};
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::onnx::Tensor;
use ndarray::Axis;
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
    for (name, axis) in params {
        let Tensor::F32(w) = ir.initializer(name)? else {
            continue;
        };
        for (c, lane) in w.axis_iter(Axis(*axis)).enumerate() {
            s[c] += match criterion {
                Criterion::L2 => lane.iter().map(|&v| (v as f64).powi(2)).sum::<f64>(),
                _ => lane.iter().map(|&v| (v as f64).abs()).sum::<f64>(),
            };
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

/// Masks that remove `ratio` of the scope's MACs. `keep_whole`: group ids that stay
/// unpruned (e.g. a narrow bottleneck that speeds up less than its MACs); the budget is then
/// met by the other groups in scope.
///
/// Errors: [`Error::Masks`] when the ratio is outside [0, 1), a kept group does not exist,
/// or no group is prunable in scope.
#[allow(clippy::too_many_arguments)]
pub fn masks_for_ratio(
    ir: &Ir,
    groups: &Groups,
    ratio: f64,
    criterion: Criterion,
    seed: u64,
    scope: Scope,
    round_to: usize,
    keep_whole: &[usize],
) -> Result<Budgeted> {
    if !(0.0..1.0).contains(&ratio) {
        return Err(Error::Masks(format!("ratio {ratio} must be in [0, 1)")));
    }
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
        .filter(|g| !keep_whole.contains(&g.id) && g.node_index.iter().all(|&n| in_scope(n)))
        .collect();
    if cands.is_empty() {
        return Err(Error::Masks("no prunable channel group in scope".into()));
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
    for _ in 0..40 {
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
