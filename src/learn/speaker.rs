//! In-situ pruning for speaker verification ("Hybrid Pruning: In-Situ Compression of
//! Self-Supervised Speech Models for Speaker Verification", seed 002): the masks and the
//! encoder's weights are trained in one stage on the downstream task's own loss, through a
//! speaker head trained with them, instead of a task-agnostic distillation first.
//!
//! The head reads the encoder's first output `y`:
//!
//! ```text
//! p  = y                               y: [1, D]     (an utterance embedding already)
//! p  = [mean_t y ; std_t y]            y: [1, T, D]  (statistics pooling over frames, [1, 2D])
//! e  = p W + b                         W: [F, E], the speaker embedding [1, E]
//! cos_j = <e / |e|, w_j / |w_j|>       w_j: column j of the class matrix [E, N], one per speaker
//! L  = -log softmax_y( s (cos - m 1_y) )     additive-margin softmax
//! ```
//!
//! AM-softmax: Wang, Cheng, Liu & Liu 2018, "Additive Margin Softmax for Face
//! Verification", eq. 6 (scale `s`, margin `m`). The head is not part of the written model:
//! verification scores trials by the cosine of the encoder's own (pooled) outputs
//! (`eval --task sv`), so the encoder itself must carry the speaker.
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};

/// Settings of the speaker head and its additive-margin softmax.
#[derive(Clone, Debug)]
pub struct SvConfig {
    /// Speaker-embedding width `E` of the head.
    pub dim: usize,
    /// AM-softmax scale `s`.
    pub scale: f64,
    /// AM-softmax margin `m` (cosine units).
    pub margin: f64,
    /// The head's learning rate (AdamW; its weights start from scratch).
    pub lr: f64,
    /// Epochs of training the head alone on the original model's outputs (cached) before
    /// the joint phase, so that the joint phase starts from a head that knows the speakers
    /// and its gradient asks the encoder to keep them ([`SpeakerHead::warm_up`]).
    pub head_epochs: usize,
    pub seed: u64,
}

impl Default for SvConfig {
    fn default() -> Self {
        SvConfig {
            dim: 128,
            scale: 30.0,
            margin: 0.2,
            lr: 1e-3,
            head_epochs: 20,
            seed: 0,
        }
    }
}

/// The head's parameters (shared `Var`s: a clone trains the same tensors).
#[derive(Clone)]
pub struct HeadParams {
    /// `[F, E]`.
    proj: Var,
    /// `[E]`.
    bias: Var,
    /// `[E, N]`, one column per training speaker.
    classes: Var,
    scale: f64,
    margin: f64,
}

/// The speaker head with its optimiser.
pub struct SpeakerHead {
    pub params: HeadParams,
    opt: candle_nn::optim::AdamW,
}

/// Statistics pooling of an encoder output: `[1, D]` as it is; `[1, T, D]` (frames) to
/// the mean and the standard deviation over `T`, `[1, 2D]`.
///
/// Errors: another rank.
pub fn pool(y: &Tensor) -> Result<Tensor> {
    let e = Error::candle("statistics pooling");
    match y.rank() {
        2 => Ok(y.clone()),
        3 => {
            let mean = y.mean_keepdim(1).map_err(e)?; // [1, 1, D]
            let var = y
                .broadcast_sub(&mean)
                .and_then(|c| c.sqr())
                .and_then(|c| c.mean_keepdim(1))
                .map_err(e)?;
            let std = (var + 1e-5).and_then(|v| v.sqrt()).map_err(e)?;
            Tensor::cat(&[mean, std], 2)
                .and_then(|p| p.squeeze(1))
                .map_err(e)
        }
        r => Err(Error::Graph(format!(
            "a speaker head reads an output [1, D] or [1, T, D]; this one has rank {r}"
        ))),
    }
}

/// The pooled width `F` of an output of `shape` ([`pool`]).
///
/// Errors: a shape [`pool`] does not take.
pub fn pooled_width(shape: &[usize]) -> Result<usize> {
    match shape {
        [1, d] => Ok(*d),
        [1, _, d] => Ok(2 * d),
        s => Err(Error::Graph(format!(
            "a speaker head reads an output [1, D] or [1, T, D]; this one is {s:?}"
        ))),
    }
}

impl SpeakerHead {
    /// A head for `speakers` classes over pooled features of width `features`, seeded.
    ///
    /// Errors: fewer than 2 speakers; a tensor that cannot be made on `device`.
    pub fn new(
        features: usize,
        speakers: usize,
        cfg: &SvConfig,
        device: &Device,
    ) -> Result<SpeakerHead> {
        use candle_nn::optim::Optimizer;
        if speakers < 2 {
            return Err(Error::Data(format!(
                "a speaker head needs at least 2 training speakers, got {speakers}"
            )));
        }
        let e = Error::candle("speaker head");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5EED_5BEA);
        let mut uniform = |n: usize, a: f64| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(-a..a) as f32).collect()
        };
        // uniform with the variance of Glorot's rule for the projection
        let a = (6.0 / (features + cfg.dim) as f64).sqrt();
        let proj = Tensor::from_vec(uniform(features * cfg.dim, a), (features, cfg.dim), device);
        let classes = Tensor::from_vec(
            uniform(cfg.dim * speakers, 1.0),
            (cfg.dim, speakers),
            device,
        );
        let params = HeadParams {
            proj: Var::from_tensor(&proj.map_err(e)?).map_err(e)?,
            bias: Var::zeros(cfg.dim, DType::F32, device).map_err(e)?,
            classes: Var::from_tensor(&classes.map_err(e)?).map_err(e)?,
            scale: cfg.scale,
            margin: cfg.margin,
        };
        let opt = candle_nn::optim::AdamW::new(
            vec![
                params.proj.clone(),
                params.bias.clone(),
                params.classes.clone(),
            ],
            candle_nn::optim::ParamsAdamW {
                lr: cfg.lr,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .map_err(e)?;
        Ok(SpeakerHead { params, opt })
    }

    /// One AdamW step of the head on the gradients of a loss from [`HeadParams::loss`].
    ///
    /// Errors: a candle failure.
    pub fn update(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        use candle_nn::optim::Optimizer;
        self.opt
            .step(grads)
            .map_err(Error::candle("speaker head step"))
    }
}

impl SpeakerHead {
    /// Trains the head alone for `epochs` over `outputs` (the original model's first output
    /// on each crop, with the crop's speaker), in a seeded order per epoch; returns the
    /// share of crops whose nearest class is their speaker after training.
    ///
    /// Errors: as [`HeadParams::loss`].
    pub fn warm_up(
        &mut self,
        outputs: &[(Tensor, usize)],
        epochs: usize,
        seed: u64,
    ) -> Result<f64> {
        use rand::seq::SliceRandom;
        let mut order: Vec<usize> = (0..outputs.len()).collect();
        for epoch in 0..epochs {
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
                seed ^ 0x4EAD ^ (epoch as u64) << 16,
            ));
            for &i in &order {
                let (y, label) = &outputs[i];
                let loss = self.params.loss(y, *label)?;
                let grads = loss.backward().map_err(Error::candle("speaker head"))?;
                self.update(&grads)?;
            }
        }
        let mut right = 0;
        for (y, label) in outputs {
            right += (self.params.nearest(y)? == *label) as usize;
        }
        Ok(right as f64 / outputs.len().max(1) as f64)
    }
}

impl HeadParams {
    /// The speaker embedding `e` `[1, E]` of an encoder output `y` ([`pool`], then the
    /// projection).
    ///
    /// Errors: as [`pool`]; a width that does not fit the head.
    pub fn embed(&self, y: &Tensor) -> Result<Tensor> {
        let e = Error::candle("speaker head");
        let p = pool(&y.to_dtype(DType::F32).map_err(e)?)?;
        p.matmul(self.proj.as_tensor())
            .and_then(|h| h.broadcast_add(self.bias.as_tensor()))
            .map_err(e)
    }

    /// The cosines of `y`'s embedding to every speaker's class vector, `[1, N]`.
    ///
    /// Errors: as [`HeadParams::embed`].
    pub fn cosines(&self, y: &Tensor) -> Result<Tensor> {
        let e = Error::candle("speaker head");
        let emb = self.embed(y)?;
        let unit = |t: &Tensor, axis: usize| -> candle_core::Result<Tensor> {
            let n = t.sqr()?.sum_keepdim(axis)?.affine(1.0, 1e-12)?.sqrt()?;
            t.broadcast_div(&n)
        };
        let en = unit(&emb, 1).map_err(e)?;
        let wn = unit(self.classes.as_tensor(), 0).map_err(e)?;
        en.matmul(&wn).map_err(e)
    }

    /// The AM-softmax loss (module docs) of output `y` for speaker `label`.
    ///
    /// Errors: as [`HeadParams::embed`]; a label out of range.
    pub fn loss(&self, y: &Tensor, label: usize) -> Result<Tensor> {
        let e = Error::candle("AM-softmax");
        let cos = self.cosines(y)?;
        let n = cos.dim(1).map_err(e)?;
        if label >= n {
            return Err(Error::Data(format!("speaker {label} of {n}")));
        }
        let mut m = vec![0f32; n];
        m[label] = self.margin as f32;
        let margin = Tensor::from_vec(m, (1, n), cos.device()).map_err(e)?;
        let logits = (cos.broadcast_sub(&margin).map_err(e)? * self.scale).map_err(e)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).map_err(e)?;
        logp.narrow(1, label, 1)
            .and_then(|l| l.neg())
            .and_then(|l| l.sum_all())
            .map_err(e)
    }

    /// The speaker whose class vector is nearest (by cosine) to `y`'s embedding.
    ///
    /// Errors: as [`HeadParams::embed`].
    pub fn nearest(&self, y: &Tensor) -> Result<usize> {
        let e = Error::candle("speaker head");
        let best = self
            .cosines(y)?
            .argmax(D::Minus1)
            .and_then(|a| a.flatten_all())
            .and_then(|a| a.to_vec1::<u32>())
            .map_err(e)?;
        Ok(best.first().copied().unwrap_or(0) as usize)
    }
}
