//! Learning on the gate graph with Candle: the lowered graph ([`graph`]), losses
//! ([`loss`]), the mask learners (SepPrune's Gumbel-Softmax, [`gumbel`]; hard concrete with
//! a Lagrangian budget, [`hard_concrete`]; one threshold per layer trained with the
//! weights, [`self_pinching`]), distillation targets ([`distill`]), a speaker head for in-situ
//! speaker-verification pruning ([`speaker`]), and fine-tuning ([`finetune`],
//! optionally on dynamically mixed examples, [`augment`]).
pub mod adam;
pub mod augment;
pub mod batch;
pub mod data;
pub mod distill;
pub mod finetune;
pub mod fisher;
pub mod fuse;
pub mod graph;
pub mod gumbel;
pub mod hard_concrete;
pub mod hints;
pub mod loss;
pub mod refit;
pub mod run;
pub mod self_pinching;
pub mod speaker;
pub mod taylor;

pub use graph::CandleGraph;

/// A progress bar over `len` steps (position, elapsed time, ETA and a message), drawn on
/// stderr when `show`.
pub fn progress_bar(len: usize, show: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {elapsed_precise} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// The Candle device: CPU, or with `cuda` the first CUDA GPU.
///
/// On the GPU every tensor lives on the device's one stream, so cudarc's per-launch event
/// tracking (which orders uses across streams: an event recorded and waited on for every
/// buffer of every kernel) is turned off.
///
/// Errors: `cuda` in a build without the `cuda` cargo feature, or no usable GPU.
pub fn device(cuda: bool) -> crate::error::Result<candle_core::Device> {
    if !cuda {
        return Ok(candle_core::Device::Cpu);
    }
    let device = candle_core::Device::new_cuda(0).map_err(|e| crate::error::Error::Candle {
        stage: "CUDA device 0",
        msg: format!("{e} (build with `cargo build --release --features cuda`)"),
    })?;
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = &device {
        // SAFETY: sepprune makes no other stream: every tensor is allocated, used and freed
        // on the device's stream, in order
        unsafe { d.disable_event_tracking() };
    }
    Ok(device)
}
