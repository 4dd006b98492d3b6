//! Physical slimming: every initializer member of a masked group is sliced along its axis,
//! each op patches its attributes and constants ([`crate::ops::OpRule::patch`]), value_info
//! dims are updated, and the result is re-inferred and checked against the expected shapes.
use super::Masks;
use crate::analysis::Groups;
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::onnx::{self, pb::tensor_shape_proto::dimension::Value as Dim};
use crate::ops;
use std::collections::HashMap;

/// Shape of `value` once `masks` are applied (its own shape for untouched values).
pub fn pruned_shape(
    ir: &Ir,
    groups: &Groups,
    keep_count: &HashMap<usize, usize>,
    value: &str,
) -> Vec<usize> {
    let mut s = ir.fact(value).map(|f| f.shape.clone()).unwrap_or_default();
    let kept = |g: usize| keep_count.get(&g).copied();
    for (a, d) in s.iter_mut().enumerate() {
        if let Some(k) = groups.slot_count(value, a, &kept) {
            *d = k;
        }
    }
    s
}

/// The slimmed model (a copy of `ir.model` with masked channels removed), already
/// re-inferred and checked at `ir.samples`.
///
/// Errors: [`Error::Masks`] for invalid masks; [`Error::Node`] when the slimmed graph does
/// not infer to the expected shapes (nothing is written by the caller in that case).
pub fn slim(ir: &Ir, groups: &Groups, masks: &Masks) -> Result<Ir> {
    masks.validate(groups)?;
    let keep_count: HashMap<usize, usize> = masks
        .groups
        .iter()
        .map(|(&g, m)| (g, m.keep.len()))
        .collect();
    let new_shape = |v: &str| pruned_shape(ir, groups, &keep_count, v);
    let is_channel =
        |v: &str, a: usize| groups.of(v, a).is_some() || groups.concatenated_of(v, a).is_some();
    // the model at another input length: an axis of the same size there is static (a
    // model that infers at no other length has a fixed length)
    let other = Ir::canonical(ir.model.clone(), ir.samples * 3 / 2 + 1).ok();
    let is_static = |v: &str, a: usize| {
        is_channel(v, a)
            || other.as_ref().is_none_or(|o| {
                let dim = |ir: &Ir| ir.fact(v).and_then(|f| f.shape.get(a).copied());
                dim(o).is_some() && dim(o) == dim(ir)
            })
    };
    let sliced = ops::Sliced {
        shape: &new_shape,
        is_channel: &is_channel,
        is_static: &is_static,
    };
    let mut model = ir.model.clone();
    let graph = model.graph.as_mut().expect("ir has a graph");

    // 1. slice initializers (members of groups, and of concatenations at the parts' offsets)
    let mut cuts: HashMap<&str, Vec<(usize, Vec<usize>)>> = HashMap::new();
    for g in &groups.groups {
        if let Some(keep) = masks.keep(g.id).filter(|k| k.len() < g.size) {
            for (v, a) in &g.params {
                cuts.entry(v.as_str())
                    .or_default()
                    .push((*a, keep.to_vec()));
            }
        }
    }
    let keep_of = |g: usize| masks.keep(g).map(<[usize]>::to_vec);
    for c in &groups.concatenated {
        let keep = groups.part_keep(crate::analysis::groups::Part::Concatenated(c.id), &keep_of);
        if keep.len() < c.size {
            for (v, a) in &c.params {
                cuts.entry(v.as_str()).or_default().push((*a, keep.clone()));
            }
        }
    }
    for (name, list) in &cuts {
        let mut t = ir.initializer(name)?;
        for (axis, keep) in list {
            t = t.select(*axis, keep);
        }
        if let Some(&i) = ir.init_index.get(*name) {
            graph.initializer[i] = onnx::tensor_to_proto(&t, &graph.initializer[i]);
        } else if let Some(&ni) = ir.producer.get(*name) {
            // a Constant node's value
            let attr = graph.node[ni]
                .attribute
                .iter_mut()
                .find(|a| a.name() == "value");
            if let Some(slot) = attr.and_then(|a| a.t.as_mut()) {
                *slot = onnx::tensor_to_proto(&t, slot);
            }
        }
    }

    // 2. per-op patches
    let mut extra = vec![];
    let mut pending: Vec<(usize, onnx::NodeProto)> = vec![];
    let mut clones: std::collections::HashMap<(usize, usize), usize> = Default::default();
    for ni in 0..graph.node.len() {
        // folded nodes compute shapes, except constant tensors that carry channels (a
        // ConstantOfShape initial state)
        let n = &ir.nodes()[ni];
        let carries = |o: &String| {
            groups.by_value.contains_key(o.as_str()) || groups.cat_by_value.contains_key(o.as_str())
        };
        if ir.is_folded(n) && !n.output.iter().any(carries) {
            continue;
        }
        let Some(rule) = ops::rule(&graph.node[ni]) else {
            continue;
        };
        let edits = rule.patch(&mut graph.node[ni], ir, &sliced)?;
        for e in edits {
            if let Some(k) = e.via {
                // A piece of the Concat assembling input `e.input`. A Concat that other
                // nodes share (exporters reuse shape vectors) is cloned for this node first.
                // (a clone made for an earlier piece of this node takes the later ones too)
                let v = ir.nodes()[ni].input[e.input].clone();
                let Some(&p) = ir.producer.get(&v) else {
                    continue;
                };
                let shared = ir.consumers.get(&v).is_some_and(|c| c.len() > 1);
                let ci = match clones.get(&(ni, e.input)) {
                    Some(&ci) => ci,
                    None if shared => {
                        let mut c = graph.node[p].clone();
                        let out = format!("{v}.sepprune.{ni}");
                        c.name = Some(format!("{}.sepprune.{ni}", c.name()));
                        c.output = vec![out.clone()];
                        graph.node[ni].input[e.input] = out;
                        pending.push((p, c));
                        clones.insert((ni, e.input), pending.len() - 1);
                        pending.len() - 1
                    }
                    None => {
                        let name = format!("{}.sepprune.{ni}", graph.node[p].input[k]);
                        extra.push(const_init(&name, &e.value));
                        graph.node[p].input[k] = name;
                        continue;
                    }
                };
                let name = format!("{}.sepprune.{ni}", pending[ci].1.input[k]);
                extra.push(const_init(&name, &e.value));
                pending[ci].1.input[k] = name;
                continue;
            }
            let old = graph.node[ni].input[e.input].clone();
            let single = ir
                .consumers
                .get(&old)
                .map(|c| c.len() == 1)
                .unwrap_or(false);
            match ir.init_index.get(&old) {
                Some(&i) if single => {
                    graph.initializer[i] = onnx::tensor_to_proto(&e.value, &graph.initializer[i])
                }
                _ => {
                    let name = format!("{old}.sepprune.{ni}.{}", e.input);
                    extra.push(const_init(&name, &e.value));
                    graph.node[ni].input[e.input] = name;
                }
            }
        }
    }
    // 2b. Float constants that the IR folded from shapes (an attention scale
    // `1 / sqrt(head_dim)` computed from `Shape(q)`) keep their value where data reads them:
    // the gate graph computes with it, and slicing must not change the function. Only those
    // that are the same at another input length (a `1 / T` must follow the length), or all
    // of them in a model that infers at no other length.
    for ni in 0..ir.nodes().len() {
        if ir.is_folded(&ir.nodes()[ni]) {
            continue;
        }
        for k in 0..graph.node[ni].input.len() {
            let v = graph.node[ni].input[k].clone();
            let Some(value @ onnx::Tensor::F32(_)) = ir.fact(&v).and_then(|f| f.value.as_ref())
            else {
                continue;
            };
            let carries = groups.by_value.contains_key(v.as_str())
                || groups.cat_by_value.contains_key(v.as_str());
            if carries || ir.is_stored_constant(&v) || !ir.producer.contains_key(&v) {
                continue;
            }
            // (a model that infers at no other length has a fixed length)
            let same = other
                .as_ref()
                .is_none_or(|o| o.fact(&v).is_some_and(|f| f.value.as_ref() == Some(value)));
            if !same {
                continue;
            }
            let name = format!("{v}.sepprune.folded");
            if !extra.iter().any(|t| t.name() == name) {
                extra.push(const_init(&name, value));
            }
            graph.node[ni].input[k] = name;
        }
    }

    // clones of shared Concats go right after their original (later ones first)
    pending.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
    for (p, c) in pending {
        graph.node.insert(p + 1, c);
    }
    graph.initializer.extend(extra);

    // 3. value_info dims
    let init_dims: HashMap<String, Vec<usize>> = graph
        .initializer
        .iter()
        .map(|t| {
            (
                t.name().to_string(),
                t.dims.iter().map(|&d| d as usize).collect(),
            )
        })
        .collect();
    for vi in graph.value_info.iter_mut().chain(graph.output.iter_mut()) {
        // initializers (some exporters list them too) as they now are
        let want = match init_dims.get(vi.name()) {
            Some(d) => d.clone(),
            None => new_shape(vi.name()),
        };
        if let Some(onnx::pb::type_proto::Value::TensorType(tt)) =
            vi.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if let Some(shape) = tt.shape.as_mut() {
                for (a, d) in shape.dim.iter_mut().enumerate() {
                    if let (Some(Dim::DimValue(v)), Some(&w)) = (d.value.as_mut(), want.get(a)) {
                        *v = w as i64;
                    }
                }
            }
        }
    }

    // 4. validate by re-inference
    let mut check = Ir::canonical(model, ir.samples)?;
    check.rewrites = ir.rewrites.clone();
    for node in check.nodes() {
        for o in node
            .output
            .iter()
            .filter(|o| !o.is_empty() && !check.is_const(o))
        {
            let got = &check.fact(o).expect("inferred").shape;
            let want = new_shape(o);
            if *got != want {
                return Err(Error::node(
                    node,
                    format!("slimmed output '{o}' infers to {got:?}, expected {want:?}"),
                ));
            }
        }
    }
    Ok(check)
}

/// An initializer named `name` holding `value` (int64 or float32, as `value` is).
fn const_init(name: &str, value: &crate::onnx::Tensor) -> onnx::TensorProto {
    let like = onnx::TensorProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    onnx::tensor_to_proto(value, &like)
}
