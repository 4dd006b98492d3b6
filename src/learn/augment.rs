//! Dynamic mixing: a fresh training example at every step, so that fine-tuning on a few
//! files does not fit their fixed crops and their few noises (Zeghidour and Grangier 2021,
//! "Wavesplit", section 3.3, remix sources of different examples at every step).
//!
//! With references (`s1/`, ...): each source is a crop (random file, random offset) of that
//! source, the noise is the residual `mix - sum(sources)` of another file or, half the
//! time, coloured noise (white noise through `y[n] = a y[n-1] + w[n]`, `a` uniform in
//! [0, 0.98]: white to nearly brown); the mixture is their sum at an SNR uniform in
//! [-5, 10] dB; the targets are the source crops.
//!
//! With `perturb`, a recorded noise is also perturbed, so that a few noise recordings stand
//! for more: speed perturbation (Ko et al. 2015, "Audio augmentation for speech
//! recognition": resampled by a factor uniform in log between 2/3 and 3/2, which scales its
//! spectrum), a first-order spectral tilt `y[t] = x[t] + b x[t-1]` (`b` uniform in
//! [-0.9, 0.9]: high-pass to low-pass) and, half the time, time reversal.
//!
//! Label-free (a teacher model): bootstrapped remixing (Tzinis et al. 2022, "RemixIT"): the
//! teacher's outputs on each whole mixture stand in for its sources, and the mixture minus
//! their sum for its noise; they are remixed as above, the teacher's estimates being the
//! targets. Only mixtures are read.
//!
//! Distillation ([`Augmenter::distilled`]): the same remixed input, with the teacher's
//! outputs on that very input as targets (Hinton et al. 2015, "Distilling the knowledge in
//! a neural network", on augmented inputs). The student learns the teacher's function on
//! noises the data set never recorded; the teacher's own errors are part of the target, so
//! the student is never asked to beat it.
use super::gumbel::Item;
use crate::audio::dataset::Example;
use crate::error::Result;
use crate::runtime::tract::TractModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Draws training examples of `samples` samples from a data set's examples.
pub struct Augmenter {
    examples: Vec<Example>,
    /// Each example's noise: its mixture minus the sum of its sources.
    noises: Vec<Vec<f32>>,
    samples: usize,
    /// Perturb recorded noises (speed, tilt, reversal).
    perturb: bool,
    /// The teacher at `[1, 1, samples]`, label-free.
    teacher: Option<TractModel>,
    rng: ChaCha8Rng,
}

/// The teacher's outputs on the whole of `x`, window by window of `samples`: `[S][len]`.
fn estimate(teacher: &TractModel, x: &[f32], samples: usize) -> Result<Vec<Vec<f32>>> {
    let mut out: Vec<Vec<f32>> = vec![];
    for start in (0..x.len().max(1)).step_by(samples) {
        let mut w: Vec<f32> = x[start.min(x.len())..]
            .iter()
            .take(samples)
            .copied()
            .collect();
        let n = w.len();
        w.resize(samples, 0.0);
        let y = teacher.run(&w)?;
        for (j, src) in y.chunks(samples).enumerate() {
            if out.len() <= j {
                out.push(vec![]);
            }
            out[j].extend_from_slice(&src[..n]);
        }
    }
    Ok(out)
}

/// A crop of `x` of `n` samples at a random offset (zero-padded when `x` is shorter).
fn crop(x: &[f32], n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let start = if x.len() > n {
        rng.random_range(0..=x.len() - n)
    } else {
        0
    };
    let mut v: Vec<f32> = x[start..].iter().take(n).copied().collect();
    v.resize(n, 0.0);
    v
}

fn power(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64
}

/// `n` samples of coloured noise: white noise through a one-pole low-pass.
fn coloured(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let a: f32 = rng.random_range(0.0..0.98);
    let mut y = 0f32;
    (0..n)
        .map(|_| {
            y = a * y + rng.random_range(-1.0f32..1.0);
            y
        })
        .collect()
}

/// A crop of `x` perturbed to `n` samples: speed factor `r` (a crop of about `n r` samples
/// linearly resampled to `n`), tilt and reversal (see the module docs).
fn perturbed(x: &[f32], n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let r = rng.random_range((2f64 / 3.0).ln()..1.5f64.ln()).exp();
    let src = crop(x, (n as f64 * r).ceil() as usize + 1, rng);
    let mut y: Vec<f32> = (0..n)
        .map(|i| {
            let p = i as f64 * r;
            let (j, f) = (p as usize, (p - p.floor()) as f32);
            src[j] + f * (src[j + 1] - src[j])
        })
        .collect();
    let b: f32 = rng.random_range(-0.9..0.9);
    let mut prev = 0f32;
    for v in y.iter_mut() {
        let cur = *v;
        *v = cur + b * prev;
        prev = cur;
    }
    if rng.random_bool(0.5) {
        y.reverse();
    }
    y
}

/// `x + g * noise` with `g` such that `x`'s power over the scaled noise's is `snr_db`.
fn add_at_snr(x: &mut [f32], noise: &[f32], snr_db: f64) {
    let (px, pn) = (power(x), power(noise));
    if pn <= 0.0 || px <= 0.0 {
        return;
    }
    let g = (px / pn / 10f64.powf(snr_db / 10.0)).sqrt() as f32;
    for (a, &b) in x.iter_mut().zip(noise) {
        *a += g * b;
    }
}

impl Augmenter {
    /// With `teacher`, examples are label-free (the teacher's estimates replace any
    /// references); otherwise every example must have its references. With `perturb`,
    /// recorded noises are perturbed (speed, tilt, reversal).
    ///
    /// Errors: no examples; references missing without a teacher; a teacher that does not
    /// run at `samples`.
    pub fn new(
        examples: Vec<Example>,
        samples: usize,
        teacher: Option<&crate::onnx::ModelProto>,
        perturb: bool,
        seed: u64,
    ) -> Result<Augmenter> {
        if examples.is_empty() {
            return Err(crate::error::Error::Other(
                "dynamic mixing: no examples".into(),
            ));
        }
        if teacher.is_none() {
            if let Some(ex) = examples.iter().find(|e| e.sources.is_empty()) {
                return Err(crate::error::Error::Other(format!(
                    "dynamic mixing: '{}' has no references (s1/, ...): use --teacher",
                    ex.name
                )));
            }
        }
        let mut examples = examples;
        let teacher = teacher
            .map(|m| TractModel::new(m, &[1, 1, samples]))
            .transpose()?;
        if let Some(t) = &teacher {
            for ex in &mut examples {
                ex.sources = estimate(t, &ex.mix, samples)?;
            }
        }
        let noises = examples
            .iter()
            .map(|ex| {
                (0..ex.mix.len())
                    .map(|i| ex.mix[i] - ex.sources.iter().filter_map(|s| s.get(i)).sum::<f32>())
                    .collect()
            })
            .collect();
        Ok(Augmenter {
            examples,
            noises,
            samples,
            perturb,
            teacher,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xD1CE),
        })
    }

    /// The next example: input `[samples]`, targets `[S][samples]`.
    pub fn item(&mut self) -> Item {
        let (n, k) = (self.samples, self.examples.len());
        let rng = &mut self.rng;
        let s = self.examples[0].sources.len();
        let targets: Vec<Vec<f32>> = (0..s)
            .map(|j| {
                let ex = &self.examples[rng.random_range(0..k)];
                crop(&ex.sources[j], n, rng)
            })
            .collect();
        let noise = if rng.random_bool(0.5) {
            let recorded = &self.noises[rng.random_range(0..k)];
            if self.perturb {
                perturbed(recorded, n, rng)
            } else {
                crop(recorded, n, rng)
            }
        } else {
            coloured(n, rng)
        };
        let mut input: Vec<f32> = (0..n).map(|i| targets.iter().map(|t| t[i]).sum()).collect();
        add_at_snr(&mut input, &noise, rng.random_range(-5.0..10.0));
        Item { input, targets }
    }

    /// The next remix ([`Augmenter::item`]) with the teacher's outputs on it as targets
    /// `[S][samples]` (distillation, see the module docs).
    ///
    /// Errors: an augmenter built without a teacher; a teacher that fails to run.
    pub fn distilled(&mut self) -> Result<Item> {
        let mut it = self.item();
        let t = self.teacher.as_ref().ok_or_else(|| {
            crate::error::Error::Other("dynamic mixing: distillation needs a teacher".into())
        })?;
        it.targets = t
            .run(&it.input)?
            .chunks(self.samples)
            .map(<[f32]>::to_vec)
            .collect();
        Ok(it)
    }
}
