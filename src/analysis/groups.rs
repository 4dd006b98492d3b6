//! Channel groups: union-find (petgraph) over (value, axis) slots joined by the per-op
//! coupling rules ([`crate::ops::OpRule::couple`]).
//!
//! A union-find class is a channel group when it holds a *source* (a producer's weight
//! output axis, e.g. Conv weight axis 0). A group is frozen when any of its slots is frozen
//! (a graph input or output, an op with no rule, an unsupported index map); the reason names
//! the node and op. Frozen groups are reported and never pruned.
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::ops::{self, Links, Slot};
use petgraph::unionfind::UnionFind;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Debug, Serialize)]
pub struct Group {
    pub id: usize,
    /// Number of channels.
    pub size: usize,
    /// Every (value, axis) that carries the group's channels.
    pub members: Vec<Slot>,
    /// The initializer members: sliced along their axis when channels are removed.
    pub params: Vec<Slot>,
    /// Names of the nodes that read or write a member.
    pub nodes: Vec<String>,
    /// Indices (in `graph.node`) of those nodes.
    #[serde(skip)]
    pub node_index: Vec<usize>,
    /// Why the group cannot be pruned: "node 'X' (Op): reason".
    pub frozen: Option<String>,
    /// A residual or skip stream: some node sums two computed values that both carry the
    /// group's channels in full, and two or more layers produce them (e.g. `x + block(x)`
    /// with `block` ending in its own conv). Budgets keep such streams whole by
    /// default, as in channel pruning of residual networks (He et al. 2017, ThiNet): they
    /// feed every block, so pruning them costs much quality and little latency.
    pub residual: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Groups {
    pub groups: Vec<Group>,
    /// Value name -> (axis, group index) of each of its axes that is in a group.
    #[serde(skip)]
    pub by_value: HashMap<String, Vec<(usize, usize)>>,
}

impl Groups {
    pub fn prunable(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter().filter(|g| g.frozen.is_none())
    }
    /// Group of a slot, when that slot belongs to one.
    pub fn of(&self, value: &str, axis: usize) -> Option<&Group> {
        self.by_value
            .get(value)?
            .iter()
            .find(|(a, _)| *a == axis)
            .map(|&(_, g)| &self.groups[g])
    }
}

/// Finds the channel groups of a model.
///
/// Errors: [`Error::Node`] when a rule links two slots of different sizes (a rule bug,
/// reported rather than pruned through).
pub fn analyze_groups(ir: &Ir) -> Result<Groups> {
    let mut slots: Vec<Slot> = vec![];
    let mut index: HashMap<Slot, usize> = HashMap::new();
    let mut intern = |s: &Slot, slots: &mut Vec<Slot>| -> usize {
        *index.entry(s.clone()).or_insert_with(|| {
            slots.push(s.clone());
            slots.len() - 1
        })
    };
    let mut pairs = vec![];
    let mut sources = vec![];
    let mut frozen: BTreeMap<usize, String> = BTreeMap::new();
    let mut touch: Vec<(usize, usize)> = vec![]; // (slot, node)
    for (ni, node) in ir.nodes().iter().enumerate() {
        if ir.is_folded(node) {
            continue;
        }
        let mut links = Links::default();
        match ops::rule(node) {
            Some(r) => r.couple(node, ir, &mut links),
            None => links.freeze_node(node, ir, "op has no rule"),
        }
        for (a, b) in &links.links {
            let (fa, fb) = (ir.fact(&a.0), ir.fact(&b.0));
            let da = fa.and_then(|f| f.shape.get(a.1)).copied();
            let db = fb.and_then(|f| f.shape.get(b.1)).copied();
            if da != db || da.is_none() {
                return Err(Error::node(
                    node,
                    format!(
                        "coupling rule links {a:?} ({da:?}) with {b:?} ({db:?}) of another size"
                    ),
                ));
            }
            let (ia, ib) = (intern(a, &mut slots), intern(b, &mut slots));
            pairs.push((ia, ib));
            touch.push((ia, ni));
            touch.push((ib, ni));
        }
        for s in &links.sources {
            let i = intern(s, &mut slots);
            sources.push(i);
            touch.push((i, ni));
        }
        for (s, why) in &links.frozen {
            let i = intern(s, &mut slots);
            frozen
                .entry(i)
                .or_insert_with(|| format!("node '{}' ({}): {why}", node.name(), node.op_type()));
            touch.push((i, ni));
        }
    }
    for (kind, names) in [
        ("graph input", ir.graph_inputs()),
        ("graph output", ir.graph_outputs()),
    ] {
        for v in names {
            let rank = ir.fact(&v).map(|f| f.rank()).unwrap_or(0);
            for ax in 0..rank {
                let i = intern(&(v.clone(), ax), &mut slots);
                frozen
                    .entry(i)
                    .or_insert_with(|| format!("{kind} '{v}' is never changed"));
            }
        }
    }
    let mut uf = UnionFind::<usize>::new(slots.len());
    for (a, b) in pairs {
        uf.union(a, b);
    }
    // Groups in order of their first source (deterministic: node order).
    let mut root_group: HashMap<usize, usize> = HashMap::new();
    let mut groups: Vec<Group> = vec![];
    for &s in &sources {
        let root = uf.find(s);
        let size = ir
            .fact(&slots[s].0)
            .map(|f| f.shape[slots[s].1])
            .unwrap_or(0);
        if size <= 1 || root_group.contains_key(&root) {
            continue;
        }
        root_group.insert(root, groups.len());
        groups.push(Group {
            id: groups.len(),
            size,
            members: vec![],
            params: vec![],
            nodes: vec![],
            node_index: vec![],
            frozen: None,
            residual: false,
        });
    }
    let mut by_value: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for (i, s) in slots.iter().enumerate() {
        if let Some(&g) = root_group.get(&uf.find(i)) {
            let grp = &mut groups[g];
            grp.members.push(s.clone());
            if ir.is_initializer(&s.0) {
                grp.params.push(s.clone());
            }
            if grp.frozen.is_none() {
                grp.frozen = frozen.get(&i).cloned();
            }
            by_value.entry(s.0.clone()).or_default().push((s.1, g));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (s, ni) in touch {
        if let Some(&g) = root_group.get(&uf.find(s)) {
            if seen.insert((g, ni)) {
                groups[g].nodes.push(ir.nodes()[ni].name().to_string());
                groups[g].node_index.push(ni);
            }
        }
    }
    for g in &mut groups {
        g.members.sort();
        g.params.sort();
    }
    // Distinct layers (weight initializers) producing each group's channels.
    let mut producers: Vec<std::collections::HashSet<&str>> =
        vec![Default::default(); groups.len()];
    for &s in &sources {
        if let Some(&g) = root_group.get(&uf.find(s)) {
            producers[g].insert(slots[s].0.as_str());
        }
    }
    let producers: Vec<usize> = producers.iter().map(|p| p.len()).collect();
    let mut gs = Groups { groups, by_value };
    mark_residual(ir, &mut gs, &producers);
    Ok(gs)
}

/// Sets [`Group::residual`] for groups summed with another branch of themselves whose
/// channels come from two or more layers (`producers[g]`: distinct weight initializers).
/// A sum of branches of one layer (the multi-scale fusion inside a U-Net block:
/// strided depthwise convs, upsampling, adds) is not a stream.
fn mark_residual(ir: &Ir, gs: &mut Groups, producers: &[usize]) {
    let mut residual = vec![];
    for node in ir.nodes() {
        if ir.is_folded(node) || !ops::rule(node).is_some_and(|r| r.sums_branches(node)) {
            continue;
        }
        let mut count: HashMap<usize, usize> = HashMap::new();
        for v in node
            .input
            .iter()
            .filter(|v| !v.is_empty() && !ir.is_const(v))
        {
            let shape = ir.fact(v).map(|f| f.shape.as_slice()).unwrap_or(&[]);
            let full: std::collections::HashSet<usize> = gs
                .by_value
                .get(v.as_str())
                .into_iter()
                .flatten()
                .filter(|&&(ax, g)| shape.get(ax) == Some(&gs.groups[g].size))
                .map(|&(_, g)| g)
                .collect();
            for g in full {
                *count.entry(g).or_default() += 1;
            }
        }
        residual.extend(
            count
                .into_iter()
                .filter(|&(g, n)| n >= 2 && producers[g] >= 2)
                .map(|(g, _)| g),
        );
    }
    for g in residual {
        gs.groups[g].residual = true;
    }
}
