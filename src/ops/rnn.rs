//! Recurrent layers: LSTM, GRU and RNN (one ONNX node = one layer, forward, reverse or
//! bidirectional).
//!
//! Shapes (`layout = 0`): X `[T, B, I]`, W `[D, G*H, I]`, R `[D, G*H, H]`, B `[D, 2*G*H]`,
//! Y `[T, D, B, H]`, Y_h and Y_c `[D, B, H]`, with G = 4 (LSTM, gates i, o, f, c), 3 (GRU,
//! z, r, h) or 1 (RNN); `layout = 1` puts the batch first.
//!
//! Channels: the input features I link X to W's last axis (contracted: gated at X). The
//! hidden size H is a channel group the layer defines (its source is R's last axis): it is
//! Y's and the states' last axis, and W, R (rows) and B hold it in G (B: 2G) blocks, in the
//! ONNX gate order, so those axes are concatenations of G copies of the group (removing
//! unit j removes rows j, H+j, ..). Both directions keep the same units. Inside the layer
//! the units talk through R's columns, so the gate graph gates R itself ([`Read::Weight`]):
//! a unit with gate 0 then reaches nothing, as in the slimmed layer.
use super::{ce, cin, need, ConstEdit, Links, OpRule, Ptflops, Read, ShapeOf, Sliced};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr, attr_i, attr_s, set_attr_i, NodeProto, Tensor};
use candle_core::Tensor as CTensor;
use ndarray::{ArrayD, IxDyn};

pub struct Rnn;

/// Gate count G of the op.
fn gates(node: &NodeProto) -> usize {
    match node.op_type() {
        "LSTM" => 4,
        "GRU" => 3,
        _ => 1,
    }
}

impl OpRule for Rnn {
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = need(node, inputs, 0)?;
        let w = need(node, inputs, 1)?;
        if x.rank() != 3 || w.rank() != 3 {
            return Err(Error::node(
                node,
                format!("X {:?} and W {:?} must be rank 3", x.shape, w.shape),
            ));
        }
        let h = match attr_i(node, "hidden_size") {
            Some(h) => h as usize,
            None => w.shape[1] / gates(node),
        };
        let d = if attr_s(node, "direction").as_deref() == Some("bidirectional") {
            2
        } else {
            1
        };
        if w.shape[0] != d || w.shape[1] != gates(node) * h || w.shape[2] != x.shape[2] {
            return Err(Error::node(
                node,
                format!(
                    "W {:?} does not match X {:?}, {d} directions and hidden size {h}",
                    w.shape, x.shape
                ),
            ));
        }
        let batch_first = attr_i(node, "layout").unwrap_or(0) == 1;
        let (t, b) = if batch_first {
            (x.shape[1], x.shape[0])
        } else {
            (x.shape[0], x.shape[1])
        };
        let y = if batch_first {
            vec![b, t, d, h]
        } else {
            vec![t, d, b, h]
        };
        let state = if batch_first {
            vec![b, d, h]
        } else {
            vec![d, b, h]
        };
        Ok((0..node.output.len())
            .map(|i| Fact::shape(if i == 0 { y.clone() } else { state.clone() }))
            .collect())
    }

    /// ptflops `rnn_flops_counter_hook` per layer and direction, times batch and sequence
    /// length: `G*H*I + G*H*H` for the two products, `2*G*H` for the biases, plus the
    /// elementwise terms (LSTM `10*H`, GRU `7*H`, RNN `H`).
    fn macs(&self, node: &NodeProto, shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        let (x, w) = (shape(&node.input[0]), shape(&node.input[1]));
        if x.len() != 3 || w.len() != 3 {
            return 0;
        }
        let (d, gh, i) = (w[0], w[1], w[2]);
        let h = gh / gates(node);
        let elementwise = match node.op_type() {
            "LSTM" => 10 * h,
            "GRU" => 7 * h,
            _ => h,
        };
        let bias = if node.input.get(3).is_some_and(|b| !b.is_empty()) {
            2 * gh
        } else {
            0
        };
        let per_step = gh * i + gh * h + elementwise + bias;
        (per_step * x[0] * x[1] * d) as u64
    }

    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let g = gates(node);
        let batch_first = attr_i(node, "layout").unwrap_or(0) == 1;
        let input = |i: usize| node.input.get(i).filter(|v| !v.is_empty());
        let output = |i: usize| node.output.get(i).filter(|v| !v.is_empty());
        let (Some(x), Some(w), Some(r)) = (input(0), input(1), input(2)) else {
            return links.freeze_node(node, ir, "missing X, W or R");
        };
        if ir.fact(r).is_none_or(|f| f.rank() != 3) {
            return links.freeze_node(node, ir, "R must be rank 3");
        }
        links.link((x, 2), (w, 2));
        let hidden = (r.as_str(), 2);
        links.source(hidden);
        if let Some(y) = output(0) {
            links.link(hidden, (y, 3));
            links.freeze((y, 1), "RNN direction axis");
        }
        for o in [1, 2].into_iter().filter_map(output) {
            links.link(hidden, (o, 2));
            links.freeze((o, 0), "RNN direction axis");
        }
        // an initializer state (often one zeros tensor shared by several layers) is
        // re-made in `patch`, so that it does not couple the layers' hidden units
        for s in [5, 6].into_iter().filter_map(input) {
            if !ir.is_initializer(s) {
                links.link(hidden, (s, 2));
            }
        }
        links.concat(&vec![hidden; g], (w, 1));
        links.concat(&vec![hidden; g], (r, 1));
        if let Some(b) = input(3) {
            links.concat(&vec![hidden; 2 * g], (b, 1));
        }
        if let Some(p) = input(7) {
            links.concat(&[hidden; 3], (p, 1));
        }
        // batch, time and direction axes are never channels
        let (t, b) = if batch_first { (1, 0) } else { (0, 1) };
        for a in [t, b] {
            links.freeze((x, a), "RNN batch or time axis");
        }
    }

    /// X's features are contracted with W; R's columns with the hidden state.
    fn read(&self, _node: &NodeProto, _ir: &Ir, input: usize, axis: usize) -> Read {
        match (input, axis) {
            (0, 2) => Read::Mix,
            (2, 2) => Read::Weight,
            _ => Read::Pointwise,
        }
    }

    /// `hidden_size` follows R; an initializer state of one repeated value (zeros) is
    /// re-made with the new hidden size.
    ///
    /// Errors: an initializer state with distinct values (its units cannot be told apart
    /// from here).
    fn patch(&self, node: &mut NodeProto, ir: &Ir, new: &Sliced) -> Result<Vec<ConstEdit>> {
        let h = new.of(&node.input[2]).get(2).copied().unwrap_or(0);
        if attr_i(node, "hidden_size").is_some() {
            set_attr_i(node, "hidden_size", h as i64);
        }
        let mut edits = vec![];
        for i in [5, 6] {
            let Some(v) = node.input.get(i).filter(|v| ir.is_initializer(v)) else {
                continue;
            };
            let t = ir.initializer(v)?;
            let mut shape = t.shape();
            if shape.len() != 3 || shape[2] == h {
                continue;
            }
            let Tensor::F32(a) = &t else {
                return Err(Error::node(node, format!("state '{v}' is not float")));
            };
            let first = a.iter().next().copied().unwrap_or(0.0);
            if a.iter().any(|&x| x != first) {
                return Err(Error::node(
                    node,
                    format!("initial state '{v}' holds distinct values per unit"),
                ));
            }
            shape[2] = h;
            edits.push(ConstEdit {
                input: i,
                via: None,
                value: Tensor::F32(ArrayD::from_elem(IxDyn(&shape), first)),
            });
        }
        Ok(edits)
    }

    /// LSTM with the default activations (sigmoid, tanh, tanh), no peepholes, clip or
    /// coupled input-forget gate, full-length sequences; forward, reverse or bidirectional,
    /// either layout. Per direction, with gates in ONNX order (i, o, f, c):
    /// `g = x_t W^T + h R^T + Wb + Rb`, `c = f c + i tanh(g_c)`, `h = o tanh(c)`. The input
    /// products of all steps run as one matmul.
    ///
    /// Errors: GRU and RNN, and any attribute or input outside that set.
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let bad = |what: &str| Err(Error::node(node, format!("Candle lowering of {what}")));
        if node.op_type() != "LSTM" {
            return bad(&format!("{} is not implemented", node.op_type()));
        }
        if attr(node, "activations").is_some()
            || attr(node, "clip").is_some()
            || attr_i(node, "input_forget").unwrap_or(0) != 0
            || super::has_input(node, 7)
        {
            return bad("LSTM covers default activations without clip, peepholes or input_forget");
        }
        let batch_first = attr_i(node, "layout").unwrap_or(0) == 1;
        let xs = cin(node, x, 0)?;
        let xs = if batch_first {
            xs.transpose(0, 1).map_err(&e)?
        } else {
            xs.clone()
        }; // [T, B, I]
        let (t_len, b, i_len) = xs.dims3().map_err(&e)?;
        if super::has_input(node, 4) {
            let full = ir
                .fact(&node.input[4])
                .and_then(|f| f.value.as_ref())
                .is_some_and(|v| v.to_i64_vec().iter().all(|&l| l == t_len as i64));
            if !full {
                return bad("LSTM covers full-length sequences only");
            }
        }
        let (w, r) = (cin(node, x, 1)?, cin(node, x, 2)?); // [D, 4H, I], [D, 4H, H]
        let (d_len, gh, h_len) = r.dims3().map_err(&e)?;
        let reverse = attr_s(node, "direction").as_deref() == Some("reverse");
        let state = |k: usize| -> Result<Option<CTensor>> {
            match x.get(k).and_then(|t| t.as_ref()) {
                None => Ok(None),
                Some(s) if batch_first => Ok(Some(s.transpose(0, 1).map_err(&e)?)), // [D, B, H]
                Some(s) => Ok(Some(s.clone())),
            }
        };
        let (h0, c0) = (state(5)?, state(6)?);
        let flat = xs.reshape((t_len * b, i_len)).map_err(&e)?;
        let (mut ys, mut hs, mut cs) = (vec![], vec![], vec![]);
        for d in 0..d_len {
            let run = || -> candle_core::Result<(Vec<CTensor>, CTensor, CTensor)> {
                let wd = w.get(d)?; // [4H, I]
                let rt = r.get(d)?.t()?; // [H, 4H]
                let mut xw = flat.matmul(&wd.t()?)?.reshape((t_len, b, gh))?;
                if let Some(bias) = x.get(3).and_then(|t| t.as_ref()) {
                    let bd = bias.get(d)?;
                    let bsum = (bd.narrow(0, 0, gh)? + bd.narrow(0, gh, gh)?)?;
                    xw = xw.broadcast_add(&bsum)?;
                }
                let zeros = || CTensor::zeros((b, h_len), xs.dtype(), xs.device());
                let mut h = match &h0 {
                    Some(s) => s.get(d)?,
                    None => zeros()?,
                };
                let mut c = match &c0 {
                    Some(s) => s.get(d)?,
                    None => zeros()?,
                };
                let backward = reverse || d == 1;
                let mut out = vec![None; t_len];
                for step in 0..t_len {
                    let t = if backward { t_len - 1 - step } else { step };
                    let g = (xw.get(t)? + h.matmul(&rt)?)?; // [B, 4H]
                    let gate = |k: usize| g.narrow(1, k * h_len, h_len);
                    let (i, o, f) = (
                        candle_nn::ops::sigmoid(&gate(0)?)?,
                        candle_nn::ops::sigmoid(&gate(1)?)?,
                        candle_nn::ops::sigmoid(&gate(2)?)?,
                    );
                    c = ((f * &c)? + (i * gate(3)?.tanh()?)?)?;
                    h = (o * c.tanh()?)?;
                    out[t] = Some(h.clone());
                }
                let out = out.into_iter().flatten().collect();
                Ok((out, h, c))
            };
            let (out, h, c) = run().map_err(&e)?;
            ys.push(CTensor::stack(&out, 0).map_err(&e)?); // [T, B, H]
            hs.push(h);
            cs.push(c);
        }
        let y = CTensor::stack(&ys, 1).map_err(&e)?; // [T, D, B, H]
        let (yh, yc) = (
            CTensor::stack(&hs, 0).map_err(&e)?,
            CTensor::stack(&cs, 0).map_err(&e)?,
        ); // [D, B, H]
        let (y, yh, yc) = if batch_first {
            (
                y.permute((2, 0, 1, 3)).map_err(&e)?,
                yh.transpose(0, 1).map_err(&e)?,
                yc.transpose(0, 1).map_err(&e)?,
            )
        } else {
            (y, yh, yc)
        };
        Ok([y, yh, yc].into_iter().take(node.output.len()).collect())
    }

    fn params(&self, _node: &NodeProto, _ir: &Ir) -> Vec<usize> {
        vec![1, 2, 3]
    }

    /// `initial_h` and `initial_c` (the dynamo exporter writes zero initializers).
    fn state_inputs(&self, _node: &NodeProto) -> Vec<usize> {
        vec![5, 6]
    }
}
