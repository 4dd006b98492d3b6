//! `bench`: latency of several models across runtimes, interleaved in one run so that
//! machine noise hits all models alike (NOTES.md protocol: fixed intra-op threads, inter-op 1,
//! warm-ups, repeated timed runs, median and p10/p90). Ratios are to the first model.
use crate::analysis::profile;
use crate::error::Result;
use crate::ir::Ir;
use crate::onnx::ModelProto;
use crate::runtime::Runner;
pub use crate::runtime::Runtime;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct Row {
    pub model: String,
    pub runtime: Runtime,
    pub seconds: f64,
    pub median_ms: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    /// Real-time factor: processing time / audio duration.
    pub rtf: f64,
    pub macs: u64,
    /// Speed-up over the first model (its median / this median).
    pub speedup: f64,
    /// MACs reduction over the first model (its MACs / these MACs): the ideal speed-up.
    pub macs_speedup: f64,
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// Benchmarks `models` (name, model) at each input length (seconds at `rate`).
pub fn bench(
    models: &[(String, ModelProto)],
    seconds: &[f64],
    runtimes: &[Runtime],
    rate: u32,
    threads: usize,
    warmup: usize,
    runs: usize,
) -> Result<Vec<Row>> {
    let mut rows = vec![];
    for &sec in seconds {
        let samples = (sec * rate as f64).round() as usize;
        let shape = [1, 1, samples];
        let macs: Vec<u64> = models
            .iter()
            .map(|(_, m)| Ir::new(m.clone(), samples).map(|ir| profile(&ir).macs))
            .collect::<Result<_>>()?;
        let x = crate::verify::test_signal(samples, rate as f64);
        for &rt in runtimes {
            let mut runners: Vec<Runner> = models
                .iter()
                .map(|(_, m)| -> Result<Runner> { Runner::new(rt, m, &shape, threads) })
                .collect::<Result<_>>()?;
            for r in runners.iter_mut() {
                for _ in 0..warmup {
                    r.run(&x)?;
                }
            }
            let mut times = vec![vec![]; runners.len()];
            for _ in 0..runs {
                for (i, r) in runners.iter_mut().enumerate() {
                    let t = Instant::now();
                    r.run(&x)?;
                    times[i].push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            let base = pct(&times[0], 0.5);
            for (i, (name, _)) in models.iter().enumerate() {
                let med = pct(&times[i], 0.5);
                rows.push(Row {
                    model: name.clone(),
                    runtime: rt,
                    seconds: sec,
                    median_ms: med,
                    p10_ms: pct(&times[i], 0.1),
                    p90_ms: pct(&times[i], 0.9),
                    rtf: med / 1e3 / sec,
                    macs: macs[i],
                    speedup: base / med,
                    macs_speedup: macs[0] as f64 / macs[i] as f64,
                });
            }
        }
    }
    Ok(rows)
}

/// Markdown table of bench rows.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from("| model | runtime | audio s | median ms | p10 ms | p90 ms | RTF | GMACs | speed-up | MACs ratio | speed-up / MACs ratio |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        s += &format!(
            "| {} | {:?} | {:.1} | {:.2} | {:.2} | {:.2} | {:.4} | {:.3} | {:.2}x | {:.2}x | {:.2} |\n",
            r.model, r.runtime, r.seconds, r.median_ms, r.p10_ms, r.p90_ms, r.rtf, r.macs as f64 / 1e9, r.speedup, r.macs_speedup, r.speedup / r.macs_speedup
        );
    }
    s
}
