//! Params and MACs per node, per region and in total (ptflops conventions, see
//! `docs/notes.md`): params are the learnable float initializers of rank >= 1 (weights,
//! biases, affine scales; not buffers), each counted once;
//! MACs come from each op's rule ([`crate::ops::OpRule::macs`]).
use super::regions::{find_regions, Region};
use crate::ir::Ir;
use crate::ops;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

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

/// Values of rank >= 1 that each node uses as learnable parameters
/// ([`crate::ops::OpRule::params`]: weights, biases, affine scales, slopes; every float
/// initializer input of an op without a rule), each named at its first user. Like
/// ptflops, which counts a module's `parameters()`, this leaves out buffers (a
/// positional-encoding table read through a Slice) and RNN initial states. A weight an
/// exporter wrote as a `Constant` node counts (unless it holds one repeated value), and a
/// parameter stored several times (equal entry for entry) counts once.
///
/// A parameter input computed from initializers alone (a weight norm `g * v / |v|` that
/// the exporter left in the graph, a transposed weight) counts as the weight the op reads,
/// and the initializers it is computed from do not count: the parameters are what a
/// constant-folding exporter would write (PyTorch's `parameters()` with each
/// parametrization counted as the weight it computes).
pub fn node_param_names(ir: &Ir) -> Vec<Vec<&str>> {
    let learnable = |n: &crate::onnx::NodeProto| -> Vec<usize> {
        match ops::rule(n) {
            Some(r) => r.counted_params(n, ir),
            // an op without a rule (opaque: an Einsum, a grouped linear) learns every
            // float initializer it reads
            None => (0..n.input.len()).collect(),
        }
    };
    let float = |v: &str| -> bool {
        match ir.init_index.get(v) {
            Some(&i) => {
                let init = &ir.graph().initializer[i];
                matches!(init.data_type.unwrap_or(1), 1 | 10 | 11 | 16) && !init.dims.is_empty()
            }
            None => ir.fact(v).is_some_and(|f| f.rank() >= 1),
        }
    };
    // a weight an exporter wrote as a `Constant` node (TorchScript's RNN weights) counts; a
    // `Constant` of one repeated value stands in where the module has no parameter (the
    // unit scale and zero bias of a norm without an affine map)
    let stored = |v: &str| -> bool {
        ir.is_initializer(v)
            || (ir.constant_node(v).is_some()
                && !ir
                    .fact(v)
                    .and_then(|f| f.value.as_ref())
                    .is_some_and(|t| t.is_filled()))
    };
    // parameter inputs computed from initializers alone, and the initializers of their cones
    let derived = ConstCones::new(ir);
    let mut folded: HashSet<&str> = HashSet::new();
    let mut in_cones: HashSet<&str> = HashSet::new();
    for n in ir.nodes() {
        for v in learnable(n).into_iter().filter_map(|i| n.input.get(i)) {
            // (a `Constant` the exporter made, a norm's unit scale, is no parameter)
            if !ir.is_stored_constant(v) && derived.is_maximal(v) && float(v) {
                let cone = derived.initializers_of(v);
                if !cone.is_empty() {
                    folded.insert(v.as_str());
                    in_cones.extend(cone);
                }
            }
        }
    }
    let mut seen = HashSet::new();
    // one parameter stored several times (dynamo writes a module's transposed weight once
    // per call) counts once: an initializer equal, entry for entry, to one counted before.
    // Trained weights of distinct layers are never equal; tensors of one repeated value
    // (zero biases, unit scales, copied per reader by canon) are left apart.
    let mut by_dims: HashMap<&[i64], Vec<usize>> = HashMap::new();
    let mut stored_again = |v: &str| -> bool {
        let Some(&i) = ir.init_index.get(v) else {
            return false;
        };
        let inits = &ir.graph().initializer;
        let t = &inits[i];
        let same = |j: &usize| {
            let u = &inits[*j];
            u.data_type == t.data_type && u.raw_data == t.raw_data && u.float_data == t.float_data
        };
        let earlier = by_dims.entry(t.dims.as_slice()).or_default();
        let again = t.external_data.is_empty()
            && earlier.iter().any(same)
            && !ir.initializer(v).is_ok_and(|t| t.is_filled());
        earlier.push(i);
        again
    };
    ir.nodes()
        .iter()
        .map(|n| {
            learnable(n)
                .into_iter()
                .filter_map(|i| n.input.get(i))
                .filter(|v| {
                    let v = v.as_str();
                    let counted = (stored(v) && !in_cones.contains(v)) || folded.contains(v);
                    counted && float(v) && seen.insert(v) && !stored_again(v)
                })
                .map(String::as_str)
                .collect()
        })
        .collect()
}

/// Which values are computed from initializers (and `Constant`s) alone, through nodes
/// without graph inputs in their cone.
struct ConstCones<'a> {
    ir: &'a Ir,
    derived: HashMap<&'a str, bool>,
}

impl<'a> ConstCones<'a> {
    fn new(ir: &'a Ir) -> ConstCones<'a> {
        let mut derived: HashMap<&str, bool> = HashMap::new();
        for n in ir.nodes() {
            let d = !n.input.iter().all(String::is_empty)
                && n.input.iter().filter(|v| !v.is_empty()).all(|v| {
                    ir.is_stored_constant(v) || derived.get(v.as_str()).copied().unwrap_or(false)
                });
            for o in &n.output {
                derived.insert(o.as_str(), d || n.op_type() == "Constant");
            }
        }
        ConstCones { ir, derived }
    }

    fn is_derived(&self, v: &str) -> bool {
        self.derived.get(v).copied().unwrap_or(false)
    }

    /// Derived, and read by a node that is not (the end of a constant computation: a
    /// weight norm's `g * v / |v|`, not its `|v|`).
    fn is_maximal(&self, v: &str) -> bool {
        self.is_derived(v)
            && self.ir.consumers.get(v).is_some_and(|cs| {
                cs.iter().any(|&(ni, _)| {
                    self.ir.nodes()[ni]
                        .output
                        .iter()
                        .all(|o| !self.is_derived(o))
                })
            })
    }

    /// The initializers `v` is computed from.
    fn initializers_of(&self, v: &'a str) -> Vec<&'a str> {
        let mut out = vec![];
        let mut stack = vec![v];
        let mut seen = HashSet::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            if self.ir.is_initializer(x) {
                out.push(x);
            } else if let Some(&p) = self.ir.producer.get(x) {
                stack.extend(self.ir.nodes()[p].input.iter().map(String::as_str));
            }
        }
        out
    }
}

/// Learnable parameters per node ([`node_param_names`], counted at their first user).
pub fn node_params(ir: &Ir) -> Vec<u64> {
    node_param_names(ir)
        .into_iter()
        .map(|names| {
            names
                .into_iter()
                .map(|v| ir.fact(v).map_or(0, |f| f.numel() as u64))
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
