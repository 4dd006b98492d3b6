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
//! teacher's outputs on each whole mixture (in context, [`estimate`]), rescaled to the mixture
//! (least squares: a scale-invariant model's outputs have an arbitrary gain), stand in for
//! its sources, and the mixture minus their sum for its noise; they are remixed as above,
//! the teacher's estimates being the targets. Only mixtures are read.
//!
//! Distillation ([`Augmenter::distilled`]): the same remixed input, with the teacher's
//! outputs on that very input as targets (Hinton et al. 2015, "Distilling the knowledge in
//! a neural network", on augmented inputs). The student learns the teacher's function on
//! noises the data set never recorded; the teacher's own errors are part of the target, so
//! the student is never asked to beat it.
use super::data::{SharedTeacher, Teacher};
use super::gumbel::Item;
use crate::audio::dataset::Example;
use crate::error::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Draws training examples of `samples` samples from a data set's examples, or from a
/// corpus of speech and noise files ([`Augmenter::from_corpus`]).
pub struct Augmenter {
    /// Source signals per example `[example][S][len]`: references, a teacher's estimates,
    /// or clean utterances of a corpus (`S = 1`).
    sources: Vec<Vec<Vec<f32>>>,
    /// Noise recordings: each example's mixture minus the sum of its sources, or a
    /// corpus's noise files.
    noises: Vec<Vec<f32>>,
    /// Probability of coloured noise instead of a recorded one.
    coloured_share: f64,
    /// Crops drawn per source, the loudest kept (a corpus's utterances have pauses).
    crop_tries: usize,
    samples: usize,
    /// Perturb recorded noises (speed, tilt, reversal).
    perturb: bool,
    /// The teacher at `[1, 1, samples]`, label-free.
    teacher: Option<SharedTeacher>,
    /// Distil only remixes on which the teacher gains at least this many dB
    /// ([`Augmenter::with_min_teacher_gain`]).
    min_gain: Option<f64>,
    rng: ChaCha8Rng,
}

/// Longest window, in crops of `samples`, on which [`estimate`] runs the teacher: 8 s at
/// the default 0.5 s crops, twice the 4 s files on which the real Conv-TasNet was measured
/// to still gain from context (docs/recovery.md).
pub const ESTIMATE_WINDOW_CROPS: usize = 16;

/// The teacher's estimates of the sources of a whole mixture `x` `[len]`: `[S][len]`.
///
/// The teacher runs on `x` whole (windows of at most [`ESTIMATE_WINDOW_CROPS`] crops when
/// it is longer), each window zero-padded to a multiple of `samples` (so at most
/// [`ESTIMATE_WINDOW_CROPS`] input lengths, one runtime plan each), and each window's
/// outputs are rescaled to the mixture ([`align`]). In context the teacher separates much
/// better than on crops: on 25 mixtures of the speaker/noise split's training set, the
/// real Conv-TasNet's estimate scores 9.01 dB SI-SDR against the clean speech run whole,
/// 6.99 dB run on 0.5 s windows, and the noise left over (`x` minus the estimate) 8.55
/// against 6.86 dB SNR (docs/recovery.md, 2026-11-27, fourteenth session).
///
/// Errors: a teacher that does not run at a window's length.
fn estimate(teacher: &dyn Teacher, x: &[f32], samples: usize) -> Result<Vec<Vec<f32>>> {
    let samples = samples.max(1);
    let longest = ESTIMATE_WINDOW_CROPS * samples;
    let mut out: Vec<Vec<f32>> = vec![];
    for start in (0..x.len().max(1)).step_by(longest) {
        let w: &[f32] = &x[start.min(x.len())..(start + longest).min(x.len())];
        let n = w.len();
        let mut padded = w.to_vec();
        padded.resize(n.div_ceil(samples).max(1) * samples, 0.0);
        let len = padded.len();
        let y = teacher.run(&padded)?;
        let mut y: Vec<Vec<f32>> = y.chunks(len).map(|s| s[..n].to_vec()).collect();
        align(&mut y, w);
        for (j, src) in y.into_iter().enumerate() {
            if out.len() <= j {
                out.push(vec![]);
            }
            out[j].extend(src);
        }
    }
    Ok(out)
}

/// Rescales estimates `y` `[S][n]` in place by the gains `a` that best explain the mixture
/// `x` `[n]`: `min_a ||x - sum_j a_j y_j||^2` (normal equations `G a = c`, `G_ij = <y_i, y_j>`,
/// `c_i = <y_i, x>`, with a ridge of `1e-9 G_ii`).
///
/// A separator trained with a scale-invariant loss (SI-SDR) outputs its sources at an
/// arbitrary gain and sign (the real Conv-TasNet enhancer: about -6000 times the speech).
/// Without this, the residual `x - sum_j y_j` that stands for the noise would be the
/// estimates themselves, negated and amplified, not the noise. A window the teacher
/// leaves silent keeps gain 0.
fn align(y: &mut [Vec<f32>], x: &[f32]) {
    use crate::audio::metrics::dot;
    let s = y.len();
    let g = nalgebra::DMatrix::from_fn(s, s, |i, j| dot(&y[i], &y[j]));
    let c = nalgebra::DVector::from_fn(s, |i, _| dot(&y[i], x));
    // ridge relative to each estimate's own energy (gains may differ by orders of
    // magnitude); a silent estimate gets a unit diagonal and so gain 0
    let ridge = nalgebra::DMatrix::from_fn(s, s, |i, j| match (i == j, g[(i, i)]) {
        (false, _) => 0.0,
        (true, e) if e > 0.0 => 1e-9 * e,
        (true, _) => 1.0,
    });
    let gains = (g + ridge)
        .cholesky()
        .map(|ch| ch.solve(&c))
        .unwrap_or_else(|| nalgebra::DVector::zeros(s));
    for (src, &a) in y.iter_mut().zip(gains.iter()) {
        src.iter_mut().for_each(|v| *v = (*v as f64 * a) as f32);
    }
}

/// Remixes drawn per item at most when the teacher must be reliable on them.
pub const ATTEMPTS: usize = 16;

/// The teacher's mean SI-SDR improvement (dB) on remix `it`, whose targets are still the
/// remixed sources, given its outputs `out` `[S][samples]` on `it.input`; each source is
/// matched with the output closest to it (permutation-free).
fn teacher_gain(it: &Item, out: &[Vec<f32>]) -> f64 {
    use crate::audio::metrics::si_sdr;
    let gains: Vec<f64> = it
        .targets
        .iter()
        .map(|s| {
            let best = out.iter().map(|y| si_sdr(y, s)).fold(f64::MIN, f64::max);
            best - si_sdr(&it.input, s)
        })
        .collect();
    gains.iter().sum::<f64>() / gains.len().max(1) as f64
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
        teacher: Option<SharedTeacher>,
        perturb: bool,
        seed: u64,
    ) -> Result<Augmenter> {
        if examples.is_empty() {
            return Err(crate::error::Error::Data(
                "dynamic mixing: no examples".into(),
            ));
        }
        if teacher.is_none() {
            if let Some(ex) = examples.iter().find(|e| e.sources.is_empty()) {
                return Err(crate::error::Error::Data(format!(
                    "dynamic mixing: '{}' has no references (s1/, ...): use --teacher",
                    ex.name
                )));
            }
        }
        let mut examples = examples;
        if let Some(t) = &teacher {
            for ex in &mut examples {
                ex.sources = estimate(t.as_ref(), &ex.mix, samples)?;
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
            sources: examples.into_iter().map(|e| e.sources).collect(),
            noises,
            coloured_share: 0.5,
            crop_tries: 1,
            samples,
            perturb,
            teacher,
            min_gain: None,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xD1CE),
        })
    }

    /// Distil only remixes on which the teacher is reliable: its SI-SDR improvement on the
    /// remix, measured against the remixed sources (known, since the remix was built from
    /// them), must be at least `db`. A teacher that fails on some noise (passes it through)
    /// would otherwise teach the student to fail too. At most [`ATTEMPTS`] remixes are drawn
    /// per item; if none qualifies, the one the teacher improves most is used. `None`: every
    /// remix is distilled.
    pub fn with_min_teacher_gain(mut self, db: Option<f64>) -> Augmenter {
        self.min_gain = db;
        self
    }

    /// An augmenter over a corpus (a split of `mix --split-by`): every example is one
    /// utterance of `speech` (a crop where it speaks: the loudest of four draws) plus one of
    /// `noises` (perturbed with `perturb`) or, a fifth of the time, coloured noise, at an
    /// SNR uniform in [-5, 10] dB. The targets are the clean crops; with `teacher`, use
    /// [`Augmenter::distilled`] for the teacher's outputs on the remix instead.
    ///
    /// Errors: no speech or no noise; a teacher that does not run at `samples`.
    pub fn from_corpus(
        speech: Vec<Vec<f32>>,
        noises: Vec<Vec<f32>>,
        samples: usize,
        teacher: Option<SharedTeacher>,
        perturb: bool,
        seed: u64,
    ) -> Result<Augmenter> {
        let speech: Vec<Vec<f32>> = speech.into_iter().filter(|s| power(s) > 0.0).collect();
        let noises: Vec<Vec<f32>> = noises.into_iter().filter(|s| power(s) > 0.0).collect();
        if speech.is_empty() || noises.is_empty() {
            return Err(crate::error::Error::Data(
                "dynamic mixing: the corpus needs non-silent speech and noise files".into(),
            ));
        }
        Ok(Augmenter {
            sources: speech.into_iter().map(|s| vec![s]).collect(),
            noises,
            coloured_share: 0.2,
            crop_tries: 4,
            samples,
            perturb,
            teacher,
            min_gain: None,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xD1CE),
        })
    }

    /// The next example: input `[samples]`, targets `[S][samples]`.
    pub fn item(&mut self) -> Item {
        let (n, k) = (self.samples, self.sources.len());
        let rng = &mut self.rng;
        let s = self.sources[0].len();
        let targets: Vec<Vec<f32>> = (0..s)
            .map(|j| {
                let src = &self.sources[rng.random_range(0..k)][j];
                // the loudest of a few crops: a crop in a pause teaches nothing
                (0..self.crop_tries)
                    .map(|_| crop(src, n, rng))
                    .max_by(|a, b| power(a).total_cmp(&power(b)))
                    .expect("at least one crop")
            })
            .collect();
        let noise = if rng.random_bool(1.0 - self.coloured_share) {
            let recorded = &self.noises[rng.random_range(0..self.noises.len())];
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
        if self.teacher.is_none() {
            return Err(crate::error::Error::Data(
                "dynamic mixing: distillation needs a teacher".into(),
            ));
        }
        let mut best: Option<(f64, Item)> = None;
        for _ in 0..ATTEMPTS {
            let mut it = self.item();
            let t = self.teacher.as_ref().expect("checked above");
            let out: Vec<Vec<f32>> = t
                .run(&it.input)?
                .chunks(self.samples)
                .map(<[f32]>::to_vec)
                .collect();
            let Some(min) = self.min_gain else {
                it.targets = out;
                return Ok(it);
            };
            let gain = teacher_gain(&it, &out);
            it.targets = out;
            if gain >= min {
                return Ok(it);
            }
            if best.as_ref().is_none_or(|(g, _)| gain > *g) {
                best = Some((gain, it));
            }
        }
        Ok(best.expect("at least one attempt").1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::metrics::dot;

    /// `v` minus its projections on `basis` (Gram-Schmidt).
    fn orthogonal(mut v: Vec<f32>, basis: &[&[f32]]) -> Vec<f32> {
        for b in basis {
            let k = dot(&v, b) / dot(b, b);
            v.iter_mut()
                .zip(*b)
                .for_each(|(x, &y)| *x -= (k * y as f64) as f32);
        }
        v
    }

    /// A teacher that outputs its input at gain -3 and records the lengths it ran at.
    struct Echo {
        model: crate::onnx::ModelProto,
        lengths: std::sync::Mutex<Vec<usize>>,
    }

    impl Teacher for Echo {
        fn model(&self) -> &crate::onnx::ModelProto {
            &self.model
        }
        fn run(&self, x: &[f32]) -> Result<Vec<f32>> {
            self.lengths.lock().unwrap().push(x.len());
            Ok(x.iter().map(|v| -3.0 * v).collect())
        }
    }

    #[test]
    fn estimate_runs_the_teacher_on_whole_mixtures_in_bounded_windows() {
        let echo = Echo {
            model: Default::default(),
            lengths: Default::default(),
        };
        let samples = 400;
        let longest = ESTIMATE_WINDOW_CROPS * samples;
        for (len, want) in [
            (900, vec![1200]),
            (longest, vec![longest]),
            (2 * longest + 100, vec![longest, longest, 400]),
        ] {
            echo.lengths.lock().unwrap().clear();
            let x: Vec<f32> = (0..len).map(|i| ((i * 7919) % 23) as f32 - 11.0).collect();
            let y = estimate(&echo, &x, samples).unwrap();
            assert_eq!(*echo.lengths.lock().unwrap(), want, "windows of {len}");
            // each window's output rescaled to the mixture: the echo becomes `x` again
            assert_eq!(y.len(), 1);
            assert_eq!(y[0].len(), len);
            let err = y[0]
                .iter()
                .zip(&x)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                err < 1e-4,
                "{len}: the estimate is the mixture, up to {err}"
            );
        }
    }

    #[test]
    fn align_recovers_sources_at_any_gain_and_leaves_the_noise() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut draw = || {
            (0..500)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect::<Vec<f32>>()
        };
        let s1 = draw();
        let s2 = orthogonal(draw(), &[&s1]);
        let noise = orthogonal(draw(), &[&s1, &s2]);
        let x: Vec<f32> = (0..500).map(|i| s1[i] + s2[i] + noise[i]).collect();
        // a scale-invariant separator: the sources at arbitrary gains and signs
        let mut y = vec![
            s1.iter().map(|v| -6000.0 * v).collect::<Vec<f32>>(),
            s2.iter().map(|v| 0.5 * v).collect(),
        ];
        align(&mut y, &x);
        for (est, s) in y.iter().zip([&s1, &s2]) {
            let err = est
                .iter()
                .zip(s)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-4, "source recovered up to {err}");
        }
        let residual: Vec<f32> = (0..500).map(|i| x[i] - y[0][i] - y[1][i]).collect();
        let err = residual
            .iter()
            .zip(&noise)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-4, "the residual is the noise, up to {err}");
        // a silent estimate gets gain 0, never NaN
        let mut silent = vec![vec![0f32; 500]];
        align(&mut silent, &x);
        assert!(silent[0].iter().all(|&v| v == 0.0));
    }
}
