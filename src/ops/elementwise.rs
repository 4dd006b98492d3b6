//! Elementwise ops: unary (Relu, Sigmoid, Tanh, Sqrt, Cast, Identity, ...) and
//! broadcasting n-ary ops (Add/Sub/Mul/Div/Pow/Max/Min, comparisons, Where, PRelu, Clip).
//!
//! Channels pass straight through: every axis of an input that has the output's size (> 1)
//! is coupled to the output axis it aligns with (numpy right alignment). A per-channel
//! constant (a norm's gamma/beta, a PRelu slope vector) is therefore a group member and is
//! sliced with it; broadcast axes (size 1) are not.
use super::{broadcast, foldable, need, Links, OpRule, ShapeOf};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr_i, NodeProto, Tensor};
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
            if d > 1 && d == of.shape[off + a] {
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
    fn macs(&self, node: &NodeProto, shape: ShapeOf) -> u64 {
        match node.op_type() {
            "Relu" | "LeakyRelu" | "Elu" => shape(&node.output[0]).iter().product::<usize>() as u64,
            _ => 0,
        }
    }

    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        link_through(node, ir, links);
    }

    fn sums_branches(&self, node: &NodeProto) -> bool {
        node.op_type() == "Add"
    }
}

fn fold_i64(op: &str, a: &ArrayD<i64>, b: &ArrayD<i64>) -> Option<ArrayD<i64>> {
    let f: fn(i64, i64) -> i64 = match op {
        "Add" => |x, y| x + y,
        "Sub" => |x, y| x - y,
        "Mul" => |x, y| x * y,
        "Div" => trunc_div,
        "Max" => |x, y| x.max(y),
        "Min" => |x, y| x.min(y),
        "Equal" => |x, y| (x == y) as i64,
        "Less" => |x, y| (x < y) as i64,
        "Greater" => |x, y| (x > y) as i64,
        "And" => |x, y| (x != 0 && y != 0) as i64,
        "Or" => |x, y| (x != 0 || y != 0) as i64,
        _ => return None,
    };
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let a = a.broadcast(shape.clone())?;
    let b = b.broadcast(shape)?;
    Some(Zip::from(&a).and(&b).map_collect(|&x, &y| f(x, y)))
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
    fn macs(&self, node: &NodeProto, shape: ShapeOf) -> u64 {
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
}
