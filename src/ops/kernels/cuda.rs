//! The CUDA paths of the fused kernels: `kernels.cu` (compiled to PTX by build.rs) launched
//! on Candle's CUDA storages, f32 only. Each function here is the `cuda_fwd` of the CPU op
//! of the same name in its sibling file (which holds the math and the docs); the results
//! match the CPU's to f32 rounding (sums are accumulated in f64 on both).
//!
//! Reductions add block sums to f64 accumulators with `atomicAdd`, so their order, and the
//! last bits of a parameter gradient, can differ between runs on the GPU.
use super::Runs;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, Layout, Result};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
const MODULE: &str = "sepprune_kernels";
/// Threads per block and entries per reduction block (`BLOCK`, `CHUNK` in kernels.cu).
const BLOCK: u32 = 256;
const CHUNK: usize = 256 * 8;

/// The f32 entries a contiguous layout reads.
///
/// Errors: not f32, or not contiguous.
pub fn view<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, f32>> {
    let slice = s.as_cuda_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(slice.slice(a..b)),
        None => candle_core::bail!("{op}: input is not contiguous"),
    }
}

/// A grid-stride launch over `n` entries.
fn flat(n: usize) -> LaunchConfig {
    capped(n, 65_535 * 8)
}

/// A grid-stride launch over `n` entries with at most `max` blocks.
fn capped(n: usize, max: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, max);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The (run, chunk) grid of a reduction over `runs` runs of `len` entries.
fn runs(runs: usize, len: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (runs.max(1) as u32, len.div_ceil(CHUNK).max(1) as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launches kernel `name` with `args` (pushed in order) on `cfg`.
macro_rules! launch {
    ($dev:expr, $name:literal, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let f = $dev.get_or_load_custom_func($name, MODULE, PTX)?;
        let mut b = f.builder();
        // each argument bound first: a scalar's temporary lives until the launch
        $( let a = $arg; b.arg(a); )+
        // SAFETY: the arguments match the kernel's signature in kernels.cu (pointers to
        // buffers of the sizes it reads and writes, i64 for `long`, i32 for `int`)
        unsafe { b.launch($cfg) }.w()?;
    }};
}

fn wrap(dev: &CudaDevice, s: CudaSlice<f32>) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(s, dev.clone())
}

/// `n` uninitialised f32 entries (every kernel writing one writes all of them).
fn output(dev: &CudaDevice, n: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: written in full by the kernel launched next
    unsafe { dev.alloc::<f32>(n) }
}

/// f64 accumulators converted into `out[at..at + acc.len()]`.
fn finish(
    dev: &CudaDevice,
    acc: &CudaSlice<f64>,
    out: &mut CudaSlice<f32>,
    at: usize,
) -> Result<()> {
    let n = acc.len();
    let mut tail = out.slice_mut(at..at + n);
    launch!(dev, "f64_to_f32", flat(n), acc, &mut tail, &(n as i64));
    Ok(())
}

/// `channel_map` (mode 0: PReLU `y = x > 0 ? x : s x`; 1: `x s + b`; 2: `x + b`), over
/// `n` entries of runs `g`.
pub fn channel_map(
    dev: &CudaDevice,
    x: &CudaView<f32>,
    s: &CudaView<f32>,
    b: &CudaView<f32>,
    g: Runs,
    mode: i32,
) -> Result<CudaStorage> {
    let n = x.len();
    let mut y = output(dev, n)?;
    let (c, inner) = (g.c as i64, g.inner as i64);
    launch!(
        dev,
        "channel_map",
        flat(n),
        x,
        s,
        b,
        &mut y,
        &(n as i64),
        &c,
        &inner,
        &mode
    );
    Ok(wrap(dev, y))
}

/// `[dx; dparams]` of `channel_map` (mode 0: `[dx; dslope]`, 1: `[dx; dscale; dbias]`).
pub fn channel_map_grad(
    dev: &CudaDevice,
    x: &CudaView<f32>,
    dy: &CudaView<f32>,
    s: &CudaView<f32>,
    g: Runs,
    mode: i32,
) -> Result<CudaStorage> {
    let n = x.len();
    let params = if mode == 0 { g.c } else { 2 * g.c };
    let mut out = output(dev, n + params)?;
    let acc = dev.alloc_zeros::<f64>(params)?;
    {
        let mut dx = out.slice_mut(0..n);
        let (c, inner) = (g.c as i64, g.inner as i64);
        launch!(
            dev,
            "channel_map_grad",
            runs(g.outer * g.c, g.inner),
            x,
            dy,
            s,
            &mut dx,
            &acc,
            &c,
            &inner,
            &mode
        );
    }
    finish(dev, &acc, &mut out, n)?;
    Ok(wrap(dev, out))
}

/// A depthwise convolution's geometry as kernel arguments: rows, C, T, K, dilation, pad,
/// T_out.
pub type DepthwiseArgs = [i64; 7];

/// `y [rows, T_out]` of the depthwise convolution.
pub fn depthwise(
    dev: &CudaDevice,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    a: DepthwiseArgs,
) -> Result<CudaStorage> {
    let n = (a[0] * a[6]) as usize;
    let mut y = output(dev, n)?;
    let [rows, c, t, k, dil, pad, t_out] = a;
    launch!(
        dev,
        "depthwise_fwd",
        flat(n),
        x,
        w,
        &mut y,
        &rows,
        &c,
        &t,
        &k,
        &dil,
        &pad,
        &t_out
    );
    Ok(wrap(dev, y))
}

/// `dx [rows, T]` of the depthwise convolution from `dy`.
pub fn depthwise_grad_x(
    dev: &CudaDevice,
    dy: &CudaView<f32>,
    w: &CudaView<f32>,
    a: DepthwiseArgs,
) -> Result<CudaStorage> {
    let n = (a[0] * a[2]) as usize;
    let mut dx = output(dev, n)?;
    let [rows, c, t, k, dil, pad, t_out] = a;
    launch!(
        dev,
        "depthwise_grad_x",
        flat(n),
        dy,
        w,
        &mut dx,
        &rows,
        &c,
        &t,
        &k,
        &dil,
        &pad,
        &t_out
    );
    Ok(wrap(dev, dx))
}

/// `dw [C K]` of the depthwise convolution.
pub fn depthwise_grad_w(
    dev: &CudaDevice,
    x: &CudaView<f32>,
    dy: &CudaView<f32>,
    a: DepthwiseArgs,
) -> Result<CudaStorage> {
    let [rows, c, t, k, dil, pad, t_out] = a;
    let params = (c * k) as usize;
    let acc = dev.alloc_zeros::<f64>(params)?;
    launch!(
        dev,
        "depthwise_grad_w",
        runs(rows as usize, t_out as usize),
        x,
        dy,
        &acc,
        &c,
        &t,
        &k,
        &dil,
        &pad,
        &t_out
    );
    let mut out = output(dev, params)?;
    finish(dev, &acc, &mut out, 0)?;
    Ok(wrap(dev, out))
}

/// Per row of `len` entries: its mean and `1 / sqrt(var + eps)` (f64, `[2 rows]`).
fn row_stats(dev: &CudaDevice, x: &CudaView<f32>, len: usize, eps: f64) -> Result<CudaSlice<f64>> {
    let rows = x.len() / len;
    let (r, l) = (rows as i64, len as i64);
    let acc = dev.alloc_zeros::<f64>(2 * rows)?;
    launch!(dev, "row_moments", runs(rows, len), x, &acc, &l);
    launch!(dev, "row_stats_of", flat(rows), &acc, &r, &l, &eps);
    Ok(acc)
}

/// The normalisation of rows of `len` entries, then `* s[c] + b[c]` along runs `affine`
/// (`None`: no affine map).
pub fn normalize(
    dev: &CudaDevice,
    x: &CudaView<f32>,
    len: usize,
    eps: f64,
    affine: Option<(&CudaView<f32>, &CudaView<f32>, Runs)>,
) -> Result<CudaStorage> {
    let n = x.len();
    let st = row_stats(dev, x, len, eps)?;
    let mut y = output(dev, n)?;
    let (nn, l) = (n as i64, len as i64);
    match affine {
        Some((s, b, g)) => {
            let (c, inner) = (g.c as i64, g.inner as i64);
            launch!(
                dev,
                "normalize_fwd",
                flat(n),
                x,
                &st,
                s,
                b,
                &mut y,
                &nn,
                &l,
                &c,
                &inner,
                &1i32
            );
        }
        None => {
            launch!(
                dev,
                "normalize_fwd",
                flat(n),
                x,
                &st,
                x,
                x,
                &mut y,
                &nn,
                &l,
                &1i64,
                &1i64,
                &0i32
            );
        }
    }
    Ok(wrap(dev, y))
}

/// `dx` of the normalisation from `(x, y, dy)`.
pub fn normalize_grad(
    dev: &CudaDevice,
    x: &CudaView<f32>,
    y: &CudaView<f32>,
    dy: &CudaView<f32>,
    len: usize,
    eps: f64,
) -> Result<CudaStorage> {
    let n = x.len();
    let rows = n / len;
    let (r, l) = (rows as i64, len as i64);
    let acc = dev.alloc_zeros::<f64>(4 * rows)?;
    launch!(
        dev,
        "normalize_grad_sums",
        runs(rows, len),
        x,
        y,
        dy,
        &acc,
        &l
    );
    launch!(dev, "normalize_grad_coef", flat(rows), &acc, &r, &l, &eps);
    let mut dx = output(dev, n)?;
    launch!(
        dev,
        "normalize_grad_x",
        flat(n),
        y,
        dy,
        &acc,
        &mut dx,
        &(n as i64),
        &l
    );
    Ok(wrap(dev, dx))
}

/// `[dx; dscale; dbias]` of the normalisation with its affine map along runs `g` (of a
/// row's layout) from `(x, dy, scale)`.
pub fn normalize_affine_grad(
    dev: &CudaDevice,
    x: &CudaView<f32>,
    dy: &CudaView<f32>,
    s: &CudaView<f32>,
    len: usize,
    eps: f64,
    g: Runs,
) -> Result<CudaStorage> {
    let n = x.len();
    let rows = n / len;
    let row = dev.alloc_zeros::<f64>(2 * rows)?;
    let rc = dev.alloc_zeros::<f64>(2 * rows * g.c)?;
    let (l, c, inner, r) = (len as i64, g.c as i64, g.inner as i64, rows as i64);
    launch!(
        dev,
        "norm_affine_sums",
        runs(n / g.inner, g.inner),
        x,
        dy,
        &row,
        &rc,
        &l,
        &c,
        &inner
    );
    let s12 = dev.alloc_zeros::<f64>(2 * rows)?;
    let grid = LaunchConfig {
        grid_dim: (rows as u32, g.c.div_ceil(BLOCK as usize) as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        dev,
        "norm_affine_s12",
        grid,
        &row,
        &rc,
        s,
        &s12,
        &l,
        &c,
        &eps
    );
    // SAFETY: written in full by norm_affine_coef
    let coef = unsafe { dev.alloc::<f64>(4 * rows)? };
    launch!(
        dev,
        "norm_affine_coef",
        flat(rows),
        &row,
        &s12,
        &coef,
        &r,
        &l,
        &eps
    );
    let mut out = output(dev, n + 2 * g.c)?;
    {
        let mut params = out.slice_mut(n..n + 2 * g.c);
        launch!(
            dev,
            "norm_affine_params",
            flat(g.c),
            &rc,
            &coef,
            &mut params,
            &r,
            &c
        );
    }
    {
        let mut dx = out.slice_mut(0..n);
        launch!(
            dev,
            "norm_affine_dx",
            flat(n),
            x,
            dy,
            s,
            &coef,
            &mut dx,
            &(n as i64),
            &l,
            &c,
            &inner
        );
    }
    Ok(wrap(dev, out))
}

/// `[sum of channel c's entries]` (`[C]`, f32) of `dy` laid out in runs `g`: a bias
/// gradient.
pub fn channel_sums(dev: &CudaDevice, dy: &CudaView<f32>, g: Runs) -> Result<CudaStorage> {
    let acc = dev.alloc_zeros::<f64>(g.c)?;
    let (c, inner) = (g.c as i64, g.inner as i64);
    launch!(
        dev,
        "channel_sums",
        runs(g.outer * g.c, g.inner),
        dy,
        &acc,
        &c,
        &inner
    );
    let mut out = output(dev, g.c)?;
    finish(dev, &acc, &mut out, 0)?;
    Ok(wrap(dev, out))
}

/// Entries per block of the multi-tensor kernels (`MT_CHUNK` in kernels.cu).
const MT_CHUNK: usize = BLOCK as usize * 16;

/// The device address of a contiguous f32 tensor on a CUDA device (its first entry).
///
/// Errors: not on a CUDA device, not f32, or not contiguous.
pub fn address(t: &candle_core::Tensor) -> Result<u64> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    let (s, l) = t.storage_and_layout();
    let candle_core::Storage::Cuda(cs) = &*s else {
        candle_core::bail!("address: not a CUDA tensor")
    };
    let Some((a, _)) = l.contiguous_offsets() else {
        candle_core::bail!("address: not contiguous")
    };
    let slice = cs.as_cuda_slice::<f32>()?;
    let stream = cs.device.cuda_stream();
    let (p, _sync) = slice.device_ptr(&stream);
    Ok(p + 4 * a as u64)
}

/// The launch table of a multi-tensor kernel on `dev`: `buffers[j][t]` the address of
/// tensor t's j-th buffer, `lens[t]` its entries (the layout `mt_chunk` in kernels.cu
/// reads), copied to the device; and its number of blocks.
fn table(dev: &CudaDevice, buffers: &[&[u64]], lens: &[usize]) -> Result<(CudaSlice<u64>, u32)> {
    let mut h: Vec<u64> = buffers.iter().flat_map(|b| b.iter().copied()).collect();
    h.extend(lens.iter().map(|&n| n as u64));
    let mut blocks = 0u32;
    for (t, &n) in lens.iter().enumerate() {
        for lo in (0..n).step_by(MT_CHUNK) {
            h.push((t as u64) << 40 | lo as u64);
            blocks += 1;
        }
    }
    Ok((dev.clone_htod(&h)?, blocks))
}

fn blocks(n: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.max(1), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// AdamW on every tensor in one launch: weights at `w`, gradients at `g` and moments
/// `[m; v]` at `mv` (addresses from [`address`]), `lens` entries each; `p = [b1, b2,
/// gradient scale, lr, weight decay, bias correction 1, bias correction 2, eps]`.
///
/// # Safety
/// The addresses must be live f32 buffers of `dev` of `lens[t]` entries (`mv`: twice
/// that), kept alive until the launch has run; `w` and `mv` are written in place.
pub unsafe fn adam_multi(
    dev: &CudaDevice,
    w: &[u64],
    g: &[u64],
    mv: &[u64],
    lens: &[usize],
    p: [f32; 8],
) -> Result<()> {
    if lens.is_empty() {
        return Ok(());
    }
    let (t, n) = table(dev, &[w, g, mv], lens)?;
    let [b1, b2, scale, lr, wd, c1, c2, eps] = p;
    let k = lens.len() as i32;
    launch!(
        dev,
        "adam_multi",
        blocks(n),
        &t,
        &k,
        &b1,
        &b2,
        &scale,
        &lr,
        &wd,
        &c1,
        &c2,
        &eps
    );
    Ok(())
}

/// The sum of squares of every buffer at `g` (`lens` entries each), in f64, read back.
///
/// # Safety
/// As [`adam_multi`]: live f32 buffers of `dev` of `lens[t]` entries.
pub unsafe fn sq_sum_multi(dev: &CudaDevice, g: &[u64], lens: &[usize]) -> Result<f64> {
    if lens.is_empty() {
        return Ok(0.0);
    }
    let (t, n) = table(dev, &[g], lens)?;
    let mut acc = dev.alloc_zeros::<f64>(1)?;
    let k = lens.len() as i32;
    launch!(dev, "sq_sum_multi", blocks(n), &t, &k, &mut acc);
    Ok(dev.clone_dtoh(&acc)?[0])
}

/// CPU against CUDA for every kernel, forward and gradients (run by `cargo test --features
/// cuda` on a machine with a GPU; without one each test says so and passes).
#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    fn gpu() -> Option<Device> {
        match Device::new_cuda(0) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("no CUDA GPU ({e}): CPU/CUDA parity not run");
                None
            }
        }
    }

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0) + 0.1)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Largest |a - b| over the largest |a|.
    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b
            .to_device(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a.len(), b.len());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// `f(inputs)` and the gradients of `sum(f * r)` for its inputs, on `device`.
    fn run(
        device: &Device,
        inputs: &[Tensor],
        r: &Tensor,
        f: &dyn Fn(&[Tensor]) -> candle_core::Result<Option<Tensor>>,
    ) -> (Tensor, Vec<Tensor>) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_device(device).unwrap()).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts).unwrap().expect("the kernel applies");
        let loss = (&y * r.to_device(device).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let g = loss.backward().unwrap();
        let grads = ts
            .iter()
            .map(|t| g.get(t).expect("a gradient").clone())
            .collect();
        (y, grads)
    }

    fn parity(
        name: &str,
        inputs: &[Tensor],
        out: &[usize],
        f: &dyn Fn(&[Tensor]) -> candle_core::Result<Option<Tensor>>,
    ) {
        let Some(gpu) = gpu() else { return };
        let r = randn(out, 99);
        let (y0, g0) = run(&Device::Cpu, inputs, &r, f);
        let (y1, g1) = run(&gpu, inputs, &r, f);
        let e = rel(&y0, &y1);
        assert!(e < 1e-5, "{name}: forward differs by {e}");
        for (k, (a, b)) in g0.iter().zip(&g1).enumerate() {
            let e = rel(a, b);
            assert!(e < 1e-4, "{name}: gradient of input {k} differs by {e}");
        }
        eprintln!("{name}: CPU and CUDA agree");
    }

    #[test]
    fn prelu_on_cuda() {
        let x = randn(&[2, 48, 300], 1);
        parity("prelu", &[x, randn(&[48, 1], 2)], &[2, 48, 300], &|t| {
            super::super::prelu(&t[0], &t[1])
        });
    }

    #[test]
    fn channel_affine_and_bias_on_cuda() {
        let x = randn(&[2, 48, 300], 3);
        let (s, b) = (randn(&[48], 4), randn(&[48], 5));
        parity(
            "channel-affine",
            &[x.clone(), s, b.clone()],
            &[2, 48, 300],
            &|t| super::super::channel_affine(&t[0], &t[1], Some(&t[2]), 1),
        );
        parity("channel-bias", &[x, b], &[2, 48, 300], &|t| {
            super::super::channel_bias(&t[0], &t[1], 1)
        });
    }

    #[test]
    fn depthwise_on_cuda() {
        let x = randn(&[2, 24, 400], 6);
        let w = randn(&[24, 1, 3], 7);
        parity("depthwise", &[x, w], &[2, 24, 400], &|t| {
            super::super::depthwise_conv1d(&t[0], &t[1], (4, 4), 4)
        });
    }

    #[test]
    fn normalize_on_cuda() {
        let x = randn(&[2, 24, 5000], 8);
        parity("normalize", &[x.clone()], &[2, 24, 5000], &|t| {
            super::super::normalize(&t[0], 1, 1e-8)
        });
        let (s, b) = (randn(&[24], 9), randn(&[24], 10));
        parity("normalize-affine", &[x, s, b], &[2, 24, 5000], &|t| {
            super::super::normalize_affine(&t[0], 1, 1e-8, &t[1], Some(&t[2]), 1)
        });
    }
}
