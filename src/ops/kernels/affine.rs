//! A per-channel affine map `y = x * scale[c] + bias[c]` (a norm's gamma and beta) as one
//! fused CPU op with its backward.
use super::{channel_params, cpu_op, split_grads, sum, Float, Runs};
use candle_core::{Result, Shape, Tensor};

type Geometry = Runs;

/// `x * scale + bias` with `scale` and `bias` (`C` entries each, any shape) along `x`'s
/// axis `axis` (`C` entries); a missing bias is zero. `None` when the op does not apply
/// (a device or dtype where [`super::applies`] says no, sizes that do not match) and
/// callers decompose.
///
/// Backward: `dx = dy * scale[c]`, `dscale[c] = sum(dy * x)`, `dbias[c] = sum(dy)` over
/// channel `c`'s entries.
pub fn channel_affine(
    x: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    axis: usize,
) -> Result<Option<Tensor>> {
    let Some((_, scale, bias)) = channel_params(x, axis, scale, bias)? else {
        return Ok(None);
    };
    let y = x
        .contiguous()?
        .apply_op3(&scale, &bias, Affine(Runs::around(x.dims(), axis)))?;
    Ok(Some(y))
}

struct Affine(Geometry);

fn forward<T: Float>(x: &[T], s: &[T], b: &[T], g: Geometry) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    g.each(|c, r| {
        let (a, o) = (s[c], b[c]);
        y.extend(x[r].iter().map(|&v| v * a + o));
    });
    y
}

cpu_op!(
    Affine,
    "channel-affine",
    forward,
    (x, s, b),
    |g, l| l.shape().clone(),
    bwd = backward,
    cuda = cuda
);

impl Affine {
    #[allow(clippy::type_complexity)]
    fn backward(
        &self,
        x: &Tensor,
        scale: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let out = x.apply_op3_no_bwd(&dy.contiguous()?, scale, &Grad(self.0))?;
        let (dx, p) = split_grads(&out, x, &[scale, bias])?;
        Ok((Some(dx), Some(p[0].clone()), Some(p[1].clone())))
    }
}

/// `[dx (flattened); dscale; dbias]` from `(x, dy, scale)`, in one pass over `x` and `dy`.
struct Grad(Geometry);

fn grad<T: Float>(x: &[T], dy: &[T], s: &[T], g: Geometry) -> Vec<T> {
    let mut out = Vec::with_capacity(x.len() + 2 * g.c);
    let (mut ds, mut db) = (vec![T::default(); g.c], vec![T::default(); g.c]);
    g.each(|c, r| {
        let a = s[c];
        let (xs, d) = (&x[r.clone()], &dy[r]);
        out.extend(d.iter().map(|&d| d * a));
        ds[c] += sum(xs.len(), |i| xs[i] * d[i]);
        db[c] += sum(d.len(), |i| d[i]);
    });
    out.extend(ds.into_iter().chain(db));
    out
}

cpu_op!(
    Grad,
    "channel-affine-grad",
    grad,
    (x, d, s),
    |g, l| Shape::from(l.shape().elem_count() + 2 * g.c),
    cuda = cuda
);

/// `x + bias` with `bias` (`C` entries, any shape) along `x`'s axis `axis` (a convolution's
/// bias): the affine map without a scale. `None` where [`channel_affine`] would decline.
///
/// Backward: `dx = dy` (the same tensor, no copy), `dbias[c] = sum(dy)` over channel `c`'s
/// entries. Decomposed, a broadcast add also builds a zero-filled full-size gradient for the
/// broadcast bias and accumulates into it before reducing it.
pub fn channel_bias(x: &Tensor, bias: &Tensor, axis: usize) -> Result<Option<Tensor>> {
    let Some((_, bias, _)) = channel_params(x, axis, bias, None)? else {
        return Ok(None);
    };
    let y = x
        .contiguous()?
        .apply_op2(&bias, Bias(Runs::around(x.dims(), axis)))?;
    Ok(Some(y))
}

struct Bias(Geometry);

fn bias_forward<T: Float>(x: &[T], b: &[T], g: Geometry) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    g.each(|c, r| {
        let o = b[c];
        y.extend(x[r].iter().map(|&v| v + o));
    });
    y
}

cpu_op!(
    Bias,
    "channel-bias",
    bias_forward,
    (x, b),
    |g, l| l.shape().clone(),
    bwd = backward,
    cuda = cuda
);

impl Bias {
    fn backward(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // [outer, C, inner] -> the sum over each channel's runs, in one pass
        let db = dy
            .contiguous()?
            .apply_op1_no_bwd(&BiasGrad(self.0))?
            .reshape(bias.shape())?;
        Ok((Some(dy.clone()), Some(db)))
    }
}

/// `dbias [C]` from `dy`: the sum of each channel's entries.
struct BiasGrad(Geometry);

fn bias_grad<T: Float>(dy: &[T], g: Geometry) -> Vec<T> {
    let mut db = vec![T::default(); g.c];
    g.each(|c, r| {
        let d = &dy[r];
        db[c] += sum(d.len(), |i| d[i]);
    });
    db
}

impl candle_core::CustomOp1 for BiasGrad {
    fn name(&self) -> &'static str {
        "channel-bias-grad"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        use candle_core::CpuStorage;
        let n = self.name();
        let db = match s {
            CpuStorage::F32(d) => CpuStorage::F32(bias_grad(super::slice(d, l, n)?, self.0)),
            CpuStorage::F64(d) => CpuStorage::F64(bias_grad(super::slice(d, l, n)?, self.0)),
            _ => candle_core::bail!("{n}: f32 or f64 input"),
        };
        Ok((db, Shape::from(self.0.c)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = super::cuda::view(s, l, self.name())?;
        Ok((
            super::cuda::channel_sums(&s.device, &d, self.0)?,
            Shape::from(self.0.c),
        ))
    }
}

#[cfg(feature = "cuda")]
mod on_cuda {
    use super::super::cuda::{channel_map, channel_map_grad};
    use candle_core::cuda_backend::cudarc::driver::CudaView;
    use candle_core::{CudaDevice, CudaStorage, Result};

    impl super::Affine {
        pub(super) fn cuda(
            &self,
            d: &CudaDevice,
            x: &CudaView<f32>,
            s: &CudaView<f32>,
            b: &CudaView<f32>,
        ) -> Result<CudaStorage> {
            channel_map(d, x, s, b, self.0, 1)
        }
    }

    impl super::Grad {
        pub(super) fn cuda(
            &self,
            d: &CudaDevice,
            x: &CudaView<f32>,
            dy: &CudaView<f32>,
            s: &CudaView<f32>,
        ) -> Result<CudaStorage> {
            channel_map_grad(d, x, dy, s, self.0, 1)
        }
    }

    impl super::Bias {
        pub(super) fn cuda(
            &self,
            d: &CudaDevice,
            x: &CudaView<f32>,
            b: &CudaView<f32>,
        ) -> Result<CudaStorage> {
            channel_map(d, x, b, b, self.0, 2)
        }
    }
}
