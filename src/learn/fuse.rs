//! Lowering-time fusions: node chains that [`super::CandleGraph`] runs as one fused kernel
//! ([`super::kernels`]) because their decomposed form costs a training step many passes
//! over full-size tensors. A fusion computes the same function as its nodes; the IR and the
//! written model keep the nodes.
//!
//! - **Normalisation**: `d = Sub(x, ReduceMean(x)); y = Div(d, Sqrt(Add(ReduceMean(Mul(d,
//!   d) | Pow(d, 2)), eps)))`, both means over the same trailing axes `from..` with kept
//!   dims: the canonical form of GroupNorm(1) and LayerNormalization
//!   ([`crate::ir::canon`]) and gLN as Asteroid exports it. Every intermediate value must
//!   be read only inside the chain.
use crate::ir::Ir;
use crate::onnx::Tensor;

/// One fused chain, run at its last node.
#[derive(Clone, Debug)]
pub struct Fusion {
    /// The chain's input value.
    pub input: String,
    /// The chain's nodes (indices in the IR), the last one producing the output.
    pub nodes: Vec<usize>,
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Normalisation over axes `from..` ([`super::kernels::normalize`]).
    Normalize { from: usize, eps: f64 },
}

impl Fusion {
    /// The chain's output from its input value.
    ///
    /// Errors: the kernel does not apply to `x` (a device other than the CPU, a dtype other
    /// than f32/f64), or fails.
    pub fn run(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        let y = match self.kind {
            Kind::Normalize { from, eps } => super::kernels::normalize(x, from, eps)?,
        };
        y.ok_or_else(|| candle_core::Error::Msg("fused kernel does not apply".into()))
    }
}

/// Every fusable chain of `ir`, in graph order of their last nodes.
pub fn find(ir: &Ir) -> Vec<Fusion> {
    (0..ir.nodes().len())
        .filter_map(|i| normalization(ir, i))
        .collect()
}

/// The node reading `value`, when exactly one node does (possibly at several inputs) and
/// the value is not a graph output.
fn sole_reader(ir: &Ir, value: &str) -> Option<usize> {
    if ir.graph_outputs().iter().any(|o| o == value) {
        return None;
    }
    let readers = ir.consumers.get(value)?;
    let first = readers.first()?.0;
    readers.iter().all(|&(n, _)| n == first).then_some(first)
}

/// The one scalar of a constant value.
fn scalar(ir: &Ir, value: &str) -> Option<f64> {
    match ir.fact(value)?.value.as_ref()? {
        Tensor::F32(a) if a.len() == 1 => a.iter().next().map(|&v| v as f64),
        Tensor::I64(a) if a.len() == 1 => a.iter().next().map(|&v| v as f64),
        _ => None,
    }
}

/// A mean with kept dims over a trailing block of axes `from..` (from >= 1).
fn trailing_mean(ir: &Ir, i: usize) -> Option<usize> {
    let node = &ir.nodes()[i];
    if node.op_type() != "ReduceMean" {
        return None;
    }
    let rank = ir.fact(&node.input[0])?.rank();
    let (axes, keep) = crate::ops::reduce_axes(node, ir)?;
    let from = *axes.first()?;
    (keep && from >= 1 && axes == (from..rank).collect::<Vec<_>>()).then_some(from)
}

/// The normalisation chain whose first node (the mean of `x`) is `m`.
fn normalization(ir: &Ir, m: usize) -> Option<Fusion> {
    let nodes = ir.nodes();
    let from = trailing_mean(ir, m)?;
    let x = nodes[m].input[0].clone();
    let d = sole_reader(ir, &nodes[m].output[0])?;
    if nodes[d].op_type() != "Sub" || nodes[d].input != [x.clone(), nodes[m].output[0].clone()] {
        return None;
    }
    let dv = nodes[d].output[0].as_str();
    // d feeds the square and the division, and nothing else
    let mut readers: Vec<usize> = ir.consumers.get(dv)?.iter().map(|&(n, _)| n).collect();
    readers.sort_unstable();
    readers.dedup();
    let [s, y] = readers[..] else { return None };
    let square = match nodes[s].op_type() {
        "Mul" => nodes[s].input == [dv, dv],
        "Pow" => nodes[s].input[0] == dv && scalar(ir, &nodes[s].input[1]) == Some(2.0),
        _ => false,
    };
    if !square || ir.graph_outputs().iter().any(|o| o == dv) {
        return None;
    }
    let v = sole_reader(ir, &nodes[s].output[0])?;
    if trailing_mean(ir, v) != Some(from) {
        return None;
    }
    let e = sole_reader(ir, &nodes[v].output[0])?;
    let vv = nodes[v].output[0].as_str();
    let eps = match (nodes[e].op_type(), nodes[e].input.as_slice()) {
        ("Add", [a, b]) if a == vv => scalar(ir, b)?,
        ("Add", [a, b]) if b == vv => scalar(ir, a)?,
        _ => return None,
    };
    let r = sole_reader(ir, &nodes[e].output[0])?;
    if nodes[r].op_type() != "Sqrt" || sole_reader(ir, &nodes[r].output[0]) != Some(y) {
        return None;
    }
    if nodes[y].op_type() != "Div" || nodes[y].input != [dv.to_string(), nodes[r].output[0].clone()]
    {
        return None;
    }
    let mut chain = vec![m, d, s, v, e, r, y];
    chain.sort_unstable();
    (chain.last() == Some(&y)).then_some(Fusion {
        input: x,
        nodes: chain,
        kind: Kind::Normalize { from, eps },
    })
}
