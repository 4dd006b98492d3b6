//! Split: consecutive pieces of one axis, one per output.
//!
//! Along a channel axis the input is a concatenation of the outputs' channels
//! ([`super::Links::concat`], as Concat's output is of its inputs): a GLU's
//! `a * sigmoid(b)` makes both halves one class, pruned alike in each half; pieces that
//! go their own ways become groups of their own, sliced at their offsets in the layer that
//! produced them. The piece sizes (the `split` input, or the attribute before opset 13) are
//! patched; an equal split (`num_outputs`, or no sizes) that pruning makes unequal gets an
//! explicit `split` input.
use super::{ce, cin, foldable, need, need_const, norm_axis, ConstEdit, Links, OpRule, Sliced};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr_i, attr_ints, ints_attr, NodeProto, Tensor};
use candle_core::Tensor as CTensor;

pub struct Split;

/// The axis and the piece sizes along it, for an input of shape `x`.
///
/// Errors: sizes that do not add up to the axis, or a non-constant `split` input.
fn pieces(node: &NodeProto, inputs: &[Option<&Fact>], x: &[usize]) -> Result<(usize, Vec<usize>)> {
    let axis = norm_axis(node, attr_i(node, "axis").unwrap_or(0), x.len())?;
    let d = x[axis];
    let given = match node.input.get(1).filter(|s| !s.is_empty()) {
        Some(_) => Some(need_const(node, inputs, 1)?.to_i64_vec()),
        None => attr_ints(node, "split").filter(|s| !s.is_empty()),
    };
    let sizes: Vec<usize> = match given {
        Some(s) => s.iter().map(|&v| v.max(0) as usize).collect(),
        None => {
            // equal pieces; with `num_outputs` (opset 18) the last may be smaller
            let n = attr_i(node, "num_outputs")
                .unwrap_or(node.output.len() as i64)
                .max(1) as usize;
            let each = d.div_ceil(n);
            (0..n)
                .map(|i| each.min(d.saturating_sub(i * each)))
                .collect()
        }
    };
    if sizes.iter().sum::<usize>() != d || sizes.len() != node.output.len() {
        return Err(Error::node(
            node,
            format!(
                "split sizes {sizes:?} do not cover axis {axis} ({d}) in {} outputs",
                node.output.len()
            ),
        ));
    }
    Ok((axis, sizes))
}

impl OpRule for Split {
    /// The data when it is an initializer: parameters an exporter concatenated and the
    /// graph splits apart (dynamo's folded `cat(q_bias, k_bias, v_bias)`).
    fn params(&self, _node: &NodeProto, _ir: &Ir) -> Vec<usize> {
        vec![0]
    }

    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        let (axis, sizes) = pieces(node, inputs, &x.shape)?;
        let mut start = 0;
        Ok(sizes
            .iter()
            .map(|&n| {
                let mut shape = x.shape.clone();
                shape[axis] = n;
                let idx: Vec<usize> = (start..start + n).collect();
                start += n;
                let value = x
                    .value
                    .as_ref()
                    .filter(|_| foldable(Some(x)))
                    .map(|v| v.select(axis, &idx));
                Fact { shape, value }
            })
            .collect())
    }

    /// Other axes pass to every output; the split axis is the concatenation of the outputs'.
    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let Some(x) = ir.fact(&node.input[0]) else {
            return;
        };
        let Ok(axis) = norm_axis(node, attr_i(node, "axis").unwrap_or(0), x.rank()) else {
            return links.freeze_node(node, ir, "bad axis");
        };
        let outs: Vec<&str> = node
            .output
            .iter()
            .filter(|o| !o.is_empty())
            .map(String::as_str)
            .collect();
        if outs.len() != node.output.len() {
            return links.freeze_node(node, ir, "an output is omitted");
        }
        for o in &outs {
            for a in (0..x.rank()).filter(|&a| a != axis) {
                links.link((&node.input[0], a), (o, a));
            }
        }
        let parts: Vec<(&str, usize)> = outs.iter().map(|&o| (o, axis)).collect();
        links.concat(&parts, (&node.input[0], axis));
    }

    /// The pieces' new sizes, wherever the node spells them.
    fn patch(&self, node: &mut NodeProto, ir: &Ir, new: &Sliced) -> Result<Vec<ConstEdit>> {
        let rank = ir.fact(&node.input[0]).map(|f| f.rank()).unwrap_or(0);
        let axis = norm_axis(node, attr_i(node, "axis").unwrap_or(0), rank)?;
        let sizes: Vec<i64> = node.output.iter().map(|o| new.of(o)[axis] as i64).collect();
        if node.input.get(1).is_some_and(|s| !s.is_empty()) {
            return Ok(vec![ConstEdit {
                input: 1,
                via: None,
                value: Tensor::vec_i64(sizes),
            }]);
        }
        if attr_ints(node, "split").is_some_and(|s| !s.is_empty()) {
            node.attribute.retain(|a| a.name() != "split");
            node.attribute.push(ints_attr("split", &sizes));
            return Ok(vec![]);
        }
        let total: i64 = sizes.iter().sum();
        let n = sizes.len() as i64;
        let each = (total + n - 1) / n.max(1);
        let equal = sizes
            .iter()
            .enumerate()
            .all(|(i, &s)| s == each.min((total - i as i64 * each).max(0)));
        if equal {
            return Ok(vec![]);
        }
        if ir.opset() < 13 {
            node.attribute.push(ints_attr("split", &sizes));
            return Ok(vec![]);
        }
        node.attribute.retain(|a| a.name() != "num_outputs");
        node.input.truncate(1);
        node.input.push(format!("{}.split", node.name()));
        Ok(vec![ConstEdit {
            input: 1,
            via: None,
            value: Tensor::vec_i64(sizes),
        }])
    }

    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let t = cin(node, x, 0)?;
        let ins: Vec<Option<&Fact>> = node
            .input
            .iter()
            .map(|n| if n.is_empty() { None } else { ir.fact(n) })
            .collect();
        let (axis, sizes) = pieces(node, &ins, t.dims())?;
        let mut start = 0;
        sizes
            .iter()
            .map(|&n| {
                let piece = t.narrow(axis, start, n).map_err(ce(node));
                start += n;
                piece
            })
            .collect()
    }
}
