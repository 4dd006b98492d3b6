//! `inspect` on the real Conv-TasNet (`../shared/models`, or fetched from PyPI):
//! ptflops-equivalent figures and groups.
use crate::common;
use sepprune::analysis::Region;
use sepprune::{inspect, ir::Ir, onnx};

#[test]
fn inspect_matches_ptflops_within_one_percent() {
    let ir = Ir::new(onnx::load(&common::real_model()).unwrap(), 16000).unwrap();
    let (r, groups) = inspect::inspect(&ir).unwrap();
    // ptflops 0.7.5 on the same network: 4.935 M params; 4.897..4.905 GMac for the ONNX graph.
    let rel = |a: f64, b: f64| (a - b).abs() / b;
    assert!(rel(r.params as f64, 4.935e6) < 0.01, "params {}", r.params);
    assert!(rel(r.macs as f64, 4.905e9) < 0.01, "macs {}", r.macs);
    let sep = &r.profile.regions[&Region::Separator];
    assert!(
        sep.macs as f64 / r.macs as f64 > 0.95,
        "separator share {}",
        sep.macs
    );
    // encoder conv = 32 * 512 * 999 MACs, decoder = the same count over input positions
    assert_eq!(r.profile.regions[&Region::Encoder].macs, 32 * 512 * 999);
    assert_eq!(r.profile.regions[&Region::Decoder].macs, 32 * 512 * 999);
    // encoder/decoder basis (512), residual (128), skip (128), one hidden group per block (24)
    assert_eq!(groups.groups.len(), 27);
    assert_eq!(groups.groups.iter().filter(|g| g.size == 128).count(), 2);
    assert!(groups.groups.iter().all(|g| g.frozen.is_none()));
    assert!((r.separator_coverage - 1.0).abs() < 1e-9);
}

#[test]
fn real_model_round_trips_byte_for_byte() {
    let path = common::real_model();
    let bytes = std::fs::read(&path).unwrap();
    let m = onnx::load(&path).unwrap();
    assert_eq!(onnx::encode(&m).len(), bytes.len());
}

fn ort_check(args: &[&str]) -> serde_json::Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ort_check.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 is needed for ground-truth checks");
    assert!(
        out.status.success(),
        "ort_check.py failed (is `pip install onnx onnxruntime==1.31.1` done?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap()
}

#[test]
fn prune_half_the_separator_is_exact_checker_valid_and_runs_in_ort_at_several_lengths() {
    use sepprune::analysis::analyze_groups;
    use sepprune::prune::{masks_for_ratio, slim, Budget};
    let ir = Ir::new(onnx::load(&common::real_model()).unwrap(), 16000).unwrap();
    let gs = analyze_groups(&ir).unwrap();
    let b = masks_for_ratio(&ir, &gs, &Budget::new(0.5)).unwrap();
    let kept = b.scope_macs.1 as f64 / b.scope_macs.0 as f64;
    assert!((kept - 0.5).abs() < 0.05, "separator MACs kept {kept}");
    let slim_model = slim(&ir, &gs, &b.masks).unwrap().model;
    // central property in tract on real speech
    let speech = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/audio/librispeech-103-1240-0000-1.5s.wav");
    let mut x = hound::WavReader::open(&speech)
        .unwrap()
        .samples::<i16>()
        .map(|s| s.unwrap() as f32 / 32768.0)
        .collect::<Vec<_>>();
    x.resize(16000, 0.0);
    let r = sepprune::verify::check(
        &ir,
        &gs,
        Some((&b.masks, Some(&slim_model))),
        1,
        0,
        &x,
        sepprune::runtime::Runtime::Tract,
    )
    .unwrap();
    for t in &r.trials {
        assert!(t.passed, "{}: {}", t.name, t.rel_err);
    }
    // ground truth: onnx.checker(full_check) and ORT at 0.5 s, 1 s, 3.7 s against the gate graph
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("slim.onnx");
    let gp = dir.path().join("gated.onnx");
    onnx::write_atomic(&p, &onnx::encode(&slim_model)).unwrap();
    let gated = sepprune::gates::gate_graph(&ir, &gs, Some(&b.masks)).unwrap();
    onnx::write_atomic(&gp, &onnx::encode(&gated)).unwrap();
    let v = ort_check(&[
        p.to_str().unwrap(),
        gp.to_str().unwrap(),
        "8000",
        "16000",
        "59200",
    ]);
    assert_eq!(v["checker"], true);
    for (n, e) in v["runs"].as_object().unwrap() {
        assert!(
            e.as_f64().unwrap() <= 1e-4,
            "ORT, {n} samples: slim vs gated rel err {e}"
        );
    }
}
