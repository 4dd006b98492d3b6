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
//! Label-free (a teacher model): the input is a mixture crop (random file and offset), with
//! coloured noise added at an SNR uniform in [0, 20] dB half the time, and another
//! mixture's crop 10 to 20 dB below it a quarter of the time; the targets are the teacher's
//! outputs on that input. Only mixtures are read.
use super::gumbel::Item;
use crate::audio::dataset::Example;
use crate::error::Result;
use crate::runtime::tract::TractModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Draws training examples of `samples` samples from a data set's examples.
pub struct Augmenter {
    examples: Vec<Example>,
    samples: usize,
    teacher: Option<TractModel>,
    rng: ChaCha8Rng,
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
    /// With `teacher`, examples are label-free; otherwise every example must have its
    /// references.
    ///
    /// Errors: no examples; references missing without a teacher; a teacher that does not
    /// load at `samples`.
    pub fn new(
        examples: Vec<Example>,
        samples: usize,
        teacher: Option<&crate::onnx::ModelProto>,
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
        let teacher = teacher
            .map(|m| TractModel::new(m, &[1, 1, samples]))
            .transpose()?;
        Ok(Augmenter {
            examples,
            samples,
            teacher,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xD1CE),
        })
    }

    /// The next example.
    ///
    /// Errors: the teacher's forward pass.
    pub fn item(&mut self) -> Result<Item> {
        let (n, k) = (self.samples, self.examples.len());
        let rng = &mut self.rng;
        if let Some(t) = &self.teacher {
            let mut input = crop(&self.examples[rng.random_range(0..k)].mix, n, rng);
            if rng.random_bool(0.5) {
                let noise = coloured(n, rng);
                add_at_snr(&mut input, &noise, rng.random_range(0.0..20.0));
            }
            if rng.random_bool(0.25) {
                let other = crop(&self.examples[rng.random_range(0..k)].mix, n, rng);
                add_at_snr(&mut input, &other, rng.random_range(10.0..20.0));
            }
            let targets = t.run(&input)?.chunks(n).map(<[f32]>::to_vec).collect();
            return Ok(Item { input, targets });
        }
        let s = self.examples[0].sources.len();
        let targets: Vec<Vec<f32>> = (0..s)
            .map(|j| {
                let ex = &self.examples[rng.random_range(0..k)];
                crop(&ex.sources[j], n, rng)
            })
            .collect();
        let noise = if rng.random_bool(0.5) {
            let ex = &self.examples[rng.random_range(0..k)];
            let residual: Vec<f32> = (0..ex.mix.len())
                .map(|i| {
                    ex.mix[i]
                        - ex.sources
                            .iter()
                            .map(|src| src.get(i).copied().unwrap_or(0.0))
                            .sum::<f32>()
                })
                .collect();
            crop(&residual, n, rng)
        } else {
            coloured(n, rng)
        };
        let mut input: Vec<f32> = (0..n).map(|i| targets.iter().map(|t| t[i]).sum()).collect();
        add_at_snr(&mut input, &noise, rng.random_range(-5.0..10.0));
        Ok(Item { input, targets })
    }
}
