//! Params and MACs per node, per region and in total (ptflops conventions, see
//! `docs/notes.md`): params are the learnable float initializers of rank >= 1 (weights,
//! biases, affine scales; not buffers), each counted once;
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

/// MACs of every node with shapes given by `shape` (the IR's own, or pruned ones), under
/// ptflops 0.7.5 conventions.
pub fn node_macs(ir: &Ir, shape: ops::ShapeOf) -> Vec<u64> {
    node_macs_as(ir, shape, ops::Ptflops::default())
}

/// [`node_macs`] under the conventions of another ptflops release.
pub fn node_macs_as(ir: &Ir, shape: ops::ShapeOf, ptflops: ops::Ptflops) -> Vec<u64> {
    ir.nodes()
        .iter()
        .map(|n| {
            if ir.is_folded(n) {
                0
            } else {
                ops::rule(n).map(|r| r.macs(n, shape, ptflops)).unwrap_or(0)
            }
        })
        .collect()
}

/// Float initializers of rank >= 1 that each node uses as learnable parameters
/// ([`crate::ops::OpRule::params`]: weights, biases, affine scales, slopes; every float
/// initializer input of an op without a rule), each named at its first user. Like
/// ptflops, which counts a module's `parameters()`, this leaves out buffers (a
/// positional-encoding table read through a Slice) and RNN initial states.
pub fn node_param_names(ir: &Ir) -> Vec<Vec<&str>> {
    let mut seen = HashSet::new();
    ir.nodes()
        .iter()
        .map(|n| {
            // an op without a rule (opaque: an Einsum, a grouped linear) learns every
            // float initializer it reads
            let learnable = match ops::rule(n) {
                Some(r) => r.params(n, ir),
                None => (0..n.input.len()).collect(),
            };
            learnable
                .into_iter()
                .filter_map(|i| n.input.get(i))
                .filter(|v| ir.is_initializer(v) && seen.insert(v.as_str()))
                .filter(|v| {
                    let init = &ir.graph().initializer[ir.init_index[v.as_str()]];
                    matches!(init.data_type.unwrap_or(1), 1 | 10 | 11 | 16) && !init.dims.is_empty()
                })
                .map(String::as_str)
                .collect()
        })
        .collect()
}

/// Learnable parameters per node ([`node_param_names`], counted at their first user).
pub fn node_params(ir: &Ir) -> Vec<u64> {
    node_param_names(ir)
        .into_iter()
        .map(|names| {
            names
                .into_iter()
                .map(|v| {
                    let init = &ir.graph().initializer[ir.init_index[v]];
                    init.dims.iter().product::<i64>() as u64
                })
                .sum()
        })
        .collect()
}

/// Full profile of a model at the IR's input length (ptflops 0.7.5 conventions).
pub fn profile(ir: &Ir) -> Profile {
    profile_as(ir, ops::Ptflops::default())
}

/// [`profile`] under the conventions of another ptflops release.
pub fn profile_as(ir: &Ir, ptflops: ops::Ptflops) -> Profile {
    let shape = |v: &str| ir.fact(v).map(|f| f.shape.clone()).unwrap_or_default();
    let macs = node_macs_as(ir, &shape, ptflops);
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
