//! Bad input: every malformed or unsupported model gives a clear error naming what is wrong
//! (or a correct result), never a panic, and the CLI writes nothing. A mutation fuzz test
//! of the loader (bit flips, cuts and splices of real exports) runs a bounded number of
//! cases here; `scripts/fuzz_loader.sh` runs more.
use crate::common::G;
use rand::{Rng, SeedableRng};
use sepprune::analysis::analyze_groups;
use sepprune::error::Error;
use sepprune::ir::Ir;
use sepprune::onnx::{self, pb};
use std::path::{Path, PathBuf};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn load_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    std::fs::write(&p, bytes).unwrap();
    match onnx::load(&p).and_then(|m| Ir::new(m, 800)) {
        Ok(_) => "loaded".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_random_and_empty_files_are_decode_errors_naming_the_file() {
    let good = std::fs::read(fixture("fixtures/models/convtasnet.ts17.onnx")).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let random: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
    for (what, bytes) in [
        ("truncated", &good[..good.len() / 3]),
        ("random", &random[..]),
        ("empty", &[][..]),
    ] {
        let e = load_err(bytes);
        assert!(
            e.contains("m.onnx") && e.contains("not a valid ONNX model"),
            "{what}: {e}"
        );
    }
}

fn tiny() -> pb::ModelProto {
    let mut g = G::new(&[1, 2, -1]);
    let h = g.conv("x", 2, 6, 1, 1, 0);
    let y = g.conv(&h, 6, 2, 1, 1, 0);
    g.output(&y, &[1, 2, -1])
}

#[test]
fn a_missing_or_unsupported_opset_is_refused() {
    let mut m = tiny();
    m.opset_import.clear();
    let e = Ir::new(m, 50).err().unwrap();
    assert!(matches!(e, Error::Refused(_)), "{e}");
    assert!(e.to_string().contains("opset"), "{e}");
    let mut m = tiny();
    m.opset_import[0].version = Some(7);
    let e = Ir::new(m, 50).err().unwrap().to_string();
    assert!(e.contains("opset 7 is not supported"), "{e}");
    // the range the rules cover loads
    let mut m = tiny();
    m.opset_import[0].version = Some(13);
    Ir::new(m, 50).unwrap();
}

#[test]
fn a_quantized_graph_is_refused_naming_its_quantized_nodes() {
    let mut g = G::new(&[1, 2, -1]);
    let s = g.const_f("scale", &[], vec![0.1]);
    let z = g.const_i("zero", vec![0]);
    let q = g.node("QuantizeLinear", &["x", &s, &z], vec![]);
    let d = g.node("DequantizeLinear", &[&q, &s, &z], vec![]);
    let y = g.conv(&d, 2, 2, 1, 1, 0);
    let e = Ir::new(g.output(&y, &[1, 2, -1]), 50)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("quantized")
            && e.contains("QuantizeLinear")
            && e.contains("DequantizeLinear")
            && e.contains("prune the float model"),
        "{e}"
    );
}

#[test]
fn nan_weights_are_refused_naming_the_initializer() {
    let mut m = tiny();
    let g = m.graph.as_mut().unwrap();
    let w = g
        .initializer
        .iter_mut()
        .find(|t| t.dims.len() == 3)
        .unwrap();
    let name = w.name().to_string();
    let mut t = onnx::tensor_from_proto(w).unwrap();
    if let onnx::Tensor::F32(a) = &mut t {
        a[[0, 0, 0]] = f32::NAN;
    }
    *w = onnx::tensor_to_proto(&t, w);
    let e = Ir::new(m, 50).err().unwrap().to_string();
    assert!(e.contains(&name) && e.contains("NaN"), "{e}");
}

#[test]
fn external_data_loads_and_a_missing_data_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny();
    let g = m.graph.as_mut().unwrap();
    let w = &mut g.initializer[0];
    let raw = onnx::tensor_from_proto(w).unwrap();
    let bytes: Vec<u8> = raw
        .as_f32()
        .unwrap()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(dir.path().join("weights.bin"), &bytes).unwrap();
    w.raw_data = None;
    w.float_data.clear();
    w.data_location = Some(1);
    w.external_data = vec![pb::StringStringEntryProto {
        key: Some("location".into()),
        value: Some("weights.bin".into()),
    }];
    let p = dir.path().join("m.onnx");
    std::fs::write(&p, onnx::encode(&m)).unwrap();
    let loaded = onnx::load(&p).unwrap();
    let back = onnx::tensor_from_proto(&loaded.graph.as_ref().unwrap().initializer[0]).unwrap();
    assert_eq!(back, raw);
    std::fs::remove_file(dir.path().join("weights.bin")).unwrap();
    let e = onnx::load(&p).err().unwrap().to_string();
    assert!(e.contains("weights.bin"), "{e}");
}

#[test]
fn the_cli_writes_nothing_for_a_refused_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny();
    m.opset_import[0].version = Some(5);
    let src = dir.path().join("old.onnx");
    std::fs::write(&src, onnx::encode(&m)).unwrap();
    let out = dir.path().join("slim.onnx");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sepprune"))
        .args(["prune", src.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(["--ratio", "0.3"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("old.onnx") && err.contains("opset 5"), "{err}");
    assert!(!out.exists());
}

/// Flips, cuts and splices bytes of `bytes`: one mutation per case.
fn mutate(bytes: &[u8], rng: &mut impl Rng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match rng.random_range(0..3) {
        0 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => b.truncate(rng.random_range(0..b.len())),
        _ => {
            let (i, j) = (rng.random_range(0..b.len()), rng.random_range(0..b.len()));
            let n = rng.random_range(1..64).min(b.len() - i.max(j));
            let chunk = b[i..i + n].to_vec();
            b.splice(j..j, chunk);
        }
    }
    b
}

/// Loads, infers and analyses mutated exports: each case is an error or a result, never a
/// panic. `SEPPRUNE_FUZZ_CASES` sets the number of cases per model (default 60),
/// `SEPPRUNE_FUZZ_SEED` the seed (default 11).
#[test]
fn mutated_exports_never_panic_the_loader() {
    let cases: usize = std::env::var("SEPPRUNE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let seed: u64 = std::env::var("SEPPRUNE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut errors = 0;
    for f in [
        "fixtures/models/convtasnet.ts17.onnx",
        "fixtures/corpus/hf_whisper_encoder.ts17.onnx",
        "fixtures/corpus/ast_sudormrf.ts17.onnx",
    ] {
        let good = std::fs::read(fixture(f)).unwrap();
        for case in 0..cases {
            let bytes = mutate(&good, &mut rng);
            std::fs::write(&p, &bytes).unwrap();
            let r = std::panic::catch_unwind(|| {
                let m = onnx::load(&p)?;
                let ir = Ir::new(m, 800)?;
                analyze_groups(&ir).map(|_| ())
            });
            match r {
                Ok(Ok(())) => {}
                Ok(Err(_)) => errors += 1,
                Err(_) => panic!("{f}: case {case} panicked (bytes kept in the test's temp dir)"),
            }
        }
    }
    // the mutations do reach the decoder's and the analysis' error paths
    assert!(errors > 0);
}

/// A model whose initializers are external data is written back the same way: `prune`
/// writes `slim.onnx` and `slim.onnx.data`, both loading to what it writes inline for the
/// same model, and the analysis' marker is not in the file.
#[test]
fn external_data_is_written_back_as_external_data() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/models/convtasnet.ts17.onnx");
    let m = onnx::load(&fixture).unwrap();
    let ext = dir.path().join("m.onnx");
    onnx::save_external(&m, &ext).unwrap();
    let data = dir.path().join("m.onnx.data");
    assert!(std::fs::metadata(&data).unwrap().len() > 100_000);
    assert!(std::fs::metadata(&ext).unwrap().len() < 50_000);
    let inits = |m: &onnx::ModelProto| -> Vec<(String, onnx::Tensor)> {
        m.graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .map(|t| (t.name().to_string(), onnx::tensor_from_proto(t).unwrap()))
            .collect()
    };
    assert_eq!(inits(&onnx::load(&ext).unwrap()), inits(&m));
    let prune = |src: &std::path::Path, out: &std::path::Path| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_sepprune"))
            .args(["prune", src.to_str().unwrap(), "-o", out.to_str().unwrap()])
            .args(["--ratio", "0.3"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let (slim, inline) = (dir.path().join("slim.onnx"), dir.path().join("inline.onnx"));
    prune(&ext, &slim);
    prune(&fixture, &inline);
    assert!(dir.path().join("slim.onnx.data").exists());
    assert!(!dir.path().join("inline.onnx.data").exists());
    let written = onnx::pb::ModelProto::decode(std::fs::read(&slim).unwrap().as_slice()).unwrap();
    let g = written.graph.as_ref().unwrap();
    assert!(g.initializer.iter().any(|t| t.data_location == Some(1)));
    assert!(written
        .metadata_props
        .iter()
        .all(|p| p.key.as_deref() != Some(onnx::EXTERNAL_KEY)));
    assert_eq!(
        inits(&onnx::load(&slim).unwrap()),
        inits(&onnx::load(&inline).unwrap())
    );
}

/// A model of 2 GiB or more, which one protobuf message cannot hold, is written with its
/// initializers as external data (`m.onnx` + `m.onnx.data`) and loads back whole.
#[test]
fn a_model_over_2_gib_is_written_as_external_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny();
    let n: usize = (1 << 29) + 1; // f32 values: 2 GiB + 4 bytes
    m.graph.as_mut().unwrap().initializer.push(pb::TensorProto {
        name: Some("big".into()),
        data_type: Some(1),
        dims: vec![n as i64],
        raw_data: Some(vec![0u8; 4 * n]),
        ..Default::default()
    });
    let p = dir.path().join("m.onnx");
    onnx::save(&m, &p, None, false).unwrap();
    drop(m);
    let data = dir.path().join("m.onnx.data");
    assert!(std::fs::metadata(&data).unwrap().len() >= 4 * n as u64);
    assert!(std::fs::metadata(&p).unwrap().len() < 1 << 20);
    let back = onnx::load(&p).unwrap();
    let big = back
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .find(|t| t.name() == "big")
        .unwrap();
    assert_eq!(big.raw_data.as_ref().map(Vec::len), Some(4 * n));
}
