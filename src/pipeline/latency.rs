//! `compress --target-latency MS`: the separator MACs share to keep, and with `--structure
//! auto` the structure, that meet a latency on the first `--runtime`, from a latency model
//! fitted on measured candidates (issue 23: prune for what the target runtime rewards).
//!
//! Candidates are cut without data, for timing only: channels by L1 norm at three MACs
//! shares, residual blocks in graph order at three shares (a block's latency depends on its
//! size, not on which block it is). They run interleaved with the original in one `bench`
//! (1 s of input, batch 1). Per structure, `ms = a + b * share` is fitted by least squares on
//! the original (share 1) and its candidates, and solved for the target; the share is kept
//! within the measured range (no extrapolation below the smallest candidate). With `auto`,
//! the structure that meets the target keeping the most MACs wins: channels on a
//! compute-bound CPU, depth on a launch-bound GPU at batch 1 (`docs/gpu.md`).
use super::compress::Structure;
use crate::analysis::blocks::find_blocks;
use crate::analysis::{analyze_groups, profile, Region};
use crate::bench::{self, BenchOptions, Runtime};
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::onnx::ModelProto;
use crate::prune::{depth, masks_for_ratio, slim, Budget};
use serde::Serialize;

/// Candidate shares of the separator's MACs to keep.
const SHARES: [f64; 3] = [0.75, 0.5, 0.25];

/// One measured candidate.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub structure: Structure,
    /// Share of the separator's MACs kept (as cut, not as asked).
    pub share: f64,
    /// Median latency, ms.
    pub ms: f64,
}

/// `ms = intercept + slope * share` for one structure.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Fit {
    pub structure: Structure,
    pub intercept: f64,
    pub slope: f64,
}

impl Fit {
    /// Least squares over `(share, ms)` points; `None` for fewer than two distinct shares.
    pub fn of(structure: Structure, points: &[(f64, f64)]) -> Option<Fit> {
        let n = points.len() as f64;
        let (sx, sy) = points
            .iter()
            .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
        let (mx, my) = (sx / n, sy / n);
        let sxx: f64 = points.iter().map(|&(x, _)| (x - mx).powi(2)).sum();
        if points.len() < 2 || sxx <= 1e-12 {
            return None;
        }
        let sxy: f64 = points.iter().map(|&(x, y)| (x - mx) * (y - my)).sum();
        let slope = sxy / sxx;
        Some(Fit {
            structure,
            intercept: my - slope * mx,
            slope,
        })
    }

    pub fn predict(&self, share: f64) -> f64 {
        self.intercept + self.slope * share
    }

    /// The largest share in `[lo, 1]` predicted to run within `target_ms`; `None` when
    /// latency does not fall with the share or the target is below the prediction at `lo`.
    pub fn share_for(&self, target_ms: f64, lo: f64) -> Option<f64> {
        if self.slope <= 0.0 {
            return None;
        }
        let s = (target_ms - self.intercept) / self.slope;
        (s >= lo - 1e-9).then_some(s.min(1.0))
    }
}

/// What [`plan`] chose and why.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub runtime: Runtime,
    pub target_ms: f64,
    pub original_ms: f64,
    pub structure: Structure,
    /// Share of the separator's MACs to keep (`--target-macs`).
    pub target_macs: f64,
    /// The fit's latency at that share, ms.
    pub predicted_ms: f64,
    pub candidates: Vec<Candidate>,
    pub fits: Vec<Fit>,
}

impl Plan {
    /// The plan as a Markdown section of the report.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "\n## Latency target\n\n{:.2} ms on {} (1 s, batch 1; the original: {:.2} ms): \
             {} at {:.1}% of the separator's MACs, predicted {:.2} ms.\n\n\
             | structure | MACs kept | ms |\n|---|---|---|\n| original | 100% | {:.2} |\n",
            self.target_ms,
            self.runtime.name(),
            self.original_ms,
            structure_name(self.structure),
            100.0 * self.target_macs,
            self.predicted_ms,
            self.original_ms
        );
        for c in &self.candidates {
            md += &format!(
                "| {} | {:.1}% | {:.2} |\n",
                structure_name(c.structure),
                100.0 * c.share,
                c.ms
            );
        }
        for f in &self.fits {
            md += &format!(
                "\nFit, {}: ms = {:.3} + {:.3} x share.",
                structure_name(f.structure),
                f.intercept,
                f.slope
            );
        }
        md + "\n"
    }
}

fn structure_name(s: Structure) -> &'static str {
    match s {
        Structure::Channels => "channels",
        Structure::Depth => "depth",
        Structure::Auto => "auto",
    }
}

/// The separator MACs share kept by `pruned` against `sep` (the original's).
fn share_of(pruned: &Ir, sep: f64) -> f64 {
    profile(pruned).regions[&Region::Separator].macs as f64 / sep.max(1.0)
}

/// Channel candidates: L1 masks at each of [`SHARES`], sliced (runtime form).
fn channel_candidates(ir: &Ir, sep: f64) -> Result<Vec<(f64, ModelProto)>> {
    let groups = analyze_groups(ir)?;
    SHARES
        .iter()
        .map(|&keep| {
            let masks = masks_for_ratio(ir, &groups, &Budget::new(1.0 - keep))?.masks;
            let s = slim(ir, &groups, &masks)?;
            Ok((share_of(&s, sep), s.exported(&s.model)))
        })
        .collect()
}

/// Depth candidates: blocks removed in graph order until each of [`SHARES`] is reached
/// (a set that leaves a layer nothing to read is skipped).
fn depth_candidates(ir: &Ir, sep: f64) -> Result<Vec<(f64, ModelProto)>> {
    let blocks = find_blocks(ir);
    let mut out = vec![];
    for &keep in &SHARES {
        let removed = depth::blocks_to_cut(ir, &blocks, 0..blocks.len(), (1.0 - keep) * sep);
        if removed.is_empty() {
            continue;
        }
        let m = depth::drop_blocks(ir, &blocks, &removed)?;
        let share = share_of(&Ir::new(m.clone(), ir.samples)?, sep);
        out.push((share, m));
    }
    Ok(out)
}

/// Measures the original and the candidates of `structure` (both with `Auto`) on
/// `runtime` and chooses the structure and MACs share that meet `target_ms` (module docs).
///
/// Errors: a target the original already meets, or that no structure's fit reaches within
/// its measured range (the message gives the fastest candidate measured); a model with no
/// prunable group or block.
pub fn plan(
    model: &ModelProto,
    ir: &Ir,
    target_ms: f64,
    structure: Structure,
    runtime: Runtime,
    runs: usize,
) -> Result<Plan> {
    let sep = profile(ir).regions[&Region::Separator].macs as f64;
    let mut models: Vec<(String, ModelProto)> = vec![("original".into(), model.clone())];
    let mut tags: Vec<(Structure, f64)> = vec![];
    for s in [Structure::Channels, Structure::Depth] {
        if structure != Structure::Auto && structure != s {
            continue;
        }
        let cands = match s {
            Structure::Channels => channel_candidates(ir, sep),
            _ => depth_candidates(ir, sep),
        };
        // with `auto` a structure the model does not have is skipped
        let cands = match cands {
            Ok(c) => c,
            Err(e) if structure == Structure::Auto => {
                let _ = e;
                continue;
            }
            Err(e) => return Err(e),
        };
        for (share, m) in cands {
            tags.push((s, share));
            models.push((format!("{} {share:.3}", structure_name(s)), m));
        }
    }
    if tags.is_empty() {
        return Err(Error::Option {
            option: "--target-latency",
            value: format!("{target_ms}"),
            msg: "the model has no prunable channel group or residual block".into(),
        });
    }
    let rows = bench::bench(
        &models,
        &BenchOptions {
            seconds: vec![1.0],
            runtimes: vec![runtime],
            warmup: 3,
            runs,
            ..BenchOptions::default()
        },
    )?;
    let ms: Vec<f64> = rows.iter().map(|r| r.median_ms).collect();
    let candidates: Vec<Candidate> = tags
        .iter()
        .zip(&ms[1..])
        .map(|(&(structure, share), &ms)| Candidate {
            structure,
            share,
            ms,
        })
        .collect();
    choose(runtime, target_ms, ms[0], candidates)
}

/// The plan from measurements: the original's latency and the candidates' (module docs).
///
/// Errors: as [`plan`].
pub fn choose(
    runtime: Runtime,
    target_ms: f64,
    original_ms: f64,
    candidates: Vec<Candidate>,
) -> Result<Plan> {
    if target_ms >= original_ms {
        return Err(Error::Option {
            option: "--target-latency",
            value: format!("{target_ms}"),
            msg: format!(
                "the original already runs in {original_ms:.2} ms on {}",
                runtime.name()
            ),
        });
    }
    let mut fits = vec![];
    let mut best: Option<(Structure, f64, f64)> = None;
    for s in [Structure::Channels, Structure::Depth] {
        let mut pts: Vec<(f64, f64)> = vec![(1.0, original_ms)];
        pts.extend(
            candidates
                .iter()
                .filter(|c| c.structure == s)
                .map(|c| (c.share, c.ms)),
        );
        let Some(fit) = Fit::of(s, &pts) else {
            continue;
        };
        fits.push(fit);
        let lo = pts.iter().map(|p| p.0).fold(1.0, f64::min);
        // never promise a latency below every one measured: a fit of noisy sub-millisecond
        // timings can have a negative intercept and "reach" any target
        let fastest_ms = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        if target_ms < fastest_ms {
            continue;
        }
        if let Some(share) = fit.share_for(target_ms, lo) {
            if best.is_none_or(|(_, b, _)| share > b) {
                best = Some((s, share, fit.predict(share)));
            }
        }
    }
    let Some((structure, target_macs, predicted_ms)) = best else {
        let fastest = candidates.iter().min_by(|a, b| a.ms.total_cmp(&b.ms));
        return Err(Error::Option {
            option: "--target-latency",
            value: format!("{target_ms}"),
            msg: match fastest {
                Some(f) => format!(
                    "out of reach on {}: the original runs in {original_ms:.2} ms, the \
                     fastest candidate ({} at {:.0}% of the MACs) in {:.2} ms",
                    runtime.name(),
                    structure_name(f.structure),
                    100.0 * f.share,
                    f.ms
                ),
                None => "no candidate was measured".into(),
            },
        });
    };
    Ok(Plan {
        runtime,
        target_ms,
        original_ms,
        structure,
        target_macs,
        predicted_ms,
        candidates,
        fits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(structure: Structure, share: f64, ms: f64) -> Candidate {
        Candidate {
            structure,
            share,
            ms,
        }
    }

    #[test]
    fn the_fit_is_least_squares_and_solves_within_the_measured_range() {
        let f = Fit::of(Structure::Channels, &[(1.0, 10.0), (0.5, 6.0), (0.25, 4.0)]).unwrap();
        // exact line ms = 2 + 8 share
        assert!((f.slope - 8.0).abs() < 1e-9 && (f.intercept - 2.0).abs() < 1e-9);
        assert!((f.share_for(6.0, 0.25).unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(f.share_for(3.0, 0.25), None, "below the smallest candidate");
        let flat = Fit::of(Structure::Channels, &[(1.0, 5.0), (0.5, 5.0)]).unwrap();
        assert_eq!(flat.share_for(4.0, 0.5), None, "latency that does not fall");
        assert!(Fit::of(Structure::Depth, &[(1.0, 5.0)]).is_none());
    }

    #[test]
    fn auto_takes_the_structure_that_meets_the_target_keeping_most_macs() {
        // a launch-bound runtime: channels barely help, depth does
        let cands = vec![
            c(Structure::Channels, 0.75, 9.8),
            c(Structure::Channels, 0.5, 9.6),
            c(Structure::Channels, 0.25, 9.4),
            c(Structure::Depth, 0.75, 7.5),
            c(Structure::Depth, 0.5, 5.0),
            c(Structure::Depth, 0.25, 2.5),
        ];
        let p = choose(Runtime::OrtCuda, 6.0, 10.0, cands.clone()).unwrap();
        assert_eq!(p.structure, Structure::Depth);
        assert!((p.target_macs - 0.6).abs() < 1e-6, "{}", p.target_macs);
        assert!((p.predicted_ms - 6.0).abs() < 1e-6);
        // a compute-bound one: both fall, channels faster per MAC
        let cpu = vec![
            c(Structure::Channels, 0.5, 5.0),
            c(Structure::Channels, 0.25, 2.5),
            c(Structure::Depth, 0.5, 6.0),
            c(Structure::Depth, 0.25, 4.0),
        ];
        let p = choose(Runtime::Ort, 6.0, 10.0, cpu).unwrap();
        assert_eq!(p.structure, Structure::Channels);
        let e = choose(Runtime::OrtCuda, 1.0, 10.0, cands.clone()).unwrap_err();
        assert!(e.to_string().contains("out of reach"), "{e}");
        let e = choose(Runtime::OrtCuda, 12.0, 10.0, cands).unwrap_err();
        assert!(e.to_string().contains("already runs"), "{e}");
        // noisy sub-millisecond timings: the fit, ms = -0.033 + 0.090 x share, crosses 0 at
        // a share of 0.37, inside the measured range; a target below every measured
        // latency still stays out of reach
        let noisy = vec![
            c(Structure::Channels, 0.5, 0.001),
            c(Structure::Channels, 0.3, 0.002),
        ];
        let e = choose(Runtime::Tract, 1e-9, 0.06, noisy).unwrap_err();
        assert!(e.to_string().contains("out of reach"), "{e}");
    }
}
