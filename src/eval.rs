//! `eval`: a model's SI-SDR, SI-SDRi and SDRi on a LibriMix-style directory, in any runtime
//! (tract by default).
use crate::audio::{dataset, metrics};
use crate::error::{Error, Result};
use crate::onnx::ModelProto;
use crate::runtime::{Runner, Runtime};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub examples: usize,
    pub si_sdr: f64,
    pub si_sdri: f64,
    pub sdri: f64,
    pub per_example: Vec<(String, metrics::Scores)>,
}

/// Runs `model` (input `[1, 1, T]`, output `[1, n_src, T]` or `[1, T]`) in `runtime` on
/// every mixture and scores it against the references.
///
/// Errors: unreadable audio, a set without references, a model the runtime cannot run.
pub fn eval(model: &ModelProto, data: &Path, rate: u32, runtime: Runtime) -> Result<EvalReport> {
    let examples = dataset::load(data, rate)?;
    let mut plans: HashMap<usize, Runner> = HashMap::new();
    let mut per = vec![];
    for ex in &examples {
        if ex.sources.is_empty() {
            return Err(Error::Audio {
                path: data.into(),
                msg: "eval needs references (s1/, s2/ ...)".into(),
            });
        }
        let t = ex.mix.len();
        let plan = match plans.entry(t) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Runner::new(runtime, model, &[1, 1, t], 1)?)
            }
        };
        let y = plan.run(&ex.mix)?;
        let n_src = (y.len() / t).max(1);
        let est: Vec<Vec<f32>> = (0..n_src)
            .map(|k| y[k * t..((k + 1) * t).min(y.len())].to_vec())
            .collect();
        per.push((ex.name.clone(), metrics::score(&est, &ex.sources, &ex.mix)));
    }
    let n = per.len() as f64;
    Ok(EvalReport {
        examples: per.len(),
        si_sdr: per.iter().map(|p| p.1.si_sdr).sum::<f64>() / n,
        si_sdri: per.iter().map(|p| p.1.si_sdri).sum::<f64>() / n,
        sdri: per.iter().map(|p| p.1.sdri).sum::<f64>() / n,
        per_example: per,
    })
}
