//! Least-squares refit of a slimmed model's linear layers on calibration audio: the
//! reconstruction step of channel pruning (He et al. 2017, "Channel Pruning for
//! Accelerating Very Deep Neural Networks", eq. 1 with the channel selection β fixed by
//! the masks): each linear layer (a 1x1 Conv, MatMul or Gemm, see
//! [`crate::ops::OpRule::linear`]) of the slimmed model gets the weights that best
//! reproduce, from its own (pruned) inputs, the original model's output of that layer on
//! the kept output channels:
//!
//! `min_{W, b} sum_rows ||Y_orig[kept] - W x_slim - b||^2 + λ ||W||^2`
//!
//! solved in closed form from the normal equations. Label-free (mixtures only). Layers are
//! refitted in graph order while the slimmed model runs, so each one sees the inputs that
//! the layers refitted before it produce and corrects the error accumulated upstream.
use super::data::mixture_windows;
use super::graph::{to_candle, CandleGraph};
use crate::analysis::Groups;
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::onnx::{replace_initializers, ModelProto, Tensor};
use crate::ops::{self, Linear, WeightLayout};
use crate::prune::Masks;
use candle_core::{DType, Device, Tensor as CTensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// Which linear layers to refit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum RefitScope {
    /// Layers whose input or output channels were sliced (He et al. 2017).
    Sliced,
    /// Every linear layer downstream of the graph input.
    All,
}

/// Options of [`refit`].
pub struct RefitOptions {
    /// Crop length in samples (both graphs are lowered at this length).
    pub samples: usize,
    /// At most this many crops per mixture.
    pub crops_per_file: usize,
    /// Ridge strength relative to the mean diagonal of the Gram matrix (λ = ridge ·
    /// tr(XᵀX) / d); keeps the solve well posed when kept channels are collinear.
    pub ridge: f64,
    pub scope: RefitScope,
    /// Extra calibration crops remixed label-free ([`super::augment`] with the original
    /// model as teacher and perturbed noises), so that the refit also sees noises unlike
    /// the few recorded ones.
    pub remix: usize,
    /// Seed of the remixes.
    pub seed: u64,
    /// Every `row_stride`-th row (time step) of each crop enters the normal equations:
    /// neighbouring frames of a learned encoder are nearly collinear, and a second of audio
    /// gives thousands of rows for a few hundred weights per output, so a stride of 4
    /// quarters the cost of the Gram matrices and keeps the solve overdetermined.
    pub row_stride: usize,
    pub progress: bool,
    /// The original model, which labels the remixes (needed when `remix > 0`).
    pub teacher: Option<super::data::SharedTeacher>,
}

impl Default for RefitOptions {
    fn default() -> Self {
        RefitOptions {
            samples: 16000,
            crops_per_file: 1,
            ridge: 1e-4,
            scope: RefitScope::Sliced,
            remix: 0,
            seed: 0,
            row_stride: 1,
            progress: false,
            teacher: None,
        }
    }
}

/// One refitted layer, with its relative reconstruction error `||Y - Ŷ||² / ||Y||²` on the
/// calibration data before (slimmed weights) and after the refit.
#[derive(Clone, Debug, Serialize)]
pub struct LayerFit {
    pub node: String,
    pub c_in: usize,
    pub c_out: usize,
    /// Calibration rows (positions × crops).
    pub rows: usize,
    pub error_before: f64,
    pub error_after: f64,
}

/// The refitted model and what was done.
#[derive(Clone, Debug, Serialize)]
pub struct Refitted {
    #[serde(skip)]
    pub model: ModelProto,
    pub crops: usize,
    pub layers: Vec<LayerFit>,
    /// Linear layers left as they were: (node, reason).
    pub skipped: Skipped,
}

fn ce(e: candle_core::Error) -> Error {
    Error::candle("refit")(e)
}

/// A layer to refit: its node index in the slimmed graph, its rule's [`Linear`] view, the
/// original node's index, and the kept output channels (`None`: all).
pub(crate) struct Target {
    pub(crate) node: usize,
    pub(crate) lin: Linear,
    original: usize,
    pub(crate) keep_out: Option<Vec<usize>>,
}

/// Refits the linear layers of `slim` (the slimmed `original` under `masks`, as written by
/// [`crate::prune::slim`]; node and value names shared) on the mixtures of `data` (and
/// `o.remix` label-free remixes of them).
///
/// Errors: unreadable data, an op without a Candle lowering, a singular system (raise
/// `ridge`).
pub fn refit(
    original: &Ir,
    groups: &Groups,
    masks: &Masks,
    slim: &ModelProto,
    data: &Path,
    o: &RefitOptions,
) -> Result<Refitted> {
    let dev = Device::Cpu;
    let orig_ir = Ir::new(original.model.clone(), o.samples)?;
    let slim_ir = Ir::new(slim.clone(), o.samples)?;
    let (targets, skipped) = targets(&orig_ir, &slim_ir, groups, masks, o.scope)?;
    let live: Vec<String> = targets
        .iter()
        .flat_map(|t| std::iter::once(t.lin.weight.clone()).chain(t.lin.bias.clone()))
        .collect();
    let orig = CandleGraph::new(orig_ir, &dev, DType::F32, &[])?;
    let slimg = CandleGraph::new(slim_ir, &dev, DType::F32, &live)?;
    let examples = crate::audio::dataset::load(data, 16000)?;
    let mut xs = mixture_windows(&examples, o.samples, o.crops_per_file);
    if o.remix > 0 {
        let teacher = o.teacher.clone().ok_or_else(|| Error::Option {
            option: "--refit-remix",
            value: o.remix.to_string(),
            msg: "label-free remixes need the original model as a teacher".into(),
        })?;
        let teacher = Some(teacher);
        let mut mixer = super::augment::Augmenter::new(examples, o.samples, teacher, true, o.seed)?;
        xs.extend((0..o.remix).map(|_| mixer.item().input));
    }
    let mut runs_o = vec![];
    let mut runs_s = vec![];
    for x in &xs {
        runs_o.push(orig.start(&orig.input(x)?)?);
        runs_s.push(slimg.start(&slimg.input(x)?)?);
    }
    let mut overrides: HashMap<String, CTensor> = HashMap::new();
    let mut new: HashMap<String, Tensor> = HashMap::new();
    let mut layers = vec![];
    let bar = super::progress_bar(targets.len(), o.progress);
    let none = HashMap::new();
    for t in &targets {
        let node = &slimg.ir().nodes()[t.node];
        let out = &node.output[0];
        let weight_shape = slimg
            .ir()
            .fact(&t.lin.weight)
            .map(|f| f.shape.clone())
            .unwrap_or_default();
        let keep_out = t
            .keep_out
            .as_ref()
            .map(|k| CTensor::new(k.iter().map(|&i| i as u32).collect::<Vec<_>>(), &dev))
            .transpose()
            .map_err(ce)?;
        let mut acc: Option<Normal> = None;
        for (ro, rs) in runs_o.iter_mut().zip(runs_s.iter_mut()) {
            ro.run_to(t.original + 1, &none)?;
            rs.run_to(t.node, &overrides)?;
            let y = ro.value(out).ok_or_else(|| {
                Error::node(node, format!("original value '{out}' is no longer alive"))
            })?;
            let x = rs.value(&t.lin.input).ok_or_else(|| {
                Error::node(node, format!("input '{}' has no value", t.lin.input))
            })?;
            let y = match &keep_out {
                Some(idx) => y.index_select(idx, t.lin.axis).map_err(ce)?,
                None => y.clone(),
            };
            let a = acc.get_or_insert_with(|| {
                let (c_in, c_out) = (x.dims()[t.lin.axis], y.dims()[t.lin.axis]);
                Normal::new(&t.lin, &weight_shape, c_in, c_out)
            });
            a.add(x, &y, t.lin.axis, o.row_stride)?;
        }
        let Some(a) = acc else { continue };
        let (w, b) = current(&slimg, &overrides, &t.lin)?;
        let before = a.error(&w, b.as_deref());
        let (w2, b2) = a.solve(o.ridge).map_err(|e| Error::node(node, e))?;
        let after = a.error(&w2, b2.as_deref());
        layers.push(LayerFit {
            node: node.name().to_string(),
            c_in: if a.depthwise.is_some() {
                a.c_out
            } else {
                a.feats
            },
            c_out: a.c_out,
            rows: a.rows,
            error_before: before,
            error_after: after,
        });
        // W [c_out, feats] back into the initializer's layout and shape
        let flat: Vec<f32> = match t.lin.layout {
            WeightLayout::InOut => {
                let (co, ci) = (a.c_out, a.feats);
                (0..ci * co)
                    .map(|k| w2[(k % co) * ci + k / co] as f32)
                    .collect()
            }
            _ => w2.iter().map(|&v| v as f32).collect(),
        };
        let mut put = |name: &str, shape: Vec<usize>, v: Vec<f32>| -> Result<()> {
            let arr = ndarray::ArrayD::from_shape_vec(shape, v).map_err(|e| Error::Tensor {
                name: name.to_string(),
                msg: format!("refit: {e}"),
            })?;
            let t = Tensor::F32(arr);
            overrides.insert(
                name.to_string(),
                to_candle(&t, &dev, DType::F32).map_err(ce)?,
            );
            new.insert(name.to_string(), t);
            Ok(())
        };
        put(&t.lin.weight, weight_shape, flat)?;
        if let (Some(name), Some(b2)) = (&t.lin.bias, b2) {
            put(name, vec![b2.len()], b2.iter().map(|&v| v as f32).collect())?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Refitted {
        model: replace_initializers(slim, &new)?,
        crops: xs.len(),
        layers,
        skipped,
    })
}

/// Linear layers left as they were: (node name, reason).
pub(crate) type Skipped = Vec<(String, String)>;

/// The layers to refit, in graph order, and the linear layers left alone with the reason.
pub(crate) fn targets(
    orig: &Ir,
    slim: &Ir,
    groups: &Groups,
    masks: &Masks,
    scope: RefitScope,
) -> Result<(Vec<Target>, Skipped)> {
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in slim.nodes() {
        for i in &n.input {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    let (mut out, mut skipped) = (vec![], vec![]);
    for (i, node) in slim.nodes().iter().enumerate() {
        let Some(lin) = ops::rule(node).and_then(|r| r.linear(node, slim)) else {
            continue;
        };
        let name = node.name().to_string();
        let Some(&j) = node.output.first().and_then(|y| orig.producer.get(y)) else {
            skipped.push((
                name,
                "no node of the original model computes its output".into(),
            ));
            continue;
        };
        let shape = |ir: &Ir, v: &str| ir.fact(v).map(|f| f.shape.clone()).unwrap_or_default();
        let sliced_in = shape(slim, &lin.weight) != shape(orig, &lin.weight);
        let out_group = groups
            .of(&node.output[0], lin.axis)
            .and_then(|g| masks.keep(g.id).filter(|k| k.len() < g.size));
        if scope == RefitScope::Sliced && !sliced_in && out_group.is_none() {
            continue;
        }
        let shared = std::iter::once(&lin.weight)
            .chain(&lin.bias)
            .any(|w| uses.get(w.as_str()).copied().unwrap_or(0) > 1);
        if shared {
            skipped.push((name, "its weights are shared with another node".into()));
            continue;
        }
        out.push(Target {
            node: i,
            original: j,
            keep_out: out_group.map(<[usize]>::to_vec),
            lin,
        });
    }
    Ok((out, skipped))
}

/// `t` with channel axis `axis` moved last and flattened to `[rows, C]`, in f64.
fn rows(t: &CTensor, axis: usize) -> Result<CTensor> {
    let last = t.rank() - 1;
    let t = if axis == last {
        t.clone()
    } else {
        t.transpose(axis, last).map_err(ce)?
    };
    let c = t.dims()[last];
    t.contiguous()
        .and_then(|t| t.reshape(((), c)))
        .and_then(|t| t.to_dtype(DType::F64))
        .map_err(ce)
}

/// The layer's weights now (overridden or as in the slimmed model): W `[c_out, c_in]`
/// row-major (depthwise: `[C, K]`) and the bias.
fn current(
    g: &CandleGraph,
    overrides: &HashMap<String, CTensor>,
    lin: &Linear,
) -> Result<(Vec<f64>, Option<Vec<f64>>)> {
    let get = |n: &str| -> Result<CTensor> {
        overrides
            .get(n)
            .or_else(|| g.constant(n))
            .cloned()
            .ok_or_else(|| Error::Graph(format!("refit: weight '{n}' was not lowered")))
    };
    let w = get(&lin.weight)?;
    let w = w.flatten_from(1).map_err(ce)?; // [c_out, c_in] or [c_in, c_out]
    let w = match lin.layout {
        WeightLayout::InOut => w.t().map_err(ce)?,
        _ => w, // [c_out, c_in] or depthwise [C, K]
    };
    let w: Vec<f64> = w
        .to_dtype(DType::F64)
        .and_then(|w| w.flatten_all())
        .and_then(|w| w.to_vec1())
        .map_err(ce)?;
    let b = match &lin.bias {
        Some(n) => Some(
            get(n)?
                .to_dtype(DType::F64)
                .and_then(|b| b.to_vec1())
                .map_err(ce)?,
        ),
        None => None,
    };
    Ok((w, b))
}

/// Normal equations of a layer's least-squares problem, accumulated over row blocks, in
/// independent blocks that share nothing: one for a dense layer (every output reads the
/// same design `X̃ = [X 1]`, the ones column only with a bias), one per channel for a
/// depthwise layer (its design: the K shifted taps of its own input channel, and 1). Block
/// `b` has `G_b = X̃ᵀX̃ [d, d]` and `C_b = X̃ᵀY_b [d, m]` for its `m` outputs.
struct Normal {
    /// Weights per output (c_in dense, K depthwise).
    feats: usize,
    c_out: usize,
    bias: bool,
    depthwise: Option<(usize, (usize, usize))>,
    g: Vec<nalgebra::DMatrix<f64>>,
    c: Vec<nalgebra::DMatrix<f64>>,
    yy: f64,
    rows: usize,
}

/// A row-major `[.., r, k]` f64 tensor as nalgebra matrices `r x k`, one per leading index.
fn matrices(t: &CTensor) -> Result<Vec<nalgebra::DMatrix<f64>>> {
    let d = t.dims();
    let (r, k) = (d[d.len() - 2], d[d.len() - 1]);
    let v: Vec<f64> = t.flatten_all().and_then(|t| t.to_vec1()).map_err(ce)?;
    Ok(v.chunks(r * k)
        .map(|m| nalgebra::DMatrix::from_row_slice(r, k, m))
        .collect())
}

impl Normal {
    fn new(lin: &Linear, weight: &[usize], c_in: usize, c_out: usize) -> Normal {
        let bias = lin.bias.is_some();
        let (feats, depthwise, blocks, m) = match lin.layout {
            WeightLayout::Depthwise { dilation, pads } => {
                (weight[2], Some((dilation, pads)), c_out, 1)
            }
            _ => (c_in, None, 1, c_out),
        };
        let d = feats + bias as usize;
        Normal {
            feats,
            c_out,
            bias,
            depthwise,
            g: vec![nalgebra::DMatrix::zeros(d, d); blocks],
            c: vec![nalgebra::DMatrix::zeros(d, m); blocks],
            yy: 0.0,
            rows: 0,
        }
    }

    /// Adds one crop: `x` the layer's input, `y` its target output (channels on `axis`).
    fn add(&mut self, x: &CTensor, y: &CTensor, axis: usize, stride: usize) -> Result<()> {
        // design [B, n, d] and targets [B, n, m]
        let (design, y) = match self.depthwise {
            None => (
                rows(x, axis)?.unsqueeze(0).map_err(ce)?,
                rows(y, axis)?.unsqueeze(0).map_err(ce)?,
            ),
            Some((dil, (p0, p1))) => {
                // x [N, C, T] -> taps [C, N*L, K], y [N, C, L] -> [C, N*L, 1]
                let x = x
                    .to_dtype(DType::F64)
                    .and_then(|x| x.pad_with_zeros(2, p0, p1))
                    .map_err(ce)?;
                let l = y.dims()[2];
                let taps: Vec<CTensor> = (0..self.feats)
                    .map(|k| x.narrow(2, k * dil, l))
                    .collect::<candle_core::Result<_>>()
                    .map_err(ce)?;
                let c = x.dims()[1];
                let f = CTensor::stack(&taps, 3)
                    .and_then(|f| f.permute((1, 0, 2, 3)))
                    .and_then(|f| f.contiguous())
                    .and_then(|f| f.reshape((c, (), self.feats)))
                    .map_err(ce)?;
                let y = y
                    .to_dtype(DType::F64)
                    .and_then(|y| y.transpose(0, 1))
                    .and_then(|y| y.contiguous())
                    .and_then(|y| y.reshape((c, (), 1)))
                    .map_err(ce)?;
                (f, y)
            }
        };
        let (design, y) = match stride {
            0 | 1 => (design, y),
            s => {
                let idx: Vec<u32> = (0..design.dims()[1] as u32).step_by(s).collect();
                let idx = CTensor::new(idx, design.device()).map_err(ce)?;
                (
                    design.index_select(&idx, 1).map_err(ce)?,
                    y.index_select(&idx, 1).map_err(ce)?,
                )
            }
        };
        let (b, n) = (design.dims()[0], design.dims()[1]);
        let design = if self.bias {
            let ones = CTensor::ones((b, n, 1), DType::F64, design.device()).map_err(ce)?;
            CTensor::cat(&[&design, &ones], 2).map_err(ce)?
        } else {
            design
        };
        let dt = design.transpose(1, 2).map_err(ce)?;
        let g = matrices(&dt.matmul(&design).map_err(ce)?)?;
        let c = matrices(&dt.matmul(&y).map_err(ce)?)?;
        for (acc, m) in self.g.iter_mut().zip(g) {
            *acc += m;
        }
        for (acc, m) in self.c.iter_mut().zip(c) {
            *acc += m;
        }
        self.yy += y
            .sqr()
            .and_then(|y| y.sum_all())
            .and_then(|s| s.to_scalar::<f64>())
            .map_err(ce)?;
        self.rows += n;
        Ok(())
    }

    /// The outputs of block `k`: their first index and count.
    fn outputs(&self, k: usize) -> (usize, usize) {
        match self.depthwise {
            Some(_) => (k, 1),
            None => (0, self.c_out),
        }
    }

    /// Θ of block `k` `[d, m]` from W `[c_out, feats]` row-major and the bias.
    fn theta(&self, k: usize, w: &[f64], b: Option<&[f64]>) -> nalgebra::DMatrix<f64> {
        let (o0, m) = self.outputs(k);
        nalgebra::DMatrix::from_fn(self.g[k].nrows(), m, |r, j| {
            if r < self.feats {
                w[(o0 + j) * self.feats + r]
            } else {
                b.map(|b| b[o0 + j]).unwrap_or(0.0)
            }
        })
    }

    /// `||Y - X̃Θ||² / ||Y||²`, from `||Y||² - 2 tr(ΘᵀC) + tr(ΘᵀGΘ)` summed over blocks.
    fn error(&self, w: &[f64], b: Option<&[f64]>) -> f64 {
        let mut e = self.yy;
        for k in 0..self.g.len() {
            let t = self.theta(k, w, b);
            e += -2.0 * (t.transpose() * &self.c[k]).trace()
                + (t.transpose() * &self.g[k] * &t).trace();
        }
        (e / self.yy.max(f64::MIN_POSITIVE)).max(0.0)
    }

    /// Solves `(G_b + λ_b I) Θ_b = C_b` per block (the ridge leaves the bias row alone);
    /// returns W `[c_out, feats]` row-major and the bias.
    fn solve(&self, ridge: f64) -> std::result::Result<(Vec<f64>, Option<Vec<f64>>), String> {
        let mut w = vec![0.0; self.c_out * self.feats];
        let mut b = vec![0.0; self.c_out];
        for k in 0..self.g.len() {
            let mut g = self.g[k].clone();
            let mean_diag =
                (0..self.feats).map(|i| g[(i, i)]).sum::<f64>() / self.feats.max(1) as f64;
            for i in 0..self.feats {
                g[(i, i)] += (ridge * mean_diag).max(1e-12);
            }
            let chol = g.cholesky().ok_or_else(|| {
                "least-squares refit: the Gram matrix of the kept channels is singular (raise --ridge)"
                    .to_string()
            })?;
            let t = chol.solve(&self.c[k]);
            let (o0, m) = self.outputs(k);
            for j in 0..m {
                for r in 0..self.feats {
                    w[(o0 + j) * self.feats + r] = t[(r, j)];
                }
                if self.bias {
                    b[o0 + j] = t[(self.feats, j)];
                }
            }
        }
        Ok((w, self.bias.then_some(b)))
    }
}
