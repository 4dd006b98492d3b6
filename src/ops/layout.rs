//! Layout ops: Reshape, Transpose, Squeeze/Unsqueeze, Slice, Concat, Pad, Expand, Tile.
//!
//! Channel index maps: Transpose moves an axis; Squeeze/Unsqueeze shift it; Reshape keeps
//! it when the axis survives as one dim of the same size (unit dims added or removed).
//! Concat along a channel axis is an offset map: the output's channels are the parts'
//! channels in order ([`super::Links::concat`]). A Reshape that merges `[.., D, C]` into
//! `D*C` (or splits it) makes the wide axis D copies of C; one that moves the inner factor
//! of an axis into the next (`[C, T] -> [G, (C/G) T]`, GroupNorm's layout) makes each of
//! the G units a run of C/G channels ([`super::Links::expand`]). Other merges and splits, a
//! Slice along a channel axis and a Pad of it freeze the axis.
use super::{
    ce, cin, foldable, in_shape, need, need_const, norm_axis, out_shape, ConstEdit, Links, OpRule,
    Sliced,
};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr_i, attr_ints, ModelProto, NodeProto, Tensor};
use candle_core::Tensor as CTensor;
use ndarray::{Axis, IxDyn};

pub struct Reshape;
pub struct Transpose;
pub struct SqueezeUnsqueeze;
pub struct Slice;
pub struct Concat;
pub struct Pad;
pub struct Expand;
pub struct Tile;

fn reshape_tensor(node: &NodeProto, t: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let e = |e: ndarray::ShapeError| Error::node(node, e.to_string());
    Ok(match t {
        Tensor::F32(a) => Tensor::F32(
            a.as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(shape))
                .map_err(e)?,
        ),
        Tensor::I64(a) => Tensor::I64(
            a.as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(shape))
                .map_err(e)?,
        ),
    })
}

/// Resolves a Reshape target (`0` copies, `-1` infers) against the input shape.
fn resolve_target(node: &NodeProto, x: &[usize], target: &[i64]) -> Result<Vec<usize>> {
    let allowzero = attr_i(node, "allowzero").unwrap_or(0) != 0;
    let total: usize = x.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            0 if !allowzero => out.push(
                *x.get(i)
                    .ok_or_else(|| Error::node(node, "0 in target beyond input rank"))?,
            ),
            -1 => {
                infer_at = Some(i);
                out.push(1);
            }
            t if t >= 0 => out.push(t as usize),
            t => return Err(Error::node(node, format!("invalid target dim {t}"))),
        }
    }
    let known: usize = out
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::node(node, format!("target {target:?} overflows")))?;
    if let Some(i) = infer_at {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(Error::node(
                node,
                format!("cannot reshape {x:?} to {target:?}"),
            ));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(Error::node(
            node,
            format!("cannot reshape {x:?} ({total} elements) to {target:?}"),
        ));
    }
    Ok(out)
}

/// For a Reshape of a batch-1 export, its constant `target` with the batch axis made to
/// follow the input: a literal `1` at axis 0 becomes `0` (ONNX: copy the input's axis 0),
/// so that the node keeps batch items apart at any batch size. `None` when there is nothing
/// to change (axis 0 is not a literal 1) or `0` cannot copy (`allowzero = 1`). Whether the
/// input's axis 0 is the batch axis is for the caller to check, by running the graph.
pub fn batch_following_target(node: &NodeProto, target: &[i64]) -> Option<Vec<i64>> {
    let allowzero = attr_i(node, "allowzero").unwrap_or(0) != 0;
    (!allowzero && target.first() == Some(&1)).then(|| {
        let mut t = target.to_vec();
        t[0] = 0;
        t
    })
}

/// `model` rewritten for `batch` items along axis 0 of its first input: axis 0 declared
/// `batch`, and each Reshape whose constant target holds the batch of 1 as a literal made
/// to copy axis 0 ([`batch_following_target`]); intermediate and output shapes dropped.
/// Whether the result keeps items apart is for callers to check by running it
/// ([`crate::learn::batch::check`], `bench`). Batch 1 returns the model as it is.
///
/// Errors: a model without a graph or input, or a first input whose axis 0 is declared
/// with another fixed size than 1 or `batch`.
pub fn widen_batch(model: &ModelProto, batch: usize) -> Result<ModelProto> {
    use crate::onnx::pb::tensor_shape_proto::dimension::Value;
    if batch <= 1 {
        return Ok(model.clone());
    }
    let mut m = model.clone();
    let g = m
        .graph
        .as_mut()
        .ok_or_else(|| Error::Graph("model has no graph".into()))?;
    let input = g
        .input
        .first_mut()
        .ok_or_else(|| Error::Graph("model has no input".into()))?;
    let name = input.name().to_string();
    let dims = crate::onnx::dims_mut(input)
        .and_then(|d| d.first_mut())
        .ok_or_else(|| Error::Graph(format!("input '{name}' has no declared axis 0")))?;
    match dims.value {
        Some(Value::DimValue(n)) if n != 1 && n != batch as i64 => {
            return Err(Error::Graph(format!(
                "input '{name}' is declared with batch {n}: cannot train at batch {batch}"
            )))
        }
        _ => dims.value = Some(Value::DimValue(batch as i64)),
    }
    // Reshape targets that hold the batch of 1 as a literal
    let inits: std::collections::HashMap<String, usize> = g
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name().to_string(), i))
        .collect();
    let mut added: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut new_inits = vec![];
    for node in g.node.iter_mut().filter(|n| n.op_type() == "Reshape") {
        let Some(&k) = node.input.get(1).and_then(|t| inits.get(t)) else {
            continue;
        };
        let Tensor::I64(t) = crate::onnx::tensor_from_proto(&g.initializer[k])? else {
            continue;
        };
        let target: Vec<i64> = t.iter().copied().collect();
        let Some(new) = batch_following_target(node, &target) else {
            continue;
        };
        let old = node.input[1].clone();
        let renamed = added.entry(old.clone()).or_insert_with(|| {
            let name = format!("{old}.batch");
            new_inits.push(crate::onnx::i64_initializer(&name, new));
            name
        });
        node.input[1] = renamed.clone();
    }
    g.initializer.extend(new_inits);
    // the outputs' and intermediate values' declared shapes were for batch 1
    for o in g.output.iter_mut() {
        if let Some(crate::onnx::pb::type_proto::Value::TensorType(t)) =
            o.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.shape = None;
        }
    }
    g.value_info.clear();
    Ok(m)
}

/// How a reshape maps the non-unit axes of its input to those of its output: runs of
/// axes whose products match, in order.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct AxisMap {
    /// (input axis, output axis): one axis kept as it is.
    pub kept: Vec<(usize, usize)>,
    /// (input axes, output axis): input axes merged into one, row-major.
    pub merged: Vec<(Vec<usize>, usize)>,
    /// (input axis, output axes): one input axis split into several.
    pub split: Vec<(usize, Vec<usize>)>,
    /// (whole axis, whole axis is the input's, unit axis, width): two axes `[A, B]` on one
    /// side and `[A / k, k B]` on the other (k > 1): unit `i` of the `A / k` axis is the run
    /// `i k .. (i + 1) k` of the `A` axis; the `B` and `k B` axes are in `bad_x`/`bad_y`.
    pub grouped: Vec<(usize, bool, usize, usize)>,
    /// Input and output axes in a many-to-many run (or left over).
    pub bad_x: Vec<usize>,
    pub bad_y: Vec<usize>,
}

/// The [`AxisMap`] of a reshape from `x` to `y`.
pub(crate) fn reshape_axis_map(x: &[usize], y: &[usize]) -> AxisMap {
    let xs: Vec<usize> = (0..x.len()).filter(|&i| x[i] != 1).collect();
    let ys: Vec<usize> = (0..y.len()).filter(|&i| y[i] != 1).collect();
    let (mut i, mut j) = (0, 0);
    let mut m = AxisMap::default();
    while i < xs.len() && j < ys.len() {
        let (si, sj) = (i, j);
        let (mut px, mut py) = (x[xs[i]], y[ys[j]]);
        i += 1;
        j += 1;
        while px != py {
            if px < py && i < xs.len() {
                px *= x[xs[i]];
                i += 1;
            } else if py < px && j < ys.len() {
                py *= y[ys[j]];
                j += 1;
            } else {
                break;
            }
        }
        // [A, B] <-> [A / k, k B]: runs of k channels of A per unit
        let grouped = |a: &[usize], b: &[usize]| {
            a.len() == 2
                && b.len() == 2
                && a[0] > b[0]
                && a[0].is_multiple_of(b[0])
                && b[1] == a[0] / b[0] * a[1]
        };
        let (xr, yr): (Vec<usize>, Vec<usize>) = (
            xs[si..i].iter().map(|&a| x[a]).collect(),
            ys[sj..j].iter().map(|&b| y[b]).collect(),
        );
        match (i - si, j - sj) {
            _ if px == py && grouped(&xr, &yr) => {
                m.grouped.push((xs[si], true, ys[sj], xr[0] / yr[0]));
                m.bad_x.push(xs[si + 1]);
                m.bad_y.push(ys[sj + 1]);
            }
            _ if px == py && grouped(&yr, &xr) => {
                m.grouped.push((ys[sj], false, xs[si], yr[0] / xr[0]));
                m.bad_x.push(xs[si + 1]);
                m.bad_y.push(ys[sj + 1]);
            }
            _ if px != py => {
                m.bad_x.extend(&xs[si..i]);
                m.bad_y.extend(&ys[sj..j]);
            }
            (1, 1) => m.kept.push((xs[si], ys[sj])),
            (_, 1) => m.merged.push((xs[si..i].to_vec(), ys[sj])),
            (1, _) => m.split.push((xs[si], ys[sj..j].to_vec())),
            _ => {
                m.bad_x.extend(&xs[si..i]);
                m.bad_y.extend(&ys[sj..j]);
            }
        }
    }
    m.bad_x.extend(&xs[i.min(xs.len())..]);
    m.bad_y.extend(&ys[j.min(ys.len())..]);
    m
}

/// Most blocks a merged or split channel axis may have: beyond it (a time axis folded
/// into channels) the axis is frozen rather than mapped block by block.
const MAX_BLOCKS: usize = 64;

impl OpRule for Reshape {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        let target = need_const(node, inputs, 1)?.to_i64_vec();
        let shape = resolve_target(node, &x.shape, &target)?;
        let value = match &x.value {
            Some(v) if foldable(Some(x)) => Some(reshape_tensor(node, v, &shape)?),
            _ => None,
        };
        Ok(vec![Fact { shape, value }])
    }

    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let (x, y) = (node.input[0].as_str(), node.output[0].as_str());
        let (Some(xf), Some(yf)) = (ir.fact(x), ir.fact(y)) else {
            return;
        };
        let m = reshape_axis_map(&xf.shape, &yf.shape);
        for (a, b) in m.kept {
            links.link((x, a), (y, b));
        }
        // Merging [.., D, C] into D*C: the merged axis holds D copies of C's channels (a
        // bidirectional RNN's directions, attention heads); splitting is the inverse. One
        // outer axis D indexes the copies (whole heads are pruned along it); several
        // outer axes must stay whole.
        let mut blocks = |outer: &[usize],
                          dims: &[usize],
                          inner: (&str, usize),
                          whole: (&str, usize),
                          v: &str| {
            let n: usize = outer.iter().map(|&a| dims[a]).product();
            if n > MAX_BLOCKS {
                links.freeze(inner, "Reshape folds this axis with many others");
                links.freeze(whole, "Reshape folds this axis with many others");
            } else if let [a] = outer {
                // one outer axis (attention heads): its units are whole blocks
                return links.blocks((v, *a), n, inner, whole);
            } else {
                links.concat(&vec![inner; n], whole);
            }
            for &a in outer {
                links.freeze(
                    (v, a),
                    "Reshape merges or splits this axis with an inner one",
                );
            }
        };
        for (axes, b) in &m.merged {
            let (&inner, outer) = axes.split_last().expect("a merge has axes");
            blocks(outer, &xf.shape, (x, inner), (y, *b), x);
        }
        for (a, axes) in &m.split {
            let (&inner, outer) = axes.split_last().expect("a split has axes");
            blocks(outer, &yf.shape, (y, inner), (x, *a), y);
        }
        for &(whole, in_x, unit, width) in &m.grouped {
            let (w, u) = if in_x { (x, y) } else { (y, x) };
            links.expand((u, unit), width, (w, whole));
        }
        for a in m.bad_x {
            links.freeze((x, a), "Reshape merges or splits this axis");
        }
        for b in m.bad_y {
            links.freeze((y, b), "Reshape merges or splits this axis");
        }
    }

    /// A target that spells out a pruned dim gets the new dim (0 and -1 stay); a piece
    /// computed from a pruned channel count becomes a literal ([`super::shape_vec`]).
    fn patch(&self, node: &mut NodeProto, ir: &Ir, new: &Sliced) -> Result<Vec<ConstEdit>> {
        let out = new.of(&node.output[0]);
        super::shape_vector_edits(node, ir, 1, &out, new, |old, _| old > 0)
    }

    /// To the inferred output shape.
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let y = cin(node, x, 0)?
            .reshape(out_shape(node, ir, 0)?)
            .map_err(ce(node))?;
        Ok(vec![y])
    }
}

/// A Transpose's permutation (reversed axes when `perm` is absent).
pub(crate) fn perm_of(node: &NodeProto, rank: usize) -> Result<Vec<usize>> {
    let perm: Vec<usize> = match attr_ints(node, "perm").filter(|p| !p.is_empty()) {
        Some(p) => p
            .iter()
            .map(|&a| norm_axis(node, a, rank))
            .collect::<Result<_>>()?,
        None => (0..rank).rev().collect(),
    };
    if perm.len() != rank {
        return Err(Error::node(
            node,
            format!("perm {perm:?} does not match rank {rank}"),
        ));
    }
    Ok(perm)
}

impl OpRule for Transpose {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        let perm = perm_of(node, x.rank())?;
        let shape = perm.iter().map(|&p| x.shape[p]).collect();
        let value = match &x.value {
            Some(Tensor::I64(a)) if foldable(Some(x)) => Some(Tensor::I64(
                a.view()
                    .permuted_axes(IxDyn(&perm))
                    .as_standard_layout()
                    .into_owned(),
            )),
            Some(Tensor::F32(a)) if foldable(Some(x)) => Some(Tensor::F32(
                a.view()
                    .permuted_axes(IxDyn(&perm))
                    .as_standard_layout()
                    .into_owned(),
            )),
            _ => None,
        };
        Ok(vec![Fact { shape, value }])
    }
    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let Some(xf) = ir.fact(&node.input[0]) else {
            return;
        };
        let Ok(perm) = perm_of(node, xf.rank()) else {
            return links.freeze_node(node, ir, "bad perm");
        };
        for (i, &p) in perm.iter().enumerate() {
            links.link((&node.input[0], p), (&node.output[0], i));
        }
    }

    fn lower(&self, node: &NodeProto, _ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let t = cin(node, x, 0)?;
        let perm = perm_of(node, t.rank())?;
        Ok(vec![t.permute(perm).map_err(ce(node))?])
    }
}

/// Axes of a Squeeze/Unsqueeze: attribute before opset 13, second input after.
fn squeeze_axes(node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Option<Vec<i64>>> {
    if let Some(a) = attr_ints(node, "axes").filter(|a| !a.is_empty()) {
        return Ok(Some(a));
    }
    match inputs.get(1).copied().flatten() {
        Some(_) => Ok(Some(need_const(node, inputs, 1)?.to_i64_vec())),
        None => Ok(None),
    }
}

/// Output shape and, for each input axis, its output axis (None when squeezed).
fn squeeze_map(
    node: &NodeProto,
    x: &[usize],
    axes: Option<Vec<i64>>,
) -> Result<(Vec<usize>, Vec<Option<usize>>)> {
    if node.op_type() == "Squeeze" {
        let axes: Vec<usize> = match axes {
            Some(a) => a
                .iter()
                .map(|&a| norm_axis(node, a, x.len()))
                .collect::<Result<_>>()?,
            None => (0..x.len()).filter(|&i| x[i] == 1).collect(),
        };
        let mut shape = vec![];
        let mut map = vec![];
        for (i, &d) in x.iter().enumerate() {
            if axes.contains(&i) {
                if d != 1 {
                    return Err(Error::node(
                        node,
                        format!("cannot squeeze axis {i} of size {d}"),
                    ));
                }
                map.push(None);
            } else {
                map.push(Some(shape.len()));
                shape.push(d);
            }
        }
        Ok((shape, map))
    } else {
        let axes = axes.ok_or_else(|| Error::node(node, "Unsqueeze without axes"))?;
        let r = x.len() + axes.len();
        let axes: Vec<usize> = axes
            .iter()
            .map(|&a| norm_axis(node, a, r))
            .collect::<Result<_>>()?;
        let mut shape = vec![];
        let mut map = vec![];
        let mut k = 0;
        for o in 0..r {
            if axes.contains(&o) {
                shape.push(1);
            } else {
                map.push(Some(o));
                shape.push(x[k]);
                k += 1;
            }
        }
        Ok((shape, map))
    }
}

impl OpRule for SqueezeUnsqueeze {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        let (shape, _) = squeeze_map(node, &x.shape, squeeze_axes(node, inputs)?)?;
        let value = match &x.value {
            Some(v) if foldable(Some(x)) => Some(reshape_tensor(node, v, &shape)?),
            _ => None,
        };
        Ok(vec![Fact { shape, value }])
    }
    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let ins: Vec<Option<&Fact>> = node.input.iter().map(|n| ir.fact(n)).collect();
        let Some(x) = ins[0] else { return };
        let Ok(axes) = squeeze_axes(node, &ins) else {
            return links.freeze_node(node, ir, "dynamic axes");
        };
        let Ok((_, map)) = squeeze_map(node, &x.shape, axes) else {
            return links.freeze_node(node, ir, "bad axes");
        };
        for (a, o) in map.iter().enumerate() {
            if let Some(o) = o {
                links.link((&node.input[0], a), (&node.output[0], *o));
            }
        }
    }

    /// To the inferred output shape.
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let y = cin(node, x, 0)?
            .reshape(out_shape(node, ir, 0)?)
            .map_err(ce(node))?;
        Ok(vec![y])
    }
}

/// Per-axis (start, end, step) of a Slice, normalised and clamped (ONNX semantics).
pub(crate) fn slice_params(
    node: &NodeProto,
    inputs: &[Option<&Fact>],
    x: &[usize],
) -> Result<Vec<(usize, i64, i64, i64)>> {
    let (starts, ends, axes, steps) = if node.input.len() < 3 && attr_ints(node, "starts").is_some()
    {
        (
            attr_ints(node, "starts").unwrap_or_default(),
            attr_ints(node, "ends").unwrap_or_default(),
            attr_ints(node, "axes"),
            None,
        )
    } else {
        let opt = |i: usize| -> Result<Option<Vec<i64>>> {
            match inputs.get(i).copied().flatten() {
                Some(_) => Ok(Some(need_const(node, inputs, i)?.to_i64_vec())),
                None => Ok(None),
            }
        };
        (
            need_const(node, inputs, 1)?.to_i64_vec(),
            need_const(node, inputs, 2)?.to_i64_vec(),
            opt(3)?,
            opt(4)?,
        )
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    let mut out = vec![];
    for k in 0..starts.len() {
        let a = norm_axis(node, axes[k], x.len())?;
        let d = x[a] as i64;
        let step = steps[k];
        if step == 0 {
            return Err(Error::node(node, "Slice step 0"));
        }
        let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
        let (s, e) = if step > 0 {
            (norm(starts[k]).clamp(0, d), norm(ends[k]).clamp(0, d))
        } else {
            (
                norm(starts[k]).clamp(0, d - 1),
                norm(ends[k]).clamp(-1, d - 1),
            )
        };
        out.push((a, s, e, step));
    }
    Ok(out)
}

/// The facts of a node's inputs (`None` for an omitted one).
fn input_facts<'a>(node: &NodeProto, ir: &'a Ir) -> Vec<Option<&'a Fact>> {
    node.input
        .iter()
        .map(|n| if n.is_empty() { None } else { ir.fact(n) })
        .collect()
}

/// The Slices of `x` that partition its axis `axis` into contiguous runs (a packed q/k/v
/// projection `[3E]` split by three Slices): `(node index, start, end)` by start, when
/// at least two Slices read `x` as data, each cuts only `axis` with step 1 and constant
/// bounds (input form, opset >= 10), and together they cover it exactly once. The parts
/// are then a concatenation whose whole is `x` along `axis`, like a Split's outputs.
fn slice_partition(ir: &Ir, x: &str, axis: usize) -> Option<Vec<(usize, i64, i64)>> {
    let xs = ir.fact(x)?.shape.clone();
    let mut parts = vec![];
    for &(ni, pos) in ir.consumers.get(x)? {
        let n = &ir.nodes()[ni];
        if n.op_type() != "Slice" || pos != 0 {
            continue;
        }
        if n.input.len() < 3 {
            return None; // attribute form: nothing to patch in place
        }
        let params = slice_params(n, &input_facts(n, ir), &xs).ok()?;
        let mut here = None;
        for &(a, s, e, step) in &params {
            if a == axis && step == 1 {
                here = Some((s, e));
            } else if !(s == 0 && e == xs[a] as i64 && step == 1) {
                return None;
            }
        }
        let (s, e) = here?;
        parts.push((ni, s, e));
    }
    parts.sort_by_key(|p| p.1);
    let mut at = 0;
    for p in &parts {
        if p.1 != at || p.2 <= p.1 {
            return None;
        }
        at = p.2;
    }
    (parts.len() >= 2 && at == xs[axis] as i64).then_some(parts)
}

impl OpRule for Slice {
    /// Bounds that follow the pruned parts of a partition ([`slice_partition`]): a part
    /// starts after the kept channels of the parts before it.
    fn patch(&self, node: &mut NodeProto, ir: &Ir, new: &Sliced) -> Result<Vec<ConstEdit>> {
        let Some(x) = ir.fact(&node.input[0]) else {
            return Ok(vec![]);
        };
        let ins = input_facts(node, ir);
        let Ok(params) = slice_params(node, &ins, &x.shape) else {
            return Ok(vec![]);
        };
        let mut edits = vec![];
        for (k, &(a, _, _, _)) in params.iter().enumerate() {
            if !(new.is_channel)(&node.input[0], a) {
                continue;
            }
            let Some(parts) = slice_partition(ir, &node.input[0], a) else {
                continue;
            };
            let kept = |ni: usize| new.of(&ir.nodes()[ni].output[0])[a] as i64;
            let mut start = 0;
            for &(ni, _, _) in &parts {
                if ir.nodes()[ni].output[0] == node.output[0] {
                    break;
                }
                start += kept(ni);
            }
            let end = start + new.of(&node.output[0])[a] as i64;
            for (input, v) in [(1, start), (2, end)] {
                let Some(mut vals) = ins[input]
                    .and_then(|f| f.value.as_ref())
                    .map(|t| t.to_i64_vec())
                else {
                    return Err(Error::node(node, "Slice bounds are not constant"));
                };
                vals[k] = v;
                edits.push(ConstEdit {
                    input,
                    via: None,
                    value: Tensor::vec_i64(vals),
                });
            }
        }
        Ok(edits)
    }

    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        let params = slice_params(node, inputs, &x.shape)?;
        let mut shape = x.shape.clone();
        let mut value = x.value.clone().filter(|_| foldable(Some(x)));
        for &(a, s, e, step) in &params {
            let n = if step > 0 {
                ((e - s).max(0) as u64).div_ceil(step as u64) as i64
            } else {
                ((s - e).max(0) as u64).div_ceil((-step) as u64) as i64
            };
            shape[a] = n as usize;
            if let Some(v) = value.as_mut() {
                let idx: Vec<usize> = (0..n).map(|i| (s + i * step) as usize).collect();
                *v = v.select(a, &idx);
            }
        }
        Ok(vec![Fact { shape, value }])
    }
    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let ins: Vec<Option<&Fact>> = node
            .input
            .iter()
            .map(|n| if n.is_empty() { None } else { ir.fact(n) })
            .collect();
        let (Some(x), Some(y)) = (ins[0], ir.fact(&node.output[0])) else {
            return;
        };
        let Ok(params) = slice_params(node, &ins, &x.shape) else {
            return links.freeze_node(node, ir, "dynamic Slice");
        };
        for a in 0..x.rank() {
            let full = params
                .iter()
                .find(|p| p.0 == a)
                .map(|p| y.shape[a] == x.shape[a] && p.3 == 1)
                .unwrap_or(true);
            if full {
                links.link((&node.input[0], a), (&node.output[0], a));
                continue;
            }
            match slice_partition(ir, &node.input[0], a) {
                // one of a partition: the first part declares the concatenation
                Some(parts) => {
                    if ir.nodes()[parts[0].0].output[0] == node.output[0] {
                        let outs: Vec<(&str, usize)> = parts
                            .iter()
                            .map(|&(ni, _, _)| (ir.nodes()[ni].output[0].as_str(), a))
                            .collect();
                        links.concat(&outs, (&node.input[0], a));
                    }
                }
                None => links.pass_or_freeze(node, a, false, "Slice along the axis"),
            }
        }
    }

    /// Unit steps (`narrow`); other steps gather their indices.
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let ins: Vec<Option<&Fact>> = node
            .input
            .iter()
            .map(|n| if n.is_empty() { None } else { ir.fact(n) })
            .collect();
        let params = slice_params(node, &ins, &in_shape(node, ir, 0)?)?;
        let out = out_shape(node, ir, 0)?;
        let mut t = cin(node, x, 0)?.clone();
        for &(a, s, _, step) in &params {
            t = if step == 1 {
                t.narrow(a, s as usize, out[a])
            } else {
                let idx: Vec<u32> = (0..out[a] as i64).map(|i| (s + i * step) as u32).collect();
                CTensor::new(idx, t.device()).and_then(|idx| t.index_select(&idx, a))
            }
            .map_err(&e)?;
        }
        Ok(vec![t])
    }
}

impl OpRule for Concat {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let first = need(node, inputs, 0)?;
        let axis = norm_axis(node, attr_i(node, "axis").unwrap_or(0), first.rank())?;
        let mut shape = first.shape.clone();
        shape[axis] = 0;
        for f in inputs.iter().flatten() {
            if f.rank() != first.rank() {
                return Err(Error::node(node, "Concat inputs differ in rank"));
            }
            shape[axis] += f.shape[axis];
        }
        let mut value = None;
        if inputs.iter().all(|f| foldable(*f)) {
            let vals: Vec<&Tensor> = inputs
                .iter()
                .flatten()
                .filter_map(|f| f.value.as_ref())
                .collect();
            if vals.iter().all(|v| matches!(v, Tensor::I64(_))) {
                let views: Vec<_> = vals
                    .iter()
                    .filter_map(|v| v.as_i64())
                    .map(|a| a.view())
                    .collect();
                value = ndarray::concatenate(Axis(axis), &views)
                    .ok()
                    .map(Tensor::I64);
            } else if vals.iter().all(|v| matches!(v, Tensor::F32(_))) {
                let views: Vec<_> = vals
                    .iter()
                    .filter_map(|v| v.as_f32())
                    .map(|a| a.view())
                    .collect();
                value = ndarray::concatenate(Axis(axis), &views)
                    .ok()
                    .map(Tensor::F32);
            }
        }
        Ok(vec![Fact { shape, value }])
    }
    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let Some(y) = ir.fact(&node.output[0]) else {
            return;
        };
        let Ok(axis) = norm_axis(node, attr_i(node, "axis").unwrap_or(0), y.rank()) else {
            return;
        };
        let inputs: Vec<&str> = node
            .input
            .iter()
            .filter(|i| !i.is_empty())
            .map(String::as_str)
            .collect();
        for inp in &inputs {
            for a in (0..y.rank()).filter(|&a| a != axis) {
                links.link((inp, a), (&node.output[0], a));
            }
        }
        let parts: Vec<(&str, usize)> = inputs.iter().map(|&i| (i, axis)).collect();
        links.concat(&parts, (&node.output[0], axis));
    }

    fn lower(&self, node: &NodeProto, _ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let parts: Vec<&CTensor> = x.iter().flatten().collect();
        let rank = parts.first().map(|t| t.rank()).unwrap_or(1);
        let axis = norm_axis(node, attr_i(node, "axis").unwrap_or(0), rank)?;
        Ok(vec![CTensor::cat(&parts, axis).map_err(ce(node))?])
    }
}

fn pads_of(node: &NodeProto, inputs: &[Option<&Fact>], rank: usize) -> Result<Vec<i64>> {
    let pads = match attr_ints(node, "pads").filter(|p| !p.is_empty()) {
        Some(p) => p,
        None => need_const(node, inputs, 1)?.to_i64_vec(),
    };
    let axes: Option<Vec<usize>> = match inputs.get(3).copied().flatten() {
        Some(_) => Some(
            need_const(node, inputs, 3)?
                .to_i64_vec()
                .iter()
                .map(|&a| norm_axis(node, a, rank))
                .collect::<Result<_>>()?,
        ),
        None => None,
    };
    let mut full = vec![0i64; 2 * rank];
    match axes {
        Some(ax) => {
            for (k, &a) in ax.iter().enumerate() {
                full[a] = pads[k];
                full[rank + a] = pads[ax.len() + k];
            }
        }
        None if pads.len() == 2 * rank => full = pads,
        None => {
            return Err(Error::node(
                node,
                format!("{} pads for rank {rank}", pads.len()),
            ))
        }
    }
    Ok(full)
}

impl OpRule for Pad {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        let pads = pads_of(node, inputs, x.rank())?;
        let r = x.rank();
        let shape = (0..r)
            .map(|a| {
                let d = x.shape[a] as i64 + pads[a] + pads[r + a];
                usize::try_from(d).map_err(|_| Error::node(node, "negative padded size"))
            })
            .collect::<Result<_>>()?;
        Ok(vec![Fact::shape(shape)])
    }
    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let ins: Vec<Option<&Fact>> = node
            .input
            .iter()
            .map(|n| if n.is_empty() { None } else { ir.fact(n) })
            .collect();
        let Some(x) = ins[0] else { return };
        let Ok(pads) = pads_of(node, &ins, x.rank()) else {
            return links.freeze_node(node, ir, "dynamic pads");
        };
        let r = x.rank();
        for a in 0..r {
            links.pass_or_freeze(
                node,
                a,
                pads[a] == 0 && pads[r + a] == 0,
                "Pad along the axis",
            );
        }
    }

    /// Constant mode with value 0; negative pads crop.
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let mode = crate::onnx::attr_s(node, "mode").unwrap_or_else(|| "constant".into());
        let nonzero = node
            .input
            .get(2)
            .filter(|v| !v.is_empty())
            .and_then(|v| ir.fact(v))
            .and_then(|f| f.value.as_ref())
            .map(|v| match v {
                Tensor::F32(a) => a.iter().any(|&x| x != 0.0),
                Tensor::I64(a) => a.iter().any(|&x| x != 0),
            })
            .unwrap_or(false);
        if mode != "constant" || nonzero {
            return Err(Error::node(
                node,
                "Candle lowering covers constant zero Pad only",
            ));
        }
        let ins: Vec<Option<&Fact>> = node
            .input
            .iter()
            .map(|n| if n.is_empty() { None } else { ir.fact(n) })
            .collect();
        let mut t = cin(node, x, 0)?.clone();
        let r = t.rank();
        let pads = pads_of(node, &ins, r)?;
        for a in 0..r {
            let (b, en) = (pads[a], pads[r + a]);
            if b < 0 || en < 0 {
                let len = t.dim(a).map_err(&e)? as i64;
                let start = (-b).max(0);
                let stop = len - (-en).max(0);
                t = t
                    .narrow(a, start as usize, (stop - start) as usize)
                    .map_err(&e)?;
            }
            if b > 0 || en > 0 {
                t = t
                    .pad_with_zeros(a, b.max(0) as usize, en.max(0) as usize)
                    .map_err(&e)?;
            }
        }
        Ok(vec![t])
    }
}

impl OpRule for Expand {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        let target: Vec<usize> = need_const(node, inputs, 1)?
            .to_i64_vec()
            .iter()
            .map(|&d| d.max(0) as usize)
            .collect();
        let shape = super::broadcast(node, &[&x.shape, &target])?;
        let value = match &x.value {
            Some(Tensor::I64(a)) if shape.iter().product::<usize>() <= crate::ir::FOLD_LIMIT => a
                .broadcast(IxDyn(&shape))
                .map(|b| Tensor::I64(b.to_owned())),
            _ => None,
        };
        Ok(vec![Fact { shape, value }])
    }
    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let (Some(x), Some(y)) = (ir.fact(&node.input[0]), ir.fact(&node.output[0])) else {
            return;
        };
        let off = y.rank() - x.rank();
        for a in 0..x.rank() {
            if x.shape[a] > 1 {
                links.link((&node.input[0], a), (&node.output[0], off + a));
            }
        }
        for b in 0..y.rank() {
            if b < off || x.shape[b - off] == 1 && y.shape[b] > 1 {
                links.freeze((&node.output[0], b), "Expand broadcasts this axis");
            }
        }
    }

    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let y = cin(node, x, 0)?
            .broadcast_as(out_shape(node, ir, 0)?)
            .and_then(|t| t.contiguous())
            .map_err(ce(node))?;
        Ok(vec![y])
    }
}

/// `Tile(x, repeats)`: axis `a` of the output is `repeats[a]` copies of axis `a` of `x`.
/// An axis repeated once passes its channels through; a repeated channel axis is the
/// concatenation of its copies (pruned alike in each); a constant `x` folds.
impl OpRule for Tile {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        let reps = need_const(node, inputs, 1)?.to_i64_vec();
        if reps.len() != x.rank() || reps.iter().any(|&r| r < 0) {
            return Err(Error::node(
                node,
                format!("repeats {reps:?} do not fit an input of rank {}", x.rank()),
            ));
        }
        let shape: Vec<usize> = x
            .shape
            .iter()
            .zip(&reps)
            .map(|(&d, &r)| d * r as usize)
            .collect();
        let tile = |a: &ndarray::ArrayD<i64>| -> Option<ndarray::ArrayD<i64>> {
            let mut t = a.clone();
            for (ax, &r) in reps.iter().enumerate() {
                let copies: Vec<_> = (0..r).map(|_| t.view()).collect();
                t = ndarray::concatenate(Axis(ax), &copies).ok()?;
            }
            Some(t)
        };
        let value = match &x.value {
            Some(Tensor::I64(a)) if shape.iter().product::<usize>() <= crate::ir::FOLD_LIMIT => {
                tile(a).map(Tensor::I64)
            }
            _ => None,
        };
        Ok(vec![Fact { shape, value }])
    }

    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let (x, y) = (node.input[0].as_str(), node.output[0].as_str());
        let (Some(xf), Some(yf)) = (ir.fact(x), ir.fact(y)) else {
            return;
        };
        for a in 0..xf.rank() {
            let r = yf.shape[a] / xf.shape[a].max(1);
            match r {
                1 => links.link((x, a), (y, a)),
                r if r <= MAX_BLOCKS && xf.shape[a] > 1 => links.concat(&vec![(x, a); r], (y, a)),
                _ => links.freeze((y, a), "Tile repeats this axis"),
            }
        }
    }

    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let t = cin(node, x, 0)?;
        let (xs, ys) = (in_shape(node, ir, 0)?, out_shape(node, ir, 0)?);
        let reps: Vec<usize> = xs.iter().zip(&ys).map(|(&a, &b)| b / a.max(1)).collect();
        Ok(vec![t.repeat(reps.as_slice()).map_err(ce(node))?])
    }
}
