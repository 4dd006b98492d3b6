//! Shape vectors (Reshape targets, Resize sizes) after slicing.
//!
//! Exporters rarely write a shape vector as one literal: TorchScript and dynamo assemble it
//! with `Concat` from literal pieces and pieces computed from `Shape` of some value
//! (`Unsqueeze(Gather(Shape(x), 2) / heads)` for an attention head split). Once channels are
//! removed, a piece computed from a pruned channel count computes a different number, which
//! is right only when the consumer's own channels were pruned the same way. So each
//! element's provenance is traced back to the `(value, axis)` dims it reads
//! ([`dim_reads`]), and a piece that reads a pruned channel count is replaced by the literal
//! that the consumer's new output shape needs. Channel counts are static, so the literal
//! keeps the model valid at every input length; a piece that mixes a pruned channel count
//! with a dim that follows the length (`C * T`) cannot be written as a literal and is an
//! error (a batch of 1 times the heads, `B * H`, can).
use super::{layout::slice_params, ConstEdit, Sliced};
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::onnx::{attr_i, NodeProto, Tensor};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

/// What one element of a folded int64 vector is computed from.
#[derive(Clone, Debug, Default)]
pub(crate) struct Read {
    /// The dims `(value, axis)` it reads.
    pub dims: BTreeSet<(String, usize)>,
    /// It is one of those dims, copied (no arithmetic on the way).
    pub copy: bool,
}

type Reads = Vec<Read>;

fn konst(n: usize) -> Reads {
    vec![Read::default(); n]
}

/// Deepest producer chain [`dim_reads`] follows.
const MAX_DEPTH: usize = 32;

/// True for an initializer or the output of a `Constant` node.
fn literal(ir: &Ir, v: &str) -> bool {
    ir.is_initializer(v)
        || ir
            .producer
            .get(v)
            .is_some_and(|&p| ir.nodes()[p].op_type() == "Constant")
}

/// For each element of the folded vector `v` (flattened), the input dims it depends on.
/// `None` when `v` is not folded or a producer is not a shape-arithmetic op.
pub(crate) fn dim_reads(ir: &Ir, v: &str) -> Option<Reads> {
    reads(ir, v, 0, &RefCell::new(HashMap::new()))
}

/// [`dim_reads`], each value traced once (`memo`: shape subgraphs share their pieces).
fn reads(
    ir: &Ir,
    v: &str,
    depth: usize,
    memo: &RefCell<HashMap<String, Option<Reads>>>,
) -> Option<Reads> {
    if let Some(r) = memo.borrow().get(v) {
        return r.clone();
    }
    let r = trace(ir, v, depth, memo);
    memo.borrow_mut().insert(v.to_string(), r.clone());
    r
}

fn trace(
    ir: &Ir,
    v: &str,
    depth: usize,
    memo: &RefCell<HashMap<String, Option<Reads>>>,
) -> Option<Reads> {
    let fact = ir.fact(v)?;
    let n = fact.value.as_ref()?.len();
    if literal(ir, v) {
        return Some(konst(n));
    }
    if depth > MAX_DEPTH {
        return None;
    }
    let node = &ir.nodes()[*ir.producer.get(v)?];
    let input = |i: usize| reads(ir, node.input.get(i)?, depth + 1, memo);
    let out = match node.op_type() {
        "Shape" => {
            let x = &node.input[0];
            let r = ir.fact(x)?.rank() as i64;
            let clamp = |a: i64| (if a < 0 { a + r } else { a }).clamp(0, r) as usize;
            let start = clamp(attr_i(node, "start").unwrap_or(0));
            (start..start + n)
                .map(|a| Read {
                    dims: BTreeSet::from([(x.clone(), a)]),
                    copy: true,
                })
                .collect()
        }
        "ConstantOfShape" => konst(n),
        "Identity" | "Cast" | "Squeeze" | "Unsqueeze" | "Reshape" | "Flatten" => input(0)?,
        "Floor" | "Ceil" | "Neg" | "Abs" | "Sqrt" => input(0)?
            .into_iter()
            .map(|r| Read { copy: false, ..r })
            .collect(),
        "Gather" => {
            let data = input(0)?;
            if ir.fact(&node.input[0])?.rank() != 1 {
                return None;
            }
            let idx = ir.fact(&node.input[1])?.value.as_ref()?.to_i64_vec();
            let len = data.len() as i64;
            idx.iter()
                .map(|&i| {
                    data.get((if i < 0 { i + len } else { i }) as usize)
                        .cloned()
                })
                .collect::<Option<_>>()?
        }
        "Slice" => {
            let data = input(0)?;
            let inputs: Vec<_> = node.input.iter().map(|i| ir.fact(i)).collect();
            let params = slice_params(node, &inputs, &[data.len()]).ok()?;
            let &[(_, s, e, step)] = params.as_slice() else {
                return None;
            };
            let mut out = vec![];
            let mut i = s;
            while (step > 0 && i < e) || (step < 0 && i > e) {
                out.push(data[i as usize].clone());
                i += step;
            }
            out
        }
        "Concat" => {
            let mut out = vec![];
            for i in 0..node.input.len() {
                out.extend(input(i)?);
            }
            out
        }
        "Add" | "Sub" | "Mul" | "Div" | "Mod" | "Max" | "Min" => {
            let ins: Vec<Reads> = (0..node.input.len()).map(input).collect::<Option<_>>()?;
            (0..n)
                .map(|e| Read {
                    dims: ins
                        .iter()
                        .flat_map(|r| r.get(if r.len() == 1 { 0 } else { e }))
                        .flat_map(|r| r.dims.iter().cloned())
                        .collect(),
                    copy: false,
                })
                .collect()
        }
        _ => return None,
    };
    (out.len() == n).then_some(out)
}

/// Edits to the shape vector in input `input` of `node` (a Reshape target, Resize sizes)
/// so that it spells out `out`, the node's new output shape.
///
/// The vector is a literal (initializer or `Constant`), a `Concat` of pieces, or computed.
/// A literal element for which `fix(old entry, new dim)` holds gets the new dim. A computed
/// piece follows the new shapes on its own unless one of its elements does arithmetic on a
/// pruned channel count, or copies one where `out` needs another size: then it is replaced
/// by the literal `out` needs ([`computed_piece`]).
///
/// Errors: [`Error::Node`] when a piece is not static, or mixes a pruned channel count with
/// other dims (no literal can replace it).
pub(crate) fn shape_vector_edits(
    node: &NodeProto,
    ir: &Ir,
    input: usize,
    out: &[usize],
    new: &Sliced,
    fix: impl Fn(i64, i64) -> bool,
) -> Result<Vec<ConstEdit>> {
    let Some(v) = node.input.get(input).filter(|v| !v.is_empty()) else {
        return Ok(vec![]);
    };
    let concat = ir
        .producer
        .get(v)
        .map(|&p| &ir.nodes()[p])
        .filter(|p| p.op_type() == "Concat");
    let pieces: Vec<(Option<usize>, &str)> = match concat {
        Some(c) => c
            .input
            .iter()
            .enumerate()
            .map(|(k, p)| (Some(k), p.as_str()))
            .collect(),
        None => vec![(None, v.as_str())],
    };
    let mut edits = vec![];
    let mut at = 0;
    for (via, piece) in pieces {
        let Some(old) = ir
            .fact(piece)
            .and_then(|f| f.value.as_ref())
            .map(|t| t.to_i64_vec())
        else {
            return Err(Error::node(
                node,
                format!("shape piece '{piece}' is not static"),
            ));
        };
        let want = |i: usize| out.get(at + i).map(|&d| d as i64);
        let value = if literal(ir, piece) {
            let mut value = old.clone();
            for (i, e) in value.iter_mut().enumerate() {
                if let Some(d) = want(i).filter(|&d| *e != d && fix(*e, d)) {
                    *e = d;
                }
            }
            (value != old).then_some(value)
        } else {
            computed_piece(node, ir, piece, &old, want, new)?
        };
        if let Some(value) = value {
            edits.push(ConstEdit {
                input,
                via,
                value: Tensor::vec_i64(value),
            });
        }
        at += old.len();
    }
    Ok(edits)
}

/// The literal that replaces computed piece `piece` (old value `old`), or `None` when it
/// computes the dims `want` asks for on its own: an element that reads no pruned dim keeps
/// its old value, and a copy of a pruned dim gets that dim's new size. Otherwise (`C / heads`
/// with `C` pruned, or `E / heads` of an unpruned `E` for pruned heads) the piece becomes a
/// literal, which is valid at every input length only when each dim it reads is static
/// (a channel axis, or one of the same size at another length).
fn computed_piece(
    node: &NodeProto,
    ir: &Ir,
    piece: &str,
    old: &[i64],
    want: impl Fn(usize) -> Option<i64>,
    new: &Sliced,
) -> Result<Option<Vec<i64>>> {
    let Some(reads) = dim_reads(ir, piece) else {
        return Ok(None); // not shape arithmetic we can follow: re-inference checks it
    };
    let new_dim = |(x, a): &(String, usize)| new.of(x).get(*a).map(|&d| d as i64);
    let changed = |d: &(String, usize)| ir.fact(&d.0).map(|f| f.shape[d.1] as i64) != new_dim(d);
    let follows = |i: usize, r: &Read| {
        if !r.dims.iter().any(changed) {
            return want(i).is_none_or(|w| w == old[i]);
        }
        r.copy && r.dims.len() == 1 && r.dims.iter().next().and_then(new_dim) == want(i)
    };
    if reads.iter().enumerate().all(|(i, r)| follows(i, r)) {
        return Ok(None);
    }
    let mut value = old.to_vec();
    for (i, r) in reads.iter().enumerate() {
        if let Some(d) = r.dims.iter().find(|d| !(new.is_static)(&d.0, d.1)) {
            return Err(Error::node(
                node,
                format!(
                    "shape piece '{piece}' must change with the removed channels but also reads \
                     dim {} of '{}', which changes with the input length; it cannot be written \
                     as a literal",
                    d.1, d.0
                ),
            ));
        }
        if !r.dims.is_empty() {
            value[i] = want(i).ok_or_else(|| {
                Error::node(
                    node,
                    format!("shape piece '{piece}' is longer than the shape"),
                )
            })?;
        }
    }
    Ok(Some(value))
}
