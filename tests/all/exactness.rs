//! The central property: a physically pruned model computes the same function as the gate
//! graph under the same binary mask, and the all-ones gate graph is the original model.
use crate::common;
use proptest::prelude::*;
use sepprune::analysis::analyze_groups;
use sepprune::ir::Ir;
use sepprune::prune::{masks_for_ratio, slim, Budget, Criterion, Residual};
use sepprune::runtime::{rel_err, tract::TractModel};
use sepprune::{gates, verify};

fn tiny(samples: usize) -> Ir {
    Ir::new(common::tiny_tasnet(), samples).unwrap()
}

#[test]
fn tiny_tasnet_groups_are_all_found() {
    let ir = tiny(400);
    let gs = analyze_groups(&ir).unwrap();
    // encoder basis (16), residual (6), skip (6), two hidden (12)
    let mut sizes: Vec<usize> = gs.prunable().map(|g| g.size).collect();
    sizes.sort();
    assert_eq!(sizes, vec![6, 6, 12, 12, 16]);
}

#[test]
fn tiny_tasnet_slim_equals_gated_for_random_masks_at_several_lengths() {
    for samples in [400, 1000, 1999] {
        let ir = tiny(samples);
        let gs = analyze_groups(&ir).unwrap();
        let x = verify::test_signal(samples, 16000.0);
        let r = verify::check(
            &ir,
            &gs,
            None,
            4,
            samples as u64,
            &x,
            sepprune::runtime::Runtime::Tract,
        )
        .unwrap();
        for t in &r.trials {
            assert!(
                t.passed,
                "{samples} samples: {} rel err {}",
                t.name, t.rel_err
            );
        }
    }
}

#[test]
fn gated_with_a_mask_differs_from_original() {
    // guards against a gate graph that ignores its gates
    let ir = tiny(500);
    let gs = analyze_groups(&ir).unwrap();
    let m = verify::random_masks(&gs, 3);
    let x = verify::test_signal(500, 16000.0);
    let orig = TractModel::new(&ir.model, &[1, 1, 500])
        .unwrap()
        .run(&x)
        .unwrap();
    let gated = TractModel::new(
        &gates::gate_graph(&ir, &gs, Some(&m)).unwrap(),
        &[1, 1, 500],
    )
    .unwrap()
    .run(&x)
    .unwrap();
    assert!(rel_err(&orig, &gated) > 1e-3);
}

#[test]
fn ratio_budget_reaches_the_requested_separator_macs() {
    let ir = tiny(1000);
    let gs = analyze_groups(&ir).unwrap();
    for ratio in [0.25, 0.5, 0.7] {
        let b = masks_for_ratio(&ir, &gs, &Budget::new(ratio)).unwrap();
        let kept = b.scope_macs.1 as f64 / b.scope_macs.0 as f64;
        assert!(
            (kept - (1.0 - ratio)).abs() < 0.08,
            "ratio {ratio}: kept {kept}"
        );
        // encoder basis group (touches encoder and decoder) is out of the separator scope
        let enc = gs.of("enc", 0).unwrap().id;
        assert!(b.masks.keep(enc).is_none());
        slim(&ir, &gs, &b.masks).unwrap();
    }
}

#[test]
fn invalid_masks_are_rejected_with_a_clear_error() {
    let ir = tiny(400);
    let gs = analyze_groups(&ir).unwrap();
    let mut m = sepprune::prune::Masks::new();
    m.insert(0, gs.groups[0].size, vec![]);
    assert!(slim(&ir, &gs, &m)
        .unwrap_err()
        .to_string()
        .contains("at least one channel"));
    let mut m = sepprune::prune::Masks::new();
    m.insert(99, 4, vec![0]);
    assert!(slim(&ir, &gs, &m)
        .unwrap_err()
        .to_string()
        .contains("does not exist"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]
    #[test]
    fn slim_equals_gated_for_any_seed(seed in 0u64..10_000) {
        let ir = tiny(600);
        let gs = analyze_groups(&ir).unwrap();
        let m = verify::random_masks(&gs, seed);
        let x = verify::test_signal(600, 16000.0);
        let a = TractModel::new(&slim(&ir, &gs, &m).unwrap().model, &[1, 1, 600]).unwrap().run(&x).unwrap();
        let b = TractModel::new(&gates::gate_graph(&ir, &gs, Some(&m)).unwrap(), &[1, 1, 600]).unwrap().run(&x).unwrap();
        prop_assert!(rel_err(&b, &a) <= verify::TOL_MASKED, "rel err {}", rel_err(&b, &a));
    }
}

#[test]
fn kept_groups_stay_whole_and_the_budget_comes_from_the_rest() {
    let ir = tiny(1000);
    let gs = analyze_groups(&ir).unwrap();
    let narrow: Vec<usize> = gs
        .prunable()
        .filter(|g| g.size == 6)
        .map(|g| g.id)
        .collect();
    let b = masks_for_ratio(
        &ir,
        &gs,
        &Budget {
            criterion: Criterion::L2,
            keep_groups: narrow.clone(),
            residual: Residual::Prune,
            ..Budget::new(0.3)
        },
    )
    .unwrap();
    for id in &narrow {
        assert!(b.masks.keep(*id).is_none(), "group {id} was pruned");
    }
    let kept = b.scope_macs.1 as f64 / b.scope_macs.0 as f64;
    assert!((kept - 0.7).abs() < 0.08, "kept {kept}");
    let err = masks_for_ratio(
        &ir,
        &gs,
        &Budget {
            keep_groups: vec![999],
            ..Budget::new(0.3)
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("999"));
}

#[test]
fn residual_and_skip_streams_are_marked_and_kept_whole_by_default() {
    let ir = tiny(1000);
    let gs = analyze_groups(&ir).unwrap();
    // the residual stream `res` (B channels) and the skip sum (B channels)
    let residual: Vec<usize> = gs.prunable().filter(|g| g.residual).map(|g| g.id).collect();
    assert_eq!(
        residual.len(),
        2,
        "{:?}",
        gs.groups
            .iter()
            .map(|g| (g.id, g.size, g.residual))
            .collect::<Vec<_>>()
    );
    // hidden groups (each feeds one conv pair, never summed) are not residual
    assert!(gs.prunable().any(|g| !g.residual));
    let b = masks_for_ratio(&ir, &gs, &Budget::new(0.4)).unwrap();
    for id in &residual {
        assert!(
            b.masks.keep(*id).is_none(),
            "residual group {id} was pruned"
        );
    }
    let kept = b.scope_macs.1 as f64 / b.scope_macs.0 as f64;
    assert!((kept - 0.6).abs() < 0.08, "kept {kept}");
    let all = masks_for_ratio(
        &ir,
        &gs,
        &Budget {
            residual: Residual::Prune,
            ..Budget::new(0.4)
        },
    )
    .unwrap();
    assert!(residual.iter().any(|id| all.masks.keep(*id).is_some()));
    assert!(all.residual && !b.residual);
    slim(&ir, &gs, &b.masks).unwrap();
}

#[test]
fn residual_streams_are_pruned_when_the_other_groups_cannot_meet_the_budget() {
    let ir = tiny(1000);
    let gs = analyze_groups(&ir).unwrap();
    let residual: Vec<usize> = gs.prunable().filter(|g| g.residual).map(|g| g.id).collect();
    let at = |ratio: f64, residual: Residual| {
        masks_for_ratio(
            &ir,
            &gs,
            &Budget {
                residual,
                ..Budget::new(ratio)
            },
        )
        .unwrap()
    };
    let kept = |b: &sepprune::prune::Budgeted| b.scope_macs.1 as f64 / b.scope_macs.0 as f64;
    // keeping the streams whole, 90% cannot be removed...
    let keep = at(0.9, Residual::Keep);
    assert!(kept(&keep) > 0.15, "kept {}", kept(&keep));
    assert!(residual.iter().all(|id| keep.masks.keep(*id).is_none()));
    // ...so the default prunes them too, reaches the budget and says so
    let auto = at(0.9, Residual::Auto);
    assert!(auto.residual);
    assert!(residual.iter().any(|id| auto.masks.keep(*id).is_some()));
    assert!((kept(&auto) - 0.1).abs() < 0.05, "kept {}", kept(&auto));
    assert_eq!(auto.masks, at(0.9, Residual::Prune).masks);
}

#[test]
fn masks_are_stamped_for_their_model_found_by_key_and_refused_for_another() {
    use sepprune::analysis::masks::{fingerprint, Masks};
    let ir = tiny(500);
    let gs = analyze_groups(&ir).unwrap();
    let b = masks_for_ratio(
        &ir,
        &gs,
        &Budget {
            residual: Residual::Prune,
            ..Budget::new(0.4)
        },
    )
    .unwrap();
    let stamped = b.masks.stamped(&ir, &gs);
    assert_eq!(stamped.model.as_deref(), Some(fingerprint(&ir).as_str()));
    assert!(stamped.groups.values().all(|g| g.key.is_some()));
    // the same model (at another length: facts do not enter the fingerprint)
    let again = Ir::new(common::tiny_tasnet(), 800).unwrap();
    assert_eq!(
        stamped.clone().resolved(&again, &gs).unwrap().groups,
        stamped.groups
    );
    // ids renumbered (another version's numbering): the keys find the groups
    let mut shifted = stamped.clone();
    shifted.groups = stamped
        .groups
        .iter()
        .map(|(&id, g)| (id + 100, g.clone()))
        .collect();
    assert_eq!(shifted.resolved(&ir, &gs).unwrap().groups, stamped.groups);
    // unstamped files are taken by id
    let plain = Masks {
        model: None,
        ..b.masks.clone()
    };
    assert_eq!(plain.clone().resolved(&ir, &gs).unwrap(), plain);
    // the fingerprint is the model's as given, not its canonical form's: a canonical
    // rewrite (a one-group GroupNorm as exported, rewritten to its ReduceMean form) added
    // or changed later does not disown a masks file; files stamped with the canonical
    // form, as before 2026-11-26, still resolve
    let mut g = common::G::new(&[1, 2, -1]);
    let h = g.conv("x", 2, 4, 1, 1, 0);
    let flat = g.const_i("flat", vec![0, 1, -1]);
    let r = g.node("Reshape", &[&h, &flat], vec![]);
    let one = g.const_f("one", &[1], vec![1.0]);
    let zero = g.const_f("zero", &[1], vec![0.0]);
    let n = g.node("InstanceNormalization", &[&r, &one, &zero], vec![]);
    let shape = g.node("Shape", &[&h], vec![]);
    let n = g.node("Reshape", &[&n, &shape], vec![]);
    let y = g.conv(&n, 4, 2, 1, 1, 0);
    let given = g.output(&y, &[1, 2, -1]);
    let gn = Ir::new(given.clone(), 64).unwrap();
    assert!(!gn.rewrites.is_empty(), "the GroupNorm is rewritten");
    let ggs = analyze_groups(&gn).unwrap();
    assert_eq!(fingerprint(&gn), sepprune::ir::fingerprint(&given));
    let canonical = sepprune::ir::fingerprint_of(
        gn.nodes().iter(),
        gn.graph()
            .initializer
            .iter()
            .map(|t| (t.name(), t.dims.as_slice())),
    );
    assert_ne!(canonical, fingerprint(&gn));
    let all = Budget {
        scope: sepprune::prune::Scope::All,
        ..Budget::new(0.5)
    };
    let gm = masks_for_ratio(&gn, &ggs, &all)
        .unwrap()
        .masks
        .stamped(&gn, &ggs);
    assert!(!gm.groups.is_empty());
    let legacy = Masks {
        model: Some(canonical),
        canonical: None,
        ..gm.clone()
    };
    assert_eq!(legacy.resolved(&gn, &ggs).unwrap().groups, gm.groups);
    // a model written from the IR (as `learn --model-out` writes trained weights) keeps the
    // rewrites that compute nothing (an Identity of a weight bypassed): another model as
    // given, the same canonical form, and its masks still apply
    let mut g = common::G::new(&[1, 2, -1]);
    let w = g.weight("w", &[4, 2, 1]);
    let wi = g.node("Identity", &[&w], vec![]);
    let b = g.weight("b", &[4]);
    let h = g.node(
        "Conv",
        &["x", &wi, &b],
        vec![sepprune::onnx::ints_attr("kernel_shape", &[1])],
    );
    let y = g.conv(&h, 4, 2, 1, 1, 0);
    let given = g.output(&y, &[1, 2, -1]);
    let ir1 = Ir::new(given, 64).unwrap();
    let gs1 = analyze_groups(&ir1).unwrap();
    let m1 = masks_for_ratio(&ir1, &gs1, &all)
        .unwrap()
        .masks
        .stamped(&ir1, &gs1);
    assert!(!m1.groups.is_empty());
    let written = Ir::new(ir1.exported(&ir1.model), 64).unwrap();
    assert_ne!(fingerprint(&written), fingerprint(&ir1));
    let gsw = analyze_groups(&written).unwrap();
    assert_eq!(
        m1.clone().resolved(&written, &gsw).unwrap().groups,
        m1.groups
    );
    // another model's masks are refused, naming both fingerprints
    let other = Ir::new(common::tiny_bilstm(), 500).unwrap();
    let og = analyze_groups(&other).unwrap();
    let e = stamped.resolved(&other, &og).err().unwrap().to_string();
    assert!(
        e.contains("another model") && e.contains(&fingerprint(&other)),
        "{e}"
    );
}
