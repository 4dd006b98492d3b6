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

/// The third-party encoders of the corpus (transformers and torchaudio, all three export
/// paths): Candle's forward of the original and of the gate graph under random masks (whole
/// heads, head dims, FFN neurons) equals tract's.
#[test]
fn corpus_encoders_lower_to_candle_with_forward_parity() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("MISSING {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            // (Whisper and the Conformer take features, not samples)
            n.ends_with(".onnx")
                && (n.starts_with("hf_") || n.starts_with("ta_"))
                && !n.contains("whisper")
                && !n.contains("conformer")
                && !n.contains("convtasnet")
        })
        .collect();
    files.sort();
    let n = 8000;
    let x = verify::test_signal(n, 16000.0);
    let mut failures = vec![];
    let mut checked = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let model = sepprune::onnx::load(path).unwrap();
        let ir = Ir::new(model.clone(), n).unwrap();
        let input = ir.fact(&ir.graph_inputs()[0]).unwrap().shape.clone();
        let gs = analyze_groups(&ir).unwrap();
        let gated = gate_graph(&ir, &gs, Some(&verify::random_masks(&gs, 7))).unwrap();
        for (what, m) in [("original", &model), ("gate graph", &gated)] {
            let want = TractModel::new(m, &input).unwrap().run(&x).unwrap();
            let got = CandleGraph::new(
                Ir::new(m.clone(), n).unwrap(),
                &Device::Cpu,
                DType::F32,
                &[],
            )
            .and_then(|g| {
                let t = CTensor::from_vec(x.clone(), input.as_slice(), &Device::Cpu).unwrap();
                g.forward(&t, &HashMap::new())
            })
            .map(|y| y.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            match got {
                Ok(got) if rel_err(&want, &got) <= 1e-4 => checked += 1,
                Ok(got) => {
                    failures.push(format!("{name} {what}: rel err {}", rel_err(&want, &got)))
                }
                Err(e) => failures.push(format!("{name} {what}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 2 * 15, "{checked} forwards checked");
}
