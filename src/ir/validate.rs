//! What the IR refuses before any analysis: a model it cannot prune meaningfully, with a
//! message that says why and what to do.
use crate::error::{Error, Result};
use crate::onnx::{self, ModelProto, Tensor};

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
    for init in &graph.initializer {
        if !matches!(init.data_type.unwrap_or(0), 1 | 10 | 11 | 16) {
            continue;
        }
        if let Ok(Tensor::F32(a)) = onnx::tensor_from_proto(init) {
            if a.iter().any(|x| x.is_nan()) {
                return Err(Error::Tensor {
                    name: init.name().to_string(),
                    msg: "holds NaN values (a broken checkpoint): nothing to rank channels by"
                        .into(),
                });
            }
        }
    }
    Ok(())
}
