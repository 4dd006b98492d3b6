//! Depth pruning: whole residual blocks ([`crate::analysis::blocks`]) removed, each merging
//! `Add` replaced by the operand that bypasses the block. The block gate graph
//! ([`block_gate_graph`]) multiplies every block's merged operands by one scalar gate per
//! block; with gates 0 for the removed blocks and 1 elsewhere it computes what the
//! depth-pruned model computes (`x + 0 * f(x) = x`), the same exactness contract as
//! channel gates.
use crate::analysis::blocks::{bypasses, Block};
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::onnx::{self, ModelProto, NodeProto};
use std::collections::{HashMap, HashSet};

/// Name of a block's scalar gate initializer.
pub fn block_gate_name(block: usize) -> String {
    format!("sepprune.block_gate.{block}")
}

/// `ir`'s model without the blocks `removed`, in the exporter's form ([`Ir::exported`]):
/// their nodes dropped, merges bypassed, then dead nodes and unused initializers removed.
/// A graph output that a merge produced becomes an `Identity` of the bypassing value.
///
/// Errors: an unknown block id; a set whose removal leaves a node or a graph output with
/// only removed blocks to read ([`bypasses`]).
pub fn drop_blocks(ir: &Ir, blocks: &[Block], removed: &[usize]) -> Result<ModelProto> {
    if let Some(b) = removed.iter().find(|&&b| b >= blocks.len()) {
        return Err(Error::Blocks(format!(
            "block {b} does not exist ({} blocks)",
            blocks.len()
        )));
    }
    let map = bypasses(ir, blocks, removed)?;
    let gone: HashSet<usize> = blocks
        .iter()
        .filter(|b| removed.contains(&b.id))
        .flat_map(|b| b.nodes.iter().copied())
        .collect();
    let mut model = ir.model.clone();
    let graph = model.graph.as_mut().expect("ir has a graph");
    let rename = |v: &String| match map.get(v) {
        Some(Some(r)) => r.clone(),
        _ => v.clone(),
    };
    let mut nodes: Vec<NodeProto> = vec![];
    for (ni, n) in ir.nodes().iter().enumerate() {
        if gone.contains(&ni) || n.output.first().is_some_and(|o| map.contains_key(o)) {
            continue;
        }
        let mut n = n.clone();
        for i in n.input.iter_mut() {
            *i = rename(i);
        }
        nodes.push(n);
    }
    for o in &graph.output {
        if let Some(Some(r)) = map.get(o.name()) {
            nodes.push(NodeProto {
                name: Some(format!("sepprune.bypass.{}", o.name())),
                op_type: Some("Identity".into()),
                input: vec![r.clone()],
                output: vec![o.name().to_string()],
                ..Default::default()
            });
        }
    }
    graph.node = nodes;
    let mut model = ir.exported(&model);
    remove_dead(model.graph.as_mut().expect("ir has a graph"));
    Ok(model)
}

/// Drops nodes no graph output depends on, then initializers and `value_info` nothing
/// reads any more.
pub fn remove_dead(graph: &mut onnx::GraphProto) {
    let mut live: HashSet<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    let mut keep = vec![false; graph.node.len()];
    for (i, n) in graph.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| live.contains(o)) {
            keep[i] = true;
            live.extend(n.input.iter().filter(|v| !v.is_empty()).cloned());
        }
    }
    let mut k = keep.into_iter();
    graph.node.retain(|_| k.next().expect("one flag per node"));
    let produced: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().cloned())
        .collect();
    let inits: HashSet<String> = graph
        .initializer
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    graph.initializer.retain(|t| live.contains(t.name()));
    // initializers listed as graph inputs (old exporters) go with their tensors
    graph
        .input
        .retain(|i| !inits.contains(i.name()) || live.contains(i.name()));
    let inputs: HashSet<String> = graph.input.iter().map(|i| i.name().to_string()).collect();
    graph
        .value_info
        .retain(|v| produced.contains(v.name()) || inputs.contains(v.name()));
}

/// `ir`'s model, in the exporter's form, with one scalar gate per block multiplied onto
/// every operand the block merges: `Add(x, f(x))` becomes `Add(x, Mul(f(x), g_b))`, `g_b`
/// an initializer named [`block_gate_name`]`(b)` of shape `[1]` holding `gates[b]`.
///
/// Errors: `gates` not one value per block.
pub fn block_gate_graph(ir: &Ir, blocks: &[Block], gates: &[f32]) -> Result<ModelProto> {
    if gates.len() != blocks.len() {
        return Err(Error::Blocks(format!(
            "{} block gates for {} blocks",
            gates.len(),
            blocks.len()
        )));
    }
    let mut model = ir.model.clone();
    let graph = model.graph.as_mut().expect("ir has a graph");
    let mut gated: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
    for b in blocks {
        graph.initializer.push(onnx::f32_initializer(
            &block_gate_name(b.id),
            &[1],
            vec![gates[b.id]],
        ));
        for &(ni, k) in &b.merges {
            gated.entry(ni).or_default().push((k, b.id));
        }
    }
    let mut nodes = Vec::with_capacity(graph.node.len() + gated.len());
    for (ni, n) in graph.node.iter().enumerate() {
        let mut n = n.clone();
        for &(k, b) in gated.get(&ni).into_iter().flatten() {
            let out = format!("{}.sepprune.block_gate{b}", n.input[k]);
            nodes.push(NodeProto {
                name: Some(format!("sepprune.block_gate.{b}.{ni}.{k}")),
                op_type: Some("Mul".into()),
                input: vec![n.input[k].clone(), block_gate_name(b)],
                output: vec![out.clone()],
                ..Default::default()
            });
            n.input[k] = out;
        }
        nodes.push(n);
    }
    graph.node = nodes;
    graph.value_info.clear();
    Ok(ir.exported(&model))
}

/// The blocks to remove, taken in `order`, to cut `target` MACs: removal stops once the
/// next block would overshoot the target by more than it closes the gap (the cut ends as
/// near the target as whole blocks allow); a set whose removal leaves a layer nothing to
/// read is skipped. Sorted.
pub fn blocks_to_cut(
    ir: &Ir,
    blocks: &[Block],
    order: impl IntoIterator<Item = usize>,
    target: f64,
) -> Vec<usize> {
    let (mut removed, mut cut) = (vec![], 0.0);
    for b in order {
        if target - cut <= blocks[b].macs as f64 / 2.0 {
            break;
        }
        let mut with = removed.clone();
        with.push(b);
        if drop_blocks(ir, blocks, &with).is_ok() {
            removed = with;
            cut += blocks[b].macs as f64;
        }
    }
    removed.sort_unstable();
    removed
}

/// Blocks ranked by how little removing each one alone changes the model's output:
/// `||f_-b(x) - f(x)||^2 / ||f(x)||^2` summed over the inputs `run_all` feeds (label-free:
/// the original model's own outputs are the reference), smallest first, as
/// `(block, relative change)`. `run_all` runs a model on every input and returns its
/// outputs, one flat vector per input (a runtime does: `runtime::run_each`).
///
/// Errors: a model `run_all` cannot run.
pub fn ablation_ranking(
    ir: &Ir,
    blocks: &[Block],
    run_all: &mut dyn FnMut(&ModelProto) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<(usize, f64)>> {
    let original = ir.exported(&ir.model);
    let reference = run_all(&original)?;
    let energy: f64 = reference
        .iter()
        .flatten()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .max(1e-30);
    let mut ranked = vec![];
    for b in blocks {
        let m = drop_blocks(ir, blocks, &[b.id])?;
        let out = run_all(&m)?;
        let err: f64 = out
            .iter()
            .flatten()
            .zip(reference.iter().flatten())
            .map(|(&a, &r)| ((a - r) as f64).powi(2))
            .sum();
        ranked.push((b.id, err / energy));
    }
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    Ok(ranked)
}
