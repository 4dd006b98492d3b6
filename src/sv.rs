//! Speaker verification: trials from a directory of speaker folders, embeddings from a
//! model, equal error rate (EER) and minimum detection cost (minDCF).
//!
//! Every pair of utterances is a trial (same speaker: target; different: non-target), scored
//! by the cosine similarity of their embeddings. An embedding is the model's first output
//! on the whole utterance: `[1, D]` as it is, `[1, T, D]` (frame features, an encoder's last
//! layer) averaged over its frames (mean pooling), optionally centred on the set's mean
//! embedding. minDCF follows NIST SRE: `p_target` 0.01,
//! unit costs, normalised by the cost of the better trivial decision.
use crate::audio::corpus::{audio_files, speaker_of};
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::onnx::ModelProto;
use crate::runtime::{Runner, Runtime};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Utterances of `dir` (recursively, WAV and FLAC) with their speaker, the first folder
/// under `dir`.
///
/// Errors: an unreadable directory; fewer than 2 speakers or a speaker with one utterance
/// only in all (no target trial).
pub fn utterances(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let files: Vec<(PathBuf, String)> = audio_files(dir)?
        .into_iter()
        .map(|f| {
            let s = speaker_of(dir, &f);
            (f, s)
        })
        .collect();
    let mut speakers: Vec<&str> = files.iter().map(|(_, s)| s.as_str()).collect();
    speakers.sort_unstable();
    let targets = speakers.windows(2).any(|w| w[0] == w[1]);
    speakers.dedup();
    if speakers.len() < 2 || !targets {
        return Err(Error::Data(format!(
            "{}: speaker verification needs speaker folders, at least 2, one with 2 utterances or more ({} files, {} speakers)",
            dir.display(),
            files.len(),
            speakers.len()
        )));
    }
    Ok(files)
}

/// A model's plan at one input length: its input shape, output shape and session.
struct Plan {
    shape: Vec<usize>,
    out_shape: Vec<usize>,
    runner: Runner,
}

/// Embeddings of utterances by one model: a plan per input length, or one plan for a
/// fixed-length waveform input (Whisper's 30 s), which takes every utterance zero-padded
/// or cut.
pub struct Embedder<'m> {
    model: &'m ModelProto,
    runtime: Runtime,
    plans: std::collections::HashMap<usize, Plan>,
    fixed: Option<Plan>,
}

impl<'m> Embedder<'m> {
    pub fn new(model: &'m ModelProto, runtime: Runtime) -> Embedder<'m> {
        Embedder {
            model,
            runtime,
            plans: Default::default(),
            fixed: None,
        }
    }

    /// The embedding of `x` (16 kHz audio, any length): the first output, mean-pooled over
    /// its frames when it has rank 3 (`[1, T, D]`; over the frames the utterance covers
    /// when it was padded).
    ///
    /// Errors: shape inference at this length, an input that is not a waveform, or the
    /// runtime.
    pub fn embed(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        if self.fixed.is_none() && !self.plans.contains_key(&x.len()) {
            let ir = Ir::new(self.model.clone(), x.len())?;
            let input = ir
                .graph_inputs()
                .into_iter()
                .next()
                .ok_or_else(|| Error::Graph("model has no input".into()))?;
            let fact = |v: &str| ir.fact(v).map(|f| f.shape.clone()).unwrap_or_default();
            let shape = fact(&input);
            let out_shape = ir
                .graph_outputs()
                .first()
                .map(|o| fact(o))
                .unwrap_or_default();
            let n: usize = shape.iter().product();
            let waveform = shape.iter().filter(|&&d| d > 1).count() == 1;
            if n != x.len() && !waveform {
                return Err(Error::Graph(format!(
                    "input '{input}' is {shape:?} at {} samples: speaker verification needs a waveform input",
                    x.len()
                )));
            }
            let plan = Plan {
                runner: Runner::new(self.runtime, self.model, &shape, 1)?,
                shape,
                out_shape,
            };
            match n == x.len() {
                true => self.plans.insert(x.len(), plan),
                // the input did not follow the length: a fixed-length export
                false => self.fixed.replace(plan),
            };
        }
        let plan = match self.fixed.as_mut() {
            Some(p) => p,
            None => self.plans.get_mut(&x.len()).expect("planned above"),
        };
        let n: usize = plan.shape.iter().product();
        // the share of a padded input the utterance covers: frames beyond it are not pooled
        let covered = (x.len() as f64 / n as f64).min(1.0);
        let mut padded: Vec<f32> = x.iter().take(n).copied().collect();
        padded.resize(n, 0.0);
        let y = plan.runner.run(&padded)?;
        let m: usize = plan.out_shape.iter().product();
        let y = &y[..m.min(y.len())];
        Ok(match plan.out_shape.as_slice() {
            [1, t, d] => {
                let t = ((*t as f64 * covered).ceil() as usize).clamp(1, *t);
                (0..*d)
                    .map(|j| (0..t).map(|i| y[i * d + j]).sum::<f32>() / t as f32)
                    .collect()
            }
            _ => y.to_vec(),
        })
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b) + 1e-12)
}

/// Equal error rate of `scores` (higher: more likely the same speaker) with `target`
/// labels: where the miss rate and the false-alarm rate cross, their mean there. In [0, 1].
pub fn eer(scores: &[f64], target: &[bool]) -> f64 {
    let (fnr, fpr) = rates(scores, target);
    let i = (0..fnr.len())
        .min_by(|&a, &b| (fnr[a] - fpr[a]).abs().total_cmp(&(fnr[b] - fpr[b]).abs()))
        .unwrap_or(0);
    (fnr[i] + fpr[i]) / 2.0
}

/// Normalised minimum detection cost at `p_target` with unit costs (NIST SRE).
pub fn min_dcf(scores: &[f64], target: &[bool], p_target: f64) -> f64 {
    let (fnr, fpr) = rates(scores, target);
    let best = fnr
        .iter()
        .zip(&fpr)
        .map(|(m, f)| m * p_target + f * (1.0 - p_target))
        .fold(f64::INFINITY, f64::min);
    best / p_target.min(1.0 - p_target)
}

/// Miss and false-alarm rates at every threshold, from accepting nothing to everything
/// (scores sorted descending, ties broken by index).
fn rates(scores: &[f64], target: &[bool]) -> (Vec<f64>, Vec<f64>) {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let pos = target.iter().filter(|&&t| t).count().max(1) as f64;
    let neg = target.iter().filter(|&&t| !t).count().max(1) as f64;
    let (mut tp, mut fp) = (0.0, 0.0);
    let (mut fnr, mut fpr) = (vec![1.0], vec![0.0]);
    for i in order {
        if target[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        fnr.push(1.0 - tp / pos);
        fpr.push(fp / neg);
    }
    (fnr, fpr)
}

/// What `eval --task sv` reports for one model.
#[derive(Clone, Debug, Serialize)]
pub struct SvReport {
    pub utterances: usize,
    pub speakers: usize,
    pub trials: usize,
    pub target_trials: usize,
    /// Equal error rate, in [0, 1].
    pub eer: f64,
    /// Normalised minDCF at p_target 0.01.
    pub min_dcf: f64,
}

/// Speaker verification of `model` on every pair of utterances under `dir`; with `center`,
/// the embeddings' mean over the set is subtracted before scoring.
///
/// Errors: as [`utterances`] and [`Embedder::embed`]; unreadable audio.
pub fn evaluate(
    model: &ModelProto,
    dir: &Path,
    runtime: Runtime,
    center: bool,
) -> Result<SvReport> {
    let files = utterances(dir)?;
    let mut embedder = Embedder::new(model, runtime);
    let mut embs = files
        .iter()
        .map(|(f, _)| embedder.embed(&crate::audio::wav::read_at(f, 16000)?))
        .collect::<Result<Vec<_>>>()?;
    if center {
        // mean normalisation over the set: frame features of an encoder share a large
        // common component that makes every cosine close to 1
        let d = embs.first().map_or(0, Vec::len);
        let mean: Vec<f32> = (0..d)
            .map(|j| embs.iter().map(|e| e[j]).sum::<f32>() / embs.len() as f32)
            .collect();
        for e in &mut embs {
            for (v, m) in e.iter_mut().zip(&mean) {
                *v -= m;
            }
        }
    }
    let (mut scores, mut target) = (vec![], vec![]);
    for i in 0..files.len() {
        for j in i + 1..files.len() {
            scores.push(cosine(&embs[i], &embs[j]));
            target.push(files[i].1 == files[j].1);
        }
    }
    let mut speakers: Vec<&String> = files.iter().map(|(_, s)| s).collect();
    speakers.sort_unstable();
    speakers.dedup();
    Ok(SvReport {
        utterances: files.len(),
        speakers: speakers.len(),
        trials: scores.len(),
        target_trials: target.iter().filter(|&&t| t).count(),
        eer: eer(&scores, &target),
        min_dcf: min_dcf(&scores, &target, 0.01),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eer_and_min_dcf_on_known_trials() {
        // separable: every target above every non-target
        let s = [0.9, 0.8, 0.3, 0.2, 0.1];
        let t = [true, true, false, false, false];
        assert_eq!(eer(&s, &t), 0.0);
        assert_eq!(min_dcf(&s, &t, 0.01), 0.0);
        // reversed: the non-targets score highest
        let t2 = [false, false, true, true, true];
        assert!(eer(&s, &t2) > 0.5);
        // 2 targets, 2 non-targets, interleaved: the thresholds give (miss, false alarm)
        // (1,0) (1/2,0) (1/2,1/2) (0,1/2) (0,1); the rates cross at (1/2, 1/2)
        let s3 = [0.9, 0.7, 0.5, 0.1];
        let t3 = [true, false, true, false];
        assert!((eer(&s3, &t3) - 0.5).abs() < 1e-12);
        // minDCF is at most 1 (the better trivial decision)
        assert!(min_dcf(&s3, &t3, 0.01) <= 1.0 + 1e-12);
    }
}
