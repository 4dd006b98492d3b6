//! Normalisations: BatchNormalization (inference form, running statistics),
//! InstanceNormalization (statistics per sample and channel over the spatial axes),
//! LayerNormalization and GroupNormalization.
//!
//! BatchNorm and InstanceNorm are per-channel on axis 1: output channel `c` depends on
//! input channel `c` only, so axis 1 couples the input, the output and every `[C]`
//! parameter vector (scale, bias, mean, var). LayerNormalization takes its statistics
//! across its trailing axes and GroupNormalization across groups of channels; both are
//! rewritten by [`crate::ir::canon`] where the pattern allows (LayerNorm and one group: a
//! ReduceMean form; G groups: torch's Reshape/InstanceNormalization form, pruned in whole
//! norm groups), and a node left over freezes the axes it normalises.
use super::{ce, cin, in_shape, need, norm_axis, Links, OpRule, Ptflops, ShapeOf};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr_f, attr_i, NodeProto};
use candle_core::{Tensor as CTensor, D};

pub struct BatchNorm;
pub struct InstanceNorm;
pub struct LayerNorm;
pub struct GroupNorm;

/// Couples axis 1 of input 0 and output 0 with axis 0 of the `[C]` inputs `params`; the
/// other axes pass through.
fn per_channel(node: &NodeProto, ir: &Ir, links: &mut Links, params: &[usize]) {
    let (x, y) = (node.input[0].as_str(), node.output[0].as_str());
    let Some(xf) = ir.fact(x) else { return };
    for a in 0..xf.rank() {
        links.link((x, a), (y, a));
    }
    if xf.rank() < 2 {
        return;
    }
    for &i in params {
        if let Some(p) = node.input.get(i).filter(|p| !p.is_empty()) {
            links.link((x, 1), (p, 0));
        }
    }
}

/// `[C]` -> `[1, C, 1, ...]` for broadcasting against a rank-`rank` input.
fn chan(node: &NodeProto, t: &CTensor, rank: usize) -> Result<CTensor> {
    let mut dims = vec![1usize; rank];
    dims[1] = t.elem_count();
    t.reshape(dims).map_err(ce(node))
}

/// One MAC per element, two with an affine transform (ptflops `bn_flops_counter_hook`,
/// also used for InstanceNorm, GroupNorm and LayerNorm).
fn norm_macs(node: &NodeProto, shape: ShapeOf, affine: bool) -> u64 {
    let n = shape(&node.input[0]).iter().product::<usize>() as u64;
    if affine {
        2 * n
    } else {
        n
    }
}

fn same_shape(node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
    let x = need(node, inputs, 0)?;
    Ok(vec![Fact::shape(x.shape.clone())])
}

impl OpRule for BatchNorm {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        if attr_i(node, "training_mode").unwrap_or(0) != 0 || node.output.len() > 1 {
            return Err(Error::node(
                node,
                "BatchNormalization in training mode is not supported",
            ));
        }
        same_shape(node, inputs)
    }
    fn macs(&self, node: &NodeProto, shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        norm_macs(node, shape, true)
    }
    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        per_channel(node, ir, links, &[1, 2, 3, 4]);
    }
    fn params(&self, _node: &NodeProto, _ir: &Ir) -> Vec<usize> {
        vec![1, 2]
    }
    /// `y = (x - mean) / sqrt(var + eps) * scale + bias`, statistics per channel.
    fn lower(&self, node: &NodeProto, _ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let t = cin(node, x, 0)?;
        let r = t.rank();
        let eps = attr_f(node, "epsilon").unwrap_or(1e-5) as f64;
        let [s, b, m, v] = [1, 2, 3, 4].map(|i| cin(node, x, i).and_then(|c| chan(node, c, r)));
        let std = (v? + eps).and_then(|v| v.sqrt()).map_err(&e)?;
        let y = t
            .broadcast_sub(&m?)
            .and_then(|y| y.broadcast_div(&std))
            .map_err(&e)?;
        let y = y
            .broadcast_mul(&s?)
            .map_err(&e)?
            .broadcast_add(&b?)
            .map_err(&e)?;
        Ok(vec![y])
    }
}

impl OpRule for InstanceNorm {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        same_shape(node, inputs)
    }
    fn macs(&self, node: &NodeProto, shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        norm_macs(node, shape, true)
    }
    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        per_channel(node, ir, links, &[1, 2]);
    }
    /// Scale and bias, except in GroupNorm as the exporters write it (`Reshape` to
    /// `[N, G, -1]`, this op with their fixed unit scale and zero bias per group, `Reshape`
    /// back, then `Mul`/`Add` with GroupNorm's own parameters): there they are constants.
    fn params(&self, node: &NodeProto, ir: &Ir) -> Vec<usize> {
        let grouped = node
            .input
            .first()
            .and_then(|x| ir.producer.get(x))
            .is_some_and(|&p| ir.nodes()[p].op_type() == "Reshape");
        match grouped {
            true => vec![],
            false => vec![1, 2],
        }
    }
    /// `y = (x - mean) / sqrt(var + eps) * scale + bias`, statistics per sample and channel
    /// over the spatial axes (population variance).
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let t = cin(node, x, 0)?;
        let shape = in_shape(node, ir, 0)?;
        let r = shape.len();
        let eps = attr_f(node, "epsilon").unwrap_or(1e-5) as f64;
        let flat = t.reshape((shape[0], shape[1], ())).map_err(&e)?; // [N, C, L]
        let mean = flat.mean_keepdim(D::Minus1).map_err(&e)?;
        let d = flat.broadcast_sub(&mean).map_err(&e)?;
        let var = d
            .sqr()
            .and_then(|v| v.mean_keepdim(D::Minus1))
            .map_err(&e)?;
        let y = d
            .broadcast_div(&(var + eps).and_then(|v| v.sqrt()).map_err(&e)?)
            .and_then(|y| y.reshape(shape.clone()))
            .map_err(&e)?;
        let s = chan(node, cin(node, x, 1)?, r)?;
        let b = chan(node, cin(node, x, 2)?, r)?;
        Ok(vec![y
            .broadcast_mul(&s)
            .and_then(|y| y.broadcast_add(&b))
            .map_err(&e)?])
    }
}

impl OpRule for LayerNorm {
    /// Output 0 has the input's shape; the optional Mean and InvStdDev outputs have the
    /// normalised axes reduced to 1.
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        let axis = norm_axis(node, attr_i(node, "axis").unwrap_or(-1), x.rank())?;
        let stat: Vec<usize> = (0..x.rank())
            .map(|a| if a < axis { x.shape[a] } else { 1 })
            .collect();
        let mut out = vec![Fact::shape(x.shape.clone())];
        for _ in 1..node.output.len() {
            out.push(Fact::shape(stat.clone()));
        }
        Ok(out)
    }
    fn macs(&self, node: &NodeProto, shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        norm_macs(node, shape, node.input.len() > 1)
    }
    /// Leading axes pass through; the normalised axes are frozen (statistics across them).
    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let Some(xf) = ir.fact(&node.input[0]) else {
            return;
        };
        let Ok(axis) = norm_axis(node, attr_i(node, "axis").unwrap_or(-1), xf.rank()) else {
            return links.freeze_node(node, ir, "bad axis");
        };
        let why = "LayerNormalization statistics across this axis (pattern not rewritten)";
        for a in 0..xf.rank() {
            if a < axis {
                links.link((&node.input[0], a), (&node.output[0], a));
            } else {
                links.freeze((&node.input[0], a), why);
                links.freeze((&node.output[0], a), why);
            }
        }
        for p in node.input.iter().skip(1).filter(|p| !p.is_empty()) {
            let rank = ir.fact(p).map(|f| f.rank()).unwrap_or(0);
            for a in 0..rank {
                links.freeze((p, a), why);
            }
        }
    }
    fn params(&self, _node: &NodeProto, _ir: &Ir) -> Vec<usize> {
        vec![1, 2]
    }
    /// Scale and bias; none where they are the identity an exporter writes for a LayerNorm
    /// without an affine map (PyTorch's `elementwise_affine=False`: the op needs a scale,
    /// so a constant of ones goes in, with no bias or zeros).
    fn counted_params(&self, node: &NodeProto, ir: &Ir) -> Vec<usize> {
        let all = |i: usize, v: f32| -> Option<bool> {
            let name = node.input.get(i).filter(|n| !n.is_empty())?;
            Some(super::filled_with(ir, name, v))
        };
        match (all(1, 1.0), all(2, 0.0)) {
            (Some(true), None | Some(true)) => vec![],
            _ => vec![1, 2],
        }
    }
}

impl OpRule for GroupNorm {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        same_shape(node, inputs)
    }
    fn macs(&self, node: &NodeProto, shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        norm_macs(node, shape, true)
    }
    fn params(&self, _node: &NodeProto, _ir: &Ir) -> Vec<usize> {
        vec![1, 2]
    }
}
