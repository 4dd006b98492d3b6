//! Candle lowering: forward parity with tract, finite-difference gradient checks (f64), and
//! the mask learner on a small model.
use crate::common;
use candle_core::{DType, Device, Tensor as CTensor, Var};
use sepprune::analysis::analyze_groups;
use sepprune::gates::{gate_graph, gate_name};
use sepprune::ir::Ir;
use sepprune::learn::CandleGraph;
use sepprune::runtime::{rel_err, tract::TractModel};
use sepprune::verify;
use std::collections::HashMap;

fn candle_run(model: &sepprune::onnx::ModelProto, x: &[f32], dtype: DType) -> Vec<f32> {
    let n = x.len();
    let g = CandleGraph::new(Ir::new(model.clone(), n).unwrap(), &Device::Cpu, dtype, &[]).unwrap();
    let t = CTensor::from_vec(x.to_vec(), (1, 1, n), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    g.forward(&t, &HashMap::new())
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |a - b| <= 1e-4 * max |a| (the parity bound).
fn assert_parity(reference: &[f32], got: &[f32], what: &str) {
    let e = rel_err(reference, got);
    assert!(e <= 1e-4, "{what}: max abs error / max |y| = {e}");
}

#[test]
fn tiny_tasnet_and_its_gate_graph_match_tract() {
    let model = common::tiny_tasnet();
    for n in [400usize, 1001] {
        let x = verify::test_signal(n, 16000.0);
        let want = TractModel::new(&model, &[1, 1, n])
            .unwrap()
            .run(&x)
            .unwrap();
        assert_parity(&want, &candle_run(&model, &x, DType::F32), "tiny original");
        let ir = Ir::new(model.clone(), n).unwrap();
        let gs = analyze_groups(&ir).unwrap();
        let m = verify::random_masks(&gs, n as u64);
        let gated = gate_graph(&ir, &gs, Some(&m)).unwrap();
        let want = TractModel::new(&gated, &[1, 1, n])
            .unwrap()
            .run(&x)
            .unwrap();
        assert_parity(&want, &candle_run(&gated, &x, DType::F32), "tiny gated");
    }
}

#[test]
fn real_model_gate_graph_matches_tract() {
    let model = sepprune::onnx::load(&common::real_model()).unwrap();
    let n = 8000;
    let x = verify::test_signal(n, 16000.0);
    let ir = Ir::new(model.clone(), n).unwrap();
    let gs = analyze_groups(&ir).unwrap();
    let m = verify::random_masks(&gs, 3);
    let gated = gate_graph(&ir, &gs, Some(&m)).unwrap();
    let want = TractModel::new(&gated, &[1, 1, n])
        .unwrap()
        .run(&x)
        .unwrap();
    assert_parity(&want, &candle_run(&gated, &x, DType::F32), "real gated");
}

/// Central finite differences in f64 against Candle's backward, for gates and weights.
/// Backward (f64) of a fixed projection of the gate graph's output, against central finite
/// differences, on every gate and on the initializers `pick` selects (three entries each).
fn assert_gradients(
    model: sepprune::onnx::ModelProto,
    n: usize,
    pick: fn(&str) -> bool,
    min_checked: usize,
) {
    let ir = Ir::new(model, n).unwrap();
    let gs = analyze_groups(&ir).unwrap();
    let gated = gate_graph(&ir, &gs, None).unwrap();
    let gated_ir = Ir::new(gated, n).unwrap();
    let mut names: Vec<String> = gs.prunable().map(|gr| gate_name(gr.id)).collect();
    for w in gated_ir
        .graph()
        .initializer
        .iter()
        .map(|i| i.name().to_string())
    {
        if pick(&w) {
            names.push(w);
        }
    }
    let channels = gated_ir.fact(&gated_ir.graph_inputs()[0]).unwrap().shape[1];
    let g = CandleGraph::new(gated_ir, &Device::Cpu, DType::F64, &names).unwrap();
    let x: Vec<f64> = verify::test_signal(n * channels, 16000.0)
        .iter()
        .map(|&v| v as f64)
        .collect();
    let x = CTensor::from_vec(x, (1, channels, n), &Device::Cpu).unwrap();
    // a fixed random projection of the output makes a scalar loss
    let y0 = g.forward(&x, &HashMap::new()).unwrap();
    let r: Vec<f64> = (0..y0.elem_count())
        .map(|i| ((i * 7919) % 13) as f64 / 6.0 - 1.0)
        .collect();
    let r = CTensor::from_vec(r, y0.shape(), &Device::Cpu).unwrap();
    let loss = |over: &HashMap<String, CTensor>| -> CTensor {
        (g.forward(&x, over).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let mut checked = 0;
    for name in names {
        let base = g
            .constant(&name)
            .unwrap_or_else(|| panic!("{name} is not a constant"));
        if base.dtype() != DType::F64 {
            continue;
        }
        let var = Var::from_tensor(base).unwrap();
        let over: HashMap<String, CTensor> = [(name.clone(), var.as_tensor().clone())].into();
        let grads = loss(&over).backward().unwrap();
        // no gradient: the value does not reach the output (e.g. the last block's residual conv)
        let grad: Vec<f64> = match grads.get(var.as_tensor()) {
            Some(g) => g.flatten_all().unwrap().to_vec1().unwrap(),
            None => vec![0.0; base.elem_count()],
        };
        let flat: Vec<f64> = base.flatten_all().unwrap().to_vec1().unwrap();
        for j in (0..flat.len()).step_by((flat.len() / 3).max(1)) {
            let h = 1e-6;
            let at = |d: f64| {
                let mut v = flat.clone();
                v[j] += d;
                let t = CTensor::from_vec(v, base.shape(), &Device::Cpu).unwrap();
                let over: HashMap<String, CTensor> = [(name.clone(), t)].into();
                loss(&over).to_scalar::<f64>().unwrap()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let tol = 1e-5 * (1.0 + fd.abs().max(grad[j].abs()));
            assert!(
                (fd - grad[j]).abs() <= tol,
                "{name}[{j}]: backward {} vs finite difference {fd}",
                grad[j]
            );
            checked += 1;
        }
    }
    assert!(checked >= min_checked, "only {checked} entries checked");
}

#[test]
fn gradients_match_finite_differences() {
    // every gate (one per group), conv weights, depthwise weights, PRelu slopes, the
    // encoder, gLN's gamma and beta (fused kernels: PReLU, depthwise conv, normalisation,
    // the transposed affine map)
    let pick = |w: &str| {
        ["dw", "slope", "w", "gamma", "beta"]
            .iter()
            .any(|p| w.starts_with(p))
            || w == "enc"
    };
    assert_gradients(common::tiny_tasnet(), 300, pick, 20);
}

#[test]
fn lstm_gradients_match_finite_differences() {
    // the hidden-unit gate (on R's columns and on both directions' outputs), W, R, B and
    // the projection
    assert_gradients(
        common::tiny_bilstm(),
        9,
        |w| ["W", "R", "B", "P"].contains(&w),
        15,
    );
}

#[test]
fn learner_is_deterministic_resumable_and_meets_the_budget() {
    use sepprune::learn::gumbel::GumbelConfig;
    use sepprune::learn::run::{learn, LearnOptions};
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(dir.path(), 2);
    let model = common::tiny_tasnet();
    let opts = |iters: usize, ck: Option<std::path::PathBuf>| LearnOptions {
        cfg: GumbelConfig {
            iters,
            ..GumbelConfig::default()
        },
        method: Default::default(),
        distill: false,
        heldout: None,
        weights: None,
        sv: None,
        samples: 400,
        crops_per_file: 2,
        teacher: None,
        budget: sepprune::prune::Budget::new(0.4),
        checkpoint: ck,
        progress: false,
        device: candle_core::Device::Cpu,
    };
    let a = learn(&model, dir.path(), &opts(6, None)).unwrap();
    let b = learn(&model, dir.path(), &opts(6, None)).unwrap();
    assert_eq!(a.scores.theta, b.scores.theta, "same seed, same scores");
    assert_eq!(a.budgeted.masks.groups.len(), b.budgeted.masks.groups.len());
    assert!(a.losses.iter().all(|l| l.is_finite()));
    // the scores moved away from their initial value
    assert!(a
        .scores
        .theta
        .values()
        .flatten()
        .any(|&t| (t - 3.0).abs() > 1e-3));
    // 3 steps, then resume to 6, equals 6 steps straight
    let ck = dir.path().join("scores.json");
    learn(&model, dir.path(), &opts(3, Some(ck.clone()))).unwrap();
    let c = learn(&model, dir.path(), &opts(6, Some(ck))).unwrap();
    assert_eq!(a.scores.theta, c.scores.theta, "resumed run differs");
    // the budget: 60% of the separator's MACs kept (within the granularity of the tiny model)
    let kept = a.budgeted.scope_macs.1 as f64 / a.budgeted.scope_macs.0 as f64;
    assert!((kept - 0.6).abs() < 0.1, "kept {kept}");
    // the masks slim the model exactly like the gate graph computes it
    assert_slims_exactly(model, &a.budgeted.masks);
}

#[test]
fn pit_loss_is_minus_si_sdr_and_picks_the_best_permutation() {
    use sepprune::audio::metrics::si_sdr;
    use sepprune::learn::loss::{pit, Loss};
    let n = 2000;
    let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.01).sin()).collect();
    let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.037).cos()).collect();
    let noise = |k: usize| -> Vec<f32> {
        (0..n)
            .map(|i| 0.05 * (((i * 31 + k) % 17) as f32 / 8.0 - 1.0))
            .collect()
    };
    let na: Vec<f32> = a.iter().zip(noise(1)).map(|(v, e)| v + e).collect();
    let nb: Vec<f32> = b.iter().zip(noise(5)).map(|(v, e)| 0.5 * v + e).collect();
    let refs = CTensor::from_vec([a.clone(), b.clone()].concat(), (2, n), &Device::Cpu).unwrap();
    let want = -(si_sdr(&na, &a) + si_sdr(&nb, &b)) / 2.0;
    for est in [
        [na.clone(), nb.clone()].concat(),
        [nb.clone(), na.clone()].concat(),
    ] {
        let est = CTensor::from_vec(est, (2, n), &Device::Cpu).unwrap();
        let l = pit(&est, &refs, Loss::SiSdr)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((l - want).abs() < 0.02, "loss {l}, want {want}");
    }
}

#[test]
fn a_soft_threshold_caps_the_loss_and_leaves_poor_estimates_alone() {
    use sepprune::audio::metrics::si_sdr;
    use sepprune::learn::loss::{pit, pit_capped, Loss};
    let n = 4000;
    let s: Vec<f32> = (0..n).map(|i| (i as f32 * 0.013).sin()).collect();
    let wobble: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let at = |k: f32| -> Vec<f32> { s.iter().zip(&wobble).map(|(v, w)| v + k * w).collect() };
    let refs = CTensor::from_vec(s.clone(), (1, n), &Device::Cpu).unwrap();
    let loss = |est: &[f32], cap: Option<f64>| -> f64 {
        let e = CTensor::from_vec(est.to_vec(), (1, n), &Device::Cpu).unwrap();
        let l = match cap {
            Some(_) => pit_capped(&e, &refs, Loss::SiSdr, cap),
            None => pit(&e, &refs, Loss::SiSdr),
        };
        l.unwrap().to_scalar::<f32>().unwrap() as f64
    };
    for k in [1e-4f32, 1e-3, 1e-2, 0.1, 1.0, 3.0] {
        let est = at(k);
        let (plain, capped) = (loss(&est, None), loss(&est, Some(20.0)));
        let sdr = si_sdr(&est, &s);
        assert!(
            (plain + sdr).abs() < 0.05,
            "plain {plain} against SI-SDR {sdr}"
        );
        // never above the cap, never better than the plain metric
        assert!(
            -capped <= 20.0 + 1e-6 && -capped <= -plain + 1e-6,
            "{capped} {plain}"
        );
        // -10 log10(10^(-sdr/10) + 10^(-2)): the two errors add as powers
        let want = 10.0 * (10f64.powf(-sdr / 10.0) + 0.01).log10();
        assert!(
            (capped - want).abs() < 0.05,
            "capped {capped}, want {want} at {sdr} dB"
        );
        if sdr < 0.0 {
            assert!(
                (capped - plain).abs() < 0.1,
                "far below the cap the loss is the plain one"
            );
        }
    }
    // far above the cap it saturates
    assert!((loss(&at(1e-4), Some(20.0)) + 20.0).abs() < 0.01);
}

#[test]
fn hard_concrete_gates_match_their_distribution_and_derivative() {
    use sepprune::learn::hard_concrete::{log_alpha_init, HardConcrete};
    let hc = HardConcrete::default();
    let mut checked = 0;
    for &a in &[-3.0, -0.5, 0.0, 0.7, 2.5] {
        // dz / dlog_alpha by central differences wherever the sample is not clipped
        for &u in &[0.05, 0.3, 0.5, 0.8, 0.97] {
            let (z, dz) = hc.sample(a, u);
            assert!((0.0..=1.0).contains(&z));
            let h = 1e-6;
            let num = (hc.sample(a + h, u).0 - hc.sample(a - h, u).0) / (2.0 * h);
            if z == 0.0 || z == 1.0 {
                assert_eq!(dz, 0.0, "clipped sample at a {a} u {u}");
            } else if z > 1e-3 && z < 1.0 - 1e-3 {
                // (near the clip, central differences straddle it)
                assert!(
                    (num - dz).abs() <= 1e-5 * (1.0 + dz.abs()),
                    "a {a} u {u}: {num} vs {dz}"
                );
                checked += 1;
            }
        }
        // P(z != 0) against a Monte-Carlo estimate over a uniform grid of u
        let n = 20000;
        let open = (0..n)
            .filter(|&i| hc.sample(a, (i as f64 + 0.5) / n as f64).0 > 0.0)
            .count() as f64
            / n as f64;
        assert!(
            (open - hc.p_open(a)).abs() < 2e-3,
            "a {a}: {open} vs {}",
            hc.p_open(a)
        );
        let d = hc.deterministic(a);
        assert!((0.0..=1.0).contains(&d));
    }
    assert!(
        checked >= 5,
        "only {checked} unclipped samples were checked"
    );
    // the drop rate is the share of channels a fresh gate closes at log_alpha's sigmoid
    let a = log_alpha_init(0.2);
    assert!((1.0 / (1.0 + (-a as f64).exp()) - 0.8).abs() < 1e-12);
}

#[test]
fn distillation_loss_is_zero_for_the_teacher_and_its_gradient_matches_finite_differences() {
    use sepprune::learn::distill::layer_loss;
    let dev = Device::Cpu;
    let t = CTensor::from_vec(
        (0..24)
            .map(|i| ((i as f64) * 0.37).sin() + 0.1)
            .collect::<Vec<f64>>(),
        (1, 4, 6),
        &dev,
    )
    .unwrap();
    let (l, c) = layer_loss(&t, &t, 1).unwrap();
    // (zero up to the 1e-8 that keeps the cosine's denominator away from zero)
    assert!(l.to_scalar::<f64>().unwrap().abs() < 1e-6);
    assert!((c.to_scalar::<f64>().unwrap() - 1.0).abs() < 1e-6);
    // gradient with respect to the student, f64
    let s0: Vec<f64> = (0..24).map(|i| ((i as f64) * 0.91).cos() * 0.8).collect();
    let s = Var::from_tensor(&CTensor::from_vec(s0.clone(), (1, 4, 6), &dev).unwrap()).unwrap();
    let (l, _) = layer_loss(s.as_tensor(), &t, 1).unwrap();
    let g: Vec<f64> = l
        .backward()
        .unwrap()
        .get(s.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let at = |v: &[f64]| {
        let x = CTensor::from_vec(v.to_vec(), (1, 4, 6), &dev).unwrap();
        layer_loss(&x, &t, 1).unwrap().0.to_scalar::<f64>().unwrap()
    };
    for k in [0, 5, 11, 17, 23] {
        let h = 1e-6;
        let (mut a, mut b) = (s0.clone(), s0.clone());
        a[k] += h;
        b[k] -= h;
        let num = (at(&a) - at(&b)) / (2.0 * h);
        assert!(
            (num - g[k]).abs() <= 1e-5 * (1.0 + g[k].abs()),
            "{k}: {num} vs {}",
            g[k]
        );
    }
}

#[test]
fn hard_concrete_learner_meets_a_params_budget_deterministically_and_resumes() {
    use sepprune::learn::hard_concrete::HcConfig;
    use sepprune::learn::run::{learn, LearnOptions, Method};
    use sepprune::prune::{Cost, Measure, Scope};
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(dir.path(), 2);
    let model = common::tiny_tasnet();
    let opts = |iters: usize, ste: bool, ck: Option<std::path::PathBuf>| LearnOptions {
        cfg: Default::default(),
        method: Method::HardConcrete(HcConfig {
            ste,
            iters,
            warmup: 2,
            target: 0.6,
            measure: Measure::Params,
            ..HcConfig::default()
        }),
        distill: true,
        heldout: None,
        weights: None,
        sv: None,
        samples: 400,
        crops_per_file: 2,
        teacher: None,
        budget: sepprune::prune::Budget {
            scope: Scope::All,
            measure: Measure::Params,
            ..sepprune::prune::Budget::new(0.4)
        },
        checkpoint: ck,
        progress: false,
        device: candle_core::Device::Cpu,
    };
    let a = learn(&model, dir.path(), &opts(6, false, None)).unwrap();
    let b = learn(&model, dir.path(), &opts(6, false, None)).unwrap();
    assert_eq!(a.scores.theta, b.scores.theta, "same seed, same scores");
    assert_eq!(a.scores.lambda, b.scores.lambda);
    assert!(
        a.scores.lambda[0] > 0.0,
        "the multiplier climbed: {:?}",
        a.scores.lambda
    );
    let ck = dir.path().join("hc.json");
    learn(&model, dir.path(), &opts(3, false, Some(ck.clone()))).unwrap();
    let c = learn(&model, dir.path(), &opts(6, false, Some(ck))).unwrap();
    assert_eq!(a.scores.theta, c.scores.theta, "resumed run differs");
    assert_eq!(a.scores.lambda, c.scores.lambda);
    // the straight-through variant moves the scores differently
    let s = learn(&model, dir.path(), &opts(6, true, None)).unwrap();
    assert_ne!(a.scores.theta, s.scores.theta);

    // the budget: the kept parameters are as close to 60% as one channel of any group allows
    let ir = Ir::new(model.clone(), 16000).unwrap();
    let gs = analyze_groups(&ir).unwrap();
    let cost = Cost::new(&ir, &gs, Scope::All);
    let full = cost.params(&HashMap::new()).1 as f64;
    let kept: HashMap<usize, usize> = a
        .budgeted
        .masks
        .groups
        .iter()
        .map(|(&g, m)| (g, m.keep.len()))
        .collect();
    let got = cost.params(&kept).1 as f64;
    assert_eq!(got as u64, a.budgeted.params.1);
    let step = gs
        .prunable()
        .map(|g| {
            let mut one = kept.clone();
            let k = kept.get(&g.id).copied().unwrap_or(g.size);
            one.insert(g.id, k.saturating_sub(1).max(1));
            got - cost.params(&one).1 as f64
        })
        .fold(0.0, f64::max);
    assert!(
        (got - 0.6 * full).abs() <= step,
        "kept {got} of {full}, step {step}"
    );
    // and the cost model's count is the slim model's own
    let slim = sepprune::prune::slim(&ir, &gs, &a.budgeted.masks).unwrap();
    assert_eq!(
        sepprune::analysis::profile(&slim).params,
        a.budgeted.params.1
    );
}

#[test]
fn self_pinching_learns_one_threshold_per_layer_with_the_weights_deterministically() {
    use sepprune::learn::run::{learn, LearnOptions, Method};
    use sepprune::learn::self_pinching::SpConfig;
    use sepprune::prune::{Measure, Scope};
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(dir.path(), 2);
    let model = common::tiny_tasnet();
    let opts = || LearnOptions {
        cfg: Default::default(),
        method: Method::SelfPinching(SpConfig {
            iters: 6,
            warmup: 2,
            target: 0.6,
            measure: Measure::Macs,
            ..SpConfig::default()
        }),
        distill: true,
        heldout: None,
        weights: None,
        sv: None,
        samples: 400,
        crops_per_file: 2,
        teacher: None,
        budget: sepprune::prune::Budget {
            scope: Scope::All,
            ..sepprune::prune::Budget::new(0.4)
        },
        checkpoint: None,
        progress: false,
        device: candle_core::Device::Cpu,
    };
    let a = learn(&model, dir.path(), &opts()).unwrap();
    let b = learn(&model, dir.path(), &opts()).unwrap();
    assert!(
        a.scores.theta.values().all(|t| t.len() == 1),
        "one threshold per group"
    );
    assert_eq!(a.scores.theta, b.scores.theta, "same seed, same thresholds");
    // the weights trained, deterministically
    let (ma, mb) = (a.model.unwrap(), b.model.unwrap());
    assert_eq!(sepprune::onnx::encode(&ma), sepprune::onnx::encode(&mb));
    assert_ne!(sepprune::onnx::encode(&ma), sepprune::onnx::encode(&model));
    // the final masks meet 60% of the MACs as closely as the tiny model allows and slim the
    // trained model exactly
    let kept = a.budgeted.total_macs.1 as f64 / a.budgeted.total_macs.0 as f64;
    assert!((kept - 0.6).abs() < 0.1, "kept {kept}");
    assert_slims_exactly(ma, &a.budgeted.masks);
}

/// The speaker head: statistics pooling is the mean and standard deviation over frames;
/// the AM-softmax loss has the gradient its finite differences give, grows with the
/// margin, and falls as the head alone trains on a fixed output.
#[test]
fn speaker_head_pools_statistics_and_its_am_softmax_has_the_right_gradient() {
    use candle_core::{Device, Tensor, Var};
    use sepprune::learn::speaker::{pool, pooled_width, SpeakerHead, SvConfig};
    let dev = Device::Cpu;
    // [1, T=3, D=2]
    let y = Tensor::from_vec(vec![1f32, 10., 2., 20., 6., 60.], (1, 3, 2), &dev).unwrap();
    let p: Vec<f32> = pool(&y).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let (m0, m1) = (3.0f32, 30.0f32);
    let s0 = ((4.0 + 1.0 + 9.0) / 3.0f32 + 1e-5).sqrt();
    let s1 = ((400.0 + 100.0 + 900.0) / 3.0f32 + 1e-5).sqrt();
    for (got, want) in p.iter().zip([m0, m1, s0, s1]) {
        assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{p:?}");
    }
    assert_eq!(pooled_width(&[1, 7, 2]).unwrap(), 4);
    assert_eq!(pooled_width(&[1, 5]).unwrap(), 5);
    assert!(pooled_width(&[2, 5, 5, 5]).is_err());
    // the loss's gradient with respect to the encoder output, in f32 against central
    // differences
    let cfg = SvConfig {
        dim: 6,
        ..SvConfig::default()
    };
    let head = SpeakerHead::new(4, 3, &cfg, &dev).unwrap();
    let y0 = vec![0.3f32, -0.2, 0.5, 0.1, 0.4, -0.6];
    let yv = Var::from_tensor(&Tensor::from_vec(y0.clone(), (1, 3, 2), &dev).unwrap()).unwrap();
    let loss = head.params.loss(yv.as_tensor(), 2).unwrap();
    let grads = loss.backward().unwrap();
    let g: Vec<f32> = grads
        .get(&yv)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let at = |v: Vec<f32>| -> f64 {
        let t = Tensor::from_vec(v, (1, 3, 2), &dev).unwrap();
        let l = head.params.loss(&t, 2).unwrap();
        l.to_scalar::<f32>().unwrap() as f64
    };
    let h = 1e-2f32;
    let mut checked = 0;
    for i in 0..y0.len() {
        let (mut a, mut b) = (y0.clone(), y0.clone());
        a[i] += h;
        b[i] -= h;
        let num = (at(a) - at(b)) / (2.0 * h as f64);
        assert!(
            (num - g[i] as f64).abs() <= 2e-2 * (1.0 + num.abs()),
            "dL/dy[{i}]: {num} vs {}",
            g[i]
        );
        checked += 1;
    }
    assert_eq!(checked, 6);
    // a margin makes the true class harder
    let no_margin = SpeakerHead::new(
        4,
        3,
        &SvConfig {
            margin: 0.0,
            ..cfg.clone()
        },
        &dev,
    )
    .unwrap();
    let y = Tensor::from_vec(y0.clone(), (1, 3, 2), &dev).unwrap();
    let l = |h: &SpeakerHead| h.params.loss(&y, 0).unwrap().to_scalar::<f32>().unwrap();
    assert!(l(&head) > l(&no_margin));
    // the head alone learns a fixed output's speaker
    let mut head = head;
    let before = l(&head);
    for _ in 0..50 {
        let loss = head.params.loss(&y, 0).unwrap();
        head.update(&loss.backward().unwrap()).unwrap();
    }
    let after = l(&head);
    assert!(after < 0.5 * before, "{before} -> {after}");
    assert_eq!(
        head.params.nearest(&y).unwrap(),
        0,
        "the nearest class is the speaker"
    );
    assert!(
        SpeakerHead::new(4, 1, &cfg, &dev).is_err(),
        "one speaker is no task"
    );
}

/// In-situ speaker-verification pruning on a tiny frame encoder: the speaker head trains
/// with hard-concrete masks and the weights, the loss falls, the budget holds, the run is
/// deterministic, and the trained model slims exactly under the masks.
#[test]
fn in_situ_speaker_pruning_trains_a_head_with_the_masks_and_weights() {
    use common::G;
    use sepprune::learn::hard_concrete::HcConfig;
    use sepprune::learn::run::{learn, LearnOptions, Method, WeightTraining};
    use sepprune::learn::speaker::SvConfig;
    use sepprune::onnx::ints_attr;
    use sepprune::prune::{Measure, Scope};
    // waveform [1, T] -> conv 1->8 (k 8) -> ReLU -> conv 8->4 (k 1) -> frames [1, T', 4]
    let mut g = G::new(&[1, -1]);
    let ax = g.const_i("ax1", vec![1]);
    let x = g.node("Unsqueeze", &["x", &ax], vec![]);
    let c = g.conv(&x, 1, 8, 8, 1, 0);
    let r = g.node("Relu", &[&c], vec![]);
    let c2 = g.conv(&r, 8, 4, 1, 1, 0);
    let t = g.node("Transpose", &[&c2], vec![ints_attr("perm", &[0, 2, 1])]);
    let model = g.output(&t, &[1, -1, 4]);
    // three "speakers": tones of their own pitch, three utterances each
    let dir = tempfile::tempdir().unwrap();
    common::speaker_tones(dir.path(), &[("a", 0.05), ("b", 0.3), ("c", 1.1)], 800);
    let opts = |head_epochs: usize| LearnOptions {
        cfg: Default::default(),
        method: Method::HardConcrete(HcConfig {
            ste: true,
            iters: 40,
            warmup: 10,
            target: 0.7,
            measure: Measure::Params,
            ..HcConfig::default()
        }),
        distill: false,
        heldout: None,
        weights: Some(WeightTraining {
            lr: 1e-3,
            clip: 5.0,
            finetune_steps: 5,
        }),
        sv: Some(SvConfig {
            dim: 8,
            lr: 1e-2,
            head_epochs,
            ..SvConfig::default()
        }),
        samples: 400,
        crops_per_file: 2,
        teacher: None,
        budget: sepprune::prune::Budget {
            scope: Scope::All,
            measure: Measure::Params,
            ..sepprune::prune::Budget::new(0.3)
        },
        checkpoint: None,
        progress: false,
        device: candle_core::Device::Cpu,
    };
    let a = learn(&model, dir.path(), &opts(20)).unwrap();
    let b = learn(&model, dir.path(), &opts(20)).unwrap();
    assert_eq!(a.scores.theta, b.scores.theta, "same seed, same scores");
    let (ma, mb) = (a.model.unwrap(), b.model.unwrap());
    assert_eq!(sepprune::onnx::encode(&ma), sepprune::onnx::encode(&mb));
    assert_ne!(sepprune::onnx::encode(&ma), sepprune::onnx::encode(&model));
    // the head, trained alone first on the original's outputs, tells these speakers apart
    let acc = a.head_accuracy.expect("a speaker head");
    assert!(acc >= 0.9, "head accuracy {acc} after its warm-up");
    // without that warm-up the speaker loss falls as the head, masks and weights train
    let cold = learn(&model, dir.path(), &opts(0)).unwrap();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&cold.losses[..10]), mean(&cold.losses[35..45]));
    assert!(last < first, "AM-softmax loss {first} -> {last}");
    // the params budget within one of the 8 hidden channels (14 of 108 params)
    let kept = a.budgeted.params.1 as f64 / a.budgeted.params.0 as f64;
    assert!(a.budgeted.masks.groups.len() == 1, "{:?}", a.budgeted.masks);
    assert!((kept - 0.7).abs() <= 14.0 / 108.0 + 1e-9, "kept {kept}");
    assert_slims_exactly(ma, &a.budgeted.masks);
}

/// `masks` slim `model` to what its gate graph computes under them (tract, 1000 samples).
fn assert_slims_exactly(model: sepprune::onnx::ModelProto, masks: &sepprune::prune::Masks) {
    let ir = Ir::new(model, 1000).unwrap();
    let gs = analyze_groups(&ir).unwrap();
    let x = verify::test_signal(1000, 16000.0);
    let r = verify::check(
        &ir,
        &gs,
        Some((masks, None)),
        0,
        0,
        &x,
        sepprune::runtime::Runtime::Tract,
    )
    .unwrap();
    assert!(r.passed, "{:?}", r.trials);
}
