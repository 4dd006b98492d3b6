//! Verification, the central property of the compiler:
//! 1. the canonical form computes the exported model (rel. error <= 1e-4, the rounding of
//!    decomposed norms), and the gate graph with all gates at 1 computes the canonical form
//!    (rel. error <= 1e-5);
//! 2. for binary masks, the slimmed model equals the gate graph under the same mask
//!    (rel. error <= 1e-4): the chosen masks and `trials` random masks.
//!
//! Relative error is `max|a - b| / max|a|` over every float output, concatenated. Checks run in ORT or tract
//! (`sepprune check --runtime`); `prune` uses ORT when its library loads, else tract.
use crate::analysis::Groups;
use crate::error::{Error, Result};
use crate::gates::gate_graph;
use crate::ir::Ir;
use crate::onnx::ModelProto;
use crate::prune::{slim, Masks};
use crate::runtime::{rel_err, Runner, Runtime};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use serde::Serialize;

pub const TOL_IDENTITY: f64 = 1e-5;
/// The canonical form (exporter patterns rewritten: a LayerNormalization decomposed into
/// ReduceMean/Sub/Div) against the exported model: a rounding difference, 1.2e-5 relative
/// against ORT's fused LayerNorm kernel on Whisper-base's six layers.
pub const TOL_CANONICAL: f64 = 1e-4;
pub const TOL_MASKED: f64 = 1e-4;

#[derive(Debug, Serialize)]
pub struct Trial {
    pub name: String,
    pub kept_channels: f64,
    pub rel_err: f64,
    pub passed: bool,
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub runtime: String,
    pub samples: usize,
    pub trials: Vec<Trial>,
    pub passed: bool,
}

/// Random binary masks: every prunable group keeps a random subset of a random size.
pub fn random_masks(groups: &Groups, seed: u64) -> Masks {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut m = Masks::new();
    for g in groups.prunable() {
        let k = rng.random_range(1..=g.size);
        m.insert(g.id, g.size, sample(&mut rng, g.size, k).into_vec());
    }
    m
}

fn kept_share(groups: &Groups, m: &Masks) -> f64 {
    let (mut k, mut t) = (0usize, 0usize);
    for g in groups.prunable() {
        t += g.size;
        k += m.keep(g.id).map(|x| x.len()).unwrap_or(g.size);
    }
    k as f64 / t.max(1) as f64
}

/// One model to build and run: the original, a gate graph or a slimmed model.
enum Job<'a> {
    Original,
    Canonical,
    Gated(Option<&'a Masks>),
    Slim(&'a Masks),
    Given(&'a ModelProto),
}

/// Runs the checks in `runtime` on input `x` (the model's input, of any length: the time
/// axis is the one inferred at `ir.samples`):
/// all-ones gates against the original, then `masks` (when given) and `trials` random masks
/// (seeds `seed`, `seed + 1`, ...), slim against gated. `slimmed`: the slimmed model of
/// `masks` when the caller has it (the very model it writes), else it is sliced here. The
/// models are built and run in parallel over the available cores (ORT sessions get one
/// intra-op thread each).
///
/// Errors: a model that cannot be built (slicing, gate graph) or run in `runtime`.
pub fn check(
    ir: &Ir,
    groups: &Groups,
    masks: Option<(&Masks, Option<&ModelProto>)>,
    trials: usize,
    seed: u64,
    x: &[f32],
    runtime: Runtime,
) -> Result<CheckReport> {
    let input = ir
        .graph_inputs()
        .first()
        .cloned()
        .ok_or_else(|| Error::Graph("model has no input".into()))?;
    // the input shape at `ir.samples`, with the time axis set to the signal's length
    let mut shape = ir.fact(&input).expect("input fact").shape.clone();
    let n: usize = shape.iter().product();
    if let Some(t) = shape.iter().rposition(|&d| d == ir.samples) {
        shape[t] = x.len() * ir.samples / n.max(1);
    }
    // an input without a time axis (a fixed-length export, features): a test signal of
    // its own size
    let own;
    let x = if shape.iter().product::<usize>() == x.len() {
        x
    } else {
        shape = ir.fact(&input).expect("input fact").shape.clone();
        own = test_signal(shape.iter().product(), 16000.0);
        &own
    };
    let mut cases: Vec<(String, Masks)> = vec![];
    if let Some((m, _)) = masks {
        cases.push(("slim vs gate graph, given masks".into(), m.clone()));
    }
    for t in 0..trials {
        cases.push((
            format!(
                "slim vs gate graph, random masks (seed {})",
                seed + t as u64
            ),
            random_masks(groups, seed + t as u64),
        ));
    }
    let mut jobs = vec![Job::Original, Job::Canonical, Job::Gated(None)];
    for (i, (_, m)) in cases.iter().enumerate() {
        jobs.push(match masks {
            Some((_, Some(model))) if i == 0 => Job::Given(model),
            _ => Job::Slim(m),
        });
        jobs.push(Job::Gated(Some(m)));
    }
    let run = |job: &Job| -> Result<Vec<f32>> {
        let owned;
        let model = match job {
            // the exporter's own forms (canonical rewrites undone), so the check also
            // covers the canonicalisation
            Job::Original => {
                owned = ir.exported(&ir.model);
                &owned
            }
            Job::Canonical => &ir.model,
            Job::Given(m) => *m,
            Job::Gated(m) => {
                owned = gate_graph(ir, groups, *m)?;
                &owned
            }
            Job::Slim(m) => {
                owned = slim(ir, groups, m)?.model;
                &owned
            }
        };
        Runner::exact(runtime, model, &shape)?.run(x)
    };
    let mut outs = parallel_map(&jobs, run).into_iter();
    let mut next = || outs.next().expect("one output per job");
    let (original, canonical, ones) = (next()?, next()?, next()?);
    let (ec, eg) = (rel_err(&original, &canonical), rel_err(&canonical, &ones));
    let mut out = vec![
        Trial {
            name: "canonical form vs original".into(),
            kept_channels: 1.0,
            rel_err: ec,
            passed: ec <= TOL_CANONICAL,
        },
        Trial {
            name: "gate graph, all ones vs canonical form".into(),
            kept_channels: 1.0,
            rel_err: eg,
            passed: eg <= TOL_IDENTITY,
        },
    ];
    for (name, m) in cases {
        let (a, b) = (next()?, next()?);
        let e = rel_err(&b, &a);
        out.push(Trial {
            name,
            kept_channels: kept_share(groups, &m),
            rel_err: e,
            passed: e <= TOL_MASKED,
        });
    }
    let passed = out.iter().all(|t| t.passed);
    Ok(CheckReport {
        runtime: runtime.name().into(),
        samples: ir.samples,
        trials: out,
        passed,
    })
}

/// `f` over `items` on up to `available_parallelism` threads, results in input order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                *slots[i].lock().expect("no panics while held") = Some(r);
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("no panics while held")
                .expect("every item ran")
        })
        .collect()
}

/// The slimmed model of `ir` under `masks`, verified: sliced, then checked against the gate
/// graph ([`check`], with `trials` random masks more, on a test signal at `ir.samples`) in
/// the preferred runtime. Returns the slim IR and the model to write (in the exporter's
/// form).
///
/// Errors: masks that do not fit `groups`; slicing; [`Error::Verification`] when a check
/// fails (nothing may be written then).
pub fn slim_verified(
    ir: &Ir,
    groups: &Groups,
    masks: &Masks,
    trials: usize,
    seed: u64,
) -> Result<(Ir, ModelProto, CheckReport)> {
    masks.validate(groups)?;
    let slim_ir = slim(ir, groups, masks)?;
    let exported = slim_ir.exported(&slim_ir.model);
    let x = test_signal(ir.samples, 16000.0);
    let report = check(
        ir,
        groups,
        Some((masks, Some(&exported))),
        trials,
        seed,
        &x,
        Runtime::preferred(),
    )?;
    if !report.passed {
        return Err(Error::Verification(String::new()));
    }
    Ok((slim_ir, exported, report))
}

/// Depth pruning's checks in `runtime` on the model input `x` (`[1, 1, len]`): the block
/// gate graph with every gate at 1 against the original, and with the gates of `removed`
/// at 0 against `dropped`, the depth-pruned model (the one the caller writes, in the
/// exporter's form). `kept_channels` reports the share of blocks kept.
///
/// Errors: a model that cannot be built or run in `runtime`.
pub fn check_depth(
    ir: &Ir,
    blocks: &[crate::analysis::blocks::Block],
    removed: &[usize],
    dropped: &ModelProto,
    x: &[f32],
    runtime: Runtime,
) -> Result<CheckReport> {
    use crate::prune::depth::block_gate_graph;
    let shape = [1, 1, x.len()];
    let run = |m: &ModelProto| Runner::exact(runtime, m, &shape)?.run(x);
    let ones = vec![1.0; blocks.len()];
    let gates: Vec<f32> = (0..blocks.len())
        .map(|b| if removed.contains(&b) { 0.0 } else { 1.0 })
        .collect();
    // against the canonical form the block gates are inserted in ([`check`] compares it
    // with the exported model)
    let original = run(&ir.model)?;
    let all_on = run(&block_gate_graph(ir, blocks, &ones)?)?;
    let gated = run(&block_gate_graph(ir, blocks, &gates)?)?;
    let slim = run(dropped)?;
    let kept = 1.0 - removed.len() as f64 / blocks.len().max(1) as f64;
    let (e1, e2) = (rel_err(&original, &all_on), rel_err(&gated, &slim));
    let trials = vec![
        Trial {
            name: "block gates, all ones vs canonical form".into(),
            kept_channels: 1.0,
            rel_err: e1,
            passed: e1 <= TOL_IDENTITY,
        },
        Trial {
            name: format!(
                "blocks removed vs block gates ({} of {})",
                removed.len(),
                blocks.len()
            ),
            kept_channels: kept,
            rel_err: e2,
            passed: e2 <= TOL_MASKED,
        },
    ];
    Ok(CheckReport {
        runtime: runtime.name().into(),
        samples: x.len(),
        passed: trials.iter().all(|t| t.passed),
        trials,
    })
}

/// A deterministic test signal (harmonics plus noise), for checks without audio.
pub fn test_signal(n: usize, rate: f64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    (0..n)
        .map(|i| {
            let t = i as f64 / rate;
            let s = (2.0 * std::f64::consts::PI * 220.0 * t).sin() * 0.3
                + (2.0 * std::f64::consts::PI * 1330.0 * t).sin() * 0.1;
            (s + 0.05 * (rng.random::<f64>() - 0.5)) as f32
        })
        .collect()
}
