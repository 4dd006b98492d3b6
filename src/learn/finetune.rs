//! `sepprune finetune`: trains every learnable parameter of a (slimmed) model with Candle to
//! recover its quality, with references or with the original model as teacher.
//!
//! Adam (lr 1e-3 by default), the gradient clipped to a global L2 norm (5, as in the
//! Conv-TasNet recipe), batch 1. A validation split (every k-th file) is scored at the end
//! of every epoch (or every `val_every` steps): the learning rate halves when the validation
//! loss does not improve, training stops after `stop_after` evaluations without
//! improvement, at `epochs`, or at `minutes`, and the best weights by validation are kept.
//! With a teacher and dynamic mixing, training distils the teacher on remixes
//! ([`super::augment::Augmenter::distilled`]) and validation holds, beside the validation
//! crops, as many distilled remixes of the validation files: the crops alone only show the
//! training noises, which a refit student already reproduces.
//! Learnable parameters are what each op rule names ([`crate::ops::OpRule::params`]):
//! weights, biases, affine scales, slopes. Everything else in the model is left unchanged.
use super::adam::{Adam, AdamConfig};
use super::data::{crops_of, epoch_order};
use super::graph::CandleGraph;
use super::gumbel::Item;
use super::hints::Hints;
use super::loss::{on_targets, on_targets_capped, scalar, Loss};
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::onnx::{ModelProto, Tensor};
use candle_core::{DType, Device, Tensor as CTensor, Var};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Options of a fine-tuning run.
#[derive(Clone, Debug)]
pub struct FinetuneOptions {
    /// Crop length in samples.
    pub samples: usize,
    pub crops_per_file: usize,
    /// Distill from this model (the original): its outputs are the targets.
    pub teacher: Option<super::data::SharedTeacher>,
    pub lr: f64,
    /// Global L2 norm the gradient is clipped to (0: no clipping).
    pub clip: f64,
    pub epochs: usize,
    /// At most this many steps (with dynamic mixing, where epochs mean little).
    pub steps: Option<usize>,
    /// Wall-clock budget in minutes (checked after every step).
    pub minutes: Option<f64>,
    /// Every k-th file (sorted by name, counting from the k-th) is the validation split,
    /// unless `val_data` is given.
    pub val_every_file: usize,
    /// A separate validation set (LibriMix layout, e.g. the `val/` of `mix --split-by`):
    /// validation crops come from it, training uses every file of the data.
    pub val_data: Option<std::path::PathBuf>,
    /// A test set scored at every validation, for learning curves only: nothing (stopping,
    /// learning rate, the weights kept) depends on it.
    pub test_data: Option<std::path::PathBuf>,
    /// Validate every this many steps (default: once per epoch).
    pub val_every: Option<usize>,
    /// Evaluations without improvement before stopping.
    pub stop_after: usize,
    /// Evaluations without improvement before the learning rate is halved (1: at every one;
    /// [`Schedule::Plateau`] only).
    pub patience: usize,
    pub schedule: Schedule,
    /// Linear learning-rate warm-up over the first this many steps (from `lr / warmup`
    /// to `lr`, then the schedule; Goyal et al. 2017, sec. 2.2): Adam's first updates on
    /// a pretrained start are as large as its later ones and undo what the start knew.
    /// 0: none.
    pub warmup_steps: usize,
    pub seed: u64,
    pub loss: Loss,
    /// Soft threshold of the training loss in dB (Wisdom et al. 2020, eq. 5): an item
    /// matched beyond it adds little gradient. `None`: the plain log-scale loss.
    pub loss_max_db: Option<f64>,
    pub progress: bool,
    /// Candle device ([`super::device`]).
    pub device: Device,
    /// Train on a fresh dynamically mixed example at every step ([`super::augment`]) drawn
    /// from the training files, instead of their fixed crops (validation keeps its crops;
    /// with a teacher, it also gets distilled remixes of the validation files).
    pub dynamic_mix: bool,
    /// With `dynamic_mix`, perturb recorded noises (speed, spectral tilt, reversal;
    /// [`super::augment`]).
    pub perturb_noise: bool,
    /// With a teacher and `dynamic_mix`: distil only remixes on which the teacher gains at
    /// least this many dB SI-SDR ([`super::augment::Augmenter::with_min_teacher_gain`]).
    pub min_teacher_gain: Option<f64>,
    /// With a teacher: also match its activations at every linear layer on the channels
    /// these masks (the ones the model was pruned with) kept ([`super::hints`]).
    pub hints: Option<crate::prune::Masks>,
    /// Weight of the hint loss (dB) beside the output loss (dB).
    pub hint_weight: f64,
    /// Validate and keep an exponential moving average of the weights with this decay per
    /// step (Polyak averaging), not the last weights.
    pub ema: Option<f64>,
    /// Which weights the run returns: the best validation's, or the last step's.
    pub keep: Keep,
    /// Items per step (crops of the training set or dynamic mixtures); a step counts once
    /// whatever its batch. Above 1 the model must keep batch items apart
    /// ([`super::batch::check`]).
    pub batch: usize,
}

/// Which weights a run returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The weights of the validation with the lowest loss.
    #[default]
    Best,
    /// The weights after the last step (with [`Schedule::Cosine`], where the rate has
    /// decayed to 0): validation then draws the curves and decides nothing. On 40
    /// validation crops the loss moves by tenths of a dB from one validation to the next,
    /// and the lowest of many noisy validations is often an early one (docs/recovery.md).
    Last,
}

/// How the learning rate moves during a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Halved after `patience` validations without improvement.
    #[default]
    Plateau,
    /// Cosine decay from `lr` to 0 over the budget (`steps`, else `minutes`, else
    /// `epochs`): `lr * (1 + cos(pi * p)) / 2` at progress p in [0, 1] (Loshchilov and
    /// Hutter 2017, SGDR without restarts). Validation only picks the weights kept.
    Cosine,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        FinetuneOptions {
            samples: 16000,
            crops_per_file: 2,
            teacher: None,
            lr: 1e-3,
            clip: 5.0,
            epochs: 10,
            steps: None,
            minutes: None,
            val_every_file: 5,
            val_data: None,
            test_data: None,
            val_every: None,
            stop_after: 3,
            patience: 1,
            schedule: Schedule::Plateau,
            warmup_steps: 0,
            seed: 0,
            loss: Loss::SiSdr,
            loss_max_db: None,
            progress: false,
            device: Device::Cpu,
            dynamic_mix: false,
            perturb_noise: false,
            min_teacher_gain: None,
            hints: None,
            hint_weight: 1.0,
            ema: None,
            keep: Keep::Best,
            batch: 1,
        }
    }
}

/// One validation point.
#[derive(Clone, Debug, Serialize)]
pub struct Eval {
    pub step: usize,
    pub seconds: f64,
    /// Mean training loss since the previous evaluation (dB, lower is better).
    pub train_loss: f64,
    /// Mean validation loss (dB; with the SI-SDR loss, minus the validation SI-SDR).
    pub val_loss: f64,
    /// Mean loss on the test crops, when a test set is given (curves only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    pub lr: f64,
}

/// The fine-tuned model (best weights by validation) and its history.
pub struct Finetuned {
    pub model: ModelProto,
    /// Validation before training (step 0) and after every evaluation.
    pub history: Vec<Eval>,
    /// The evaluation of the weights in `model`: the best validation's, or the last one's
    /// with [`Keep::Last`].
    pub best: Eval,
    pub parameters: usize,
}

/// The learnable parameters of `ir`: float initializers at the inputs each op rule names.
pub fn learnable(ir: &Ir) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for node in ir.nodes() {
        let Some(rule) = crate::ops::rule(node) else {
            continue;
        };
        for i in rule.params(node, ir) {
            let Some(name) = node.input.get(i).filter(|n| !n.is_empty()) else {
                continue;
            };
            let float = matches!(ir.initializer(name), Ok(Tensor::F32(_)));
            if ir.is_initializer(name) && float && !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    out
}

/// Seed of the validation remixes: the same draw whatever the training seed, so that runs
/// with different seeds are validated on the same examples.
const VALIDATION_SEED: u64 = 0x5_EED0_F7A1;

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The scale that clips the gradients of `vars` in `grads` to a global L2 norm of at most
/// `clip` (0: no clipping), and that norm before clipping (NaN when a gradient is).
///
/// Errors: a gradient that cannot be read.
pub fn clip_scale(
    vars: &[(String, Var)],
    grads: &candle_core::backprop::GradStore,
    clip: f64,
) -> Result<(f64, f64)> {
    let vars: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let norm = super::adam::grad_norm(&vars, grads).map_err(ce)?;
    let scale = if clip > 0.0 && norm > clip {
        clip / norm
    } else {
        1.0
    };
    Ok((norm, scale))
}

/// Per parameter, a 0/1 tensor that is 0 where the weight is exactly zero, for those that
/// have such entries (`None` for the others). Training keeps exact zeros at zero
/// ([`keep_zeros`]): a sparse constant matrix (a mel filterbank exported as a MatMul
/// weight) is a buffer more than a weight, and Adam's first steps, of size `lr` whatever the
/// gradient, would let every band read every frequency bin.
///
/// Errors: a weight that cannot be read.
pub fn zero_masks(vars: &[(String, Var)]) -> Result<Vec<Option<CTensor>>> {
    vars.iter()
        .map(|(_, v)| {
            let t = v.as_tensor();
            let w: Vec<f64> = t
                .to_dtype(DType::F64)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .map_err(ce)?;
            if w.iter().all(|&x| x != 0.0) {
                return Ok(None);
            }
            let m: Vec<f64> = w.iter().map(|&x| f64::from(u8::from(x != 0.0))).collect();
            CTensor::from_vec(m, t.dims(), t.device())
                .and_then(|m| m.to_dtype(t.dtype()))
                .map(Some)
                .map_err(ce)
        })
        .collect()
}

/// Zeroes the gradients of `vars` in `grads` where [`zero_masks`] says the weight is zero.
///
/// Errors: a gradient that cannot be multiplied.
pub fn keep_zeros(
    vars: &[(String, Var)],
    masks: &[Option<CTensor>],
    grads: &mut candle_core::backprop::GradStore,
) -> Result<()> {
    for ((_, v), m) in vars.iter().zip(masks) {
        let Some(m) = m else { continue };
        if let Some(g) = grads.remove(v.as_tensor()) {
            grads.insert(v.as_tensor(), (g * m).map_err(ce)?);
        }
    }
    Ok(())
}

/// The parameters of a model as Candle `Var`s with an Adam optimiser: one training step at
/// a time (forward, backward, clipped gradient, update).
pub struct Trainer {
    graph: CandleGraph,
    /// Items per step (the graph's batch axis, [`super::batch`]).
    batch: usize,
    vars: Vec<(String, Var)>,
    /// Where each parameter is exactly zero ([`zero_masks`]): kept at zero.
    zeros: Vec<Option<CTensor>>,
    opt: Adam,
    clip: f64,
    loss: Loss,
    /// Soft threshold of the training loss in dB ([`Trainer::set_loss_max_db`]).
    max_db: Option<f64>,
    /// Decay and the moving average of every parameter ([`Trainer::set_ema`]).
    ema: Option<(f64, Vec<CTensor>)>,
    /// Intermediate-feature distillation and its weight ([`Trainer::set_hints`]).
    hints: Option<(Hints, f64)>,
}

fn ce(e: candle_core::Error) -> Error {
    Error::candle("finetune")(e)
}

impl Trainer {
    /// Lowers `model` at `samples` with its learnable parameters live.
    ///
    /// Errors: shape inference, a model without learnable parameters, undecodable weights.
    pub fn new(
        model: &ModelProto,
        samples: usize,
        lr: f64,
        clip: f64,
        loss: Loss,
        device: &Device,
    ) -> Result<Trainer> {
        Trainer::batched(model, samples, 1, lr, clip, loss, device)
    }

    /// [`Trainer::new`] for steps of `batch` items: the model widened to `batch` items
    /// ([`crate::ops::widen_batch`]) after a check that it keeps them apart.
    ///
    /// Errors: as [`Trainer::new`]; a model that mixes batch items ([`super::batch::check`]).
    #[allow(clippy::too_many_arguments)]
    pub fn batched(
        model: &ModelProto,
        samples: usize,
        batch: usize,
        lr: f64,
        clip: f64,
        loss: Loss,
        device: &Device,
    ) -> Result<Trainer> {
        let batch = batch.max(1);
        if batch > 1 {
            super::batch::check(model, samples)?;
        }
        let ir = Ir::new(crate::ops::widen_batch(model, batch)?, samples)?;
        let names = learnable(&ir);
        if names.is_empty() {
            return Err(Error::Graph(
                "finetune: the model has no learnable parameters".into(),
            ));
        }
        let graph = CandleGraph::new(ir, device, DType::F32, &names)?;
        let vars: Vec<(String, Var)> = names
            .iter()
            .map(|n| {
                let t = graph.constant(n).ok_or_else(|| {
                    Error::Graph(format!("finetune: parameter '{n}' is not lowered"))
                })?;
                Ok((n.clone(), Var::from_tensor(t).map_err(ce)?))
            })
            .collect::<Result<_>>()?;
        let opt = Adam::new(
            vars.iter().map(|(_, v)| v.clone()).collect(),
            AdamConfig::lr(lr),
        )
        .map_err(ce)?;
        Ok(Trainer {
            graph,
            batch,
            zeros: zero_masks(&vars)?,
            vars,
            opt,
            clip,
            loss,
            max_db: None,
            ema: None,
            hints: None,
        })
    }

    /// From now on, every step also minimises `weight` times the hint loss against
    /// `teacher` (the original model) under `masks` ([`super::hints`]); the reported and
    /// validated loss stays the output loss.
    ///
    /// Errors: as [`Hints::new`].
    pub fn set_hints(
        &mut self,
        teacher: &ModelProto,
        masks: &crate::prune::Masks,
        weight: f64,
    ) -> Result<usize> {
        if self.batch > 1 {
            return Err(Error::Graph(
                "finetune: hints train at batch 1 (--batch 1)".into(),
            ));
        }
        let h = Hints::new(
            teacher,
            masks,
            self.graph.ir(),
            self.graph.device(),
            self.graph.dtype(),
        )?;
        let n = h.len();
        self.hints = Some((h, weight));
        Ok(n)
    }

    /// From now on, the training loss saturates at `max_db` dB (Wisdom et al. 2020, eq. 5;
    /// [`super::loss::pit_capped`]); validation keeps the plain metric. `None`: no threshold.
    pub fn set_loss_max_db(&mut self, max_db: Option<f64>) {
        self.max_db = max_db;
    }

    /// Number of trained scalars.
    pub fn parameters(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.opt.set_learning_rate(lr);
    }

    /// From now on, keep an exponential moving average of the weights, `a <- decay a +
    /// (1 - decay) w` after every step; [`Trainer::validate`] and [`Trainer::snapshot`] read
    /// it instead of the weights.
    ///
    /// Errors: a weight that cannot be copied.
    pub fn set_ema(&mut self, decay: f64) -> Result<()> {
        let avg = self
            .vars
            .iter()
            .map(|(_, v)| v.as_tensor().detach().copy())
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(ce)?;
        self.ema = Some((decay, avg));
        Ok(())
    }

    /// The training weights (with gradients) by name.
    fn overrides(&self) -> HashMap<String, CTensor> {
        self.vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// The weights validation and snapshots read: the moving average when kept.
    fn evaluated(&self) -> HashMap<String, CTensor> {
        match &self.ema {
            Some((_, avg)) => self
                .vars
                .iter()
                .zip(avg)
                .map(|((n, _), a)| (n.clone(), a.clone()))
                .collect(),
            None => self.overrides(),
        }
    }

    /// One step on `item`; returns its loss (dB) before the update.
    ///
    /// Errors: the forward pass, or a non-finite loss.
    pub fn step(&mut self, item: &Item) -> Result<f64> {
        self.step_phases(std::slice::from_ref(item), None)
    }

    /// Items per step.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// One step on [`Trainer::batch`] items (their mean loss); returns that loss (dB)
    /// before the update.
    ///
    /// Errors: another number of items; as [`Trainer::step`].
    pub fn step_batch(&mut self, items: &[Item]) -> Result<f64> {
        self.step_phases(items, None)
    }

    /// [`Trainer::step`] that also times its phases: wall seconds of the forward pass and
    /// loss, the backward pass, and the update (clipping, AdamW, moving average), the
    /// device synchronised at each boundary (for `bench --train`; the syncs cost a GPU
    /// some overlap of host and device work).
    ///
    /// Errors: as [`Trainer::step`].
    pub fn step_timed(&mut self, items: &[Item]) -> Result<(f64, [f64; 3])> {
        let mut t = [0.0; 3];
        let lv = self.step_phases(items, Some(&mut t))?;
        Ok((lv, t))
    }

    /// The mean loss over `items` of the graph's output `y` (batch axis first).
    fn batch_loss(&self, y: &CTensor, items: &[Item]) -> Result<CTensor> {
        if items.len() == 1 {
            return on_targets_capped(y, &items[0].targets, self.loss, self.max_db);
        }
        let mut total: Option<CTensor> = None;
        for (i, it) in items.iter().enumerate() {
            let yi = y.narrow(0, i, 1).map_err(ce)?;
            let l = on_targets_capped(&yi, &it.targets, self.loss, self.max_db)?;
            total = Some(match total {
                Some(t) => (t + l).map_err(ce)?,
                None => l,
            });
        }
        let total = total.ok_or_else(|| Error::Data("finetune: no items".into()))?;
        (total / items.len() as f64).map_err(ce)
    }

    /// The graph input holding `items` (their inputs one after the other).
    ///
    /// Errors: not [`Trainer::batch`] items.
    fn batch_input(&self, items: &[Item]) -> Result<CTensor> {
        if items.len() != self.batch {
            return Err(Error::Data(format!(
                "finetune: a step of {} items on a graph of batch {}",
                items.len(),
                self.batch
            )));
        }
        match items {
            [one] => self.graph.input(&one.input),
            _ => self.graph.input(
                &items
                    .iter()
                    .flat_map(|i| i.input.iter().copied())
                    .collect::<Vec<_>>(),
            ),
        }
    }

    fn step_phases(&mut self, items: &[Item], mut timed: Option<&mut [f64; 3]>) -> Result<f64> {
        let mut clock = std::time::Instant::now();
        let device = self.graph.device().clone();
        let mut lap = |k: usize, timed: &mut Option<&mut [f64; 3]>| -> Result<()> {
            if let Some(t) = timed {
                device.synchronize().map_err(ce)?;
                t[k] = clock.elapsed().as_secs_f64();
                clock = std::time::Instant::now();
            }
            Ok(())
        };
        let x = self.batch_input(items)?;
        let (y, acts) = match &self.hints {
            Some((h, _)) => self
                .graph
                .forward_keeping(&x, &self.overrides(), h.names())?,
            None => (self.graph.forward(&x, &self.overrides())?, HashMap::new()),
        };
        let mut loss = self.batch_loss(&y, items)?;
        let lv = scalar(&loss)?;
        if !lv.is_finite() {
            return Err(Error::Data(format!(
                "finetune: the loss is {lv}; try a lower --lr"
            )));
        }
        if let Some((h, w)) = &self.hints {
            let hl = h.loss(&x, &acts)?;
            let hv = scalar(&hl)?;
            if !hv.is_finite() {
                return Err(Error::Data(format!(
                    "finetune: the hint loss is {hv}; try a lower --lr or --hint-weight"
                )));
            }
            loss = (loss + (hl * *w).map_err(ce)?).map_err(ce)?;
        }
        lap(0, &mut timed)?;
        let mut grads = loss.backward().map_err(ce)?;
        lap(1, &mut timed)?;
        keep_zeros(&self.vars, &self.zeros, &mut grads)?;
        let (_, scale) = clip_scale(&self.vars, &grads, self.clip)?;
        self.opt.step(&grads, scale).map_err(ce)?;
        if let Some((decay, avg)) = &mut self.ema {
            for ((_, v), a) in self.vars.iter().zip(avg.iter_mut()) {
                let w = v.as_tensor().detach();
                *a = ((&*a * *decay).map_err(ce)? + (w * (1.0 - *decay)).map_err(ce)?)
                    .map_err(ce)?;
            }
        }
        lap(2, &mut timed)?;
        Ok(lv)
    }

    /// Mean loss (dB) over `items`, without gradients.
    pub fn validate(&self, items: &[Item]) -> Result<f64> {
        let ov = self.evaluated();
        let mut l = vec![];
        for chunk in items.chunks(self.batch) {
            // a last, short chunk is filled up with copies of its last item
            let mut full: Vec<&Item> = chunk.iter().collect();
            while full.len() < self.batch {
                full.push(&chunk[chunk.len() - 1]);
            }
            let flat: Vec<f32> = full.iter().flat_map(|i| i.input.iter().copied()).collect();
            let y = self.graph.forward(&self.graph.input(&flat)?, &ov)?.detach();
            for (i, it) in chunk.iter().enumerate() {
                let yi = if self.batch == 1 {
                    y.clone()
                } else {
                    y.narrow(0, i, 1).map_err(ce)?
                };
                l.push(scalar(&on_targets(&yi, &it.targets, self.loss)?)?);
            }
        }
        Ok(mean(&l))
    }

    /// A copy of the current parameters (their moving average when kept).
    pub fn snapshot(&self) -> Result<Vec<CTensor>> {
        let ev = self.evaluated();
        self.vars
            .iter()
            .map(|(n, _)| ev[n].detach().copy().map_err(ce))
            .collect()
    }

    /// `model` with its learnable initializers replaced by `weights` (from
    /// [`Trainer::snapshot`]); everything else unchanged.
    pub fn write_into(&self, model: &ModelProto, weights: &[CTensor]) -> Result<ModelProto> {
        let named = self.vars.iter().map(|(n, _)| n).zip(weights);
        crate::onnx::replace_initializers(model, &to_initializers(named)?)
    }
}

/// Candle tensors by name as f32 initializer values (for
/// [`crate::onnx::replace_initializers`]).
///
/// Errors: a tensor that cannot be read back.
pub fn to_initializers<'a>(
    named: impl Iterator<Item = (&'a String, &'a CTensor)>,
) -> Result<HashMap<String, Tensor>> {
    named
        .map(|(name, t)| {
            let v: Vec<f32> = t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .map_err(ce)?;
            let a = ndarray::ArrayD::from_shape_vec(t.dims(), v).map_err(|err| Error::Tensor {
                name: name.clone(),
                msg: err.to_string(),
            })?;
            Ok((name.clone(), Tensor::F32(a)))
        })
        .collect()
}

/// Fine-tunes `model` on `data`. With `dynamic_mix` and a [`crate::audio::corpus::SOURCES_FILE`]
/// in `data` (a split of `mix --split-by`), every step draws a fresh mixture of that
/// split's speech and noise files; otherwise remixes of `data`'s own examples.
///
/// Errors: unreadable data, fewer than two files (no validation split) without `val_data`,
/// an op without a Candle lowering, a non-finite loss.
pub fn finetune(model: &ModelProto, data: &Path, o: &FinetuneOptions) -> Result<Finetuned> {
    let t0 = Instant::now();
    let mut trainer = Trainer::batched(model, o.samples, o.batch, o.lr, o.clip, o.loss, &o.device)?;
    trainer.set_loss_max_db(o.loss_max_db);
    if let Some(decay) = o.ema {
        if !(0.0..1.0).contains(&decay) {
            return Err(Error::Option {
                option: "--ema",
                value: decay.to_string(),
                msg: "the EMA decay must be in [0, 1)".into(),
            });
        }
        trainer.set_ema(decay)?;
    }
    if let Some(masks) = &o.hints {
        let teacher = o.teacher.as_ref().ok_or_else(|| Error::Option {
            option: "--hints",
            value: String::new(),
            msg: "hints need the original model as --teacher".into(),
        })?;
        trainer.set_hints(teacher.model(), masks, o.hint_weight)?;
    }
    let examples = crate::audio::dataset::load(data, 16000)?;
    let files = crops_of(
        &examples,
        data,
        o.samples,
        o.crops_per_file,
        o.teacher.as_deref(),
    )?;
    let k = o.val_every_file.max(2);
    let (mut train, mut val): (Vec<Item>, Vec<Item>) = (vec![], vec![]);
    if let Some(v) = &o.val_data {
        let held = crate::audio::dataset::load(v, 16000)?;
        val = crops_of(&held, v, o.samples, o.crops_per_file, o.teacher.as_deref())?
            .into_iter()
            .flatten()
            .collect();
        train = files.into_iter().flatten().collect();
    } else {
        if files.len() < 2 {
            return Err(Error::Data(format!(
                "{}: fine-tuning needs at least 2 mixtures (one for validation)",
                data.display()
            )));
        }
        for (i, f) in files.into_iter().enumerate() {
            if i % k == k - 1 {
                val.extend(f);
            } else {
                train.extend(f);
            }
        }
        if val.is_empty() {
            // fewer than k files: the last crop is the validation split
            val.push(train.pop().expect("two files"));
        }
    }
    let mut mixer = None;
    let corpus = match o.dynamic_mix {
        true => crate::audio::corpus::Corpus::of_split(data)?,
        false => None,
    };
    if let Some(c) = corpus {
        // a split of `mix --split-by`: fresh mixtures of its speech and noise files
        let read = |v: &[crate::audio::corpus::Source]| -> Result<Vec<Vec<f32>>> {
            v.iter()
                .map(|s| crate::audio::wav::read_at(&s.path, 16000))
                .collect()
        };
        mixer = Some(
            super::augment::Augmenter::from_corpus(
                read(&c.speech)?,
                read(&c.noise)?,
                o.samples,
                o.teacher.clone(),
                o.perturb_noise,
                o.seed,
            )?
            .with_min_teacher_gain(o.min_teacher_gain),
        );
    } else if o.dynamic_mix {
        let (mut fit, mut held) = (vec![], vec![]);
        for (i, e) in examples.into_iter().enumerate() {
            if o.val_data.is_none() && i % k == k - 1 {
                held.push(e);
            } else {
                fit.push(e);
            }
        }
        if o.teacher.is_some() && !held.is_empty() {
            // label-free: the real validation crops only show the training noises, which a
            // refit student already reproduces; as many distilled remixes of the validation
            // files (a fixed draw) show the noises training perturbs and synthesises
            let mut v = super::augment::Augmenter::new(
                held,
                o.samples,
                o.teacher.clone(),
                o.perturb_noise,
                VALIDATION_SEED,
            )?
            .with_min_teacher_gain(o.min_teacher_gain);
            for _ in 0..val.len() {
                val.push(v.distilled()?);
            }
        }
        mixer = Some(
            super::augment::Augmenter::new(
                fit,
                o.samples,
                o.teacher.clone(),
                o.perturb_noise,
                o.seed,
            )?
            .with_min_teacher_gain(o.min_teacher_gain),
        );
    }
    // the test curve costs what validation costs: at most as many crops, evenly spaced
    // over the test files (a curve, not a score; the scores come from `eval`)
    let test: Vec<Item> = match &o.test_data {
        Some(t) => {
            let mut ex = crate::audio::dataset::load(t, 16000)?;
            let keep = val.len().max(1);
            if ex.len() > keep {
                let n = ex.len();
                ex = (0..keep).map(|i| ex[i * n / keep].clone()).collect();
            }
            crops_of(&ex, t, o.samples, 1, o.teacher.as_deref())?
                .into_iter()
                .flatten()
                .collect()
        }
        None => vec![],
    };
    let test_loss = |trainer: &Trainer| -> Result<Option<f64>> {
        (!test.is_empty())
            .then(|| trainer.validate(&test))
            .transpose()
    };
    // the share of the schedule's rate applied at `step` (linear warm-up)
    let warm = |step: usize| match o.warmup_steps {
        0 => 1.0,
        w => ((step + 1) as f64 / w as f64).min(1.0),
    };
    let first = Eval {
        step: 0,
        seconds: t0.elapsed().as_secs_f64(),
        train_loss: f64::NAN,
        val_loss: trainer.validate(&val)?,
        test_loss: test_loss(&trainer)?,
        lr: o.lr * warm(0),
    };
    let mut best = (first.clone(), trainer.snapshot()?);
    let mut history = vec![first];
    let val_every = o.val_every.unwrap_or(train.len()).max(1);
    let batch = trainer.batch();
    let total = o
        .steps
        .unwrap_or(usize::MAX)
        .min((o.epochs * train.len() / batch).max(1));
    let bar = super::progress_bar(total, o.progress);
    let (mut step, mut since, mut stale, mut lr) = (0usize, vec![], 0usize, o.lr);
    trainer.set_lr(lr * warm(0));
    // items drawn so far (the place in the epoch order), and those waiting for a step
    let (mut drawn, mut pending) = (0usize, Vec::with_capacity(batch));
    let out_of_time = |t: &Instant| {
        o.minutes
            .is_some_and(|m| t.elapsed().as_secs_f64() >= 60.0 * m)
    };
    'train: while step < total {
        let order = epoch_order(train.len(), o.seed, drawn / train.len());
        for &i in order.iter().skip(drawn % train.len()) {
            drawn += 1;
            let lv = match (mixer.as_mut(), batch) {
                (Some(m), 1) if o.teacher.is_some() => trainer.step(&m.distilled()?)?,
                (Some(m), 1) => trainer.step(&m.item())?,
                (None, 1) => trainer.step(&train[i])?,
                (m, _) => {
                    pending.push(match m {
                        Some(m) if o.teacher.is_some() => m.distilled()?,
                        Some(m) => m.item(),
                        None => train[i].clone(),
                    });
                    if pending.len() < batch {
                        continue;
                    }
                    let lv = trainer.step_batch(&pending)?;
                    pending.clear();
                    lv
                }
            };
            step += 1;
            since.push(lv);
            if o.schedule == Schedule::Cosine {
                let p = match (o.steps, o.minutes) {
                    (Some(_), _) => step as f64 / total as f64,
                    (None, Some(m)) => t0.elapsed().as_secs_f64() / (60.0 * m),
                    (None, None) => step as f64 / total as f64,
                };
                lr = o.lr * 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos());
            }
            trainer.set_lr(lr * warm(step));
            bar.inc(1);
            let last = history.last().expect("first evaluation");
            bar.set_message(format!(
                "loss {lv:.2} dB  val {:.2} dB  lr {lr:.1e}",
                last.val_loss
            ));
            let timeout = out_of_time(&t0);
            if step % val_every == 0 || step == total || timeout {
                let ev = Eval {
                    step,
                    seconds: t0.elapsed().as_secs_f64(),
                    train_loss: mean(&since),
                    val_loss: trainer.validate(&val)?,
                    test_loss: test_loss(&trainer)?,
                    lr: lr * warm(step),
                };
                since.clear();
                if ev.val_loss < best.0.val_loss {
                    best = (ev.clone(), trainer.snapshot()?);
                    stale = 0;
                } else {
                    stale += 1;
                    if o.schedule == Schedule::Plateau && stale % o.patience.max(1) == 0 {
                        lr /= 2.0;
                        trainer.set_lr(lr * warm(step));
                    }
                }
                history.push(ev);
                if stale >= o.stop_after || timeout {
                    break 'train;
                }
            }
            if step == total {
                break 'train;
            }
        }
    }
    bar.finish_and_clear();
    if o.keep == Keep::Last {
        // the last validation is at the last step (`step == total`, or a timeout)
        let last = history.last().expect("first evaluation").clone();
        best = (last, trainer.snapshot()?);
    }
    let parameters = trainer.parameters();
    Ok(Finetuned {
        model: trainer.write_into(model, &best.1)?,
        history,
        best: best.0,
        parameters,
    })
}
