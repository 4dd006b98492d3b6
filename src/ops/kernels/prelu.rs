//! PReLU (ONNX `PRelu`; He et al. 2015, eq. 1): `y = x` where `x > 0`, else `slope * x`, as
//! one fused CPU op with its backward.
use super::{cpu_op, split_grads, sum, Float, Runs};
use candle_core::{Result, Shape, Tensor};

type Geometry = Runs;

/// `x` as runs sharing a slope, where `slope` (numpy-broadcast to `x`, right-aligned)
/// varies along at most one axis.
fn geometry(x: &[usize], slope: &[usize]) -> Option<Geometry> {
    let off = x.len().checked_sub(slope.len())?;
    let mut varying = slope.iter().enumerate().filter(|(_, &d)| d > 1);
    let g = match (varying.next(), varying.next()) {
        (None, _) => Runs {
            outer: 1,
            c: 1,
            inner: x.iter().product(),
        },
        (Some((i, &d)), None) if x[off + i] == d => Runs::around(x, off + i),
        _ => return None,
    };
    Some(g)
}

/// PReLU of `x` (any shape) with `slope` broadcastable to it; `None` when the op does not
/// apply (a device or dtype where [`super::applies`] says no, or a slope that varies along
/// more than one axis), and callers decompose.
///
/// Backward: `dx = dy` where `x > 0`, else `slope * dy`; `dslope[c] = sum(dy * x)` over the
/// entries of channel `c` where `x <= 0`.
pub fn prelu(x: &Tensor, slope: &Tensor) -> Result<Option<Tensor>> {
    let Some(g) = geometry(x.dims(), slope.dims()) else {
        return Ok(None);
    };
    if !super::applies(x.device(), x.dtype(), g.inner) || slope.dtype() != x.dtype() {
        return Ok(None);
    }
    let slope_c = slope.contiguous()?;
    Ok(Some(x.contiguous()?.apply_op2(&slope_c, PRelu(g))?))
}

struct PRelu(Geometry);

fn forward<T: Float>(x: &[T], s: &[T], g: Geometry) -> Vec<T> {
    let zero = T::default();
    let mut y = Vec::with_capacity(x.len());
    g.each(|c, r| {
        let a = s[c];
        y.extend(x[r].iter().map(|&v| if v > zero { v } else { a * v }));
    });
    y
}

cpu_op!(
    PRelu,
    "prelu",
    forward,
    (x, s),
    |g, l| l.shape().clone(),
    bwd = backward,
    cuda = cuda
);

impl PRelu {
    fn backward(
        &self,
        x: &Tensor,
        slope: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // one pass over x and dy: [dx; dslope]
        let out = x.apply_op3_no_bwd(slope, &dy.contiguous()?, &Grad(self.0))?;
        let (dx, p) = split_grads(&out, x, &[slope])?;
        Ok((Some(dx), Some(p[0].clone())))
    }
}

/// `[dx (flattened); dslope]` from `(x, slope, dy)`.
struct Grad(Geometry);

fn grad<T: Float>(x: &[T], s: &[T], dy: &[T], g: Geometry) -> Vec<T> {
    let zero = T::default();
    let mut out = Vec::with_capacity(x.len() + g.c);
    let mut ds = vec![zero; g.c];
    g.each(|c, r| {
        let a = s[c];
        let (xs, d) = (&x[r.clone()], &dy[r]);
        out.extend(
            xs.iter()
                .zip(d)
                .map(|(&v, &d)| if v > zero { d } else { a * d }),
        );
        ds[c] += sum(xs.len(), |i| if xs[i] > zero { zero } else { xs[i] * d[i] });
    });
    out.extend(ds);
    out
}

cpu_op!(
    Grad,
    "prelu-grad",
    grad,
    (x, s, d),
    |g, l| Shape::from(l.shape().elem_count() + g.c),
    cuda = cuda
);

#[cfg(feature = "cuda")]
mod on_cuda {
    use super::super::cuda::{channel_map, channel_map_grad};
    use candle_core::cuda_backend::cudarc::driver::CudaView;
    use candle_core::{CudaDevice, CudaStorage, Result};

    impl super::PRelu {
        pub(super) fn cuda(
            &self,
            d: &CudaDevice,
            x: &CudaView<f32>,
            s: &CudaView<f32>,
        ) -> Result<CudaStorage> {
            channel_map(d, x, s, s, self.0, 0)
        }
    }

    impl super::Grad {
        pub(super) fn cuda(
            &self,
            d: &CudaDevice,
            x: &CudaView<f32>,
            s: &CudaView<f32>,
            dy: &CudaView<f32>,
        ) -> Result<CudaStorage> {
            channel_map_grad(d, x, dy, s, self.0, 0)
        }
    }
}
