//! The open-world corpus in `fixtures/corpus` (made by `fixtures/make_corpus.py`): exports of
//! other people's models, asteroid, torchaudio and transformers separators and encoders with
//! random weights, whose code and export paths we did not write.
//!
//! Properties: every export loads and is analysed (ops without a rule get their shapes from
//! tract and freeze, rank and length guards fold); an `If` on the input length stays, opaque;
//! and the exports that prune, slimmed with random masks, equal the gate graph in tract.
use sepprune::analysis::analyze_groups;
use sepprune::ir::Ir;
use sepprune::runtime::Runtime;
use sepprune::{onnx, verify};
use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/corpus")
}

fn load(name: &str, samples: usize) -> Ir {
    let p = corpus().join(name);
    let m = onnx::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    Ir::new(m, samples).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn files() -> Vec<String> {
    let manifest = std::fs::read_to_string(corpus().join("manifest.json"))
        .expect("fixtures/corpus/manifest.json (run fixtures/make_corpus.py)");
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    m.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn every_corpus_export_loads_and_is_analysed() {
    let files = files();
    assert!(files.len() >= 37, "{} files in the manifest", files.len());
    for f in &files {
        // at 1 s: TorchScript bakes the traced length into some exports (the Conformer's
        // attention Reshape targets 100 frames)
        let ir = load(f, 16000);
        let g = analyze_groups(&ir).unwrap_or_else(|e| panic!("{f}: groups: {e}"));
        assert!(
            g.prunable().next().is_some(),
            "{f}: no prunable group at all"
        );
    }
}

/// Our params against PyTorch's count of what an export can hold (`params_forward` in the
/// manifest: the parameters the eval forward reads, weight norms and conv-BatchNorm pairs
/// folded): equal on every file (dynamo's unit-scale initializer for a LayerNorm without an
/// affine map counts as no parameters, like TorchScript's `Constant`).
#[test]
fn params_equal_pytorchs_count_of_what_an_export_holds() {
    let manifest = std::fs::read_to_string(corpus().join("manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let mut differ = vec![];
    for (f, e) in m.as_object().unwrap() {
        let want = e["params_forward"]
            .as_u64()
            .unwrap_or_else(|| panic!("{f}: no params_forward (run make_corpus.py --count-only)"));
        let ours = sepprune::analysis::profile(&load(f, 16000)).params;
        if ours != want {
            differ.push(format!("{f}: ours {ours}, PyTorch {want}"));
        }
    }
    assert!(differ.is_empty(), "{differ:?}");
}

#[test]
fn ops_that_need_data_take_their_shapes_from_tract_and_freeze() {
    // the dynamo Conformer builds its padding mask with a Range up to max(lengths), an
    // input: the shape depends on data, so the op is opaque
    let ir = load("ta_conformer.dynamo18.onnx", 4000);
    let opaque: Vec<usize> = (0..ir.nodes().len())
        .filter(|&i| ir.opaque_reason(i).is_some())
        .collect();
    assert!(opaque.iter().any(|&i| ir.nodes()[i].op_type() == "Range"));
    for &t in &opaque {
        let out = &ir.nodes()[t].output[0];
        assert!(!ir.fact(out).unwrap().shape.is_empty());
    }
    let g = analyze_groups(&ir).unwrap();
    for &t in &opaque {
        let out = &ir.nodes()[t].output[0];
        assert!(
            g.prunable()
                .all(|grp| grp.members.iter().all(|(v, _)| v != out)),
            "a prunable group crosses an opaque node"
        );
    }
    // WavLM's gated relative-position bias repeats per head with Tile, which has a rule
    let ir = load("hf_wavlm.ts17.onnx", 4000);
    assert!(ir.nodes().iter().any(|n| n.op_type() == "Tile"));
    assert!(ir.opaque.is_empty(), "{:?}", ir.opaque);
}

#[test]
fn guards_on_rank_fold_and_an_if_on_the_length_stays_opaque() {
    // asteroid's SuDoRM-RF pads the input when T % k != 0 (an If on the length) and checks
    // the input's rank before its encoder (an If on the rank, with the encoder Conv inside)
    let p = corpus().join("ast_sudormrf.ts17.onnx");
    let original = onnx::load(&p).unwrap();
    let ifs = |m: &onnx::ModelProto| {
        m.graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter(|n| n.op_type() == "If")
            .count()
    };
    let ir = Ir::new(original.clone(), 4000).unwrap();
    assert!(ifs(&ir.model) < ifs(&original), "no rank guard was inlined");
    let left: Vec<usize> = (0..ir.nodes().len())
        .filter(|&i| ir.nodes()[i].op_type() == "If")
        .collect();
    assert_eq!(left.len(), 1, "the length-dependent If stays");
    let why = ir.opaque_reason(left[0]).expect("the If is opaque");
    assert!(why.contains("length"), "{why}");
    // the encoder Conv, inlined from the rank guard, is an ordinary node now
    assert!(ir
        .nodes()
        .iter()
        .any(|n| n.op_type() == "Conv" && n.name().contains("then_branch")));
}

#[test]
fn corpus_exports_slim_exactly_with_random_masks() {
    // one export per structure that once broke (docs/corpus.md lists all of them)
    for f in [
        "ast_convtasnet.ts17.onnx", // If guards inlined, weights through Identity
        "ast_sudormrf_improved.ts13.onnx",
        "ta_convtasnet.ts17.onnx",
        "ta_wavlm.dynamo18.onnx", // Tile (relative-position gates per head)
        "hf_wav2vec2.ts17.onnx",  // GroupNorm(C, C): Constant scale sliced
        "hf_wavlm.ts13.onnx",
        "hf_data2vec_audio.dynamo18.onnx",
        "hf_whisper_encoder.ts17.onnx", // a fixed [1, 80, 200] log-mel input
        "ta_wav2vec2.ts17.onnx",        // SDPA scale from Shape(q): kept as a constant
        "ast_lstmtasnet.ts17.onnx",     // LSTM zero state sliced per layer: patched
        "ast_sudormrf.ts17.onnx",       // Conv2d across the channels: frozen; an If on T % k
        "ta_conformer.dynamo18.onnx",   // a second, integer input (lengths)
    ] {
        let ir = load(f, 4000);
        let groups = analyze_groups(&ir).unwrap();
        let x = verify::test_signal(4000, 16000.0);
        // ORT where its library loads: tract cannot run an If whose branches differ in
        // shape (SuDoRM-RF's padding on T % k)
        let r = verify::check(&ir, &groups, None, 2, 7, &x, Runtime::preferred())
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(r.trials.len() >= 3, "{f}: {} trials", r.trials.len());
        for t in &r.trials {
            assert!(t.passed, "{f}: {} rel err {}", t.name, t.rel_err);
        }
    }
}

#[test]
fn declared_inputs_set_the_time_axis_and_rate_and_are_not_written() {
    let p = corpus().join("ta_conformer.dynamo18.onnx");
    let mut m = onnx::load(&p).unwrap();
    // defaults: [1, T, 40] is features at 100 frames/s; the lengths input holds T
    let ir = Ir::new(m.clone(), 16000).unwrap();
    assert_eq!(ir.fact("x").unwrap().shape, vec![1, 100, 40]);
    sepprune::ir::declare_inputs(&mut m, &["x=1,T,40".into()], Some(50.0)).unwrap();
    let ir = Ir::new(m.clone(), 16000).unwrap();
    assert_eq!(ir.fact("x").unwrap().shape, vec![1, 50, 40]);
    let lengths = ir
        .fact("lengths")
        .unwrap()
        .value
        .as_ref()
        .unwrap()
        .to_i64_vec();
    assert_eq!(lengths, vec![50]);
    // what is written carries no declaration
    assert!(onnx::undeclared(&m).metadata_props.is_empty());
    // declarations that contradict the model are refused, naming what is wrong
    let mut m = onnx::load(&p).unwrap();
    for (spec, want) in [
        ("x=1,T,41", "fixed at 40"),
        ("y=1,T,40", "no input 'y'"),
        ("x=1,T", "rank 3"),
        ("x=1,X,40", "neither a size nor T"),
    ] {
        let e = sepprune::ir::declare_inputs(&mut m, &[spec.into()], None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(want), "{spec}: {e}");
    }
}
