//! Pooling: AveragePool, MaxPool (kernel, strides, pads, dilations, ceil_mode, auto_pad) and
//! GlobalAveragePool / GlobalMaxPool. Pools act on each channel alone: the batch and
//! channel axes (0 and 1) pass through, the spatial axes change size.
use super::conv::{geometry, Geometry};
use super::{ce, cin, need, Links, OpRule, Ptflops, ShapeOf};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr_i, attr_ints, NodeProto};
use candle_core::Tensor as CTensor;

pub struct Pool;
pub struct GlobalPool;

struct Window {
    kernel: Vec<usize>,
    g: Geometry,
    ceil: bool,
}

/// The pool's kernel and the Conv window geometry ([`geometry`]) for input `x`.
fn window(node: &NodeProto, x: &[usize]) -> Result<Window> {
    let kernel: Vec<usize> = attr_ints(node, "kernel_shape")
        .ok_or_else(|| Error::node(node, "pool without kernel_shape"))?
        .iter()
        .map(|&k| k as usize)
        .collect();
    if x.len() != kernel.len() + 2 {
        return Err(Error::node(
            node,
            format!("kernel rank {} does not match input {x:?}", kernel.len()),
        ));
    }
    let g = geometry(node, x, &kernel, false)?;
    Ok(Window {
        kernel,
        g,
        ceil: attr_i(node, "ceil_mode").unwrap_or(0) != 0,
    })
}

impl OpRule for Pool {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        let w = window(node, &x.shape)?;
        let mut y = x.shape[..2].to_vec();
        for i in 0..w.kernel.len() {
            let span = x.shape[2 + i] + w.g.pads[i] + w.g.pads[w.kernel.len() + i];
            let eff = (w.kernel[i] - 1) * w.g.dilations[i] + 1;
            if span < eff {
                return Err(Error::node(
                    node,
                    format!("input {:?} shorter than the window", x.shape),
                ));
            }
            let steps = span - eff;
            let n = if w.ceil {
                steps.div_ceil(w.g.strides[i])
            } else {
                steps / w.g.strides[i]
            };
            y.push(n + 1);
        }
        Ok(node.output.iter().map(|_| Fact::shape(y.clone())).collect())
    }
    /// ptflops `pool_flops_counter_hook`: one per input element.
    fn macs(&self, node: &NodeProto, shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        shape(&node.input[0]).iter().product::<usize>() as u64
    }
    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            if ir.fact(o).is_some_and(|f| f.rank() >= 2) {
                links.link((&node.input[0], 0), (o, 0));
                links.link((&node.input[0], 1), (o, 1));
            }
        }
    }
    /// 1-D and 2-D pools without padding or dilation, through Candle's 2-D pools
    /// (1-D as height 1).
    fn lower(&self, node: &NodeProto, _ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let t = cin(node, x, 0)?;
        let w = window(node, t.dims())?;
        if w.g.pads.iter().any(|&p| p != 0)
            || w.g.dilations.iter().any(|&d| d != 1)
            || w.ceil
            || node.output.len() > 1
        {
            return Err(Error::node(
                node,
                "pool with pads, dilations, ceil_mode or indices has no Candle lowering",
            ));
        }
        let (t4, k, s) = match w.kernel.len() {
            1 => (
                t.unsqueeze(2).map_err(&e)?,
                (1, w.kernel[0]),
                (1, w.g.strides[0]),
            ),
            2 => (
                t.clone(),
                (w.kernel[0], w.kernel[1]),
                (w.g.strides[0], w.g.strides[1]),
            ),
            _ => return Err(Error::node(node, "pool rank > 2 has no Candle lowering")),
        };
        let y = match node.op_type() {
            "AveragePool" => t4.avg_pool2d_with_stride(k, s),
            "MaxPool" => t4.max_pool2d_with_stride(k, s),
            op => return Err(Error::node(node, format!("op {op} has no Candle lowering"))),
        }
        .map_err(&e)?;
        let y = if w.kernel.len() == 1 {
            y.squeeze(2).map_err(&e)?
        } else {
            y
        };
        Ok(vec![y])
    }
}

impl OpRule for GlobalPool {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        if x.rank() < 2 {
            return Err(Error::node(node, "global pool needs [N, C, ...]"));
        }
        let mut y = x.shape.clone();
        y[2..].iter_mut().for_each(|d| *d = 1);
        Ok(vec![Fact::shape(y)])
    }
    fn macs(&self, node: &NodeProto, shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        shape(&node.input[0]).iter().product::<usize>() as u64
    }
    fn couple(&self, node: &NodeProto, _ir: &Ir, links: &mut Links) {
        links.link((&node.input[0], 0), (&node.output[0], 0));
        links.link((&node.input[0], 1), (&node.output[0], 1));
    }
    fn lower(&self, node: &NodeProto, _ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let t = cin(node, x, 0)?;
        let mut y = t.clone();
        for a in 2..t.rank() {
            y = match node.op_type() {
                "GlobalAveragePool" => y.mean_keepdim(a),
                _ => y.max_keepdim(a),
            }
            .map_err(&e)?;
        }
        Ok(vec![y])
    }
}
