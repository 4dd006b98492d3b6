//! `sepprune learn`: a mask learner (SepPrune's Gumbel-Softmax, [`super::gumbel`], or hard
//! concrete with a Lagrangian budget, [`super::hard_concrete`]) on a data directory, with
//! the references, the teacher's outputs or the teacher's hidden states
//! ([`super::distill`]) as targets; progress, checkpoints of the scores, and a final masks
//! file for `prune --masks`.
use super::distill::Distiller;
use super::graph::CandleGraph;
use super::gumbel::{rng_at, GumbelConfig, Item, Scores};
use super::hard_concrete::{self, ExpectedCost, HcConfig};
use super::speaker::{HeadParams, SpeakerHead};
use crate::analysis::{Group, Groups};
use crate::error::{Error, Result};
use crate::gates::{gate_graph, gate_name};
use crate::ir::Ir;
use crate::onnx::ModelProto;
use crate::prune::{candidates, masks_from_scores, Budget, Budgeted, Cost, Masks};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Which mask learner.
#[derive(Clone, Debug, Default)]
pub enum Method {
    /// SepPrune's Gumbel-Softmax learner with `LearnOptions::cfg`.
    #[default]
    Gumbel,
    /// Hard-concrete gates with a Lagrangian budget (straight-through with `ste`).
    HardConcrete(HcConfig),
    /// One learned threshold per layer, trained with the weights in one pass
    /// ([`super::self_pinching`]); weights train even without [`LearnOptions::weights`].
    SelfPinching(super::self_pinching::SpConfig),
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
    /// Train the weights too ([`WeightTraining`]); the result then holds the model.
    pub weights: Option<WeightTraining>,
    /// In-situ speaker-verification pruning ([`super::speaker`]): the data are speech in
    /// speaker folders (or LibriSpeech-named files), and the task loss is a speaker head's
    /// AM-softmax on the model's first output, trained with the masks and the weights
    /// (weights train even without [`LearnOptions::weights`]). With `distill` too, the
    /// distillation loss is added.
    pub sv: Option<super::speaker::SvConfig>,
    /// With `distill`: held-out audio (a directory of audio files, or LibriMix-style) on which the
    /// final masks' per-layer cosine similarity to the teacher is measured.
    pub heldout: Option<PathBuf>,
    /// Crop length in samples (the gate graph is lowered at this length).
    pub samples: usize,
    /// At most this many crops per mixture.
    pub crops_per_file: usize,
    /// Targets are this teacher's outputs (the original model) instead of the references
    /// (label-free).
    pub teacher: Option<super::data::SharedTeacher>,
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
    /// Per layer (value name), the mean cosine similarity of the gate graph under the
    /// final masks to the original on the held-out crops ([`LearnOptions::heldout`]).
    pub heldout: Vec<(String, f64)>,
    /// With [`LearnOptions::weights`]: the model (unpruned, in the exporter's form) with the
    /// weights trained for the final masks; `prune --masks` slims it.
    pub model: Option<ModelProto>,
    /// With [`LearnOptions::sv`]: the speaker head's accuracy on the training crops after
    /// its warm-up on the original model ([`super::speaker::SpeakerHead::warm_up`]).
    pub head_accuracy: Option<f64>,
}

/// Weights trained with the masks (joint pruning and distillation, as DPHuBERT does), then
/// alone for `finetune_steps` under the final binary masks. AdamW, no weight decay, the
/// gradient clipped to a global L2 norm.
#[derive(Clone, Debug)]
pub struct WeightTraining {
    pub lr: f64,
    pub clip: f64,
    pub finetune_steps: usize,
}

impl WeightTraining {
    /// For the methods that train the weights by definition when no settings are given.
    pub const DEFAULT: WeightTraining = WeightTraining {
        lr: 2e-4,
        clip: 5.0,
        finetune_steps: 0,
    };
}

/// The weights of a gate graph as `Var`s with their optimiser.
struct WeightTrainer {
    vars: Vec<(String, candle_core::Var)>,
    /// Exact zeros stay zero ([`super::finetune::zero_masks`]).
    zeros: Vec<Option<candle_core::Tensor>>,
    opt: super::adam::Adam,
    clip: f64,
}

impl WeightTrainer {
    fn new(graph: &CandleGraph, names: &[String], w: &WeightTraining) -> Result<WeightTrainer> {
        let e = Error::candle("weights");
        let vars: Vec<(String, candle_core::Var)> = names
            .iter()
            .map(|n| {
                let t = graph
                    .constant(n)
                    .ok_or_else(|| Error::Graph(format!("parameter '{n}' is not lowered")))?;
                Ok((n.clone(), candle_core::Var::from_tensor(t).map_err(e)?))
            })
            .collect::<Result<_>>()?;
        let opt = super::adam::Adam::new(
            vars.iter().map(|(_, v)| v.clone()).collect(),
            super::adam::AdamConfig::lr(w.lr),
        )
        .map_err(e)?;
        Ok(WeightTrainer {
            zeros: super::finetune::zero_masks(&vars)?,
            vars,
            opt,
            clip: w.clip,
        })
    }

    fn overrides(&self) -> HashMap<String, candle_core::Tensor> {
        self.vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Clips the weights' gradients in `grads` (the gates' are left as they are) and
    /// takes an optimiser step; none when a gradient is not finite (a sample that closes a
    /// whole layer before an L2 normalisation).
    fn update(&mut self, grads: &mut candle_core::backprop::GradStore) -> Result<()> {
        super::finetune::keep_zeros(&self.vars, &self.zeros, grads)?;
        let (norm, scale) = super::finetune::clip_scale(&self.vars, grads, self.clip)?;
        if !norm.is_finite() {
            return Ok(());
        }
        self.opt
            .step(grads, scale)
            .map_err(Error::candle("weights"))
    }

    /// `ir`'s model with the trained weights, in the exporter's form.
    fn write_into(&self, ir: &Ir) -> Result<ModelProto> {
        let named = self.vars.iter().map(|(n, v)| (n, v.as_tensor()));
        let values = super::finetune::to_initializers(named)?;
        Ok(ir.exported(&crate::onnx::replace_initializers(&ir.model, &values)?))
    }
}

/// The task loss of the gate graph under `overrides` (gates, trained weights): with a
/// speaker head and the item's speaker, the head's AM-softmax on the first output (plus
/// the distillation loss when distilling); else the distillation loss against the
/// teacher's states; else the PIT loss on the item's targets.
///
/// Errors: the forward pass or the loss.
#[allow(clippy::too_many_arguments)]
fn task_loss(
    graph: &CandleGraph,
    distiller: Option<&Distiller>,
    teacher: Option<&[candle_core::Tensor]>,
    head: Option<(&HeadParams, usize)>,
    x: &candle_core::Tensor,
    item: &Item,
    overrides: &HashMap<String, candle_core::Tensor>,
    o: &LearnOptions,
) -> Result<candle_core::Tensor> {
    match (head, distiller, teacher) {
        (Some((h, label)), Some(d), Some(t)) => {
            let states = d.states(graph, x, overrides)?;
            let out = states
                .last()
                .ok_or_else(|| Error::Graph("no output state".into()))?;
            let sv = h.loss(out, label)?;
            let kd = d.loss(&states, t)?.0;
            (sv + kd).map_err(Error::candle("loss"))
        }
        (Some((h, label)), _, _) => h.loss(&graph.forward(x, overrides)?, label),
        (None, Some(d), Some(t)) => Ok(d.loss(&d.states(graph, x, overrides)?, t)?.0),
        _ => {
            let y = graph.forward(x, overrides)?;
            super::loss::on_targets(&y, &item.targets, o.cfg.loss)
        }
    }
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
    gated_graph_of(&ir, &groups, budget, device, &[])
}

/// [`gated_graph`] of a model already analysed, with the initializers `weights` live too
/// (trained jointly).
///
/// Errors: as [`gated_graph`].
pub fn gated_graph_of(
    ir: &Ir,
    groups: &Groups,
    budget: &Budget,
    device: &candle_core::Device,
    weights: &[String],
) -> Result<(CandleGraph, Vec<Group>)> {
    let cost = Cost::new(ir, groups, budget.scope);
    let cands: Vec<Group> = candidates(groups, &cost, budget)?
        .into_iter()
        .cloned()
        .collect();
    let mut live: Vec<String> = cands.iter().map(|g| gate_name(g.id)).collect();
    live.extend(weights.iter().cloned());
    let gated = Ir::new(gate_graph(ir, groups, None)?, ir.samples)?;
    let graph = CandleGraph::new(gated, device, candle_core::DType::F32, &live)?;
    Ok((graph, cands))
}

/// Learns masks for `model` on `data`.
///
/// Errors: unreadable data, an op without a Candle lowering, a bad checkpoint.
pub fn learn(model: &ModelProto, data: &Path, o: &LearnOptions) -> Result<Learned> {
    let ir = Ir::new(model.clone(), o.samples)?;
    // a fixed-length waveform export (Whisper's 30 s) learns on crops of its own length
    let input_len = ir
        .graph_inputs()
        .first()
        .and_then(|i| ir.fact(i))
        .filter(|f| f.shape.iter().filter(|&&d| d > 1).count() == 1)
        .map(|f| f.shape.iter().product::<usize>());
    let samples = match input_len {
        Some(n) if n != o.samples && (o.distill || o.sv.is_some()) => n,
        _ => o.samples,
    };
    let groups = crate::analysis::analyze_groups(&ir)?;
    // self-pinching and in-situ speaker training train the weights by definition
    let weights_cfg = match (&o.method, &o.weights) {
        (_, Some(w)) => Some(w.clone()),
        (Method::SelfPinching(_), None) => Some(WeightTraining::DEFAULT),
        (_, None) if o.sv.is_some() => Some(WeightTraining::DEFAULT),
        _ => None,
    };
    let weight_names: Vec<String> = match &weights_cfg {
        Some(_) => super::finetune::learnable(&ir),
        None => vec![],
    };
    if weights_cfg.is_some() && o.checkpoint.is_some() {
        return Err(Error::Option {
            option: "--checkpoint",
            value: o
                .checkpoint
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            msg: "a checkpoint holds the scores only: it cannot resume weights trained jointly"
                .into(),
        });
    }
    let (graph, cands) = gated_graph_of(&ir, &groups, &o.budget, &o.device, &weight_names)?;
    let cands: Vec<&Group> = cands.iter().collect();
    let mut trainer = match &weights_cfg {
        Some(w) => Some(WeightTrainer::new(&graph, &weight_names, w)?),
        None => None,
    };
    // with a speaker head: each item's speaker, and the head
    let mut labels: Vec<usize> = vec![];
    let mut head: Option<SpeakerHead> = None;
    let data_items: Vec<Item> = if let Some(cfg) = &o.sv {
        let (crops, speakers) = super::data::speaker_crops(data, samples, o.crops_per_file)?;
        let out_shape = ir
            .graph_outputs()
            .first()
            .and_then(|v| ir.fact(v))
            .map(|f| f.shape.clone())
            .unwrap_or_default();
        head = Some(SpeakerHead::new(
            super::speaker::pooled_width(&out_shape)?,
            speakers.len(),
            cfg,
            graph.device(),
        )?);
        let (inputs, l): (Vec<Vec<f32>>, Vec<usize>) = crops.into_iter().unzip();
        labels = l;
        inputs
            .into_iter()
            .map(|input| Item {
                input,
                targets: vec![],
            })
            .collect()
    } else if o.distill {
        super::data::input_crops(data, samples, o.crops_per_file)?
            .into_iter()
            .map(|input| Item {
                input,
                targets: vec![],
            })
            .collect()
    } else {
        super::data::crops(data, o.samples, o.crops_per_file, o.teacher.as_deref())?
            .into_iter()
            .flatten()
            .collect()
    };
    if data_items.is_empty() {
        return Err(Error::Data(format!(
            "{}: no training crops",
            data.display()
        )));
    }
    let mut distiller = o.distill.then(|| Distiller::new(&ir, &groups, &graph));
    // the speaker head first learns the original model's outputs
    let mut head_accuracy = None;
    if let (Some(h), Some(cfg)) = (head.as_mut(), &o.sv) {
        let weights = trainer
            .as_ref()
            .map(WeightTrainer::overrides)
            .unwrap_or_default();
        let outputs = data_items
            .iter()
            .zip(&labels)
            .map(|(it, &l)| {
                Ok((
                    graph.forward(&graph.input(&it.input)?, &weights)?.detach(),
                    l,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        head_accuracy = Some(h.warm_up(&outputs, cfg.head_epochs, cfg.seed)?);
    }
    let (iters, seed) = match &o.method {
        Method::Gumbel => (o.cfg.iters, o.cfg.seed),
        Method::HardConcrete(hc) => (hc.iters, hc.seed),
        Method::SelfPinching(sp) => (sp.iters, sp.seed),
    };
    let importance = match &o.method {
        Method::SelfPinching(_) => super::self_pinching::importances(&ir, &groups, &cands)?,
        _ => Default::default(),
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
            Method::SelfPinching(_) => super::self_pinching::init_scores(&cands),
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
        Method::HardConcrete(HcConfig { measure, .. })
        | Method::SelfPinching(super::self_pinching::SpConfig { measure, .. }) => Some(
            ExpectedCost::new(&ir, &groups, o.budget.scope, *measure, &cands),
        ),
        Method::Gumbel => None,
    };
    let bar = super::progress_bar(iters, o.progress);
    bar.set_position(scores.step as u64);
    let mut losses = vec![];
    while scores.step < iters {
        // a seeded order over the crops, re-drawn every epoch: resumable from `step` alone
        let key = super::data::item_at(data_items.len(), seed, scores.step);
        let item = &data_items[key];
        let mut rng = rng_at(seed, scores.step);
        let x = graph.input(&item.input)?;
        let teacher = match distiller.as_mut() {
            Some(d) => Some(d.teacher(&graph, key, &x)?),
            None => None,
        };
        let weights = trainer
            .as_ref()
            .map(WeightTrainer::overrides)
            .unwrap_or_default();
        let params = head.as_ref().map(|h| h.params.clone());
        let speaker = params.as_ref().map(|p| (p, labels[key]));
        let mut loss_of = |gates: &HashMap<String, candle_core::Tensor>| {
            let mut ov = weights.clone();
            ov.extend(gates.iter().map(|(k, v)| (k.clone(), v.clone())));
            task_loss(
                &graph,
                distiller.as_ref(),
                teacher.as_deref(),
                speaker,
                &x,
                item,
                &ov,
                o,
            )
        };
        let mut on_grads = |g: &mut candle_core::backprop::GradStore| {
            if let Some(h) = head.as_mut() {
                h.update(g)?;
            }
            match trainer.as_mut() {
                Some(t) => t.update(g),
                None => Ok(()),
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
                    &mut on_grads,
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
            (Method::SelfPinching(sp), Some(ec)) => {
                let st = super::self_pinching::step(
                    graph.device(),
                    graph.dtype(),
                    &mut scores,
                    &importance,
                    sp,
                    ec,
                    &mut loss_of,
                    &mut on_grads,
                )?;
                losses.push(st.loss);
                format!(
                    "loss {:.3}  kept {:.1}%  expected {:.1}% -> {:.1}%",
                    st.loss,
                    100.0 * st.kept,
                    100.0 * st.expected,
                    100.0 * st.target
                )
            }
            _ => {
                let st = super::gumbel::step_with(
                    &graph,
                    &mut scores,
                    &o.cfg,
                    &mut loss_of,
                    &mut on_grads,
                    &mut rng,
                )?;
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
    } else if let Method::SelfPinching(sp) = &o.method {
        let b = Budget {
            ratio: 1.0 - sp.target,
            measure: sp.measure,
            ..o.budget.clone()
        };
        let ranking = super::self_pinching::channel_ranking(&scores, &importance);
        masks_from_scores(&ir1, &groups1, &b, &ranking)?
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
    // the weights alone under the final masks
    let mut model_out = None;
    if let (Some(t), Some(w)) = (trainer.as_mut(), &weights_cfg) {
        let gates = graph.mask_gates(&budgeted.masks)?;
        let bar = super::progress_bar(w.finetune_steps, o.progress);
        for k in 0..w.finetune_steps {
            let key = super::data::item_at(data_items.len(), seed, iters + k);
            let item = &data_items[key];
            let x = graph.input(&item.input)?;
            let teacher = match distiller.as_mut() {
                Some(d) => Some(d.teacher(&graph, key, &x)?),
                None => None,
            };
            let mut ov = t.overrides();
            ov.extend(gates.iter().map(|(k, v)| (k.clone(), v.clone())));
            let params = head.as_ref().map(|h| h.params.clone());
            let loss = task_loss(
                &graph,
                distiller.as_ref(),
                teacher.as_deref(),
                params.as_ref().map(|p| (p, labels[key])),
                &x,
                item,
                &ov,
                o,
            )?;
            let lv = super::loss::scalar(&loss)?;
            if lv.is_finite() {
                let mut grads = loss
                    .backward()
                    .map_err(Error::candle("fine-tuning under masks"))?;
                if let Some(h) = head.as_mut() {
                    h.update(&grads)?;
                }
                t.update(&mut grads)?;
            }
            losses.push(lv);
            bar.set_message(format!("fine-tuning under the masks: loss {lv:.3}"));
            bar.inc(1);
        }
        bar.finish();
        model_out = Some(t.write_into(&ir)?);
    }
    let heldout = match (&o.heldout, distiller.as_mut()) {
        (Some(dir), Some(d)) => {
            let crops = super::data::input_crops(dir, samples, o.crops_per_file)?;
            let mut overrides = trainer
                .as_ref()
                .map(WeightTrainer::overrides)
                .unwrap_or_default();
            overrides.extend(graph.mask_gates(&budgeted.masks)?);
            d.similarity(&graph, &crops, &overrides, 1 << 40)?
        }
        _ => vec![],
    };
    let mut budgeted = budgeted;
    budgeted.masks = budgeted.masks.stamped(&ir1, &groups1);
    Ok(Learned {
        budgeted,
        scores,
        losses,
        heldout,
        model: model_out,
        head_accuracy,
    })
}
