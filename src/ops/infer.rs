//! Shape inference over the op rules: [`Ir::new`] builds an [`Ir`] from a model, running
//! each node's rule ([`super::rule`]) and, for ops no rule covers, tract's analyser
//! ([`crate::ir::oracle`]). It lives with the ops, not in `ir/`, because the IR's types know
//! nothing of op rules (docs/design.md section 4: dependencies point from `ops` to `ir`).
use super::rule;
use crate::error::{Error, Result};
use crate::ir::{canon, input_shape, meta, oracle, validate, Fact, Ir, FRAME_RATE_KEY, INPUT_KEY};
use crate::onnx::{self, ModelProto, Tensor};
use std::collections::HashMap;

/// Where [`Ir::infer_step`] stopped.
enum Step {
    Done(Box<Ir>),
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
        let fingerprint = crate::ir::fingerprint(&model);
        let model = canon::fold_constant_ifs(&model).unwrap_or(model);
        let model = canon::bypass_weight_identities(&model).unwrap_or(model);
        let model = canon::unshare_fills(&model).unwrap_or(model);
        let model = canon::unshare_filled_initializers(&model).unwrap_or(model);
        let ir = Ir::fold_ifs_and_infer(model, samples)?;
        let ir = match canon::select_from_concats(&ir) {
            Some(model) => Ir::fold_ifs_and_infer(model, samples)?,
            None => ir,
        };
        match canon::canonicalize(&ir) {
            Some((model, rewrites)) => Ok(Ir {
                rewrites,
                fingerprint,
                ..Ir::infer(model, samples, ir.if_facts.clone())?
            }),
            None => Ok(Ir { fingerprint, ..ir }),
        }
    }

    /// The IR of a model already in canonical form (a slimmed [`Ir::model`]), inferred
    /// without canonicalising it again: a pattern that appears only after slicing (a
    /// GroupNorm left with one channel) stays as it is.
    pub fn canonical(model: ModelProto, samples: usize) -> Result<Ir> {
        let fingerprint = crate::ir::fingerprint(&model);
        Ok(Ir {
            fingerprint,
            ..Ir::fold_ifs_and_infer(model, samples)?
        })
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
                Step::Done(ir) => return Ok(*ir),
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

    /// [`Ir::infer_step`] for a model whose `If`s are resolved (`given`: the output facts of
    /// the length-dependent ones).
    fn infer(model: ModelProto, samples: usize, given: HashMap<String, Vec<Fact>>) -> Result<Ir> {
        match Ir::infer_step(model, samples, &given)? {
            Step::Done(ir) => Ok(*ir),
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
            let inferred = match rule(node) {
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
        Ok(Step::Done(Box::new(Ir {
            model,
            samples,
            facts,
            producer,
            consumers,
            init_index,
            rewrites: vec![],
            opaque,
            if_facts: given.clone(),
            fingerprint: String::new(),
        })))
    }
}
