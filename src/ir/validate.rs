//! What the IR refuses before any analysis: a model it cannot prune meaningfully, with a
//! message that says why and what to do.
use crate::error::{Error, Result};
use crate::onnx::{self, ModelProto};

/// The default-domain opsets the op rules are written for (ONNX 1.8 to 1.17).
pub const OPSETS: std::ops::RangeInclusive<i64> = 11..=23;

/// Ops of quantized graphs (QDQ pairs, dynamic quantization, integer kernels).
const QUANTIZED: &[&str] = &[
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "QLinearAdd",
    "QLinearMul",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearConcat",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "DynamicQuantizeLSTM",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QGemm",
];

/// Checks `model` before shape inference.
///
/// Errors ([`Error::Refused`]):
/// - no default-domain opset, or one outside [`OPSETS`];
/// - a quantized graph (any node of [`QUANTIZED`], in any domain): the message names up to
///   five of them and says to prune the float model before quantizing;
/// - a float initializer holding NaN (a broken checkpoint: channel norms are meaningless).
pub fn validate(model: &ModelProto) -> Result<()> {
    let has_default = model
        .opset_import
        .iter()
        .any(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")));
    if !has_default {
        return Err(Error::Refused(
            "the model imports no default-domain (ai.onnx) opset: its ops have no defined \
             meaning (re-export it, or add an opset_import)"
                .into(),
        ));
    }
    let v = onnx::opset(model);
    if !OPSETS.contains(&v) {
        return Err(Error::Refused(format!(
            "opset {v} is not supported (the op rules cover opsets {} to {}): convert the \
             model with onnx.version_converter or re-export it",
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    let Some(graph) = model.graph.as_ref() else {
        return Err(Error::Refused("the model has no graph".into()));
    };
    let quantized: Vec<String> = graph
        .node
        .iter()
        .filter(|n| QUANTIZED.contains(&n.op_type()))
        .map(|n| format!("'{}' ({})", n.name(), n.op_type()))
        .collect();
    if !quantized.is_empty() {
        let shown = quantized[..quantized.len().min(5)].join(", ");
        return Err(Error::Refused(format!(
            "a quantized model ({} quantized nodes: {shown}{}): channels of integer kernels \
             and their scales cannot be sliced exactly; prune the float model, then quantize \
             the slim one",
            quantized.len(),
            if quantized.len() > 5 { ", ..." } else { "" }
        )));
    }
    if let Some(init) = graph.initializer.iter().find(|t| has_nan(t)) {
        return Err(Error::Tensor {
            name: init.name().to_string(),
            msg: "holds NaN values (a broken checkpoint): nothing to rank channels by".into(),
        });
    }
    Ok(())
}

/// True when a float initializer (f32, f16, f64; inline data) holds a NaN: a scan of its
/// bytes, nothing decoded or allocated (this runs at every [`crate::ir::Ir::new`]).
fn has_nan(t: &onnx::TensorProto) -> bool {
    let raw = t.raw_data.as_deref().unwrap_or(&[]);
    match t.data_type.unwrap_or(0) {
        1 => {
            raw.chunks_exact(4)
                .any(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_nan())
                || t.float_data.iter().any(|v| v.is_nan())
        }
        11 => {
            raw.chunks_exact(8)
                .any(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")).is_nan())
                || t.double_data.iter().any(|v| v.is_nan())
        }
        // f16: exponent all ones, mantissa non-zero (inline values sit in int32_data)
        10 => {
            let nan = |b: u16| b & 0x7c00 == 0x7c00 && b & 0x03ff != 0;
            raw.chunks_exact(2)
                .any(|c| nan(u16::from_le_bytes([c[0], c[1]])))
                || t.int32_data.iter().any(|&v| nan(v as u16))
        }
        _ => false,
    }
}
