//! Separation metrics.
//!
//! - SI-SDR (Le Roux et al. 2019): with zero-mean `s` (reference) and `ŝ` (estimate),
//!   `s_t = <ŝ,s> s / ||s||²`, `SI-SDR = 10 log10(||s_t||² / ||ŝ - s_t||²)` dB.
//! - SDR: `10 log10(||s||² / ||s - ŝ||²)` dB, i.e. BSS Eval's SDR without its distortion
//!   filter (no scale or filter allowance).
//! - Improvements (SI-SDRi, SDRi) subtract the metric of the mixture itself.
//! - Several sources are matched by permutation-invariant assignment (PIT) on SI-SDR.

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn zero_mean(x: &[f32]) -> Vec<f32> {
    let m = x.iter().map(|&v| v as f64).sum::<f64>() / x.len().max(1) as f64;
    x.iter().map(|&v| (v as f64 - m) as f32).collect()
}

const EPS: f64 = 1e-10;

/// SI-SDR in dB of `est` against `reference` (same length).
///
/// ```
/// use sepprune::audio::metrics::si_sdr;
/// let s: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.05).sin()).collect();
/// let scaled: Vec<f32> = s.iter().map(|v| 0.5 * v).collect();
/// assert!(si_sdr(&scaled, &s) > 80.0); // scale-invariant
/// let noisy: Vec<f32> = s.iter().enumerate().map(|(i, v)| v + if i % 2 == 0 { 0.1 } else { -0.1 }).collect();
/// assert!((si_sdr(&noisy, &s) - 17.0).abs() < 0.5); // 10 log10(0.5 / 0.01)
/// ```
pub fn si_sdr(est: &[f32], reference: &[f32]) -> f64 {
    let n = est.len().min(reference.len());
    let (e, s) = (zero_mean(&est[..n]), zero_mean(&reference[..n]));
    let alpha = dot(&e, &s) / (dot(&s, &s) + EPS);
    let target: Vec<f32> = s.iter().map(|&v| (alpha * v as f64) as f32).collect();
    let noise: Vec<f32> = e.iter().zip(&target).map(|(&a, &b)| a - b).collect();
    10.0 * ((dot(&target, &target) + EPS) / (dot(&noise, &noise) + EPS)).log10()
}

/// SDR in dB (no distortion filter).
pub fn sdr(est: &[f32], reference: &[f32]) -> f64 {
    let n = est.len().min(reference.len());
    let err: Vec<f32> = est[..n]
        .iter()
        .zip(&reference[..n])
        .map(|(&a, &b)| a - b)
        .collect();
    10.0 * ((dot(&reference[..n], &reference[..n]) + EPS) / (dot(&err, &err) + EPS)).log10()
}

/// Scores of one mixture, averaged over sources after PIT matching.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Scores {
    pub si_sdr: f64,
    pub si_sdri: f64,
    pub sdri: f64,
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n <= 1 {
        return vec![(0..n).collect()];
    }
    let mut out = vec![];
    for p in permutations(n - 1) {
        for i in 0..n {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

/// Scores estimates against references with the permutation that maximises mean SI-SDR.
pub fn score(estimates: &[Vec<f32>], references: &[Vec<f32>], mixture: &[f32]) -> Scores {
    let n = references.len().min(estimates.len());
    let best = permutations(n)
        .into_iter()
        .max_by(|a, b| {
            let f = |p: &Vec<usize>| {
                (0..n)
                    .map(|i| si_sdr(&estimates[p[i]], &references[i]))
                    .sum::<f64>()
            };
            f(a).total_cmp(&f(b))
        })
        .unwrap_or_default();
    let (mut s, mut si, mut sd) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let e = &estimates[best[i]];
        let r = &references[i];
        let v = si_sdr(e, r);
        s += v;
        si += v - si_sdr(mixture, r);
        sd += sdr(e, r) - sdr(mixture, r);
    }
    let k = n.max(1) as f64;
    Scores {
        si_sdr: s / k,
        si_sdri: si / k,
        sdri: sd / k,
    }
}
