//! PReLU (ONNX `PRelu`; He et al. 2015, eq. 1): `y = x` where `x > 0`, else `slope * x`, as
//! one fused CPU op with its backward.
use super::{float_dispatch, slice, Float};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// The input viewed as `[outer, C, inner]` and the slope as `[C]` (C = 1: one slope).
#[derive(Clone, Copy, Debug)]
struct Geometry {
    outer: usize,
    c: usize,
    inner: usize,
}

impl Geometry {
    /// Where `slope` (numpy-broadcast to `x`, right-aligned) varies along at most one axis.
    fn of(x: &[usize], slope: &[usize]) -> Option<Geometry> {
        let off = x.len().checked_sub(slope.len())?;
        let mut varying = slope.iter().enumerate().filter(|(_, &d)| d > 1);
        let g = match (varying.next(), varying.next()) {
            (None, _) => Geometry {
                outer: 1,
                c: 1,
                inner: x.iter().product(),
            },
            (Some((i, &d)), None) if x[off + i] == d => Geometry {
                outer: x[..off + i].iter().product(),
                c: d,
                inner: x[off + i + 1..].iter().product(),
            },
            _ => return None,
        };
        Some(g)
    }

    /// `f(slope index, run)` over the input's runs of `inner` elements sharing a slope.
    fn runs(&self, mut f: impl FnMut(usize, std::ops::Range<usize>)) {
        for o in 0..self.outer {
            for c in 0..self.c {
                let start = (o * self.c + c) * self.inner;
                f(c, start..start + self.inner);
            }
        }
    }
}

/// PReLU of `x` (any shape) with `slope` broadcastable to it; `None` when the op does not
/// apply (a device other than the CPU, a dtype other than f32/f64, or a slope that varies
/// along more than one axis), and callers decompose.
///
/// Backward: `dx = dy` where `x > 0`, else `slope * dy`; `dslope[c] = sum(dy * x)` over the
/// entries of channel `c` where `x <= 0`.
pub fn prelu(x: &Tensor, slope: &Tensor) -> Result<Option<Tensor>> {
    let float = matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64);
    let Some(g) = Geometry::of(x.dims(), slope.dims()) else {
        return Ok(None);
    };
    if !x.device().is_cpu() || !float || slope.dtype() != x.dtype() {
        return Ok(None);
    }
    let slope_c = slope.contiguous()?;
    Ok(Some(x.contiguous()?.apply_op2(&slope_c, PRelu(g))?))
}

struct PRelu(Geometry);

fn forward<T: Float>(x: &[T], s: &[T], g: Geometry) -> Vec<T> {
    let zero = T::default();
    let mut y = Vec::with_capacity(x.len());
    g.runs(|c, r| {
        let a = s[c];
        y.extend(x[r].iter().map(|&v| if v > zero { v } else { a * v }));
    });
    y
}

impl CustomOp2 for PRelu {
    fn name(&self) -> &'static str {
        "prelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = float_dispatch!(self.name(), (s1, s2), |x, s| forward(
            slice(x, l1, "prelu")?,
            slice(s, l2, "prelu")?,
            self.0
        ));
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        slope: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = x.apply_op3_no_bwd(slope, &dy, &GradX(self.0))?;
        let ds = x
            .apply_op2_no_bwd(&dy, &GradSlope(self.0))?
            .reshape(slope.shape())?;
        Ok((Some(dx), Some(ds)))
    }
}

/// `dx` from `(x, slope, dy)`.
struct GradX(Geometry);

fn grad_x<T: Float>(x: &[T], s: &[T], dy: &[T], g: Geometry) -> Vec<T> {
    let zero = T::default();
    let mut dx = Vec::with_capacity(x.len());
    g.runs(|c, r| {
        let a = s[c];
        dx.extend(
            x[r.clone()]
                .iter()
                .zip(&dy[r])
                .map(|(&v, &d)| if v > zero { d } else { a * d }),
        );
    });
    dx
}

impl CustomOp3 for GradX {
    fn name(&self) -> &'static str {
        "prelu-grad-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = self.name();
        let dx = float_dispatch!(n, (s1, s2, s3), |x, s, d| grad_x(
            slice(x, l1, n)?,
            slice(s, l2, n)?,
            slice(d, l3, n)?,
            self.0
        ));
        Ok((dx, l1.shape().clone()))
    }
}

/// `dslope` `[C]` from `(x, dy)`.
struct GradSlope(Geometry);

fn grad_slope<T: Float>(x: &[T], dy: &[T], g: Geometry) -> Vec<T> {
    let zero = T::default();
    let mut ds = vec![zero; g.c];
    g.runs(|c, r| {
        let mut acc = zero;
        for (&v, &d) in x[r.clone()].iter().zip(&dy[r]) {
            if v <= zero {
                acc += v * d;
            }
        }
        ds[c] += acc;
    });
    ds
}

impl CustomOp2 for GradSlope {
    fn name(&self) -> &'static str {
        "prelu-grad-slope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = self.name();
        let ds = float_dispatch!(n, (s1, s2), |x, d| grad_slope(
            slice(x, l1, n)?,
            slice(d, l2, n)?,
            self.0
        ));
        Ok((ds, Shape::from(self.0.c)))
    }
}
