//! Normalisation over a trailing block of axes, `y = (x - mean) / sqrt(var + eps)` with the
//! population variance, as one fused CPU op with its backward: the canonical form of
//! GroupNorm(1), LayerNormalization and gLN (Luo & Mesgarani 2019, eq. 13, before its
//! affine) that [`crate::learn::fuse`] finds; and the same followed by its per-channel
//! affine map (gamma, beta) as one op.
use super::{channel_params, cpu_op, slice, split_grads, sum, Float, Runs};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

#[derive(Clone, Copy, Debug)]
struct Geometry {
    /// Entries of each row normalised on its own (rows are contiguous).
    len: usize,
    eps: f64,
}

/// `x` normalised over its axes `from..` (each sample's statistics over those axes, kept
/// in f64). `None` when the op does not apply (a device or dtype where [`super::applies`]
/// says no, `from` not in `1..rank`) and callers decompose.
///
/// Backward (per row of `n` entries, `r = sqrt(var + eps)`):
/// `dx = (dy - mean(dy) - y * mean(dy * y)) / r`.
pub fn normalize(x: &Tensor, from: usize, eps: f64) -> Result<Option<Tensor>> {
    if !super::applies(x.device(), x.dtype(), usize::MAX) || from == 0 || from >= x.rank() {
        return Ok(None);
    }
    let len: usize = x.dims()[from..].iter().product();
    let g = Geometry { len, eps };
    Ok(Some(x.contiguous()?.apply_op1(Normalize(g))?))
}

/// Mean and `1 / sqrt(var + eps)` of one row, in one pass: sums of `x` and `x^2` in f64
/// (eight interleaved partial sums each, which vectorise); the variance `E[x^2] - mean^2`
/// loses about `log10(mean^2 / var)` of f64's 16 digits.
fn stats<T: Float>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let (mut s, mut q) = ([0f64; 8], [0f64; 8]);
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            let v = c[j].to_f64();
            s[j] += v;
            q[j] += v * v;
        }
    }
    let (mut s, mut q) = (s.iter().sum::<f64>(), q.iter().sum::<f64>());
    for v in rest {
        let v = v.to_f64();
        s += v;
        q += v * v;
    }
    let mean = s / n;
    let var = (q / n - mean * mean).max(0.0);
    (mean, 1.0 / (var + eps).sqrt())
}

struct Normalize(Geometry);

fn forward<T: Float>(x: &[T], g: Geometry) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(g.len) {
        let (mean, inv) = stats(row, g.eps);
        let (m, s) = (T::from_f64(-mean), T::from_f64(inv));
        y.extend(row.iter().map(|&v| (v + m) * s));
    }
    y
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "normalize"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = self.name();
        let y = match s1 {
            CpuStorage::F32(x) => CpuStorage::F32(forward(slice(x, l1, n)?, self.0)),
            CpuStorage::F64(x) => CpuStorage::F64(forward(slice(x, l1, n)?, self.0)),
            _ => candle_core::bail!("{n}: f32 or f64 input"),
        };
        Ok((y, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let xv = super::cuda::view(x, l, "normalize")?;
        let y = super::cuda::normalize(&x.device, &xv, self.0.len, self.0.eps, None)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        Ok(Some(x.apply_op3_no_bwd(y, &dy, &GradX(self.0))?))
    }
}

/// `dx` from `(x, y, dy)`.
struct GradX(Geometry);

fn grad_x<T: Float>(x: &[T], y: &[T], dy: &[T], g: Geometry) -> Vec<T> {
    let mut dx = Vec::with_capacity(x.len());
    let rows = x.chunks(g.len).zip(y.chunks(g.len)).zip(dy.chunks(g.len));
    for ((xr, yr), dr) in rows {
        let (_, inv) = stats(xr, g.eps);
        let n = g.len.max(1) as f64;
        let sd = sum(dr.len(), |i| dr[i].to_f64());
        let sdy = sum(dr.len(), |i| (dr[i] * yr[i]).to_f64());
        let (a, b, s) = (
            T::from_f64(-sd / n),
            T::from_f64(-sdy / n),
            T::from_f64(inv),
        );
        dx.extend(yr.iter().zip(dr).map(|(&yv, &d)| (d + a + b * yv) * s));
    }
    dx
}

cpu_op!(
    GradX,
    "normalize-grad-x",
    grad_x,
    (x, y, d),
    |g, l| l.shape().clone(),
    cuda = cuda
);

/// Where a per-channel affine map sits in each normalised row: the row viewed as
/// `[mid, C, inner]` runs.
#[derive(Clone, Copy, Debug)]
struct AffineGeometry {
    norm: Geometry,
    row: Runs,
}

/// `normalize(x, from, eps) * scale + bias` with `scale` and `bias` (`C` entries each, any
/// shape) along `x`'s axis `axis >= from`: a norm and its gamma and beta (LayerNorm,
/// GroupNorm(1), gLN: Luo & Mesgarani 2019, eq. 13) as one op, which saves the normalised
/// intermediate and its gradient. A missing bias is zero. `None` where [`normalize`] would
/// decline, or for an axis outside the normalised block or parameters that do not match.
///
/// Backward (per row, `n = (x - mean) / r`, `r = sqrt(var + eps)`, `dn = dy * scale[c]`):
/// `dx = (dn - mean(dn) - n * mean(dn * n)) / r`, `dscale[c] = sum(dy * n)`,
/// `dbias[c] = sum(dy)`.
pub fn normalize_affine(
    x: &Tensor,
    from: usize,
    eps: f64,
    scale: &Tensor,
    bias: Option<&Tensor>,
    axis: usize,
) -> Result<Option<Tensor>> {
    if from == 0 || axis < from || axis >= x.rank() {
        return Ok(None);
    }
    let Some((_, scale, bias)) = channel_params(x, axis, scale, bias)? else {
        return Ok(None);
    };
    let d = x.dims();
    let g = AffineGeometry {
        norm: Geometry {
            len: d[from..].iter().product(),
            eps,
        },
        row: Runs::around(&d[from..], axis - from),
    };
    let y = x
        .contiguous()?
        .apply_op3(&scale, &bias, NormalizeAffine(g))?;
    Ok(Some(y))
}

struct NormalizeAffine(AffineGeometry);

fn affine_forward<T: Float>(x: &[T], s: &[T], b: &[T], g: AffineGeometry) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(g.norm.len) {
        let (mean, inv) = stats(row, g.norm.eps);
        let m = T::from_f64(-mean);
        g.row.each(|c, r| {
            let (a, o) = (T::from_f64(inv * s[c].to_f64()), b[c]);
            y.extend(row[r].iter().map(|&v| (v + m) * a + o));
        });
    }
    y
}

cpu_op!(
    NormalizeAffine,
    "normalize-affine",
    affine_forward,
    (x, s, b),
    |g, l| l.shape().clone(),
    bwd = backward,
    cuda = cuda
);

impl NormalizeAffine {
    #[allow(clippy::type_complexity)]
    fn backward(
        &self,
        x: &Tensor,
        scale: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.0;
        // one pass for the sums both gradients need, one for dx: [dx; dscale; dbias]
        let out = x.apply_op3_no_bwd(&dy.contiguous()?, scale, &AffineGrad(g))?;
        let (dx, p) = split_grads(&out, x, &[scale, bias])?;
        Ok((Some(dx), Some(p[0].clone()), Some(p[1].clone())))
    }
}

/// `[dx (flattened); dscale; dbias]` from `(x, dy, scale)`.
struct AffineGrad(AffineGeometry);

fn affine_grad<T: Float>(x: &[T], dy: &[T], s: &[T], g: AffineGeometry) -> Vec<T> {
    let mut out = Vec::with_capacity(x.len() + 2 * g.row.c);
    let (mut ds, mut db) = (vec![0f64; g.row.c], vec![0f64; g.row.c]);
    let n = g.norm.len.max(1) as f64;
    for (xr, dr) in x.chunks(g.norm.len).zip(dy.chunks(g.norm.len)) {
        let (mean, inv) = stats(xr, g.norm.eps);
        // per channel: sum(dy), sum(dy * nx) with nx = (x - mean) * inv; then over the row
        // S1 = sum(dn), S2 = sum(dn * nx) with dn = dy * s[c]
        let (mut s1, mut s2) = (0f64, 0f64);
        g.row.each(|c, r| {
            let (xs, d) = (&xr[r.clone()], &dr[r]);
            let sd = sum(d.len(), |i| d[i].to_f64());
            let sdn = (sum(d.len(), |i| d[i].to_f64() * xs[i].to_f64()) - mean * sd) * inv;
            let sc = s[c].to_f64();
            (s1, s2) = (s1 + sc * sd, s2 + sc * sdn);
            (ds[c], db[c]) = (ds[c] + sdn, db[c] + sd);
        });
        // dx = inv * (dn - S1/n - nx * S2/n)
        let (m, b, o) = (
            T::from_f64(-mean),
            T::from_f64(-s2 / n * inv * inv),
            T::from_f64(-s1 / n * inv),
        );
        g.row.each(|c, r| {
            let a = T::from_f64(inv * s[c].to_f64());
            let (xs, d) = (&xr[r.clone()], &dr[r]);
            out.extend(xs.iter().zip(d).map(|(&v, &d)| d * a + (v + m) * b + o));
        });
    }
    out.extend(ds.into_iter().chain(db).map(T::from_f64));
    out
}

cpu_op!(
    AffineGrad,
    "normalize-affine-grad",
    affine_grad,
    (x, d, s),
    |g, l| Shape::from(l.shape().elem_count() + 2 * g.row.c),
    cuda = cuda
);

#[cfg(feature = "cuda")]
mod on_cuda {
    use super::super::cuda;
    use candle_core::cuda_backend::cudarc::driver::CudaView;
    use candle_core::{CudaDevice, CudaStorage, Result};

    impl super::GradX {
        pub(super) fn cuda(
            &self,
            d: &CudaDevice,
            x: &CudaView<f32>,
            y: &CudaView<f32>,
            dy: &CudaView<f32>,
        ) -> Result<CudaStorage> {
            cuda::normalize_grad(d, x, y, dy, self.0.len, self.0.eps)
        }
    }

    impl super::NormalizeAffine {
        pub(super) fn cuda(
            &self,
            d: &CudaDevice,
            x: &CudaView<f32>,
            s: &CudaView<f32>,
            b: &CudaView<f32>,
        ) -> Result<CudaStorage> {
            let g = self.0;
            cuda::normalize(d, x, g.norm.len, g.norm.eps, Some((s, b, g.row)))
        }
    }

    impl super::AffineGrad {
        pub(super) fn cuda(
            &self,
            d: &CudaDevice,
            x: &CudaView<f32>,
            dy: &CudaView<f32>,
            s: &CudaView<f32>,
        ) -> Result<CudaStorage> {
            let g = self.0;
            cuda::normalize_affine_grad(d, x, dy, s, g.norm.len, g.norm.eps, g.row)
        }
    }
}
