//! Softmax and LogSoftmax. Opset 13 normalises along one axis; earlier opsets flatten the
//! axes from `axis` on. The normalised axes are frozen (removing an entry changes every
//! other one); the others pass through.
use super::{ce, cin, need, norm_axis, Links, OpRule};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr_i, NodeProto};
use candle_core::Tensor as CTensor;

pub struct Softmax;

/// The axes normalised together, from the opset (13 changed the semantics).
fn axes(node: &NodeProto, ir: &Ir, rank: usize) -> Result<Vec<usize>> {
    let opset = ir.opset();
    let default = if opset >= 13 { -1 } else { 1 };
    let a = norm_axis(node, attr_i(node, "axis").unwrap_or(default), rank)?;
    Ok(if opset >= 13 {
        vec![a]
    } else {
        (a..rank).collect()
    })
}

impl OpRule for Softmax {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        Ok(vec![Fact::shape(need(node, inputs, 0)?.shape.clone())])
    }
    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let Some(x) = ir.fact(&node.input[0]) else {
            return;
        };
        let Ok(ax) = axes(node, ir, x.rank()) else {
            return links.freeze_node(node, ir, "bad axis");
        };
        for a in 0..x.rank() {
            let pass = !ax.contains(&a);
            links.pass_or_freeze(node, a, pass, "softmax normalises across this axis");
        }
    }
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let t = cin(node, x, 0)?;
        let ax = axes(node, ir, t.rank())?;
        if ax.len() != 1 {
            return Err(Error::node(
                node,
                "softmax over several axes has no Candle lowering",
            ));
        }
        let y = match node.op_type() {
            "LogSoftmax" => candle_nn::ops::log_softmax(t, ax[0]),
            _ => candle_nn::ops::softmax(t, ax[0]),
        };
        Ok(vec![y.map_err(e)?])
    }
}
