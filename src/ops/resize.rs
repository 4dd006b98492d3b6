//! Resize (opsets 10 to 19) and the older Upsample: interpolation along some axes. Axes that
//! keep their size (batch, channels) pass channels through; only `nearest` mode has a
//! Candle lowering (the upsampling of U-Net separators: SuDoRM-RF, TDANet, A-FRCNN).
use super::{ce, cin, has_input, need_const, ConstEdit, Links, OpRule, Ptflops, ShapeOf, Sliced};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr_s, NodeProto, Tensor};
use candle_core::Tensor as CTensor;

pub struct Resize;

/// Input positions of `scales` and `sizes` (`sizes` absent before opset 11).
fn slots(node: &NodeProto) -> (usize, Option<usize>) {
    if node.op_type() == "Upsample" || node.input.len() == 2 {
        (1, None)
    } else {
        (2, Some(3))
    }
}

/// Output shape and the per-axis scale (output / input).
fn geometry(
    node: &NodeProto,
    inputs: &[Option<&Fact>],
    x: &[usize],
) -> Result<(Vec<usize>, Vec<f64>)> {
    let (si, zi) = slots(node);
    if let Some(zi) = zi.filter(|&z| has_input(node, z)) {
        let sizes = need_const(node, inputs, zi)?.to_i64_vec();
        if sizes.len() != x.len() {
            return Err(Error::node(
                node,
                "Resize with `axes` or sizes of another rank is not supported",
            ));
        }
        let y: Vec<usize> = sizes.iter().map(|&s| s.max(0) as usize).collect();
        let scale = y
            .iter()
            .zip(x)
            .map(|(&o, &i)| o as f64 / i.max(1) as f64)
            .collect();
        return Ok((y, scale));
    }
    let scales: Vec<f64> = match need_const(node, inputs, si)? {
        Tensor::F32(a) => a.iter().map(|&s| s as f64).collect(),
        t => t.to_i64_vec().iter().map(|&s| s as f64).collect(),
    };
    if scales.len() != x.len() {
        return Err(Error::node(node, "scales do not match the input rank"));
    }
    let y = x
        .iter()
        .zip(&scales)
        .map(|(&d, &s)| (d as f64 * s).floor() as usize)
        .collect();
    Ok((y, scales))
}

/// The input index read by output index `o` of an axis of length `n_in`, nearest mode.
fn nearest_index(
    node: &NodeProto,
    o: usize,
    scale: f64,
    n_in: usize,
    n_out: usize,
) -> Result<usize> {
    let ctm = attr_s(node, "coordinate_transformation_mode").unwrap_or_else(|| "half_pixel".into());
    let x = match ctm.as_str() {
        "asymmetric" => o as f64 / scale,
        "half_pixel" => (o as f64 + 0.5) / scale - 0.5,
        "pytorch_half_pixel" if n_out > 1 => (o as f64 + 0.5) / scale - 0.5,
        "pytorch_half_pixel" => 0.0,
        "align_corners" if n_out > 1 => o as f64 * (n_in as f64 - 1.0) / (n_out as f64 - 1.0),
        "align_corners" => 0.0,
        m => {
            return Err(Error::node(
                node,
                format!("coordinate_transformation_mode {m} has no Candle lowering"),
            ))
        }
    };
    let mode = attr_s(node, "nearest_mode").unwrap_or_else(|| "round_prefer_floor".into());
    let i = match mode.as_str() {
        "floor" => x.floor(),
        "ceil" => x.ceil(),
        "round_prefer_ceil" => (x + 0.5).floor(),
        _ => (x - 0.5).ceil(), // round_prefer_floor
    };
    Ok(i.clamp(0.0, n_in as f64 - 1.0) as usize)
}

impl OpRule for Resize {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = super::need(node, inputs, 0)?;
        Ok(vec![Fact::shape(geometry(node, inputs, &x.shape)?.0)])
    }
    /// ptflops `upsample_flops_counter_hook`: one per output element.
    fn macs(&self, node: &NodeProto, shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        shape(&node.output[0]).iter().product::<usize>() as u64
    }
    /// Axes of equal size pass channels through.
    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let (Some(x), Some(y)) = (ir.fact(&node.input[0]), ir.fact(&node.output[0])) else {
            return;
        };
        for (a, (&i, &o)) in x.shape.iter().zip(&y.shape).enumerate() {
            if i == o {
                links.link((&node.input[0], a), (&node.output[0], a));
            }
        }
    }
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        if attr_s(node, "mode").as_deref().unwrap_or("nearest") != "nearest" {
            return Err(Error::node(
                node,
                "only nearest Resize has a Candle lowering",
            ));
        }
        let e = ce(node);
        let mut t = cin(node, x, 0)?.clone();
        let ins: Vec<Option<&Fact>> = node.input.iter().map(|n| ir.fact(n)).collect();
        let (y, scale) = geometry(node, &ins, t.dims())?;
        for a in 0..y.len() {
            let n_in = t.dims()[a];
            if y[a] == n_in {
                continue;
            }
            let idx = (0..y[a])
                .map(|o| nearest_index(node, o, scale[a], n_in, y[a]).map(|i| i as u32))
                .collect::<Result<Vec<u32>>>()?;
            let idx = CTensor::new(idx, t.device()).map_err(&e)?;
            t = t.index_select(&idx, a).map_err(&e)?;
        }
        Ok(vec![t])
    }
    /// `sizes` that spell out a pruned dim get the new dim (the dynamo exporter writes
    /// `Concat([1, C], Shape(x)[2:])`).
    fn patch(&self, node: &mut NodeProto, ir: &Ir, new: &Sliced) -> Result<Vec<ConstEdit>> {
        let Some(zi) = slots(node).1.filter(|&z| has_input(node, z)) else {
            return Ok(vec![]);
        };
        super::shape_vector_edits(node, ir, zi, &new.of(&node.output[0]), new, |_, _| true)
    }
}
