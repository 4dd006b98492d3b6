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
//! - **Per-channel affine**: `Add(Mul(x, scale), bias)` with `scale` and `bias` constants
//!   (or live parameters) along one axis, optionally between a Transpose and its inverse
//!   (gLN's `gamma * x.transpose(1, -1) + beta` as Asteroid exports it): the map runs on
//!   `x` in its own layout ([`crate::ops::kernels::channel_affine`]).
//! - **Normalisation and its affine map**: a normalisation whose output only its affine
//!   chain reads, along an axis inside the normalised block (a norm's gamma and beta), as
//!   one kernel ([`crate::ops::kernels::normalize_affine`]).
use crate::ir::Ir;
use crate::onnx::Tensor;

/// One fused chain, run at its last node.
#[derive(Clone, Debug)]
pub struct Fusion {
    /// The values the chain reads from outside (its data input first).
    pub inputs: Vec<String>,
    /// The chain's nodes (indices in the IR), the last one producing the output.
    pub nodes: Vec<usize>,
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Normalisation over axes `from..` ([`crate::ops::kernels::normalize`]).
    Normalize { from: usize, eps: f64 },
    /// `x * scale + bias` along `x`'s axis `axis` (inputs `[x, scale, bias?]`,
    /// [`crate::ops::kernels::channel_affine`]).
    Affine { axis: usize },
    /// A normalisation over axes `from..` then `* scale + bias` along axis `axis` (inputs
    /// `[x, scale, bias?]`, [`crate::ops::kernels::normalize_affine`]).
    NormalizeAffine { from: usize, eps: f64, axis: usize },
}

impl Fusion {
    /// The chain's output from the values of its inputs (in [`Fusion::inputs`] order).
    ///
    /// Errors: the kernel does not apply to `x` (a device other than the CPU, a dtype other
    /// than f32/f64), or fails.
    pub fn run(&self, x: &[candle_core::Tensor]) -> candle_core::Result<candle_core::Tensor> {
        let y = match self.kind {
            Kind::Normalize { from, eps } => crate::ops::kernels::normalize(&x[0], from, eps)?,
            Kind::Affine { axis } => {
                crate::ops::kernels::channel_affine(&x[0], &x[1], x.get(2), axis)?
            }
            Kind::NormalizeAffine { from, eps, axis } => {
                crate::ops::kernels::normalize_affine(&x[0], from, eps, &x[1], x.get(2), axis)?
            }
        };
        y.ok_or_else(|| candle_core::Error::Msg("fused kernel does not apply".into()))
    }
}

impl Fusion {
    /// Entries of one channel contiguous in the data input (the product of its dims after
    /// the affine axis; `usize::MAX` for a normalisation alone), which decides where the
    /// kernel runs ([`crate::ops::kernels::applies`]).
    pub fn run_len(&self, ir: &Ir) -> usize {
        let axis = match self.kind {
            Kind::Normalize { .. } => return usize::MAX,
            Kind::Affine { axis } | Kind::NormalizeAffine { axis, .. } => axis,
        };
        ir.fact(&self.inputs[0])
            .map_or(0, |f| f.shape.iter().skip(axis + 1).product())
    }
}

/// Every fusable chain of `ir`, in graph order of their first nodes.
pub fn find(ir: &Ir) -> Vec<Fusion> {
    let chains: Vec<Fusion> = (0..ir.nodes().len())
        .filter_map(|i| normalization(ir, i).or_else(|| affine(ir, i)))
        .collect();
    merge_affines(ir, chains)
}

/// Each normalisation whose output only a per-channel affine chain reads, along an axis
/// inside the normalised block, merged with that chain into one.
fn merge_affines(ir: &Ir, chains: Vec<Fusion>) -> Vec<Fusion> {
    let output =
        |f: &Fusion| ir.nodes()[*f.nodes.last().expect("a chain has nodes")].output[0].clone();
    let mut out: Vec<Fusion> = vec![];
    for f in chains {
        let Kind::Affine { axis } = f.kind else {
            out.push(f);
            continue;
        };
        let norm = out.iter().enumerate().find_map(|(k, p)| match p.kind {
            Kind::Normalize { from, eps }
                if axis >= from
                    && output(p) == f.inputs[0]
                    && sole_reader(ir, &f.inputs[0]) == Some(f.nodes[0]) =>
            {
                Some((k, from, eps))
            }
            _ => None,
        });
        match norm {
            Some((k, from, eps)) => {
                let merged = &mut out[k];
                merged.nodes.extend(&f.nodes);
                merged.inputs.extend(f.inputs[1..].iter().cloned());
                merged.kind = Kind::NormalizeAffine { from, eps, axis };
            }
            None => out.push(f),
        }
    }
    out
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
        inputs: vec![x],
        nodes: chain,
        kind: Kind::Normalize { from, eps },
    })
}

/// A value that does not depend on the graph input: an initializer (a weight, a gate) or a
/// folded constant.
fn is_param(ir: &Ir, value: &str) -> bool {
    ir.is_initializer(value) || ir.fact(value).is_some_and(|f| f.value.is_some())
}

/// The axis of `data` (shape) along which `param` varies when broadcast to it (numpy
/// right alignment): exactly one axis, with `data`'s size there.
fn param_axis(ir: &Ir, param: &str, data: &[usize]) -> Option<usize> {
    let p = &ir.fact(param)?.shape;
    let off = data.len().checked_sub(p.len())?;
    let mut varying = p.iter().enumerate().filter(|(_, &d)| d != 1);
    match (varying.next(), varying.next()) {
        (Some((j, &d)), None) if data[off + j] == d => Some(off + j),
        _ => None,
    }
}

/// `node` (a binary op) reads `data` (of shape `shape`) and a parameter varying along one
/// of `data`'s axes: the parameter and that axis.
fn param_operand(ir: &Ir, node: usize, data: &str, shape: &[usize]) -> Option<(String, usize)> {
    let other = match ir.nodes()[node].input.as_slice() {
        [a, b] if a == data => b,
        [a, b] if b == data => a,
        _ => return None,
    };
    if other == data || !is_param(ir, other) {
        return None;
    }
    Some((other.clone(), param_axis(ir, other, shape)?))
}

/// The per-channel affine chain starting at `start`: `[Transpose(p) ->] Mul(., scale) [->
/// Add(., bias)] [-> Transpose(p^-1)]`, with the Add or the transpose pair present (a lone
/// Mul gains nothing from fusing).
fn affine(ir: &Ir, start: usize) -> Option<Fusion> {
    let nodes = ir.nodes();
    let mut chain = vec![];
    let (x, perm, mul) = match nodes[start].op_type() {
        "Transpose" => {
            let rank = ir.fact(&nodes[start].input[0])?.rank();
            let perm = crate::ops::transpose_perm(&nodes[start], rank).ok()?;
            chain.push(start);
            let mul = sole_reader(ir, &nodes[start].output[0])?;
            (nodes[start].input[0].clone(), Some(perm), mul)
        }
        "Mul" => {
            let data = nodes[start].input.iter().find(|v| !is_param(ir, v))?;
            (data.clone(), None, start)
        }
        _ => return None,
    };
    if nodes[mul].op_type() != "Mul" {
        return None;
    }
    // the data as the Mul reads it (transposed or not)
    let read = match perm {
        Some(_) => nodes[start].output[0].clone(),
        None => x.clone(),
    };
    let shape = ir.fact(&read)?.shape.clone();
    let (scale, axis) = param_operand(ir, mul, &read, &shape)?;
    chain.push(mul);
    let mut inputs = vec![x, scale];
    let mut last = nodes[mul].output[0].clone();
    if let Some(add) = sole_reader(ir, &last).filter(|&a| nodes[a].op_type() == "Add") {
        if let Some((bias, _)) = param_operand(ir, add, &last, &shape).filter(|p| p.1 == axis) {
            chain.push(add);
            inputs.push(bias);
            last = nodes[add].output[0].clone();
        }
    }
    let axis = match &perm {
        Some(p) => {
            let back = sole_reader(ir, &last).filter(|&b| nodes[b].op_type() == "Transpose")?;
            let q = crate::ops::transpose_perm(&nodes[back], p.len()).ok()?;
            if (0..p.len()).any(|k| p[q[k]] != k) {
                return None;
            }
            chain.push(back);
            p[axis]
        }
        None if inputs.len() == 3 => axis,
        None => return None,
    };
    // every intermediate value is read only inside the chain (sole_reader above), and
    // the chain runs in graph order
    let mut sorted = chain.clone();
    sorted.sort_unstable();
    (sorted == chain).then_some(Fusion {
        inputs,
        nodes: chain,
        kind: Kind::Affine { axis },
    })
}
