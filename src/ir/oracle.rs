//! Shapes for ops without a hand-written rule, from tract's analyser.
//!
//! sepprune reasons about channels only for the ops in [`crate::ops::rule`]. Any other op a
//! runtime can run (an `Einsum`, a `Tile`, an `If` whose condition depends on the data, a
//! `CumSum` in a padding mask) still needs output shapes so that the rest of the graph can be
//! analysed: tract's ONNX front end infers them (and folds the constant ones) for the input
//! shapes the IR was built at. Such nodes are *opaque*: every axis of their inputs and
//! outputs is frozen ([`crate::ops::Links::freeze_node`]), so no channel group crosses them.
use super::Fact;
use crate::onnx::{self, ModelProto, Tensor};
use std::collections::HashMap;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::Factoid;

/// Per-value facts (shape, and the value when tract folded it to a small constant) of
/// `model` with each graph input fixed to `inputs[i]` (name, fact: its shape, and its value
/// for an integer input such as a sequence length), keyed by ONNX value
/// name. Values tract cannot name (decomposed in its typed model) are absent.
///
/// Errors: tract's message when it cannot load or analyse the model (an op it does not
/// know, shapes it cannot infer).
pub fn tract_facts(
    model: &ModelProto,
    inputs: &[(String, Fact)],
) -> std::result::Result<HashMap<String, Fact>, String> {
    let mut model = model.clone();
    if let Some(g) = model.graph.as_mut() {
        g.value_info.clear(); // exporters' hints for the traced length
    }
    let bytes = onnx::encode(&model);
    let e = |e: TractError| format!("{e:#}");
    let mut m = tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .map_err(e)?;
    for (ix, (_, fact)) in inputs.iter().enumerate() {
        if let Some(Tensor::I64(v)) = &fact.value {
            let flat: Vec<i64> = v.iter().copied().collect();
            let t = tract_onnx::prelude::Tensor::from_shape(&fact.shape, &flat).map_err(e)?;
            let dt = match m.input_fact(ix).map_err(e)?.datum_type {
                tract_onnx::tract_hir::internal::GenericFactoid::Only(dt) => dt,
                _ => i64::datum_type(),
            };
            let t = t.cast_to_dt(dt).map_err(e)?.into_owned();
            m.set_input_fact(ix, InferenceFact::from(t)).map_err(e)?;
            continue;
        }
        let shape = &fact.shape;
        let dt = match m.input_fact(ix).map_err(e)?.datum_type {
            tract_onnx::tract_hir::internal::GenericFactoid::Only(dt) => dt,
            tract_onnx::tract_hir::internal::GenericFactoid::Any => f32::datum_type(),
        };
        m.set_input_fact(ix, InferenceFact::dt_shape(dt, shape.as_slice()))
            .map_err(e)?;
    }
    // facts of the ONNX nodes themselves, from the analysis (one tract node per ONNX node);
    // the typed model, where some ops are rewritten into several nodes, fills in the rest
    let _ = m.analyse(false);
    let mut out = HashMap::new();
    for node in m.nodes() {
        for (slot, o) in node.outputs.iter().enumerate() {
            let Some(label) = m.outlet_label(OutletId::new(node.id, slot)) else {
                continue;
            };
            let Ok(Some(shape)) = o.fact.shape.as_concrete_finite() else {
                continue;
            };
            let value = o
                .fact
                .value
                .concretize()
                .filter(|k| k.len() <= super::FOLD_LIMIT)
                .and_then(|k| to_tensor(&k));
            out.insert(
                label.to_string(),
                Fact {
                    shape: shape.to_vec(),
                    value,
                },
            );
        }
    }
    let typed = m.into_typed().map_err(e)?;
    for node in typed.nodes() {
        for (slot, o) in node.outputs.iter().enumerate() {
            let Some(label) = typed.outlet_label(OutletId::new(node.id, slot)) else {
                continue;
            };
            let Some(shape) = o.fact.shape.as_concrete() else {
                continue;
            };
            let value = o
                .fact
                .konst
                .as_ref()
                .filter(|k| k.len() <= super::FOLD_LIMIT)
                .and_then(|k| to_tensor(k));
            out.entry(label.to_string()).or_insert(Fact {
                shape: shape.to_vec(),
                value,
            });
        }
    }
    Ok(out)
}

/// A tract constant as an IR tensor: floats as f32, integers and booleans as i64.
fn to_tensor(k: &tract_onnx::prelude::Tensor) -> Option<Tensor> {
    fn cast<T: Datum + Copy>(k: &tract_onnx::prelude::Tensor) -> Option<ndarray::ArrayD<T>> {
        let v = k.cast_to::<T>().ok()?;
        let flat: Vec<T> = v.to_plain_array_view::<T>().ok()?.iter().copied().collect();
        ndarray::ArrayD::from_shape_vec(k.shape().to_vec(), flat).ok()
    }
    let dt = k.datum_type();
    if dt.is_float() {
        cast::<f32>(k).map(Tensor::F32)
    } else if dt.is_integer() || dt == bool::datum_type() {
        cast::<i64>(k).map(Tensor::I64)
    } else {
        None
    }
}
