//! Reductions (ReduceMean, ReduceSum, ReduceMax, ...). Axes come from the `axes` attribute
//! (older opsets) or the second input (ReduceSum >= 13, all reductions >= 18).
//!
//! Kept axes pass channels through. A mean across a channel axis (the decomposed gLN/cLN of
//! Conv-TasNet: `ReduceMean(axes=[1,2])`) is a statistic over channels: the gate graph
//! takes it over kept channels only ([`Read::Mean`]). Max/Min/Prod across a channel axis
//! cannot be gated exactly and freeze it.
use super::{ce, cin, need, norm_axis, out_shape, Links, OpRule, Read};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr_i, attr_ints, NodeProto};
use candle_core::Tensor as CTensor;

pub struct Reduce;

/// Reduced axes (sorted, normalised) and keepdims.
fn axes_of(node: &NodeProto, x: &Fact, axes_input: Option<&Fact>) -> Result<(Vec<usize>, bool)> {
    let keep = attr_i(node, "keepdims").unwrap_or(1) != 0;
    let raw: Option<Vec<i64>> = match attr_ints(node, "axes").filter(|a| !a.is_empty()) {
        Some(a) => Some(a),
        None => match axes_input {
            Some(f) => Some(
                f.value
                    .as_ref()
                    .ok_or_else(|| Error::not_constant(node, "reduction axes must be constant"))?
                    .to_i64_vec(),
            ),
            None => None,
        },
    };
    let mut axes = match raw {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|&a| norm_axis(node, a, x.rank()))
            .collect::<Result<Vec<_>>>()?,
        _ if attr_i(node, "noop_with_empty_axes").unwrap_or(0) != 0 => vec![],
        _ => (0..x.rank()).collect(),
    };
    axes.sort_unstable();
    axes.dedup();
    Ok((axes, keep))
}

/// Reduced axes (sorted, normalised) and keepdims of a reduction node in `ir`.
pub(crate) fn axes_in_ir(node: &NodeProto, ir: &Ir) -> Option<(Vec<usize>, bool)> {
    let x = ir.fact(&node.input[0])?;
    let a = node
        .input
        .get(1)
        .filter(|s| !s.is_empty())
        .and_then(|n| ir.fact(n));
    axes_of(node, x, a).ok()
}

impl OpRule for Reduce {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        let (axes, keep) = axes_of(node, x, inputs.get(1).copied().flatten())?;
        let shape = x
            .shape
            .iter()
            .enumerate()
            .filter_map(|(i, &d)| {
                if axes.contains(&i) {
                    keep.then_some(1)
                } else {
                    Some(d)
                }
            })
            .collect();
        Ok(vec![Fact::shape(shape)])
    }

    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let Some((axes, keep)) = axes_in_ir(node, ir) else {
            return links.freeze_node(node, ir, "unreadable reduction axes");
        };
        let (x, y) = (node.input[0].as_str(), node.output[0].as_str());
        let rank = ir.fact(x).map(|f| f.rank()).unwrap_or(0);
        let mut out_axis = 0;
        for a in 0..rank {
            if axes.contains(&a) {
                if matches!(node.op_type(), "ReduceMax" | "ReduceMin" | "ReduceProd") {
                    links.freeze(
                        (x, a),
                        format!("{} across the axis cannot be gated", node.op_type()),
                    );
                }
                if keep {
                    out_axis += 1;
                }
            } else {
                links.link((x, a), (y, out_axis));
                out_axis += 1;
            }
        }
    }

    fn read(&self, node: &NodeProto, ir: &Ir, input: usize, axis: usize) -> Read {
        match axes_in_ir(node, ir) {
            Some((axes, _)) if input == 0 && axes.contains(&axis) => {
                if node.op_type() == "ReduceMean" {
                    Read::Mean
                } else {
                    Read::Mix
                }
            }
            _ => Read::Pointwise,
        }
    }

    /// ReduceMean, ReduceSum, ReduceSumSquare, ReduceL2, ReduceMax/Min (one axis at a time).
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let t = cin(node, x, 0)?;
        let (axes, _) =
            axes_in_ir(node, ir).ok_or_else(|| Error::node(node, "unreadable reduction axes"))?;
        let count: usize = axes.iter().map(|&a| t.dims()[a]).product();
        // one axis at a time on a contiguous copy (candle 0.11 mis-reduces several axes of
        // a permuted view)
        let sum = |v: &CTensor| -> candle_core::Result<CTensor> {
            let mut v = v.contiguous()?;
            for &a in axes.iter().rev() {
                v = v.sum_keepdim(a)?;
            }
            Ok(v)
        };
        let y = match node.op_type() {
            "ReduceSum" => sum(t),
            "ReduceMean" => sum(t).and_then(|s| s / count as f64),
            "ReduceSumSquare" => t.sqr().and_then(|v| sum(&v)),
            "ReduceL2" => t.sqr().and_then(|v| sum(&v)).and_then(|v| v.sqrt()),
            "ReduceMax" | "ReduceMin" => {
                let mut v = t.clone();
                for &a in &axes {
                    v = if node.op_type() == "ReduceMax" {
                        v.max_keepdim(a)
                    } else {
                        v.min_keepdim(a)
                    }
                    .map_err(&e)?;
                }
                Ok(v)
            }
            op => return Err(Error::node(node, format!("op {op} has no Candle lowering"))),
        }
        .map_err(&e)?;
        Ok(vec![y.reshape(out_shape(node, ir, 0)?).map_err(e)?])
    }
}
