//! The gate graph: one gate vector `g` (shape `[C]`, an initializer named
//! `sepprune.gate.<group id>`) per prunable channel group, multiplied onto the group's
//! activations wherever a consumer reads across channels (Conv/ConvTranspose/MatMul
//! inputs: [`Read::Mix`]; an RNN's recurrent weight: [`Read::Weight`]), and channel means
//! taken over kept channels only
//! ([`Read::Mean`]): `mean = ReduceMean(g*x) * C / sum(g)`, i.e.
//! `sum(g*x) / (sum(g) * rest)` (`docs/design.md`, "Gate graph, exact by construction").
//!
//! Per-channel ops in between (PRelu, depthwise conv, norm affine) may make a removed
//! channel non-zero again, so gating only at the producer would not be exact; gating at
//! every mixing read is. For a binary `g`, the gate graph computes the same function as
//! the slimmed model with the same mask. A concatenation of groups (a channel Concat) is
//! gated with the Concat of its parts' gates (ones for parts that are not pruned); a group
//! of whole norm groups ([`Part::Expand`]) with its gate repeated over each unit's run; a
//! concatenation of whole blocks ([`crate::analysis::groups::Concatenated::outer`],
//! attention heads) with its parts' gates times the outer group's gate of each block.
use crate::analysis::Masks;
use crate::analysis::{groups::Part, Groups};
use crate::error::Result;
use crate::ir::Ir;
use crate::onnx::{self, int_attr, ModelProto, NodeProto, TensorProto};
use crate::ops::{self, Read};
use std::collections::{HashMap, HashSet};

fn node(
    op: &str,
    name: String,
    inputs: Vec<String>,
    output: String,
    attrs: Vec<onnx::AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: Some(name),
        op_type: Some(op.into()),
        input: inputs,
        output: vec![output],
        attribute: attrs,
        ..Default::default()
    }
}

/// Name of a group's gate initializer.
pub fn gate_name(group: usize) -> String {
    format!("sepprune.gate.{group}")
}

/// The gate vector a slot is multiplied by: `value` (shape `[size]`) names a group's gate
/// initializer, or the Concat of its parts' gates for a concatenation.
struct Gate {
    /// `<group id>` or `c<concatenation id>`, for node and value names.
    key: String,
    value: String,
    size: usize,
}

/// The gate of slot `(v, a)`, when it is in a prunable group or in a concatenation with a
/// prunable part; builds a concatenation's gate (once) from its parts' gates, with ones for
/// frozen and fixed parts.
fn gate_of(
    groups: &Groups,
    v: &str,
    a: usize,
    nodes: &mut Vec<NodeProto>,
    inits: &mut Vec<TensorProto>,
    made: &mut HashSet<String>,
) -> Option<Gate> {
    if let Some(g) = groups.of(v, a) {
        return g.frozen.is_none().then(|| Gate {
            key: g.id.to_string(),
            value: gate_name(g.id),
            size: g.size,
        });
    }
    let c = groups.concatenated_of(v, a)?;
    let value = part_gate(groups, Part::Concatenated(c.id), nodes, inits, made)?;
    Some(Gate {
        key: format!("c{}", c.id),
        value,
        size: c.size,
    })
}

/// The gate vector of a part, `None` when nothing in it is prunable (all ones).
fn part_gate(
    groups: &Groups,
    part: Part,
    nodes: &mut Vec<NodeProto>,
    inits: &mut Vec<TensorProto>,
    made: &mut HashSet<String>,
) -> Option<String> {
    match part {
        Part::Group(g) => groups.groups[g].frozen.is_none().then(|| gate_name(g)),
        Part::Fixed(_) => None,
        // g [G] -> Reshape [G, 1] * ones [1, w] -> Reshape [G w]
        Part::Expand { group, width } => {
            let grp = &groups.groups[group];
            if grp.frozen.is_some() {
                return None;
            }
            let name = format!("sepprune.gate.{group}x{width}");
            if !made.insert(name.clone()) {
                return Some(name);
            }
            let column = format!("{name}.column");
            let ones = format!("{name}.ones");
            let shapes = [
                (format!("{name}.shape_in"), vec![grp.size as i64, 1]),
                (format!("{name}.shape_out"), vec![(grp.size * width) as i64]),
            ];
            for (n, v) in &shapes {
                inits.push(onnx::i64_initializer(n, v.clone()));
            }
            inits.push(onnx::f32_initializer(&ones, &[1, width], vec![1.0; width]));
            nodes.push(node(
                "Reshape",
                format!("{column}.node"),
                vec![gate_name(group), shapes[0].0.clone()],
                column.clone(),
                vec![],
            ));
            nodes.push(node(
                "Mul",
                format!("{name}.tile"),
                vec![column, ones],
                format!("{name}.tiled"),
                vec![],
            ));
            nodes.push(node(
                "Reshape",
                format!("{name}.node"),
                vec![format!("{name}.tiled"), shapes[1].0.clone()],
                name.clone(),
                vec![],
            ));
            Some(name)
        }
        Part::Concatenated(c) => {
            let name = format!("sepprune.gate.c{c}");
            if made.contains(&name) {
                return Some(name);
            }
            let cat = &groups.concatenated[c];
            let parts = &cat.parts;
            let gates: Vec<Option<String>> = parts
                .iter()
                .map(|&p| part_gate(groups, p, nodes, inits, made))
                .collect();
            let outer = cat.outer.filter(|&h| groups.groups[h].frozen.is_none());
            if gates.iter().all(Option::is_none) && outer.is_none() {
                return None;
            }
            let inputs = parts
                .iter()
                .zip(gates)
                .map(|(&p, g)| {
                    g.unwrap_or_else(|| {
                        let n = groups.part_size(p);
                        let ones = format!("sepprune.ones.{n}");
                        if made.insert(ones.clone()) {
                            inits.push(onnx::f32_initializer(&ones, &[n], vec![1.0; n]));
                        }
                        ones
                    })
                })
                .collect();
            made.insert(name.clone());
            let Some(h) = outer else {
                nodes.push(node(
                    "Concat",
                    format!("{name}.concat"),
                    inputs,
                    name.clone(),
                    vec![int_attr("axis", 0)],
                ));
                return Some(name);
            };
            // whole blocks: concat [H d] -> [H, d] * g_outer [H, 1] -> [H d]
            let blocks = format!("{name}.blocks");
            nodes.push(node(
                "Concat",
                format!("{blocks}.concat"),
                inputs,
                blocks.clone(),
                vec![int_attr("axis", 0)],
            ));
            let n = parts.len() as i64;
            let shapes = [
                (format!("{name}.shape_blocks"), vec![n, -1]),
                (format!("{name}.shape_outer"), vec![n, 1]),
                (format!("{name}.shape_out"), vec![cat.size as i64]),
            ];
            for (sn, v) in &shapes {
                inits.push(onnx::i64_initializer(sn, v.clone()));
            }
            let reshaped = |what: &str, input: String, shape: &str, nodes: &mut Vec<NodeProto>| {
                let out = format!("{name}.{what}");
                nodes.push(node(
                    "Reshape",
                    format!("{out}.node"),
                    vec![input, shape.to_string()],
                    out.clone(),
                    vec![],
                ));
                out
            };
            let grid = reshaped("grid", blocks, &shapes[0].0, nodes);
            let column = reshaped("outer", gate_name(h), &shapes[1].0, nodes);
            nodes.push(node(
                "Mul",
                format!("{name}.heads"),
                vec![grid, column],
                format!("{name}.gated"),
                vec![],
            ));
            nodes.push(node(
                "Reshape",
                format!("{name}.node"),
                vec![format!("{name}.gated"), shapes[2].0.clone()],
                name.clone(),
                vec![],
            ));
            Some(name)
        }
    }
}

/// Builds the gate graph. Gates hold `masks` (1 = kept) or all ones when `masks` is None.
pub fn gate_graph(ir: &Ir, groups: &Groups, masks: Option<&Masks>) -> Result<ModelProto> {
    if let Some(m) = masks {
        m.validate(groups)?;
    }
    let mut model = ir.model.clone();
    let graph = model.graph.as_mut().expect("ir has a graph");
    let mut inits: Vec<TensorProto> = vec![];
    let mut made: HashSet<String> = HashSet::new();
    let mut new_nodes: Vec<NodeProto> = Vec::with_capacity(graph.node.len() * 2);
    let mut gated_of: HashMap<String, String> = HashMap::new();
    let gate_vec = |id: usize, size: usize| -> Vec<f32> {
        match masks.and_then(|m| m.keep(id)) {
            Some(keep) => {
                let mut v = vec![0f32; size];
                for &k in keep {
                    v[k] = 1.0;
                }
                v
            }
            None => vec![1f32; size],
        }
    };
    for g in groups.prunable() {
        inits.push(onnx::f32_initializer(
            &gate_name(g.id),
            &[g.size],
            gate_vec(g.id, g.size),
        ));
    }
    for (ni, n) in graph.node.iter().enumerate() {
        let mut n = n.clone();
        let mut means: Vec<Gate> = vec![];
        if !ir.is_folded(&n) {
            if let Some(rule) = ops::rule(&n) {
                for i in 0..n.input.len() {
                    let v = n.input[i].clone();
                    if v.is_empty() {
                        continue;
                    }
                    // constants are gated only where the op reads them as state weights
                    let konst = ir.is_const(&v);
                    let rank = ir.fact(&v).map(|f| f.rank()).unwrap_or(0);
                    let mut reads = vec![];
                    for a in 0..rank {
                        let Some(gate) =
                            gate_of(groups, &v, a, &mut new_nodes, &mut inits, &mut made)
                        else {
                            continue;
                        };
                        match rule.read(&n, ir, i, a) {
                            Read::Pointwise => {}
                            Read::Mix | Read::Mean if konst => {}
                            r => reads.push((a, gate, r)),
                        }
                    }
                    if reads.is_empty() {
                        continue;
                    }
                    let key = format!("{v}|{:?}", reads.iter().map(|r| r.0).collect::<Vec<_>>());
                    if let Some(gv) = gated_of.get(&key) {
                        n.input[i] = gv.clone();
                    } else {
                        let mut cur = v.clone();
                        for (a, gate, _) in &reads {
                            let (a, id, size) = (*a, &gate.key, gate.size);
                            let shape_name = format!("sepprune.gate.{id}.shape.r{rank}a{a}");
                            if made.insert(shape_name.clone()) {
                                let mut dims = vec![size as i64];
                                dims.extend(std::iter::repeat_n(1, rank - a - 1));
                                inits.push(onnx::i64_initializer(&shape_name, dims));
                            }
                            let bg = format!("sepprune.gate.{id}.r{rank}a{a}");
                            if made.insert(bg.clone()) {
                                new_nodes.push(node(
                                    "Reshape",
                                    format!("{bg}.reshape"),
                                    vec![gate.value.clone(), shape_name],
                                    bg.clone(),
                                    vec![],
                                ));
                            }
                            let out = format!("{cur}.gate{id}");
                            new_nodes.push(node(
                                "Mul",
                                format!("{out}.mul"),
                                vec![cur.clone(), bg],
                                out.clone(),
                                vec![],
                            ));
                            cur = out;
                        }
                        gated_of.insert(key, cur.clone());
                        n.input[i] = cur;
                    }
                    means.extend(reads.into_iter().filter(|r| r.2 == Read::Mean).map(|r| r.1));
                }
            }
        }
        if means.is_empty() {
            new_nodes.push(n);
            continue;
        }
        // y = ReduceMean(g*x) * prod_groups(C / sum(g))
        let y = n.output[0].clone();
        let pre = format!("{y}.sepprune.premean");
        n.output[0] = pre.clone();
        new_nodes.push(n);
        let mut cur = pre;
        for gate in means {
            let (id, size) = (&gate.key, gate.size);
            let scale = format!("sepprune.gate.{id}.mean_scale");
            if made.insert(scale.clone()) {
                let sum = format!("sepprune.gate.{id}.sum");
                let c = format!("sepprune.gate.{id}.count");
                inits.push(onnx::f32_initializer(&c, &[], vec![size as f32]));
                new_nodes.push(node(
                    "ReduceSum",
                    format!("{sum}.node"),
                    vec![gate.value.clone()],
                    sum.clone(),
                    vec![int_attr("keepdims", 0)],
                ));
                new_nodes.push(node(
                    "Div",
                    format!("{scale}.node"),
                    vec![c, sum],
                    scale.clone(),
                    vec![],
                ));
            }
            let out = format!("{cur}.s{id}");
            new_nodes.push(node(
                "Mul",
                format!("{y}.sepprune.rescale{id}.{ni}"),
                vec![cur, scale],
                out.clone(),
                vec![],
            ));
            cur = out;
        }
        new_nodes.push(node(
            "Identity",
            format!("{y}.sepprune.mean"),
            vec![cur],
            y,
            vec![],
        ));
    }
    graph.node = new_nodes;
    graph.initializer.extend(inits);
    Ok(model)
}
