//! Verification, the central property of the compiler:
//! 1. the gate graph with all gates at 1 computes the original model (rel. error <= 1e-5);
//! 2. for binary masks, the slimmed model equals the gate graph under the same mask
//!    (rel. error <= 1e-4): the chosen masks and `trials` random masks.
//!
//! Relative error is `max|a - b| / max|a|` over the first output.
use crate::analysis::Groups;
use crate::error::{Error, Result};
use crate::gates::gate_graph;
use crate::ir::Ir;
use crate::prune::{slim, Masks};
use crate::runtime::{rel_err, tract::TractModel};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use serde::Serialize;

pub const TOL_IDENTITY: f64 = 1e-5;
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

/// Runs the checks in tract on input `x` (the model's input shape at `ir.samples`).
pub fn check(
    ir: &Ir,
    groups: &Groups,
    masks: Option<&Masks>,
    trials: usize,
    seed: u64,
    x: &[f32],
) -> Result<CheckReport> {
    let input = ir
        .graph_inputs()
        .first()
        .cloned()
        .ok_or_else(|| Error::Other("model has no input".into()))?;
    let shape = ir.fact(&input).expect("input fact").shape.clone();
    let run =
        |m: &crate::onnx::ModelProto| -> Result<Vec<f32>> { TractModel::new(m, &shape)?.run(x) };
    let original = run(&ir.model)?;
    let mut out = vec![];
    let ones = run(&gate_graph(ir, groups, None)?)?;
    let e = rel_err(&original, &ones);
    out.push(Trial {
        name: "gate graph, all ones vs original".into(),
        kept_channels: 1.0,
        rel_err: e,
        passed: e <= TOL_IDENTITY,
    });
    let mut cases: Vec<(String, Masks)> = vec![];
    if let Some(m) = masks {
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
    for (name, m) in cases {
        let a = run(&slim(ir, groups, &m)?.model)?;
        let b = run(&gate_graph(ir, groups, Some(&m))?)?;
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
        runtime: "tract".into(),
        samples: ir.samples,
        trials: out,
        passed,
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
