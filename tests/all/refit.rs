//! Least-squares refit (He et al. 2017) on a small model: with every channel kept it
//! recovers the original weights exactly (the normal equations are solved right); after
//! pruning it lowers every layer's reconstruction error and the output error against the
//! original model; it changes only the refitted layers' weights; the result runs in tract.
use crate::common;
use sepprune::analysis::{analyze_groups, Groups};
use sepprune::ir::Ir;
use sepprune::learn::refit::{refit, RefitOptions, RefitScope};
use sepprune::onnx::{encode, tensor_from_proto, ModelProto};
use sepprune::prune::{masks_for_ratio, slim, Budget, Masks};
use sepprune::runtime::tract::TractModel;
use sepprune::runtime::tract::TractTeacher;

const SAMPLES: usize = 400;

fn setup(ratio: Option<f64>) -> (Ir, Groups, Masks, ModelProto) {
    let ir = Ir::new(common::tiny_tasnet(), SAMPLES).unwrap();
    let gs = analyze_groups(&ir).unwrap();
    let masks = match ratio {
        Some(r) => masks_for_ratio(&ir, &gs, &Budget::new(r)).unwrap().masks,
        None => Masks::new(),
    };
    let s = slim(&ir, &gs, &masks).unwrap().model;
    (ir, gs, masks, s)
}

fn opts(scope: RefitScope, ridge: f64) -> RefitOptions {
    RefitOptions {
        samples: SAMPLES,
        crops_per_file: 2,
        ridge,
        scope,
        remix: 0,
        seed: 0,
        row_stride: 1,
        progress: false,
        teacher: None,
    }
}

fn init(m: &ModelProto, name: &str) -> Vec<f32> {
    let t = m
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .find(|i| i.name() == name)
        .unwrap();
    tensor_from_proto(t)
        .unwrap()
        .as_f32()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

/// Mean squared difference between the outputs of `a` and `b` on the mixtures of `dir`.
fn output_mse(a: &ModelProto, b: &ModelProto, dir: &std::path::Path) -> f64 {
    let (ta, tb) = (
        TractModel::new(a, &[1, 1, SAMPLES]).unwrap(),
        TractModel::new(b, &[1, 1, SAMPLES]).unwrap(),
    );
    let xs = sepprune::learn::data::mixture_crops(dir, SAMPLES, 2).unwrap();
    let mut s = 0.0;
    let mut n = 0;
    for x in &xs {
        let (ya, yb) = (ta.run(x).unwrap(), tb.run(x).unwrap());
        s += ya
            .iter()
            .zip(&yb)
            .map(|(p, q)| ((p - q) as f64).powi(2))
            .sum::<f64>();
        n += ya.len();
    }
    s / n as f64
}

#[test]
fn with_every_channel_kept_the_refit_recovers_the_original_weights() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(dir.path(), 3);
    let (ir, gs, masks, s) = setup(None);
    let r = refit(
        &ir,
        &gs,
        &masks,
        &s,
        dir.path(),
        &opts(RefitScope::All, 1e-12),
    )
    .unwrap();
    // the 1x1 convs (stem, 2 x (in, res, skip), mask) and the 2 depthwise convs
    assert_eq!(r.layers.len(), 10, "{:?}", r.layers);
    for l in &r.layers {
        assert!(l.error_before < 1e-9, "{l:?}");
        assert!(l.error_after < 1e-9, "{l:?}");
    }
    // the same function as the original (the weights themselves are not unique where a
    // layer's inputs are collinear: the encoder's 16 channels come from 8 samples)
    let ys = output_mse(&ir.model, &ir.model, dir.path());
    assert_eq!(ys, 0.0);
    let mse = output_mse(&ir.model, &r.model, dir.path());
    assert!(mse < 1e-10, "output MSE against the original {mse}");
    // every 4th time step is enough rows for the same solution
    let strided = RefitOptions {
        row_stride: 4,
        ..opts(RefitScope::All, 1e-12)
    };
    let r4 = refit(&ir, &gs, &masks, &s, dir.path(), &strided).unwrap();
    for (a, b) in r.layers.iter().zip(&r4.layers) {
        assert!(b.rows * 3 < a.rows && b.rows * 5 > a.rows, "{a:?} {b:?}");
        assert!(b.error_after < 1e-9, "{b:?}");
    }
    let mse = output_mse(&ir.model, &r4.model, dir.path());
    assert!(
        mse < 1e-10,
        "stride 4: output MSE against the original {mse}"
    );
    // where the inputs are not collinear (every layer but the stem), the weights are W
    for l in r.layers.iter().skip(1) {
        let node = s
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .find(|n| n.name() == l.node)
            .unwrap();
        for name in &node.input[1..] {
            let (a, b) = (init(&s, name), init(&r.model, name));
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let err = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                err <= 1e-3 * scale,
                "{name} of {}: max |Δ| {err} (scale {scale})",
                l.node
            );
        }
    }
}

#[test]
fn after_pruning_the_refit_lowers_layer_and_output_errors_and_changes_only_those_layers() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(dir.path(), 3);
    let (ir, gs, masks, s) = setup(Some(0.5));
    let run = || {
        refit(
            &ir,
            &gs,
            &masks,
            &s,
            dir.path(),
            &opts(RefitScope::Sliced, 1e-4),
        )
    };
    let r = run().unwrap();
    assert!(!r.layers.is_empty());
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    for l in &r.layers {
        assert!(
            l.error_after <= l.error_before + 1e-5, // the ridge costs a little
            "{}: {} -> {}",
            l.node,
            l.error_before,
            l.error_after
        );
    }
    assert!(r
        .layers
        .iter()
        .any(|l| l.error_after < 0.9 * l.error_before));
    // closer to the original model end to end, on the calibration audio
    let original = &ir.model;
    let (before, after) = (
        output_mse(original, &s, dir.path()),
        output_mse(original, &r.model, dir.path()),
    );
    assert!(after < before, "output MSE {before} -> {after}");
    // the graph is unchanged; only the refitted layers' weights and biases differ
    let (a, b) = (s.graph.as_ref().unwrap(), r.model.graph.as_ref().unwrap());
    assert_eq!(a.node, b.node);
    let refitted: Vec<&str> = a
        .node
        .iter()
        .filter(|n| r.layers.iter().any(|l| l.node == n.name()))
        .flat_map(|n| n.input[1..].iter().map(String::as_str))
        .collect();
    for (x, y) in a.initializer.iter().zip(&b.initializer) {
        assert_eq!(x.dims, y.dims);
        if x != y {
            assert!(refitted.contains(&x.name()), "{} changed", x.name());
        }
    }
    // deterministic
    let again = run().unwrap();
    assert_eq!(encode(&again.model), encode(&r.model));
    // label-free remixes join the calibration audio, and the refit still moves the slim
    // model towards the original on the real mixtures
    let o = RefitOptions {
        remix: 4,
        teacher: Some(TractTeacher::shared(ir.model.clone())),
        ..opts(RefitScope::Sliced, 1e-4)
    };
    let remixed = refit(&ir, &gs, &masks, &s, dir.path(), &o).unwrap();
    assert_eq!(remixed.crops, r.crops + 4);
    assert!(output_mse(original, &remixed.model, dir.path()) < before);
    assert_ne!(encode(&remixed.model), encode(&r.model));
}
