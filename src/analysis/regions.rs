//! Encoder / separation network / decoder, found from the graph structure (not names).
//!
//! In the data-flow DAG (constant subgraphs removed) rooted at the graph inputs, the nodes
//! that every input-to-output path passes through (the dominators of a virtual sink) form a
//! chain. Between two consecutive chain nodes lies an interval; the interval with the most
//! MACs (the chain node that opens it excluded) is the separation network, as in the
//! three-stage "encoder -> separator -> decoder" design of the SepPrune paper (section 3).
//! Everything before it is the encoder, everything from the next chain node on the decoder
//! (for mask-based separators that chain node is the masking multiply).
use crate::ir::Ir;
use petgraph::algo::dominators::simple_fast;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::Dfs;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Encoder,
    Separator,
    Decoder,
}

impl Region {
    pub fn name(self) -> &'static str {
        match self {
            Region::Encoder => "encoder",
            Region::Separator => "separator",
            Region::Decoder => "decoder",
        }
    }
}

/// Region of every node (indexed like `graph.node`), given per-node MACs.
pub fn find_regions(ir: &Ir, macs: &[u64]) -> Vec<Region> {
    let nodes = ir.nodes();
    let n = nodes.len();
    let mut g: DiGraph<usize, ()> = DiGraph::new();
    let idx: Vec<NodeIndex> = (0..n).map(|i| g.add_node(i)).collect();
    let root = g.add_node(usize::MAX);
    let sink = g.add_node(usize::MAX);
    let inputs = ir.graph_inputs();
    // data nodes: computed from a graph input; the rest (folded shapes, an Identity or
    // Transpose of a weight) are constant subgraphs
    let mut live = vec![false; n];
    for (ni, node) in nodes.iter().enumerate() {
        live[ni] = !ir.is_folded(node)
            && node
                .input
                .iter()
                .any(|v| inputs.contains(v) || ir.producer.get(v).is_some_and(|&p| live[p]));
    }
    let data = |ni: usize| live[ni];
    for (ni, node) in nodes.iter().enumerate().filter(|(i, _)| data(*i)) {
        for v in node
            .input
            .iter()
            .filter(|v| !v.is_empty() && !ir.is_const(v))
        {
            match ir.producer.get(v) {
                Some(&p) if data(p) => {
                    g.update_edge(idx[p], idx[ni], ());
                }
                _ if inputs.contains(v) => {
                    g.update_edge(root, idx[ni], ());
                }
                _ => {}
            }
        }
    }
    for o in ir.graph_outputs() {
        if let Some(&p) = ir.producer.get(&o) {
            g.update_edge(idx[p], sink, ());
        }
    }
    let doms = simple_fast(&g, root);
    let mut chain: Vec<NodeIndex> = doms
        .dominators(sink)
        .map(|it| it.filter(|&d| d != root && d != sink).collect())
        .unwrap_or_default();
    chain.reverse();
    if chain.is_empty() {
        return vec![Region::Separator; n];
    }
    // interval[i] = last chain position that reaches node i
    let mut interval = vec![usize::MAX; n];
    for (k, &c) in chain.iter().enumerate() {
        let mut dfs = Dfs::new(&g, c);
        while let Some(v) = dfs.next(&g) {
            let ni = g[v];
            if ni != usize::MAX {
                interval[ni] = k;
            }
        }
    }
    let mut weight = vec![0u64; chain.len()];
    for i in 0..n {
        if interval[i] != usize::MAX && idx[i] != chain[interval[i]] {
            weight[interval[i]] += macs[i];
        }
    }
    let heavy = (0..chain.len())
        .max_by_key(|&k| (weight[k], std::cmp::Reverse(k)))
        .unwrap_or(0);
    let mut regions: Vec<Region> = (0..n)
        .map(|i| {
            let k = interval[i];
            if k == usize::MAX || k < heavy || idx[i] == chain[heavy] {
                Region::Encoder
            } else if k == heavy {
                Region::Separator
            } else {
                Region::Decoder
            }
        })
        .collect();
    // Constant subgraphs take the region of the data node they feed.
    for i in (0..n).rev() {
        if !data(i) {
            let r = nodes[i]
                .output
                .iter()
                .filter_map(|o| ir.consumers.get(o))
                .flatten()
                .map(|&(c, _)| regions[c])
                .next();
            if let Some(r) = r {
                regions[i] = r;
            }
        }
    }
    regions
}
