//! The IR: an ONNX model with every value's static shape (for a given input length) and the
//! values of constant subgraphs folded.
//!
//! The `ModelProto` stays the source of truth for structure; [`Ir`] adds per-value
//! [`Fact`]s, producer/consumer indices and the decoded initializers. Shape subgraphs
//! (Shape/Gather/Slice/Concat/Unsqueeze/...) that depend only on static shapes become
//! constants here, so later passes see e.g. a `Reshape` target as a plain value.
//!
//! The IR is built by `Ir::new` in `src/ops/infer.rs`: its shapes come from the op rules,
//! which this module does not know (dependencies point from `ops` to `ir`).
use crate::error::{Error, Result};
use crate::onnx::{self, ModelProto, NodeProto, Tensor};
use std::collections::HashMap;

pub mod canon;
pub mod oracle;
pub mod validate;

/// What is statically known about one value.
#[derive(Clone, Debug, PartialEq)]
pub struct Fact {
    /// Static shape for the chosen input length.
    pub shape: Vec<usize>,
    /// The value, when it is a constant (initializer, `Constant`, or folded shape arithmetic).
    pub value: Option<Tensor>,
}

impl Fact {
    pub fn shape(shape: Vec<usize>) -> Fact {
        Fact { shape, value: None }
    }
    pub fn konst(t: Tensor) -> Fact {
        Fact {
            shape: t.shape(),
            value: Some(t),
        }
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }
    /// The value as a boolean, when it is a one-element constant.
    pub fn as_bool(&self) -> Option<bool> {
        let v = self.value.as_ref()?.to_i64_vec();
        (v.len() == 1).then(|| v[0] != 0)
    }
}

/// Largest tensor (elements) that constant folding materialises.
pub const FOLD_LIMIT: usize = 4096;

/// A model with static shapes.
pub struct Ir {
    pub model: ModelProto,
    /// Input length in samples used for the last (dynamic) input dim.
    pub samples: usize,
    pub facts: HashMap<String, Fact>,
    /// Value name -> index of the node that produces it.
    pub producer: HashMap<String, usize>,
    /// Value name -> (node index, input position) of each consumer.
    pub consumers: HashMap<String, Vec<(usize, usize)>>,
    /// Initializer name -> index in `graph.initializer`.
    pub init_index: HashMap<String, usize>,
    /// The canonical rewrites applied to the exported model ([`canon::restore`] undoes
    /// them on a model to write).
    pub rewrites: Vec<canon::Applied>,
    /// Nodes whose output shapes came from tract's analyser ([`oracle`]), with why: no
    /// rule for the op, or its rule could not infer them (a data-dependent shape). Their
    /// axes are frozen by the group analysis.
    pub opaque: Vec<(usize, String)>,
    /// Output facts of the `If`s left in the model (their branch depends on the length),
    /// by node name.
    pub if_facts: HashMap<String, Vec<Fact>>,
    /// The [`fingerprint`] of the model as given to `Ir::new`, before any canonical
    /// rewrite: masks files name the model by it, so a rewrite added later does not
    /// disown them.
    pub fingerprint: String,
}

/// A fingerprint of a model's structure: every node's op and value names, every
/// initializer's name and dims (FNV-1a, 64 bits). Weights' values do not enter it: a
/// fine-tuned copy of a model has the same one.
pub fn fingerprint(model: &ModelProto) -> String {
    let Some(g) = model.graph.as_ref() else {
        return String::new();
    };
    fingerprint_of(
        g.node.iter(),
        g.initializer.iter().map(|t| (t.name(), t.dims.as_slice())),
    )
}

/// [`fingerprint`] of nodes and `(name, dims)` initializers.
pub fn fingerprint_of<'a>(
    nodes: impl Iterator<Item = &'a NodeProto>,
    inits: impl Iterator<Item = (&'a str, &'a [i64])>,
) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |s: &str| {
        for b in s.bytes().chain([0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for n in nodes {
        eat(n.op_type());
        n.input.iter().chain(&n.output).for_each(|v| eat(v));
    }
    for (name, dims) in inits {
        eat(name);
        eat(&format!("{dims:?}"));
    }
    format!("fnv1a64:{h:016x}")
}

impl Ir {
    pub fn opaque_reason(&self, ni: usize) -> Option<&str> {
        self.opaque
            .iter()
            .find(|(i, _)| *i == ni)
            .map(|(_, w)| w.as_str())
    }

    /// `model` (this IR's model, or one with the same nodes and new initializers) in the
    /// exporter's form: the canonical rewrites undone ([`canon::restore`]).
    pub fn exported(&self, model: &ModelProto) -> ModelProto {
        canon::restore(model, self)
    }

    pub fn graph(&self) -> &onnx::GraphProto {
        self.model.graph.as_ref().expect("checked in Ir::new")
    }
    pub fn nodes(&self) -> &[NodeProto] {
        &self.graph().node
    }
    /// The default-domain opset the model imports (1 when it names none).
    pub fn opset(&self) -> i64 {
        onnx::opset(&self.model)
    }
    pub fn fact(&self, name: &str) -> Option<&Fact> {
        self.facts.get(name)
    }
    pub fn is_initializer(&self, name: &str) -> bool {
        self.init_index.contains_key(name)
    }
    /// Decoded initializer (float or int), or the value of a `Constant` node's output
    /// (exporters write a norm's unit scale that way).
    pub fn initializer(&self, name: &str) -> Result<Tensor> {
        if let Some(t) = self
            .constant_node(name)
            .and_then(|n| onnx::attr_t(n, "value"))
        {
            return onnx::tensor_from_proto(t);
        }
        let i = *self.init_index.get(name).ok_or_else(|| Error::Tensor {
            name: name.into(),
            msg: "not an initializer".into(),
        })?;
        onnx::tensor_from_proto(&self.graph().initializer[i])
    }
    /// The `Constant` node (with a `value` tensor) that produces `name`, if any.
    pub fn constant_node(&self, name: &str) -> Option<&NodeProto> {
        let n = &self.nodes()[*self.producer.get(name)?];
        (n.op_type() == "Constant" && onnx::attr_t(n, "value").is_some()).then_some(n)
    }
    /// An initializer, or a `Constant` node's tensor: a constant that slicing can cut.
    pub fn is_stored_constant(&self, name: &str) -> bool {
        self.is_initializer(name) || self.constant_node(name).is_some()
    }
    /// True when the value is known at compile time (initializer, Constant or folded).
    pub fn is_const(&self, name: &str) -> bool {
        self.is_initializer(name)
            || self
                .facts
                .get(name)
                .map(|f| f.value.is_some())
                .unwrap_or(false)
    }
    pub fn graph_inputs(&self) -> Vec<String> {
        self.graph()
            .input
            .iter()
            .map(|i| i.name().to_string())
            .filter(|n| !self.is_initializer(n))
            .collect()
    }
    pub fn graph_outputs(&self) -> Vec<String> {
        self.graph()
            .output
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    }
    /// A node whose outputs are all constants (a folded shape subgraph or a `Constant`).
    pub fn is_folded(&self, node: &NodeProto) -> bool {
        node.output.iter().all(|o| {
            o.is_empty()
                || self
                    .facts
                    .get(o)
                    .map(|f| f.value.is_some())
                    .unwrap_or(false)
        })
    }
}

pub use onnx::{FRAME_RATE_KEY, INPUT_KEY};

/// `model` with the user's declarations of its inputs (`NAME=d0,d1,...`, each `d` an
/// integer or `T`, the time axis) and the time axis' rate in frames per second: they
/// replace the defaults of [`input_shape`] wherever the model (or a slim copy) is analysed.
///
/// Errors: [`Error::Refused`] for a malformed declaration, a name that is no graph input,
/// a rank that differs from the input's, or a fixed dim the model declares otherwise.
pub fn declare_inputs(
    model: &mut ModelProto,
    inputs: &[String],
    frame_rate: Option<f64>,
) -> Result<()> {
    use onnx::pb::{tensor_shape_proto::dimension::Value, type_proto::Value as TV};
    let bad = |m: String| Error::Refused(m);
    for spec in inputs {
        let (name, dims) = spec.split_once('=').ok_or_else(|| {
            bad(format!(
                "--input '{spec}': expected NAME=d0,d1,... (T: time)"
            ))
        })?;
        let parsed: Vec<Option<usize>> = dims
            .split(',')
            .map(|d| match d.trim() {
                "T" => Ok(None),
                n => n
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .map(Some)
                    .ok_or_else(|| bad(format!("--input '{spec}': '{n}' is neither a size nor T"))),
            })
            .collect::<Result<_>>()?;
        let graph = model.graph.as_ref().ok_or_else(|| bad("no graph".into()))?;
        let inp = graph
            .input
            .iter()
            .find(|i| i.name() == name)
            .ok_or_else(|| bad(format!("--input '{spec}': the model has no input '{name}'")))?;
        let declared: Vec<Option<i64>> = match inp.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(TV::TensorType(tt)) => tt
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match d.value {
                            Some(Value::DimValue(v)) if v > 0 => Some(v),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            _ => vec![],
        };
        if !declared.is_empty() && declared.len() != parsed.len() {
            return Err(bad(format!(
                "--input '{spec}': '{name}' has rank {}, not {}",
                declared.len(),
                parsed.len()
            )));
        }
        for (a, (d, p)) in declared.iter().zip(&parsed).enumerate() {
            if let (Some(d), Some(p)) = (d, p) {
                if *d as usize != *p {
                    return Err(bad(format!(
                        "--input '{spec}': axis {a} of '{name}' is fixed at {d} in the model"
                    )));
                }
            }
        }
        set_meta(model, &format!("{INPUT_KEY}{name}"), dims);
    }
    if let Some(r) = frame_rate {
        if !(r > 0.0 && r.is_finite()) {
            return Err(bad(format!("--frame-rate {r}: must be positive")));
        }
        set_meta(model, FRAME_RATE_KEY, &r.to_string());
    }
    Ok(())
}

fn set_meta(model: &mut ModelProto, key: &str, value: &str) {
    model
        .metadata_props
        .retain(|m| m.key.as_deref() != Some(key));
    model.metadata_props.push(onnx::pb::StringStringEntryProto {
        key: Some(key.to_string()),
        value: Some(value.to_string()),
    });
}

pub(crate) fn meta<'a>(model: &'a ModelProto, key: &str) -> Option<&'a str> {
    model
        .metadata_props
        .iter()
        .find(|m| m.key.as_deref() == Some(key))
        .and_then(|m| m.value.as_deref())
}

/// Frames per second assumed for a feature input (log-mel and filterbank front ends use a
/// 10 ms hop).
pub const FEATURE_RATE: usize = 100;

/// Smallest fixed feature axis for which an input of rank 3 or more is taken as features,
/// not as multi-channel audio.
const MIN_FEATURES: usize = 16;

/// An input's shape for `samples` of 16 kHz audio, the index of its time axis, and whether
/// it is float. The time axis is the last dynamic dim (other dynamic dims, a batch, are 1).
/// A waveform (`[T]`, `[1, T]`, `[1, C, T]` with few channels) gets `samples`; features
/// (rank 3 or more with a fixed axis of at least 16: `[1, T, 80]` log-mel, `[1, 40, T]`,
/// DeepFilterNet's `[1, 2, T, 96]` spectrum) get `samples * 100 / 16000` frames. A fixed-length export keeps its declared shape (its time
/// axis: `None`).
pub(crate) fn input_shape(
    inp: &onnx::ValueInfoProto,
    samples: usize,
    declared: Option<&str>,
    frame_rate: Option<f64>,
) -> Result<(Vec<usize>, Option<usize>, bool)> {
    use onnx::pb::{tensor_shape_proto::dimension::Value, type_proto::Value as TV};
    let (dims, elem) = match inp.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TV::TensorType(tt)) => (
            tt.shape.as_ref().map(|s| s.dim.clone()).unwrap_or_default(),
            tt.elem_type.unwrap_or(1),
        ),
        _ => {
            return Err(Error::Graph(format!(
                "graph input '{}' is not a tensor",
                inp.name()
            )))
        }
    };
    let fixed = |d: &onnx::pb::tensor_shape_proto::Dimension| match d.value {
        Some(Value::DimValue(v)) if v > 0 => Some(v as usize),
        _ => None,
    };
    // a declaration (`--input x=1,T,80`) replaces the dims; its T is the time axis
    if let Some(decl) = declared {
        let parts: Vec<&str> = decl.split(',').map(str::trim).collect();
        let time = parts.iter().position(|p| *p == "T");
        let t = match frame_rate {
            Some(r) => ((samples as f64 * r / 16000.0).round() as usize).max(1),
            None => samples,
        };
        let shape = parts
            .iter()
            .map(|p| p.parse::<usize>().unwrap_or(t))
            .collect();
        return Ok((shape, time, matches!(elem, 1 | 10 | 11 | 16)));
    }
    let time = dims.iter().rposition(|d| fixed(d).is_none());
    let features = dims.len() >= 3
        && dims
            .iter()
            .any(|d| fixed(d).is_some_and(|v| v >= MIN_FEATURES));
    let t = match (frame_rate, features) {
        (Some(r), _) => ((samples as f64 * r / 16000.0).round() as usize).max(1),
        (None, true) => (samples * FEATURE_RATE / 16000).max(1),
        (None, false) => samples,
    };
    let shape = dims
        .iter()
        .enumerate()
        .map(|(i, d)| match fixed(d) {
            Some(v) => v,
            None if Some(i) == time => t,
            None => 1,
        })
        .collect();
    Ok((shape, time, matches!(elem, 1 | 10 | 11 | 16)))
}

impl std::fmt::Debug for Ir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ir")
            .field("samples", &self.samples)
            .field("nodes", &self.nodes().len())
            .field("initializers", &self.init_index.len())
            .finish()
    }
}
