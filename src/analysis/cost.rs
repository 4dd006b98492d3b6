//! Params and MACs per node, per region and in total (ptflops conventions, see
//! `docs/NOTES.md`): params are the float initializers of rank >= 1, each counted once;
//! MACs come from each op's rule ([`crate::ops::OpRule::macs`]).
use super::regions::{find_regions, Region};
use crate::ir::Ir;
use crate::ops;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Debug, Serialize)]
pub struct NodeCost {
    pub node: String,
    pub op: String,
    pub params: u64,
    pub macs: u64,
    pub region: Region,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RegionCost {
    pub params: u64,
    pub macs: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    /// Input length in samples the MACs are counted for.
    pub samples: usize,
    pub params: u64,
    pub macs: u64,
    pub regions: BTreeMap<Region, RegionCost>,
    pub nodes: Vec<NodeCost>,
}

/// MACs of every node with shapes given by `shape` (the IR's own, or pruned ones).
pub fn node_macs(ir: &Ir, shape: ops::ShapeOf) -> Vec<u64> {
    ir.nodes()
        .iter()
        .map(|n| {
            if ir.is_folded(n) {
                0
            } else {
                ops::rule(n).map(|r| r.macs(n, shape)).unwrap_or(0)
            }
        })
        .collect()
}

/// Float initializers of rank >= 1 used by each node (first user only), except inputs the
/// op holds state in ([`crate::ops::OpRule::state_inputs`]).
pub fn node_params(ir: &Ir) -> Vec<u64> {
    let mut seen = HashSet::new();
    ir.nodes()
        .iter()
        .map(|n| {
            let state = ops::rule(n).map(|r| r.state_inputs(n)).unwrap_or_default();
            n.input
                .iter()
                .enumerate()
                .filter(|(i, _)| !state.contains(i))
                .map(|(_, v)| v)
                .filter(|v| ir.is_initializer(v) && seen.insert(v.as_str()))
                .filter_map(|v| {
                    let init = &ir.graph().initializer[ir.init_index[v.as_str()]];
                    let float = matches!(init.data_type.unwrap_or(1), 1 | 10 | 11 | 16);
                    (float && !init.dims.is_empty())
                        .then(|| init.dims.iter().product::<i64>() as u64)
                })
                .sum()
        })
        .collect()
}

/// Full profile of a model at the IR's input length.
pub fn profile(ir: &Ir) -> Profile {
    let shape = |v: &str| ir.fact(v).map(|f| f.shape.clone()).unwrap_or_default();
    let macs = node_macs(ir, &shape);
    let params = node_params(ir);
    let regions_of = find_regions(ir, &macs);
    let mut regions: BTreeMap<Region, RegionCost> = BTreeMap::new();
    for r in [Region::Encoder, Region::Separator, Region::Decoder] {
        regions.insert(r, RegionCost::default());
    }
    let nodes: Vec<NodeCost> = ir
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let rc = regions
                .get_mut(&regions_of[i])
                .expect("all regions present");
            rc.params += params[i];
            rc.macs += macs[i];
            NodeCost {
                node: n.name().to_string(),
                op: n.op_type().to_string(),
                params: params[i],
                macs: macs[i],
                region: regions_of[i],
            }
        })
        .collect();
    Profile {
        samples: ir.samples,
        params: params.iter().sum(),
        macs: macs.iter().sum(),
        regions,
        nodes,
    }
}
