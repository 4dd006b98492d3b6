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

/// The Candle device: CPU, or with `cuda` the first CUDA GPU.
///
/// Errors: `cuda` in a build without the `cuda` cargo feature, or no usable GPU.
pub fn device(cuda: bool) -> crate::error::Result<candle_core::Device> {
    if !cuda {
        return Ok(candle_core::Device::Cpu);
    }
    candle_core::Device::new_cuda(0).map_err(|e| {
        crate::error::Error::Other(format!(
            "CUDA device 0: {e} (build with `cargo build --release --features cuda`)"
        ))
    })
}
