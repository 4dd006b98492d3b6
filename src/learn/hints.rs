//! Intermediate-feature distillation ("hints"; Romero et al. 2015, "FitNets", eq. 2; for a
//! pruned student, the layer-wise distillation of Xia et al. 2022, "CoFi", eq. 6): besides
//! the teacher's outputs, the slimmed model is trained to reproduce the original model's
//! activations at every linear layer's output, on the channels the masks kept.
//!
//! The same layers as the least-squares refit ([`super::refit`], scope `All`): a 1x1 Conv,
//! MatMul, Gemm or depthwise conv of the slimmed model, its output compared with the
//! original node of the same output name, sliced to the kept output channels. The refit
//! fits each layer alone in closed form; hints keep every layer close to the teacher while
//! SGD trains them jointly, so that fine-tuning on few files cannot drift from the
//! teacher's internal representation.
//!
//! Per layer `l` with student activation `S_l` and teacher activation `T_l[kept]` (both
//! `[N, C', ...]`), the loss is the normalised error in dB,
//! `10 log10(||S_l - T_l[kept]||² / ||T_l[kept]||²)`, averaged over the layers: the same
//! unit as the SI-SDR loss, and each layer weighs the same whatever its scale.
use super::graph::CandleGraph;
use super::refit::{targets, RefitScope};
use crate::analysis::analyze_groups;
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::onnx::ModelProto;
use crate::prune::Masks;
use candle_core::{DType, Device, Tensor as CTensor};
use std::collections::{HashMap, HashSet};

fn ce(e: candle_core::Error) -> Error {
    Error::candle("hints")(e)
}

/// One hinted layer: the output value (same name in both models), its channel axis and
/// the teacher's kept channels (`None`: all).
struct Hint {
    value: String,
    axis: usize,
    keep: Option<CTensor>,
}

/// The teacher lowered in Candle and the layers whose activations the student matches.
pub struct Hints {
    teacher: CandleGraph,
    layers: Vec<Hint>,
    names: HashSet<String>,
}

impl Hints {
    /// Hints from `original` (the teacher) for `slim`, the model [`crate::prune::slim`]
    /// made from it under `masks` (value names shared); the teacher is lowered at
    /// `slim.samples`.
    ///
    /// Errors: masks that do not fit the original's channel groups (the message says so
    /// and gives the mask error); no linear layer in common; an initializer that cannot be
    /// decoded.
    pub fn new(
        original: &ModelProto,
        masks: &Masks,
        slim: &Ir,
        device: &Device,
        dtype: DType,
    ) -> Result<Hints> {
        let orig = Ir::new(original.clone(), slim.samples)?;
        let groups = analyze_groups(&orig)?;
        masks.validate(&groups).map_err(|e| {
            Error::Masks(format!(
                "hints: the masks do not fit the teacher's channel groups: {e}"
            ))
        })?;
        let (found, _) = targets(&orig, slim, &groups, masks, RefitScope::All)?;
        let mut layers = vec![];
        for t in found {
            let value = slim.nodes()[t.node].output[0].clone();
            let shape = |ir: &Ir| ir.fact(&value).map(|f| f.shape.clone());
            let (Some(s), Some(mut o)) = (shape(slim), shape(&orig)) else {
                continue;
            };
            if let Some(k) = &t.keep_out {
                if let Some(c) = o.get_mut(t.lin.axis) {
                    *c = k.len();
                }
            }
            // a layer whose output some other group sliced cannot be compared: left out
            if s != o {
                continue;
            }
            let keep = t
                .keep_out
                .map(|k| CTensor::new(k.iter().map(|&i| i as u32).collect::<Vec<_>>(), device))
                .transpose()
                .map_err(ce)?;
            layers.push(Hint {
                value,
                axis: t.lin.axis,
                keep,
            });
        }
        if layers.is_empty() {
            return Err(Error::Graph(
                "hints: the slimmed model has no linear layer in common with the original".into(),
            ));
        }
        let names = layers.iter().map(|h| h.value.clone()).collect();
        Ok(Hints {
            teacher: CandleGraph::new(orig, device, dtype, &[])?,
            layers,
            names,
        })
    }

    /// Number of hinted layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True when no layer is hinted (never after [`Hints::new`], which errors then).
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The student values the loss reads (pass them to
    /// [`CandleGraph::forward_keeping`]).
    pub fn names(&self) -> &HashSet<String> {
        &self.names
    }

    /// Each hinted layer's error in dB, `10 log10(||S - T[kept]||² / ||T[kept]||²)` (a
    /// scalar with gradients to the student), in graph order, for the student's
    /// activations `student` (by value name) on input `x` `[1, 1, T]`; the teacher runs on
    /// `x` without gradients. Layers whose value a fused kernel hides in either model are
    /// left out.
    ///
    /// Errors: the teacher's forward pass.
    pub fn errors(
        &self,
        x: &CTensor,
        student: &HashMap<String, CTensor>,
    ) -> Result<Vec<(String, CTensor)>> {
        let (_, teacher) = self
            .teacher
            .forward_keeping(x, &HashMap::new(), &self.names)?;
        let mut out = vec![];
        for h in &self.layers {
            let (Some(s), Some(t)) = (student.get(&h.value), teacher.get(&h.value)) else {
                continue;
            };
            let t = match &h.keep {
                Some(k) => t.index_select(k, h.axis).map_err(ce)?,
                None => t.clone(),
            }
            .detach();
            let err = (s - &t).and_then(|d| d.sqr()).and_then(|d| d.sum_all());
            let den = t.sqr().and_then(|t| t.sum_all());
            let db = err
                .and_then(|e| e + 1e-12)
                .and_then(|e| e.log())
                .and_then(|e| e - (den? + 1e-12)?.log()?)
                .and_then(|r| r * (10.0 / std::f64::consts::LN_10))
                .map_err(ce)?;
            out.push((h.value.clone(), db));
        }
        Ok(out)
    }

    /// The hint loss: the mean of [`Hints::errors`] (a scalar in dB, lower is better).
    ///
    /// Errors: the teacher's forward pass; no hinted value computed.
    pub fn loss(&self, x: &CTensor, student: &HashMap<String, CTensor>) -> Result<CTensor> {
        let terms: Vec<CTensor> = self
            .errors(x, student)?
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        if terms.is_empty() {
            return Err(Error::Graph(
                "hints: no hinted activation was computed".into(),
            ));
        }
        let n = terms.len() as f64;
        CTensor::stack(&terms, 0)
            .and_then(|t| t.sum_all())
            .and_then(|t| t / n)
            .map_err(ce)
    }
}
