//! Residual blocks: subgraphs that read one value of a stream and whose every result is
//! added back onto values that bypass them (a TCN block's residual and skip convolutions, a
//! transformer's attention or feed-forward half). Removing such a block leaves its bypass:
//! each merging `Add` passes its other operand through, and the network computes a
//! function of one block less. This is depth pruning (layer dropping): at batch 1 on a GPU,
//! where every node costs a kernel launch, it is the structure that buys latency
//! (`docs/gpu.md`: a third of the Conv-TasNet blocks removed, 1.48x on ORT CUDA; half its
//! channels, 1.02x).
//!
//! Found from the graph alone, without names: for a value `v`, the block `S(v)` is the set
//! of nodes, in graph order, whose non-constant inputs all come from `v` or from `S(v)`,
//! stopping at *merges*: an `Add` of a block value and a value from outside the block
//! (`v` itself included: the residual `v + f(v)`), of the same shape as the sum. `S(v)`
//! is a block when every block value is read only inside it or by merges (no other node
//! mixes it with outside values, no graph output is inside), and it holds parameters. Of
//! nested candidates (the tail of a block read from one of its inner values) only the
//! largest is kept: blocks are disjoint. Shape arithmetic on a block value (a `Shape` of
//! it, folded to a constant) is part of the block: a node outside that reads it makes the
//! candidate no block (dynamo's exports share one shape computation between blocks of equal
//! shapes: the first such block stays).
use crate::analysis::cost::{node_macs, node_params};
use crate::ir::Ir;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};

/// One removable residual block.
#[derive(Clone, Debug, Serialize)]
pub struct Block {
    /// Index in [`find_blocks`]'s list (graph order of the blocks' inputs).
    pub id: usize,
    /// The stream value the block reads.
    pub input: String,
    /// The block's nodes (indices in the IR's graph, ascending).
    pub nodes: Vec<usize>,
    /// The merging `Add`s: (node index, input position of the block's operand).
    pub merges: Vec<(usize, usize)>,
    /// Learnable parameters of the block's nodes.
    pub params: u64,
    /// MACs of the block's nodes at the IR's input length.
    pub macs: u64,
}

impl Block {
    /// Nodes (kernel launches, roughly) a runtime saves when the block is removed: its
    /// own and its merges.
    pub fn node_count(&self) -> usize {
        self.nodes.len() + self.merges.len()
    }
}

/// The candidate block read from `v`, if `S(v)` is one (module docs).
fn block_of(ir: &Ir, v: &str, params: &[u64]) -> Option<(BTreeSet<usize>, Vec<(usize, usize)>)> {
    let nodes = ir.nodes();
    let start = ir.producer.get(v).map_or(0, |&p| p + 1);
    let outputs: HashSet<&str> = ir.graph().output.iter().map(|o| o.name()).collect();
    let mut inside: BTreeSet<usize> = BTreeSet::new();
    let mut values: HashSet<&str> = HashSet::new();
    let mut merges = vec![];
    for (ni, n) in nodes.iter().enumerate().skip(start) {
        if ir.is_folded(n) {
            // shape arithmetic on a block value (a Shape of it) belongs to the block; on the
            // stream alone it does not depend on the block
            if n.input.iter().any(|i| values.contains(i.as_str())) {
                inside.insert(ni);
                values.extend(
                    n.output
                        .iter()
                        .filter(|o| !o.is_empty())
                        .map(String::as_str),
                );
            }
            continue;
        }
        // non-constant inputs, and constants the block computes (its shape values)
        let live: Vec<(usize, &str)> = n
            .input
            .iter()
            .enumerate()
            .filter(|(_, i)| !i.is_empty() && (!ir.is_const(i) || values.contains(i.as_str())))
            .map(|(k, i)| (k, i.as_str()))
            .collect();
        let from_block = |i: &str| values.contains(i);
        if !live.iter().any(|&(_, i)| i == v || from_block(i)) {
            continue;
        }
        let merge = (n.op_type() == "Add" && live.len() == 2 && n.input.len() == 2)
            .then(|| {
                let (a, b) = (live[0], live[1]);
                let same = |x: &str| {
                    ir.fact(x).map(|f| &f.shape) == ir.fact(&n.output[0]).map(|f| &f.shape)
                };
                match (from_block(a.1), from_block(b.1)) {
                    (true, false) if same(b.1) => Some(a.0),
                    (false, true) if same(a.1) => Some(b.0),
                    _ => None,
                }
            })
            .flatten();
        if let Some(k) = merge {
            merges.push((ni, k));
        } else if live.iter().all(|&(_, i)| i == v || from_block(i)) {
            inside.insert(ni);
            values.extend(
                n.output
                    .iter()
                    .filter(|o| !o.is_empty())
                    .map(String::as_str),
            );
        } else if live.iter().any(|&(_, i)| from_block(i)) {
            return None; // a block value mixed with an outside value, not by a merge
        }
    }
    let holds_params = inside.iter().any(|&ni| params[ni] > 0);
    let escapes = values.iter().any(|o| outputs.contains(o));
    (!inside.is_empty() && !merges.is_empty() && holds_params && !escapes)
        .then_some((inside, merges))
}

/// Every removable residual block of `ir`, disjoint, in graph order (module docs).
pub fn find_blocks(ir: &Ir) -> Vec<Block> {
    let params = node_params(ir);
    let shape = |v: &str| ir.fact(v).map(|f| f.shape.clone()).unwrap_or_default();
    let macs = node_macs(ir, &shape);
    let mut values: Vec<String> = ir.graph_inputs();
    for n in ir.nodes() {
        if !ir.is_folded(n) {
            values.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
        }
    }
    let mut found: Vec<(String, BTreeSet<usize>, Vec<(usize, usize)>)> = values
        .iter()
        .filter_map(|v| block_of(ir, v, &params).map(|(s, m)| (v.clone(), s, m)))
        .collect();
    // keep the largest of nested candidates
    found.sort_by_key(|(_, s, _)| std::cmp::Reverse(s.len()));
    let mut taken: HashSet<usize> = HashSet::new();
    let mut kept = vec![];
    for (v, s, m) in found {
        if s.iter().any(|n| taken.contains(n)) {
            continue;
        }
        taken.extend(s.iter().copied());
        kept.push((v, s, m));
    }
    kept.sort_by_key(|(_, s, _)| *s.first().expect("non-empty"));
    kept.into_iter()
        .enumerate()
        .map(|(id, (input, s, merges))| Block {
            id,
            input,
            params: s.iter().map(|&n| params[n]).sum(),
            macs: s.iter().map(|&n| macs[n]).sum(),
            nodes: s.into_iter().collect(),
            merges,
        })
        .collect()
}

/// For each value that merges of removed blocks replace: the value it becomes, or `None`
/// when every operand of its sum was removed (a zero contribution).
///
/// Errors: a zero contribution read by anything but another merge, or by a graph output
/// (removing that set of blocks leaves a node with nothing to read).
pub fn bypasses(
    ir: &Ir,
    blocks: &[Block],
    removed: &[usize],
) -> crate::error::Result<HashMap<String, Option<String>>> {
    let nodes = ir.nodes();
    let removed: HashSet<usize> = removed.iter().copied().collect();
    let mut merge_of: HashMap<usize, Vec<usize>> = HashMap::new();
    for b in blocks.iter().filter(|b| removed.contains(&b.id)) {
        for &(ni, k) in &b.merges {
            merge_of.entry(ni).or_default().push(k);
        }
    }
    let mut order: Vec<usize> = merge_of.keys().copied().collect();
    order.sort_unstable();
    let mut map: HashMap<String, Option<String>> = HashMap::new();
    let resolve = |map: &HashMap<String, Option<String>>, v: &str| -> Option<String> {
        match map.get(v) {
            Some(r) => r.clone(),
            None => Some(v.to_string()),
        }
    };
    for ni in order {
        let n = &nodes[ni];
        let gone = &merge_of[&ni];
        let operands: Vec<Option<String>> = (0..2)
            .map(|k| {
                if gone.contains(&k) {
                    None
                } else {
                    resolve(&map, &n.input[k])
                }
            })
            .collect();
        let out = match (&operands[0], &operands[1]) {
            (Some(a), None) => Some(a.clone()),
            (None, Some(b)) => Some(b.clone()),
            (None, None) => None,
            (Some(_), Some(_)) => continue, // both operands stay: the Add stays
        };
        map.insert(n.output[0].clone(), out);
    }
    // a zero contribution may only reach merges whose other operand remains
    let zero: HashSet<&str> = map
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(k, _)| k.as_str())
        .collect();
    let dropped: HashSet<usize> = blocks
        .iter()
        .filter(|b| removed.contains(&b.id))
        .flat_map(|b| b.nodes.iter().copied())
        .collect();
    for (ni, n) in nodes.iter().enumerate() {
        if dropped.contains(&ni) || map.contains_key(&n.output.first().cloned().unwrap_or_default())
        {
            continue;
        }
        if let Some(z) = n.input.iter().find(|i| zero.contains(i.as_str())) {
            return Err(crate::error::Error::node(
                n,
                format!("reads '{z}', the sum of removed blocks only: keep one of them"),
            ));
        }
    }
    for o in &ir.graph().output {
        if zero.contains(o.name()) {
            return Err(crate::error::Error::Blocks(format!(
                "graph output '{}' is the sum of removed blocks only: keep one of them",
                o.name()
            )));
        }
    }
    Ok(map)
}
