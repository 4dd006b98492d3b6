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
        self.shape.iter().product()
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
}

impl Ir {
    /// Infers every value's shape with each graph input's dynamic dims set: the last
    /// dynamic dim to `samples`, the others to 1.
    ///
    /// Errors: [`Error::Node`] naming the first node whose shape cannot be inferred
    /// (unknown op, inconsistent shapes, non-topological order).
    ///
    /// Exporter patterns are first rewritten into canonical forms ([`canon`]), so the IR's
    /// model is the canonical one.
    pub fn new(model: ModelProto, samples: usize) -> Result<Ir> {
        let model = canon::fold_constant_ifs(&model).unwrap_or(model);
        let model = canon::bypass_weight_identities(&model).unwrap_or(model);
        let ir = Ir::infer(model, samples)?;
        match canon::canonicalize(&ir) {
            Some((model, rewrites)) => Ok(Ir {
                rewrites,
                ..Ir::infer(model, samples)?
            }),
            None => Ok(ir),
        }
    }

    /// `model` (this IR's model, or one with the same nodes and new initializers) in the
    /// exporter's form: the canonical rewrites undone ([`canon::restore`]).
    pub fn exported(&self, model: &ModelProto) -> ModelProto {
        canon::restore(model, self)
    }

    fn infer(model: ModelProto, samples: usize) -> Result<Ir> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| Error::Other("model has no graph".into()))?;
        let mut facts: HashMap<String, Fact> = HashMap::new();
        let mut init_index = HashMap::new();
        for (i, init) in graph.initializer.iter().enumerate() {
            init_index.insert(init.name().to_string(), i);
            let dims: Vec<usize> = init.dims.iter().map(|&d| d.max(0) as usize).collect();
            let n: usize = dims.iter().product();
            let is_int = !matches!(init.data_type.unwrap_or(1), 1 | 10 | 11 | 16);
            let value = if is_int || n <= 64 {
                Some(onnx::tensor_from_proto(init)?)
            } else {
                None
            };
            facts.insert(init.name().to_string(), Fact { shape: dims, value });
        }
        for inp in &graph.input {
            if facts.contains_key(inp.name()) {
                continue; // an initializer listed as input (old exporters)
            }
            facts.insert(
                inp.name().to_string(),
                Fact::shape(input_shape(inp, samples)?),
            );
        }
        let mut producer = HashMap::new();
        let mut consumers: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
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
            let rule =
                ops::rule(node).ok_or_else(|| Error::node(node, "no shape rule for this op"))?;
            let outs = rule.infer(node, &ins).map_err(|e| match e {
                e @ Error::Node { .. } => e,
                other => Error::node(node, other.to_string()),
            })?;
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
                return Err(Error::Other(format!(
                    "graph output '{}' is never produced",
                    out.name()
                )));
            }
        }
        Ok(Ir {
            model,
            samples,
            facts,
            producer,
            consumers,
            init_index,
            rewrites: vec![],
        })
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
    /// Decoded initializer (float or int).
    pub fn initializer(&self, name: &str) -> Result<Tensor> {
        let i = *self.init_index.get(name).ok_or_else(|| Error::Tensor {
            name: name.into(),
            msg: "not an initializer".into(),
        })?;
        onnx::tensor_from_proto(&self.graph().initializer[i])
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

fn input_shape(inp: &onnx::ValueInfoProto, samples: usize) -> Result<Vec<usize>> {
    use onnx::pb::{tensor_shape_proto::dimension::Value, type_proto::Value as TV};
    let dims = match inp.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TV::TensorType(tt)) => tt.shape.as_ref().map(|s| s.dim.clone()).unwrap_or_default(),
        _ => {
            return Err(Error::Other(format!(
                "graph input '{}' is not a tensor",
                inp.name()
            )))
        }
    };
    let last_dynamic = dims
        .iter()
        .rposition(|d| !matches!(d.value, Some(Value::DimValue(v)) if v > 0));
    if last_dynamic.is_none() {
        // a fixed-length export: its length is the last non-unit dim
        let fixed = dims.iter().rev().find_map(|d| match d.value {
            Some(Value::DimValue(v)) if v > 1 => Some(v as usize),
            _ => None,
        });
        if let Some(n) = fixed.filter(|&n| n != samples) {
            return Err(Error::Other(format!(
                "graph input '{}' has a fixed length of {n} samples (a static shape), not \
                 {samples}",
                inp.name()
            )));
        }
    }
    Ok(dims
        .iter()
        .enumerate()
        .map(|(i, d)| match d.value {
            Some(Value::DimValue(v)) if v > 0 => v as usize,
            _ if Some(i) == last_dynamic => samples,
            _ => 1,
        })
        .collect())
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
