//! Label-free, task-agnostic distillation from the original model (DPHuBERT, Peng et al.
//! 2023, section 2.2; DistilHuBERT's layer loss, Chang et al. 2022, eq. 1).
//!
//! The teacher is the gate graph with every gate at 1, which computes the original model's
//! function; the student is the same graph under the learned gates. Targets are the
//! teacher's hidden states at each layer boundary, found from the graph: the outputs of the
//! merging `Add`s of its residual blocks ([`crate::analysis::find_blocks`], the residual
//! stream between blocks), or in a model without residual blocks (a plain stack of LSTM or
//! conv layers) the output of each layer whose channels form a prunable group; and its
//! first output. Where a layer's feature axis is a prunable group, the student's state is
//! taken times that group's gate: a removed channel carries nothing downstream, so it
//! counts as zero against the teacher. Per layer, with teacher `t` and student
//! `s` of the same shape `[..., D, ...]` (D the feature axis: the axis carrying a channel
//! group, else the last one):
//!
//! ```text
//! loss_l = mean|s - t| / mean|t|  +  (1 - mean cos(s, t))     (cos along D, per frame)
//! ```
//!
//! summed over layers. The L1 term is divided by the teacher's mean magnitude so that every
//! layer weighs the same whatever its scale (DistilHuBERT uses the raw L1 and
//! `-log sigmoid(cos)`; DPHuBERT's summary says "L1 + cosine": this is our reading).
//! Student and teacher have the same width (the gate graph zeroes removed channels rather
//! than dropping them), so no projection head is needed.
use super::graph::CandleGraph;
use crate::analysis::{find_blocks, Groups};
use crate::error::{Error, Result};
use crate::ir::Ir;
use candle_core::Tensor as CTensor;
use std::collections::{HashMap, HashSet};

/// The layer boundaries of a model and the teacher's states there.
pub struct Distiller {
    /// Hidden-state values, in graph order (the graph output last, under its own name).
    pub layers: Vec<String>,
    /// Feature axis of each layer.
    axes: Vec<usize>,
    /// The gate of each layer's feature axis, when it is a prunable group's: the student's
    /// state counts as gated there (a removed channel carries nothing downstream).
    gates: Vec<Option<String>>,
    /// Teacher states per item key (computed once per item).
    cache: HashMap<usize, Vec<CTensor>>,
}

const EPS: f64 = 1e-8;

impl Distiller {
    /// Layers of `ir` (the model the gate graph was made from, and its `groups`) whose
    /// values the lowered `graph` computes (a value inside a fused chain is never
    /// computed, so it is left out).
    pub fn new(ir: &Ir, groups: &Groups, graph: &CandleGraph) -> Distiller {
        let computed: HashSet<&str> = graph
            .ir()
            .nodes()
            .iter()
            .flat_map(|n| n.output.iter().map(String::as_str))
            .collect();
        let mut layers: Vec<String> = find_blocks(ir)
            .iter()
            .flat_map(|b| {
                b.merges
                    .iter()
                    .map(|&(ni, _)| ir.nodes()[ni].output[0].clone())
            })
            .collect();
        if layers.is_empty() {
            // a plain stack: each prunable group's layer output, the first output of the
            // last node with parameters that writes the group's channels
            let params = crate::analysis::cost::node_params(ir);
            for g in groups.prunable() {
                let last = g
                    .members
                    .iter()
                    .filter_map(|(v, _)| ir.producer.get(v).map(|&p| (p, v)))
                    .filter(|&(p, v)| params[p] > 0 && ir.nodes()[p].output[0] == *v)
                    .max_by_key(|&(p, _)| p);
                if let Some((_, v)) = last {
                    layers.push(v.clone());
                }
            }
        }
        layers.retain(|v| computed.contains(v.as_str()));
        layers.sort_by_key(|v| ir.producer.get(v).copied().unwrap_or(usize::MAX));
        layers.dedup();
        let out = graph.ir().graph_outputs().into_iter().next();
        if let Some(o) = out {
            layers.retain(|v| *v != o);
            layers.push(o);
        }
        let (axes, gates) = layers
            .iter()
            .map(|v| {
                let rank = graph.ir().fact(v).map_or(1, |f| f.shape.len());
                let axis = (0..rank)
                    .find(|&a| groups.of(v, a).is_some() || groups.concatenated_of(v, a).is_some())
                    .unwrap_or(rank.saturating_sub(1));
                let gate = groups
                    .of(v, axis)
                    .filter(|g| g.frozen.is_none())
                    .map(|g| crate::gates::gate_name(g.id));
                (axis, gate)
            })
            .unzip();
        Distiller {
            layers,
            axes,
            gates,
            cache: HashMap::new(),
        }
    }

    /// The student's states at every layer under `gates` (the graph output last).
    ///
    /// Errors: the forward pass; a layer the graph did not compute.
    pub fn states(
        &self,
        graph: &CandleGraph,
        x: &CTensor,
        gates: &HashMap<String, CTensor>,
    ) -> Result<Vec<CTensor>> {
        let keep: HashSet<String> = self.layers.iter().cloned().collect();
        let (y, mut kept) = graph.forward_keeping(x, gates, &keep)?;
        let last = self.layers.len().saturating_sub(1);
        let e = Error::candle("distillation states");
        self.layers
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let s = match i == last {
                    true => y.clone(),
                    false => kept.remove(v).ok_or_else(|| {
                        Error::Graph(format!("layer value '{v}' was not computed"))
                    })?,
                };
                match self.gates[i].as_ref().and_then(|g| gates.get(g)) {
                    Some(g) => {
                        let mut shape = vec![1; s.rank()];
                        shape[self.axes[i]] = g.elem_count();
                        s.broadcast_mul(&g.reshape(shape).map_err(e)?).map_err(e)
                    }
                    None => Ok(s),
                }
            })
            .collect()
    }

    /// The teacher's states on item `key` with input `x` (all gates at 1), computed once.
    ///
    /// Errors: as [`Distiller::states`].
    pub fn teacher(
        &mut self,
        graph: &CandleGraph,
        key: usize,
        x: &CTensor,
    ) -> Result<Vec<CTensor>> {
        if let Some(t) = self.cache.get(&key) {
            return Ok(t.clone());
        }
        let t: Vec<CTensor> = self
            .states(graph, x, &HashMap::new())?
            .into_iter()
            .map(|t| t.detach())
            .collect();
        self.cache.insert(key, t.clone());
        Ok(t)
    }

    /// The summed layer loss (module docs) of `student` against `teacher` states, and the
    /// mean cosine similarity of each layer.
    ///
    /// Errors: states of different shapes.
    pub fn loss(&self, student: &[CTensor], teacher: &[CTensor]) -> Result<(CTensor, Vec<f64>)> {
        let e = Error::candle("distillation loss");
        let mut total: Option<CTensor> = None;
        let mut cos = vec![];
        for ((s, t), &axis) in student.iter().zip(teacher).zip(&self.axes) {
            let (l, c) = layer_loss(s, t, axis).map_err(e)?;
            cos.push(super::loss::scalar(&c)?);
            total = Some(match total {
                None => l,
                Some(acc) => (acc + l).map_err(e)?,
            });
        }
        let total = total.ok_or_else(|| Error::Graph("no layer to distil".into()))?;
        Ok((total, cos))
    }
}

impl Distiller {
    /// Per layer, the mean over `crops` (flat model inputs) of the cosine similarity of the
    /// gate graph under `overrides` (binary gates of the masks, [`CandleGraph::mask_gates`],
    /// and trained weights, by name) to the teacher. Teacher states are cached under
    /// `key_base + i` for crop i.
    ///
    /// Errors: the forward pass.
    pub fn similarity(
        &mut self,
        graph: &CandleGraph,
        crops: &[Vec<f32>],
        overrides: &HashMap<String, CTensor>,
        key_base: usize,
    ) -> Result<Vec<(String, f64)>> {
        let mut sum = vec![0f64; self.layers.len()];
        for (i, x) in crops.iter().enumerate() {
            let x = graph.input(x)?;
            let t = self.teacher(graph, key_base + i, &x)?;
            let (_, cos) = self.loss(&self.states(graph, &x, overrides)?, &t)?;
            for (s, c) in sum.iter_mut().zip(cos) {
                *s += c;
            }
        }
        let n = crops.len().max(1) as f64;
        Ok(self
            .layers
            .iter()
            .cloned()
            .zip(sum.into_iter().map(|s| s / n))
            .collect())
    }
}

/// `(mean|s - t| / mean|t| + 1 - cos, cos)` of one layer, cos the mean cosine similarity
/// along `axis`.
pub fn layer_loss(
    s: &CTensor,
    t: &CTensor,
    axis: usize,
) -> candle_core::Result<(CTensor, CTensor)> {
    let l1 = ((s - t)?.abs()?.mean_all()? / (t.abs()?.mean_all()?.to_scalar_f64()? + EPS))?;
    let dot = (s * t)?.sum_keepdim(axis)?;
    let ns = s.sqr()?.sum_keepdim(axis)?.sqrt()?;
    let nt = t.sqr()?.sum_keepdim(axis)?.sqrt()?;
    let cos = (dot / ((ns * nt)? + EPS)?)?.mean_all()?;
    let loss = ((l1 - &cos)? + 1.0)?;
    Ok((loss, cos))
}

trait ToF64 {
    fn to_scalar_f64(&self) -> candle_core::Result<f64>;
}

impl ToF64 for CTensor {
    fn to_scalar_f64(&self) -> candle_core::Result<f64> {
        self.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()
    }
}
