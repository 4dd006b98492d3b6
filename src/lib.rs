//! sepprune: structured channel pruning of ONNX speech models (SepPrune, Li et al. 2025).
//!
//! Data flow: ONNX bytes -> [`onnx`] proto -> [`ir::Ir`] (static shapes) ->
//! [`analysis`] (cost profile, regions, channel groups) -> [`gates`] (gate graph) /
//! [`prune`] (masks, slicing) -> ONNX bytes; [`runtime`] runs models in ORT and tract;
//! [`audio`] reads data and scores SI-SDR; [`sv`] scores speaker verification (EER).
pub mod analysis;
pub mod audio;
pub mod bench;
pub mod error;
pub mod eval;
pub mod gates;
pub mod inspect;
pub mod ir;
pub mod learn;
pub mod onnx;
pub mod ops;
pub mod pipeline;
pub mod prune;
pub mod report;
pub mod runtime;
pub mod sv;
pub mod verify;

pub use error::{Error, Result};
