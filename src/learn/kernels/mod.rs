//! Fused CPU kernels with a hand-written backward, for the ops whose decomposed Candle
//! lowering costs most per training step (issue 3's step-time target).
//!
//! A decomposed op costs Candle one full-size tensor per elementary op forward and about
//! three backward (the local gradient, a zero-filled accumulator, the accumulation): a PReLU
//! written as `relu(x) + slope * (x - relu(x))` makes some sixteen passes over its input in a
//! training step, a K-tap depthwise convolution some 6K. The kernels here make one pass
//! forward and one per gradient. They run on the CPU in f32 and f64 (the gradient checks
//! run in f64); op lowerings call them on CPU tensors and keep the decomposed form on other
//! devices.
mod affine;
mod depthwise;
mod normalize;
mod prelu;

pub use affine::channel_affine;
pub use depthwise::depthwise_conv1d;
pub use normalize::normalize;
pub use prelu::prelu;

use candle_core::{Layout, Result};

/// The contiguous slice a layout reads.
///
/// Errors: a non-contiguous layout (callers make inputs contiguous first).
fn slice<'a, T>(v: &'a [T], l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: input is not contiguous"),
    }
}

/// Floats the kernels are written for (f32, f64).
trait Float:
    Copy
    + Default
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
{
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}
impl Float for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
}
impl Float for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> f64 {
        v
    }
}

/// Applies `f` to the storages of one float dtype (all f32 or all f64).
macro_rules! float_dispatch {
    ($op:expr, ($($s:ident),+), |$($v:ident),+| $body:expr) => {
        match ($($s),+) {
            ($(CpuStorage::F32($v)),+) => CpuStorage::F32($body),
            ($(CpuStorage::F64($v)),+) => CpuStorage::F64($body),
            _ => candle_core::bail!("{}: f32 or f64 inputs of one dtype", $op),
        }
    };
}
pub(crate) use float_dispatch;
