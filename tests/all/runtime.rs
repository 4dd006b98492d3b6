//! Runtimes: declared input shapes, the bench protocol, and ORT CUDA that runs on a GPU or
//! fails loudly (never a silent fall-back to the CPU).
use crate::common;
use sepprune::bench::{bench, BenchOptions};
use sepprune::onnx::pb::tensor_shape_proto::dimension::Value;
use sepprune::onnx::ModelProto;
use sepprune::runtime::{ort, rel_err, with_input_shape, Runner, Runtime};

fn input_dims(m: &ModelProto) -> Vec<Option<Value>> {
    let g = m.graph.as_ref().unwrap();
    let t = match g.input[0].r#type.as_ref().unwrap().value.as_ref().unwrap() {
        sepprune::onnx::pb::type_proto::Value::TensorType(t) => t,
        _ => panic!("tensor input"),
    };
    t.shape
        .as_ref()
        .unwrap()
        .dim
        .iter()
        .map(|d| d.value.clone())
        .collect()
}

/// A conv model with input `[1, 1, T]` (batch declared 1, time symbolic).
fn conv_model() -> ModelProto {
    let mut g = common::G::new(&[1, 1, -1]);
    let c = g.conv("x", 1, 4, 3, 1, 1);
    let y = g.conv(&c, 4, 2, 1, 1, 0);
    g.output(&y, &[1, 2, -1])
}

#[test]
fn input_shapes_widen_a_batch_of_one_and_pin_symbolic_axes() {
    let m = conv_model();
    let wide = with_input_shape(&m, &[4, 1, 100], false);
    assert_eq!(
        input_dims(&wide),
        vec![
            Some(Value::DimValue(4)),
            Some(Value::DimValue(1)),
            Some(Value::DimParam("T".into()))
        ]
    );
    let pinned = with_input_shape(&m, &[4, 1, 100], true);
    assert_eq!(
        input_dims(&pinned),
        [4, 1, 100].map(|d| Some(Value::DimValue(d))).to_vec()
    );
    // nothing to change: the model comes back as it was
    assert_eq!(with_input_shape(&m, &[1, 1, 100], false), m);
    // the widened model runs a batch, item by item equal to batch 1
    let x1 = sepprune::verify::test_signal(100, 16000.0);
    let y1 = Runner::new(Runtime::Tract, &m, &[1, 1, 100], 1)
        .unwrap()
        .run(&x1)
        .unwrap();
    let x3: Vec<f32> = (0..3).flat_map(|_| x1.iter().copied()).collect();
    let y3 = Runner::new(
        Runtime::Tract,
        &with_input_shape(&m, &[3, 1, 100], false),
        &[3, 1, 100],
        1,
    )
    .unwrap()
    .run(&x3)
    .unwrap();
    assert_eq!(y3.len(), 3 * y1.len());
    for item in y3.chunks(y1.len()) {
        assert!(rel_err(&y1, item) < 1e-6);
    }
}

#[test]
fn bench_reports_every_length_batch_and_model_against_the_first() {
    let m = conv_model();
    let models = vec![("a".to_string(), m.clone()), ("b".to_string(), m)];
    let o = BenchOptions {
        seconds: vec![0.01, 0.02],
        batches: vec![1, 2],
        runtimes: vec![Runtime::Tract],
        warmup: 1,
        runs: 3,
        ..BenchOptions::default()
    };
    let rows = bench(&models, &o).unwrap();
    assert_eq!(rows.len(), 2 * 2 * 2);
    for r in &rows {
        assert!(r.median_ms > 0.0 && r.p10_ms <= r.median_ms && r.median_ms <= r.p90_ms);
        assert!(
            (r.macs_speedup - 1.0).abs() < 1e-12,
            "same model, same MACs"
        );
        assert!(!r.cuda_graph);
    }
    for chunk in rows.chunks(2) {
        assert_eq!(chunk[0].model, "a");
        assert_eq!(chunk[0].speedup, 1.0);
        assert_eq!(chunk[0].batch, chunk[1].batch);
    }
    assert_eq!(
        rows.iter()
            .map(|r| (r.seconds, r.batch))
            .collect::<Vec<_>>(),
        vec![
            (0.01, 1),
            (0.01, 1),
            (0.01, 2),
            (0.01, 2),
            (0.02, 1),
            (0.02, 1),
            (0.02, 2),
            (0.02, 2)
        ]
    );
    let none = BenchOptions {
        batches: vec![],
        ..o
    };
    assert!(bench(&models, &none).is_err());
}

/// With a library that has the CUDA provider and a GPU, ORT CUDA computes what ORT CPU
/// computes; with a CPU-only library it is an error that names the CUDA provider.
#[test]
fn ort_cuda_runs_on_the_gpu_or_fails_loudly() {
    assert!(
        ort::available(),
        "ONNX Runtime missing: pip install onnxruntime==1.31.1"
    );
    let m = conv_model();
    let x = sepprune::verify::test_signal(300, 16000.0);
    let has_provider = ort::library()
        .and_then(|l| l.parent())
        .is_some_and(|d| d.join("libonnxruntime_providers_cuda.so").exists());
    match Runner::new(Runtime::OrtCuda, &m, &[1, 1, 300], 1) {
        Ok(mut r) => {
            assert!(
                has_provider,
                "ORT CUDA ran without the CUDA provider library"
            );
            let want = Runner::new(Runtime::Ort, &m, &[1, 1, 300], 1)
                .unwrap()
                .run(&x)
                .unwrap();
            let got = r.run(&x).unwrap();
            assert!(rel_err(&want, &got) < 1e-5);
            r.stage(&x).unwrap();
            assert!(r.timed_run().unwrap() > 0.0);
            println!("ORT CUDA ran on the GPU");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("CUDA execution provider"), "{msg}");
            println!("ORT CUDA not run here (no CUDA provider or GPU): {msg}");
        }
    }
}

/// Written models and reports get the permissions of any new file (umask applied), not a
/// temporary file's 0600.
#[cfg(unix)]
#[test]
fn outputs_have_the_permissions_of_any_new_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"x").unwrap();
    let atomic = dir.path().join("atomic.onnx");
    sepprune::onnx::write_atomic(&atomic, b"x").unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&atomic), mode(&plain));
}

/// Report charts are PNG files written whole (no temporary file left), for short and long
/// category names, lines with missing points, and labelled points.
#[test]
fn report_plots_are_written_as_png() {
    use sepprune::report::plots::{bars, lines, points, Series};
    let dir = tempfile::tempdir().unwrap();
    let short: Vec<String> = (0..24).map(|i| i.to_string()).collect();
    let long: Vec<String> = [
        "commune",
        "farm",
        "industryhigh",
        "marketlow",
        "raze",
        "substation",
        "trafichigh",
    ]
    .map(String::from)
    .to_vec();
    let vals = |n: usize, k: f64| {
        (0..n)
            .map(|i| k * (i as f64 + 1.0).sin())
            .collect::<Vec<f64>>()
    };
    bars(
        &dir.path().join("a.png"),
        "short ids",
        "share",
        &short,
        &[
            Series {
                name: "kept".into(),
                values: vals(24, 1.0),
            },
            Series {
                name: "removed".into(),
                values: vals(24, 0.5),
            },
        ],
    )
    .unwrap();
    bars(
        &dir.path().join("b.png"),
        "long names",
        "dB",
        &long,
        &[Series {
            name: "x".into(),
            values: vals(7, 9.0),
        }],
    )
    .unwrap();
    assert!(bars(
        &dir.path().join("c.png"),
        "bad",
        "dB",
        &long,
        &[Series {
            name: "x".into(),
            values: vec![1.0]
        }]
    )
    .is_err());
    lines(
        &dir.path().join("d.png"),
        "curves",
        "step",
        "dB",
        &[
            Series {
                name: "val".into(),
                values: vec![(0.0, -3.0), (64.0, -5.0), (128.0, -6.0)],
            },
            Series {
                name: "test".into(),
                values: vec![(0.0, f64::NAN), (64.0, -4.0)],
            },
        ],
    )
    .unwrap();
    points(
        &dir.path().join("e.png"),
        "quality",
        "GMac",
        "dB",
        &[(4.9, 9.0, "original".into()), (2.5, 7.8, "slim".into())],
    )
    .unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.png", "b.png", "d.png", "e.png"]);
    for n in names {
        let bytes = std::fs::read(dir.path().join(&n)).unwrap();
        assert!(bytes.len() > 2000 && bytes.starts_with(b"\x89PNG"), "{n}");
    }
    if let Ok(keep) = std::env::var("SEPPRUNE_KEEP_PLOTS") {
        for n in ["a.png", "b.png", "d.png", "e.png"] {
            std::fs::copy(dir.path().join(n), std::path::Path::new(&keep).join(n)).unwrap();
        }
    }
}

/// `bench --batch`: a batch-1 export whose Reshape holds the literal batch of 1 runs at
/// batch 2 (the Reshape follows the input); a model that mixes batch items is refused, as a
/// latency of such a batch would not be that of independent items.
#[test]
fn bench_batches_a_batch_one_export_and_refuses_a_model_that_mixes_items() {
    let o = BenchOptions {
        seconds: vec![0.05],
        batches: vec![2],
        runtimes: vec![Runtime::Tract, Runtime::Ort],
        warmup: 1,
        runs: 2,
        ..BenchOptions::default()
    };
    let tasnet = vec![("tiny".to_string(), crate::common::tiny_tasnet())];
    let rows = bench(&tasnet, &o).unwrap();
    assert!(rows.iter().all(|r| r.batch == 2 && r.median_ms > 0.0));
    let mixer = vec![("mixer".to_string(), crate::common::batch_mixer())];
    let err = bench(&mixer, &o).unwrap_err().to_string();
    assert!(err.contains("mixes batch items"), "{err}");
}
