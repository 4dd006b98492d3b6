//! `inspect` on the real Conv-TasNet (../shared/models): ptflops-equivalent figures and groups.
mod common;
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
