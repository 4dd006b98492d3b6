//! Channel-group and shape rules, op by op, on small graphs built in code.
use crate::common;
use common::G;
use sepprune::analysis::analyze_groups;
use sepprune::ir::Ir;
use sepprune::onnx::{int_attr, ints_attr};

fn groups_of(m: sepprune::onnx::ModelProto, samples: usize) -> (Ir, sepprune::analysis::Groups) {
    let ir = Ir::new(m, samples).unwrap();
    let g = analyze_groups(&ir).unwrap();
    (ir, g)
}

/// The slimmed model computes the gate graph's function under `masks` (tract, on an input
/// of `samples` values in all).
fn assert_slim_equals_gated(
    ir: &Ir,
    gs: &sepprune::analysis::Groups,
    masks: &sepprune::prune::Masks,
    slim: &Ir,
    samples: usize,
) {
    let x = sepprune::verify::test_signal(samples, 16000.0);
    let r = sepprune::verify::check(
        ir,
        gs,
        Some((masks, Some(&slim.model))),
        0,
        0,
        &x,
        sepprune::runtime::Runtime::Tract,
    )
    .unwrap();
    assert!(r.passed, "{:?}", r.trials);
}

/// Candle's forward of `model` on a `[1, channels, t]` test signal equals tract's.
fn assert_candle_matches_tract(model: &sepprune::onnx::ModelProto, channels: usize, t: usize) {
    let x = sepprune::verify::test_signal(channels * t, 16000.0);
    let want = sepprune::runtime::tract::TractModel::new(model, &[1, channels, t])
        .unwrap()
        .run(&x)
        .unwrap();
    let dev = candle_core::Device::Cpu;
    let cg = sepprune::learn::CandleGraph::new(
        Ir::new(model.clone(), t).unwrap(),
        &dev,
        candle_core::DType::F32,
        &[],
    )
    .unwrap();
    let input = candle_core::Tensor::from_vec(x, (1, channels, t), &dev).unwrap();
    let got: Vec<f32> = cg
        .forward(&input, &Default::default())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let e = sepprune::runtime::rel_err(&want, &got);
    assert!(e <= 1e-4, "Candle vs tract: rel err {e}");
}

#[test]
fn conv_prelu_conv_forms_one_group_with_every_per_channel_tensor() {
    let mut g = G::new(&[1, 4, -1]);
    let h = g.conv("x", 4, 8, 3, 1, 1);
    let slope = g.weight("slope", &[8, 1]);
    let p = g.node("PRelu", &[&h, &slope], vec![]);
    let y = g.conv(&p, 8, 4, 1, 1, 0);
    let (_, gs) = groups_of(g.output(&y, &[1, 4, -1]), 50);
    let prunable: Vec<_> = gs.prunable().collect();
    assert_eq!(prunable.len(), 1);
    let grp = prunable[0];
    assert_eq!(grp.size, 8);
    let params: Vec<(&str, usize)> = grp.params.iter().map(|(v, a)| (v.as_str(), *a)).collect();
    assert_eq!(params, vec![("b0", 0), ("slope", 0), ("w0", 0), ("w2", 1)]);
    // the output conv's channels reach the graph output: frozen, with the reason
    let out_group = gs
        .groups
        .iter()
        .find(|g| g.size == 4 && g.params.iter().any(|p| p.0 == "w2"))
        .unwrap();
    assert!(out_group
        .frozen
        .as_deref()
        .unwrap()
        .contains("graph output"));
}

#[test]
fn depthwise_conv_couples_input_and_output() {
    let mut g = G::new(&[1, 2, -1]);
    let a = g.conv("x", 2, 6, 1, 1, 0);
    let d = g.conv(&a, 6, 6, 3, 6, 1); // depthwise
    let y = g.conv(&d, 6, 2, 1, 1, 0);
    let (_, gs) = groups_of(g.output(&y, &[1, 2, -1]), 40);
    let first = gs.of("w0", 0).unwrap();
    assert!(
        first.params.contains(&("w1".into(), 0)),
        "depthwise weight joins the group"
    );
    assert!(first.frozen.is_none(), "{:?}", first.frozen);
}

/// conv 2 -> 6, grouped conv 6 -> 9 (3 groups), PReLU, grouped ConvTranspose 9 -> 6
/// (3 groups, stride 2), conv 6 -> 2.
fn grouped_conv_model() -> sepprune::onnx::ModelProto {
    let mut g = G::new(&[1, 2, -1]);
    let a = g.conv("x", 2, 6, 1, 1, 0);
    let gc = g.conv(&a, 6, 9, 3, 3, 1);
    let slope = g.weight("slope", &[9, 1]);
    let p = g.node("PRelu", &[&gc, &slope], vec![]);
    let wt = g.weight("wt", &[9, 2, 4]);
    let bt = g.weight("bt", &[6]);
    let t = g.node(
        "ConvTranspose",
        &[&p, &wt, &bt],
        vec![
            ints_attr("kernel_shape", &[4]),
            ints_attr("strides", &[2]),
            int_attr("group", 3),
            ints_attr("pads", &[1, 1]),
        ],
    );
    let y = g.conv(&t, 6, 2, 1, 1, 0);
    g.output(&y, &[1, 2, -1])
}

#[test]
fn grouped_convs_are_pruned_in_whole_groups() {
    use sepprune::analysis::groups::Part;
    let (ir, gs) = groups_of(grouped_conv_model(), 40);
    // one group: the 3 conv groups, shared by both grouped convs (the PReLU links them)
    let unit = gs.of("w1#groups", 0).expect("the conv groups form a group");
    assert_eq!(unit.size, 3);
    assert!(unit.frozen.is_none(), "{:?}", unit.frozen);
    let expand = |width| {
        vec![Part::Expand {
            group: unit.id,
            width,
        }]
    };
    for (v, a, width) in [
        ("w0", 0, 2),
        ("b0", 0, 2),
        ("w1", 0, 3),
        ("b1", 0, 3),
        ("slope", 0, 3),
        ("wt", 0, 3),
        ("bt", 0, 2),
        ("w4", 1, 2),
    ] {
        let c = gs.concatenated_of(v, a).unwrap_or_else(|| panic!("{v}"));
        assert_eq!(c.parts, expand(width), "{v}");
    }
    assert!(gs.concatenated_of("w1", 1).is_none(), "[Cin/g] stays whole");
    let (report, _) = sepprune::inspect::inspect(&ir).unwrap();
    assert_eq!(report.groups[unit.id].kind, "conv groups");
    // drop the middle group
    let mut masks = sepprune::prune::Masks::new();
    masks.insert(unit.id, 3, vec![0, 2]);
    let slim = sepprune::prune::slim(&ir, &gs, &masks).unwrap();
    let init = |ir: &Ir, n: &str| ir.initializer(n).unwrap();
    assert_eq!(init(&slim, "w0"), init(&ir, "w0").select(0, &[0, 1, 4, 5]));
    assert_eq!(
        init(&slim, "w1"),
        init(&ir, "w1").select(0, &[0, 1, 2, 6, 7, 8])
    );
    assert_eq!(
        init(&slim, "wt"),
        init(&ir, "wt").select(0, &[0, 1, 2, 6, 7, 8])
    );
    assert_eq!(init(&slim, "bt"), init(&ir, "bt").select(0, &[0, 1, 4, 5]));
    for op in ["Conv", "ConvTranspose"] {
        let groups: Vec<_> = slim
            .nodes()
            .iter()
            .filter(|n| n.op_type() == op)
            .filter_map(|n| sepprune::onnx::attr_i(n, "group"))
            .filter(|&g| g > 1)
            .collect();
        assert_eq!(
            groups,
            vec![2],
            "{op}: the group attribute follows the groups kept"
        );
    }
    assert_slim_equals_gated(&ir, &gs, &masks, &slim, 2 * 40);
    assert_candle_matches_tract(
        &sepprune::gates::gate_graph(&ir, &gs, Some(&masks)).unwrap(),
        2,
        40,
    );
}

#[test]
fn residual_add_couples_both_branches() {
    let mut g = G::new(&[1, 3, -1]);
    let a = g.conv("x", 3, 5, 1, 1, 0);
    let b = g.conv(&a, 5, 5, 3, 1, 1);
    let s = g.node("Add", &[&a, &b], vec![]);
    let r = g.node("Relu", &[&s], vec![]);
    let y = g.conv(&r, 5, 1, 1, 1, 0);
    let (_, gs) = groups_of(g.output(&y, &[1, 1, -1]), 30);
    let ga = gs.of("w0", 0).unwrap().id;
    assert_eq!(
        gs.of("w1", 0).unwrap().id,
        ga,
        "residual add joins both producers"
    );
    assert_eq!(gs.of("w1", 1).unwrap().id, ga, "the residual consumer too");
    assert_eq!(
        gs.of("w4", 1).unwrap().id,
        ga,
        "and the consumer after the add"
    );
    assert!(gs.of("w0", 0).unwrap().frozen.is_none());
}

#[test]
fn decomposed_global_layer_norm_is_a_member_not_a_blocker() {
    let mut g = G::new(&[1, 2, -1]);
    let h = g.conv("x", 2, 6, 1, 1, 0);
    let m = g.node(
        "ReduceMean",
        &[&h],
        vec![ints_attr("axes", &[1, 2]), int_attr("keepdims", 1)],
    );
    let c = g.node("Sub", &[&h, &m], vec![]);
    let sq = g.node("Mul", &[&c, &c], vec![]);
    let v = g.node(
        "ReduceMean",
        &[&sq],
        vec![ints_attr("axes", &[1, 2]), int_attr("keepdims", 1)],
    );
    let eps = g.const_f("eps", &[], vec![1e-8]);
    let ve = g.node("Add", &[&v, &eps], vec![]);
    let sd = g.node("Sqrt", &[&ve], vec![]);
    let n = g.node("Div", &[&c, &sd], vec![]);
    let t = g.node("Transpose", &[&n], vec![ints_attr("perm", &[0, 2, 1])]);
    let gamma = g.weight("gamma", &[6]);
    let gm = g.node("Mul", &[&gamma, &t], vec![]);
    let t2 = g.node("Transpose", &[&gm], vec![ints_attr("perm", &[0, 2, 1])]);
    let y = g.conv(&t2, 6, 2, 1, 1, 0);
    let (_, gs) = groups_of(g.output(&y, &[1, 2, -1]), 30);
    let grp = gs.of("w0", 0).unwrap();
    assert!(grp.frozen.is_none(), "{:?}", grp.frozen);
    assert!(grp.params.contains(&("gamma".into(), 0)));
    // the consumer conv (node 11) reads the group on its weight's input axis
    assert!(grp.params.contains(&("w11".into(), 1)), "{:?}", grp.params);
}

#[test]
fn an_op_without_a_rule_is_opaque_and_one_no_runtime_knows_is_reported() {
    // LpNormalization has no rule: tract's analyser gives its shapes, the node is opaque and
    // the channels through it freeze, with the op named
    let mut g = G::new(&[1, 2, -1]);
    let h = g.conv("x", 2, 6, 1, 1, 0);
    let u = g.node("LpNormalization", &[&h], vec![]);
    let y = g.conv(&u, 6, 2, 1, 1, 0);
    let model = g.output(&y, &[1, 2, -1]);
    let ir = Ir::new(model, 30).unwrap();
    let ni = ir
        .nodes()
        .iter()
        .position(|n| n.op_type() == "LpNormalization")
        .unwrap();
    assert!(ir.opaque_reason(ni).is_some());
    assert_eq!(ir.fact(&u).unwrap().shape, vec![1, 6, 30]);
    let gs = analyze_groups(&ir).unwrap();
    let why = gs.of(&h, 1).unwrap().frozen.clone().unwrap();
    assert!(why.contains("LpNormalization"), "{why}");
    // an op that neither the rules nor tract know: an error naming the node and the op
    let mut g = G::new(&[1, 2, -1]);
    let h = g.conv("x", 2, 6, 1, 1, 0);
    let u = g.node("NoSuchOp", &[&h], vec![]);
    let model = g.output(&u, &[1, 6, -1]);
    let err = Ir::new(model, 30).err().unwrap().to_string();
    assert!(
        err.contains("NoSuchOp") && err.contains("n1_NoSuchOp"),
        "{err}"
    );
}

#[test]
fn reshape_keeping_the_axis_links_and_merging_freezes() {
    let mut g = G::new(&[1, 2, -1]);
    let h = g.conv("x", 2, 6, 1, 1, 0);
    let shp = g.const_i("shp", vec![1, 1, 6, -1]);
    let r = g.node("Reshape", &[&h, &shp], vec![]);
    let shp2 = g.const_i("shp2", vec![1, 6, -1]);
    let r2 = g.node("Reshape", &[&r, &shp2], vec![]);
    let a = g.conv(&r2, 6, 4, 1, 1, 0);
    let flat = g.const_i("flat", vec![1, -1]);
    let f = g.node("Reshape", &[&a, &flat], vec![]);
    let (_, gs) = groups_of(g.output(&f, &[1, -1]), 20);
    assert!(gs.of("w0", 0).unwrap().frozen.is_none());
    assert_eq!(gs.of(&r, 2).unwrap().id, gs.of("w0", 0).unwrap().id);
    assert!(gs
        .of("w3", 0)
        .unwrap()
        .frozen
        .as_deref()
        .unwrap()
        .contains("merges"));
}

#[test]
fn shape_subgraphs_fold_to_constants() {
    let mut g = G::new(&[1, 2, -1]);
    let h = g.conv("x", 2, 6, 1, 1, 0);
    let s = g.node("Shape", &[&h], vec![]);
    let st = g.const_i("st", vec![-1]);
    let en = g.const_i("en", vec![i64::MAX]);
    let sl = g.node("Slice", &[&s, &st, &en], vec![]);
    let m1 = g.const_i("m1", vec![-1, 3]);
    let tgt = g.node("Concat", &[&m1, &sl], vec![int_attr("axis", 0)]);
    let r = g.node("Reshape", &[&h, &tgt], vec![]);
    let ir = Ir::new(g.output(&r, &[-1, 3, -1]), 25).unwrap();
    let v = ir.fact(&tgt).unwrap().value.clone().unwrap().to_i64_vec();
    assert_eq!(v, vec![-1, 3, 25]);
    assert_eq!(ir.fact(&r).unwrap().shape, vec![2, 3, 25]);
}

/// x -> conv a (3 ch) and conv b (5 ch) -> Concat(axis 1) -> PRelu (8) -> conv (8 -> 2).
fn concat_model(concat_out: bool) -> sepprune::onnx::ModelProto {
    let mut g = G::new(&[1, 2, -1]);
    let a = g.conv("x", 2, 3, 1, 1, 0);
    let b = g.conv("x", 2, 5, 3, 1, 1);
    let c = g.node("Concat", &[&a, &b], vec![int_attr("axis", 1)]);
    if concat_out {
        return g.output(&c, &[1, 8, -1]);
    }
    let slope = g.weight("slope", &[8, 1]);
    let p = g.node("PRelu", &[&c, &slope], vec![]);
    let y = g.conv(&p, 8, 2, 1, 1, 0);
    g.output(&y, &[1, 2, -1])
}

#[test]
fn channel_concat_is_an_offset_map_over_its_parts() {
    use sepprune::analysis::groups::Part;
    let (ir, gs) = groups_of(concat_model(false), 40);
    let (ga, gb) = (gs.of("w0", 0).unwrap(), gs.of("w1", 0).unwrap());
    assert!(ga.frozen.is_none() && gb.frozen.is_none());
    assert_ne!(ga.id, gb.id, "each part keeps its own group");
    let cat = gs
        .concatenated_of("w4", 1)
        .expect("consumer weight is concatenated");
    assert_eq!(cat.parts, vec![Part::Group(ga.id), Part::Group(gb.id)]);
    assert!(cat.params.contains(&("slope".into(), 0)));
    // slicing: part b's channels sit at offset 3 of the consumer's input axis
    let mut m = sepprune::prune::Masks::new();
    m.insert(ga.id, 3, vec![0, 2]);
    m.insert(gb.id, 5, vec![1, 4]);
    let slim = sepprune::prune::slim(&ir, &gs, &m).unwrap();
    let w = |ir: &Ir, n: &str| ir.initializer(n).unwrap();
    let (old, new) = (w(&ir, "w4"), w(&slim, "w4"));
    assert_eq!(new.shape(), vec![2, 4, 1]);
    assert_eq!(new, old.select(1, &[0, 2, 4, 7]));
    assert_eq!(w(&slim, "slope"), w(&ir, "slope").select(0, &[0, 2, 4, 7]));
    // and the slimmed model computes the gate graph's function
    assert_slim_equals_gated(&ir, &gs, &m, &slim, 2 * 57);
}

#[test]
fn a_concatenation_reaching_a_graph_output_freezes_its_parts() {
    let (_, gs) = groups_of(concat_model(true), 40);
    for w in ["w0", "w1"] {
        let why = gs.of(w, 0).unwrap().frozen.clone().unwrap_or_default();
        assert!(why.contains("graph output"), "{w}: {why}");
    }
}

#[test]
fn bidirectional_lstm_hidden_units_form_a_group_in_gate_blocks() {
    use sepprune::analysis::groups::Part;
    let (ir, gs) = groups_of(common::tiny_bilstm(), 9);
    let h = gs.of("R", 2).expect("hidden units form a group");
    assert!(h.frozen.is_none(), "{:?}", h.frozen);
    assert_eq!(h.size, 6);
    let blocks = |v: &str, n: usize| {
        let c = gs
            .concatenated_of(v, 1)
            .unwrap_or_else(|| panic!("{v} axis 1"));
        assert_eq!(c.parts, vec![Part::Group(h.id); n], "{v}");
    };
    blocks("W", 4); // gates i, o, f, c
    blocks("R", 4);
    blocks("B", 8); // Wb and Rb
    let both = gs
        .concatenated_of("P", 0)
        .expect("projection reads both directions");
    assert_eq!(both.parts, vec![Part::Group(h.id); 2]);
    assert!(
        gs.of("W", 2).is_none(),
        "input features: the graph input, no group"
    );

    let mut m = sepprune::prune::Masks::new();
    m.insert(h.id, 6, vec![1, 4]);
    let slim = sepprune::prune::slim(&ir, &gs, &m).unwrap();
    let init = |ir: &Ir, n: &str| ir.initializer(n).unwrap();
    assert_eq!(
        init(&slim, "P"),
        init(&ir, "P").select(0, &[1, 4, 7, 10]),
        "both directions' units, at offsets 0 and 6"
    );
    assert_eq!(
        init(&slim, "R"),
        init(&ir, "R")
            .select(1, &[1, 4, 7, 10, 13, 16, 19, 22])
            .select(2, &[1, 4])
    );
    assert_slim_equals_gated(&ir, &gs, &m, &slim, 4 * 13);
}

#[test]
fn a_layer_split_into_heads_is_pruned_head_dim_wise() {
    use sepprune::analysis::groups::Part;
    let mut g = G::new(&[1, 4, -1]);
    let t = g.node("Transpose", &["x"], vec![ints_attr("perm", &[0, 2, 1])]); // [1, T, 4]
    let wq = g.weight("Wq", &[4, 8]);
    let q = g.node("MatMul", &[&t, &wq], vec![]); // [1, T, 8]
    let split = g.const_i("split", vec![0, 0, 2, 4]);
    let heads = g.node("Reshape", &[&q, &split], vec![]); // [1, T, 2 heads, 4]
    let act = g.node("Tanh", &[&heads], vec![]);
    let merge = g.const_i("merge", vec![0, 0, 8]);
    let m = g.node("Reshape", &[&act, &merge], vec![]);
    let wo = g.weight("Wo", &[8, 4]);
    let o = g.node("MatMul", &[&m, &wo], vec![]);
    let y = g.node("Transpose", &[&o], vec![ints_attr("perm", &[0, 2, 1])]);
    let (ir, gs) = groups_of(g.output(&y, &[1, 4, -1]), 11);
    let hd = gs.of(&heads, 3).expect("head_dim is the group");
    assert_eq!(hd.size, 4);
    assert!(hd.frozen.is_none(), "{:?}", hd.frozen);
    for (v, a) in [("Wq", 1), ("Wo", 0)] {
        let c = gs.concatenated_of(v, a).unwrap();
        assert_eq!(c.parts, vec![Part::Group(hd.id); 2], "{v}");
    }
    let mut masks = sepprune::prune::Masks::new();
    masks.insert(hd.id, 4, vec![0, 3]);
    let slim = sepprune::prune::slim(&ir, &gs, &masks).unwrap();
    let init = |ir: &Ir, n: &str| ir.initializer(n).unwrap();
    assert_eq!(init(&slim, "Wq"), init(&ir, "Wq").select(1, &[0, 3, 4, 7]));
    assert_eq!(
        init(&slim, "split"),
        sepprune::onnx::Tensor::vec_i64(vec![0, 0, 2, 2])
    );
    assert_slim_equals_gated(&ir, &gs, &masks, &slim, 4 * 11);
}

/// Self-attention as transformers exports it: `x [1, 4, T]` -> `[1, T, 4]`, q/k/v
/// projections to `E = 3 heads x 4`, Reshape `[1, T, 3, 4]`, Transpose to `[1, 3, T, 4]`,
/// `softmax(q k^T / 2) v`, back to `[1, T, 12]`, a per-head bias on the scores
/// (`[3, 1, 1]`, like WavLM's relative-position bias), the output projection.
fn attention_model() -> sepprune::onnx::ModelProto {
    let mut g = G::new(&[1, 4, -1]);
    attention_weights(&mut g);
    let y = attend(&mut g, "x", true);
    g.output(&y, &[1, 4, -1])
}

/// The weights of [`attend`]: `Wq`, `Wk`, `Wv` `[4, 12]`, `head_bias` `[3, 1, 1]`, `Wo`
/// `[12, 4]`, and the shapes `split` and `merge`.
fn attention_weights(g: &mut G) {
    for w in ["Wq", "Wk", "Wv"] {
        g.weight(w, &[4, 12]);
    }
    g.weight("head_bias", &[3, 1, 1]);
    g.weight("Wo", &[12, 4]);
    g.const_i("split", vec![0, 0, 3, 4]);
    g.const_i("merge", vec![0, 0, 12]);
    g.const_f("half", &[], vec![0.5]);
}

/// One pass of the attention block of [`attention_model`] on `x` `[1, 4, T]`, reading the
/// weights [`attention_weights`] made (a block called twice shares them), with or without
/// the per-head bias.
fn attend(g: &mut G, x: &str, head_bias: bool) -> String {
    let t = g.node("Transpose", &[x], vec![ints_attr("perm", &[0, 2, 1])]);
    let mut heads = vec![];
    for (w, perm) in [
        ("Wq", [0, 2, 1, 3]),
        ("Wk", [0, 2, 3, 1]),
        ("Wv", [0, 2, 1, 3]),
    ] {
        let p = g.node("MatMul", &[&t, w], vec![]);
        let r = g.node("Reshape", &[&p, "split"], vec![]);
        heads.push(g.node("Transpose", &[&r], vec![ints_attr("perm", &perm)]));
    }
    let scores = g.node("MatMul", &[&heads[0], &heads[1]], vec![]); // [1, 3, T, T]
    let scaled = g.node("Mul", &[&scores, "half"], vec![]);
    let biased = if head_bias {
        g.node("Add", &[&scaled, "head_bias"], vec![])
    } else {
        scaled
    };
    let probs = g.node("Softmax", &[&biased], vec![int_attr("axis", -1)]);
    let ctx = g.node("MatMul", &[&probs, &heads[2]], vec![]); // [1, 3, T, 4]
    let back = g.node("Transpose", &[&ctx], vec![ints_attr("perm", &[0, 2, 1, 3])]);
    let m = g.node("Reshape", &[&back, "merge"], vec![]);
    let o = g.node("MatMul", &[&m, "Wo"], vec![]);
    g.node("Transpose", &[&o], vec![ints_attr("perm", &[0, 2, 1])])
}

/// An attention block called twice with the same weights (TDANet's recurrent global
/// attention) splits one layer's channels into heads twice: both splits are one heads
/// group, and every mask slices the shared weights and both Reshapes alike. Without a
/// per-head bias, only the shared projections tie the two calls' heads.
#[test]
fn an_attention_block_called_twice_has_one_heads_group() {
    let mut g = G::new(&[1, 4, -1]);
    attention_weights(&mut g);
    let a = attend(&mut g, "x", false);
    let b = attend(&mut g, &a, false);
    let (ir, gs) = groups_of(g.output(&b, &[1, 4, -1]), 9);
    let heads: Vec<_> = gs.groups.iter().filter(|g| g.heads).collect();
    assert_eq!(heads.len(), 1, "{:?}", gs.groups);
    assert!(heads[0].frozen.is_none(), "{:?}", heads[0]);
    let (qk, v) = (
        gs.of(&ir.nodes()[2].output[0], 3).expect("q/k head dims"),
        gs.of(&ir.nodes()[8].output[0], 3).expect("v head dims"),
    );
    // (heads, q/k dims, v dims) kept
    let cases: [(&[usize], &[usize], &[usize]); 4] = [
        (&[0, 2], &[1, 3], &[0, 1, 2]),
        (&[1], &[0], &[3]),
        (&[0, 1, 2], &[0, 2, 3], &[1, 2]),
        (&[2], &[0, 1, 2, 3], &[0, 1, 2, 3]),
    ];
    for (h, d, dv) in cases {
        let mut masks = sepprune::prune::Masks::new();
        masks.insert(heads[0].id, 3, h.to_vec());
        masks.insert(qk.id, 4, d.to_vec());
        masks.insert(v.id, 4, dv.to_vec());
        let slim = sepprune::prune::slim(&ir, &gs, &masks).unwrap();
        assert_slim_equals_gated(&ir, &gs, &masks, &slim, 4 * 9);
    }
}

#[test]
fn attention_heads_are_pruned_whole_and_head_dims_alike_in_every_head() {
    use sepprune::analysis::groups::Part;
    let (ir, gs) = groups_of(attention_model(), 9);
    let heads = gs.of("head_bias", 0).expect("the heads form a group");
    assert_eq!(heads.size, 3);
    assert!(heads.heads && heads.frozen.is_none(), "{heads:?}");
    let (report, _) = sepprune::inspect::inspect(&ir).unwrap();
    assert_eq!(report.groups[heads.id].kind, "heads");
    let qk = gs.of(&ir.nodes()[2].output[0], 3).expect("q/k head dims");
    let v = gs.of(&ir.nodes()[8].output[0], 3).expect("v head dims");
    assert_ne!(qk.id, v.id, "q/k and v head dims are apart");
    for (w, a, dims) in [
        ("Wq", 1, qk.id),
        ("Wk", 1, qk.id),
        ("Wv", 1, v.id),
        ("Wo", 0, v.id),
    ] {
        let c = gs.concatenated_of(w, a).unwrap();
        assert_eq!(c.parts, vec![Part::Group(dims); 3], "{w}");
        assert_eq!(c.outer, Some(heads.id), "{w}");
    }
    // keep heads 0 and 2, q/k dims 1 and 3, v dims 0, 1, 2
    let mut masks = sepprune::prune::Masks::new();
    masks.insert(heads.id, 3, vec![0, 2]);
    masks.insert(qk.id, 4, vec![1, 3]);
    masks.insert(v.id, 4, vec![0, 1, 2]);
    let slim = sepprune::prune::slim(&ir, &gs, &masks).unwrap();
    let init = |ir: &Ir, n: &str| ir.initializer(n).unwrap();
    assert_eq!(init(&slim, "Wq"), init(&ir, "Wq").select(1, &[1, 3, 9, 11]));
    assert_eq!(
        init(&slim, "Wv"),
        init(&ir, "Wv").select(1, &[0, 1, 2, 8, 9, 10])
    );
    assert_eq!(
        init(&slim, "Wo"),
        init(&ir, "Wo").select(0, &[0, 1, 2, 8, 9, 10])
    );
    assert_eq!(
        init(&slim, "head_bias"),
        init(&ir, "head_bias").select(0, &[0, 2])
    );
    let profile = |ir: &Ir| sepprune::analysis::cost::profile(ir).macs;
    assert!(profile(&slim) < profile(&ir));
    assert_slim_equals_gated(&ir, &gs, &masks, &slim, 4 * 9);
    // the learner's Candle lowering of the gate graph (heads gate x head-dim gates) agrees
    assert_candle_matches_tract(
        &sepprune::gates::gate_graph(&ir, &gs, Some(&masks)).unwrap(),
        4,
        9,
    );
    // a budget may take whole heads: L1 with head 1's weights the smallest drops it first
    let mut model = attention_model();
    for t in &mut model.graph.as_mut().unwrap().initializer {
        if ["Wq", "Wk", "Wv"].contains(&t.name()) {
            for (i, v) in t.float_data.iter_mut().enumerate() {
                if (4..8).contains(&(i % 12)) {
                    *v *= 1e-3;
                }
            }
        }
    }
    let (ir, gs) = groups_of(model, 9);
    let heads = gs.of("head_bias", 0).unwrap();
    let scores =
        sepprune::prune::channel_scores(&ir, &gs, heads, sepprune::prune::Criterion::L1).unwrap();
    assert!(scores[1] < scores[0] && scores[1] < scores[2], "{scores:?}");
}

#[test]
fn conv_transpose_macs_follow_the_chosen_ptflops_release() {
    use sepprune::analysis::cost::profile_as;
    use sepprune::ops::Ptflops;
    let ir = Ir::new(common::tiny_tasnet(), 400).unwrap();
    let dec = |p: Ptflops| {
        let prof = profile_as(&ir, p);
        prof.nodes
            .iter()
            .find(|n| n.op == "ConvTranspose")
            .unwrap()
            .macs
    };
    // decoder: 16 basis signals -> 1 channel, kernel 8, stride 4, no bias:
    // 0.7.5 counts its 99 input frames, 0.7.4 its 400 output samples
    let per_position = 16 * 8;
    assert_eq!(dec(Ptflops::V075), per_position * 99);
    assert_eq!(dec(Ptflops::V074), per_position * 400);
}

#[test]
fn a_weight_shared_through_identity_is_prunable_and_constants_take_their_consumers_region() {
    use sepprune::analysis::{find_regions, Region};
    // TorchScript shares an unrolled block's weights through Identity nodes at the top of
    // the graph: the Identity is bypassed, so the shared layer is prunable
    let mut g = G::new(&[1, 2, -1]);
    let w = g.weight("shared", &[16, 16, 1]); // too large to fold
    let wi = g.node("Identity", &[&w], vec![]);
    // a constant subgraph feeding data: a Transpose of a bias table
    let table = g.weight("table", &[1, 9, 16]);
    let perm = g.node("Transpose", &[&table], vec![ints_attr("perm", &[0, 2, 1])]);
    let a = g.conv("x", 2, 16, 3, 1, 1);
    let mut h = g.node("Add", &[&a, &perm], vec![]);
    for _ in 0..3 {
        h = g.node("Conv", &[&h, &wi], vec![]);
        h = g.node("Relu", &[&h], vec![]);
    }
    let y = g.conv(&h, 16, 2, 1, 1, 0);
    let (ir, gs) = groups_of(g.output(&y, &[1, 2, -1]), 9);
    assert!(ir.nodes().iter().all(|n| n.op_type() != "Identity"));
    let shared = gs
        .of("shared", 0)
        .expect("the shared weight defines a group");
    assert!(shared.frozen.is_none(), "{:?}", shared.frozen);
    assert_eq!(gs.of("shared", 1).map(|g| g.id), Some(shared.id));
    let macs = sepprune::analysis::cost::node_macs(&ir, &|v: &str| {
        ir.fact(v).map(|f| f.shape.clone()).unwrap_or_default()
    });
    let regions = find_regions(&ir, &macs);
    let at = |name: &str| ir.nodes().iter().position(|n| n.output[0] == name).unwrap();
    let consumer = ir.consumers[&perm][0].0;
    assert!(!ir.is_folded(&ir.nodes()[at(&perm)]));
    assert_eq!(regions[at(&perm)], regions[consumer]);
    assert_ne!(regions[at(&perm)], Region::Encoder);
}

/// torch's GroupNorm(4, 8) export: `Reshape(h, [0, 4, -1])`, InstanceNormalization with
/// `[4]` scale and bias, a Reshape back (to `Shape(h)`, or to a literal), then the `[8, 1]`
/// affine transform.
fn group_norm_model(literal_back: bool) -> (sepprune::onnx::ModelProto, String) {
    let mut g = G::new(&[1, 2, -1]);
    let h = g.conv("x", 2, 8, 3, 1, 1);
    let to_groups = g.const_i("to_groups", vec![0, 4, -1]);
    let r = g.node("Reshape", &[&h, &to_groups], vec![]);
    let s = g.weight("in_scale", &[4]);
    let b = g.weight("in_bias", &[4]);
    let n = g.node("InstanceNormalization", &[&r, &s, &b], vec![]);
    let back = if literal_back {
        g.const_i("back", vec![0, 8, -1])
    } else {
        g.node("Shape", &[&h], vec![])
    };
    let z = g.node("Reshape", &[&n, &back], vec![]);
    let gamma = g.weight("gamma", &[8, 1]);
    let beta = g.weight("beta", &[8, 1]);
    let m = g.node("Mul", &[&z, &gamma], vec![]);
    let a = g.node("Add", &[&m, &beta], vec![]);
    let w_out = format!("w{}", g.nodes.len());
    let y = g.conv(&a, 8, 2, 1, 1, 0);
    (g.output(&y, &[1, 2, -1]), w_out)
}

#[test]
fn group_norm_with_several_groups_is_pruned_in_whole_norm_groups() {
    use sepprune::analysis::groups::Part;
    for literal_back in [false, true] {
        let (model, w_out) = group_norm_model(literal_back);
        let (ir, gs) = groups_of(model, 37);
        // the group is the norm's groups: 4 units of 2 channels each
        let grp = gs.of("in_scale", 0).expect("norm groups form a group");
        assert_eq!(grp.size, 4);
        assert!(grp.frozen.is_none(), "{:?}", grp.frozen);
        for (v, a) in [("w0", 0), ("b0", 0), ("gamma", 0), ("beta", 0), (&w_out, 1)] {
            let c = gs.concatenated_of(v, a).unwrap_or_else(|| panic!("{v}"));
            assert_eq!(
                c.parts,
                vec![Part::Expand {
                    group: grp.id,
                    width: 2
                }],
                "{v}"
            );
        }
        let mut masks = sepprune::prune::Masks::new();
        masks.insert(grp.id, 4, vec![1, 3]);
        let slim = sepprune::prune::slim(&ir, &gs, &masks).unwrap();
        let init = |ir: &Ir, n: &str| ir.initializer(n).unwrap();
        assert_eq!(init(&slim, "w0"), init(&ir, "w0").select(0, &[2, 3, 6, 7]));
        assert_eq!(
            init(&slim, "in_scale"),
            init(&ir, "in_scale").select(0, &[1, 3])
        );
        assert_eq!(
            init(&slim, "to_groups"),
            sepprune::onnx::Tensor::vec_i64(vec![0, 2, -1])
        );
        if literal_back {
            assert_eq!(
                init(&slim, "back"),
                sepprune::onnx::Tensor::vec_i64(vec![0, 4, -1])
            );
        }
        assert_slim_equals_gated(&ir, &gs, &masks, &slim, 2 * 37);
        // the learner's Candle lowering of the gate graph computes the same
        assert_candle_matches_tract(
            &sepprune::gates::gate_graph(&ir, &gs, Some(&masks)).unwrap(),
            2,
            37,
        );
    }
}

#[test]
fn l1_ranks_norm_groups_by_every_weight_slice_they_carry() {
    // the norm's own [4] scale and bias are equal across groups; the producer conv's rows of
    // group 2 (channels 4, 5) are the largest, so a budget keeps that group first
    let (mut model, _) = group_norm_model(false);
    for t in &mut model.graph.as_mut().unwrap().initializer {
        match t.name() {
            "in_scale" => t.float_data = vec![1.0; 4],
            "in_bias" => t.float_data = vec![0.0; 4],
            "w0" => {
                let row = t.float_data.len() / 8;
                for v in &mut t.float_data[4 * row..6 * row] {
                    *v *= 100.0;
                }
            }
            _ => {}
        }
    }
    let (ir, gs) = groups_of(model, 37);
    let grp = gs.of("in_scale", 0).unwrap();
    let budget = sepprune::prune::Budget {
        scope: sepprune::prune::Scope::All,
        ..sepprune::prune::Budget::new(0.5)
    };
    let b = sepprune::prune::masks_for_ratio(&ir, &gs, &budget).unwrap();
    let keep = b.masks.keep(grp.id).expect("the norm groups are pruned");
    assert!(keep.len() < 4 && keep.contains(&2), "{keep:?}");
}

#[test]
fn an_if_with_a_constant_condition_is_folded_into_its_branch() {
    use sepprune::onnx::{AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto};
    let mut g = G::new(&[1, 2, -1]);
    let h = g.conv("x", 2, 6, 3, 1, 1);
    g.nodes.push(NodeProto {
        name: Some("cond".into()),
        op_type: Some("Constant".into()),
        output: vec!["cond".into()],
        attribute: vec![AttributeProto {
            name: Some("value".into()),
            r#type: Some(4),
            t: Some(TensorProto {
                data_type: Some(9),
                int32_data: vec![1],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    let branch = |op: &str, out: &str| AttributeProto {
        name: Some(
            if op == "Relu" {
                "then_branch"
            } else {
                "else_branch"
            }
            .into(),
        ),
        r#type: Some(5),
        g: Some(GraphProto {
            name: Some(op.into()),
            node: vec![NodeProto {
                name: Some(format!("{op}_in_branch")),
                op_type: Some(op.into()),
                input: vec![h.clone()],
                output: vec![out.into()],
                ..Default::default()
            }],
            output: vec![ValueInfoProto {
                name: Some(out.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    g.nodes.push(NodeProto {
        name: Some("if".into()),
        op_type: Some("If".into()),
        input: vec!["cond".into()],
        output: vec!["r".into()],
        attribute: vec![branch("Relu", "then_out"), branch("Neg", "else_out")],
        ..Default::default()
    });
    let y = g.conv("r", 6, 2, 1, 1, 0);
    let (ir, gs) = groups_of(g.output(&y, &[1, 2, -1]), 40);
    let ops: Vec<&str> = ir.nodes().iter().map(|n| n.op_type()).collect();
    assert!(
        !ops.contains(&"If") && ops.contains(&"Relu") && !ops.contains(&"Neg"),
        "{ops:?}"
    );
    let grp = gs.of("w0", 0).unwrap();
    assert!(grp.frozen.is_none(), "{:?}", grp.frozen);
    assert_eq!(gs.of("r", 1).map(|g| g.id), Some(grp.id));
    let mut masks = sepprune::prune::Masks::new();
    masks.insert(grp.id, 6, vec![0, 2, 5]);
    let slim = sepprune::prune::slim(&ir, &gs, &masks).unwrap();
    assert_slim_equals_gated(&ir, &gs, &masks, &slim, 2 * 40);
}

/// A native `GroupNormalization` with 4 groups on 8 channels, at opset 18 (`[G]` scale and
/// bias) or 21 (`[C]`).
fn native_group_norm_model(opset: i64, groups: i64) -> sepprune::onnx::ModelProto {
    let mut g = G::new(&[1, 2, -1]);
    let h = g.conv("x", 2, 8, 3, 1, 1);
    let n = if opset >= 21 { 8 } else { groups };
    let s = g.weight("gn_scale", &[n]);
    let b = g.weight("gn_bias", &[n]);
    let mut attrs = vec![int_attr("num_groups", groups)];
    attrs.push(sepprune::onnx::float_attr("epsilon", 1e-5));
    let y = g.node("GroupNormalization", &[&h, &s, &b], attrs);
    let p = g.node("Relu", &[&y], vec![]);
    let out = g.conv(&p, 8, 2, 1, 1, 0);
    let mut m = g.output(&out, &[1, 2, -1]);
    m.opset_import[0].version = Some(opset);
    m
}

#[test]
fn native_group_normalization_is_pruned_in_whole_groups_and_written_back_natively() {
    for (opset, groups) in [(21, 4), (18, 4), (21, 1)] {
        let (ir, gs) = groups_of(native_group_norm_model(opset, groups), 37);
        let grp = gs.of("w0", 0).map(|g| g.id).or_else(|| {
            gs.concatenated_of("w0", 0).and_then(|c| match c.parts[..] {
                [sepprune::analysis::groups::Part::Expand { group, width: 2 }] => Some(group),
                _ => None,
            })
        });
        let grp = &gs.groups[grp.unwrap_or_else(|| panic!("opset {opset}, {groups} groups"))];
        assert!(grp.frozen.is_none(), "{:?}", grp.frozen);
        assert_eq!(grp.size, if groups == 1 { 8 } else { 4 });
        let keep: Vec<usize> = if groups == 1 {
            vec![0, 3, 4, 7]
        } else {
            vec![1, 2]
        };
        let mut masks = sepprune::prune::Masks::new();
        masks.insert(grp.id, grp.size, keep);
        let slim = sepprune::prune::slim(&ir, &gs, &masks).unwrap();
        let exported = slim.exported(&slim.model);
        let gn: Vec<_> = exported
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter(|n| n.op_type() == "GroupNormalization")
            .collect();
        assert_eq!(gn.len(), 1, "the native op is written back");
        assert_eq!(
            sepprune::onnx::attr_i(gn[0], "num_groups"),
            Some(if groups == 1 { 1 } else { 2 })
        );
        let written = Ir::new(exported.clone(), 37).unwrap();
        let want = if opset >= 21 {
            4
        } else if groups == 1 {
            1
        } else {
            2
        };
        assert_eq!(written.initializer("gn_scale").unwrap().len(), want);
        let x = sepprune::verify::test_signal(2 * 37, 16000.0);
        for rt in [
            sepprune::runtime::Runtime::Ort,
            sepprune::runtime::Runtime::Tract,
        ] {
            let r =
                sepprune::verify::check(&ir, &gs, Some((&masks, Some(&exported))), 0, 0, &x, rt)
                    .unwrap();
            assert!(
                r.passed,
                "opset {opset}, {groups} groups, {rt:?}: {:?}",
                r.trials
            );
        }
    }
}

/// `Split(x, sizes?)` along channels into values `a` and `b`.
fn split_ab(g: &mut G, x: &str, sizes: Option<String>) {
    g.nodes.push(sepprune::onnx::NodeProto {
        name: Some("split".into()),
        op_type: Some("Split".into()),
        input: std::iter::once(x.to_string()).chain(sizes).collect(),
        output: vec!["a".into(), "b".into()],
        attribute: vec![int_attr("axis", 1)],
        ..Default::default()
    });
}

#[test]
fn split_along_channels_makes_each_piece_a_group_or_a_glu_half() {
    use sepprune::analysis::groups::Part;
    // pieces that go their own ways: conv (8) -> Split [3, 5] -> two convs -> Add
    let mut g = G::new(&[1, 2, -1]);
    let h = g.conv("x", 2, 8, 3, 1, 1);
    let sizes = g.const_i("sizes", vec![3, 5]);
    split_ab(&mut g, &h, Some(sizes));
    let ra = g.node("Relu", &["a"], vec![]);
    let ya = g.conv(&ra, 3, 2, 1, 1, 0);
    let yb = g.conv("b", 5, 2, 1, 1, 0);
    let y = g.node("Add", &[&ya, &yb], vec![]);
    let (ir, gs) = groups_of(g.output(&y, &[1, 2, -1]), 30);
    let (ga, gb) = (gs.of("a", 1).unwrap(), gs.of("b", 1).unwrap());
    assert_eq!((ga.size, gb.size), (3, 5));
    assert!(
        ga.frozen.is_none() && gb.frozen.is_none(),
        "{:?} {:?}",
        ga.frozen,
        gb.frozen
    );
    let c = gs.concatenated_of("w0", 0).unwrap();
    assert_eq!(c.parts, vec![Part::Group(ga.id), Part::Group(gb.id)]);
    let mut masks = sepprune::prune::Masks::new();
    masks.insert(ga.id, 3, vec![2]);
    masks.insert(gb.id, 5, vec![0, 4]);
    let slim = sepprune::prune::slim(&ir, &gs, &masks).unwrap();
    let init = |ir: &Ir, n: &str| ir.initializer(n).unwrap();
    assert_eq!(init(&slim, "w0"), init(&ir, "w0").select(0, &[2, 3, 7]));
    assert_eq!(
        init(&slim, "sizes"),
        sepprune::onnx::Tensor::vec_i64(vec![1, 2])
    );
    assert_slim_equals_gated(&ir, &gs, &masks, &slim, 2 * 30);

    // a GLU: conv (8) -> Split (2 equal outputs, no sizes) -> a * sigmoid(b) -> conv
    let mut g = G::new(&[1, 2, -1]);
    let h = g.conv("x", 2, 8, 3, 1, 1);
    split_ab(&mut g, &h, None);
    let s = g.node("Sigmoid", &["b"], vec![]);
    let m = g.node("Mul", &["a", &s], vec![]);
    let y = g.conv(&m, 4, 2, 1, 1, 0);
    let (ir, gs) = groups_of(g.output(&y, &[1, 2, -1]), 30);
    let half = gs.of("a", 1).unwrap();
    assert_eq!(half.size, 4);
    assert!(half.frozen.is_none(), "{:?}", half.frozen);
    assert_eq!(
        gs.concatenated_of("w0", 0).unwrap().parts,
        vec![Part::Group(half.id); 2]
    );
    let mut masks = sepprune::prune::Masks::new();
    masks.insert(half.id, 4, vec![1, 2]);
    let slim = sepprune::prune::slim(&ir, &gs, &masks).unwrap();
    assert_eq!(init(&slim, "w0"), init(&ir, "w0").select(0, &[1, 2, 5, 6]));
    assert_slim_equals_gated(&ir, &gs, &masks, &slim, 2 * 30);
    assert_candle_matches_tract(
        &sepprune::gates::gate_graph(&ir, &gs, Some(&masks)).unwrap(),
        2,
        30,
    );

    // an equal split (no sizes) whose pieces lose different counts gets explicit sizes
    let mut g = G::new(&[1, 2, -1]);
    let h = g.conv("x", 2, 8, 3, 1, 1);
    split_ab(&mut g, &h, None);
    let ya = g.conv("a", 4, 2, 1, 1, 0);
    let yb = g.conv("b", 4, 2, 1, 1, 0);
    let y = g.node("Add", &[&ya, &yb], vec![]);
    let (ir, gs) = groups_of(g.output(&y, &[1, 2, -1]), 30);
    let (ga, gb) = (gs.of("a", 1).unwrap(), gs.of("b", 1).unwrap());
    let mut masks = sepprune::prune::Masks::new();
    masks.insert(ga.id, 4, vec![0]);
    masks.insert(gb.id, 4, vec![0, 1, 3]);
    let slim = sepprune::prune::slim(&ir, &gs, &masks).unwrap();
    assert_eq!(slim.fact("a").unwrap().shape, vec![1, 1, 30]);
    assert_slim_equals_gated(&ir, &gs, &masks, &slim, 2 * 30);
}

fn equation(eq: &str) -> sepprune::onnx::AttributeProto {
    sepprune::onnx::AttributeProto {
        name: Some("equation".into()),
        s: Some(eq.as_bytes().to_vec()),
        r#type: Some(3), // STRING
        ..Default::default()
    }
}

#[test]
fn einsum_grouped_linears_define_and_contract_channels_and_slim_exactly() {
    // DeepFilterNet's grouped linear: x [1, T, g=2, i=3] -> [1, T, 2, h=5] -> [1, T, 2, 3]
    let mut g = G::new(&[1, -1, 2, 3]);
    let vals = |n: usize, s: f32| (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * s).collect();
    let w1 = g.const_f("w1", &[2, 3, 5], vals(30, 0.1));
    let h = g.node("Einsum", &["x", &w1], vec![equation("btgi,gih->btgh")]);
    let r = g.node("Relu", &[&h], vec![]);
    let w2 = g.const_f("w2", &[2, 5, 3], vals(30, 0.07));
    let y = g.node("Einsum", &[&r, &w2], vec![equation("btgh,ghk->btgk")]);
    let ir = Ir::new(g.output(&y, &[1, -1, 2, 3]), 40).unwrap();
    assert!(ir.opaque.is_empty(), "{:?}", ir.opaque);
    assert_eq!(ir.fact(&h).unwrap().shape, vec![1, 40, 2, 5]);
    // one MAC per term: T * g * i * h, then T * g * h * k (and the Relu, one per element)
    let macs = sepprune::analysis::profile(&ir).macs;
    assert_eq!(macs, 40 * 2 * 3 * 5 + 40 * 2 * 5 * 3 + 40 * 2 * 5);
    let gs = analyze_groups(&ir).unwrap();
    let hidden = gs.of("w1", 2).unwrap();
    assert!(hidden.frozen.is_none());
    assert_eq!(hidden.size, 5);
    assert_eq!(
        gs.of("w2", 1).unwrap().id,
        hidden.id,
        "h is contracted by the second"
    );
    // the group axis g passes through: it is tied to the (fixed) input, never pruned alone
    assert!(gs.of("w1", 0).is_none_or(|grp| grp.frozen.is_some()));
    let x = sepprune::verify::test_signal(40 * 6, 16000.0);
    let r = sepprune::verify::check(&ir, &gs, None, 3, 5, &x, sepprune::runtime::Runtime::Tract)
        .unwrap();
    assert!(r.passed, "{:?}", r.trials);
    let mut g = G::new(&[1, -1, 3]);
    let w = g.const_f("w", &[3, 4], vals(12, 0.1));
    // an implicit output (numpy: the letters used once, sorted: "bjt")
    let y = g.node("Einsum", &["x", &w], vec![equation("bti,ij")]);
    let ir = Ir::new(g.output(&y, &[1, 4, -1]), 40);
    // a form the rule does not cover: opaque, its shapes from tract
    let ir = ir.unwrap();
    assert_eq!(ir.opaque.len(), 1, "{:?}", ir.opaque);
    assert!(
        ir.opaque[0].1.contains("no explicit output"),
        "{:?}",
        ir.opaque
    );
    assert_eq!(ir.fact(&y).unwrap().shape, vec![1, 4, 40]);
}

#[test]
fn slices_partitioning_a_packed_projection_are_its_parts() {
    // x [1, T, 4] @ W [4, 9] -> q | k | v by three Slices (0:3, 3:6, 6:9) on the last axis,
    // each read by its own linear layer, summed
    let mut g = G::new(&[1, -1, 4]);
    let vals = |n: usize, s: f32| (0..n).map(|i| ((i * 37 % 13) as f32 - 6.0) * s).collect();
    let w = g.const_f("w_qkv", &[4, 9], vals(36, 0.1));
    let p = g.node("MatMul", &["x", &w], vec![]);
    let (ax, one) = (g.const_i("ax", vec![2]), g.const_i("one", vec![1]));
    let mut parts = vec![];
    for (k, (s, e)) in [(0, 3), (3, 6), (6, 9)].into_iter().enumerate() {
        let st = g.const_i(&format!("s{k}"), vec![s]);
        let en = g.const_i(&format!("e{k}"), vec![e]);
        let sl = g.node("Slice", &[&p, &st, &en, &ax, &one], vec![]);
        let wk = g.const_f(&format!("w{k}"), &[3, 2], vals(6, 0.2 + k as f32 * 0.1));
        parts.push(g.node("MatMul", &[&sl, &wk], vec![]));
    }
    let s1 = g.node("Add", &[&parts[0], &parts[1]], vec![]);
    let y = g.node("Add", &[&s1, &parts[2]], vec![]);
    let ir = Ir::new(g.output(&y, &[1, -1, 2]), 30).unwrap();
    let gs = analyze_groups(&ir).unwrap();
    // each part is a group of its own; the packed axis is their concatenation
    let ids: Vec<usize> = (0..3)
        .map(|k| gs.of(&format!("w{k}"), 0).unwrap().id)
        .collect();
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    assert!(ids
        .iter()
        .all(|&i| gs.groups[i].frozen.is_none() && gs.groups[i].size == 3));
    assert!(gs.concatenated_of("w_qkv", 1).is_some());
    let x = sepprune::verify::test_signal(30 * 4, 16000.0);
    let r = sepprune::verify::check(&ir, &gs, None, 4, 9, &x, sepprune::runtime::Runtime::Tract)
        .unwrap();
    assert!(r.passed, "{:?}", r.trials);
    // Slices that do not cover the axis exactly (a gap) freeze it, as before
    let mut g = G::new(&[1, -1, 4]);
    let w = g.const_f("w_qkv", &[4, 9], vals(36, 0.1));
    let p = g.node("MatMul", &["x", &w], vec![]);
    let (ax, one) = (g.const_i("ax", vec![2]), g.const_i("one", vec![1]));
    let (s, e) = (g.const_i("s", vec![0]), g.const_i("e", vec![3]));
    let sl = g.node("Slice", &[&p, &s, &e, &ax, &one], vec![]);
    let w0 = g.const_f("w0", &[3, 2], vals(6, 0.2));
    let y = g.node("MatMul", &[&sl, &w0], vec![]);
    let ir = Ir::new(g.output(&y, &[1, -1, 2]), 30).unwrap();
    let gs = analyze_groups(&ir).unwrap();
    assert!(gs.of("w_qkv", 1).unwrap().frozen.is_some());
}

#[test]
fn a_stacked_lstm_with_a_shared_zero_state_and_h_n_last_has_one_group_per_layer() {
    // TorchScript's nn.LSTM(4, 6, num_layers=2): the initial states of both layers sliced
    // from one ConstantOfShape fill, and `h_n[-1]` a Gather from the Concat of both final
    // states; the hidden units of each layer must still be a group of their own
    let mut g = G::new(&[1, 4, -1]);
    let t = g.node("Transpose", &["x"], vec![ints_attr("perm", &[2, 0, 1])]); // [T, 1, 4]
    let shape = g.const_i("fill_shape", vec![2, 1, 6]);
    let zero = sepprune::onnx::AttributeProto {
        name: Some("value".into()),
        r#type: Some(4), // TENSOR
        t: Some(sepprune::onnx::TensorProto {
            data_type: Some(1),
            dims: vec![1],
            float_data: vec![0.0],
            ..Default::default()
        }),
        ..Default::default()
    };
    let fill = g.node("ConstantOfShape", &[&shape], vec![zero]);
    let (ax, one) = (g.const_i("ax0", vec![0]), g.const_i("one", vec![1]));
    let mut state = vec![];
    for k in 0..2i64 {
        let s = g.const_i(&format!("s{k}"), vec![k]);
        let e = g.const_i(&format!("e{k}"), vec![k + 1]);
        state.push(g.node("Slice", &[&fill, &s, &e, &ax, &one], vec![])); // [1, 1, 6]
    }
    let mut x = t;
    let mut finals = vec![];
    for k in 0..2usize {
        let cin = if k == 0 { 4 } else { 6 };
        let (w, r, b) = (
            g.weight(&format!("W{k}"), &[1, 24, cin]),
            g.weight(&format!("R{k}"), &[1, 24, 6]),
            g.weight(&format!("B{k}"), &[1, 48]),
        );
        let n = g.nodes.len();
        let (y, yh) = (format!("y{k}"), format!("yh{k}"));
        g.nodes.push(sepprune::onnx::NodeProto {
            name: Some(format!("lstm{n}")),
            op_type: Some("LSTM".into()),
            input: vec![
                x.clone(),
                w,
                r,
                b,
                String::new(),
                state[k].clone(),
                state[k].clone(),
            ],
            output: vec![y.clone(), yh.clone()],
            attribute: vec![int_attr("hidden_size", 6)],
            ..Default::default()
        });
        let axes = g.const_i(&format!("sq{k}"), vec![1]);
        x = g.node("Squeeze", &[&y, &axes], vec![]); // [T, 1, 6]
        finals.push(yh);
    }
    let cat = g.node(
        "Concat",
        &[&finals[0], &finals[1]],
        vec![int_attr("axis", 0)],
    ); // [2, 1, 6]
    let last = g.const_i("last", vec![-1]);
    let h = g.node("Gather", &[&cat, &last], vec![int_attr("axis", 0)]); // [1, 1, 6]
    let p = g.weight("P", &[6, 3]);
    let y = g.node("MatMul", &[&h, &p], vec![]); // [1, 1, 3]
    let (ir, gs) = groups_of(g.output(&y, &[1, 1, 3]), 9);
    let (h0, h1) = (gs.of("R0", 2).unwrap(), gs.of("R1", 2).unwrap());
    assert_ne!(
        h0.id, h1.id,
        "each layer's hidden units are a group of their own"
    );
    assert!(h0.frozen.is_none() && h1.frozen.is_none());
    assert_eq!((h0.size, h1.size), (6, 6));
    // different widths per layer slim exactly
    let mut m = sepprune::prune::Masks::new();
    m.insert(h0.id, 6, vec![0, 2, 5]);
    m.insert(h1.id, 6, vec![1, 3, 4, 5]);
    let slim = sepprune::prune::slim(&ir, &gs, &m).unwrap();
    assert_eq!(slim.initializer("P").unwrap().shape(), vec![4, 3]);
    assert_eq!(slim.initializer("W1").unwrap().shape(), vec![1, 16, 3]);
    assert_slim_equals_gated(&ir, &gs, &m, &slim, 4 * 9);
}

/// Parameters are what a constant-folding exporter writes: a weight norm left in the graph
/// (`g * v / |v|`) counts as the weight the Conv reads, not `g` and `v`; GroupNorm's
/// exported InstanceNorm (on a Reshape to groups) has constant unit scale and zero bias,
/// no parameters; an embedding table read by a Gather and parameters an exporter
/// concatenated for a Split are parameters.
#[test]
fn params_count_folded_weights_embeddings_and_split_parameters_not_norm_constants() {
    let mut g = G::new(&[1, 1, -1]);
    // weight norm: w = g * v / |v|, [4, 1, 3]
    let gain = g.weight("g", &[4, 1, 1]);
    let v = g.weight("v", &[4, 1, 3]);
    let norm = g.node(
        "ReduceL2",
        &[&v],
        vec![ints_attr("axes", &[1, 2]), int_attr("keepdims", 1)],
    );
    let dir = g.node("Div", &[&v, &norm], vec![]);
    let w = g.node("Mul", &[&gain, &dir], vec![]);
    let b = g.weight("b", &[4]);
    let y = g.node(
        "Conv",
        &["x", &w, &b],
        vec![ints_attr("kernel_shape", &[3])],
    );
    // GroupNorm(2 groups, 4 channels) as exported
    let to_groups = g.const_i("to_groups", vec![1, 2, -1]);
    let r = g.node("Reshape", &[&y, &to_groups], vec![]);
    let ones = g.const_f("ones", &[2], vec![1.0; 2]);
    let zeros = g.const_f("zeros", &[2], vec![0.0; 2]);
    let n = g.node("InstanceNormalization", &[&r, &ones, &zeros], vec![]);
    let back = g.const_i("back", vec![1, 4, -1]);
    let n = g.node("Reshape", &[&n, &back], vec![]);
    let gamma = g.weight("gamma", &[4, 1]);
    let beta = g.weight("beta", &[4, 1]);
    let n = g.node("Mul", &[&n, &gamma], vec![]);
    let n = g.node("Add", &[&n, &beta], vec![]);
    // an embedding row per channel, summed: [6, 4] -> [4] -> [1, 4, 1]
    // (indices from the input's shape: [1, 1], a lookup the graph computes)
    let table = g.weight("table", &[6, 4]);
    let shape = g.node("Shape", &["x"], vec![]);
    let (s0, s2) = (g.const_i("s0", vec![0]), g.const_i("s2", vec![2]));
    let idx = g.node("Slice", &[&shape, &s0, &s2], vec![]);
    let rows = g.node("Gather", &[&table, &idx], vec![]);
    let ax0 = g.const_i("ax0", vec![0]);
    let row = g.node("ReduceSum", &[&rows, &ax0], vec![int_attr("keepdims", 0)]);
    let ax02 = g.const_i("ax02", vec![0, 2]);
    let row = g.node("Unsqueeze", &[&row, &ax02], vec![]);
    let n = g.node("Add", &[&n, &row], vec![]);
    // two biases an exporter concatenated, split apart
    let cat = g.weight("cat", &[8]);
    let sizes = g.const_i("sizes", vec![4, 4]);
    let mut split = g.node("Split", &[&cat, &sizes], vec![]);
    let (b1, b2) = (format!("{split}_a"), format!("{split}_b"));
    g.nodes.last_mut().unwrap().output = vec![b1.clone(), b2.clone()];
    split = b1;
    let u1 = g.node("Unsqueeze", &[&split, &ax02], vec![]);
    let u2 = g.node("Unsqueeze", &[&b2, &ax02], vec![]);
    let n = g.node("Add", &[&n, &u1], vec![]);
    let n = g.node("Add", &[&n, &u2], vec![]);
    let model = g.output(&n, &[1, 4, -1]);
    let ir = Ir::new(model, 64).unwrap();
    let total: u64 = sepprune::analysis::cost::node_params(&ir).iter().sum();
    // w 12 + b 4 + gamma 4 + beta 4 + table 24 + cat 8; not g, v, ones, zeros
    assert_eq!(total, 12 + 4 + 4 + 4 + 24 + 8);
    assert_eq!(sepprune::analysis::profile(&ir).params, total);
}

#[test]
fn tile_repeats_channels_as_copies_pruned_alike() {
    use sepprune::analysis::groups::Part;
    let mut g = G::new(&[1, 2, -1]);
    let h = g.conv("x", 2, 3, 1, 1, 0);
    let reps = g.const_i("reps", vec![1, 2, 1]);
    let t = g.node("Tile", &[&h, &reps], vec![]); // [1, 6, T]: the 3 channels twice
    let y = g.conv(&t, 6, 2, 3, 1, 1);
    let (ir, gs) = groups_of(g.output(&y, &[1, 2, -1]), 30);
    assert_eq!(ir.fact(&t).unwrap().shape, vec![1, 6, 30]);
    assert!(ir.opaque.is_empty());
    let grp = gs.of("w0", 0).expect("the conv's channels");
    assert!(grp.frozen.is_none(), "{:?}", grp.frozen);
    let c = gs.concatenated_of(&t, 1).unwrap();
    assert_eq!(c.parts, vec![Part::Group(grp.id); 2]);
    let mut masks = sepprune::prune::Masks::new();
    masks.insert(grp.id, 3, vec![0, 2]);
    let slim = sepprune::prune::slim(&ir, &gs, &masks).unwrap();
    assert_eq!(
        slim.initializer("w2").unwrap(),
        ir.initializer("w2").unwrap().select(1, &[0, 2, 3, 5])
    );
    assert_slim_equals_gated(&ir, &gs, &masks, &slim, 2 * 30);
    assert_candle_matches_tract(
        &sepprune::gates::gate_graph(&ir, &gs, Some(&masks)).unwrap(),
        2,
        30,
    );
}

#[test]
fn a_filled_initializer_shared_by_layers_couples_nothing() {
    // exporters store equal tensors once: two layers reading one zero bias would be one
    // channel group through it; each reader gets its own copy instead
    let mut g = G::new(&[1, 2, -1]);
    let zeros = g.const_f("zeros", &[4], vec![0.0; 4]);
    let w1 = g.weight("wa", &[4, 2, 1]);
    let a = g.node(
        "Conv",
        &["x", &w1, &zeros],
        vec![ints_attr("kernel_shape", &[1])],
    );
    let r = g.node("Relu", &[&a], vec![]);
    let w2 = g.weight("wb", &[4, 4, 3]);
    let b = g.node(
        "Conv",
        &[&r, &w2, &zeros],
        vec![ints_attr("kernel_shape", &[3]), ints_attr("pads", &[1, 1])],
    );
    let y = g.conv(&b, 4, 2, 1, 1, 0);
    let (ir, gs) = groups_of(g.output(&y, &[1, 2, -1]), 20);
    let (g1, g2) = (gs.of("wa", 0).unwrap(), gs.of("wb", 0).unwrap());
    assert_ne!(g1.id, g2.id, "the layers are apart");
    assert!(g1.frozen.is_none() && g2.frozen.is_none());
    let mut masks = sepprune::prune::Masks::new();
    masks.insert(g1.id, 4, vec![1, 2]);
    masks.insert(g2.id, 4, vec![0, 1, 3]);
    let slim = sepprune::prune::slim(&ir, &gs, &masks).unwrap();
    assert_slim_equals_gated(&ir, &gs, &masks, &slim, 2 * 20);
    // a shared tensor of distinct values still couples (it may be a real shared weight)
    let mut g = G::new(&[1, 2, -1]);
    let shared = g.weight("shared", &[4]);
    let w1 = g.weight("wa", &[4, 2, 1]);
    let a = g.node(
        "Conv",
        &["x", &w1, &shared],
        vec![ints_attr("kernel_shape", &[1])],
    );
    let w2 = g.weight("wb", &[4, 4, 1]);
    let b = g.node(
        "Conv",
        &[&a, &w2, &shared],
        vec![ints_attr("kernel_shape", &[1])],
    );
    let y = g.conv(&b, 4, 2, 1, 1, 0);
    let (_, gs) = groups_of(g.output(&y, &[1, 2, -1]), 20);
    assert_eq!(gs.of("wa", 0).unwrap().id, gs.of("wb", 0).unwrap().id);
}

/// A `Constant` node holding a weight (TorchScript writes RNN weights so) counts; a
/// `Constant` of one repeated value (an exporter's unit scale) does not; the bias `[1]` an
/// Add puts on a linear layer with one output counts, a `[1]` constant added elsewhere
/// does not.
#[test]
fn params_count_constant_node_weights_and_one_output_biases() {
    use sepprune::onnx::{AttributeProto, TensorProto};
    let constant = |g: &mut G, v: Vec<f32>| {
        let t = TensorProto {
            data_type: Some(1),
            dims: vec![v.len() as i64],
            float_data: v,
            ..Default::default()
        };
        let value = AttributeProto {
            name: Some("value".into()),
            r#type: Some(4),
            t: Some(t),
            ..Default::default()
        };
        g.node("Constant", &[], vec![value])
    };
    let mut g = G::new(&[1, 1, -1]);
    let t = g.node("Transpose", &["x"], vec![ints_attr("perm", &[0, 2, 1])]); // [1, T, 1]
    let w1 = g.weight("w1", &[1, 4]);
    let h = g.node("MatMul", &[&t, &w1], vec![]);
    let b1 = g.weight("b1", &[4]);
    let h = g.node("Add", &[&h, &b1], vec![]);
    let scale = constant(&mut g, vec![0.5, 1.5, -2.0, 3.0]);
    let h = g.node("Mul", &[&h, &scale], vec![]);
    let ones = constant(&mut g, vec![1.0; 4]);
    let h = g.node("Mul", &[&h, &ones], vec![]);
    let w2 = g.weight("w2", &[4, 1]);
    let y = g.node("MatMul", &[&h, &w2], vec![]); // [1, T, 1]
    let b2 = g.weight("b2", &[1]);
    let y = g.node("Add", &[&y, &b2], vec![]);
    let eps = g.const_f("eps", &[1], vec![1e-5]);
    let y = g.node("Add", &[&y, &eps], vec![]);
    let y = g.node("Transpose", &[&y], vec![ints_attr("perm", &[0, 2, 1])]);
    let ir = Ir::new(g.output(&y, &[1, 1, -1]), 16).unwrap();
    let total: u64 = sepprune::analysis::cost::node_params(&ir).iter().sum();
    // w1 4 + b1 4 + the Constant scale 4 + w2 4 + b2 1; not the ones, not eps
    assert_eq!(total, 17);
}
