//! Elementwise ops: unary (Relu, Sigmoid, Tanh, Sqrt, Cast, Identity, ...) and
//! broadcasting n-ary ops (Add/Sub/Mul/Div/Pow/Max/Min, comparisons, Where, PRelu, Clip).
//!
//! Channels pass straight through: every axis of an input that has the output's size (> 1)
//! is coupled to the output axis it aligns with (numpy right alignment). A per-channel
//! constant (a norm's gamma/beta, a PRelu slope vector) is therefore a group member and is
//! sliced with it; broadcast axes (size 1) are not.
use super::{broadcast, ce, cin, foldable, need, out_shape, Links, OpRule, Ptflops, ShapeOf};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr_i, NodeProto, Tensor};
use crate::ops::kernels;
use candle_core::Tensor as CTensor;
use ndarray::{ArrayD, Zip};

pub struct Unary;
pub struct Broadcast;

fn link_through(node: &NodeProto, ir: &Ir, links: &mut Links) {
    let out = node.output[0].as_str();
    let Some(of) = ir.fact(out) else { return };
    let r = of.rank();
    for inp in node.input.iter().filter(|i| !i.is_empty()) {
        let Some(f) = ir.fact(inp) else { continue };
        let off = r - f.rank().min(r);
        for (a, &d) in f.shape.iter().enumerate() {
            if d > 1 && of.shape.get(off + a) == Some(&d) {
                links.link((inp, a), (out, off + a));
            }
        }
    }
}

impl OpRule for Unary {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        let value = match (&x.value, node.op_type()) {
            (Some(v), "Identity") => Some(v.clone()),
            (Some(v), "Cast") => {
                let to = attr_i(node, "to").unwrap_or(1);
                Some(match (v, to) {
                    (Tensor::I64(a), 1 | 10 | 11 | 16) => Tensor::F32(a.mapv(|x| x as f32)),
                    (Tensor::F32(a), 1 | 10 | 11 | 16) => Tensor::F32(a.clone()),
                    (Tensor::F32(a), _) => Tensor::I64(a.mapv(|x| x as i64)),
                    (Tensor::I64(a), _) => Tensor::I64(a.clone()),
                })
            }
            (Some(Tensor::I64(a)), "Neg") => Some(Tensor::I64(a.mapv(|x| -x))),
            (Some(Tensor::I64(a)), "Abs") => Some(Tensor::I64(a.mapv(|x| x.abs()))),
            (Some(Tensor::F32(a)), op) if x.numel() <= crate::ir::FOLD_LIMIT => match op {
                "Sqrt" => Some(Tensor::F32(a.mapv(f32::sqrt))),
                "Neg" => Some(Tensor::F32(a.mapv(|x| -x))),
                "Reciprocal" => Some(Tensor::F32(a.mapv(|x| 1.0 / x))),
                "Floor" => Some(Tensor::F32(a.mapv(f32::floor))),
                "Ceil" => Some(Tensor::F32(a.mapv(f32::ceil))),
                _ => None,
            },
            _ => None,
        };
        Ok(vec![Fact {
            shape: x.shape.clone(),
            value,
        }])
    }

    /// ptflops counts ReLU/LeakyReLU/ELU as one MAC per output element; other
    /// activations are not counted.
    fn macs(&self, node: &NodeProto, shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        match node.op_type() {
            "Relu" | "LeakyRelu" | "Elu" => shape(&node.output[0]).iter().product::<usize>() as u64,
            _ => 0,
        }
    }

    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        link_through(node, ir, links);
    }

    fn lower(&self, node: &NodeProto, _ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let t = cin(node, x, 0)?;
        let y = match node.op_type() {
            "Identity" => Ok(t.clone()),
            // floats stay as they are (the graph runs in one float dtype); integers are i64,
            // booleans u8 masks
            "Cast" => match attr_i(node, "to") {
                Some(1 | 10 | 11 | 16) if t.dtype().is_float() => Ok(t.clone()),
                Some(1 | 10 | 11 | 16) => t.to_dtype(candle_core::DType::F32),
                Some(2..=7 | 12 | 13) => t.to_dtype(candle_core::DType::I64),
                Some(9) => t.zeros_like().and_then(|z| t.ne(&z)),
                to => {
                    return Err(Error::node(
                        node,
                        format!("Cast to type {to:?} has no Candle lowering"),
                    ))
                }
            },
            "Relu" => t.relu(),
            "Sigmoid" => candle_nn::ops::sigmoid(t),
            "Tanh" => t.tanh(),
            "Sqrt" => t.sqrt(),
            "Exp" => t.exp(),
            "Log" => t.log(),
            "Neg" => t.neg(),
            "Abs" => t.abs(),
            "Erf" => t.erf(),
            "Reciprocal" => t.recip(),
            "Sin" => t.sin(),
            "Cos" => t.cos(),
            // NaN is the one value unequal to itself (a u8 mask, as candle's comparisons give)
            "IsNaN" => t.ne(t),
            // log(1 + exp(x))
            "Softplus" => t.exp().and_then(|v| v + 1.0).and_then(|v| v.log()),
            "LeakyRelu" => {
                let alpha = crate::onnx::attr_f(node, "alpha").unwrap_or(0.01) as f64;
                // relu(x) + alpha * (x - relu(x))
                t.relu().and_then(|r| {
                    let neg = (t - &r)?;
                    r + (neg * alpha)?
                })
            }
            op => {
                return Err(Error::node(node, format!("op {op} has no Candle lowering")));
            }
        };
        Ok(vec![y.map_err(e)?])
    }
}

fn fold_i64(op: &str, a: &ArrayD<i64>, b: &ArrayD<i64>) -> Option<ArrayD<i64>> {
    let f: fn(i64, i64) -> i64 = match op {
        "Add" => |x, y| x + y,
        "Sub" => |x, y| x - y,
        "Mul" => |x, y| x * y,
        "Div" => trunc_div,
        "Mod" => floor_mod,
        "Max" => |x, y| x.max(y),
        "Min" => |x, y| x.min(y),
        "Equal" => |x, y| (x == y) as i64,
        "Less" => |x, y| (x < y) as i64,
        "Greater" => |x, y| (x > y) as i64,
        "LessOrEqual" => |x, y| (x <= y) as i64,
        "GreaterOrEqual" => |x, y| (x >= y) as i64,
        "And" => |x, y| (x != 0 && y != 0) as i64,
        "Or" => |x, y| (x != 0 || y != 0) as i64,
        _ => return None,
    };
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let a = a.broadcast(shape.clone())?;
    let b = b.broadcast(shape)?;
    Some(Zip::from(&a).and(&b).map_collect(|&x, &y| f(x, y)))
}

/// ONNX integer Mod (`fmod = 0`): the result has the sign of the divisor.
fn floor_mod(x: i64, y: i64) -> i64 {
    if y == 0 {
        0
    } else {
        x.rem_euclid(y) + if y < 0 && x.rem_euclid(y) != 0 { y } else { 0 }
    }
}

/// ONNX integer Div truncates toward zero.
fn trunc_div(x: i64, y: i64) -> i64 {
    if y == 0 {
        0
    } else {
        x / y
    }
}

fn fold_f32(op: &str, a: &ArrayD<f32>, b: &ArrayD<f32>) -> Option<ArrayD<f32>> {
    let f: fn(f32, f32) -> f32 = match op {
        "Add" => |x, y| x + y,
        "Sub" => |x, y| x - y,
        "Mul" => |x, y| x * y,
        "Div" => |x, y| x / y,
        "Pow" => f32::powf,
        "Max" => f32::max,
        "Min" => f32::min,
        _ => return None,
    };
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let a = a.broadcast(shape.clone())?;
    let b = b.broadcast(shape)?;
    Some(Zip::from(&a).and(&b).map_collect(|&x, &y| f(x, y)))
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let x = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let y = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            if x == y || y == 1 {
                Some(x)
            } else if x == 1 {
                Some(y)
            } else {
                None
            }
        })
        .collect()
}

impl OpRule for Broadcast {
    /// PRelu's slope; for Add, Sub, Mul and Div, an initializer operand with more than one
    /// element (a decomposed norm's per-channel scale and shift, a bias), and the bias `[1]`
    /// an Add puts on a linear layer (MatMul, Gemm) with one output. Other operands of one element
    /// are structural constants (epsilons, scales) and stay fixed, as does every Pow exponent.
    fn params(&self, node: &NodeProto, ir: &Ir) -> Vec<usize> {
        let linear = |v: &str| {
            ir.producer
                .get(v)
                .is_some_and(|&p| matches!(ir.nodes()[p].op_type(), "MatMul" | "Gemm"))
        };
        let one_output_bias = |i: usize| {
            node.op_type() == "Add"
                && ir
                    .fact(&node.input[i])
                    .is_some_and(|f| f.rank() >= 1 && f.numel() == 1)
                && node.input.iter().enumerate().any(|(j, v)| {
                    j != i && linear(v) && ir.fact(v).is_some_and(|f| f.shape.last() == Some(&1))
                })
        };
        match node.op_type() {
            "PRelu" => vec![1],
            "Add" | "Sub" | "Mul" | "Div" => (0..node.input.len())
                .filter(|&i| {
                    ir.fact(&node.input[i]).is_some_and(|f| f.numel() > 1) || one_output_bias(i)
                })
                .collect(),
            _ => vec![],
        }
    }

    /// Less a Mul or Div operand of all ones (the unit scale an exporter writes for a norm
    /// without an affine map, once the norm is decomposed): it leaves the other operand as
    /// it is. An untrained model's unit scales are left out the same way.
    fn counted_params(&self, node: &NodeProto, ir: &Ir) -> Vec<usize> {
        let scaling = matches!(node.op_type(), "Mul" | "Div");
        self.params(node, ir)
            .into_iter()
            .filter(|&i| !(scaling && super::filled_with(ir, &node.input[i], 1.0)))
            .collect()
    }

    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let present: Vec<&Fact> = inputs.iter().flatten().copied().collect();
        if present.is_empty() {
            return Err(Error::node(node, "no inputs"));
        }
        let op = node.op_type();
        // PRelu's and Clip's outputs have the data input's shape.
        let shape = if op == "PRelu" || op == "Clip" {
            need(node, inputs, 0)?.shape.clone()
        } else {
            let shapes: Vec<&[usize]> = present.iter().map(|f| f.shape.as_slice()).collect();
            broadcast(node, &shapes)?
        };
        let mut value = None;
        if inputs.len() == 2 && inputs.iter().all(|f| foldable(*f)) {
            let (a, b) = (
                need(node, inputs, 0)?.value.as_ref(),
                need(node, inputs, 1)?.value.as_ref(),
            );
            value = match (a, b) {
                (Some(Tensor::I64(a)), Some(Tensor::I64(b))) => fold_i64(op, a, b).map(Tensor::I64),
                (Some(Tensor::F32(a)), Some(Tensor::F32(b))) => fold_f32(op, a, b).map(Tensor::F32),
                _ => None,
            };
        } else if op == "Where" && inputs.iter().all(|f| foldable(*f)) {
            if let (Some(Tensor::I64(c)), Some(Tensor::I64(x)), Some(Tensor::I64(y))) = (
                need(node, inputs, 0)?.value.as_ref(),
                need(node, inputs, 1)?.value.as_ref(),
                need(node, inputs, 2)?.value.as_ref(),
            ) {
                let (c, x, y) = (
                    c.broadcast(shape.clone()),
                    x.broadcast(shape.clone()),
                    y.broadcast(shape.clone()),
                );
                if let (Some(c), Some(x), Some(y)) = (c, x, y) {
                    value = Some(Tensor::I64(
                        Zip::from(&c)
                            .and(&x)
                            .and(&y)
                            .map_collect(|&c, &x, &y| if c != 0 { x } else { y }),
                    ));
                }
            }
        }
        Ok(vec![Fact { shape, value }])
    }

    /// ptflops counts PReLU as one MAC per output element; `x + y`, `x * y` are not counted.
    fn macs(&self, node: &NodeProto, shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        if node.op_type() == "PRelu" {
            shape(&node.output[0]).iter().product::<usize>() as u64
        } else {
            0
        }
    }

    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        link_through(node, ir, links);
    }

    fn sums_branches(&self, node: &NodeProto) -> bool {
        node.op_type() == "Add"
    }

    /// Numpy broadcasting (candle's `broadcast_*` align shapes on the right).
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let a = cin(node, x, 0)?;
        let y = match node.op_type() {
            "Add" => in_memory_order(a, cin(node, x, 1)?, |a, b| a.broadcast_add(b)),
            "Sub" => in_memory_order(a, cin(node, x, 1)?, |a, b| a.broadcast_sub(b)),
            "Mul" => in_memory_order(a, cin(node, x, 1)?, |a, b| a.broadcast_mul(b)),
            "Div" => in_memory_order(a, cin(node, x, 1)?, |a, b| a.broadcast_div(b)),
            "Max" => in_memory_order(a, cin(node, x, 1)?, |a, b| a.broadcast_maximum(b)),
            // comparisons give u8 masks, as candle's do
            "Greater" => in_memory_order(a, cin(node, x, 1)?, |a, b| a.broadcast_gt(b)),
            "Less" => in_memory_order(a, cin(node, x, 1)?, |a, b| a.broadcast_lt(b)),
            "GreaterOrEqual" => in_memory_order(a, cin(node, x, 1)?, |a, b| a.broadcast_ge(b)),
            "LessOrEqual" => in_memory_order(a, cin(node, x, 1)?, |a, b| a.broadcast_le(b)),
            "Equal" => in_memory_order(a, cin(node, x, 1)?, |a, b| a.broadcast_eq(b)),
            // the condition, then the two branches, broadcast to the output's shape
            "Where" => {
                let shape = out_shape(node, ir, 0)?;
                let full = |i: usize| -> Result<CTensor> {
                    cin(node, x, i)?.broadcast_as(shape.as_slice()).map_err(&e)
                };
                full(0)?.where_cond(&full(1)?, &full(2)?)
            }
            "Min" => in_memory_order(a, cin(node, x, 1)?, |a, b| a.broadcast_minimum(b)),
            // fused on the CPU; elsewhere relu(x) + slope * (x - relu(x))
            "PRelu" => {
                let slope = cin(node, x, 1)?;
                match kernels::prelu(a, slope).map_err(&e)? {
                    Some(y) => Ok(y),
                    None => a.relu().and_then(|r| {
                        let neg = (a - &r)?;
                        r.broadcast_add(&neg.broadcast_mul(slope)?)
                    }),
                }
            }
            "Pow" => {
                let p = ir
                    .fact(&node.input[1])
                    .and_then(|f| f.value.as_ref())
                    .filter(|v| v.len() == 1)
                    .map(|v| match v {
                        Tensor::F32(t) => t.iter().next().copied().unwrap_or(1.0) as f64,
                        Tensor::I64(t) => t.iter().next().copied().unwrap_or(1) as f64,
                    })
                    .ok_or_else(|| {
                        Error::node(
                            node,
                            "Candle lowering of Pow needs a constant scalar exponent",
                        )
                    })?;
                if p == 2.0 {
                    a.sqr()
                } else if p == 1.0 {
                    Ok(a.clone())
                } else if p == 0.5 {
                    a.sqrt()
                } else {
                    a.powf(p)
                }
            }
            "Clip" => {
                let lo = x.get(1).and_then(|t| t.as_ref());
                let hi = x.get(2).and_then(|t| t.as_ref());
                let mut y = a.clone();
                if let Some(lo) = lo {
                    y = y.broadcast_maximum(lo).map_err(&e)?;
                }
                if let Some(hi) = hi {
                    y = y.broadcast_minimum(hi).map_err(&e)?;
                }
                Ok(y)
            }
            op => {
                return Err(Error::node(node, format!("op {op} has no Candle lowering")));
            }
        };
        Ok(vec![y.map_err(e)?])
    }
}

/// `f(a, b)` (a broadcasting binary op) computed in the memory order of the larger operand.
///
/// A Transpose lowers to a permuted view; candle's kernels walk the last logical axis, so an
/// elementwise op on a transposed `[N, T, C]` view of a `[N, C, T]` tensor reads it with a
/// stride of `T` elements, forward and backward. When the larger operand is such a view, both
/// operands are permuted so that it reads contiguously, and the result is permuted back: the
/// same values, as a view with the larger operand's layout.
fn in_memory_order(
    a: &CTensor,
    b: &CTensor,
    f: impl Fn(&CTensor, &CTensor) -> candle_core::Result<CTensor>,
) -> candle_core::Result<CTensor> {
    let big = if a.elem_count() >= b.elem_count() {
        a
    } else {
        b
    };
    if big.is_contiguous() || big.rank() < 2 {
        return f(a, b);
    }
    // axes from the largest stride to the smallest (size-1 axes keep their place in ties)
    let (dims, strides) = (big.dims(), big.stride());
    let mut order: Vec<usize> = (0..big.rank()).collect();
    order.sort_by_key(|&i| {
        (
            std::cmp::Reverse(if dims[i] == 1 { usize::MAX } else { strides[i] }),
            i,
        )
    });
    if !big.permute(order.clone())?.is_contiguous() {
        return f(a, b);
    }
    let lift = |t: &CTensor| -> candle_core::Result<CTensor> {
        let mut t = t.clone();
        while t.rank() < big.rank() {
            t = t.unsqueeze(0)?;
        }
        t.permute(order.clone())
    };
    let mut back = vec![0; order.len()];
    for (i, &o) in order.iter().enumerate() {
        back[o] = i;
    }
    f(&lift(a)?, &lift(b)?)?.permute(back)
}

#[cfg(test)]
mod tests {
    use super::in_memory_order;
    use candle_core::{Device, Tensor, Var};

    /// On a transposed view, the op in memory order gives the plain op's values and
    /// gradients, and its result keeps the view's layout.
    #[test]
    fn an_op_on_a_transposed_view_runs_in_memory_order_with_the_same_values() {
        let x: Vec<f64> = (0..2 * 5 * 7)
            .map(|i| ((i * 37) % 11) as f64 - 5.0)
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(x, (2, 5, 7), &Device::Cpu).unwrap()).unwrap();
        let gamma = Var::from_tensor(&Tensor::arange(1.0f64, 6.0, &Device::Cpu).unwrap()).unwrap();
        let r = Tensor::arange(0.0f64, 70.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 7, 5))
            .unwrap();
        let run = |ordered: bool| {
            let t = x.as_tensor().transpose(1, 2).unwrap(); // [2, 7, 5], not contiguous
            let y = if ordered {
                in_memory_order(&t, gamma.as_tensor(), |a, b| a.broadcast_mul(b)).unwrap()
            } else {
                t.broadcast_mul(gamma.as_tensor()).unwrap()
            };
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            (
                flat(&y),
                y.is_contiguous(),
                flat(g.get(x.as_tensor()).unwrap()),
                flat(g.get(gamma.as_tensor()).unwrap()),
            )
        };
        let (plain, ordered) = (run(false), run(true));
        assert_eq!(plain.0, ordered.0);
        assert_eq!(plain.2, ordered.2);
        assert_eq!(plain.3, ordered.3);
        assert!(plain.1, "candle's plain op writes a contiguous result");
        assert!(
            !ordered.1,
            "the result is a view in the operand's memory order"
        );
    }
}
