//! Depthwise 1-D convolution (ONNX `Conv` with `group = C`, `W [C, 1, K]`, stride 1) as one
//! fused CPU op with its backward: Conv-TasNet's and SuDoRM-RF's dilated depthwise layers.
use super::{cpu_op, sum, Float};
use candle_core::{Result, Shape, Tensor};

#[derive(Clone, Copy, Debug)]
struct Geometry {
    /// `N * C` rows of the input `[N, C, T]`.
    rows: usize,
    c: usize,
    t: usize,
    k: usize,
    dilation: usize,
    /// Zeros before the signal (the ONNX `pads` begin).
    pad: usize,
    t_out: usize,
}

impl Geometry {
    /// Tap `j` reads `x[t + shift]` for output `t`; the outputs where it reads inside `x`.
    fn tap(&self, j: usize) -> (isize, std::ops::Range<usize>) {
        let shift = (j * self.dilation) as isize - self.pad as isize;
        let lo = (-shift).max(0) as usize;
        let hi = (self.t as isize - shift).clamp(0, self.t_out as isize) as usize;
        (shift, lo..hi.max(lo))
    }

    /// `f(row, weight index, output range, input offset of the range's start)` for every
    /// tap of every row.
    fn each(&self, mut f: impl FnMut(usize, usize, std::ops::Range<usize>, usize)) {
        for row in 0..self.rows {
            let ch = row % self.c;
            for j in 0..self.k {
                let (shift, r) = self.tap(j);
                if r.is_empty() {
                    continue; // the tap reads only padding
                }
                let from = (r.start as isize + shift) as usize;
                f(row, ch * self.k + j, r, from);
            }
        }
    }
}

/// `y [N, C, T + pads.0 + pads.1 - dilation (K - 1)]` from `x [N, C, T]` and `w [C, 1, K]`:
/// `y[n, c, t] = sum_j w[c, 0, j] * x[n, c, t + j dilation - pads.0]`, zero outside `x`.
/// `None` when the op does not apply (a device or dtype where [`super::applies`] says no,
/// shapes that are not a depthwise conv) and callers decompose.
///
/// Backward: `dx[n, c, t + j dilation - pads.0] += w[c, 0, j] * dy[n, c, t]`;
/// `dw[c, 0, j] = sum_{n, t} dy[n, c, t] * x[n, c, t + j dilation - pads.0]`.
pub fn depthwise_conv1d(
    x: &Tensor,
    w: &Tensor,
    pads: (usize, usize),
    dilation: usize,
) -> Result<Option<Tensor>> {
    let (&[n, c, t], &[wc, 1, k]) = (x.dims(), w.dims()) else {
        return Ok(None);
    };
    let span = dilation * (k.max(1) - 1);
    if !super::applies(x.device(), x.dtype(), t)
        || w.dtype() != x.dtype()
        || wc != c
        || t + pads.0 + pads.1 <= span
    {
        return Ok(None);
    }
    let g = Geometry {
        rows: n * c,
        c,
        t,
        k,
        dilation,
        pad: pads.0,
        t_out: t + pads.0 + pads.1 - span,
    };
    Ok(Some(
        x.contiguous()?.apply_op2(&w.contiguous()?, Depthwise(g))?,
    ))
}

struct Depthwise(Geometry);

fn forward<T: Float>(x: &[T], w: &[T], g: Geometry) -> Vec<T> {
    let mut y = vec![T::default(); g.rows * g.t_out];
    g.each(|row, wi, r, from| {
        let a = w[wi];
        let ys = &mut y[row * g.t_out..][r.clone()];
        let xs = &x[row * g.t + from..][..r.len()];
        for (yv, &xv) in ys.iter_mut().zip(xs) {
            *yv += a * xv;
        }
    });
    y
}

cpu_op!(
    Depthwise,
    "depthwise-conv1d",
    forward,
    (x, w),
    |g, l| Shape::from((g.rows / g.c, g.c, g.t_out)),
    bwd = backward,
    cuda = cuda
);

impl Depthwise {
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(w, &GradX(self.0))?;
        let dw = x.apply_op2_no_bwd(&dy, &GradW(self.0))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `dx` `[N, C, T]` from `(dy, w)`.
struct GradX(Geometry);

fn grad_x<T: Float>(dy: &[T], w: &[T], g: Geometry) -> Vec<T> {
    let mut dx = vec![T::default(); g.rows * g.t];
    g.each(|row, wi, r, from| {
        let a = w[wi];
        let ds = &dy[row * g.t_out..][r.clone()];
        let xs = &mut dx[row * g.t + from..][..r.len()];
        for (xv, &d) in xs.iter_mut().zip(ds) {
            *xv += a * d;
        }
    });
    dx
}

cpu_op!(
    GradX,
    "depthwise-conv1d-grad-x",
    grad_x,
    (d, w),
    |g, l| Shape::from((g.rows / g.c, g.c, g.t)),
    cuda = cuda
);

/// `dw` `[C, 1, K]` from `(x, dy)`.
struct GradW(Geometry);

fn grad_w<T: Float>(x: &[T], dy: &[T], g: Geometry) -> Vec<T> {
    let mut dw = vec![T::default(); g.c * g.k];
    g.each(|row, wi, r, from| {
        let ds = &dy[row * g.t_out..][r.clone()];
        let xs = &x[row * g.t + from..][..r.len()];
        dw[wi] += sum(ds.len(), |i| xs[i] * ds[i]);
    });
    dw
}

cpu_op!(
    GradW,
    "depthwise-conv1d-grad-w",
    grad_w,
    (x, d),
    |g, l| Shape::from((g.c, 1, g.k)),
    cuda = cuda
);

#[cfg(feature = "cuda")]
mod on_cuda {
    use super::super::cuda::{self, DepthwiseArgs};
    use super::Geometry;
    use candle_core::cuda_backend::cudarc::driver::CudaView;
    use candle_core::{CudaDevice, CudaStorage, Result};

    fn args(g: Geometry) -> DepthwiseArgs {
        [g.rows, g.c, g.t, g.k, g.dilation, g.pad, g.t_out].map(|v| v as i64)
    }

    impl super::Depthwise {
        pub(super) fn cuda(
            &self,
            d: &CudaDevice,
            x: &CudaView<f32>,
            w: &CudaView<f32>,
        ) -> Result<CudaStorage> {
            cuda::depthwise(d, x, w, args(self.0))
        }
    }

    impl super::GradX {
        pub(super) fn cuda(
            &self,
            d: &CudaDevice,
            dy: &CudaView<f32>,
            w: &CudaView<f32>,
        ) -> Result<CudaStorage> {
            cuda::depthwise_grad_x(d, dy, w, args(self.0))
        }
    }

    impl super::GradW {
        pub(super) fn cuda(
            &self,
            d: &CudaDevice,
            x: &CudaView<f32>,
            dy: &CudaView<f32>,
        ) -> Result<CudaStorage> {
            cuda::depthwise_grad_w(d, x, dy, args(self.0))
        }
    }
}
