//! The IR: an ONNX model with every value's static shape (for a given input length) and the
//! values of constant subgraphs folded.
//!
//! The `ModelProto` stays the source of truth for structure; [`Ir`] adds per-value
//! [`Fact`]s, producer/consumer indices and the decoded initializers. Shape subgraphs
//! (Shape/Gather/Slice/Concat/Unsqueeze/...) that depend only on static shapes become
//! constants here, so later passes see e.g. a `Reshape` target as a plain value.
use crate::error::{Error, Result};
use crate::onnx::{self, ModelProto, NodeProto, Tensor};
use crate::ops;
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
}

/// Where [`Ir::infer_step`] stopped.
enum Step {
    Done(Ir),
    /// At node `node`, an `If` whose condition `cond` is the constant `take`; `facts`: what
    /// was inferred before it.
    If {
        node: usize,
        cond: String,
        take: bool,
        facts: HashMap<String, Fact>,
    },
}

impl Ir {
    /// Infers every value's shape with each graph input's dynamic dims set: the last
    /// dynamic dim to `samples`, the others to 1.
    ///
    /// Errors: [`Error::Refused`] for a model it declines ([`validate::validate`]: no or
    /// an unsupported opset, a quantized graph, NaN weights); [`Error::Node`] naming the
    /// first node whose shape cannot be inferred (an op neither the rules nor tract know,
    /// inconsistent shapes, non-topological order).
    ///
    /// Exporter patterns are first rewritten into canonical forms ([`canon`]), so the IR's
    /// model is the canonical one.
    pub fn new(model: ModelProto, samples: usize) -> Result<Ir> {
        validate::validate(&model)?;
        let model = canon::fold_constant_ifs(&model).unwrap_or(model);
        let model = canon::bypass_weight_identities(&model).unwrap_or(model);
        let model = canon::unshare_fills(&model).unwrap_or(model);
        let ir = Ir::fold_ifs_and_infer(model, samples)?;
        let ir = match canon::select_from_concats(&ir) {
            Some(model) => Ir::fold_ifs_and_infer(model, samples)?,
            None => ir,
        };
        match canon::canonicalize(&ir) {
            Some((model, rewrites)) => Ok(Ir {
                rewrites,
                ..Ir::infer(model, samples, ir.if_facts.clone())?
            }),
            None => Ok(ir),
        }
    }

    /// The IR of a model already in canonical form (a slimmed [`Ir::model`]), inferred
    /// without canonicalising it again: a pattern that appears only after slicing (a
    /// GroupNorm left with one channel) stays as it is.
    pub fn canonical(model: ModelProto, samples: usize) -> Result<Ir> {
        Ir::fold_ifs_and_infer(model, samples)
    }

    /// Shape inference that resolves the `If`s whose condition folds from shapes (the
    /// exporters' rank and length guards, in topological order). An If that takes the same
    /// branch at another input length (`samples * 3 / 2 + 1`) is inlined
    /// ([`canon::fold_ifs`]): the condition does not depend on the input. One whose branch
    /// depends on the length (a padding `T % k`) stays, opaque, with the output shapes of
    /// the branch it takes at `samples`.
    fn fold_ifs_and_infer(mut model: ModelProto, samples: usize) -> Result<Ir> {
        let mut given: HashMap<String, Vec<Fact>> = HashMap::new();
        loop {
            let (ni, cond, take) = match Ir::infer_step(model.clone(), samples, &given)? {
                Step::Done(ir) => return Ok(ir),
                Step::If {
                    node, cond, take, ..
                } => (node, cond, take),
            };
            let only = |c: &str| (c == cond).then_some(take);
            let inlined = canon::fold_ifs(&model, &only);
            let at_other = match Ir::infer_step(model.clone(), samples * 3 / 2 + 1, &given) {
                Ok(Step::Done(o)) => o.facts.get(&cond).and_then(Fact::as_bool),
                Ok(Step::If { facts, .. }) => facts.get(&cond).and_then(Fact::as_bool),
                Err(_) => None,
            };
            let node = model
                .graph
                .as_ref()
                .map(|g| g.node[ni].clone())
                .unwrap_or_default();
            match inlined {
                Some(m) if at_other == Some(take) => model = m,
                Some(m) => {
                    // the branch taken here, inferred in a copy, gives the If's shapes
                    let facts = match Ir::infer_step(m, samples, &given)? {
                        Step::Done(ir) => ir.facts,
                        Step::If { facts, .. } => facts,
                    };
                    let outs: Option<Vec<Fact>> =
                        node.output.iter().map(|o| facts.get(o).cloned()).collect();
                    let outs = outs.ok_or_else(|| {
                        Error::node(&node, "the branch it takes does not give its outputs")
                    })?;
                    given.insert(node.name().to_string(), outs);
                }
                None => {
                    return Err(Error::node(
                        &node,
                        "its branch cannot be inlined (names collide with the graph's)",
                    ))
                }
            }
        }
    }

    /// The reason node `ni` is opaque (its shapes came from tract), if it is.
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

    /// [`Ir::infer_step`] for a model whose `If`s are resolved (`given`: the output facts of
    /// the length-dependent ones).
    fn infer(model: ModelProto, samples: usize, given: HashMap<String, Vec<Fact>>) -> Result<Ir> {
        match Ir::infer_step(model, samples, &given)? {
            Step::Done(ir) => Ok(ir),
            Step::If { node, .. } => Err(Error::Graph(format!(
                "If node {node} has a constant condition left unresolved"
            ))),
        }
    }

    /// Infers facts node by node, stopping at the first `If` whose condition is a known
    /// constant and whose outputs `given` (If node name -> output facts) does not hold.
    fn infer_step(
        model: ModelProto,
        samples: usize,
        given: &HashMap<String, Vec<Fact>>,
    ) -> Result<Step> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| Error::Graph("model has no graph".into()))?;
        let mut facts: HashMap<String, Fact> = HashMap::new();
        let mut init_index = HashMap::new();
        for (i, init) in graph.initializer.iter().enumerate() {
            init_index.insert(init.name().to_string(), i);
            let dims: Vec<usize> = init.dims.iter().map(|&d| d.max(0) as usize).collect();
            let n: usize = dims.iter().fold(1usize, |a, &d| a.saturating_mul(d));
            let is_int = !matches!(init.data_type.unwrap_or(1), 1 | 10 | 11 | 16);
            let value = if is_int || n <= 64 {
                Some(onnx::tensor_from_proto(init)?)
            } else {
                None
            };
            facts.insert(init.name().to_string(), Fact { shape: dims, value });
        }
        let mut extent = None; // the time extent of the first float input
        let mut int_inputs = vec![];
        for inp in &graph.input {
            if facts.contains_key(inp.name()) {
                continue; // an initializer listed as input (old exporters)
            }
            let declared = meta(&model, &format!("{INPUT_KEY}{}", inp.name()));
            let rate = meta(&model, FRAME_RATE_KEY).and_then(|r| r.parse::<f64>().ok());
            let (shape, time, float) = input_shape(inp, samples, declared, rate)?;
            if float && extent.is_none() {
                extent = time.map(|t| shape[t]);
            }
            if !float {
                int_inputs.push(inp.name().to_string());
            }
            facts.insert(inp.name().to_string(), Fact::shape(shape));
        }
        // integer inputs (sequence lengths) hold the time extent of the signal
        for name in int_inputs {
            let f = facts.get_mut(&name).expect("inserted above");
            if let (Some(t), true) = (extent, f.numel() == 1) {
                let v = ndarray::ArrayD::from_elem(f.shape.clone(), t as i64);
                f.value = Some(Tensor::I64(v));
            }
        }
        let mut producer = HashMap::new();
        let mut consumers: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        let mut opaque = vec![];
        let mut oracle: Option<std::result::Result<HashMap<String, Fact>, String>> = None;
        for (ni, node) in graph.node.iter().enumerate() {
            let mut ins: Vec<Option<&Fact>> = Vec::with_capacity(node.input.len());
            for name in &node.input {
                if name.is_empty() {
                    ins.push(None);
                    continue;
                }
                match facts.get(name) {
                    Some(f) => ins.push(Some(f)),
                    None => {
                        return Err(Error::node(node, format!("input '{name}' is not produced before this node (graph not in topological order, or a missing value)")))
                    }
                }
            }
            let is_if = node.op_type() == "If" && node.domain().is_empty();
            if let (true, Some(outs)) = (is_if, given.get(node.name())) {
                for (ii, name) in node.input.iter().enumerate() {
                    consumers.entry(name.clone()).or_default().push((ni, ii));
                }
                for (name, fact) in node.output.iter().zip(outs) {
                    producer.insert(name.clone(), ni);
                    facts.insert(name.clone(), fact.clone());
                }
                opaque.push((ni, "an If whose branch depends on the input length".into()));
                continue;
            }
            if let (true, Some(take)) = (
                is_if,
                ins.first().copied().flatten().and_then(Fact::as_bool),
            ) {
                return Ok(Step::If {
                    node: ni,
                    cond: node.input[0].clone(),
                    take,
                    facts,
                });
            }
            let inferred = match ops::rule(node) {
                Some(rule) => match rule.infer(node, &ins) {
                    Ok(outs) => Ok(outs),
                    Err(Error::NotConstant { msg, .. } | Error::Uncovered { msg, .. }) => Err(msg),
                    // a rule that finds the shapes inconsistent is right: the model does not
                    // run at this length (an export that baked its traced length in)
                    Err(e @ Error::Node { .. }) => return Err(e),
                    Err(other) => return Err(Error::node(node, other.to_string())),
                },
                None => Err("no shape rule for this op".to_string()),
            };
            let outs = match inferred {
                Ok(outs) => outs,
                Err(why) => {
                    // an op the rules do not cover: shapes from tract, the node opaque
                    let known = oracle.get_or_insert_with(|| {
                        let inputs: Vec<(String, Fact)> = graph
                            .input
                            .iter()
                            .filter(|i| !init_index.contains_key(i.name()))
                            .map(|i| (i.name().to_string(), facts[i.name()].clone()))
                            .collect();
                        oracle::tract_facts(&model, &inputs)
                    });
                    let outs: Option<Vec<Fact>> = match known {
                        Ok(k) => node
                            .output
                            .iter()
                            .map(|o| {
                                if o.is_empty() {
                                    Some(Fact::shape(vec![]))
                                } else {
                                    k.get(o).cloned()
                                }
                            })
                            .collect(),
                        Err(_) => None,
                    };
                    match (outs, known) {
                        (Some(outs), _) => {
                            opaque.push((ni, why));
                            outs
                        }
                        (None, Err(t)) => {
                            return Err(Error::node(
                                node,
                                format!("{why}; tract's analyser could not infer it either: {t}"),
                            ))
                        }
                        (None, Ok(_)) => {
                            return Err(Error::node(
                                node,
                                format!(
                                    "{why}; tract's analyser has no static shape for its outputs"
                                ),
                            ))
                        }
                    }
                }
            };
            for (ii, name) in node.input.iter().enumerate() {
                if !name.is_empty() {
                    consumers.entry(name.clone()).or_default().push((ni, ii));
                }
            }
            for (name, fact) in node.output.iter().zip(outs) {
                if name.is_empty() {
                    continue;
                }
                producer.insert(name.clone(), ni);
                facts.insert(name.clone(), fact);
            }
        }
        for out in &graph.output {
            if !facts.contains_key(out.name()) {
                return Err(Error::Graph(format!(
                    "graph output '{}' is never produced",
                    out.name()
                )));
            }
        }
        Ok(Step::Done(Ir {
            model,
            samples,
            facts,
            producer,
            consumers,
            init_index,
            rewrites: vec![],
            opaque,
            if_facts: given.clone(),
        }))
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

fn meta<'a>(model: &'a ModelProto, key: &str) -> Option<&'a str> {
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
fn input_shape(
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
