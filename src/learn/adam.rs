//! AdamW (Loshchilov & Hutter 2019, Algorithm 2; Kingma & Ba 2015, Algorithm 1 with decoupled
//! weight decay) over Candle `Var`s, with each tensor's update fused into two in-place
//! passes: the moments `[m; v]` from the gradient, then the weight from the moments.
//!
//! candle-nn's AdamW computes the same update in some fifteen elementary ops per tensor;
//! on a GPU each is a kernel launch, and a model of a few hundred parameter tensors (the
//! real Conv-TasNet has 354) spends more of a training step launching the optimiser than
//! computing its gradients. Here: two passes per tensor on the CPU (f32); when every
//! tensor is f32 on one CUDA device, the whole step is one launch (`adam_multi` in
//! `kernels.cu`, the multi-tensor form PyTorch calls `foreach`/`fused`), and so is the
//! gradient norm; anything else takes the decomposed form.
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
        #[cfg(feature = "cuda")]
        if let Some(dev) = one_cuda_device(&self.vars) {
            let p = [c.beta1, c.beta2, scale, c.lr, c.weight_decay, c1, c2, c.eps];
            return self.step_multi(&dev, grads, p.map(|v| v as f32));
        }
        for (var, mv) in self.vars.iter().zip(&self.moments) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let w = var.as_tensor();
            if w.dtype() == DType::F32 && w.device().is_cpu() {
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

    /// The step of [`Adam::step`] on one CUDA device, every tensor in one launch.
    #[cfg(feature = "cuda")]
    fn step_multi(
        &self,
        dev: &candle_core::CudaDevice,
        grads: &GradStore,
        p: [f32; 8],
    ) -> Result<()> {
        use crate::ops::kernels::cuda;
        let (mut w, mut g, mut mv, mut lens, mut live) = (vec![], vec![], vec![], vec![], vec![]);
        for (var, m) in self.vars.iter().zip(&self.moments) {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let grad = grad.contiguous()?;
            w.push(cuda::address(var.as_tensor())?);
            g.push(cuda::address(&grad)?);
            mv.push(cuda::address(m)?);
            lens.push(var.elem_count());
            live.push(grad);
        }
        // SAFETY: the weights and moments are contiguous f32 buffers of `dev` owned by
        // `self`, the gradients are kept alive by `live` until the launch is queued (one
        // stream: it runs before any later reuse of their memory)
        unsafe { cuda::adam_multi(dev, &w, &g, &mv, &lens, p) }
    }
}

/// The CUDA device of `vars` when all are f32 on that one device (the multi-tensor path).
#[cfg(feature = "cuda")]
fn one_cuda_device(vars: &[Var]) -> Option<candle_core::CudaDevice> {
    let first = vars.first()?.device();
    let candle_core::Device::Cuda(dev) = first else {
        return None;
    };
    let one = vars
        .iter()
        .all(|v| v.dtype() == DType::F32 && v.device().same_device(first));
    one.then(|| dev.clone())
}

/// The global L2 norm of the gradients of `vars` in `grads` (NaN when one is not finite),
/// reduced on their device and read once.
///
/// Errors: a gradient that cannot be read.
pub fn grad_norm(vars: &[Var], grads: &GradStore) -> Result<f64> {
    #[cfg(feature = "cuda")]
    if let Some(dev) = one_cuda_device(vars) {
        use crate::ops::kernels::cuda;
        let live = vars
            .iter()
            .filter_map(|v| grads.get(v.as_tensor()))
            .map(|g| g.contiguous())
            .collect::<Result<Vec<_>>>()?;
        let g = live.iter().map(cuda::address).collect::<Result<Vec<_>>>()?;
        let lens: Vec<usize> = live.iter().map(|g| g.elem_count()).collect();
        // SAFETY: contiguous f32 gradients on `dev`, alive (`live`) until the sum is read
        let sum = unsafe { cuda::sq_sum_multi(&dev, &g, &lens) }?;
        return Ok(sum.sqrt());
    }
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

    /// Five steps of `sum_i sum(w_i^2 r_i)` over tensors of `sizes` on `device`: the
    /// weights, and the gradient norm of the first step.
    fn train_many(sizes: &[usize], device: &Device) -> (Vec<Vec<f32>>, f64) {
        let vars: Vec<Var> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                Var::from_tensor(&randn(n, 10 + i as u64).to_device(device).unwrap()).unwrap()
            })
            .collect();
        let rs: Vec<Tensor> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| randn(n, 20 + i as u64).to_device(device).unwrap())
            .collect();
        let mut opt = Adam::new(vars.clone(), AdamConfig::lr(1e-2)).unwrap();
        let mut first = None;
        for _ in 0..5 {
            let mut loss = Tensor::zeros((), DType::F32, device).unwrap();
            for (v, r) in vars.iter().zip(&rs) {
                let term = (v.as_tensor().sqr().unwrap() * r)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                loss = (loss + term).unwrap();
            }
            let g = loss.backward().unwrap();
            let norm = grad_norm(&vars, &g).unwrap();
            first.get_or_insert(norm);
            opt.step(&g, 0.5).unwrap();
        }
        let w = vars
            .iter()
            .map(|v| {
                v.as_tensor()
                    .to_device(&Device::Cpu)
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect();
        (w, first.unwrap())
    }

    /// AdamW on CUDA (the multi-tensor launch: several tensors, chunks, a one-entry
    /// tensor) against the CPU's per-tensor passes, and its gradient norm against the CPU's.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_multi_tensor_step_and_norm_match_the_cpu() {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("no CUDA GPU: multi-tensor AdamW parity not run");
            return;
        };
        let sizes = [5000, 1, 20_000, 4096];
        let (cpu, n_cpu) = train_many(&sizes, &Device::Cpu);
        let (cuda, n_cuda) = train_many(&sizes, &gpu);
        let e = cpu
            .iter()
            .zip(&cuda)
            .fold(0f32, |m, (a, b)| m.max(max_diff(a, b)));
        assert!(
            e < 1e-5,
            "multi-tensor AdamW on CUDA differs from the CPU by {e}"
        );
        assert!(
            (n_cpu - n_cuda).abs() < 1e-4 * n_cpu,
            "norms {n_cpu} and {n_cuda}"
        );
        eprintln!("adam multi: CPU and CUDA agree ({e}), norm {n_cpu} / {n_cuda}");
    }

    /// The first gradient norm over several tensors is that of `2 w r`, and the weights move.
    #[test]
    fn many_tensors_train_on_the_cpu() {
        let sizes = [300, 1, 70];
        let (w, n) = train_many(&sizes, &Device::Cpu);
        let mut sq = 0f64;
        for (i, &k) in sizes.iter().enumerate() {
            let (w0, r) = (randn(k, 10 + i as u64), randn(k, 20 + i as u64));
            let (w0, r) = (w0.to_vec1::<f32>().unwrap(), r.to_vec1::<f32>().unwrap());
            sq += w0
                .iter()
                .zip(&r)
                .map(|(a, b)| (2.0 * a * b) as f64)
                .map(|g| g * g)
                .sum::<f64>();
        }
        assert!(
            (n - sq.sqrt()).abs() < 1e-5 * sq.sqrt(),
            "norm {n}, expected {}",
            sq.sqrt()
        );
        let start = randn(300, 10).to_vec1::<f32>().unwrap();
        assert!(max_diff(&w[0], &start) > 1e-3, "the weights did not move");
    }
}
