//! The exported seed separators in `fixtures/models` (made by `fixtures/make_fixtures.py`:
//! Conv-TasNet, SuDoRM-RF, TDANet, A-FRCNN, DPRNN and a dual-path transformer, each from
//! the TorchScript exporter at opsets 13 and 17 and the dynamo exporter at opset 18).
//!
//! Property: for random masks keeping 90% to 30% of every prunable group's channels, the
//! slimmed model equals the gate graph under the same masks in ONNX Runtime and tract at
//! 0.5 s, 1 s and 3.7 s of input (it is sliced once, at 1 s: the time axis stays dynamic),
//! and passes onnx.checker. (Three exports have a fixed length, 1 s: see [`runnable_lengths`].)
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use sepprune::analysis::analyze_groups;
use sepprune::ir::Ir;
use sepprune::prune::{slim, Masks};
use sepprune::runtime::Runtime;
use sepprune::verify;
use std::path::{Path, PathBuf};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "MISSING {}: {e} (run fixtures/make_fixtures.py)",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    v.sort();
    assert!(
        v.len() >= 18,
        "expected 6 models x 3 exports in {}",
        dir.display()
    );
    v
}

/// Every prunable group keeps `keep` of its channels (at least one), chosen at random.
fn masks_keeping(groups: &sepprune::analysis::Groups, keep: f64, seed: u64) -> Masks {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut m = Masks::new();
    for g in groups.prunable() {
        // groups keep different shares around `keep`, so that two groups that must
        // agree (one split of a layer into heads made twice) cannot pass by keeping as many
        let share = keep * rng.random_range(0.6..=1.0);
        let k = ((g.size as f64 * share).round() as usize).clamp(1, g.size);
        m.insert(g.id, g.size, sample(&mut rng, g.size, k).into_vec());
    }
    m
}

fn ort_check(model: &Path, lengths: &[usize]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ort_check.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script).arg(model);
    for n in lengths {
        cmd.arg(n.to_string());
    }
    let out = cmd
        .output()
        .expect("python3 is needed for ground-truth checks");
    assert!(
        out.status.success(),
        "ort_check.py failed on {} (is `pip install onnx onnxruntime==1.31.1` done?): {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap()
}

fn op_types(m: &sepprune::onnx::ModelProto) -> std::collections::BTreeSet<String> {
    let g = m.graph.as_ref().unwrap();
    g.node.iter().map(|n| n.op_type().to_string()).collect()
}

/// The lengths among `lengths` at which the original model infers. Every fixture runs at
/// any length except two kinds of export that bake the export length (1 s) into the graph:
/// TorchScript's trace of TDANet's `nn.MultiheadAttention` (a Reshape target) and dynamo's
/// DPRNN (its chunk padding, specialised by torch.export).
fn runnable_lengths(name: &str, ir: &Ir, lengths: &[usize]) -> Vec<usize> {
    let ok: Vec<usize> = lengths
        .iter()
        .copied()
        .filter(|&n| {
            // a fixed-shape export is analysed at its declared length, whatever is asked
            n == ir.samples
                || Ir::new(ir.model.clone(), n).is_ok_and(|o| {
                    let x = &o.graph_inputs()[0];
                    o.fact(x).is_some_and(|f| f.shape.contains(&n))
                })
        })
        .collect();
    let fixed = name.starts_with("tdanet.ts") || name == "dprnn.dynamo18.onnx";
    assert_eq!(
        ok.len() == 1,
        fixed,
        "{name}: runs at {ok:?} of {lengths:?} samples"
    );
    ok
}

#[test]
fn every_fixture_slims_to_the_gate_graph_function_in_ort_and_tract_at_three_lengths() {
    let lengths = [8000usize, 16000, 59200];
    let tmp = tempfile::tempdir().unwrap();
    let mut pruned_somewhere = 0;
    for (fi, path) in fixtures().iter().enumerate() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let model = sepprune::onnx::load(path).unwrap();
        let ir = Ir::new(model.clone(), 16000).unwrap_or_else(|e| panic!("{name}: {e}"));
        let gs = analyze_groups(&ir).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(gs.prunable().count() > 0, "{name}: no prunable group");
        pruned_somewhere += 1;
        let runnable = runnable_lengths(&name, &ir, &lengths);
        for (k, keep) in [0.9, 0.6, 0.3].into_iter().enumerate() {
            let m = masks_keeping(&gs, keep, (fi * 10 + k) as u64);
            let slimmed = slim(&ir, &gs, &m).unwrap_or_else(|e| panic!("{name} keep {keep}: {e}"));
            // what is written: the exporter's norm forms put back, the same ops as before
            // (less the Identity nodes on weights, which are bypassed)
            let written = slimmed.exported(&slimmed.model);
            let mut before = op_types(&model);
            if !op_types(&written).contains("Identity") {
                before.remove("Identity");
            }
            assert_eq!(
                op_types(&written),
                before,
                "{name}: ops of the written model"
            );
            for rt in [Runtime::Ort, Runtime::Tract] {
                for &n in &runnable {
                    let x = verify::test_signal(n, 16000.0);
                    let r = verify::check(&ir, &gs, Some((&m, Some(&written))), 0, 0, &x, rt)
                        .unwrap_or_else(|e| panic!("{name} keep {keep} {} {n}: {e}", rt.name()));
                    for t in &r.trials {
                        assert!(
                            t.passed && t.rel_err <= 1e-4,
                            "{name} keep {keep} {} {n} samples: {} rel err {}",
                            rt.name(),
                            t.name,
                            t.rel_err
                        );
                    }
                }
            }
            if k == 1 {
                let out = tmp.path().join(&name);
                std::fs::write(&out, sepprune::onnx::encode(&written)).unwrap();
                let v = ort_check(&out, &runnable);
                assert_eq!(v["checker"], true, "{name}: onnx.checker");
            }
        }
    }
    assert_eq!(pruned_somewhere, fixtures().len());
}

#[test]
fn the_three_exports_of_a_model_get_the_same_groups_and_macs() {
    use std::collections::BTreeMap;
    /// (file name, sorted (group size, prunable), MACs)
    type Export = (String, Vec<(usize, bool)>, u64);
    let mut by_model: BTreeMap<String, Vec<Export>> = BTreeMap::new();
    for path in fixtures() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let model_name = name.split('.').next().unwrap().to_string();
        let ir = Ir::new(sepprune::onnx::load(&path).unwrap(), 16000).unwrap();
        let gs = analyze_groups(&ir).unwrap();
        let mut groups: Vec<(usize, bool)> = gs
            .groups
            .iter()
            .map(|g| (g.size, g.frozen.is_none()))
            .collect();
        groups.sort();
        let prof = sepprune::analysis::profile(&ir);
        by_model
            .entry(model_name)
            .or_default()
            .push((name, groups, prof.macs));
    }
    for (model, exports) in by_model {
        let (first, g0, m0) = &exports[0];
        for (name, g, m) in &exports[1..] {
            let rel = (*m as f64 - *m0 as f64).abs() / *m0 as f64;
            assert!(
                rel < 0.02,
                "{model}: MACs of {name} ({m}) vs {first} ({m0})"
            );
            let prunable =
                |g: &[(usize, bool)]| g.iter().filter(|x| x.1).map(|x| x.0).collect::<Vec<_>>();
            assert_eq!(
                prunable(g),
                prunable(g0),
                "{model}: prunable groups of {name} vs {first}"
            );
        }
    }
}

/// `prune --ratio 0.5` (default budget: L1, separator scope, residual streams pruned only
/// when needed) removes half the separator's MACs within 5 points on every fixture; on the
/// fixtures with attention, the result is also checked exact in ORT.
#[test]
fn default_budget_meets_the_ratio_on_every_fixture() {
    use sepprune::prune::{masks_for_ratio, Budget};
    for path in fixtures() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let ir = Ir::new(sepprune::onnx::load(&path).unwrap(), 16000).unwrap();
        let gs = analyze_groups(&ir).unwrap();
        let m =
            masks_for_ratio(&ir, &gs, &Budget::new(0.5)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let kept = m.scope_macs.1 as f64 / m.scope_macs.0 as f64;
        assert!(
            (kept - 0.5).abs() <= 0.05,
            "{name}: {:.1}% of separator MACs kept",
            100.0 * kept
        );
        if !(name.starts_with("tdanet") || name.starts_with("dptnet")) {
            continue;
        }
        let slimmed = slim(&ir, &gs, &m.masks).unwrap_or_else(|e| panic!("{name}: {e}"));
        for n in runnable_lengths(&name, &ir, &[8000, 16000, 59200]) {
            let x = verify::test_signal(n, 16000.0);
            let r = verify::check(
                &ir,
                &gs,
                Some((&m.masks, Some(&slimmed.model))),
                0,
                0,
                &x,
                Runtime::Ort,
            )
            .unwrap();
            assert!(
                r.trials.iter().all(|t| t.passed && t.rel_err <= 1e-4),
                "{name} {n}: {:?}",
                r.trials.iter().map(|t| t.rel_err).collect::<Vec<_>>()
            );
        }
    }
}

/// Our params count equals PyTorch's count of the parameters the forward reads
/// (`fixtures/models/manifest.json`, `make_fixtures.py --count-only`) on every fixture
/// (tdanet's dynamo export stores its attention's transposed in-projection once per call of
/// the block: one parameter, counted once).
#[test]
fn params_equal_pytorch_forward_count_on_the_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let files = fixtures();
    assert_eq!(manifest.as_object().unwrap().len(), files.len());
    let mut differ = vec![];
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let want = manifest[&name]["params_forward"].as_u64().unwrap();
        let ir = Ir::new(sepprune::onnx::load(&path).unwrap(), 16000).unwrap();
        let ours = sepprune::analysis::profile(&ir).params;
        if ours != want {
            differ.push((name, ours, want));
        }
    }
    assert!(differ.is_empty(), "(file, ours, PyTorch's): {differ:?}");
}
