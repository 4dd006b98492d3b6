//! Shape-arithmetic ops: Shape, Constant, ConstantOfShape, Range, Gather. With static
//! input shapes their outputs fold to constants, so shape subgraphs vanish from the later
//! passes; a pruned model recomputes them at run time from the slimmer shapes.
use super::{foldable, need, need_const, norm_axis, ConstEdit, Links, OpRule, Sliced};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr, attr_i, attr_t, tensor_from_proto, NodeProto, Tensor};
use candle_core::{DType, Tensor as CTensor};
use ndarray::{ArrayD, IxDyn};

pub struct ShapeOp;
pub struct Constant;
pub struct ConstantOfShape;
pub struct Range;
pub struct Gather;

impl OpRule for ShapeOp {
    /// X of rank r -> int64 `[r]` (or the `[start, end)` part, opset 15).
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        let r = x.rank() as i64;
        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let start = clamp(attr_i(node, "start").unwrap_or(0));
        let end = clamp(attr_i(node, "end").unwrap_or(r));
        let dims: Vec<i64> = x.shape[start..end.max(start)]
            .iter()
            .map(|&d| d as i64)
            .collect();
        Ok(vec![Fact::konst(Tensor::vec_i64(dims))])
    }
    fn couple(&self, _node: &NodeProto, _ir: &Ir, _links: &mut Links) {}
}

impl OpRule for Constant {
    fn infer(&self, node: &NodeProto, _inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        if let Some(t) = attr_t(node, "value") {
            return Ok(vec![Fact::konst(tensor_from_proto(t)?)]);
        }
        if let Some(a) = attr(node, "value_int").and_then(|a| a.i) {
            return Ok(vec![Fact::konst(Tensor::scalar_i64(a))]);
        }
        if let Some(a) = attr(node, "value_ints") {
            return Ok(vec![Fact::konst(Tensor::vec_i64(a.ints.clone()))]);
        }
        if let Some(f) = attr(node, "value_float").and_then(|a| a.f) {
            return Ok(vec![Fact::konst(Tensor::F32(ArrayD::from_elem(
                IxDyn(&[]),
                f,
            )))]);
        }
        if let Some(a) = attr(node, "value_floats") {
            let v = a.floats.clone();
            return Ok(vec![Fact::konst(Tensor::F32(
                ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-D"),
            ))]);
        }
        Err(Error::node(
            node,
            "Constant without a supported value attribute",
        ))
    }
    fn couple(&self, _node: &NodeProto, _ir: &Ir, _links: &mut Links) {}
}

impl OpRule for ConstantOfShape {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let shape: Vec<usize> = need_const(node, inputs, 0)?
            .to_i64_vec()
            .iter()
            .map(|&d| d.max(0) as usize)
            .collect();
        let fill = match attr_t(node, "value") {
            Some(t) => tensor_from_proto(t)?,
            None => Tensor::F32(ArrayD::from_elem(IxDyn(&[1]), 0.0)),
        };
        let n: usize = shape.iter().product();
        let value = (n <= crate::ir::FOLD_LIMIT).then(|| match &fill {
            Tensor::F32(a) => Tensor::F32(ArrayD::from_elem(
                IxDyn(&shape),
                a.iter().next().copied().unwrap_or(0.0),
            )),
            Tensor::I64(a) => Tensor::I64(ArrayD::from_elem(
                IxDyn(&shape),
                a.iter().next().copied().unwrap_or(0),
            )),
        });
        Ok(vec![Fact { shape, value }])
    }
    /// A constant fill is the same for any channels: no coupling (its consumers decide).
    fn couple(&self, _node: &NodeProto, _ir: &Ir, _links: &mut Links) {}

    /// The fill value in the inferred output shape (float fills in the graph's dtype).
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let shape = super::out_shape(node, ir, 0)?;
        let device = super::cin(node, x, 0)?.device().clone();
        let (fill, dtype) = match attr_t(node, "value").map(tensor_from_proto).transpose()? {
            Some(Tensor::I64(a)) => (a.iter().next().copied().unwrap_or(0) as f64, DType::I64),
            Some(Tensor::F32(a)) => (a.iter().next().copied().unwrap_or(0.0) as f64, DType::F32),
            None => (0.0, DType::F32),
        };
        // (the Candle graph casts float fills to its own dtype)
        let y = CTensor::full(fill, shape, &device)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(super::ce(node))?;
        Ok(vec![y])
    }

    /// The shape input spells out the new output shape (an RNN's zero initial state).
    fn patch(&self, node: &mut NodeProto, ir: &Ir, new: &Sliced) -> Result<Vec<ConstEdit>> {
        let out = new.of(&node.output[0]);
        super::shape_vector_edits(node, ir, 0, &out, new, |_, _| true)
    }
}

impl OpRule for Range {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let s = need_const(node, inputs, 0)?.to_i64_vec();
        let l = need_const(node, inputs, 1)?.to_i64_vec();
        let d = need_const(node, inputs, 2)?.to_i64_vec();
        let (start, limit, delta) = (s[0], l[0], d[0]);
        if delta == 0 {
            return Err(Error::node(node, "Range with delta 0"));
        }
        let n = ((limit - start) as f64 / delta as f64).ceil().max(0.0) as i64;
        Ok(vec![Fact::konst(Tensor::vec_i64(
            (0..n).map(|i| start + i * delta).collect(),
        ))])
    }
}

impl OpRule for Gather {
    /// data `[d0..d(r-1)]`, indices `I` -> `d[..axis] ++ I ++ d[axis+1..]`.
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let data = need(node, inputs, 0)?;
        let idx = need(node, inputs, 1)?;
        let axis = norm_axis(node, attr_i(node, "axis").unwrap_or(0), data.rank())?;
        let mut shape = data.shape[..axis].to_vec();
        shape.extend(&idx.shape);
        shape.extend(&data.shape[axis + 1..]);
        let mut value = None;
        if foldable(Some(data)) && foldable(Some(idx)) {
            if let (Some(d), Some(i)) = (&data.value, &idx.value) {
                let n = data.shape[axis] as i64;
                let flat: Vec<usize> = i
                    .to_i64_vec()
                    .iter()
                    .map(|&k| (if k < 0 { k + n } else { k }).clamp(0, n - 1) as usize)
                    .collect();
                let picked = d.select(axis, &flat);
                value = Some(match picked {
                    Tensor::I64(a) => Tensor::I64(
                        a.into_shape_with_order(IxDyn(&shape))
                            .map_err(|e| Error::node(node, e.to_string()))?,
                    ),
                    Tensor::F32(a) => Tensor::F32(
                        a.into_shape_with_order(IxDyn(&shape))
                            .map_err(|e| Error::node(node, e.to_string()))?,
                    ),
                });
            }
        }
        Ok(vec![Fact { shape, value }])
    }

    /// The data when it is an initializer: an embedding table (`nn.Embedding`, WavLM's
    /// relative-position bias by bucket) is a learnable parameter whatever indexes it.
    fn params(&self, _node: &NodeProto, _ir: &Ir) -> Vec<usize> {
        vec![0]
    }

    /// Constant indices (read from the IR) select along the axis; the result takes the
    /// inferred shape (a scalar index drops the axis).
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = super::ce(node);
        let data = super::cin(node, x, 0)?;
        let axis = norm_axis(node, attr_i(node, "axis").unwrap_or(0), data.rank())?;
        let n = data.dim(axis).map_err(&e)? as i64;
        let idx = match ir.fact(&node.input[1]).and_then(|f| f.value.as_ref()) {
            Some(v) => {
                let idx: Vec<i64> = v
                    .to_i64_vec()
                    .into_iter()
                    .map(|i| if i < 0 { i + n } else { i })
                    .collect();
                CTensor::new(idx, data.device()).map_err(&e)?
            }
            // computed indices (WavLM's relative-position buckets): i + n [i < 0]
            None => super::cin(node, x, 1)?
                .to_dtype(candle_core::DType::I64)
                .and_then(|i| i.flatten_all())
                .and_then(|i| {
                    let wrap = (i.lt(0i64)?.to_dtype(candle_core::DType::I64)? * n as f64)?;
                    i + wrap
                })
                .map_err(&e)?,
        };
        let y = data
            .index_select(&idx, axis)
            .and_then(|y| {
                y.reshape(
                    super::out_shape(node, ir, 0)
                        .map_err(|err| candle_core::Error::Msg(err.to_string()))?,
                )
            })
            .map_err(&e)?;
        Ok(vec![y])
    }

    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let (Some(d), Some(i)) = (ir.fact(&node.input[0]), ir.fact(&node.input[1])) else {
            return;
        };
        let Ok(axis) = norm_axis(node, attr_i(node, "axis").unwrap_or(0), d.rank()) else {
            return;
        };
        let (x, y) = (node.input[0].as_str(), node.output[0].as_str());
        for a in 0..d.rank() {
            if a < axis {
                links.link((x, a), (y, a));
            } else if a > axis {
                links.link((x, a), (y, a - 1 + i.rank()));
            } else {
                links.freeze((x, a), "Gather along the axis");
            }
        }
    }
}
