//! Fine-tuning and the Taylor baseline on a small model: validation improves, the written
//! model holds exactly the trained weights (its loss in tract equals the reported one) and
//! nothing else changes, runs are deterministic; Taylor masks slim exactly.
use crate::common;
use sepprune::analysis::analyze_groups;
use sepprune::audio::metrics::{dot, si_sdr};
use sepprune::ir::Ir;
use sepprune::learn::finetune::{finetune, learnable, FinetuneOptions};
use sepprune::onnx::{encode, tensor_from_proto, ModelProto};
use sepprune::prune::{masks_for_ratio, masks_from_scores, slim, Budget};
use sepprune::runtime::tract::TractModel;
use sepprune::runtime::tract::TractTeacher;
use sepprune::verify;

fn slim_tiny() -> ModelProto {
    let ir = Ir::new(common::tiny_tasnet(), 400).unwrap();
    let gs = analyze_groups(&ir).unwrap();
    let m = masks_for_ratio(&ir, &gs, &Budget::new(0.4)).unwrap().masks;
    slim(&ir, &gs, &m).unwrap().model
}

fn opts() -> FinetuneOptions {
    FinetuneOptions {
        samples: 400,
        crops_per_file: 2,
        lr: 1e-2,
        epochs: 4,
        val_every_file: 2,
        stop_after: 10,
        ..FinetuneOptions::default()
    }
}

#[test]
fn finetuning_improves_validation_and_writes_exactly_the_trained_weights() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(dir.path(), 4);
    let model = slim_tiny();
    let r = finetune(&model, dir.path(), &opts()).unwrap();
    let first = &r.history[0];
    assert!(
        r.best.val_loss < first.val_loss - 0.1,
        "validation loss {} -> {}",
        first.val_loss,
        r.best.val_loss
    );
    // the graph is unchanged; only learnable initializers differ, and some do
    let (a, b) = (
        model.graph.as_ref().unwrap(),
        r.model.graph.as_ref().unwrap(),
    );
    assert_eq!(a.node, b.node);
    assert_eq!(a.input, b.input);
    assert_eq!(a.output, b.output);
    let ir = Ir::new(model.clone(), 400).unwrap();
    let names = learnable(&ir);
    assert!(!names.is_empty());
    let mut changed = 0;
    for (x, y) in a.initializer.iter().zip(&b.initializer) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.dims, y.dims);
        let (tx, ty) = (tensor_from_proto(x).unwrap(), tensor_from_proto(y).unwrap());
        if tx != ty {
            assert!(
                names.contains(&x.name().to_string()),
                "{} changed",
                x.name()
            );
            changed += 1;
        }
        if x.dims.iter().product::<i64>() == 1 && !names.contains(&x.name().to_string()) {
            assert_eq!(tx, ty, "structural scalar {} changed", x.name());
        }
    }
    assert!(changed > 0);
    // the written model's validation loss, run in tract, is the best one reported
    let examples = sepprune::audio::dataset::load(dir.path(), 16000).unwrap();
    let t = TractModel::new(&r.model, &[1, 1, 400]).unwrap();
    let mut losses = vec![];
    for (i, ex) in examples.iter().enumerate() {
        if i % 2 != 1 {
            continue; // the validation split: every 2nd file
        }
        for c in 0..2 {
            let crop = |x: &[f32]| {
                let mut v: Vec<f32> = x.iter().skip(c * 400).take(400).copied().collect();
                v.resize(400, 0.0);
                v
            };
            let y = t.run(&crop(&ex.mix)).unwrap();
            losses.push(-si_sdr(&y, &crop(&ex.sources[0])));
        }
    }
    let tract_loss = losses.iter().sum::<f64>() / losses.len() as f64;
    assert!(
        (tract_loss - r.best.val_loss).abs() < 1e-2,
        "tract {tract_loss} vs reported {}",
        r.best.val_loss
    );
    // deterministic
    let again = finetune(&model, dir.path(), &opts()).unwrap();
    assert_eq!(encode(&again.model), encode(&r.model));
}

#[test]
fn learnable_parameters_are_weights_not_structural_constants() {
    let ir = Ir::new(common::tiny_tasnet(), 400).unwrap();
    let names = learnable(&ir);
    for node in ir.nodes() {
        if node.op_type() == "Conv" || node.op_type() == "ConvTranspose" {
            assert!(names.contains(&node.input[1]), "{} weight", node.name());
        }
        if node.op_type() == "PRelu" && ir.is_initializer(&node.input[1]) {
            assert!(names.contains(&node.input[1]));
        }
    }
    for n in &names {
        let t = ir.initializer(n).unwrap();
        assert!(t.as_f32().is_some(), "{n} is not float");
    }
    // epsilons and exponents are scalars read by Add/Pow: never learnable
    for node in ir.nodes() {
        if node.op_type() == "Pow" {
            assert!(!names.contains(&node.input[1]));
        }
        if node.op_type() == "Add" {
            for i in &node.input {
                if ir.fact(i).is_some_and(|f| f.numel() == 1) {
                    assert!(!names.contains(i), "scalar {i} of {}", node.name());
                }
            }
        }
    }
}

#[test]
fn taylor_scores_are_finite_and_their_masks_slim_exactly() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(dir.path(), 2);
    let model = common::tiny_tasnet();
    let budget = Budget::new(0.4);
    let scores = sepprune::learn::taylor::taylor_scores(
        &model,
        dir.path(),
        400,
        2,
        &budget,
        sepprune::learn::loss::Loss::SiSdr,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(!scores.is_empty());
    let all: Vec<f64> = scores.values().flatten().copied().collect();
    assert!(all.iter().all(|s| s.is_finite() && *s >= 0.0));
    assert!(all.iter().any(|&s| s > 0.0));
    let ir = Ir::new(model, 1000).unwrap();
    let gs = analyze_groups(&ir).unwrap();
    let b = masks_from_scores(&ir, &gs, &budget, &scores).unwrap();
    let kept = b.scope_macs.1 as f64 / b.scope_macs.0 as f64;
    assert!((kept - 0.6).abs() < 0.1, "kept {kept}");
    let x = verify::test_signal(1000, 16000.0);
    let r = verify::check(
        &ir,
        &gs,
        Some((&b.masks, None)),
        0,
        0,
        &x,
        sepprune::runtime::Runtime::Tract,
    )
    .unwrap();
    assert!(r.passed, "{:?}", r.trials);
}

#[test]
fn dynamic_mixing_draws_seeded_remixes_at_the_stated_snrs() {
    use sepprune::learn::augment::{Augmenter, ATTEMPTS};
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(dir.path(), 4);
    let examples = || sepprune::audio::dataset::load(dir.path(), 16000).unwrap();
    let draw = |seed: u64, perturb: bool| {
        let mut a = Augmenter::new(examples(), 400, None, perturb, seed).unwrap();
        (0..8).map(|_| a.item()).collect::<Vec<_>>()
    };
    let items = draw(3, false);
    let perturbed = draw(3, true);
    for it in items.iter().chain(&perturbed) {
        assert_eq!(
            (it.input.len(), it.targets.len(), it.targets[0].len()),
            (400, 1, 400)
        );
        // the input is the reference plus noise at an SNR in [-5, 10] dB
        let p = |x: &mut dyn Iterator<Item = f32>| x.map(|v| (v as f64).powi(2)).sum::<f64>();
        let speech = p(&mut it.targets[0].iter().copied());
        let noise = p(&mut it.input.iter().zip(&it.targets[0]).map(|(x, s)| x - s));
        let snr = 10.0 * (speech / noise).log10();
        assert!((-5.01..10.01).contains(&snr), "SNR {snr}");
    }
    let inputs =
        |v: &[sepprune::learn::gumbel::Item]| v.iter().map(|i| i.input.clone()).collect::<Vec<_>>();
    assert_eq!(
        inputs(&items),
        inputs(&draw(3, false)),
        "same seed, same examples"
    );
    assert_ne!(inputs(&items), inputs(&draw(4, false)));
    assert_eq!(inputs(&perturbed), inputs(&draw(3, true)));
    assert_ne!(
        inputs(&items),
        inputs(&perturbed),
        "perturbed noises differ"
    );
    // label-free: remixes of the teacher's estimates, the teacher run on each whole mixture
    // (900 samples, zero-padded to 1200, a multiple of the 400-sample crops)
    let teacher = slim_tiny();
    let bare = tempfile::tempdir().unwrap();
    common::tiny_set(bare.path(), 3);
    std::fs::remove_dir_all(bare.path().join("s1")).unwrap();
    let ex = sepprune::audio::dataset::load(bare.path(), 16000).unwrap();
    let err = Augmenter::new(ex.clone(), 400, None, false, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("--teacher"),
        "without references a teacher is needed: {err}"
    );
    // the estimate at the gain that best explains the mixture (least squares)
    let whole = |mix: &[f32]| {
        let len = mix.len().div_ceil(400) * 400;
        let tm = TractModel::new(&teacher, &[1, 1, len]).unwrap();
        let mut x = mix.to_vec();
        x.resize(len, 0.0);
        let y = &tm.run(&x).unwrap()[..mix.len()];
        let gain = dot(mix, y) / dot(y, y);
        y.iter()
            .map(|&v| (v as f64 * gain) as f32)
            .collect::<Vec<f32>>()
    };
    let estimates: Vec<Vec<f32>> = ex.iter().map(|e| whole(&e.mix)).collect();
    // and not what the teacher gives on 400-sample windows alone (the estimates of earlier
    // versions): in context it separates differently
    let tm = TractModel::new(&teacher, &[1, 1, 400]).unwrap();
    let mut w = ex[0].mix[400..800].to_vec();
    let alone = tm.run(&w).unwrap();
    let gain = dot(&w, &alone) / dot(&alone, &alone);
    w.iter_mut()
        .zip(&alone)
        .for_each(|(v, &a)| *v = (a as f64 * gain) as f32);
    let in_context = &estimates[0][400..800];
    let gap = w
        .iter()
        .zip(in_context)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = in_context.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        gap > 1e-3 * scale,
        "context changes the estimate: {gap} of {scale}"
    );
    let close = |a: &[f32], b: &[f32]| {
        let scale = b.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).all(|(p, q)| (p - q).abs() <= 1e-4 * scale)
    };
    let mut a = Augmenter::new(
        ex.clone(),
        400,
        Some(TractTeacher::shared(teacher.clone())),
        false,
        0,
    )
    .unwrap();
    for _ in 0..4 {
        let it = a.item();
        let t = &it.targets[0];
        let found = estimates.iter().any(|e| {
            e.windows(400).any(|w| close(w, t)) || (e.len() < 400 && close(&t[..e.len()], e))
        });
        assert!(
            found,
            "a target is a crop of a teacher estimate rescaled to its mixture"
        );
    }
    // distillation: the same kind of remix, with the teacher's outputs on it as targets
    for _ in 0..3 {
        let it = a.distilled().unwrap();
        assert_eq!(it.targets, vec![tm.run(&it.input).unwrap()]);
    }
    // reliable distillation: the first of up to ATTEMPTS remixes on which the teacher
    // gains the threshold (SI-SDR against the remixed sources), else the best of them
    let fresh = || {
        Augmenter::new(
            ex.clone(),
            400,
            Some(TractTeacher::shared(teacher.clone())),
            false,
            5,
        )
        .unwrap()
    };
    let mut plain = fresh();
    let draws: Vec<_> = (0..ATTEMPTS).map(|_| plain.item()).collect();
    let gains: Vec<f64> = draws
        .iter()
        .map(|it| {
            let y = tm.run(&it.input).unwrap();
            si_sdr(&y, &it.targets[0]) - si_sdr(&it.input, &it.targets[0])
        })
        .collect();
    let pick = |min: f64| {
        fresh()
            .with_min_teacher_gain(Some(min))
            .distilled()
            .unwrap()
            .input
    };
    assert_eq!(pick(-1e9), draws[0].input, "every remix qualifies");
    let top = (0..ATTEMPTS)
        .max_by(|&i, &j| gains[i].total_cmp(&gains[j]))
        .unwrap();
    assert_eq!(pick(1e9), draws[top].input, "none qualifies: the best");
    // just above the first draw's gain: the first is refused
    let min = gains[0] + 1e-6;
    let first = gains.iter().position(|&g| g >= min).unwrap();
    assert_eq!(pick(min), draws[first].input, "the first that qualifies");
    assert!(top != first, "this draw tells the rules apart: {gains:?}");
    let err = Augmenter::new(examples(), 400, None, false, 0)
        .unwrap()
        .distilled()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("teacher"), "{err}");
    // fine-tuning on dynamic mixtures runs and improves validation
    let model = slim_tiny();
    let r = finetune(
        &model,
        dir.path(),
        &FinetuneOptions {
            dynamic_mix: true,
            ..opts()
        },
    )
    .unwrap();
    assert!(r.best.val_loss < r.history[0].val_loss, "{:?}", r.history);
    // label-free: distilling the unpruned model on remixes of mixtures alone brings the
    // slimmed one closer to it on validation crops and remixes
    let r = finetune(
        &model,
        bare.path(),
        &FinetuneOptions {
            dynamic_mix: true,
            perturb_noise: true,
            teacher: Some(TractTeacher::shared(common::tiny_tasnet())),
            ..opts()
        },
    )
    .unwrap();
    assert!(
        r.best.val_loss < r.history[0].val_loss - 0.1,
        "{:?}",
        r.history
    );
    // its validation is not the crops' alone (those are what fixed-crop distillation sees)
    let crops_only = finetune(
        &model,
        bare.path(),
        &FinetuneOptions {
            teacher: Some(TractTeacher::shared(common::tiny_tasnet())),
            epochs: 1,
            ..opts()
        },
    )
    .unwrap();
    assert_ne!(crops_only.history[0].val_loss, r.history[0].val_loss);
}

#[test]
fn the_learning_rate_halves_after_patience_validations_without_improvement() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(dir.path(), 4);
    let o = FinetuneOptions {
        lr: 5e-2,
        epochs: 12,
        val_every: Some(2),
        stop_after: 1000,
        patience: 2,
        ..opts()
    };
    let r = finetune(&slim_tiny(), dir.path(), &o).unwrap();
    let (mut best, mut stale, mut lr, mut halvings) = (r.history[0].val_loss, 0, o.lr, 0);
    for ev in &r.history[1..] {
        // the lr an evaluation reports is the one its steps ran with
        assert_eq!(ev.lr, lr, "{:?}", r.history);
        if ev.val_loss < best {
            best = ev.val_loss;
            stale = 0;
        } else {
            stale += 1;
            if stale % 2 == 0 {
                lr /= 2.0;
                halvings += 1;
            }
        }
    }
    assert!(halvings > 0, "no plateau reached: {:?}", r.history);
}

/// The cosine schedule: every validation reports the rate `lr (1 + cos(pi step / steps)) / 2`,
/// down to 0 at the last step; a linear warm-up of w steps scales it by `(step + 1) / w`
/// until it reaches it (the first validation then reports `lr / w`).
#[test]
fn the_cosine_schedule_decays_the_learning_rate_to_zero_after_its_warm_up() {
    use sepprune::learn::finetune::Schedule;
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(dir.path(), 4);
    for warmup in [0usize, 6] {
        let o = FinetuneOptions {
            lr: 1e-2,
            epochs: 100,
            steps: Some(12),
            val_every: Some(3),
            stop_after: 1000,
            schedule: Schedule::Cosine,
            warmup_steps: warmup,
            ..opts()
        };
        let share = |step: usize| match warmup {
            0 => 1.0,
            w => ((step + 1) as f64 / w as f64).min(1.0),
        };
        let r = finetune(&slim_tiny(), dir.path(), &o).unwrap();
        assert_eq!(r.history.len(), 5, "{:?}", r.history);
        assert!(
            (r.history[0].lr - o.lr * share(0)).abs() < 1e-15,
            "{:?}",
            r.history[0]
        );
        for ev in &r.history[1..] {
            let cosine = o.lr * 0.5 * (1.0 + (std::f64::consts::PI * ev.step as f64 / 12.0).cos());
            let want = cosine * share(ev.step);
            assert!(
                (ev.lr - want).abs() < 1e-12,
                "warm-up {warmup}, step {}: lr {} != {want}",
                ev.step,
                ev.lr
            );
        }
        assert_eq!(r.history.last().unwrap().lr, 0.0);
    }
}

/// `Keep::Last` returns the weights after the last step whatever the validations said:
/// the same weights as a run that validates only at its last step and finds it best, and
/// not those of `Keep::Best`, whose best validation (at this rate) comes earlier.
#[test]
fn keep_last_returns_the_last_steps_weights() {
    use sepprune::learn::finetune::{Keep, Schedule};
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(dir.path(), 4);
    let base = FinetuneOptions {
        lr: 1e-1,
        epochs: 100,
        steps: Some(6),
        val_every: Some(1),
        stop_after: 1000,
        schedule: Schedule::Cosine,
        ..opts()
    };
    let run = |o: FinetuneOptions| finetune(&slim_tiny(), dir.path(), &o).unwrap();
    let inits = |m: &ModelProto| m.graph.as_ref().unwrap().initializer.clone();
    let last = run(FinetuneOptions {
        keep: Keep::Last,
        ..base.clone()
    });
    assert_eq!(last.best.step, 6, "{:?}", last.best);
    assert_eq!(last.history.len(), 7);
    // the same training, validated only at its end, where it beats the start
    let once = run(FinetuneOptions {
        val_every: Some(6),
        ..base.clone()
    });
    assert_eq!(once.best.step, 6, "must improve: {:?}", once.history);
    assert_eq!(inits(&last.model), inits(&once.model));
    assert_eq!(last.best.val_loss, once.best.val_loss);
    // validated at every step, the best comes before the last: other weights
    let best = run(base);
    assert!(best.best.step < 6, "{:?}", best.history);
    assert_ne!(inits(&best.model), inits(&last.model));
}

#[test]
fn the_moving_average_is_decay_times_old_plus_the_rest_times_new_weights() {
    use sepprune::learn::finetune::Trainer;
    use sepprune::learn::gumbel::Item;
    use sepprune::learn::loss::Loss;
    let model = slim_tiny();
    let x = verify::test_signal(400, 16000.0);
    let item = Item {
        input: x.clone(),
        targets: vec![x.iter().map(|v| 0.5 * v).collect()],
    };
    let cpu = candle_core::Device::Cpu;
    let flat = |ws: Vec<candle_core::Tensor>| -> Vec<f32> {
        ws.iter()
            .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    };
    // the same two steps without and with the average
    let mut plain = Trainer::new(&model, 400, 1e-2, 5.0, Loss::SiSdr, &cpu).unwrap();
    let w0 = flat(plain.snapshot().unwrap());
    plain.step(&item).unwrap();
    let w1 = flat(plain.snapshot().unwrap());
    plain.step(&item).unwrap();
    let w2 = flat(plain.snapshot().unwrap());
    let mut avg = Trainer::new(&model, 400, 1e-2, 5.0, Loss::SiSdr, &cpu).unwrap();
    avg.set_ema(0.75).unwrap();
    avg.step(&item).unwrap();
    avg.step(&item).unwrap();
    let a = flat(avg.snapshot().unwrap());
    let mut moved = 0;
    for i in 0..a.len() {
        let want = 0.75 * (0.75 * w0[i] + 0.25 * w1[i]) + 0.25 * w2[i];
        assert!(
            (a[i] - want).abs() <= 1e-6 * (1.0 + want.abs()),
            "{i}: {} vs {want}",
            a[i]
        );
        moved += usize::from(w2[i] != w0[i]);
    }
    assert!(
        moved > a.len() / 2,
        "the steps changed only {moved} weights"
    );
}

/// Hints compare each linear layer of the slimmed model with the original's on the kept
/// channels: pruning one group leaves the layer that writes it exact on those channels
/// (an error near the f32 floor, while a wrong channel selection would sit near 0 dB), and
/// changes some layer after it.
#[test]
fn hints_compare_each_layer_with_the_teachers_kept_channels() {
    use sepprune::learn::hints::Hints;
    use sepprune::learn::CandleGraph;
    let (orig, n) = (common::tiny_tasnet(), 400);
    let ir = Ir::new(orig.clone(), n).unwrap();
    let gs = analyze_groups(&ir).unwrap();
    let cpu = candle_core::Device::Cpu;
    let x = verify::test_signal(n, 16000.0);
    let mut checked = 0;
    for g in gs.prunable().filter(|g| !g.residual && g.size >= 4) {
        // keep the odd channels only: any misalignment of kept channels shows
        let mut masks = sepprune::prune::Masks::new();
        masks.insert(g.id, g.size, (1..g.size).step_by(2).collect());
        let slimmed = slim(&ir, &gs, &masks).unwrap().model;
        let sir = Ir::new(slimmed.clone(), n).unwrap();
        let hints = Hints::new(&orig, &masks, &sir, &cpu, candle_core::DType::F32).unwrap();
        assert!(!hints.is_empty());
        let student = CandleGraph::new(
            Ir::new(slimmed, n).unwrap(),
            &cpu,
            candle_core::DType::F32,
            &[],
        )
        .unwrap();
        let xt = student.input(&x).unwrap();
        let (_, acts) = student
            .forward_keeping(&xt, &Default::default(), hints.names())
            .unwrap();
        let errs: Vec<(String, f32)> = hints
            .errors(&xt, &acts)
            .unwrap()
            .into_iter()
            .map(|(v, e)| (v, e.to_scalar::<f32>().unwrap()))
            .collect();
        let in_g = |v: &str| {
            gs.by_value
                .get(v)
                .is_some_and(|a| a.iter().any(|&(_, i)| i == g.id))
        };
        // does any computed value upstream of `v` (itself excluded) carry the group?
        let upstream_in_g = |v: &str| {
            let mut stack = vec![v.to_string()];
            let mut seen = std::collections::HashSet::new();
            while let Some(v) = stack.pop() {
                let Some(&p) = sir.producer.get(&v) else {
                    continue;
                };
                for i in &sir.nodes()[p].input {
                    if sir.producer.contains_key(i) && in_g(i) {
                        return true;
                    }
                    if seen.insert(i.clone()) {
                        stack.push(i.clone());
                    }
                }
            }
            false
        };
        // the first hinted layer that writes the group, with nothing of it upstream
        let Some(first) = errs.iter().position(|(v, _)| in_g(v)) else {
            continue;
        };
        if upstream_in_g(&errs[first].0) {
            continue;
        }
        for (v, e) in &errs[..=first] {
            assert!(
                *e < -80.0,
                "group {}: layer {v} before the cut differs: {e} dB",
                g.id
            );
        }
        let worst = errs.iter().map(|(_, e)| *e).fold(f32::MIN, f32::max);
        assert!(
            worst > -60.0,
            "group {}: pruning changed no layer: {errs:?}",
            g.id
        );
        checked += 1;
    }
    assert!(checked > 0, "no group was checked");
}

#[test]
fn hints_train_with_the_teacher_and_need_one() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(dir.path(), 4);
    let orig = common::tiny_tasnet();
    let ir = Ir::new(orig.clone(), 400).unwrap();
    let gs = analyze_groups(&ir).unwrap();
    let masks = masks_for_ratio(&ir, &gs, &Budget::new(0.4)).unwrap().masks;
    let model = slim(&ir, &gs, &masks).unwrap().model;
    let o = FinetuneOptions {
        hints: Some(masks.clone()),
        ..opts()
    };
    let e = finetune(&model, dir.path(), &o).err().unwrap().to_string();
    assert!(e.contains("teacher"), "{e}");
    let o = FinetuneOptions {
        teacher: Some(TractTeacher::shared(orig)),
        ..o
    };
    // masks of another model (a group of a different size) are refused, saying why
    let mut other = masks.clone();
    other.groups.values_mut().next().unwrap().size += 1;
    let bad = FinetuneOptions {
        hints: Some(other),
        ..o.clone()
    };
    let e = finetune(&model, dir.path(), &bad)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("do not fit the teacher"), "{e}");
    let r = finetune(&model, dir.path(), &o).unwrap();
    assert!(
        r.best.val_loss < r.history[0].val_loss - 0.1,
        "validation loss {} -> {}",
        r.history[0].val_loss,
        r.best.val_loss
    );
}

fn compress_opts(structure: sepprune::pipeline::Structure) -> sepprune::pipeline::Options {
    sepprune::pipeline::Options {
        target_macs: 0.6,
        target_latency: None,
        structure,
        method: sepprune::pipeline::Method::L1,
        iters: 0,
        finetune_minutes: 0.0,
        finetune_steps: Some(6),
        finetune_lr: 1e-4,
        finetune_loss_max_db: None,
        finetune_min_teacher_gain: None,
        finetune_keep: sepprune::learn::finetune::Keep::Best,
        teacher: false,
        seconds: 0.025,
        seed: 3,
        runtimes: vec![sepprune::runtime::Runtime::Tract],
        bench_runs: 2,
        progress: false,
        cuda: false,
        refit: false,
        refit_remix: 0,
        fail_below: None,
        max_drop: None,
        inputs: vec![],
        frame_rate: None,
    }
}

/// `compress` with a step budget: the same model, data and seed give the same ONNX bytes;
/// the report has its tables and at least four plots; depth removes whole blocks.
#[test]
fn compress_is_byte_identical_for_a_seed_and_reports_with_plots() {
    use sepprune::pipeline::{compress, Structure};
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(&dir.path().join("set"), 4);
    let model = dir.path().join("tiny.onnx");
    sepprune::onnx::save(&common::tiny_tasnet(), &model, None, false).unwrap();
    let set = dir.path().join("set");
    let run = |name: &str, s: Structure| {
        let out = dir.path().join(name);
        let c = compress(&model, &set, None, &out, &compress_opts(s)).unwrap();
        (std::fs::read(&out).unwrap(), c)
    };
    let (a, ca) = run("a.onnx", Structure::Channels);
    let (b, _) = run("b.onnx", Structure::Channels);
    assert!(a == b, "two runs with one seed wrote different models");
    let report = std::fs::read_to_string(ca.dir.join("report.md")).unwrap();
    assert!(
        report.contains("| original |") && report.contains("fine-tuned"),
        "{report}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ca.dir.join("report.json")).unwrap())
            .unwrap();
    let plots = json["plots"].as_array().unwrap();
    assert!(plots.len() >= 4, "{plots:?}");
    for p in plots {
        let bytes = std::fs::read(ca.dir.join(p.as_str().unwrap())).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"));
    }
    assert!(
        ca.summary.contains("kept on 4 mixtures") && ca.summary.contains("(in-sample)"),
        "{}",
        ca.summary
    );
    let (d, cd) = run("d.onnx", Structure::Depth);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cd.dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["removed"]["structure"], "depth");
    assert_eq!(
        json["removed"]["removed"].as_array().unwrap().len(),
        1,
        "one of two blocks"
    );
    assert!(d.len() < a.len() + 10_000 && !d.is_empty());
}

#[test]
fn training_keeps_exact_zeros_at_zero_and_moves_the_rest() {
    use sepprune::learn::finetune::Trainer;
    use sepprune::learn::gumbel::Item;
    use sepprune::learn::loss::Loss;
    use sepprune::onnx::Tensor;
    // a slim model whose first weight has every third entry exactly zero
    let model = slim_tiny();
    let ir = Ir::new(model.clone(), 400).unwrap();
    let name = sepprune::learn::finetune::learnable(&ir)[0].clone();
    let Tensor::F32(mut w) = ir.initializer(&name).unwrap() else {
        panic!("float weight")
    };
    for (i, v) in w.iter_mut().enumerate() {
        if i % 3 == 0 {
            *v = 0.0;
        }
    }
    let zeros: Vec<bool> = w.iter().map(|&v| v == 0.0).collect();
    let model = sepprune::onnx::replace_initializers(
        &model,
        &std::collections::HashMap::from([(name.clone(), Tensor::F32(w))]),
    )
    .unwrap();
    let x = verify::test_signal(400, 16000.0);
    let item = Item {
        input: x.clone(),
        targets: vec![x.iter().map(|v| 0.5 * v).collect()],
    };
    let mut t = Trainer::new(
        &model,
        400,
        1e-2,
        5.0,
        Loss::SiSdr,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let before: Vec<f32> = t.snapshot().unwrap()[0]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for _ in 0..3 {
        t.step(&item).unwrap();
    }
    let after: Vec<f32> = t.snapshot().unwrap()[0]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut moved = 0;
    for i in 0..after.len() {
        if zeros[i] {
            assert_eq!(after[i], 0.0, "entry {i} of {name} left zero");
        } else {
            moved += usize::from(after[i] != before[i]);
        }
    }
    let nonzero = zeros.iter().filter(|z| !**z).count();
    assert!(
        moved > nonzero / 2,
        "only {moved} of {nonzero} non-zero entries moved"
    );
}

/// Noise of `n` samples from `seed` and its target (the noise scaled by 0.5).
fn noise_item(n: usize, seed: u64) -> sepprune::learn::gumbel::Item {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect();
    sepprune::learn::gumbel::Item {
        targets: vec![x.iter().map(|v| 0.5 * v).collect()],
        input: x,
    }
}

#[test]
fn batched_training_computes_each_item_as_alone() {
    use sepprune::learn::finetune::Trainer;
    use sepprune::learn::loss::Loss;
    let (model, n, cpu) = (common::tiny_tasnet(), 400, candle_core::Device::Cpu);
    let items: Vec<_> = (0..3).map(|s| noise_item(n, s)).collect();
    let one = Trainer::new(&model, n, 1e-2, 5.0, Loss::SiSdr, &cpu).unwrap();
    let mut two = Trainer::batched(&model, n, 2, 1e-2, 5.0, Loss::SiSdr, &cpu).unwrap();
    assert_eq!(two.batch(), 2);
    // validation of 3 items (the last batch filled up) scores each item as alone
    let (v1, v2) = (one.validate(&items).unwrap(), two.validate(&items).unwrap());
    assert!(
        (v1 - v2).abs() < 1e-4,
        "validation {v1} alone, {v2} in batches of 2"
    );
    // a step's loss is the mean of its items' losses
    let pair = one.validate(&items[..2]).unwrap();
    let l = two.step_batch(&items[..2]).unwrap();
    assert!((l - pair).abs() < 1e-4, "step loss {l}, items alone {pair}");
    assert!(
        two.step_batch(&items[..1]).is_err(),
        "one item on a graph of batch 2"
    );
    // the same item twice: the mean gradient is that item's, so is the update
    let flat = |t: &Trainer| -> Vec<f32> {
        t.snapshot()
            .unwrap()
            .iter()
            .flat_map(|w| w.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    };
    let mut a = Trainer::new(&model, n, 1e-2, 5.0, Loss::SiSdr, &cpu).unwrap();
    let mut b = Trainer::batched(&model, n, 2, 1e-2, 5.0, Loss::SiSdr, &cpu).unwrap();
    let w0 = flat(&a);
    a.step(&items[0]).unwrap();
    let twice = [noise_item(n, 0), noise_item(n, 0)];
    b.step_batch(&twice).unwrap();
    let (wa, wb) = (flat(&a), flat(&b));
    let moved = wa.iter().zip(&w0).filter(|(x, y)| x != y).count();
    assert!(
        moved > wa.len() / 2,
        "only {moved} of {} weights moved",
        wa.len()
    );
    for (i, (x, y)) in wa.iter().zip(&wb).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
            "weight {i}: {x} alone, {y} batched"
        );
    }
}

#[test]
fn a_model_that_mixes_batch_items_is_refused_for_batches() {
    use sepprune::learn::finetune::Trainer;
    use sepprune::learn::loss::Loss;
    let model = common::batch_mixer();
    let cpu = candle_core::Device::Cpu;
    assert!(Trainer::new(&model, 200, 1e-2, 5.0, Loss::SiSdr, &cpu).is_ok());
    let err = Trainer::batched(&model, 200, 2, 1e-2, 5.0, Loss::SiSdr, &cpu)
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("mixes batch items"), "{msg}");
}

#[test]
fn finetuning_in_batches_counts_steps_and_writes_the_batch_one_graph() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(dir.path(), 4);
    let model = slim_tiny();
    let o = FinetuneOptions {
        batch: 2,
        steps: Some(6),
        val_every: Some(3),
        ..opts()
    };
    let r = finetune(&model, dir.path(), &o).unwrap();
    let steps: Vec<usize> = r.history.iter().map(|e| e.step).collect();
    assert_eq!(steps, vec![0, 3, 6], "evaluations at optimiser steps");
    assert!(r.best.val_loss < r.history[0].val_loss, "{:?}", r.history);
    let (a, b) = (
        model.graph.as_ref().unwrap(),
        r.model.graph.as_ref().unwrap(),
    );
    assert_eq!(a.node, b.node, "the written model is the batch-1 graph");
    assert_eq!(a.input, b.input);
    assert_eq!(a.initializer.len(), b.initializer.len());
}

/// `compress --target-latency`: both structures' candidates are measured on the runtime;
/// a target the original meets and one no candidate approaches are refused with the
/// measurements, and nothing is written.
#[test]
fn a_latency_target_measures_candidates_and_refuses_what_it_cannot_plan() {
    use sepprune::pipeline::latency::plan;
    use sepprune::pipeline::{compress, Structure};
    use sepprune::runtime::Runtime;
    let model = common::tiny_tasnet();
    let ir = Ir::new(model.clone(), 16000).unwrap();
    let e = plan(&model, &ir, 1e9, Structure::Auto, Runtime::Tract, 2).unwrap_err();
    assert!(e.to_string().contains("already runs in"), "{e}");
    let e = plan(&model, &ir, 1e-9, Structure::Auto, Runtime::Tract, 2).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("out of reach on tract") && msg.contains("fastest candidate"),
        "{msg}"
    );
    // through compress: the error, and no output
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(&dir.path().join("set"), 2);
    let path = dir.path().join("tiny.onnx");
    sepprune::onnx::save(&model, &path, None, false).unwrap();
    let out = dir.path().join("out.onnx");
    let o = sepprune::pipeline::Options {
        target_latency: Some(1e-9),
        ..compress_opts(Structure::Auto)
    };
    assert!(compress(&path, &dir.path().join("set"), None, &out, &o).is_err());
    assert!(!out.exists());
}

/// The Fisher score of a channel is the mean squared relative output change per unit of its
/// gate: averaged over many probe seeds, the Hutchinson estimates match central finite
/// differences of the gate graph on the same crops, and the masks slim exactly.
#[test]
fn fisher_scores_match_finite_differences_of_the_gates() {
    use sepprune::gates::gate_name;
    let dir = tempfile::tempdir().unwrap();
    common::tiny_set(dir.path(), 2);
    let model = common::tiny_tasnet();
    let budget = Budget::new(0.4);
    let dev = candle_core::Device::Cpu;
    let fisher = |seed| {
        sepprune::learn::fisher::fisher_scores(&model, dir.path(), 400, 2, &budget, seed, &dev)
            .unwrap()
    };
    assert_eq!(fisher(3), fisher(3), "deterministic for a seed");
    let seeds = 48;
    let mut mean: std::collections::HashMap<usize, Vec<f64>> = Default::default();
    for seed in 0..seeds {
        for (id, s) in fisher(seed) {
            let m = mean.entry(id).or_insert_with(|| vec![0.0; s.len()]);
            for (a, b) in m.iter_mut().zip(s) {
                *a += b / seeds as f64;
            }
        }
    }
    // the same quantity by finite differences: mean over crops of ‖∂y/∂g_j‖² / rms(y)²
    let (graph, cands) = sepprune::learn::run::gated_graph(&model, 400, &budget, &dev).unwrap();
    let crops = sepprune::learn::data::input_crops(dir.path(), 400, 2).unwrap();
    let ones = |g: &sepprune::analysis::Group| {
        candle_core::Tensor::ones(g.size, candle_core::DType::F32, &dev).unwrap()
    };
    let base: std::collections::HashMap<String, candle_core::Tensor> =
        cands.iter().map(|g| (gate_name(g.id), ones(g))).collect();
    let run = |gates: &std::collections::HashMap<String, candle_core::Tensor>, x: &[f32]| {
        let y = graph.forward(&graph.input(x).unwrap(), gates).unwrap();
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let (mut est, mut exact) = (vec![], vec![]);
    for g in &cands {
        for j in 0..g.size.min(6) {
            let mut fd = 0.0;
            for x in &crops {
                let y = run(&base, x);
                let rms2 = y.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / y.len() as f64;
                let at = |d: f32| {
                    let mut v = vec![1.0f32; g.size];
                    v[j] += d;
                    let mut gates = base.clone();
                    let t = candle_core::Tensor::from_vec(v, g.size, &dev).unwrap();
                    gates.insert(gate_name(g.id), t);
                    run(&gates, x)
                };
                let h = 1e-2f32;
                let (p, m) = (at(h), at(-h));
                let d2: f64 = p
                    .iter()
                    .zip(&m)
                    .map(|(a, b)| ((a - b) as f64 / (2.0 * h as f64)).powi(2))
                    .sum();
                fd += d2 / rms2 / crops.len() as f64;
            }
            est.push(mean[&g.id][j]);
            exact.push(fd);
        }
    }
    let total: f64 = exact.iter().sum();
    assert!(total > 0.0);
    let err: f64 = est
        .iter()
        .zip(&exact)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / total;
    assert!(
        err < 0.25,
        "mean relative error {err}: {est:?} vs {exact:?}"
    );
    let ir = Ir::new(model.clone(), 1000).unwrap();
    let gs = analyze_groups(&ir).unwrap();
    let b = masks_from_scores(&ir, &gs, &budget, &mean).unwrap();
    let kept = b.scope_macs.1 as f64 / b.scope_macs.0 as f64;
    assert!((kept - 0.6).abs() < 0.1, "kept {kept}");
    let x = verify::test_signal(1000, 16000.0);
    let r = verify::check(
        &ir,
        &gs,
        Some((&b.masks, None)),
        0,
        0,
        &x,
        sepprune::runtime::Runtime::Tract,
    )
    .unwrap();
    assert!(r.passed, "{:?}", r.trials);
}
