//! AdamW (Loshchilov & Hutter 2019, Algorithm 2; Kingma & Ba 2015, Algorithm 1 with decoupled
//! weight decay) over Candle `Var`s, with each tensor's update fused into two in-place
//! passes: the moments `[m; v]` from the gradient, then the weight from the moments.
//!
//! candle-nn's AdamW computes the same update in some fifteen elementary ops per tensor;
//! on a GPU each is a kernel launch, and a model of a few hundred parameter tensors (the
//! real Conv-TasNet has 354) spends more of a training step launching the optimiser than
//! computing its gradients. Here: two passes per tensor on the CPU (f32) and two kernel
//! launches on CUDA (`kernels.cu`); other dtypes take the decomposed form.
//!
//! Gradient clipping is folded in: [`Adam::step`] takes the gradients' scale, which
//! [`grad_norm`] (one device-to-host copy for all tensors) lets callers compute.
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, Var};

/// AdamW's settings (candle-nn's defaults: betas 0.9 and 0.999, eps 1e-8).
#[derive(Clone, Copy, Debug)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamConfig {
    /// Step size `lr`, no weight decay, the default betas and eps.
    pub fn lr(lr: f64) -> AdamConfig {
        AdamConfig {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The optimiser: per `Var`, its moments `[m; v]` as one `[2 n]` tensor on its device.
pub struct Adam {
    vars: Vec<Var>,
    moments: Vec<Tensor>,
    cfg: AdamConfig,
    t: i32,
}

impl Adam {
    /// Zero moments for `vars`.
    ///
    /// Errors: a tensor that cannot be allocated.
    pub fn new(vars: Vec<Var>, cfg: AdamConfig) -> Result<Adam> {
        let moments = vars
            .iter()
            .map(|v| Tensor::zeros(2 * v.elem_count(), v.dtype(), v.device()))
            .collect::<Result<_>>()?;
        Ok(Adam {
            vars,
            moments,
            cfg,
            t: 0,
        })
    }

    pub fn learning_rate(&self) -> f64 {
        self.cfg.lr
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// One step on the gradients in `grads` times `scale` (1: as they are); a `Var`
    /// without a gradient is left as it is.
    ///
    /// Errors: a gradient of another shape or device than its `Var`.
    pub fn step(&mut self, grads: &GradStore, scale: f64) -> Result<()> {
        self.t += 1;
        let c = &self.cfg;
        let c1 = 1.0 / (1.0 - c.beta1.powi(self.t));
        let c2 = 1.0 / (1.0 - c.beta2.powi(self.t));
        for (var, mv) in self.vars.iter().zip(&self.moments) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let w = var.as_tensor();
            if w.dtype() == DType::F32 && (w.device().is_cpu() || w.device().is_cuda()) {
                let g = g.contiguous()?;
                mv.inplace_op2(&g, &Moments([c.beta1, c.beta2, scale].map(|v| v as f32)))?;
                let p = [c.lr, c.weight_decay, c1, c2, c.eps].map(|v| v as f32);
                w.inplace_op2(mv, &Update(p))?;
            } else {
                // the decomposed form (candle-nn's AdamW)
                let g = (g * scale)?;
                let n = w.elem_count();
                let (m, v) = (mv.narrow(0, 0, n)?, mv.narrow(0, n, n)?);
                let m = ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                let step = ((&m * c1)? / ((&v * c2)?.sqrt()? + c.eps)?)?;
                let next = ((w * (1.0 - c.lr * c.weight_decay))? - (step * c.lr)?)?;
                let m = m.reshape(n)?;
                let v = v.reshape(n)?;
                mv.slice_set(&m, 0, 0)?;
                mv.slice_set(&v, 0, n)?;
                var.set(&next)?;
            }
        }
        Ok(())
    }
}

/// The global L2 norm of the gradients of `vars` in `grads` (NaN when one is not finite),
/// reduced on their device and read once.
///
/// Errors: a gradient that cannot be read.
pub fn grad_norm(vars: &[Var], grads: &GradStore) -> Result<f64> {
    let sums = vars
        .iter()
        .filter_map(|v| grads.get(v.as_tensor()))
        .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all())
        .collect::<Result<Vec<_>>>()?;
    if sums.is_empty() {
        return Ok(0.0);
    }
    let total = Tensor::stack(&sums, 0)?.to_dtype(DType::F64)?.sum_all()?;
    Ok(total.to_scalar::<f64>()?.sqrt())
}

/// `[m; v] <- [b1 m + (1 - b1) g'; b2 v + (1 - b2) g'^2]` with `g' = scale g`: `[b1, b2,
/// scale]`.
struct Moments([f32; 3]);

/// `w <- w (1 - lr wd) - lr (m c1) / (sqrt(v c2) + eps)`: `[lr, wd, c1, c2, eps]`.
struct Update([f32; 5]);

/// The f32 entries of a contiguous layout.
fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{op}: a contiguous f32 tensor"),
    }
}

fn f32s_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{op}: a contiguous f32 tensor"),
    }
}

impl InplaceOp2 for Moments {
    fn name(&self) -> &'static str {
        "adam-moments"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let [b1, b2, scale] = self.0;
        let g = f32s(s2, l2, self.name())?;
        let mv = f32s_mut(s1, l1, self.name())?;
        let (m, v) = mv.split_at_mut(g.len());
        for ((m, v), &g) in m.iter_mut().zip(v).zip(g) {
            let d = scale * g;
            *m = b1 * *m + (1.0 - b1) * d;
            *v = b2 * *v + (1.0 - b2) * d * d;
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        use crate::ops::kernels::cuda;
        let [b1, b2, scale] = self.0;
        let dev = s1.device.clone();
        let g = cuda::view(s2, l2, self.name())?;
        let mut mv = cuda::view_mut(s1, l1, self.name())?;
        cuda::adam_moments(&dev, &mut mv, &g, b1, b2, scale)
    }
}

impl InplaceOp2 for Update {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let [lr, wd, c1, c2, eps] = self.0;
        let mv = f32s(s2, l2, self.name())?;
        let w = f32s_mut(s1, l1, self.name())?;
        let (m, v) = mv.split_at(w.len());
        for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
            *w = *w * (1.0 - lr * wd) - lr * (m * c1) / ((v * c2).sqrt() + eps);
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        use crate::ops::kernels::cuda;
        let dev = s1.device.clone();
        let mv = cuda::view(s2, l2, self.name())?;
        let mut w = cuda::view_mut(s1, l1, self.name())?;
        cuda::adam_update(&dev, &mut w, &mv, self.0)
    }
}

/// The fused update against the decomposed one, and on CUDA against the CPU (with the
/// `cuda` feature and a GPU).
#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn randn(n: usize, seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap()
    }

    /// Five steps of `sum(w^2 r)` from `w`, gradients scaled by 0.5, in `dtype` on `device`.
    fn train(w: &Tensor, r: &Tensor, device: &Device, dtype: DType) -> Vec<f32> {
        let v = Var::from_tensor(&w.to_device(device).unwrap().to_dtype(dtype).unwrap()).unwrap();
        let r = r.to_device(device).unwrap().to_dtype(dtype).unwrap();
        let mut opt = Adam::new(vec![v.clone()], AdamConfig::lr(1e-2)).unwrap();
        for _ in 0..5 {
            let loss = (v.as_tensor().sqr().unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            assert!(grad_norm(std::slice::from_ref(&v), &g).unwrap() > 0.0);
            opt.step(&g, 0.5).unwrap();
        }
        let out = v
            .as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap();
        out.to_vec1().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    #[test]
    fn fused_step_matches_the_decomposed_one() {
        let (w, r) = (randn(1000, 1), randn(1000, 2));
        let fused = train(&w, &r, &Device::Cpu, DType::F32);
        let decomposed = train(&w, &r, &Device::Cpu, DType::F64);
        let moved = max_diff(&fused, &w.to_vec1::<f32>().unwrap());
        assert!(moved > 1e-3, "the weights did not move ({moved})");
        let e = max_diff(&fused, &decomposed);
        assert!(e < 1e-5, "fused and decomposed AdamW differ by {e}");
    }

    #[test]
    fn grad_norm_is_the_global_l2_norm() {
        let a = Var::from_tensor(&randn(10, 3)).unwrap();
        let b = Var::from_tensor(&randn(7, 4)).unwrap();
        let loss = (a.as_tensor().sum_all().unwrap()
            + (b.as_tensor() * 3.0).unwrap().sum_all().unwrap())
        .unwrap();
        let g = loss.backward().unwrap();
        let n = grad_norm(&[a, b], &g).unwrap();
        assert!((n - (10.0f64 + 9.0 * 7.0).sqrt()).abs() < 1e-6, "norm {n}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_step_matches_the_cpu() {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("no CUDA GPU: AdamW CPU/CUDA parity not run");
            return;
        };
        let (w, r) = (randn(20_000, 5), randn(20_000, 6));
        let e = max_diff(
            &train(&w, &r, &Device::Cpu, DType::F32),
            &train(&w, &r, &gpu, DType::F32),
        );
        assert!(e < 1e-5, "AdamW on CPU and CUDA differ by {e}");
        eprintln!("adam: CPU and CUDA agree ({e})");
    }
}
