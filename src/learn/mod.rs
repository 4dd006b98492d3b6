//! Learning on the gate graph with Candle: the lowered graph ([`graph`]), losses
//! ([`loss`]), the SepPrune mask learner ([`gumbel`]), and fine-tuning ([`finetune`]).
pub mod data;
pub mod finetune;
pub mod graph;
pub mod gumbel;
pub mod loss;
pub mod run;
pub mod taylor;

pub use graph::CandleGraph;
