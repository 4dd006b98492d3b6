//! The `inspect` report: params and MACs per node and region, and the channel groups.
use crate::analysis::{analyze_groups, Groups, Profile, Region};
use crate::error::Result;
use crate::ir::Ir;
use serde::Serialize;
use std::collections::HashMap;

#[derive(Serialize)]
pub struct GroupReport {
    pub id: usize,
    pub size: usize,
    pub members: usize,
    pub nodes: Vec<String>,
    /// Share of total MACs in nodes that read or write the group.
    pub macs_share: f64,
    /// Regions of the nodes touching the group.
    pub regions: Vec<Region>,
    pub frozen: Option<String>,
    /// A residual or skip stream (kept whole by budgets unless `--prune-residual`).
    pub residual: bool,
    /// What the channels are, from the op that defines them: `channels` (a Conv),
    /// `features` (a MatMul, Gemm or Einsum: FFN neurons, projections), `hidden units`
    /// (an RNN), `head dims` (a Reshape into attention heads or other blocks), `heads`
    /// (whole blocks of such a layout: attention heads), `conv groups` (a grouped conv's).
    pub kind: &'static str,
}

/// A group's [`GroupReport::kind`]: `heads` for whole blocks, `conv groups` for a grouped
/// conv's groups, `hidden units` when it
/// slices an RNN's recurrent weight `R` on its hidden axis, else from the op of its first
/// node.
fn kind_of(ir: &Ir, g: &crate::analysis::Group) -> &'static str {
    let recurrent = g.node_index.iter().any(|&i| {
        let n = &ir.nodes()[i];
        matches!(n.op_type(), "LSTM" | "GRU" | "RNN")
            && n.input
                .get(2)
                .is_some_and(|r| g.params.contains(&(r.clone(), 2)))
    });
    if g.heads {
        return "heads";
    }
    if g.members.iter().any(|(v, _)| v.ends_with("#groups")) {
        return "conv groups";
    }
    if recurrent {
        return "hidden units";
    }
    match g.node_index.first().map(|&i| ir.nodes()[i].op_type()) {
        Some("MatMul" | "Gemm" | "Einsum") => "features",
        Some("Reshape") => "head dims",
        _ => "channels",
    }
}

#[derive(Serialize)]
pub struct InputReport {
    pub name: String,
    pub shape: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Vec<i64>>,
}

#[derive(Serialize)]
pub struct BlockReport {
    pub id: usize,
    /// The stream value the block reads.
    pub input: String,
    /// Nodes removed with the block (its own and its merging Adds).
    pub nodes: usize,
    pub params: u64,
    pub macs: u64,
    /// The block's first node.
    pub first: String,
}

#[derive(Serialize)]
pub struct Report {
    pub samples: usize,
    /// The ptflops release whose MACs conventions apply.
    pub ptflops: crate::ops::Ptflops,
    pub params: u64,
    pub macs: u64,
    pub regions: serde_json::Value,
    pub groups: Vec<GroupReport>,
    /// Share of separator MACs in nodes touching at least one prunable group.
    pub separator_coverage: f64,
    /// Share of all MACs in nodes touching at least one prunable group.
    pub coverage: f64,
    /// Removable residual blocks (depth pruning).
    pub blocks: Vec<BlockReport>,
    /// The graph inputs as analysed: name, shape (a waveform's time axis at `samples`,
    /// features at 100 frames/s, fixed dims as declared) and, for an integer input, the
    /// value it was given (the time extent).
    pub inputs: Vec<InputReport>,
    #[serde(skip)]
    pub profile: Profile,
}

/// The report under ptflops 0.7.5 conventions.
pub fn inspect(ir: &Ir) -> Result<(Report, Groups)> {
    inspect_as(ir, crate::ops::Ptflops::default())
}

/// The report under the MACs conventions of ptflops release `ptflops`.
pub fn inspect_as(ir: &Ir, ptflops: crate::ops::Ptflops) -> Result<(Report, Groups)> {
    let prof = crate::analysis::cost::profile_as(ir, ptflops);
    let groups = analyze_groups(ir)?;
    let by_name: HashMap<&str, usize> = prof
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.node.as_str(), i))
        .collect();
    let mut covered = vec![false; prof.nodes.len()];
    let reports = groups
        .groups
        .iter()
        .map(|g| {
            let idx: Vec<usize> = g
                .nodes
                .iter()
                .filter_map(|n| by_name.get(n.as_str()).copied())
                .collect();
            let macs: u64 = idx.iter().map(|&i| prof.nodes[i].macs).sum();
            let mut regions: Vec<Region> = idx.iter().map(|&i| prof.nodes[i].region).collect();
            regions.sort();
            regions.dedup();
            if g.frozen.is_none() {
                for &i in &idx {
                    covered[i] = true;
                }
            }
            GroupReport {
                id: g.id,
                size: g.size,
                members: g.members.len(),
                nodes: g.nodes.clone(),
                macs_share: macs as f64 / prof.macs.max(1) as f64,
                regions,
                frozen: g.frozen.clone(),
                residual: g.residual,
                kind: kind_of(ir, g),
            }
        })
        .collect();
    // concatenations of prunable groups (a Concat's output, a [g, h] -> [g * h] layout)
    // change the nodes that read or write them too
    let live = |p: &crate::analysis::groups::Part| match *p {
        crate::analysis::groups::Part::Group(g)
        | crate::analysis::groups::Part::Expand { group: g, .. } => {
            groups.groups[g].frozen.is_none()
        }
        _ => false,
    };
    for c in groups.concatenated.iter().filter(|c| c.frozen.is_none()) {
        let outer_live = c.outer.is_some_and(|h| groups.groups[h].frozen.is_none());
        if !c.parts.iter().any(live) && !outer_live {
            continue;
        }
        for (v, _) in &c.members {
            let touching = ir
                .producer
                .get(v)
                .into_iter()
                .copied()
                .chain(ir.consumers.get(v).into_iter().flatten().map(|&(n, _)| n));
            for ni in touching {
                if let Some(&i) = by_name.get(ir.nodes()[ni].name()) {
                    covered[i] = true;
                }
            }
        }
    }
    let sep = |i: usize| prof.nodes[i].region == Region::Separator;
    let sep_macs: u64 = (0..prof.nodes.len())
        .filter(|&i| sep(i))
        .map(|i| prof.nodes[i].macs)
        .sum();
    let cov_macs: u64 = (0..prof.nodes.len())
        .filter(|&i| sep(i) && covered[i])
        .map(|i| prof.nodes[i].macs)
        .sum();
    let blocks = crate::analysis::blocks::find_blocks(ir)
        .into_iter()
        .map(|b| BlockReport {
            id: b.id,
            nodes: b.node_count(),
            first: ir.nodes()[b.nodes[0]].name().to_string(),
            input: b.input,
            params: b.params,
            macs: b.macs,
        })
        .collect();
    let inputs = ir
        .graph_inputs()
        .into_iter()
        .filter_map(|name| {
            let f = ir.fact(&name)?;
            Some(InputReport {
                shape: f.shape.clone(),
                value: f.value.as_ref().map(|v| v.to_i64_vec()),
                name,
            })
        })
        .collect();
    let report = Report {
        inputs,
        blocks,
        samples: prof.samples,
        ptflops,
        params: prof.params,
        macs: prof.macs,
        regions: serde_json::to_value(&prof.regions).unwrap_or_default(),
        groups: reports,
        separator_coverage: cov_macs as f64 / sep_macs.max(1) as f64,
        coverage: (0..prof.nodes.len())
            .filter(|&i| covered[i])
            .map(|i| prof.nodes[i].macs)
            .sum::<u64>() as f64
            / prof.macs.max(1) as f64,
        profile: prof,
    };
    Ok((report, groups))
}

fn fmt_count(v: u64) -> String {
    match v {
        v if v >= 1_000_000_000 => format!("{:.3} G", v as f64 / 1e9),
        v if v >= 1_000_000 => format!("{:.3} M", v as f64 / 1e6),
        v if v >= 1_000 => format!("{:.1} k", v as f64 / 1e3),
        v => v.to_string(),
    }
}

/// Human-readable text of a report (`per_node`: list every node with MACs or params).
pub fn render(r: &Report, per_node: bool) -> String {
    let mut s = String::new();
    use std::fmt::Write;
    let _ = writeln!(
        s,
        "input: {} samples (MACs by ptflops {} conventions)",
        r.samples,
        serde_json::to_value(r.ptflops)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    );
    // the shapes counted at (features at 100 frames/s, fixed shapes as declared)
    for i in &r.inputs {
        let _ = match &i.value {
            Some(v) => writeln!(s, "  {} {:?} = {:?}", i.name, i.shape, v),
            None => writeln!(s, "  {} {:?}", i.name, i.shape),
        };
    }
    let _ = writeln!(
        s,
        "total: {} params, {}Mac",
        fmt_count(r.params),
        fmt_count(r.macs)
    );
    let _ = writeln!(
        s,
        "\n{:<10} {:>12} {:>14} {:>8} {:>8}",
        "region", "params", "MACs", "params%", "MACs%"
    );
    for (reg, c) in &r.profile.regions {
        let _ = writeln!(
            s,
            "{:<10} {:>12} {:>14} {:>7.2}% {:>7.2}%",
            reg.name(),
            fmt_count(c.params),
            fmt_count(c.macs),
            100.0 * c.params as f64 / r.params.max(1) as f64,
            100.0 * c.macs as f64 / r.macs.max(1) as f64
        );
    }
    if per_node {
        let _ = writeln!(
            s,
            "\n{:<60} {:<14} {:<10} {:>12} {:>14}",
            "node", "op", "region", "params", "MACs"
        );
        for n in r
            .profile
            .nodes
            .iter()
            .filter(|n| n.macs > 0 || n.params > 0)
        {
            let _ = writeln!(
                s,
                "{:<60} {:<14} {:<10} {:>12} {:>14}",
                n.node,
                n.op,
                n.region.name(),
                n.params,
                n.macs
            );
        }
    }
    let prunable = r.groups.iter().filter(|g| g.frozen.is_none()).count();
    let _ = writeln!(
        s,
        "\nchannel groups: {} ({} prunable, {} frozen); separator MACs in prunable groups: {:.1}%",
        r.groups.len(),
        prunable,
        r.groups.len() - prunable,
        100.0 * r.separator_coverage
    );
    let _ = writeln!(
        s,
        "{:>4} {:>6} {:<12} {:>8} {:>7} {:<22} status",
        "id", "size", "kind", "members", "MACs%", "regions"
    );
    for g in &r.groups {
        let regions: Vec<&str> = g.regions.iter().map(|r| r.name()).collect();
        let first = g
            .nodes
            .iter()
            .find(|n| !n.is_empty())
            .map(String::as_str)
            .unwrap_or("an unnamed node");
        let _ = writeln!(
            s,
            "{:>4} {:>6} {:<12} {:>8} {:>6.2}% {:<22} {}",
            g.id,
            g.size,
            g.kind,
            g.members,
            100.0 * g.macs_share,
            regions.join(","),
            match &g.frozen {
                Some(why) => format!("FROZEN: {why}"),
                None if g.residual => format!("prunable, residual stream (from {first})"),
                None => format!("prunable (from {first})"),
            }
        );
    }
    if !r.blocks.is_empty() {
        let _ = writeln!(
            s,
            "\nresidual blocks: {} (removable whole: `prune --drop-blocks N`)",
            r.blocks.len()
        );
        let _ = writeln!(
            s,
            "{:>4} {:>6} {:>12} {:>14}  first node",
            "id", "nodes", "params", "MACs"
        );
        for b in &r.blocks {
            let _ = writeln!(
                s,
                "{:>4} {:>6} {:>12} {:>14}  {}",
                b.id,
                b.nodes,
                fmt_count(b.params),
                fmt_count(b.macs),
                b.first
            );
        }
    }
    s
}
