//! Depth pruning: residual blocks found from the graph, removed exactly (the depth-pruned
//! model equals the block gate graph with the same gates), refused where nothing would be
//! left to read, and found alike in every export of the same network.
use crate::common;
use rand::seq::index::sample;
use rand::SeedableRng;
use sepprune::analysis::blocks::find_blocks;
use sepprune::ir::Ir;
use sepprune::prune::depth::{block_gate_graph, drop_blocks};
use sepprune::runtime::{rel_err, tract::TractModel, Runtime};
use sepprune::verify;
use std::collections::BTreeMap;
use std::path::Path;

fn run(m: &sepprune::onnx::ModelProto, x: &[f32]) -> Vec<f32> {
    TractModel::new(m, &[1, 1, x.len()])
        .unwrap()
        .run(x)
        .unwrap()
}

#[test]
fn tcn_blocks_are_found_from_the_graph_and_removed_exactly() {
    let ir = Ir::new(common::tiny_tasnet(), 800).unwrap();
    let blocks = find_blocks(&ir);
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    for b in &blocks {
        // 1x1 conv, PRelu, gLN, depthwise conv, PRelu, gLN, residual and skip convs
        let convs = b
            .nodes
            .iter()
            .filter(|&&n| ir.nodes()[n].op_type() == "Conv")
            .count();
        assert_eq!(convs, 4, "block {} nodes {:?}", b.id, b.nodes);
        assert_eq!(b.merges.len(), 2, "a residual and a skip merge");
        assert!(b.params > 0 && b.macs > 0);
    }
    assert_ne!(blocks[0].input, blocks[1].input);
    let x = verify::test_signal(800, 16000.0);
    let original = run(&ir.exported(&ir.model), &x);
    let ones = run(&block_gate_graph(&ir, &blocks, &[1.0, 1.0]).unwrap(), &x);
    assert!(rel_err(&original, &ones) < 1e-6);
    for removed in [vec![0], vec![1]] {
        let gates: Vec<f32> = (0..2)
            .map(|b| if removed.contains(&b) { 0.0 } else { 1.0 })
            .collect();
        let gated = run(&block_gate_graph(&ir, &blocks, &gates).unwrap(), &x);
        let dropped = drop_blocks(&ir, &blocks, &removed).unwrap();
        let slim = run(&dropped, &x);
        assert!(rel_err(&gated, &slim) < 1e-6, "blocks {removed:?}");
        assert!(
            rel_err(&original, &slim) > 1e-3,
            "removing block {removed:?} changes the output"
        );
        // fewer nodes and parameters, no dangling initializer
        let g = dropped.graph.as_ref().unwrap();
        let before = ir.exported(&ir.model);
        assert!(g.node.len() + 25 < before.graph.as_ref().unwrap().node.len());
        let read: std::collections::HashSet<&str> = g
            .node
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .collect();
        assert!(g.initializer.iter().all(|t| read.contains(t.name())));
    }
}

#[test]
fn removing_every_block_of_a_sum_that_feeds_a_layer_is_refused() {
    let ir = Ir::new(common::tiny_tasnet(), 800).unwrap();
    let blocks = find_blocks(&ir);
    // the skip sum of both blocks feeds the mask network's PRelu: nothing would be left
    let e = drop_blocks(&ir, &blocks, &[0, 1]).unwrap_err().to_string();
    assert!(e.contains("removed blocks only"), "{e}");
    assert!(drop_blocks(&ir, &blocks, &[7]).is_err());
}

#[test]
fn a_chain_without_bypass_has_no_blocks() {
    let mut g = common::G::new(&[1, 1, -1]);
    let a = g.conv("x", 1, 4, 3, 1, 1);
    let b = g.conv(&a, 4, 4, 3, 1, 1);
    // a sum of two branches of x that both go on: no bypass, no block
    let c = g.conv(&a, 4, 4, 1, 1, 0);
    let s = g.node("Add", &[&b, &c], vec![]);
    let y = g.conv(&s, 4, 1, 1, 1, 0);
    let ir = Ir::new(g.output(&y, &[1, 1, -1]), 100).unwrap();
    assert!(find_blocks(&ir).is_empty());
}

/// Every fixture export: random sets of blocks removed equal the block gate graph in tract,
/// and the TorchScript exports of one network (opsets 13 and 17) have the same blocks
/// (dynamo's exports share shape computations between blocks of equal shapes, which keeps
/// such a block in place: it may find fewer whole blocks).
#[test]
fn fixture_exports_drop_blocks_exactly_and_alike() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    files.sort();
    assert!(files.len() >= 18);
    let mut counts: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut checked = 0;
    for f in &files {
        let model = sepprune::onnx::load(f).unwrap();
        let ir = Ir::new(model, 16000).unwrap();
        let blocks = find_blocks(&ir);
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let net = name.split('.').next().unwrap().to_string();
        if !name.contains("dynamo") {
            counts.entry(net).or_default().push(blocks.len());
        }
        if blocks.is_empty() {
            continue;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x = verify::test_signal(ir.samples, 16000.0);
        let k = blocks.len().div_ceil(2);
        let removed = sample(&mut rng, blocks.len(), k).into_vec();
        let removed = match drop_blocks(&ir, &blocks, &removed) {
            Ok(_) => removed,
            Err(_) => vec![removed[0]],
        };
        let dropped = drop_blocks(&ir, &blocks, &removed).unwrap();
        let r = verify::check_depth(&ir, &blocks, &removed, &dropped, &x, Runtime::Tract)
            .unwrap_or_else(|e| panic!("{name}: blocks {removed:?} of {}: {e}", blocks.len()));
        assert!(r.passed, "{name}: {:?}", r.trials);
        checked += 1;
    }
    for (net, c) in &counts {
        assert!(
            c.len() == 2 && c[0] == c[1],
            "{net}: blocks per TorchScript export {c:?}"
        );
    }
    println!("blocks per network: {counts:?}");
    assert!(counts["convtasnet"][0] >= 2, "{counts:?}");
    assert!(checked >= 6, "{counts:?}");
}
