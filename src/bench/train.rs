//! `bench --train`: Candle training steps on the CPU or a CUDA GPU, the number that decides
//! how long `learn` and `finetune` take. Two steps per model and audio length, on a test
//! signal (its target: the signal scaled by 0.8):
//! - **finetune**: forward, SI-SDR loss, backward and AdamW on every weight
//!   ([`crate::learn::finetune::Trainer`]), at each batch size (copies of the signal),
//!   with its phases timed apart (the device synchronised at each boundary, in separate
//!   runs from the timed steps);
//! - **learn**: a Gumbel-Softmax mask-learner step on the gate graph at a 50% channel
//!   budget (forward and backward through the gates, weights fixed; [`crate::learn::gumbel`]).
//!
//! Median and p10/p90 of `runs` steps after `warmup` steps.
use crate::error::Result;
use crate::learn::finetune::Trainer;
use crate::learn::gumbel::{self, GumbelConfig, Item, Scores};
use crate::learn::loss::Loss;
use crate::onnx::ModelProto;
use serde::Serialize;

/// One measured step kind.
#[derive(Debug, Serialize)]
pub struct TrainRow {
    pub model: String,
    /// `cpu` or `cuda`.
    pub device: String,
    /// `finetune` or `learn`.
    pub step: String,
    pub seconds: f64,
    /// Items per step (finetune; the mask learner runs at batch 1).
    pub batch: usize,
    pub median_ms: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    /// finetune only: median wall ms of the forward pass and loss, the backward pass and the
    /// update, each ended by a device synchronisation.
    pub phases_ms: Option<[f64; 3]>,
}

/// Median, p10 and p90 (ms) of `f` over `runs` calls after `warmup` calls; the device is
/// synchronised after each call.
fn time(
    device: &candle_core::Device,
    warmup: usize,
    runs: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<[f64; 3]> {
    let sync = || {
        device
            .synchronize()
            .map_err(crate::error::Error::candle("bench"))
    };
    for _ in 0..warmup {
        f()?;
    }
    sync()?;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = std::time::Instant::now();
        f()?;
        sync()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(quantiles(&mut ms))
}

fn quantiles(ms: &mut [f64]) -> [f64; 3] {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    [at(0.5), at(0.1), at(0.9)]
}

/// Times the training steps of `model` at each of `seconds` (16 kHz) on `device`, the
/// fine-tuning step at each batch size of `batches`.
///
/// Errors: a model that cannot be lowered or trained (no learnable parameters, an op
/// without a Candle lowering), or a failed step.
pub fn bench_train(
    name: &str,
    model: &ModelProto,
    seconds: &[f64],
    batches: &[usize],
    device: &candle_core::Device,
    warmup: usize,
    runs: usize,
) -> Result<Vec<TrainRow>> {
    let dev_name = if device.is_cuda() { "cuda" } else { "cpu" };
    let mut rows = vec![];
    for &s in seconds {
        let n = (s * 16000.0).round() as usize;
        let x = crate::verify::test_signal(n, 16000.0);
        let item = Item {
            targets: vec![x.iter().map(|v| 0.8 * v).collect()],
            input: x,
        };
        let row = |step: &str, q: [f64; 3], phases| TrainRow {
            model: name.to_string(),
            device: dev_name.into(),
            step: step.into(),
            seconds: s,
            batch: 1,
            median_ms: q[0],
            p10_ms: q[1],
            p90_ms: q[2],
            phases_ms: phases,
        };
        for &b in batches {
            let mut t = Trainer::batched(model, n, b, 1e-5, 5.0, Loss::SiSdr, device)?;
            let items = vec![item.clone(); b];
            let q = time(device, warmup, runs, || t.step_batch(&items).map(|_| ()))?;
            let mut phases = vec![];
            for _ in 0..runs.max(1) {
                phases.push(t.step_timed(&items)?.1);
            }
            let median =
                |k: usize| quantiles(&mut phases.iter().map(|p| p[k] * 1e3).collect::<Vec<_>>())[0];
            let mut r = row("finetune", q, Some([median(0), median(1), median(2)]));
            r.batch = b;
            rows.push(r);
        }
        let (graph, cands) =
            crate::learn::run::gated_graph(model, n, &crate::prune::Budget::new(0.5), device)?;
        let cands: Vec<_> = cands.iter().collect();
        let cfg = GumbelConfig::default();
        let mut scores = Scores::new(&cands, cfg.init);
        let mut rng = gumbel::rng_at(0, 0);
        let q = time(device, warmup, runs, || {
            gumbel::step(&graph, &mut scores, &cfg, &item, &mut rng).map(|_| ())
        })?;
        rows.push(row("learn", q, None));
    }
    Ok(rows)
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[TrainRow]) -> String {
    let mut s = String::from(
        "| model | device | step | audio | batch | median ms | p10 | p90 | forward / backward / update ms |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let phases = r.phases_ms.map_or(String::new(), |p| {
            format!("{:.1} / {:.1} / {:.1}", p[0], p[1], p[2])
        });
        s += &format!(
            "| {} | {} | {} | {:.1} s | {} | {:.1} | {:.1} | {:.1} | {} |\n",
            r.model, r.device, r.step, r.seconds, r.batch, r.median_ms, r.p10_ms, r.p90_ms, phases
        );
    }
    s
}
