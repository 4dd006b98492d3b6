//! `sepprune learn`: the SepPrune mask learner on a data directory, with progress,
//! checkpoints of the scores, and a final masks file for `prune --masks`.
use super::graph::CandleGraph;
use super::gumbel::{rng_at, step, GumbelConfig, Item, Scores};
use crate::analysis::{Group, Groups};
use crate::error::{Error, Result};
use crate::gates::{gate_graph, gate_name};
use crate::ir::Ir;
use crate::onnx::ModelProto;
use crate::prune::{candidates, masks_from_scores, Budget, Budgeted, Cost, Masks};
use std::path::{Path, PathBuf};

/// Options of a learning run.
pub struct LearnOptions {
    pub cfg: GumbelConfig,
    /// Crop length in samples (the gate graph is lowered at this length).
    pub samples: usize,
    /// At most this many crops per mixture.
    pub crops_per_file: usize,
    /// Targets are the original model's outputs instead of the references (label-free).
    pub teacher: bool,
    /// Which groups may be learned and pruned, and the final MACs budget (`ratio`).
    pub budget: Budget,
    /// Scores checkpoint: resumed when it exists, rewritten every 25 steps and at the end.
    pub checkpoint: Option<PathBuf>,
    pub progress: bool,
    /// Candle device ([`super::device`]).
    pub device: candle_core::Device,
}

/// Result: the final masks under the budget and the learned scores.
pub struct Learned {
    pub budgeted: Budgeted,
    pub scores: Scores,
    pub losses: Vec<f64>,
}

/// The gate graph of `model` lowered to Candle at `samples`, with the gates of the groups
/// the budget may prune live (overridable, differentiable), and those groups.
///
/// Errors: shape inference, grouping, or gate insertion failures.
pub fn gated_graph(
    model: &ModelProto,
    samples: usize,
    budget: &Budget,
    device: &candle_core::Device,
) -> Result<(CandleGraph, Vec<Group>)> {
    let ir = Ir::new(model.clone(), samples)?;
    let groups: Groups = crate::analysis::analyze_groups(&ir)?;
    let cost = Cost::new(&ir, &groups, budget.scope);
    let cands: Vec<Group> = candidates(&groups, &cost, budget)?
        .into_iter()
        .cloned()
        .collect();
    let live: Vec<String> = cands.iter().map(|g| gate_name(g.id)).collect();
    let gated = Ir::new(gate_graph(&ir, &groups, None)?, samples)?;
    let graph = CandleGraph::new(gated, device, candle_core::DType::F32, &live)?;
    Ok((graph, cands))
}

/// Learns masks for `model` on `data`.
///
/// Errors: unreadable data, an op without a Candle lowering, a bad checkpoint.
pub fn learn(model: &ModelProto, data: &Path, o: &LearnOptions) -> Result<Learned> {
    let (graph, cands) = gated_graph(model, o.samples, &o.budget, &o.device)?;
    let cands: Vec<&Group> = cands.iter().collect();
    let data_items: Vec<Item> = super::data::crops(
        data,
        o.samples,
        o.crops_per_file,
        o.teacher.then_some(model),
    )?
    .into_iter()
    .flatten()
    .collect();
    let mut scores = match &o.checkpoint {
        Some(p) if p.exists() => {
            let s: Scores = serde_json::from_slice(&std::fs::read(p).map_err(|e| Error::io(p, e))?)
                .map_err(|e| Error::Checkpoint {
                    path: p.clone(),
                    msg: format!("not a scores checkpoint: {e}"),
                })?;
            if !s.fits(&cands) {
                return Err(Error::Checkpoint {
                    path: p.clone(),
                    msg: "checkpoint does not fit this model's groups".into(),
                });
            }
            s
        }
        _ => Scores::new(&cands, o.cfg.init),
    };
    let save = |s: &Scores| -> Result<()> {
        if let Some(p) = &o.checkpoint {
            let bytes = serde_json::to_vec(s).map_err(|e| Error::Other(e.to_string()))?;
            crate::onnx::write_atomic(p, &bytes)?;
        }
        Ok(())
    };
    let bar = super::progress_bar(o.cfg.iters, o.progress);
    bar.set_position(scores.step as u64);
    let mut losses = vec![];
    while scores.step < o.cfg.iters {
        // a seeded order over the crops, re-drawn every epoch: resumable from `step` alone
        let epoch = scores.step / data_items.len();
        let order = super::data::epoch_order(data_items.len(), o.cfg.seed, epoch);
        let item = &data_items[order[scores.step % data_items.len()]];
        let mut rng = rng_at(o.cfg.seed, scores.step);
        let st = step(&graph, &mut scores, &o.cfg, item, &mut rng)?;
        losses.push(st.loss);
        bar.set_message(format!(
            "loss {:.2} dB  kept {:.1}%",
            st.loss,
            100.0 * st.kept
        ));
        bar.inc(1);
        if scores.step % 25 == 0 {
            save(&scores)?;
        }
    }
    bar.finish();
    save(&scores)?;
    let ir1 = Ir::new(model.clone(), 16000)?;
    let groups1 = crate::analysis::analyze_groups(&ir1)?;
    let budgeted = if o.budget.ratio > 0.0 {
        masks_from_scores(&ir1, &groups1, &o.budget, &scores.map())?
    } else {
        // the paper's rule without noise: keep channel j when sigmoid(θ_j / τ) > ε
        let mut masks = Masks::new();
        for (&id, theta) in &scores.theta {
            let keep: Vec<usize> = (0..theta.len())
                .filter(|&j| 1.0 / (1.0 + (-theta[j] / o.cfg.tau).exp()) > o.cfg.eps)
                .collect();
            let keep = if keep.is_empty() {
                vec![(0..theta.len())
                    .max_by(|&a, &b| theta[a].total_cmp(&theta[b]))
                    .unwrap_or(0)]
            } else {
                keep
            };
            if keep.len() < theta.len() {
                masks.insert(id, theta.len(), keep);
            }
        }
        let cost1 = Cost::new(&ir1, &groups1, o.budget.scope);
        let kept: std::collections::HashMap<usize, usize> = masks
            .groups
            .iter()
            .map(|(&g, m)| (g, m.keep.len()))
            .collect();
        let (full, now) = (cost1.macs(&Default::default()), cost1.macs(&kept));
        Budgeted {
            masks,
            scope_macs: (full.0, now.0),
            total_macs: (full.1, now.1),
            residual: cands.iter().any(|g| g.residual),
        }
    };
    // stamped for the model (its fingerprint and stable group keys)
    let mut budgeted = budgeted;
    budgeted.masks = budgeted.masks.stamped(&ir1, &groups1);
    Ok(Learned {
        budgeted,
        scores,
        losses,
    })
}
