//! The IR lowered to Candle: a differentiable forward pass of an ONNX graph at one input
//! length, op by op through [`crate::ops::OpRule::lower`].
//!
//! Constants (initializers, folded values) become Candle tensors once; callers replace any
//! of them per call (`overrides`: gate values from a mask learner, `Var` weights when
//! fine-tuning), so one lowered graph serves every step.
use super::fuse::{self, Fusion};
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::onnx::Tensor;
use crate::ops;
use candle_core::{DType, Device, Tensor as CTensor};
use std::collections::HashMap;

/// A lowered graph with its constants on one device, in one float dtype.
pub struct CandleGraph {
    ir: Ir,
    dtype: DType,
    device: Device,
    consts: HashMap<String, CTensor>,
    /// Nodes to run: those downstream of the graph input or of a live constant.
    run: Vec<bool>,
    /// Fused chains ([`fuse`]) by their last node; their other nodes do not run.
    fused: HashMap<usize, Fusion>,
    in_fusion: Vec<bool>,
}

/// An IR constant as a Candle tensor: floats in `dtype`, integers as i64.
pub fn to_candle(t: &Tensor, device: &Device, dtype: DType) -> candle_core::Result<CTensor> {
    match t {
        Tensor::F32(a) => {
            let v: Vec<f32> = a.as_standard_layout().iter().copied().collect();
            CTensor::from_vec(v, a.shape(), device)?.to_dtype(dtype)
        }
        Tensor::I64(a) => {
            let v: Vec<i64> = a.as_standard_layout().iter().copied().collect();
            CTensor::from_vec(v, a.shape(), device)
        }
    }
}

impl CandleGraph {
    /// The values node `i` reads when it runs: a fused chain's input at its last node,
    /// nothing at its other nodes.
    fn reads(&self, i: usize) -> &[String] {
        match self.fused.get(&i) {
            Some(f) => &f.inputs,
            None if self.in_fusion[i] => &[],
            None => &self.ir.nodes()[i].input,
        }
    }

    /// Lowers `ir` (every value's shape fixed by its input length). `live`: constants that
    /// callers will override (gates, weights): nodes computed from them run instead of being
    /// folded, so that overrides and gradients flow through them.
    ///
    /// Errors: an initializer that cannot be decoded. Ops without a lowering fail at the
    /// first [`CandleGraph::forward`], naming the node.
    pub fn new(ir: Ir, device: &Device, dtype: DType, live: &[String]) -> Result<CandleGraph> {
        // values that change between calls: the graph input, live constants, and what is
        // computed from them (a folded node reading only the input's shape stays folded)
        let mut dynamic: std::collections::HashSet<String> = live.iter().cloned().collect();
        let mut run = vec![false; ir.nodes().len()];
        for (i, node) in ir.nodes().iter().enumerate() {
            // Shape and Size read only static shapes
            let reads_live = node.input.iter().any(|n| dynamic.contains(n))
                && !matches!(node.op_type(), "Shape" | "Size");
            run[i] = reads_live || !ir.is_folded(node);
            if reads_live {
                dynamic.extend(node.output.iter().filter(|o| !o.is_empty()).cloned());
            }
        }
        let mut consts = HashMap::new();
        for (i, node) in ir.nodes().iter().enumerate() {
            if !run[i] {
                continue;
            }
            for name in node.input.iter().filter(|n| !n.is_empty()) {
                let computed = ir.producer.get(name).is_some_and(|&p| run[p]);
                if consts.contains_key(name) || computed || ir.graph_inputs().contains(name) {
                    continue;
                }
                let value = if ir.is_initializer(name) {
                    Some(ir.initializer(name)?)
                } else {
                    ir.fact(name).and_then(|f| f.value.clone())
                };
                if let Some(v) = value {
                    let t = to_candle(&v, device, dtype).map_err(|e| Error::Tensor {
                        name: name.clone(),
                        msg: e.to_string(),
                    })?;
                    consts.insert(name.clone(), t);
                }
            }
        }
        // where the fused kernels apply (the CPU; CUDA in f32 for long enough runs)
        let mut fused = HashMap::new();
        let mut in_fusion = vec![false; ir.nodes().len()];
        let fusable = |f: &Fusion| ops::kernels::applies(device, dtype, f.run_len(&ir));
        for f in fuse::find(&ir).into_iter().filter(fusable) {
            if f.nodes.iter().all(|&i| run[i] && !in_fusion[i]) {
                for &i in &f.nodes {
                    in_fusion[i] = true;
                }
                fused.insert(*f.nodes.last().expect("a chain has nodes"), f);
            }
        }
        Ok(CandleGraph {
            ir,
            dtype,
            device: device.clone(),
            consts,
            run,
            fused,
            in_fusion,
        })
    }

    pub fn ir(&self) -> &Ir {
        &self.ir
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The first graph input's inferred shape (e.g. `[1, 1, T]`).
    pub fn input_shape(&self) -> Vec<usize> {
        self.ir
            .graph_inputs()
            .first()
            .and_then(|i| self.ir.fact(i))
            .map(|f| f.shape.clone())
            .unwrap_or_default()
    }

    /// A flat signal as the graph input, in the input's inferred shape (e.g. `[1, 1, T]`).
    ///
    /// Errors: a length that does not fit the shape.
    pub fn input(&self, x: &[f32]) -> Result<CTensor> {
        let shape = self
            .ir
            .graph_inputs()
            .first()
            .and_then(|i| self.ir.fact(i))
            .map(|f| f.shape.clone())
            .unwrap_or_default();
        CTensor::from_vec(x.to_vec(), shape.as_slice(), &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(|e| Error::Graph(format!("input of {} samples: {e}", x.len())))
    }

    /// Gate values for binary `masks`: per masked group, a `[C]` vector with 1 on kept
    /// channels, named as its gate ([`crate::gates::gate_name`]), for `overrides`.
    ///
    /// Errors: a tensor that cannot be made on the graph's device.
    pub fn mask_gates(&self, masks: &crate::analysis::Masks) -> Result<HashMap<String, CTensor>> {
        let mut gates = HashMap::new();
        for (&id, m) in &masks.groups {
            let mut g = vec![0f32; m.size];
            for &k in &m.keep {
                g[k] = 1.0;
            }
            let t = CTensor::new(g, &self.device)
                .and_then(|t| t.to_dtype(self.dtype))
                .map_err(Error::candle("gates"))?;
            gates.insert(crate::gates::gate_name(id), t);
        }
        Ok(gates)
    }

    /// The constant `name` (an initializer or folded value), as lowered.
    pub fn constant(&self, name: &str) -> Option<&CTensor> {
        self.consts.get(name)
    }

    /// Runs the graph on `x` (the first graph input, in its inferred shape) and returns the
    /// first graph output. `overrides` replace constants by name.
    ///
    /// Errors: a wrong input shape, or a node whose op has no lowering (named).
    pub fn forward(&self, x: &CTensor, overrides: &HashMap<String, CTensor>) -> Result<CTensor> {
        let mut run = self.start(x)?;
        run.run_to(self.ir.nodes().len(), overrides)?;
        run.output()
    }

    /// [`CandleGraph::forward`] that also returns the computed values named in `keep` (a
    /// value inside a fused chain is never computed, so never returned).
    ///
    /// Errors: as [`CandleGraph::forward`].
    pub fn forward_keeping(
        &self,
        x: &CTensor,
        overrides: &HashMap<String, CTensor>,
        keep: &std::collections::HashSet<String>,
    ) -> Result<(CTensor, HashMap<String, CTensor>)> {
        let mut run = self.start(x)?;
        let mut kept = HashMap::new();
        for (i, node) in self.ir.nodes().iter().enumerate() {
            run.run_to(i + 1, overrides)?;
            // a node's outputs live at least until their first reader has run
            for o in node.output.iter().filter(|o| keep.contains(*o)) {
                if let Some(v) = run.value(o) {
                    kept.insert(o.clone(), v.clone());
                }
            }
        }
        Ok((run.output()?, kept))
    }

    /// A forward pass on `x` that runs node by node ([`Run::run_to`]), so that callers can
    /// read intermediate values and change overrides between nodes.
    ///
    /// Errors: a wrong input shape.
    pub fn start(&self, x: &CTensor) -> Result<Run<'_>> {
        let input = self
            .ir
            .graph_inputs()
            .into_iter()
            .next()
            .ok_or_else(|| Error::Graph("model has no input".into()))?;
        let want = &self.ir.fact(&input).expect("input fact").shape;
        if x.dims() != want.as_slice() {
            return Err(Error::Graph(format!(
                "input '{input}' has shape {:?}; the graph was lowered for {want:?}",
                x.dims()
            )));
        }
        // last use of each computed value, to drop it early (backward keeps what it needs)
        let mut last_use: HashMap<String, usize> = HashMap::new();
        for i in 0..self.ir.nodes().len() {
            for name in self.reads(i) {
                last_use.insert(name.clone(), i);
            }
        }
        let output = self
            .ir
            .graph_outputs()
            .into_iter()
            .next()
            .unwrap_or_default();
        Ok(Run {
            graph: self,
            values: HashMap::from([(input, x.clone())]),
            next: 0,
            last_use,
            output,
        })
    }
}

/// A forward pass in progress: nodes before `next` have run. Each computed value is kept
/// until its last reader has run (the graph output until the end).
pub struct Run<'g> {
    graph: &'g CandleGraph,
    values: HashMap<String, CTensor>,
    next: usize,
    last_use: HashMap<String, usize>,
    output: String,
}

impl Run<'_> {
    /// Index of the next node to run.
    pub fn next(&self) -> usize {
        self.next
    }

    /// A computed value that is still alive (produced, and read by a node not yet run).
    pub fn value(&self, name: &str) -> Option<&CTensor> {
        self.values.get(name)
    }

    /// Runs the nodes from `next` up to (not including) `end`.
    ///
    /// Errors: a node whose op has no lowering, or an input without a value (named).
    pub fn run_to(&mut self, end: usize, overrides: &HashMap<String, CTensor>) -> Result<()> {
        let g = self.graph;
        let nodes = g.ir.nodes();
        while self.next < end.min(nodes.len()) {
            let (i, node) = (self.next, &nodes[self.next]);
            self.next += 1;
            if !g.run[i] || (g.in_fusion[i] && !g.fused.contains_key(&i)) {
                continue;
            }
            if let Some(f) = g.fused.get(&i) {
                let xs = f
                    .inputs
                    .iter()
                    .map(|name| {
                        self.lookup(name, overrides).ok_or_else(|| {
                            Error::node(node, format!("input '{name}' has no value"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let y = f
                    .run(&xs)
                    .map_err(|e| Error::node(node, format!("candle: {e}")))?;
                self.values.insert(node.output[0].clone(), y);
                self.drop_last_reads(i);
                continue;
            }
            let rule = ops::rule(node).ok_or_else(|| Error::node(node, "no rule for this op"))?;
            let ins: Vec<Option<CTensor>> = node
                .input
                .iter()
                .map(|name| {
                    if name.is_empty() {
                        None
                    } else {
                        self.lookup(name, overrides)
                    }
                })
                .collect();
            if let Some(k) = ins
                .iter()
                .zip(&node.input)
                .position(|(t, n)| t.is_none() && !n.is_empty())
            {
                return Err(Error::node(
                    node,
                    format!("input '{}' has no value", node.input[k]),
                ));
            }
            let outs = rule.lower(node, &g.ir, &ins)?;
            for (name, t) in node.output.iter().zip(outs) {
                if !name.is_empty() {
                    // floats made from nothing (a ConstantOfShape fill) take the graph's dtype
                    let t = if t.dtype().is_float() && t.dtype() != g.dtype {
                        t.to_dtype(g.dtype)
                            .map_err(|e| Error::node(node, format!("candle: {e}")))?
                    } else {
                        t
                    };
                    self.values.insert(name.clone(), t);
                }
            }
            self.drop_last_reads(i);
        }
        Ok(())
    }

    /// The value of `name`: computed in this run, else overridden, else a constant.
    fn lookup(&self, name: &str, overrides: &HashMap<String, CTensor>) -> Option<CTensor> {
        self.values
            .get(name)
            .or_else(|| overrides.get(name))
            .or_else(|| self.graph.consts.get(name))
            .cloned()
    }

    /// Drops the values whose last reader is node `i` (the graph output stays).
    fn drop_last_reads(&mut self, i: usize) {
        for name in self.graph.reads(i) {
            if self.last_use.get(name) == Some(&i) && *name != self.output {
                self.values.remove(name);
            }
        }
    }

    /// The first graph output, once every node has run.
    ///
    /// Errors: the output was not computed (the run has not finished).
    pub fn output(mut self) -> Result<CTensor> {
        self.values
            .remove(&self.output)
            .ok_or_else(|| Error::Graph(format!("graph output '{}' was not computed", self.output)))
    }
}
