//! Fused CPU kernels with a hand-written backward, for the ops whose decomposed Candle
//! lowering costs most per training step (issue 3's step-time target).
//!
//! A decomposed op costs Candle one full-size tensor per elementary op forward and about
//! three backward (the local gradient, a zero-filled accumulator, the accumulation): a PReLU
//! written as `relu(x) + slope * (x - relu(x))` makes some sixteen passes over its input in a
//! training step, a K-tap depthwise convolution some 6K. The kernels here make one pass
//! forward and one per gradient. They run on the CPU in f32 and f64 (the gradient checks
//! run in f64) and, with the `cuda` feature, on CUDA GPUs in f32 ([`applies`]; the CUDA
//! source is `kernels.cu`, launched by `cuda.rs`); op lowerings keep the decomposed form
//! where they do not apply. On a GPU the decomposed form costs about three kernel launches
//! per elementary op, and at batch 1 the launches, not the arithmetic, set a training
//! step's time.
mod affine;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod depthwise;
mod normalize;
mod prelu;

pub use affine::{channel_affine, channel_bias};
pub use depthwise::depthwise_conv1d;
pub use normalize::{normalize, normalize_affine};
pub use prelu::prelu;

use candle_core::{DType, Device, Layout, Result, Tensor};

/// The shortest per-channel run (entries of one channel contiguous in memory) a CUDA kernel
/// takes: a gradient reduces each run in its own thread blocks, which shorter runs leave
/// idle (a channel-last LayerNorm's runs hold one entry); the decomposed form serves them.
pub const MIN_CUDA_RUN: usize = 32;

/// Whether the fused kernels run on `device` in `dtype` for per-channel runs of `run`
/// entries (`usize::MAX` for a kernel without channels): the CPU in f32 or f64; a CUDA GPU
/// (with the `cuda` feature) in f32 for runs of at least [`MIN_CUDA_RUN`] entries.
pub fn applies(device: &Device, dtype: DType, run: usize) -> bool {
    match device {
        Device::Cpu => matches!(dtype, DType::F32 | DType::F64),
        Device::Cuda(_) => cfg!(feature = "cuda") && dtype == DType::F32 && run >= MIN_CUDA_RUN,
        _ => false,
    }
}

/// [`applies`] to `x` with runs along its axis `axis` (the product of the later dims).
fn applies_along(x: &Tensor, axis: usize) -> bool {
    applies(x.device(), x.dtype(), x.dims()[axis + 1..].iter().product())
}
/// A tensor viewed as `[outer, C, inner]`: runs of `inner` contiguous entries that share a
/// channel (a PReLU slope, an affine scale).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Runs {
    outer: usize,
    c: usize,
    inner: usize,
}

impl Runs {
    /// `dims` viewed around its axis `axis` (`axis < dims.len()`).
    fn around(dims: &[usize], axis: usize) -> Runs {
        Runs {
            outer: dims[..axis].iter().product(),
            c: dims[axis],
            inner: dims[axis + 1..].iter().product(),
        }
    }

    /// `f(channel, run)` over the runs in memory order.
    fn each(&self, mut f: impl FnMut(usize, std::ops::Range<usize>)) {
        for o in 0..self.outer {
            for c in 0..self.c {
                let start = (o * self.c + c) * self.inner;
                f(c, start..start + self.inner);
            }
        }
    }
}

/// The parameters of a per-channel map along `x`'s axis `axis`: `C`, then `scale` and
/// `bias` (zeros when absent) made contiguous; `None` when the kernels do not apply
/// ([`applies`] to runs along `axis`, parameters without `C` entries or of another dtype).
fn channel_params(
    x: &Tensor,
    axis: usize,
    scale: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Option<(usize, Tensor, Tensor)>> {
    let Some(&c) = x.dims().get(axis) else {
        return Ok(None);
    };
    let fits = |t: &Tensor| t.elem_count() == c && t.dtype() == x.dtype();
    if !applies_along(x, axis) || !fits(scale) || !bias.is_none_or(fits) {
        return Ok(None);
    }
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(c, x.dtype(), x.device())?,
    };
    Ok(Some((c, scale.contiguous()?, bias)))
}

/// A gradient kernel's flat output `[dx; dp_1; ...; dp_k]` as `dx` shaped like `x` and each
/// `dp_i` shaped like `params[i]` (views of one buffer, no copies).
fn split_grads(out: &Tensor, x: &Tensor, params: &[&Tensor]) -> Result<(Tensor, Vec<Tensor>)> {
    let n = x.elem_count();
    let dx = out.narrow(0, 0, n)?.reshape(x.shape())?;
    let mut at = n;
    let mut dp = Vec::with_capacity(params.len());
    for p in params {
        dp.push(out.narrow(0, at, p.elem_count())?.reshape(p.shape())?);
        at += p.elem_count();
    }
    Ok((dx, dp))
}

/// `sum f(i)` over `0..n`, in eight interleaved partial sums (which vectorise, where one
/// running sum would not: float addition does not reassociate).
fn sum<T: Float>(n: usize, f: impl Fn(usize) -> T) -> T {
    let mut acc = [T::default(); 8];
    let whole = n / 8 * 8;
    for i in (0..whole).step_by(8) {
        for (j, a) in acc.iter_mut().enumerate() {
            *a += f(i + j);
        }
    }
    let mut total = T::default();
    for v in acc.into_iter().chain((whole..n).map(f)) {
        total += v;
    }
    total
}

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

/// `impl CustomOp2` (two inputs) or `CustomOp3` (three) for `$ty(Geometry)`: the forward
/// `$f(&[T].., Geometry) -> Vec<T>` on the inputs' contiguous f32/f64 slices, with output
/// shape `$shape` (from the geometry `$g` and the first input's layout `$l`), and, with
/// `bwd = method`, the backward `self.method(inputs.., y, dy)`; gradient kernels have none.
/// With `cuda = method`, the CUDA forward `self.method(device, inputs..)` on the inputs'
/// contiguous f32 views, with the same output shape (built with the `cuda` feature).
macro_rules! cpu_op {
    ($ty:ident, $name:literal, $f:ident, ($a:ident, $b:ident), |$g:ident, $l:ident| $shape:expr
     $(, bwd = $bwd:ident)? $(, cuda = $cuda:ident)?) => {
        impl candle_core::CustomOp2 for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                s1: &candle_core::CpuStorage,
                l1: &candle_core::Layout,
                s2: &candle_core::CpuStorage,
                l2: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                use candle_core::CpuStorage;
                let out = $crate::ops::kernels::float_dispatch!($name, (s1, s2), |$a, $b| $f(
                    $crate::ops::kernels::slice($a, l1, $name)?,
                    $crate::ops::kernels::slice($b, l2, $name)?,
                    self.0
                ));
                #[allow(unused_variables)]
                let ($g, $l) = (self.0, l1);
                Ok((out, $shape))
            }

            $(
            #[cfg(feature = "cuda")]
            fn cuda_fwd(
                &self,
                s1: &candle_core::CudaStorage,
                l1: &candle_core::Layout,
                s2: &candle_core::CudaStorage,
                l2: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
                use $crate::ops::kernels::cuda::view;
                let y = self.$cuda(&s1.device, &view(s1, l1, $name)?, &view(s2, l2, $name)?)?;
                #[allow(unused_variables)]
                let ($g, $l) = (self.0, l1);
                Ok((y, $shape))
            }
            )?
            $(
            fn bwd(
                &self,
                a: &candle_core::Tensor,
                b: &candle_core::Tensor,
                y: &candle_core::Tensor,
                dy: &candle_core::Tensor,
            ) -> candle_core::Result<(Option<candle_core::Tensor>, Option<candle_core::Tensor>)> {
                self.$bwd(a, b, y, dy)
            }
            )?
        }
    };
    ($ty:ident, $name:literal, $f:ident, ($a:ident, $b:ident, $c:ident), |$g:ident, $l:ident| $shape:expr
     $(, bwd = $bwd:ident)? $(, cuda = $cuda:ident)?) => {
        impl candle_core::CustomOp3 for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                s1: &candle_core::CpuStorage,
                l1: &candle_core::Layout,
                s2: &candle_core::CpuStorage,
                l2: &candle_core::Layout,
                s3: &candle_core::CpuStorage,
                l3: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                use candle_core::CpuStorage;
                let out =
                    $crate::ops::kernels::float_dispatch!($name, (s1, s2, s3), |$a, $b, $c| $f(
                        $crate::ops::kernels::slice($a, l1, $name)?,
                        $crate::ops::kernels::slice($b, l2, $name)?,
                        $crate::ops::kernels::slice($c, l3, $name)?,
                        self.0
                    ));
                #[allow(unused_variables)]
                let ($g, $l) = (self.0, l1);
                Ok((out, $shape))
            }

            $(
            #[cfg(feature = "cuda")]
            fn cuda_fwd(
                &self,
                s1: &candle_core::CudaStorage,
                l1: &candle_core::Layout,
                s2: &candle_core::CudaStorage,
                l2: &candle_core::Layout,
                s3: &candle_core::CudaStorage,
                l3: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
                use $crate::ops::kernels::cuda::view;
                let (v1, v2, v3) = (view(s1, l1, $name)?, view(s2, l2, $name)?, view(s3, l3, $name)?);
                let y = self.$cuda(&s1.device, &v1, &v2, &v3)?;
                #[allow(unused_variables)]
                let ($g, $l) = (self.0, l1);
                Ok((y, $shape))
            }
            )?
            $(
            #[allow(clippy::type_complexity)]
            fn bwd(
                &self,
                a: &candle_core::Tensor,
                b: &candle_core::Tensor,
                c: &candle_core::Tensor,
                y: &candle_core::Tensor,
                dy: &candle_core::Tensor,
            ) -> candle_core::Result<(
                Option<candle_core::Tensor>,
                Option<candle_core::Tensor>,
                Option<candle_core::Tensor>,
            )> {
                self.$bwd(a, b, c, y, dy)
            }
            )?
        }
    };
}
pub(crate) use cpu_op;
