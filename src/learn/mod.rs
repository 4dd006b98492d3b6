//! Learning on the gate graph with Candle: the lowered graph ([`graph`]), losses
//! ([`loss`]), and the SepPrune mask learner ([`gumbel`]).
pub mod graph;
pub mod gumbel;
pub mod loss;
pub mod run;

pub use graph::CandleGraph;
