//! Channel groups: union-find (petgraph) over (value, axis) slots joined by the per-op
//! coupling rules ([`crate::ops::OpRule::couple`]).
//!
//! A union-find class is a channel group when it holds a *source* (a producer's weight
//! output axis, e.g. Conv weight axis 0). A group is frozen when any of its slots is frozen
//! (a graph input or output, an op with no rule, an unsupported index map); the reason names
//! the node and op. Frozen groups are reported and never pruned.
//!
//! Offset maps: a class that a Concat (or a Reshape merging `[D, C]`) assembles from parts
//! is a [`Concatenated`] of groups, sliced at each part's offset. When a layer defines such a
//! class whose parts are all copies of one class (attention heads, a packed q/k/v
//! projection), that block class becomes the group instead (pruned alike in every copy).
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
    /// The units are whole blocks of a layout (attention heads): the outer axis of
    /// [`Concatenated::outer`].
    pub heads: bool,
}

impl Group {
    /// A group of `size` channels (or whole blocks: `heads`) before its members are known.
    fn new(id: usize, size: usize, heads: bool) -> Group {
        Group {
            id,
            size,
            members: vec![],
            params: vec![],
            nodes: vec![],
            node_index: vec![],
            frozen: None,
            residual: false,
            heads,
        }
    }
}

/// Where the channels of one stretch of a [`Concatenated`] axis come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Part {
    /// A channel group's channels, in group order.
    Group(usize),
    /// Another concatenation (a Concat of Concats).
    Concatenated(usize),
    /// A channel group whose channel `i` spans `width` channels here, `i * width ..
    /// (i + 1) * width` (GroupNorm's groups: the group's units are whole norm groups).
    Expand { group: usize, width: usize },
    /// Channels no group defines (a graph input, a constant): never removed.
    Fixed(usize),
}

/// The slots that carry a concatenation of channel groups: a Concat's output along its
/// axis and every slot linked to it (the consumer conv's weight input axis, per-channel
/// params). Their channels are the parts' channels in order, so removing channels of a
/// part removes the same channels, shifted by the part's offset, here. Not a group
/// itself: it defines no channels and is pruned only through its parts.
#[derive(Clone, Debug, Serialize)]
pub struct Concatenated {
    pub id: usize,
    /// Number of channels (the sum of the parts').
    pub size: usize,
    pub parts: Vec<Part>,
    /// A group whose unit `i` is part `i` (attention heads over `[H, d]` copies of a head
    /// dim): removing a unit removes its whole part. The parts are then copies of one.
    pub outer: Option<usize>,
    pub members: Vec<Slot>,
    /// The initializer members: sliced along their axis when parts lose channels.
    pub params: Vec<Slot>,
    /// Why it must not change (then its parts are frozen too).
    pub frozen: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Groups {
    pub groups: Vec<Group>,
    /// Concatenations of groups (offset maps).
    pub concatenated: Vec<Concatenated>,
    /// Value name -> (axis, group index) of each of its axes that is in a group.
    #[serde(skip)]
    pub by_value: HashMap<String, Vec<(usize, usize)>>,
    /// Value name -> (axis, concatenation index) of each of its concatenated axes.
    #[serde(skip)]
    pub cat_by_value: HashMap<String, Vec<(usize, usize)>>,
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
    /// Concatenation a slot carries, when it carries one.
    pub fn concatenated_of(&self, value: &str, axis: usize) -> Option<&Concatenated> {
        self.cat_by_value
            .get(value)?
            .iter()
            .find(|(a, _)| *a == axis)
            .map(|&(_, c)| &self.concatenated[c])
    }
    /// Channel count of a part once each group `g` keeps `kept(g)` channels (`None`: all).
    pub fn part_count(&self, part: Part, kept: &dyn Fn(usize) -> Option<usize>) -> usize {
        match part {
            Part::Group(g) => kept(g).unwrap_or(self.groups[g].size),
            Part::Expand { group, width } => kept(group).unwrap_or(self.groups[group].size) * width,
            Part::Concatenated(c) => {
                let cat = &self.concatenated[c];
                match cat.outer {
                    Some(h) => {
                        kept(h).unwrap_or(self.groups[h].size) * self.part_count(cat.parts[0], kept)
                    }
                    None => cat.parts.iter().map(|&p| self.part_count(p, kept)).sum(),
                }
            }
            Part::Fixed(n) => n,
        }
    }
    /// Kept channel indices (ascending) of a part once each group `g` keeps `keep(g)`
    /// (`None`: all of them).
    pub fn part_keep(&self, part: Part, keep: &dyn Fn(usize) -> Option<Vec<usize>>) -> Vec<usize> {
        match part {
            Part::Group(g) => keep(g).unwrap_or_else(|| (0..self.groups[g].size).collect()),
            Part::Expand { group, width } => self
                .part_keep(Part::Group(group), keep)
                .into_iter()
                .flat_map(|u| u * width..(u + 1) * width)
                .collect(),
            Part::Concatenated(c) => {
                let cat = &self.concatenated[c];
                let units = cat.outer.and_then(keep);
                let mut out = vec![];
                let mut offset = 0;
                for (i, &p) in cat.parts.iter().enumerate() {
                    if units.as_ref().is_none_or(|u| u.contains(&i)) {
                        out.extend(self.part_keep(p, keep).into_iter().map(|i| i + offset));
                    }
                    offset += self.part_size(p);
                }
                out
            }
            Part::Fixed(n) => (0..n).collect(),
        }
    }
    /// For each channel of `part`, the channel of group `g` it carries (`None`: another
    /// group's channel, or a fixed one).
    pub fn channels_of(&self, part: Part, g: usize) -> Vec<Option<usize>> {
        match part {
            Part::Group(h) if h == g => (0..self.groups[g].size).map(Some).collect(),
            Part::Expand { group, width } if group == g => (0..self.groups[g].size * width)
                .map(|i| Some(i / width))
                .collect(),
            Part::Concatenated(c) if self.concatenated[c].outer == Some(g) => self.concatenated[c]
                .parts
                .iter()
                .enumerate()
                .flat_map(|(i, &p)| vec![Some(i); self.part_size(p)])
                .collect(),
            Part::Concatenated(c) => self.concatenated[c]
                .parts
                .iter()
                .flat_map(|&p| self.channels_of(p, g))
                .collect(),
            p => vec![None; self.part_size(p)],
        }
    }
    /// Channel count of a part before pruning.
    pub fn part_size(&self, part: Part) -> usize {
        match part {
            Part::Group(g) => self.groups[g].size,
            Part::Expand { group, width } => self.groups[group].size * width,
            Part::Concatenated(c) => self.concatenated[c].size,
            Part::Fixed(n) => n,
        }
    }
    /// Channel count of slot `(value, axis)` once each group `g` keeps `kept(g)` channels:
    /// `None` for a slot in no group or concatenation.
    pub fn slot_count(
        &self,
        value: &str,
        axis: usize,
        kept: &dyn Fn(usize) -> Option<usize>,
    ) -> Option<usize> {
        if let Some(g) = self.of(value, axis) {
            return Some(kept(g.id).unwrap_or(g.size));
        }
        self.concatenated_of(value, axis)
            .map(|c| self.part_count(Part::Concatenated(c.id), kept))
    }
}

/// Finds the channel groups of a model, and the concatenations of groups.
///
/// Errors: [`Error::Node`] when a rule links two slots of different sizes, or concatenates
/// parts whose sizes do not add up (a rule bug, reported rather than pruned through).
pub fn analyze_groups(ir: &Ir) -> Result<Groups> {
    let mut slots: Vec<Slot> = vec![];
    let mut index: HashMap<Slot, usize> = HashMap::new();
    let mut intern = |s: &Slot, slots: &mut Vec<Slot>| -> usize {
        *index.entry(s.clone()).or_insert_with(|| {
            slots.push(s.clone());
            slots.len() - 1
        })
    };
    // axes of no value that rules declare ([`Links::unit`]), with their sizes
    let units: std::cell::RefCell<HashMap<Slot, usize>> = Default::default();
    let size_of = |s: &Slot| {
        units
            .borrow()
            .get(s)
            .copied()
            .or_else(|| ir.fact(&s.0).and_then(|f| f.shape.get(s.1)).copied())
    };
    let mut pairs = vec![];
    let mut sources = vec![];
    let mut frozen: BTreeMap<usize, String> = BTreeMap::new();
    let mut touch: Vec<(usize, usize)> = vec![]; // (slot, node)
                                                 // (parts, whole, node, width): a Concat of parts (width 0), or a unit slot expanded
                                                 // `width` times (parts = [unit])
    let mut concats: Vec<(Vec<usize>, usize, String, usize)> = vec![];
    // (whole, a part, outer, node) of block layouts
    let mut outers: Vec<(usize, usize, usize, usize)> = vec![];
    for (ni, node) in ir.nodes().iter().enumerate() {
        // folded shape arithmetic carries no channels; a folded float tensor may (an RNN's
        // zero initial state sliced per layer from one ConstantOfShape)
        let float_out = node.output.iter().any(|o| {
            matches!(
                ir.fact(o).and_then(|f| f.value.as_ref()),
                Some(crate::onnx::Tensor::F32(_))
            )
        });
        if ir.is_folded(node) && !float_out {
            continue;
        }
        let mut links = Links::default();
        match (ops::rule(node), ir.opaque_reason(ni)) {
            (_, Some(why)) => links.freeze_node(
                node,
                ir,
                &format!("opaque op {} (shapes from tract: {why})", node.op_type()),
            ),
            (Some(r), None) => r.couple(node, ir, &mut links),
            (None, None) => links.freeze_node(node, ir, "op has no rule"),
        }
        units.borrow_mut().extend(links.units.iter().cloned());
        for (a, b) in &links.links {
            let (da, db) = (size_of(a), size_of(b));
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
        for (parts, whole) in &links.concats {
            let sum: Option<usize> = parts.iter().map(size_of).sum();
            if sum.is_none() || sum != size_of(whole) {
                return Err(Error::node(
                    node,
                    format!("concatenates {parts:?} ({sum:?} channels) into {whole:?}"),
                ));
            }
            let ps: Vec<usize> = parts.iter().map(|p| intern(p, &mut slots)).collect();
            let w = intern(whole, &mut slots);
            touch.extend(ps.iter().chain([&w]).map(|&i| (i, ni)));
            if let Some((o, _)) = links.outers.iter().find(|(_, wh)| wh == whole) {
                let o = intern(o, &mut slots);
                touch.push((o, ni));
                outers.push((w, ps[0], o, ni));
            }
            concats.push((
                ps,
                w,
                format!("node '{}' ({})", node.name(), node.op_type()),
                0,
            ));
        }
        for (unit, width, whole) in &links.expands {
            let n = size_of(unit).map(|n| n * width);
            if n.is_none() || n != size_of(whole) {
                return Err(Error::node(
                    node,
                    format!("expands {unit:?} x{width} ({n:?} channels) into {whole:?}"),
                ));
            }
            let (u, w) = (intern(unit, &mut slots), intern(whole, &mut slots));
            touch.extend([(u, ni), (w, ni)]);
            concats.push((
                vec![u],
                w,
                format!("node '{}' ({})", node.name(), node.op_type()),
                *width,
            ));
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
    // Concats whose outputs are one class (their consumer's weight is shared, as in an
    // unrolled block) must split it the same way: their parts are linked position by
    // position. Linking may merge more classes, so repeat until nothing changes.
    let mut conflicts: BTreeMap<usize, String> = BTreeMap::new(); // whole slot -> reason
    loop {
        let mut first: HashMap<usize, usize> = HashMap::new();
        let mut merged = false;
        for (ci, (parts, whole, at, width)) in concats.iter().enumerate() {
            let root = uf.find(*whole);
            let Some(&f) = first.get(&root) else {
                first.insert(root, ci);
                continue;
            };
            let other = &concats[f].0;
            let sizes = |ps: &[usize]| ps.iter().map(|&p| size_of(&slots[p])).collect::<Vec<_>>();
            if sizes(parts) != sizes(other) || *width != concats[f].3 {
                conflicts.entry(*whole).or_insert_with(|| {
                    format!(
                        "{at}: splits channels shared with '{}' differently",
                        concats[f].2
                    )
                });
                continue;
            }
            for (&a, &b) in parts.iter().zip(other) {
                merged |= uf.union(a, b);
            }
        }
        if !merged {
            break;
        }
    }
    // One layer's channels split into heads at several places (an attention block called
    // again with the same weights) split them into the same heads: one outer axis. Two
    // splits of one layer into different numbers of blocks freeze both.
    let mut first_outer: HashMap<usize, usize> = HashMap::new(); // whole root -> outer slot
    for &(w, _, o, ni) in &outers {
        let wr = uf.find(w);
        match first_outer.get(&wr) {
            None => {
                first_outer.insert(wr, o);
            }
            Some(&o0) if size_of(&slots[o0]) == size_of(&slots[o]) => {
                uf.union(o0, o);
            }
            Some(&o0) => {
                let node = &ir.nodes()[ni];
                let msg = format!(
                    "node '{}' ({}): splits a layer's channels into another number of blocks than another split of them",
                    node.name(),
                    node.op_type()
                );
                frozen.entry(o0).or_insert_with(|| msg.clone());
                frozen.entry(o).or_insert(msg);
            }
        }
    }
    let whole_roots: HashMap<usize, usize> = concats
        .iter()
        .enumerate()
        .rev()
        .map(|(ci, c)| (uf.find(c.1), ci))
        .collect();
    // Block layouts: a layer's channels laid out as n copies of one class (attention heads
    // `[heads, head_dim]`, a packed `[3, E]` q/k/v projection) are pruned block-wise: the
    // class of the block becomes the group, the layer's axis a concatenation of its copies.
    // Nested layouts (3E -> E -> head_dim) resolve one level per pass. A layer's channels
    // split into pieces that go their own ways (a Split whose outputs no layer defines)
    // become one group per piece, the layer's axis their concatenation.
    let mut proxy: HashMap<usize, usize> = HashMap::new(); // whole root -> block root
    let mut rep: HashMap<usize, usize> = HashMap::new(); // block root -> a slot of it
    let mut split_wholes: std::collections::HashSet<usize> = Default::default();
    let mut split_sources: Vec<usize> = vec![]; // a slot of each piece
    let source_roots: std::collections::HashSet<usize> =
        sources.iter().map(|&s| uf.find(s)).collect();
    loop {
        let defined: std::collections::HashSet<usize> =
            source_roots.iter().chain(rep.keys()).copied().collect();
        let mut promoted = false;
        for (parts, whole, _, width) in &concats {
            let w = uf.find(*whole);
            let first = uf.find(parts[0]);
            // n copies of one class, or the units of an expansion
            let copies =
                *width > 0 || (parts.len() > 1 && parts.iter().all(|&p| uf.find(p) == first));
            let open =
                defined.contains(&w) && !proxy.contains_key(&w) && !split_wholes.contains(&w);
            if open && copies && first != w && !source_roots.contains(&first) {
                // (several layers may copy one block class: q and k heads share head_dim)
                proxy.insert(w, first);
                rep.entry(first).or_insert(parts[0]);
                promoted = true;
                continue;
            }
            let roots: Vec<usize> = parts.iter().map(|&p| uf.find(p)).collect();
            let distinct =
                roots.iter().collect::<std::collections::HashSet<_>>().len() == roots.len();
            if open
                && *width == 0
                && roots.len() > 1
                && distinct
                && roots.iter().all(|r| *r != w && !defined.contains(r))
            {
                split_wholes.insert(w);
                for (&p, &r) in parts.iter().zip(&roots) {
                    rep.insert(r, p);
                    split_sources.push(p);
                }
                promoted = true;
            }
        }
        if !promoted {
            break;
        }
    }
    let block_of = |mut r: usize| {
        while let Some(&b) = proxy.get(&r) {
            r = b;
        }
        r
    };
    // Groups in order of their first source (deterministic: node order).
    let mut root_group: HashMap<usize, usize> = HashMap::new();
    let mut groups: Vec<Group> = vec![];
    for &s in sources.iter().chain(&split_sources) {
        let root = block_of(uf.find(s));
        if split_wholes.contains(&root) {
            continue;
        }
        let slot = rep.get(&root).copied().unwrap_or(s);
        let size = size_of(&slots[slot]).unwrap_or(0);
        if size <= 1 || root_group.contains_key(&root) {
            continue;
        }
        root_group.insert(root, groups.len());
        groups.push(Group::new(groups.len(), size, false));
    }
    // The outer axes of block layouts: when a layer's channels are laid out as copies of a
    // block class along one outer axis (attention heads: q/k/v/out
    // projections through `[E] <-> [H, d]`), the outer axis is a group of whole blocks.
    // Any other outer axis (a time axis folded with channels, RNN directions) is frozen.
    let frozen_roots: std::collections::HashSet<usize> =
        frozen.keys().map(|&i| uf.find(i)).collect();
    let mut outer_of: HashMap<usize, usize> = HashMap::new(); // whole root -> outer slot
    for &(w, part, o, ni) in &outers {
        let (wr, root) = (uf.find(w), uf.find(o));
        // the blocks are a layer's channels: copies of a block class
        let blocks = rep.contains_key(&block_of(uf.find(part)));
        let size = size_of(&slots[o]).unwrap_or(0);
        let heads = root_group.get(&root).is_some_and(|&g| groups[g].heads);
        let fresh = !frozen_roots.contains(&root)
            && !root_group.contains_key(&root)
            && !whole_roots.contains_key(&root)
            && !proxy.contains_key(&root)
            && !source_roots.contains(&root);
        if !blocks || size <= 1 || !(heads || fresh) {
            let node = &ir.nodes()[ni];
            frozen.entry(o).or_insert_with(|| {
                format!(
                    "node '{}' ({}): merges or splits this axis with an inner one",
                    node.name(),
                    node.op_type()
                )
            });
            continue;
        }
        outer_of.entry(wr).or_insert(o);
        if fresh {
            root_group.insert(root, groups.len());
            groups.push(Group::new(groups.len(), size, true));
        }
    }
    // Concatenations: classes of Concat outputs that no layer defines.
    let mut root_cat: HashMap<usize, usize> = HashMap::new();
    let mut cat_roots: Vec<(usize, usize)> = whole_roots.into_iter().collect();
    cat_roots.sort_by_key(|&(_, ci)| ci);
    for &(root, ci) in &cat_roots {
        if root_group.contains_key(&root) {
            let at = &concats[ci].2;
            let g = root_group[&root];
            conflicts.entry(concats[ci].1).or_insert_with(|| {
                format!("{at}: group {g}'s channels are laid out in blocks that must keep the same channels (block-structured pruning is not implemented)")
            });
            continue;
        }
        root_cat.insert(root, root_cat.len());
    }
    let part_of = |slot: usize, uf: &mut UnionFind<usize>| -> Part {
        let r = uf.find(slot);
        match (root_group.get(&r), root_cat.get(&r)) {
            (Some(&g), _) => Part::Group(g),
            (None, Some(&c)) => Part::Concatenated(c),
            _ => Part::Fixed(size_of(&slots[slot]).unwrap_or(0)),
        }
    };
    let mut concatenated: Vec<Concatenated> = vec![];
    let mut cat_frozen: Vec<Option<String>> = vec![];
    for &(root, ci) in &cat_roots {
        if !root_cat.contains_key(&root) {
            continue;
        }
        let (parts, whole, at, width) = &concats[ci];
        let parts = match (*width, part_of(parts[0], &mut uf)) {
            (0, _) => parts.iter().map(|&p| part_of(p, &mut uf)).collect(),
            (width, Part::Group(group)) => vec![Part::Expand { group, width }],
            (width, Part::Fixed(n)) => vec![Part::Fixed(n * width)],
            _ => {
                conflicts.entry(*whole).or_insert_with(|| {
                    format!("{at}: expands channels that are themselves concatenated")
                });
                vec![Part::Fixed(size_of(&slots[*whole]).unwrap_or(0))]
            }
        };
        // whole blocks along an outer axis, when the parts are copies of one
        let outer = outer_of
            .get(&root)
            .and_then(|&o| root_group.get(&uf.find(o)).copied())
            .filter(|&h| parts.len() == groups[h].size && parts.iter().all(|p| *p == parts[0]));
        concatenated.push(Concatenated {
            id: concatenated.len(),
            size: size_of(&slots[*whole]).unwrap_or(0),
            parts,
            outer,
            members: vec![],
            params: vec![],
            frozen: None,
        });
        cat_frozen.push(None);
    }
    let mut by_value: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    let mut cat_by_value: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for (i, s) in slots.iter().enumerate() {
        let root = uf.find(i);
        let why = frozen.get(&i).or(conflicts.get(&i));
        if let Some(&g) = root_group.get(&root) {
            let grp = &mut groups[g];
            grp.members.push(s.clone());
            if ir.is_stored_constant(&s.0) {
                grp.params.push(s.clone());
            }
            if grp.frozen.is_none() {
                grp.frozen = why.cloned();
            }
            by_value.entry(s.0.clone()).or_default().push((s.1, g));
        } else if let Some(&c) = root_cat.get(&root) {
            let cat = &mut concatenated[c];
            cat.members.push(s.clone());
            if ir.is_stored_constant(&s.0) {
                cat.params.push(s.clone());
            }
            if cat_frozen[c].is_none() {
                cat_frozen[c] = why.cloned();
            }
            cat_by_value.entry(s.0.clone()).or_default().push((s.1, c));
        }
    }
    // A frozen concatenation (it reaches a graph output, an op without a rule) or a
    // conflicting one freezes its parts.
    for (&slot, why) in &conflicts {
        let mut hit = vec![part_of(slot, &mut uf)];
        for (parts, whole, _, _) in &concats {
            if *whole == slot {
                hit.extend(parts.iter().map(|&p| part_of(p, &mut uf)));
            }
        }
        for part in hit {
            match part {
                Part::Group(g) | Part::Expand { group: g, .. } => {
                    groups[g].frozen.get_or_insert_with(|| why.clone())
                }
                Part::Concatenated(c) => cat_frozen[c].get_or_insert_with(|| why.clone()),
                Part::Fixed(_) => continue,
            };
        }
    }
    loop {
        let mut changed = false;
        for c in 0..concatenated.len() {
            let Some(why) = cat_frozen[c].clone() else {
                continue;
            };
            if let Some(h) = concatenated[c].outer {
                if groups[h].frozen.is_none() {
                    groups[h].frozen = Some(format!("its blocks are a frozen axis: {why}"));
                    changed = true;
                }
            }
            for &p in &concatenated[c].parts {
                let slot = match p {
                    Part::Group(g) | Part::Expand { group: g, .. } => &mut groups[g].frozen,
                    Part::Concatenated(k) => &mut cat_frozen[k],
                    Part::Fixed(_) => continue,
                };
                if slot.is_none() {
                    *slot = Some(format!("concatenated into a frozen axis: {why}"));
                    changed = true;
                }
            }
        }
        if !changed {
            break;
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
    for (c, why) in concatenated.iter_mut().zip(cat_frozen) {
        c.members.sort();
        c.params.sort();
        c.frozen = why;
    }
    // Distinct layers (weight initializers) producing each group's channels.
    let mut producers: Vec<std::collections::HashSet<&str>> =
        vec![Default::default(); groups.len()];
    for &s in &sources {
        if let Some(&g) = root_group.get(&block_of(uf.find(s))) {
            producers[g].insert(slots[s].0.as_str());
        }
    }
    let producers: Vec<usize> = producers.iter().map(|p| p.len()).collect();
    let mut gs = Groups {
        groups,
        concatenated,
        by_value,
        cat_by_value,
    };
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
