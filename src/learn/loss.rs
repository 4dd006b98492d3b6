//! Losses in Candle, on estimates and targets of shape `[S, T]` (S sources, T samples).
//!
//! - negative SI-SDR (Le Roux et al. 2019), in dB, per source then averaged;
//! - negative SNR, `-10 log10(||s||² / ||s - ŝ||²)` dB;
//!
//! both with permutation-invariant training (PIT): the minimum over source permutations,
//! and optionally with a soft threshold (Wisdom et al. 2020, "Unsupervised sound
//! separation using mixture invariant training", eq. 5): `10 log10(||t||² / (||e||² +
//! τ ||t||²))` with `τ = 10^(-max_db / 10)`, which saturates at `max_db`, so that examples
//! already matched beyond it stop dominating the gradient of a log-scale loss.
use crate::audio::metrics::permutations;
use crate::error::{Error, Result};
use candle_core::{Tensor as CTensor, D};

/// Which signal-level loss.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum Loss {
    SiSdr,
    Snr,
}

const EPS: f64 = 1e-8;

fn db(num: &CTensor, den: &CTensor, tau: f64) -> candle_core::Result<CTensor> {
    // 10 log10((num + eps) / (den + tau num + eps))
    let den = if tau > 0.0 {
        (den + (num * tau)?)?
    } else {
        den.clone()
    };
    let r = ((num + EPS)?.log()? - (den + EPS)?.log()?)?;
    r * (10.0 / std::f64::consts::LN_10)
}

/// Per-source SI-SDR in dB: `[S, T]` x `[S, T]` -> `[S]`.
pub fn si_sdr(est: &CTensor, reference: &CTensor) -> candle_core::Result<CTensor> {
    si_sdr_capped(est, reference, 0.0)
}

/// `τ` of a soft threshold at `max_db` (0: none).
fn tau(max_db: Option<f64>) -> f64 {
    max_db.map_or(0.0, |m| 10f64.powf(-m / 10.0))
}

/// Per-source SI-SDR in dB with the soft threshold `tau` (module docs): `[S, T]` x
/// `[S, T]` -> `[S]`, at most `-10 log10(tau)`.
fn si_sdr_capped(est: &CTensor, reference: &CTensor, tau: f64) -> candle_core::Result<CTensor> {
    let e = est.broadcast_sub(&est.mean_keepdim(D::Minus1)?)?;
    let s = reference.broadcast_sub(&reference.mean_keepdim(D::Minus1)?)?;
    let alpha = ((&e * &s)?.sum_keepdim(D::Minus1)? / ((s.sqr()?.sum_keepdim(D::Minus1)? + EPS)?))?;
    let target = s.broadcast_mul(&alpha)?;
    let noise = (&e - &target)?;
    db(
        &target.sqr()?.sum(D::Minus1)?,
        &noise.sqr()?.sum(D::Minus1)?,
        tau,
    )
}

/// Per-source SNR in dB: `[S, T]` x `[S, T]` -> `[S]`.
pub fn snr(est: &CTensor, reference: &CTensor) -> candle_core::Result<CTensor> {
    snr_capped(est, reference, 0.0)
}

fn snr_capped(est: &CTensor, reference: &CTensor, tau: f64) -> candle_core::Result<CTensor> {
    let noise = (reference - est)?;
    db(
        &reference.sqr()?.sum(D::Minus1)?,
        &noise.sqr()?.sum(D::Minus1)?,
        tau,
    )
}

/// PIT loss (a scalar, lower is better): minus the best mean metric over permutations of
/// the estimates. `est` and `target`: `[S, T]`.
///
/// Errors: mismatched shapes.
pub fn pit(est: &CTensor, target: &CTensor, kind: Loss) -> Result<CTensor> {
    pit_capped(est, target, kind, None)
}

/// [`pit`] with the metric soft-thresholded at `max_db` dB (module docs; `None`: none).
///
/// Errors: mismatched shapes.
pub fn pit_capped(
    est: &CTensor,
    target: &CTensor,
    kind: Loss,
    max_db: Option<f64>,
) -> Result<CTensor> {
    let tau = tau(max_db);
    let e = Error::candle("loss");
    if est.dims() != target.dims() || est.rank() != 2 {
        return Err(Error::Graph(format!(
            "loss: estimates {:?} and targets {:?} must both be [S, T]",
            est.dims(),
            target.dims()
        )));
    }
    let s = est.dim(0).map_err(e)?;
    let mut best: Option<(f64, CTensor)> = None;
    for p in permutations(s) {
        let idx = CTensor::new(
            p.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            est.device(),
        )
        .map_err(e)?;
        let permuted = est.index_select(&idx, 0).map_err(e)?;
        let m = match kind {
            Loss::SiSdr => si_sdr_capped(&permuted, target, tau),
            Loss::Snr => snr_capped(&permuted, target, tau),
        }
        .and_then(|m| m.mean_all())
        .and_then(|m| m.neg())
        .map_err(e)?;
        let v = m
            .to_dtype(candle_core::DType::F64)
            .and_then(|v| v.to_scalar::<f64>())
            .map_err(e)?;
        if best.as_ref().is_none_or(|(b, _)| v < *b) {
            best = Some((v, m));
        }
    }
    Ok(best.expect("at least one permutation").1)
}

/// The PIT loss of a graph output `y` (any shape holding `S x T` values, e.g. `[1, S, T]`)
/// against targets `[S][T]`.
///
/// Errors: an output whose size is not `S x T`.
pub fn on_targets(y: &CTensor, targets: &[Vec<f32>], kind: Loss) -> Result<CTensor> {
    on_targets_capped(y, targets, kind, None)
}

/// [`on_targets`] with the metric soft-thresholded at `max_db` dB ([`pit_capped`]).
///
/// Errors: as [`on_targets`].
pub fn on_targets_capped(
    y: &CTensor,
    targets: &[Vec<f32>],
    kind: Loss,
    max_db: Option<f64>,
) -> Result<CTensor> {
    let e = Error::candle("loss");
    let (s, t) = (targets.len(), targets.first().map_or(0, Vec::len));
    let flat: Vec<f32> = targets.iter().flatten().copied().collect();
    let target = CTensor::from_vec(flat, (s, t), y.device())
        .and_then(|t| t.to_dtype(y.dtype()))
        .map_err(e)?;
    let est = y.reshape((s, t)).map_err(|err| {
        Error::Graph(format!(
            "loss: output {:?} does not hold {s} sources of {t} samples: {err}",
            y.dims()
        ))
    })?;
    pit_capped(&est, &target, kind, max_db)
}

/// A scalar loss tensor as f64.
pub fn scalar(l: &CTensor) -> Result<f64> {
    l.to_dtype(candle_core::DType::F64)
        .and_then(|v| v.to_scalar::<f64>())
        .map_err(Error::candle("loss"))
}
