//! `sepprune prune`: physically remove channels (by a MACs budget, `--ratio`, or from a masks
//! file) and/or whole residual blocks (`--drop-blocks`, `--blocks`).
use anyhow::{Context, Result};
use sepprune::learn::refit::{RefitOptions, RefitScope};
use sepprune::prune::{self, Criterion, Masks, Residual, Scope};
use sepprune::runtime::tract::TractTeacher;
use sepprune::{analysis, ir::Ir, onnx, verify};
use std::path::PathBuf;

use super::{depth_step, load_ir, print_check, print_refit, residual_choice, verify_length};

#[derive(clap::Args)]
pub struct Args {
    pub model: PathBuf,
    /// Output ONNX file (written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Share of the scope's MACs to remove, in [0, 1).
    #[arg(long, conflicts_with = "masks", required_unless_present_any = ["masks", "drop_blocks", "blocks"])]
    pub ratio: Option<f64>,
    /// Remove this many whole residual blocks (depth pruning; `inspect` lists them):
    /// those whose removal alone changes the output least on the mixtures of `--data`
    /// (label-free ablation). Channels are then pruned in what remains.
    #[arg(long, conflicts_with = "blocks")]
    pub drop_blocks: Option<usize>,
    /// Remove these residual blocks (ids from `inspect`).
    #[arg(long, value_delimiter = ',')]
    pub blocks: Vec<usize>,
    /// Kept channel indices per group (format: see `src/analysis/masks.rs`).
    #[arg(long)]
    pub masks: Option<PathBuf>,
    /// Channel ranking: L1/L2 norms of the group's parameters, random, first-order
    /// Taylor on the gates from `--data` (with references), or the gates' Fisher
    /// information from `--data` (label-free: any audio).
    #[arg(long, value_enum, default_value_t = Criterion::L1)]
    pub criterion: Criterion,
    /// Data for `--criterion taylor` (LibriMix-style directory with references) or
    /// `--criterion fisher` (a LibriMix-style directory or any directory of audio).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Crop length in seconds for `--criterion taylor|fisher`.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = Scope::Separator)]
    pub scope: Scope,
    /// Keep channel counts multiples of K.
    #[arg(long, default_value_t = 1)]
    pub round_to: usize,
    /// Group ids (from `inspect`) to keep whole; the budget comes from the others.
    #[arg(long, value_delimiter = ',')]
    pub keep_groups: Vec<usize>,
    /// Residual and skip streams (`inspect` marks them): kept whole while the other
    /// groups can meet the budget (auto), never pruned (keep), or pruned like the rest.
    #[arg(long, value_enum, default_value_t = Residual::Auto)]
    pub residual: Residual,
    /// Shorthand for `--residual prune`.
    #[arg(long, conflicts_with = "residual")]
    pub prune_residual: bool,
    /// Also write the masks used here.
    #[arg(long)]
    pub save_masks: Option<PathBuf>,
    /// Allow OUT to be the input file.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub decl: super::InputArgs,
    /// Skip the verification of the output.
    #[arg(long)]
    pub no_verify: bool,
    /// Runtime of the verification (default: ORT when its library loads, else tract).
    #[arg(long, value_enum)]
    pub verify_runtime: Option<sepprune::runtime::Runtime>,
    /// Length of the verification signal, in seconds at 16 kHz.
    #[arg(long, default_value_t = 0.25)]
    pub verify_seconds: f64,
    /// After slicing (and its verification), refit the linear layers by least squares
    /// on the mixtures of this directory so that they reproduce the original model's
    /// activations (He et al. 2017; label-free: references are not read).
    #[arg(long)]
    pub refit: Option<PathBuf>,
    /// Which linear layers `--refit` re-solves.
    #[arg(long, value_enum, default_value_t = RefitScope::Sliced)]
    pub refit_scope: RefitScope,
    /// Calibration crops per mixture for `--refit` (of `--seconds` each).
    #[arg(long, default_value_t = 2)]
    pub refit_crops: usize,
    /// Every N-th time step of each calibration crop enters `--refit`'s least squares
    /// (neighbouring frames are nearly collinear; 4 quarters the cost of the normal
    /// equations).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub refit_stride: usize,
    /// Extra calibration crops for `--refit`, remixed label-free: the original model's
    /// estimates on the mixtures as speech, their residuals (perturbed in speed, tilt and
    /// direction) or coloured noise as noise, at SNRs in [-5, 10] dB.
    #[arg(long, default_value_t = 0)]
    pub refit_remix: usize,
    /// Ridge strength of `--refit`, relative to the mean diagonal of the Gram matrix.
    #[arg(long, default_value_t = 1e-4)]
    pub ridge: f64,
}

pub fn run(a: Args) -> Result<()> {
    let Args {
        model,
        output,
        ratio,
        masks,
        criterion,
        seed,
        scope,
        round_to,
        save_masks,
        force,
        json,
        no_verify,
        verify_runtime,
        verify_seconds,
        keep_groups,
        residual,
        prune_residual,
        data,
        seconds,
        refit,
        refit_scope,
        refit_crops,
        refit_stride,
        refit_remix,
        ridge,
        drop_blocks,
        blocks,
        decl,
    } = a;
    let t0 = std::time::Instant::now();
    let rt = verify_runtime.unwrap_or(sepprune::runtime::Runtime::Ort);
    // load the ORT library while slicing (it takes a Python lookup and a dlopen)
    let ort_ready = (!no_verify && rt == sepprune::runtime::Runtime::Ort)
        .then(|| std::thread::spawn(sepprune::runtime::ort::available));
    let ir = load_ir(&model, 1.0, 16000, &decl)?;
    if drop_blocks.is_some() || !blocks.is_empty() {
        let depth = depth_step(
            &ir,
            drop_blocks,
            blocks,
            data.as_deref(),
            seconds,
            verify_runtime,
            no_verify,
            verify_seconds,
            json,
        )?;
        if ratio.is_none() && masks.is_none() {
            onnx::save(&depth, &output, Some(&model), force)?;
            let (a, b) = (
                analysis::profile(&ir),
                analysis::profile(&Ir::new(depth, ir.samples)?),
            );
            println!(
                "{} -> {}: params {} -> {}, MACs {} -> {} ({:.3}x), nodes {} -> {}",
                model.display(),
                output.display(),
                a.params,
                b.params,
                a.macs,
                b.macs,
                a.macs as f64 / b.macs as f64,
                a.nodes.len(),
                b.nodes.len()
            );
            return Ok(());
        }
        anyhow::bail!("--drop-blocks with --ratio or --masks: not yet");
    }
    let groups = analysis::analyze_groups(&ir)?;
    let residual = residual_choice(residual, prune_residual);
    let (masks, streams_pruned) = match (ratio, masks) {
        (Some(r), _) => {
            let budget = prune::Budget {
                ratio: r,
                criterion,
                seed,
                scope,
                round_to,
                keep_groups,
                residual,
                measure: prune::Measure::Macs,
            };
            let b = if matches!(criterion, Criterion::Taylor | Criterion::Fisher) {
                let data = data
                    .as_ref()
                    .with_context(|| format!("--criterion {criterion:?} needs --data DIR"))?;
                let samples = (seconds * 16000.0).round().max(1.0) as usize;
                let scored = if criterion == Criterion::Taylor {
                    sepprune::learn::taylor::taylor_masks
                } else {
                    sepprune::learn::fisher::fisher_masks
                };
                scored(
                    &ir,
                    &groups,
                    &budget,
                    data,
                    samples,
                    &candle_core::Device::Cpu,
                )
                .with_context(|| format!("{criterion:?} scores on {}", data.display()))?
            } else {
                prune::masks_for_ratio(&ir, &groups, &budget)?
            };
            (b.masks, b.residual)
        }
        (None, Some(p)) => (Masks::read_for(&p, &ir, &groups)?, false),
        (None, None) => unreachable!("clap requires one"),
    };
    let slim = prune::slim(&ir, &groups, &masks)
        .with_context(|| format!("{}: slicing failed", model.display()))?;
    let slim_ir = slim;
    // what is written and verified: the exporter's norm forms put back
    let exported = slim_ir.exported(&slim_ir.model);
    let slice_seconds = t0.elapsed().as_secs_f64();
    let check = if no_verify {
        None
    } else {
        let n = verify_length(&ir, verify_seconds, json);
        let x = verify::test_signal(n, 16000.0);
        let ort_ok = ort_ready
            .map(|h| h.join().unwrap_or(false))
            .unwrap_or(false);
        let rt = match verify_runtime {
            Some(rt) => rt,
            None if ort_ok => sepprune::runtime::Runtime::Ort,
            None => sepprune::runtime::Runtime::Tract,
        };
        let r = verify::check(
            &ir,
            &groups,
            Some((&masks, Some(&exported))),
            0,
            seed,
            &x,
            rt,
        )?;
        if !json {
            print_check(&r);
        }
        anyhow::ensure!(r.passed, "verification failed: nothing written");
        Some(r)
    };
    let refitted = match &refit {
        Some(data) => {
            let o = RefitOptions {
                samples: (seconds * 16000.0).round().max(1.0) as usize,
                crops_per_file: refit_crops,
                row_stride: refit_stride,
                ridge,
                scope: refit_scope,
                remix: refit_remix,
                seed: 0,
                progress: !json,
                teacher: (refit_remix > 0).then(|| TractTeacher::shared(ir.model.clone())),
            };
            let r = sepprune::learn::refit::refit(&ir, &groups, &masks, &slim_ir.model, data, &o)
                .with_context(|| format!("least-squares refit on {}", data.display()))?;
            if !json {
                print_refit(&r);
            }
            Some(r)
        }
        None => None,
    };
    let written = match &refitted {
        Some(r) => slim_ir.exported(&r.model),
        None => exported,
    };
    onnx::save(&written, &output, Some(&model), force)?;
    if let Some(p) = save_masks {
        masks.stamped(&ir, &groups).write(&p)?;
    }
    let (a, b) = (analysis::profile(&ir), analysis::profile(&slim_ir));
    let sep = |p: &analysis::Profile| p.regions[&analysis::Region::Separator].macs;
    let summary = serde_json::json!({
        "input": model, "output": output,
        "params": [a.params, b.params], "macs": [a.macs, b.macs],
        "separator_macs": [sep(&a), sep(&b)],
        "macs_ratio": b.macs as f64 / a.macs as f64,
        "separator_macs_ratio": sep(&b) as f64 / sep(&a) as f64,
        "groups_pruned": masks.groups.len(),
        "residual_streams_pruned": streams_pruned,
        "slice_seconds": slice_seconds,
        "seconds": t0.elapsed().as_secs_f64(),
        "check": check,
        "refit": refitted,
    });
    let kept = sep(&b) as f64 / sep(&a) as f64;
    if let Some(r) = ratio.filter(|&r| kept > 1.0 - r + 0.05 && residual == Residual::Keep) {
        eprintln!(
            "note: {:.1}% of the separator MACs kept, {:.1}% asked: the rest sits in \
             residual streams, which --residual keep keeps whole",
            100.0 * kept,
            100.0 * (1.0 - r)
        );
    }
    if streams_pruned && residual == Residual::Auto {
        eprintln!(
            "note: residual streams pruned too: the other groups alone could not meet \
             the budget (--residual keep keeps them whole)"
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{} -> {}: params {} -> {}, MACs {} -> {} ({:.3}x), separator MACs kept {:.1}%, {} groups pruned, masks and slicing {:.2} s",
            model.display(), output.display(), a.params, b.params, a.macs, b.macs,
            a.macs as f64 / b.macs as f64, 100.0 * sep(&b) as f64 / sep(&a) as f64, masks.groups.len(), slice_seconds
        );
    }
    Ok(())
}
