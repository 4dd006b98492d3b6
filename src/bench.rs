//! `bench`: latency of several models across runtimes, interleaved in one run so that
//! machine noise hits all models alike (`docs/notes.md` protocol: fixed intra-op threads, inter-op 1,
//! warm-ups, repeated timed runs, median and p10/p90). Ratios are to the first model.
//!
//! On a GPU (`ort-cuda`) the input is copied to device memory once and the output stays
//! there: a timed run is the model's execution on the device, not the PCIe copies.
pub mod train;

use crate::analysis::profile;
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::onnx::ModelProto;
pub use crate::runtime::Runtime;
use crate::runtime::{Runner, Settings};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Row {
    pub model: String,
    pub runtime: Runtime,
    /// Audio length of one batch item, in seconds.
    pub seconds: f64,
    /// Batch size (items per run).
    pub batch: usize,
    /// ORT CUDA: whether the run was captured in a CUDA graph.
    pub cuda_graph: bool,
    pub median_ms: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    /// Real-time factor: processing time / audio duration of the whole batch.
    pub rtf: f64,
    /// MACs of one batch item.
    pub macs: u64,
    /// Speed-up over the first model (its median / this median).
    pub speedup: f64,
    /// MACs reduction over the first model (its MACs / these MACs): the ideal speed-up.
    pub macs_speedup: f64,
}

/// What `bench` measures and how.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Input lengths, in seconds at `rate`.
    pub seconds: Vec<f64>,
    /// Batch sizes. A model whose input declares batch 1 gets its batch axis widened
    /// ([`crate::runtime::with_input_shape`]).
    pub batches: Vec<usize>,
    pub runtimes: Vec<Runtime>,
    /// Sample rate of the waveform input, Hz.
    pub rate: u32,
    /// ORT CPU intra-op threads.
    pub threads: usize,
    /// ORT CUDA: capture and replay CUDA graphs.
    pub cuda_graph: bool,
    pub warmup: usize,
    pub runs: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            seconds: vec![1.0, 4.0],
            batches: vec![1],
            runtimes: vec![Runtime::Ort, Runtime::Tract],
            rate: 16000,
            threads: 1,
            cuda_graph: false,
            warmup: 5,
            runs: 30,
        }
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// Benchmarks `models` (name, model) at each input length and batch size, on each runtime.
///
/// Errors: a model a runtime cannot prepare or run (with that runtime's message); an
/// empty list of lengths, batches or runtimes.
pub fn bench(models: &[(String, ModelProto)], o: &BenchOptions) -> Result<Vec<Row>> {
    if o.seconds.is_empty() || o.batches.is_empty() || o.runtimes.is_empty() || o.runs == 0 {
        return Err(Error::Option {
            option: "bench",
            value: String::new(),
            msg: "give at least one length, batch size, runtime and run".into(),
        });
    }
    let settings = Settings {
        threads: o.threads,
        cuda_graph: o.cuda_graph,
    };
    let mut rows = vec![];
    for &sec in &o.seconds {
        let samples = (sec * o.rate as f64).round() as usize;
        let irs: Vec<Ir> = models
            .iter()
            .map(|(_, m)| Ir::new(m.clone(), samples))
            .collect::<Result<_>>()?;
        let macs: Vec<u64> = irs.iter().map(|ir| profile(ir).macs).collect();
        // the first input as the IR declares it at this length (a waveform [1, 1, T] or
        // [1, T], features [1, T, 80], a fixed shape), its batch axis widened
        let first = &irs[0];
        let in_shape = first
            .graph_inputs()
            .first()
            .and_then(|x| first.fact(x))
            .map(|f| f.shape.clone())
            .ok_or_else(|| Error::Graph("bench: the model has no input".into()))?;
        let one = crate::verify::test_signal(in_shape.iter().product(), o.rate as f64);
        for &batch in &o.batches {
            let mut shape = in_shape.clone();
            match shape.first_mut() {
                Some(b) if in_shape.len() >= 2 => *b = batch,
                _ if batch != 1 => {
                    return Err(Error::Option {
                        option: "--batch",
                        value: batch.to_string(),
                        msg: format!("input {in_shape:?} has no batch axis"),
                    })
                }
                _ => {}
            }
            let x: Vec<f32> = (0..batch).flat_map(|_| one.iter().copied()).collect();
            for &rt in &o.runtimes {
                let context = |name: &str, e: Error| {
                    Error::Runtime(format!(
                        "bench {name} in {} at batch {batch}, {sec} s: {e}",
                        rt.name()
                    ))
                };
                let mut runners: Vec<Runner> = models
                    .iter()
                    .map(|(name, m)| -> Result<Runner> {
                        let prepared = || -> Result<Runner> {
                            if batch > 1 {
                                keeps_items_apart(rt, m, &shape, &one, settings)?;
                            }
                            let m = crate::runtime::with_input_shape(m, &shape, false);
                            let mut r = Runner::with_settings(rt, &m, &shape, settings)?;
                            r.stage(&x)?;
                            for _ in 0..o.warmup.max(1) {
                                r.timed_run()?;
                            }
                            Ok(r)
                        };
                        prepared().map_err(|e| context(name, e))
                    })
                    .collect::<Result<_>>()?;
                let mut times = vec![vec![]; runners.len()];
                for _ in 0..o.runs {
                    for (i, r) in runners.iter_mut().enumerate() {
                        times[i].push(r.timed_run()? * 1e3);
                    }
                }
                let base = pct(&times[0], 0.5);
                for (i, (name, _)) in models.iter().enumerate() {
                    let med = pct(&times[i], 0.5);
                    rows.push(Row {
                        model: name.clone(),
                        runtime: rt,
                        seconds: sec,
                        batch,
                        cuda_graph: o.cuda_graph && rt == Runtime::OrtCuda,
                        median_ms: med,
                        p10_ms: pct(&times[i], 0.1),
                        p90_ms: pct(&times[i], 0.9),
                        rtf: med / 1e3 / (sec * batch as f64),
                        macs: macs[i],
                        speedup: base / med,
                        macs_speedup: macs[0] as f64 / macs[i] as f64,
                    });
                }
            }
        }
    }
    Ok(rows)
}

/// Checks that `m` at batch `shape[0]` computes its first and last items as it computes
/// each alone (items: `one` scaled by 1, 1.1, ...), so that a batch latency is the latency
/// of that many independent items.
///
/// Errors: a model that mixes batch items, or that does not run at that batch.
fn keeps_items_apart(
    rt: Runtime,
    m: &ModelProto,
    shape: &[usize],
    one: &[f32],
    settings: Settings,
) -> Result<()> {
    let b = shape[0];
    let items: Vec<Vec<f32>> = (0..b)
        .map(|i| one.iter().map(|v| v * (1.0 + 0.1 * i as f32)).collect())
        .collect();
    let wide = crate::runtime::with_input_shape(m, shape, false);
    let y = Runner::with_settings(rt, &wide, shape, settings)?.run(&items.concat())?;
    let mut single = shape.to_vec();
    single[0] = 1;
    let mut alone = Runner::with_settings(rt, m, &single, settings)?;
    let per = y.len() / b;
    for i in [0, b - 1] {
        let want = alone.run(&items[i])?;
        let err = crate::runtime::rel_err(&want, &y[i * per..(i + 1) * per]);
        if want.len() != per || err > 1e-4 {
            return Err(Error::Runtime(format!(
                "item {i} of a batch of {b} differs from the item alone (relative error \
                 {err:.1e}): the model mixes batch items"
            )));
        }
    }
    Ok(())
}

/// Markdown table of bench rows.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from("| model | runtime | audio s | batch | median ms | p10 ms | p90 ms | RTF | GMACs | speed-up | MACs ratio | speed-up / MACs ratio |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        s += &format!(
            "| {} | {}{} | {:.1} | {} | {:.2} | {:.2} | {:.2} | {:.4} | {:.3} | {:.2}x | {:.2}x | {:.2} |\n",
            r.model,
            r.runtime.name(),
            if r.cuda_graph { " (CUDA graph)" } else { "" },
            r.seconds,
            r.batch,
            r.median_ms,
            r.p10_ms,
            r.p90_ms,
            r.rtf,
            r.macs as f64 / 1e9,
            r.speedup,
            r.macs_speedup,
            r.speedup / r.macs_speedup
        );
    }
    s
}
