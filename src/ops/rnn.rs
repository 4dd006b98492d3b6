//! Recurrent layers: LSTM, GRU and RNN (one ONNX node = one layer, forward, reverse or
//! bidirectional).
//!
//! Shapes (`layout = 0`): X `[T, B, I]`, W `[D, G*H, I]`, R `[D, G*H, H]`, B `[D, 2*G*H]`,
//! Y `[T, D, B, H]`, Y_h and Y_c `[D, B, H]`, with G = 4 (LSTM, gates i, o, f, c), 3 (GRU,
//! z, r, h) or 1 (RNN); `layout = 1` puts the batch first. The hidden channels sit in G
//! blocks of W, R and B, which the identity channel links of the group analysis cannot
//! express yet: every axis of a recurrent node is frozen and reported.
use super::{need, Links, OpRule, ShapeOf};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr_i, attr_s, NodeProto};

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
    fn macs(&self, node: &NodeProto, shape: ShapeOf) -> u64 {
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
        links.freeze_node(
            node,
            ir,
            "recurrent hidden channels (gate blocks) are not grouped yet",
        );
    }

    fn params(&self, _node: &NodeProto, _ir: &Ir) -> Vec<usize> {
        vec![1, 2, 3]
    }

    /// `initial_h` and `initial_c` (the dynamo exporter writes zero initializers).
    fn state_inputs(&self, _node: &NodeProto) -> Vec<usize> {
        vec![5, 6]
    }
}
