//! Normalisation over a trailing block of axes, `y = (x - mean) / sqrt(var + eps)` with the
//! population variance, as one fused CPU op with its backward: the canonical form of
//! GroupNorm(1), LayerNormalization and gLN (Luo & Mesgarani 2019, eq. 13, before its
//! affine) that [`crate::learn::fuse`] finds.
use super::{cpu_op, slice, Float};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

#[derive(Clone, Copy, Debug)]
struct Geometry {
    /// Entries of each row normalised on its own (rows are contiguous).
    len: usize,
    eps: f64,
}

/// `x` normalised over its axes `from..` (each sample's statistics over those axes, kept
/// in f64). `None` when the op does not apply (not on the CPU, not f32/f64, `from` not in
/// `1..rank`) and callers decompose.
///
/// Backward (per row of `n` entries, `r = sqrt(var + eps)`):
/// `dx = (dy - mean(dy) - y * mean(dy * y)) / r`.
pub fn normalize(x: &Tensor, from: usize, eps: f64) -> Result<Option<Tensor>> {
    let float = matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64);
    if !x.device().is_cpu() || !float || from == 0 || from >= x.rank() {
        return Ok(None);
    }
    let len: usize = x.dims()[from..].iter().product();
    let g = Geometry { len, eps };
    Ok(Some(x.contiguous()?.apply_op1(Normalize(g))?))
}

/// `sum f(i)` over `0..n` in f64, in eight interleaved partial sums (which vectorise).
fn sum(n: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let whole = n / 8 * 8;
    for i in (0..whole).step_by(8) {
        for (j, a) in acc.iter_mut().enumerate() {
            *a += f(i + j);
        }
    }
    acc.iter().sum::<f64>() + (whole..n).map(f).sum::<f64>()
}

/// Mean and `1 / sqrt(var + eps)` of one row.
fn stats<T: Float>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let mean = sum(x.len(), |i| x[i].to_f64()) / n;
    let var = sum(x.len(), |i| {
        let d = x[i].to_f64() - mean;
        d * d
    }) / n;
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

cpu_op!(GradX, "normalize-grad-x", grad_x, (x, y, d), |g, l| l
    .shape()
    .clone());
