//! Separation metrics.
//!
//! - SI-SDR (Le Roux et al. 2019): with zero-mean `s` (reference) and `ŝ` (estimate),
//!   `s_t = <ŝ,s> s / ||s||²`, `SI-SDR = 10 log10(||s_t||² / ||ŝ - s_t||²)` dB.
//! - SDR: BSS Eval's SDR (Vincent et al. 2006) with a 512-tap distortion filter, as
//!   `torchmetrics.functional.signal_distortion_ratio` and `fast_bss_eval` compute it: the
//!   estimate is projected on the reference filtered by the best FIR filter `h` (length
//!   L = 512, from the normal equations `R h = b`, `R` the reference's autocorrelation
//!   Toeplitz matrix, `b` the cross-correlation), and with `c = bᵀh / ||ŝ||²`,
//!   `SDR = 10 log10(c / (1 - c))` dB. A gain or short filter on the estimate is allowed.
//! - Improvements (SI-SDRi, SDRi) subtract the metric of the mixture itself.
//! - Several sources are matched by permutation-invariant assignment (PIT) on SI-SDR.

/// `<a, b> = sum_t a[t] b[t]`, accumulated in f64 (over the shorter of the two).
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
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

/// Length of the distortion filter of [`sdr`] (BSS Eval's default, 32 ms at 16 kHz).
pub const SDR_FILTER: usize = 512;

/// `sum_t a[t] b[t + k]` for lags `k` in `0..lags` (zero outside the signals).
fn xcorr(a: &[f32], b: &[f32], lags: usize) -> Vec<f64> {
    (0..lags)
        .map(|k| {
            if k >= b.len() {
                return 0.0;
            }
            dot(&a[..a.len().min(b.len() - k)], &b[k..])
        })
        .collect()
}

/// BSS Eval SDR in dB of `est` against `reference` with a [`SDR_FILTER`]-tap distortion
/// filter (see the module docs).
///
/// ```
/// use sepprune::audio::metrics::sdr;
/// let s: Vec<f32> = (0..4000).map(|i| ((i * i) as f32 * 1e-4).sin()).collect();
/// // a gain and a delay are distortions the filter absorbs
/// let shifted: Vec<f32> = (0..4000).map(|i| if i >= 3 { 0.3 * s[i - 3] } else { 0.0 }).collect();
/// assert!(sdr(&shifted, &s) > 25.0); // fast_bss_eval: 32.3 dB (edges limit it)
/// ```
pub fn sdr(est: &[f32], reference: &[f32]) -> f64 {
    let n = est.len().min(reference.len());
    let (e, s) = (&est[..n], &reference[..n]);
    let l = SDR_FILTER.min(n.max(1));
    let acf = xcorr(s, s, l);
    let b = xcorr(s, e, l);
    // R h = b with R Toeplitz (symmetric); a tiny diagonal loading keeps it positive definite
    let load = acf[0] * 1e-10 + EPS;
    let r = nalgebra::DMatrix::from_fn(l, l, |i, j| {
        acf[i.abs_diff(j)] + if i == j { load } else { 0.0 }
    });
    let bv = nalgebra::DVector::from_vec(b);
    let Some(ch) = r.cholesky() else {
        return f64::NEG_INFINITY; // a silent reference
    };
    let h = ch.solve(&bv);
    let coh = (bv.dot(&h) / (dot(e, e) + EPS)).clamp(0.0, 1.0);
    10.0 * ((coh + EPS) / (1.0 - coh + EPS)).log10()
}

/// Scores of one mixture, averaged over sources after PIT matching.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Scores {
    pub si_sdr: f64,
    pub si_sdri: f64,
    pub sdri: f64,
}

/// Every permutation of `0..n` (for PIT over a few sources).
pub(crate) fn permutations(n: usize) -> Vec<Vec<usize>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from `fast_bss_eval.sdr(ref, est, filter_length=512,
    /// use_cg_iter=None, zero_mean=False)` (fast_bss_eval 0.1.4, numpy) on the same signals.
    #[test]
    fn sdr_matches_fast_bss_eval() {
        let n = 4000;
        let s: Vec<f32> = (0..n)
            .map(|i| {
                let i = i as f64;
                ((0.3 * i).sin() + 0.7 * (0.0007 * i * i).sin()) as f32
            })
            .collect();
        let noise: Vec<f32> = (0..n)
            .map(|i| {
                let h = (i as f64 * 12.9898).sin() * 43758.5453;
                (h - h.floor() - 0.5) as f32
            })
            .collect();
        let e: Vec<f32> = (0..n).map(|i| 0.5 * s[i] + 0.3 * noise[i]).collect();
        let taps = [0.2f32, 0.5, 0.1];
        let e2: Vec<f32> = (0..n)
            .map(|i| {
                let f: f32 = (0..3).filter(|&k| i >= k).map(|k| taps[k] * s[i - k]).sum();
                f + 0.05 * noise[i]
            })
            .collect();
        assert!((sdr(&e, &s) - 14.597254).abs() < 0.01, "{}", sdr(&e, &s));
        assert!((sdr(&e2, &s) - 31.6558).abs() < 0.01, "{}", sdr(&e2, &s));
    }
}
