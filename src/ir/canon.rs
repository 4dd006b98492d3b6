//! Canonical forms: exporter patterns rewritten, before analysis, into the forms the op
//! rules understand (as tract's declutter passes do). Each rewrite computes the same
//! function. The IR records what it rewrote, and the model written after slicing gets the
//! exporter's forms back ([`restore`]): runtimes fuse those (the ReduceMean form ran 5-14%
//! slower in ORT on the fixtures).
//!
//! - **Decomposed GroupNorm with one group** (torch's `group_norm` export, TorchScript and
//!   dynamo): `Reshape(x, [0|N, 1, -1]) -> InstanceNormalization(scale = [1], bias = [0]) ->
//!   Reshape(., Shape(x) or x's static shape)`. Its statistics run over channels merged
//!   with time, which no channel rule can follow through the Reshape. It becomes the ReduceMean form of a
//!   global layer norm over every axis but the batch, whose channel means the gate graph
//!   takes over kept channels ([`crate::ops::Read::Mean`]).
//! - **LayerNormalization** (opset 17): the same over axes `axis..`, then `* scale + bias`.
//!
//! Both become `d = x - ReduceMean(x); y = d / Sqrt(ReduceMean(d * d) + eps)` (population
//! variance, as both ops define it). GroupNorm with more than one group keeps its form: the
//! Reshape rule maps its `[C] -> [G, C/G]` layout so that whole norm groups are pruned
//! ([`crate::ops::Links::expand`]).
//!
//! Two rewrites run first and are kept in the written model, since what they remove
//! computes nothing: an `If` with a constant condition becomes the branch it takes
//! ([`fold_constant_ifs`]), and an `Identity` of an initializer is bypassed
//! ([`bypass_weight_identities`]).
use super::Ir;
use crate::onnx::{
    self, attr_f, attr_i, int_attr, ints_attr, ModelProto, NodeProto, Tensor, TensorProto,
};
use std::collections::{HashMap, HashSet};

/// One recognised pattern: the nodes it replaces and what replaces them.
struct Rewrite {
    /// Node indices removed.
    remove: Vec<usize>,
    /// Inserted before this node (a removed one).
    at: usize,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    /// (index in `remove`, value): that node's input 1 is a literal spelling the value's
    /// static shape (dynamo's back-reshape), rewritten to the shape on [`restore`].
    literal_shape_of: Option<(usize, String)>,
    /// A native GroupNormalization's parameters, re-made on [`restore`].
    group_norm: Option<GroupNormParams>,
}

/// How [`restore`] re-makes a native `GroupNormalization` from its canonical form once
/// channels are removed: `num_groups` from the length of initializer `groups_of`, and
/// (opset-21 form, `[C]` scale and bias) `scale`/`bias` from the canonical `[C, 1, ..]`
/// copies `per_channel`.
#[derive(Clone, Debug)]
struct GroupNormParams {
    groups_of: Option<String>,
    scale: String,
    bias: String,
    per_channel: Option<(String, String)>,
}

/// A rewrite applied to a model, kept so that the exported form can be put back
/// ([`restore`]): runtimes fuse the exporter's own norm forms (LayerNormalization,
/// InstanceNormalization), so the canonical ReduceMean form would run slower.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The exporter's nodes, in graph order.
    original: Vec<NodeProto>,
    /// Names of the canonical nodes and initializers that replaced them.
    nodes: Vec<String>,
    inits: Vec<String>,
    literal_shape_of: Option<(usize, String)>,
    group_norm: Option<GroupNormParams>,
}

/// `model` (a model with `ir`'s node names, such as the slimmed or fine-tuned canonical
/// model) with the exporter's forms that `ir`'s rewrites replaced put back. Shapes spelled
/// as literals follow `ir`'s facts; parameters (LayerNorm scale and bias) are the model's.
pub fn restore(model: &ModelProto, ir: &Ir) -> ModelProto {
    let mut model = model.clone();
    let Some(graph) = model.graph.as_mut() else {
        return model;
    };
    for (k, rw) in ir.rewrites.iter().enumerate() {
        let names: HashSet<&str> = rw.nodes.iter().map(String::as_str).collect();
        let Some(at) = graph.node.iter().position(|n| names.contains(n.name())) else {
            continue;
        };
        let mut original = rw.original.clone();
        if let Some((i, v)) = &rw.literal_shape_of {
            if let (Some(node), Some(f)) = (original.get_mut(*i), ir.fact(v)) {
                let name = format!("{}.sepprune.shape{k}", node.input[1]);
                let shape = f.shape.iter().map(|&d| d as i64).collect();
                graph.initializer.push(onnx::i64_initializer(&name, shape));
                node.input[1] = name;
            }
        }
        if let Some(gn) = &rw.group_norm {
            remake_group_norm(graph, &mut original, gn);
        }
        graph.node.retain(|n| !names.contains(n.name()));
        // their intermediate values' shapes (exporter value_info) may have changed
        let outs: HashSet<String> = original.iter().flat_map(|n| n.output.clone()).collect();
        graph.value_info.retain(|v| !outs.contains(v.name()));
        graph.node.splice(at..at, original);
        let inits: HashSet<&str> = rw.inits.iter().map(String::as_str).collect();
        graph.initializer.retain(|t| !inits.contains(t.name()));
    }
    model
}

/// Sets the restored GroupNormalization's `num_groups`, scale and bias from the canonical
/// form's (sliced) initializers in `graph`.
fn remake_group_norm(
    graph: &mut onnx::GraphProto,
    original: &mut [NodeProto],
    gn: &GroupNormParams,
) {
    let find = |graph: &onnx::GraphProto, name: &str| {
        graph.initializer.iter().find(|t| t.name() == name).cloned()
    };
    if let Some(g) = gn.groups_of.as_deref().and_then(|n| find(graph, n)) {
        let groups = onnx::tensor_from_proto(&g).map(|t| t.len()).unwrap_or(0);
        for n in original
            .iter_mut()
            .filter(|n| n.op_type() == "GroupNormalization")
        {
            onnx::set_attr_i(n, "num_groups", groups as i64);
        }
    }
    if let Some((s, b)) = &gn.per_channel {
        for (canon, name) in [(s, &gn.scale), (b, &gn.bias)] {
            let Some(mut t) = find(graph, canon) else {
                continue;
            };
            t.dims = vec![t.dims.first().copied().unwrap_or(0)];
            t.name = Some(name.clone());
            graph.initializer.retain(|i| i.name() != name);
            graph.initializer.push(t);
        }
    }
}

/// `model` with every `Identity` of an initializer removed, its consumers reading the
/// initializer itself (TorchScript shares an unrolled block's weights this way; a layer
/// whose weight is computed would be frozen). An Identity computes nothing, so this
/// rewrite is not undone in the written model. `None` when there is none.
pub fn bypass_weight_identities(model: &ModelProto) -> Option<ModelProto> {
    let graph = model.graph.as_ref()?;
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();
    let alias: HashMap<String, String> = graph
        .node
        .iter()
        .filter(|n| n.op_type() == "Identity" && n.domain().is_empty())
        .filter_map(|n| {
            let (x, y) = (n.input.first()?, n.output.first()?);
            (inits.contains(x.as_str()) && !outputs.contains(y.as_str()))
                .then(|| (y.clone(), x.clone()))
        })
        .collect();
    if alias.is_empty() {
        return None;
    }
    let mut model = model.clone();
    let graph = model.graph.as_mut()?;
    graph
        .node
        .retain(|n| !(n.op_type() == "Identity" && n.output.iter().any(|o| alias.contains_key(o))));
    // subgraphs (If branches) read the aliases from the enclosing scope too
    fn rename(nodes: &mut [NodeProto], alias: &HashMap<String, String>) {
        for n in nodes {
            for i in &mut n.input {
                if let Some(x) = alias.get(i) {
                    *i = x.clone();
                }
            }
            for a in &mut n.attribute {
                for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                    rename(&mut g.node, alias);
                }
            }
        }
    }
    rename(&mut graph.node, &alias);
    graph.value_info.retain(|v| !alias.contains_key(v.name()));
    Some(model)
}

/// The nodes that read each value (each node once, in graph order).
fn readers(graph: &crate::onnx::GraphProto) -> HashMap<&str, Vec<usize>> {
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        let mut seen = HashSet::new();
        for x in n.input.iter().filter(|x| seen.insert(x.as_str())) {
            readers.entry(x.as_str()).or_default().push(i);
        }
    }
    readers
}

/// `model` with every `ConstantOfShape` read by several nodes cloned, one per reader (the
/// clones read the same shape input and are placed right after the original). A fill is the
/// same for any channels, so sharing it couples nothing real; shared, it couples its readers'
/// channels through its own axes: TorchScript slices the zero initial states of every layer
/// of a stacked LSTM from one `[layers, B, hidden]` fill, which would tie the hidden units of
/// all layers into one channel group. The clones compute the same values, so this rewrite is
/// not undone in the written model. `None` when no fill is shared.
pub fn unshare_fills(model: &ModelProto) -> Option<ModelProto> {
    let graph = model.graph.as_ref()?;
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();
    let readers = readers(graph);
    // (fill node, its output, the readers after the first)
    let shared: Vec<(usize, String, Vec<usize>)> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type() == "ConstantOfShape" && n.domain().is_empty())
        .filter_map(|(i, n)| {
            let y = n.output.first()?;
            let r = readers.get(y.as_str())?;
            (r.len() > 1 && !outputs.contains(y.as_str())).then(|| (i, y.clone(), r[1..].to_vec()))
        })
        .collect();
    if shared.is_empty() {
        return None;
    }
    let mut model = model.clone();
    let graph = model.graph.as_mut()?;
    let mut clones: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    for (fi, y, rest) in shared {
        for (k, &ri) in rest.iter().enumerate() {
            let name = format!("{y}.sepprune.fill{}", k + 1);
            let mut c = graph.node[fi].clone();
            c.name = Some(format!("{}.sepprune.fill{}", graph.node[fi].name(), k + 1));
            c.output = vec![name.clone()];
            for x in graph.node[ri].input.iter_mut().filter(|x| **x == y) {
                *x = name.clone();
            }
            clones.entry(fi).or_default().push(c);
        }
    }
    let old = std::mem::take(&mut graph.node);
    for (i, n) in old.into_iter().enumerate() {
        graph.node.push(n);
        graph.node.extend(clones.remove(&i).unwrap_or_default());
    }
    Some(model)
}

/// `model` with every float initializer of two or more entries, all equal (a zero bias, a
/// unit norm scale), that several nodes read given one copy per reader after the first
/// (`{name}.sepprune.fill{k}`). Exporters store equal tensors once (TorchScript and dynamo
/// deduplicate initializers): a freshly initialised model's zero biases or unit LayerNorm
/// scales then tie the channels of every layer that reads them into one group, though
/// nothing in the computation couples them. The copies hold the same values, so this
/// rewrite is not undone in the written model. `None` when no such tensor is shared.
pub fn unshare_filled_initializers(model: &ModelProto) -> Option<ModelProto> {
    let graph = model.graph.as_ref()?;
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();
    let readers = readers(graph);
    let filled = |t: &crate::onnx::TensorProto| {
        crate::onnx::tensor_from_proto(t).is_ok_and(|v| v.is_filled() && v.len() > 1)
    };
    let shared: Vec<(usize, Vec<usize>)> = graph
        .initializer
        .iter()
        .enumerate()
        .filter(|(_, t)| !outputs.contains(t.name()))
        .filter_map(|(i, t)| {
            let r = readers.get(t.name())?;
            (r.len() > 1 && filled(t)).then(|| (i, r[1..].to_vec()))
        })
        .collect();
    if shared.is_empty() {
        return None;
    }
    let mut model = model.clone();
    let graph = model.graph.as_mut()?;
    for (ti, rest) in shared {
        let name = graph.initializer[ti].name().to_string();
        for (k, &ri) in rest.iter().enumerate() {
            let copy_name = format!("{name}.sepprune.fill{}", k + 1);
            let mut copy = graph.initializer[ti].clone();
            copy.name = Some(copy_name.clone());
            graph.initializer.push(copy);
            for x in graph.node[ri].input.iter_mut().filter(|x| **x == name) {
                *x = copy_name.clone();
            }
        }
    }
    Some(model)
}

/// `ir`'s model with every `Gather` of one constant index from a `Concat` along the same
/// axis, whose parts each have extent 1 there, reading the selected part itself (at index
/// 0, so its output is unchanged). TorchScript's `h_n[-1]` of a stacked LSTM is such a
/// Gather of the Concat of every layer's final state: read through the Concat, it would tie
/// the hidden units of all layers together, though only the last one is used. A Concat left
/// without readers is removed. The selection computes the same values, so this rewrite is
/// not undone in the written model. `None` when there is none.
pub fn select_from_concats(ir: &super::Ir) -> Option<ModelProto> {
    use crate::onnx::{attr_i, Tensor};
    let nodes = ir.nodes();
    // (gather node, selected part)
    let mut picks: Vec<(usize, String)> = vec![];
    for (gi, g) in nodes.iter().enumerate() {
        if g.op_type() != "Gather" || !g.domain().is_empty() || g.input.len() < 2 {
            continue;
        }
        let Some(&ci) = ir.producer.get(&g.input[0]) else {
            continue;
        };
        let c = &nodes[ci];
        let rank = ir.fact(&g.input[0]).map_or(0, |f| f.shape.len()) as i64;
        let norm = |a: i64| if a < 0 { a + rank } else { a };
        if c.op_type() != "Concat" || !c.domain().is_empty() || rank == 0 {
            continue;
        }
        let axis = norm(attr_i(g, "axis").unwrap_or(0));
        if norm(attr_i(c, "axis").unwrap_or(0)) != axis {
            continue;
        }
        let ones = c.input.iter().all(|x| {
            ir.fact(x)
                .is_some_and(|f| f.shape.get(axis as usize) == Some(&1))
        });
        let idx = match ir.fact(&g.input[1]).and_then(|f| f.value.as_ref()) {
            Some(t @ Tensor::I64(_)) if t.len() == 1 => t.to_i64_vec()[0],
            _ => continue,
        };
        let n = c.input.len() as i64;
        let k = if idx < 0 { idx + n } else { idx };
        if ones && (0..n).contains(&k) {
            picks.push((gi, c.input[k as usize].clone()));
        }
    }
    if picks.is_empty() {
        return None;
    }
    let mut model = ir.model.clone();
    let graph = model.graph.as_mut()?;
    for (gi, part) in &picks {
        let idx = &graph.node[*gi].input[1];
        let shape = ir.fact(idx).map(|f| f.shape.clone()).unwrap_or_default();
        let zero = Tensor::I64(ndarray::ArrayD::zeros(ndarray::IxDyn(&shape)));
        let name = format!("{}.sepprune.pick", graph.node[*gi].name());
        let like = TensorProto {
            name: Some(name.clone()),
            ..Default::default()
        };
        graph
            .initializer
            .push(crate::onnx::tensor_to_proto(&zero, &like));
        graph.node[*gi].input[0] = part.clone();
        graph.node[*gi].input[1] = name;
    }
    // Concats and index constants nobody reads any more (the Concat first: it may read
    // a Constant)
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    for op in ["Concat", "Constant"] {
        let read: HashSet<String> = graph.node.iter().flat_map(|n| n.input.clone()).collect();
        graph.node.retain(|n| {
            !(n.op_type() == op
                && n.output
                    .iter()
                    .all(|o| !read.contains(o) && !outputs.contains(o)))
        });
    }
    let read: HashSet<String> = graph.node.iter().flat_map(|n| n.input.clone()).collect();
    let picked: HashSet<String> = picks
        .iter()
        .map(|(gi, _)| ir.nodes()[*gi].input[1].clone())
        .collect();
    graph
        .initializer
        .retain(|t| !picked.contains(t.name()) || read.contains(t.name()));
    Some(model)
}

/// `model` with every `If` whose condition is a constant (an initializer, or a `Constant`
/// node's `value`) replaced by the nodes of the branch it takes, each branch output passed
/// to the If's output through an `Identity`; nested Ifs are folded in turn. The condition
/// does not depend on the input, so the branch not taken never runs: the rewrite is not
/// undone in the written model. An If whose inlined names would collide with the graph's is
/// left as it is (and its channels stay frozen). `None` when nothing was folded.
pub fn fold_constant_ifs(model: &ModelProto) -> Option<ModelProto> {
    let graph = model.graph.as_ref()?;
    let consts: HashMap<String, bool> = graph
        .initializer
        .iter()
        .map(|t| (t.name(), t))
        .chain(
            graph
                .node
                .iter()
                .filter(|n| n.op_type() == "Constant")
                .filter_map(|n| Some((n.output.first()?.as_str(), onnx::attr_t(n, "value")?))),
        )
        .filter_map(|(name, t)| {
            let v = onnx::tensor_from_proto(t).ok()?.to_i64_vec();
            (v.len() == 1).then(|| (name.to_string(), v[0] != 0))
        })
        .collect();
    fold_ifs(model, &|c| consts.get(c).copied())
}

/// `model` with every `If` whose condition `cond` knows replaced by the branch it takes
/// (see [`fold_constant_ifs`]); [`crate::ir::Ir::new`] calls it with the conditions that
/// shape inference folded and that are the same at two input lengths (an exporter's rank
/// or dtype guard), never with one that depends on the length (a padding `T % k`).
pub fn fold_ifs(model: &ModelProto, cond: &dyn Fn(&str) -> Option<bool>) -> Option<ModelProto> {
    let mut model = model.clone();
    let mut folded = false;
    'again: loop {
        let graph = model.graph.as_mut()?;
        let names: HashSet<String> = graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().cloned())
            .chain(graph.initializer.iter().map(|t| t.name().to_string()))
            .chain(graph.input.iter().map(|v| v.name().to_string()))
            .collect();
        for (ni, node) in graph.node.iter().enumerate() {
            if node.op_type() != "If" || !node.domain().is_empty() {
                continue;
            }
            let Some(take) = node.input.first().and_then(|c| cond(c)) else {
                continue;
            };
            let branch = if take { "then_branch" } else { "else_branch" };
            let Some(body) = onnx::attr(node, branch).and_then(|a| a.g.as_ref()) else {
                continue;
            };
            if body.output.len() != node.output.len() {
                continue;
            }
            let inner: Vec<&str> = body
                .node
                .iter()
                .flat_map(|n| n.output.iter().map(String::as_str))
                .chain(body.initializer.iter().map(|t| t.name()))
                .collect();
            if inner.iter().any(|v| !v.is_empty() && names.contains(*v)) {
                continue;
            }
            let prefix = node.name().to_string();
            let mut nodes: Vec<NodeProto> = body
                .node
                .iter()
                .map(|n| {
                    let mut n = n.clone();
                    n.name = Some(format!("{prefix}.{branch}.{}", n.name()));
                    n
                })
                .collect();
            for (o, y) in body.output.iter().zip(&node.output) {
                nodes.push(NodeProto {
                    name: Some(format!("{prefix}.{branch}.out.{y}")),
                    op_type: Some("Identity".into()),
                    input: vec![o.name().to_string()],
                    output: vec![y.clone()],
                    ..Default::default()
                });
            }
            let (inits, infos) = (body.initializer.clone(), body.value_info.clone());
            graph.node.splice(ni..=ni, nodes);
            graph.initializer.extend(inits);
            graph.value_info.extend(infos);
            folded = true;
            continue 'again;
        }
        break;
    }
    folded.then_some(model)
}

/// The rewritten model and what was applied, or `None` when no pattern matched.
pub fn canonicalize(ir: &Ir) -> Option<(ModelProto, Vec<Applied>)> {
    let mut rewrites = vec![];
    let mut taken: HashSet<usize> = HashSet::new();
    for (ni, node) in ir.nodes().iter().enumerate() {
        if taken.contains(&ni) {
            continue;
        }
        let rw = match node.op_type() {
            "Reshape" => group_norm_1(ir, ni),
            "LayerNormalization" => layer_norm(ir, ni),
            "GroupNormalization" => group_norm_native(ir, ni),
            _ => None,
        };
        if let Some(rw) = rw.filter(|rw| rw.remove.iter().all(|i| !taken.contains(i))) {
            taken.extend(rw.remove.iter().copied());
            rewrites.push(rw);
        }
    }
    if rewrites.is_empty() {
        return None;
    }
    let mut model = ir.model.clone();
    let graph = model.graph.as_mut()?;
    let mut insert: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    let mut applied = vec![];
    for rw in rewrites {
        let mut remove = rw.remove.clone();
        remove.sort_unstable();
        applied.push(Applied {
            original: remove.iter().map(|&i| graph.node[i].clone()).collect(),
            nodes: rw.nodes.iter().map(|n| n.name().to_string()).collect(),
            inits: rw.inits.iter().map(|t| t.name().to_string()).collect(),
            group_norm: rw.group_norm.clone(),
            literal_shape_of: rw.literal_shape_of.map(|(i, v)| {
                (
                    remove.iter().position(|&r| r == rw.remove[i]).unwrap_or(i),
                    v,
                )
            }),
        });
        insert.entry(rw.at).or_default().extend(rw.nodes);
        graph.initializer.extend(rw.inits);
    }
    let old = std::mem::take(&mut graph.node);
    for (i, n) in old.into_iter().enumerate() {
        if let Some(new) = insert.remove(&i) {
            graph.node.extend(new);
        }
        if !taken.contains(&i) {
            graph.node.push(n);
        }
    }
    Some((model, applied))
}

/// The single consumer of `value`, when there is exactly one and it is not a graph output.
fn only_consumer(ir: &Ir, value: &str) -> Option<usize> {
    if ir.graph_outputs().iter().any(|o| o == value) {
        return None;
    }
    match ir.consumers.get(value).map(|c| c.as_slice()) {
        Some([(n, _)]) => Some(*n),
        _ => None,
    }
}

fn const_values(ir: &Ir, value: &str) -> Option<Vec<f64>> {
    Some(match ir.fact(value)?.value.as_ref()? {
        Tensor::F32(a) => a.iter().map(|&v| v as f64).collect(),
        t => t.to_i64_vec().iter().map(|&v| v as f64).collect(),
    })
}

/// `Reshape(x, [0|N, 1, -1]) -> InstanceNormalization([1], [0]) -> Reshape(., Shape(x))`,
/// or with x's static shape as the last target.
fn group_norm_1(ir: &Ir, r1: usize) -> Option<Rewrite> {
    let nodes = ir.nodes();
    let reshape = &nodes[r1];
    let x = reshape.input.first()?.clone();
    let rank = ir.fact(&x)?.rank();
    let target = const_values(ir, reshape.input.get(1)?)?;
    if rank < 3 {
        return None;
    }
    let batch = ir.fact(&x)?.shape[0] as f64;
    if target.len() != 3
        || target[1] != 1.0
        || target[2] != -1.0
        || !(target[0] == 0.0 || target[0] == batch)
    {
        return None;
    }
    let inorm = only_consumer(ir, &reshape.output[0])?;
    let n = &nodes[inorm];
    if n.op_type() != "InstanceNormalization" || n.input.first() != Some(&reshape.output[0]) {
        return None;
    }
    let (scale, bias) = (
        const_values(ir, n.input.get(1)?)?,
        const_values(ir, n.input.get(2)?)?,
    );
    if scale != [1.0] || bias != [0.0] {
        return None;
    }
    let r2 = only_consumer(ir, &n.output[0])?;
    let back = &nodes[r2];
    if back.op_type() != "Reshape" || back.input.first() != Some(&n.output[0]) {
        return None;
    }
    // back to x's shape: `Shape(x)` (TorchScript) or x's static shape as a literal (dynamo)
    let target = back.input.get(1)?;
    let mut remove = vec![r1, inorm, r2];
    let mut literal_shape_of = None;
    match ir.producer.get(target).map(|&p| (p, &nodes[p])) {
        Some((p, s)) if s.op_type() == "Shape" => {
            if s.input.first() != Some(&x)
                || attr_i(s, "start").unwrap_or(0) != 0
                || attr_i(s, "end").is_some()
            {
                return None;
            }
            if only_consumer(ir, &s.output[0]) == Some(r2) {
                remove.push(p);
            }
        }
        _ => {
            let want: Vec<f64> = ir.fact(&x)?.shape.iter().map(|&d| d as f64).collect();
            if const_values(ir, target)? != want {
                return None;
            }
            literal_shape_of = Some((2, x.clone()));
        }
    }
    let eps = attr_f(n, "epsilon").unwrap_or(1e-5);
    let axes: Vec<i64> = (1..rank as i64).collect();
    let (nodes, inits) = normalise(ir, &x, &back.output[0], &axes, eps, reshape.name());
    // where the last of them was: the canonical nodes read only x (computed before
    // the first), and anything between them (the InstanceNorm's Constant scale) stays
    // before the exporter's nodes when [`restore`] puts them back
    Some(Rewrite {
        at: r2,
        remove,
        nodes,
        inits,
        literal_shape_of,
        group_norm: None,
    })
}

/// `LayerNormalization(x, scale, bias?)` with only its first output used.
fn layer_norm(ir: &Ir, ni: usize) -> Option<Rewrite> {
    let n = &ir.nodes()[ni];
    if n.output
        .iter()
        .skip(1)
        .any(|o| !o.is_empty() && ir.consumers.contains_key(o))
    {
        return None;
    }
    let x = n.input.first()?.clone();
    let rank = ir.fact(&x)?.rank() as i64;
    let axis = attr_i(n, "axis").unwrap_or(-1);
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(1..rank).contains(&axis) {
        return None;
    }
    let axes: Vec<i64> = (axis..rank).collect();
    let eps = attr_f(n, "epsilon").unwrap_or(1e-5);
    let y = &n.output[0];
    let normed = format!("{y}.sepprune.normed");
    let (mut nodes, inits) = normalise(ir, &x, &normed, &axes, eps, n.name());
    let scaled = format!("{y}.sepprune.scaled");
    let has_bias = n.input.get(2).is_some_and(|b| !b.is_empty());
    let scale_out = if has_bias { scaled.clone() } else { y.clone() };
    nodes.push(op(
        n.name(),
        "Mul",
        vec![normed, n.input[1].clone()],
        &scale_out,
        vec![],
    ));
    if has_bias {
        nodes.push(op(
            n.name(),
            "Add",
            vec![scaled, n.input[2].clone()],
            y,
            vec![],
        ));
    }
    Some(Rewrite {
        at: ni,
        remove: vec![ni],
        nodes,
        inits,
        literal_shape_of: None,
        group_norm: None,
    })
}

/// A native `GroupNormalization(x, scale, bias)` (opset 18: `[G]` scale and bias; opset 21:
/// `[C]`) on `x [N, C, ...]`, in the form torch exports: with one group, the ReduceMean form
/// of [`group_norm_1`]; with G, `Reshape(x, [0, G, -1]) -> InstanceNormalization ->
/// Reshape(., Shape(x))`, whose layout the Reshape rule maps to whole norm groups. A `[C]`
/// scale and bias become `[C, 1, ..]` initializers after it.
fn group_norm_native(ir: &Ir, ni: usize) -> Option<Rewrite> {
    let n = &ir.nodes()[ni];
    let x = n.input.first()?.clone();
    let xs = ir.fact(&x)?.shape.clone();
    let (rank, c) = (xs.len(), *xs.get(1)?);
    let groups = attr_i(n, "num_groups")? as usize;
    let (scale, bias) = (n.input.get(1)?.clone(), n.input.get(2)?.clone());
    let sv = ir
        .initializer(&scale)
        .ok()?
        .as_f32()?
        .iter()
        .copied()
        .collect::<Vec<f32>>();
    let bv = ir
        .initializer(&bias)
        .ok()?
        .as_f32()?
        .iter()
        .copied()
        .collect::<Vec<f32>>();
    if rank < 3 || groups == 0 || c % groups != 0 || sv.len() != bv.len() {
        return None;
    }
    let per_channel = sv.len() == c && (groups != c || ir.opset() >= 21);
    if !per_channel && sv.len() != groups {
        return None;
    }
    let eps = attr_f(n, "epsilon").unwrap_or(1e-5);
    let y = n.output.first()?.clone();
    let v = |s: &str| format!("{y}.sepprune.{s}");
    let mut inits = vec![];
    let mut nodes;
    let mut groups_of = None;
    if groups == 1 {
        let axes: Vec<i64> = (1..rank as i64).collect();
        (nodes, inits) = normalise(ir, &x, &v("normed"), &axes, eps, n.name());
    } else {
        let target = v("groups");
        inits.push(onnx::i64_initializer(&target, vec![0, groups as i64, -1]));
        let (gs, gb) = if per_channel {
            let (gs, gb) = (v("group_scale"), v("group_bias"));
            inits.push(onnx::f32_initializer(&gs, &[groups], vec![1.0; groups]));
            inits.push(onnx::f32_initializer(&gb, &[groups], vec![0.0; groups]));
            (gs, gb)
        } else {
            (scale.clone(), bias.clone())
        };
        groups_of = Some(gs.clone());
        nodes = vec![
            op(
                n.name(),
                "Reshape",
                vec![x.clone(), target],
                &v("grouped"),
                vec![],
            ),
            op(
                n.name(),
                "InstanceNormalization",
                vec![v("grouped"), gs, gb],
                &v("group_normed"),
                vec![onnx::float_attr("epsilon", eps)],
            ),
            op(n.name(), "Shape", vec![x.clone()], &v("shape"), vec![]),
            op(
                n.name(),
                "Reshape",
                vec![v("group_normed"), v("shape")],
                &v("normed"),
                vec![],
            ),
        ];
    }
    let mut dims = vec![1usize; rank - 1];
    dims[0] = sv.len();
    let (s_in, b_in) = if per_channel || groups == 1 {
        let (s1, b1) = (v("scale"), v("bias"));
        inits.push(onnx::f32_initializer(&s1, &dims, sv));
        inits.push(onnx::f32_initializer(&b1, &dims, bv));
        (Some(s1), Some(b1))
    } else {
        (None, None)
    };
    match (&s_in, &b_in) {
        (Some(s1), Some(b1)) => {
            nodes.push(op(
                n.name(),
                "Mul",
                vec![v("normed"), s1.clone()],
                &v("scaled"),
                vec![],
            ));
            nodes.push(op(
                n.name(),
                "Add",
                vec![v("scaled"), b1.clone()],
                &y,
                vec![],
            ));
        }
        _ => nodes.push(op(n.name(), "Identity", vec![v("normed")], &y, vec![])),
    }
    Some(Rewrite {
        at: ni,
        remove: vec![ni],
        nodes,
        inits,
        literal_shape_of: None,
        group_norm: Some(GroupNormParams {
            groups_of,
            scale,
            bias,
            per_channel: s_in.zip(b_in),
        }),
    })
}

fn op(
    prefix: &str,
    op_type: &str,
    input: Vec<String>,
    output: &str,
    attribute: Vec<onnx::AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: Some(format!("{prefix}/sepprune/{op_type}.{output}")),
        op_type: Some(op_type.into()),
        input,
        output: vec![output.to_string()],
        attribute,
        ..Default::default()
    }
}

/// `y = (x - mean) / sqrt(mean((x - mean)^2) + eps)`, means over `axes` (kept dims).
fn normalise(
    ir: &Ir,
    x: &str,
    y: &str,
    axes: &[i64],
    eps: f32,
    prefix: &str,
) -> (Vec<NodeProto>, Vec<TensorProto>) {
    let v = |s: &str| format!("{y}.sepprune.{s}");
    let mut inits = vec![];
    let eps_name = v("eps");
    inits.push(onnx::f32_initializer(&eps_name, &[], vec![eps]));
    // ReduceMean takes its axes as an input from opset 18 on.
    let (axes_in, axes_attr) = if ir.opset() >= 18 {
        let name = v("axes");
        inits.push(onnx::i64_initializer(&name, axes.to_vec()));
        (vec![name], vec![])
    } else {
        (vec![], vec![ints_attr("axes", axes)])
    };
    let mean = |inp: String, out: &str| {
        let mut input = vec![inp];
        input.extend(axes_in.iter().cloned());
        let mut attribute = axes_attr.clone();
        attribute.push(int_attr("keepdims", 1));
        op(prefix, "ReduceMean", input, out, attribute)
    };
    let nodes = vec![
        mean(x.to_string(), &v("mean")),
        op(
            prefix,
            "Sub",
            vec![x.to_string(), v("mean")],
            &v("centred"),
            vec![],
        ),
        op(
            prefix,
            "Mul",
            vec![v("centred"), v("centred")],
            &v("sq"),
            vec![],
        ),
        mean(v("sq"), &v("var")),
        op(
            prefix,
            "Add",
            vec![v("var"), eps_name],
            &v("var_eps"),
            vec![],
        ),
        op(prefix, "Sqrt", vec![v("var_eps")], &v("std"), vec![]),
        op(prefix, "Div", vec![v("centred"), v("std")], y, vec![]),
    ];
    (nodes, inits)
}
