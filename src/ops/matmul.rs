//! MatMul (numpy semantics) and Gemm.
//!
//! Channels: `A [..., M, K] @ B [..., K, N]` couples A's last axis with B's row axis (a
//! contraction, so A is gated there) and B's column axis with Y's last axis. A constant B
//! (a Linear layer) makes its column axis a channel source.
use super::{
    broadcast, ce, cin, in_shape, need, out_shape, Linear, Links, OpRule, Ptflops, Read, ShapeOf,
    WeightLayout,
};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr_i, NodeProto};
use candle_core::Tensor as CTensor;

pub struct MatMul;
pub struct Gemm;

impl OpRule for MatMul {
    /// Either factor, when it is an initializer (a linear layer's weight).
    fn params(&self, _node: &NodeProto, _ir: &Ir) -> Vec<usize> {
        vec![0, 1]
    }

    /// `x [..., Cin] @ W [Cin, Cout]` with W a 2-D initializer and x computed.
    fn linear(&self, node: &NodeProto, ir: &Ir) -> Option<Linear> {
        let x = in_shape(node, ir, 0).ok()?;
        let w = in_shape(node, ir, 1).ok()?;
        (x.len() >= 2
            && w.len() == 2
            && ir.is_initializer(&node.input[1])
            && !ir.is_const(&node.input[0]))
        .then(|| Linear {
            input: node.input[0].clone(),
            axis: x.len() - 1,
            weight: node.input[1].clone(),
            layout: WeightLayout::InOut,
            bias: None,
        })
    }

    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let a = &need(node, inputs, 0)?.shape;
        let b = &need(node, inputs, 1)?.shape;
        if a.is_empty() || b.is_empty() {
            return Err(Error::node(node, "MatMul of a scalar"));
        }
        let a2 = if a.len() == 1 {
            vec![1, a[0]]
        } else {
            a.clone()
        };
        let b2 = if b.len() == 1 {
            vec![b[0], 1]
        } else {
            b.clone()
        };
        let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
        let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
        if k != k2 {
            return Err(Error::node(
                node,
                format!("contraction sizes differ: {a:?} @ {b:?}"),
            ));
        }
        let mut shape = broadcast(node, &[&a2[..a2.len() - 2], &b2[..b2.len() - 2]])?;
        if a.len() > 1 {
            shape.push(m);
        }
        if b.len() > 1 {
            shape.push(n);
        }
        Ok(vec![Fact::shape(shape)])
    }

    /// ptflops (Linear / matmul): `numel(A) * N`.
    fn macs(&self, node: &NodeProto, shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        let a = shape(&node.input[0]);
        let b = shape(&node.input[1]);
        (a.iter().product::<usize>() * b.last().copied().unwrap_or(1)) as u64
    }

    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let (a, b, y) = (
            node.input[0].as_str(),
            node.input[1].as_str(),
            node.output[0].as_str(),
        );
        let (Some(af), Some(bf), Some(yf)) = (ir.fact(a), ir.fact(b), ir.fact(y)) else {
            return;
        };
        if af.rank() < 2 || bf.rank() < 2 {
            return links.freeze_node(node, ir, "MatMul with a 1-D operand");
        }
        let (ra, rb, ry) = (af.rank(), bf.rank(), yf.rank());
        links.link((a, ra - 1), (b, rb - 2));
        links.link((a, ra - 2), (y, ry - 2));
        links.link((b, rb - 1), (y, ry - 1));
        if ir.is_initializer(b) {
            links.source((b, rb - 1));
        }
        for (f, name) in [(af, a), (bf, b)] {
            let off = ry - f.rank();
            for ax in 0..f.rank() - 2 {
                if f.shape[ax] > 1 {
                    links.link((name, ax), (y, off + ax));
                }
            }
        }
    }

    fn read(&self, node: &NodeProto, ir: &Ir, input: usize, axis: usize) -> Read {
        let r = ir.fact(&node.input[input]).map(|f| f.rank()).unwrap_or(0);
        if (input == 0 && axis + 1 == r) || (input == 1 && axis + 2 == r) {
            Read::Mix
        } else {
            Read::Pointwise
        }
    }

    /// Numpy matmul (1-D operands promoted, batch dims broadcast).
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let (a, b) = (cin(node, x, 0)?, cin(node, x, 1)?);
        let a2 = if a.rank() == 1 {
            a.unsqueeze(0).map_err(&e)?
        } else {
            a.clone()
        };
        let b2 = if b.rank() == 1 {
            b.unsqueeze(1).map_err(&e)?
        } else {
            b.clone()
        };
        // candle's CPU matmul needs each operand's last two axes in a plain layout
        let (a2, b2) = (a2.contiguous().map_err(&e)?, b2.contiguous().map_err(&e)?);
        let y = a2
            .broadcast_matmul(&b2)
            .and_then(|y| {
                y.reshape(
                    out_shape(node, ir, 0).map_err(|e| candle_core::Error::Msg(e.to_string()))?,
                )
            })
            .map_err(&e)?;
        Ok(vec![y])
    }
}

fn gemm_axes(node: &NodeProto) -> (usize, usize) {
    // (A's contraction axis, B's output axis)
    let ta = attr_i(node, "transA").unwrap_or(0) != 0;
    let tb = attr_i(node, "transB").unwrap_or(0) != 0;
    (if ta { 0 } else { 1 }, if tb { 0 } else { 1 })
}

impl OpRule for Gemm {
    /// B and C, when they are initializers (a linear layer's weight and bias).
    fn params(&self, _node: &NodeProto, _ir: &Ir) -> Vec<usize> {
        vec![0, 1, 2]
    }

    /// `A [M, K] B' + C` with `transA = 0`, `alpha = beta = 1`, B an initializer and C a
    /// `[N]` initializer or absent.
    fn linear(&self, node: &NodeProto, ir: &Ir) -> Option<Linear> {
        let (ka, nb) = gemm_axes(node);
        let alpha = crate::onnx::attr_f(node, "alpha").unwrap_or(1.0);
        let beta = crate::onnx::attr_f(node, "beta").unwrap_or(1.0);
        let c = node.input.get(2).filter(|c| !c.is_empty());
        let c_ok = c
            .is_none_or(|c| ir.is_initializer(c) && ir.fact(c).is_some_and(|f| f.shape.len() == 1));
        (ka == 1 && alpha == 1.0 && beta == 1.0 && ir.is_initializer(&node.input[1]) && c_ok).then(
            || Linear {
                input: node.input[0].clone(),
                axis: 1,
                weight: node.input[1].clone(),
                layout: if nb == 0 {
                    WeightLayout::OutIn
                } else {
                    WeightLayout::InOut
                },
                bias: c.cloned(),
            },
        )
    }

    /// `Y [M, N] = alpha * A' B' + beta * C`.
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let a = &need(node, inputs, 0)?.shape;
        let b = &need(node, inputs, 1)?.shape;
        if a.len() != 2 || b.len() != 2 {
            return Err(Error::node(node, "Gemm needs 2-D inputs"));
        }
        let (ka, nb) = gemm_axes(node);
        if a[ka] != b[1 - nb] {
            return Err(Error::node(
                node,
                format!("contraction sizes differ: {a:?} x {b:?}"),
            ));
        }
        Ok(vec![Fact::shape(vec![a[1 - ka], b[nb]])])
    }

    fn macs(&self, node: &NodeProto, shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        let y = shape(&node.output[0]);
        let a = shape(&node.input[0]);
        let (ka, _) = gemm_axes(node);
        let bias = if node.input.len() > 2 && !node.input[2].is_empty() {
            y[0] * y[1]
        } else {
            0
        };
        (y[0] * y[1] * a[ka] + bias) as u64
    }

    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let (a, b, y) = (
            node.input[0].as_str(),
            node.input[1].as_str(),
            node.output[0].as_str(),
        );
        let (ka, nb) = gemm_axes(node);
        links.link((a, ka), (b, 1 - nb));
        links.link((a, 1 - ka), (y, 0));
        links.link((b, nb), (y, 1));
        if ir.is_initializer(b) {
            links.source((b, nb));
        }
        if let Some(c) = node.input.get(2).filter(|c| !c.is_empty()) {
            if let Some(cf) = ir.fact(c) {
                let off = 2 - cf.rank().min(2);
                for ax in 0..cf.rank() {
                    if cf.shape[ax] > 1 {
                        links.link((c, ax), (y, off + ax));
                    }
                }
            }
        }
    }

    fn read(&self, node: &NodeProto, _ir: &Ir, input: usize, axis: usize) -> Read {
        let (ka, nb) = gemm_axes(node);
        if (input == 0 && axis == ka) || (input == 1 && axis == 1 - nb) {
            Read::Mix
        } else {
            Read::Pointwise
        }
    }

    fn lower(&self, node: &NodeProto, _ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let (ka, nb) = gemm_axes(node);
        let a = cin(node, x, 0)?;
        let b = cin(node, x, 1)?;
        let a = if ka == 0 {
            a.t().map_err(&e)?
        } else {
            a.clone()
        };
        let b = if nb == 0 {
            b.t().map_err(&e)?
        } else {
            b.clone()
        };
        let alpha = crate::onnx::attr_f(node, "alpha").unwrap_or(1.0) as f64;
        let beta = crate::onnx::attr_f(node, "beta").unwrap_or(1.0) as f64;
        let mut y = a.matmul(&b).and_then(|y| y * alpha).map_err(&e)?;
        if let Some(c) = x.get(2).and_then(|c| c.as_ref()) {
            y = (c * beta).and_then(|c| y.broadcast_add(&c)).map_err(&e)?;
        }
        Ok(vec![y])
    }
}
