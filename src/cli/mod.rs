//! The commands of the `sepprune` binary: one module per command, each with its
//! `Args` (options and defaults) and `run`; shared helpers here.
use anyhow::{Context, Result};
use sepprune::prune::{Masks, Residual};
use sepprune::{analysis, ir::Ir, onnx, verify};
use std::path::PathBuf;

pub mod bench;
pub mod check;
pub mod compress;
pub mod eval;
pub mod finetune;
pub mod gate;
pub mod inspect;
pub mod learn;
pub mod mix;
pub mod prune;

/// `--prune-residual` is the shorthand of `--residual prune`.
pub fn residual_choice(residual: Residual, prune_residual: bool) -> Residual {
    if prune_residual {
        Residual::Prune
    } else {
        residual
    }
}

pub fn print_check(r: &verify::CheckReport) {
    for t in &r.trials {
        println!(
            "{} {:<55} kept {:>5.1}%  rel. error {:.2e}",
            if t.passed { "PASS" } else { "FAIL" },
            t.name,
            100.0 * t.kept_channels,
            t.rel_err
        );
    }
}

/// The verification length: `seconds` at 16 kHz, or the analysis length when the model
/// does not infer at that length (an export with a traced, fixed length, such as
/// TorchScript's `nn.MultiheadAttention` with its sequence length baked into a Reshape).
pub fn verify_length(ir: &Ir, seconds: f64, quiet: bool) -> usize {
    let n = (seconds * 16000.0).round().max(1.0) as usize;
    if n == ir.samples {
        return n;
    }
    let input_shape = |ir: &Ir| {
        let x = ir.graph_inputs().into_iter().next()?;
        ir.fact(&x).map(|f| f.shape.clone())
    };
    let why = match Ir::new(ir.model.clone(), n) {
        // a fixed-shape input is analysed at its declared shape, whatever the length asked
        Ok(o) if input_shape(&o) != input_shape(ir) => return n,
        Ok(_) => "its input has a fixed shape".to_string(),
        Err(e) => e.to_string(),
    };
    if !quiet {
        eprintln!(
            "note: the model does not run at {n} samples ({why}); it looks like a \
             fixed-length export, so it is verified at {} samples",
            ir.samples
        );
    }
    ir.samples
}

/// The depth-pruning part of `prune`: the blocks to remove (given, or ranked by ablation
/// on `data`), the depth-pruned model in the exporter's form, verified unless `no_verify`.
#[allow(clippy::too_many_arguments)]
pub fn depth_step(
    ir: &Ir,
    drop: Option<usize>,
    given: Vec<usize>,
    data: Option<&std::path::Path>,
    seconds: f64,
    runtime: Option<sepprune::runtime::Runtime>,
    no_verify: bool,
    verify_seconds: f64,
    quiet: bool,
) -> Result<onnx::ModelProto> {
    use sepprune::prune::depth;
    let blocks = analysis::blocks::find_blocks(ir);
    anyhow::ensure!(
        !blocks.is_empty(),
        "the model has no removable residual block"
    );
    let rt = runtime.unwrap_or_else(sepprune::runtime::Runtime::preferred);
    let removed: Vec<usize> = match drop {
        Some(n) => {
            anyhow::ensure!(
                n < blocks.len(),
                "--drop-blocks {n}: the model has {} blocks",
                blocks.len()
            );
            let data = data.context("--drop-blocks ranks blocks by ablation on --data DIR")?;
            let samples = (seconds * 16000.0).round().max(1.0) as usize;
            let crops = sepprune::learn::data::mixture_crops(data, samples, 1)?;
            let ranking = depth::ablation_ranking(ir, &blocks, &mut |m| {
                sepprune::runtime::run_each(rt, m, &crops)
            })?;
            if !quiet {
                for (b, e) in &ranking {
                    println!("block {b:>3}: output change when removed alone {:.2e}", e);
                }
            }
            let mut r: Vec<usize> = ranking.iter().take(n).map(|&(b, _)| b).collect();
            r.sort_unstable();
            r
        }
        None => given,
    };
    let dropped = depth::drop_blocks(ir, &blocks, &removed)?;
    if !no_verify {
        let n = verify_length(ir, verify_seconds, quiet);
        let x = verify::test_signal(n, 16000.0);
        let r = verify::check_depth(ir, &blocks, &removed, &dropped, &x, rt)?;
        if !quiet {
            print_check(&r);
        }
        anyhow::ensure!(r.passed, "verification failed: nothing written");
    }
    if !quiet {
        println!("blocks removed: {removed:?} of {}", blocks.len());
    }
    Ok(dropped)
}

/// How the user declares a model's inputs when the defaults do not fit (a waveform's time
/// axis last at 16 kHz; features, a fixed axis of 16 or more, at 100 frames/s).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct InputArgs {
    /// An input's dims, `T` for its time axis: `--input feats=1,T,80` (repeatable).
    #[arg(long = "input", value_name = "NAME=DIMS")]
    pub inputs: Vec<String>,
    /// Frames per second of the time axis (`T` of `--input`, and every input's time axis).
    #[arg(long)]
    pub frame_rate: Option<f64>,
}

pub fn load_ir(path: &std::path::Path, seconds: f64, rate: u32, decl: &InputArgs) -> Result<Ir> {
    let mut model = onnx::load(path)?;
    sepprune::ir::declare_inputs(&mut model, &decl.inputs, decl.frame_rate)
        .with_context(|| format!("{}: input declaration", path.display()))?;
    let samples = (seconds * rate as f64).round() as usize;
    Ir::new(model, samples).with_context(|| format!("{}: shape inference failed", path.display()))
}

/// A model at `seconds`, its channel groups, and masks read from `masks` when given.
pub fn load_analyzed(
    model: &std::path::Path,
    seconds: f64,
    masks: Option<PathBuf>,
    decl: &InputArgs,
) -> Result<(Ir, analysis::Groups, Option<Masks>)> {
    let ir = load_ir(model, seconds, 16000, decl)?;
    let groups = analysis::analyze_groups(&ir)?;
    let masks = masks
        .map(|p| Masks::read_for(&p, &ir, &groups))
        .transpose()?;
    Ok((ir, groups, masks))
}

/// One line per refitted layer group summary: mean relative reconstruction error before and
/// after, and the worst layer.
pub fn print_refit(r: &sepprune::learn::refit::Refitted) {
    let n = r.layers.len().max(1) as f64;
    let before = r.layers.iter().map(|l| l.error_before).sum::<f64>() / n;
    let after = r.layers.iter().map(|l| l.error_after).sum::<f64>() / n;
    println!(
        "refit: {} linear layers on {} crops, relative reconstruction error {:.4} -> {:.4} (mean){}",
        r.layers.len(),
        r.crops,
        before,
        after,
        if r.skipped.is_empty() {
            String::new()
        } else {
            format!(", {} left as they were", r.skipped.len())
        }
    );
    for (node, why) in &r.skipped {
        println!("  skipped {node}: {why}");
    }
}
