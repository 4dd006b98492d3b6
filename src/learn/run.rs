//! `sepprune learn`: a mask learner (SepPrune's Gumbel-Softmax, [`super::gumbel`], or hard
//! concrete with a Lagrangian budget, [`super::hard_concrete`]) on a data directory, with
//! the references, the teacher's outputs or the teacher's hidden states
//! ([`super::distill`]) as targets; progress, checkpoints of the scores, and a final masks
//! file for `prune --masks`.
use super::distill::Distiller;
use super::graph::CandleGraph;
use super::gumbel::{rng_at, GumbelConfig, Item, Scores};
use super::hard_concrete::{self, ExpectedCost, HcConfig};
use crate::analysis::{Group, Groups};
use crate::error::{Error, Result};
use crate::gates::{gate_graph, gate_name};
use crate::ir::Ir;
use crate::onnx::ModelProto;
use crate::prune::{candidates, masks_from_scores, Budget, Budgeted, Cost, Masks};
use std::path::{Path, PathBuf};

/// Which mask learner.
#[derive(Clone, Debug, Default)]
pub enum Method {
    /// SepPrune's Gumbel-Softmax learner with `LearnOptions::cfg`.
    #[default]
    Gumbel,
    /// Hard-concrete gates with a Lagrangian budget (straight-through with `ste`).
    HardConcrete(HcConfig),
}

/// Options of a learning run.
pub struct LearnOptions {
    /// The Gumbel learner's settings; its `loss`, `seed` and `iters` serve every method
    /// unless the method has its own.
    pub cfg: GumbelConfig,
    pub method: Method,
    /// Targets are the teacher's hidden states at the layer boundaries and its output
    /// ([`super::distill`]): label-free, for any model (encoders too).
    pub distill: bool,
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
    gated_graph_of(&ir, &groups, budget, device)
}

/// [`gated_graph`] of a model already analysed.
///
/// Errors: as [`gated_graph`].
pub fn gated_graph_of(
    ir: &Ir,
    groups: &Groups,
    budget: &Budget,
    device: &candle_core::Device,
) -> Result<(CandleGraph, Vec<Group>)> {
    let cost = Cost::new(ir, groups, budget.scope);
    let cands: Vec<Group> = candidates(groups, &cost, budget)?
        .into_iter()
        .cloned()
        .collect();
    let live: Vec<String> = cands.iter().map(|g| gate_name(g.id)).collect();
    let gated = Ir::new(gate_graph(ir, groups, None)?, ir.samples)?;
    let graph = CandleGraph::new(gated, device, candle_core::DType::F32, &live)?;
    Ok((graph, cands))
}

/// Learns masks for `model` on `data`.
///
/// Errors: unreadable data, an op without a Candle lowering, a bad checkpoint.
pub fn learn(model: &ModelProto, data: &Path, o: &LearnOptions) -> Result<Learned> {
    let ir = Ir::new(model.clone(), o.samples)?;
    let groups = crate::analysis::analyze_groups(&ir)?;
    let (graph, cands) = gated_graph_of(&ir, &groups, &o.budget, &o.device)?;
    let cands: Vec<&Group> = cands.iter().collect();
    let data_items: Vec<Item> = if o.distill {
        super::data::mixture_crops(data, o.samples, o.crops_per_file)?
            .into_iter()
            .map(|input| Item {
                input,
                targets: vec![],
            })
            .collect()
    } else {
        super::data::crops(
            data,
            o.samples,
            o.crops_per_file,
            o.teacher.then_some(model),
        )?
        .into_iter()
        .flatten()
        .collect()
    };
    if data_items.is_empty() {
        return Err(Error::Data(format!("{}: no training crops", data.display())));
    }
    let mut distiller = o.distill.then(|| Distiller::new(&ir, &groups, &graph));
    let (iters, seed) = match &o.method {
        Method::Gumbel => (o.cfg.iters, o.cfg.seed),
        Method::HardConcrete(hc) => (hc.iters, hc.seed),
    };
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
        _ => match &o.method {
            Method::Gumbel => Scores::new(&cands, o.cfg.init),
            Method::HardConcrete(hc) => hard_concrete::init_scores(&cands, hc),
        },
    };
    let save = |s: &Scores| -> Result<()> {
        if let Some(p) = &o.checkpoint {
            let bytes = serde_json::to_vec(s).map_err(|e| Error::Checkpoint {
                path: p.clone(),
                msg: e.to_string(),
            })?;
            crate::onnx::write_atomic(p, &bytes)?;
        }
        Ok(())
    };
    let expected = match &o.method {
        Method::HardConcrete(hc) => Some(ExpectedCost::new(
            &ir,
            &groups,
            o.budget.scope,
            hc.measure,
            &cands,
        )),
        Method::Gumbel => None,
    };
    let bar = super::progress_bar(iters, o.progress);
    bar.set_position(scores.step as u64);
    let mut losses = vec![];
    while scores.step < iters {
        // a seeded order over the crops, re-drawn every epoch: resumable from `step` alone
        let epoch = scores.step / data_items.len();
        let order = super::data::epoch_order(data_items.len(), seed, epoch);
        let key = order[scores.step % data_items.len()];
        let item = &data_items[key];
        let mut rng = rng_at(seed, scores.step);
        let x = graph.input(&item.input)?;
        let teacher = match distiller.as_mut() {
            Some(d) => Some(d.teacher(&graph, key, &x)?),
            None => None,
        };
        let mut loss_of = |gates: &std::collections::HashMap<String, candle_core::Tensor>| {
            match (&distiller, &teacher) {
                (Some(d), Some(t)) => Ok(d.loss(&d.states(&graph, &x, gates)?, t)?.0),
                _ => {
                    let y = graph.forward(&x, gates)?;
                    super::loss::on_targets(&y, &item.targets, o.cfg.loss)
                }
            }
        };
        let msg = match (&o.method, &expected) {
            (Method::HardConcrete(hc), Some(ec)) => {
                let st = hard_concrete::step(
                    graph.device(),
                    graph.dtype(),
                    &mut scores,
                    hc,
                    ec,
                    &mut loss_of,
                    &mut rng,
                )?;
                losses.push(st.loss);
                format!(
                    "loss {:.3}  expected {:.1}% -> {:.1}%",
                    st.loss,
                    100.0 * st.expected,
                    100.0 * st.target
                )
            }
            _ => {
                let st = super::gumbel::step_with(&graph, &mut scores, &o.cfg, &mut loss_of, &mut rng)?;
                losses.push(st.loss);
                format!("loss {:.3}  kept {:.1}%", st.loss, 100.0 * st.kept)
            }
        };
        bar.set_message(msg);
        bar.inc(1);
        if scores.step % 25 == 0 {
            save(&scores)?;
        }
    }
    bar.finish();
    save(&scores)?;
    let ir1 = Ir::new(model.clone(), 16000)?;
    let groups1 = crate::analysis::analyze_groups(&ir1)?;
    let budgeted = if let Method::HardConcrete(hc) = &o.method {
        // ranked by log_alpha under the target, in the learner's measure
        let b = Budget {
            ratio: 1.0 - hc.target,
            measure: hc.measure,
            ..o.budget.clone()
        };
        masks_from_scores(&ir1, &groups1, &b, &scores.map())?
    } else if o.budget.ratio > 0.0 {
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
            params: (cost1.params(&Default::default()).1, cost1.params(&kept).1),
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
