//! Candle lowering of every exported fixture: forward parity with tract (issue 3's bound,
//! max |a - b| <= 1e-4 max |a|) on the original and on its gate graph under random masks.
use candle_core::{DType, Device, Tensor as CTensor};
use sepprune::analysis::analyze_groups;
use sepprune::gates::gate_graph;
use sepprune::ir::Ir;
use sepprune::learn::CandleGraph;
use sepprune::runtime::{rel_err, tract::TractModel};
use sepprune::verify;
use std::collections::HashMap;
use std::path::Path;

fn candle_run(model: &sepprune::onnx::ModelProto, x: &[f32]) -> sepprune::Result<Vec<f32>> {
    let n = x.len();
    let g = CandleGraph::new(Ir::new(model.clone(), n)?, &Device::Cpu, DType::F32, &[])?;
    let t = CTensor::from_vec(x.to_vec(), (1, 1, n), &Device::Cpu).unwrap();
    let y = g.forward(&t, &HashMap::new())?;
    Ok(y.flatten_all().unwrap().to_vec1().unwrap())
}

#[test]
fn every_fixture_lowers_to_candle_with_forward_parity() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("MISSING {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    files.sort();
    let n = 16000;
    let x = verify::test_signal(n, 16000.0);
    let mut failures = vec![];
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let model = sepprune::onnx::load(path).unwrap();
        let ir = Ir::new(model.clone(), n).unwrap();
        let gs = analyze_groups(&ir).unwrap();
        let gated = gate_graph(&ir, &gs, Some(&verify::random_masks(&gs, 7))).unwrap();
        for (what, m) in [("original", &model), ("gate graph", &gated)] {
            let want = TractModel::new(m, &[1, 1, n]).unwrap().run(&x).unwrap();
            match candle_run(m, &x) {
                Ok(got) if rel_err(&want, &got) <= 1e-4 => {}
                Ok(got) => {
                    failures.push(format!("{name} {what}: rel err {}", rel_err(&want, &got)))
                }
                Err(e) => failures.push(format!("{name} {what}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
