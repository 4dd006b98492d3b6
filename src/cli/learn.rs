//! `sepprune learn`: learn channel masks on a data set (Candle, CPU or CUDA) with the
//! SepPrune Gumbel learner or hard-concrete gates under a Lagrangian budget, on references,
//! teacher outputs, or the teacher's hidden states (`--distill`).
use anyhow::{Context, Result};
use sepprune::onnx;
use sepprune::prune::{self, Residual};
use sepprune::runtime::tract::TractTeacher;
use std::path::PathBuf;

use super::residual_choice;

#[derive(clap::Args)]
pub struct Args {
    pub model: PathBuf,
    /// LibriMix-style directory (mix/, s1/, ...); with --distill any directory of audio.
    #[arg(long)]
    pub data: PathBuf,
    /// Masks file to write (for `prune --masks`).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Mask learner: `gumbel` (SepPrune, Gumbel-Softmax with a straight-through
    /// estimator) or `hard-concrete` (L0 gates with a Lagrangian budget; `--ste` for the
    /// straight-through variant).
    #[arg(long, value_enum, default_value_t = LearnMethod::Gumbel)]
    pub method: LearnMethod,
    /// Hard concrete: forward the hard mask, backward through the relaxation.
    #[arg(long)]
    pub ste: bool,
    /// Share of the scope's MACs to keep in the final masks (scores ranked under this
    /// budget). Gumbel without it: the paper's rule, keep channels with sigmoid(score) > eps.
    #[arg(long, conflicts_with = "target_params")]
    pub target_macs: Option<f64>,
    /// Share of the scope's learnable parameters to keep in the final masks.
    #[arg(long)]
    pub target_params: Option<f64>,
    /// Which MACs a target counts: the separator's, or the whole model's.
    #[arg(long, value_enum, default_value_t = prune::Scope::Separator)]
    pub scope: prune::Scope,
    #[arg(long, default_value_t = 0.7)]
    pub eps: f64,
    #[arg(long, default_value_t = 1.0)]
    pub tau: f64,
    /// Steps (default: 500 Gumbel, 300 hard concrete).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Adam step size on the scores (default: 0.1 Gumbel, 0.05 hard concrete).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Hard concrete: initial drop rate of every gate.
    #[arg(long, default_value_t = 0.05)]
    pub droprate: f64,
    /// Hard concrete: gradient-ascent step size of the Lagrange multipliers.
    #[arg(long, default_value_t = 0.5)]
    pub lambda_lr: f64,
    /// Hard concrete: steps over which the target falls from 1 to the budget (default: a
    /// third of the steps).
    #[arg(long)]
    pub warmup: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Initial score of every channel.
    #[arg(long, default_value_t = 3.0)]
    pub init: f64,
    #[arg(long, value_enum, default_value_t = sepprune::learn::loss::Loss::SiSdr)]
    pub loss: sepprune::learn::loss::Loss,
    /// Targets are the original model's outputs (no references needed).
    #[arg(long)]
    pub teacher: bool,
    /// Targets are the original model's hidden states at every layer boundary and its
    /// output (label-free distillation, any model: encoders too).
    #[arg(long, conflicts_with = "teacher")]
    pub distill: bool,
    /// Train the weights together with the masks (joint pruning and distillation, as
    /// DPHuBERT), then alone under the final masks for --finetune-steps; the model with the
    /// trained weights goes to --model-out, and `prune MODEL_OUT --masks OUTPUT` slims it.
    #[arg(long, requires = "model_out")]
    pub train_weights: bool,
    /// Where the model with the trained weights is written (unpruned; with
    /// --train-weights or --method self-pinching).
    #[arg(long)]
    pub model_out: Option<PathBuf>,
    /// Also write the slimmed model (the trained weights under the final masks, or the
    /// original's without weight training), verified exact against the gate graph: with
    /// --method self-pinching the one-pass result, pruned and fine-tuned.
    #[arg(long)]
    pub slim_out: Option<PathBuf>,
    /// AdamW step size of the weights.
    #[arg(long, default_value_t = 2e-4)]
    pub weights_lr: f64,
    /// Steps of training the weights alone under the final masks.
    #[arg(long, default_value_t = 200)]
    pub finetune_steps: usize,
    /// With --distill: held-out audio (a directory of audio files, any layout) on which the
    /// final masks' per-layer cosine similarity to the original is reported.
    #[arg(long, requires = "distill")]
    pub heldout: Option<PathBuf>,
    /// In-situ pruning for a downstream task: `sv` trains a speaker head (statistics
    /// pooling, linear, additive-margin softmax) on the model's first output with the masks
    /// and the weights, on --data in speaker folders (or LibriSpeech-named files); needs
    /// --model-out. With --distill the distillation loss is added.
    #[arg(long, value_enum)]
    pub task: Option<LearnTask>,
    /// Speaker head: AM-softmax margin (cosine units).
    #[arg(long, default_value_t = 0.2)]
    pub sv_margin: f64,
    /// Speaker head: AM-softmax scale.
    #[arg(long, default_value_t = 30.0)]
    pub sv_scale: f64,
    /// Speaker head: embedding width.
    #[arg(long, default_value_t = 128)]
    pub sv_dim: usize,
    /// Speaker head: AdamW step size of the head (it starts from scratch).
    #[arg(long, default_value_t = 1e-3)]
    pub sv_lr: f64,
    /// Speaker head: epochs of training it alone on the original model's outputs first.
    #[arg(long, default_value_t = 20)]
    pub sv_head_epochs: usize,
    /// Crop length in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 2)]
    pub crops_per_file: usize,
    /// Scores checkpoint (resumed when present).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Residual and skip streams: learned only when the other groups cannot meet
    /// `--target-macs` (auto), never (keep), or always (prune).
    #[arg(long, value_enum, default_value_t = Residual::Auto)]
    pub residual: Residual,
    /// Shorthand for `--residual prune`.
    #[arg(long, conflicts_with = "residual")]
    pub prune_residual: bool,
    /// Run Candle on the first CUDA GPU (a build with `--features cuda`).
    #[arg(long)]
    pub cuda: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub decl: super::InputArgs,
}

/// The downstream tasks of `learn --task`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LearnTask {
    /// Speaker verification (a speaker head with AM-softmax).
    Sv,
}

/// The mask learners of `learn --method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LearnMethod {
    Gumbel,
    HardConcrete,
    /// One learned threshold per layer, trained with the weights (needs --model-out).
    SelfPinching,
}

pub fn run(a: Args) -> Result<()> {
    let Args {
        model,
        data,
        output,
        method,
        ste,
        target_macs,
        target_params,
        scope,
        eps,
        tau,
        iters,
        lr,
        droprate,
        lambda_lr,
        warmup,
        seed,
        init,
        loss,
        teacher,
        distill,
        heldout,
        train_weights,
        model_out,
        slim_out,
        weights_lr,
        finetune_steps,
        task,
        sv_margin,
        sv_scale,
        sv_dim,
        sv_lr,
        sv_head_epochs,
        seconds,
        crops_per_file,
        checkpoint,
        residual,
        prune_residual,
        cuda,
        json,
        decl,
    } = a;
    use sepprune::learn::{gumbel::GumbelConfig, run};
    let t0 = std::time::Instant::now();
    let mut m = onnx::load(&model)?;
    sepprune::ir::declare_inputs(&mut m, &decl.inputs, decl.frame_rate)
        .with_context(|| format!("{}: input declaration", model.display()))?;
    for t in [target_macs, target_params].into_iter().flatten() {
        anyhow::ensure!(t > 0.0 && t <= 1.0, "a target ({t}) must be in (0, 1]");
    }
    let hc = method == LearnMethod::HardConcrete;
    let sp = method == LearnMethod::SelfPinching;
    let iters = iters.unwrap_or(if hc { 300 } else { 500 });
    let lr = lr.unwrap_or(match method {
        LearnMethod::Gumbel => 0.1,
        LearnMethod::HardConcrete => 0.05,
        LearnMethod::SelfPinching => 0.01,
    });
    let sv = task == Some(LearnTask::Sv);
    anyhow::ensure!(
        model_out.is_none() || train_weights || sp || sv,
        "--model-out is written only when weights train (--train-weights, --method self-pinching, --task sv)"
    );
    anyhow::ensure!(
        !sv || model_out.is_some(),
        "--task sv trains the weights with the speaker head: give --model-out PATH for them"
    );
    anyhow::ensure!(
        !sp || model_out.is_some(),
        "--method self-pinching trains the weights: give --model-out PATH for them"
    );
    let budget_of = || match (target_macs, target_params) {
        (Some(t), _) => Ok((t, prune::Measure::Macs)),
        (None, Some(t)) => Ok((t, prune::Measure::Params)),
        (None, None) => Err(anyhow::anyhow!(
            "--method {method:?} needs a budget: --target-macs F or --target-params F"
        )),
    };
    let method = match method {
        LearnMethod::Gumbel => run::Method::Gumbel,
        LearnMethod::HardConcrete => {
            use sepprune::learn::hard_concrete::HcConfig;
            let (target, measure) = budget_of()?;
            run::Method::HardConcrete(HcConfig {
                ste,
                droprate,
                lr,
                lambda_lr,
                warmup: warmup.unwrap_or(iters / 3),
                iters,
                seed,
                target,
                measure,
                ..HcConfig::default()
            })
        }
        LearnMethod::SelfPinching => {
            let (target, measure) = budget_of()?;
            run::Method::SelfPinching(sepprune::learn::self_pinching::SpConfig {
                lr,
                lambda_lr,
                warmup: warmup.unwrap_or(iters / 3),
                iters,
                seed,
                target,
                measure,
                ..Default::default()
            })
        }
    };
    let o = run::LearnOptions {
        cfg: GumbelConfig {
            eps,
            tau,
            lr,
            iters,
            seed,
            init,
            loss,
        },
        method,
        distill,
        heldout,
        weights: (train_weights || sp || sv).then_some(run::WeightTraining {
            lr: weights_lr,
            clip: 5.0,
            finetune_steps,
        }),
        sv: sv.then_some(sepprune::learn::speaker::SvConfig {
            dim: sv_dim,
            scale: sv_scale,
            margin: sv_margin,
            lr: sv_lr,
            head_epochs: sv_head_epochs,
            seed,
        }),
        samples: (seconds * 16000.0).round().max(1.0) as usize,
        crops_per_file,
        teacher: teacher.then(|| TractTeacher::shared(m.clone())),
        budget: prune::Budget {
            residual: residual_choice(residual, prune_residual),
            scope,
            measure: match target_params {
                Some(_) => prune::Measure::Params,
                None => prune::Measure::Macs,
            },
            ..prune::Budget::new(
                target_macs
                    .or(target_params)
                    .map(|t| 1.0 - t)
                    .unwrap_or(0.0),
            )
        },
        checkpoint,
        progress: !json,
        device: sepprune::learn::device(cuda)?,
    };
    let r = run::learn(&m, &data, &o)
        .with_context(|| format!("learning masks for {}", model.display()))?;
    r.budgeted.masks.write(&output)?;
    if let (Some(path), Some(trained)) = (&model_out, &r.model) {
        onnx::save(trained, path, Some(&model), false)?;
    }
    let slim = match &slim_out {
        Some(path) => {
            let trained = r.model.clone().unwrap_or_else(|| m.clone());
            let ir = sepprune::ir::Ir::new(trained, o.samples)?;
            let groups = sepprune::analysis::analyze_groups(&ir)?;
            let (slim_ir, exported, check) =
                sepprune::verify::slim_verified(&ir, &groups, &r.budgeted.masks, 2, seed)
                    .context("slimming the learned model: nothing written")?;
            onnx::save(&exported, path, Some(&model), false)?;
            let params = sepprune::analysis::profile(&slim_ir).params;
            Some(serde_json::json!({"path": path, "params": params, "checks": check.trials.len()}))
        }
        None => None,
    };
    let b = &r.budgeted;
    let tail = r.losses.len().saturating_sub(25);
    // (a step whose loss was undefined, NaN, is left out)
    let finite: Vec<f64> = r.losses[tail..]
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .collect();
    let last = finite.iter().sum::<f64>() / finite.len().max(1) as f64;
    let summary = serde_json::json!({
        "masks": output, "steps": r.scores.step, "seconds": t0.elapsed().as_secs_f64(),
        "final_loss_mean_last_25": last,
        "scope": format!("{scope:?}").to_lowercase(),
        "scope_macs": [b.scope_macs.0, b.scope_macs.1],
        "scope_macs_kept": b.scope_macs.1 as f64 / b.scope_macs.0 as f64,
        "params": [b.params.0, b.params.1],
        "params_kept": b.params.1 as f64 / b.params.0.max(1) as f64,
        "groups_pruned": b.masks.groups.len(),
        "loss_curve": r.losses.chunks(10).map(|c| {
            let f: Vec<f64> = c.iter().copied().filter(|l| l.is_finite()).collect();
            f.iter().sum::<f64>() / f.len().max(1) as f64
        }).collect::<Vec<_>>(),
        "head_accuracy": r.head_accuracy,
        "slim": slim,
        "heldout_cosine": r.heldout.iter().map(|(l, c)| serde_json::json!({"layer": l, "cosine": c})).collect::<Vec<_>>(),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{}: {} steps in {:.0} s, loss (last 25) {:.3}, {scope:?} MACs kept {:.1}%, params kept {:.1}%, {} groups pruned",
            output.display(), r.scores.step, t0.elapsed().as_secs_f64(), last,
            100.0 * b.scope_macs.1 as f64 / b.scope_macs.0 as f64,
            100.0 * b.params.1 as f64 / b.params.0.max(1) as f64,
            b.masks.groups.len()
        );
        if let Some(a) = r.head_accuracy {
            println!(
                "  speaker head: {:.1}% of the training crops right after its warm-up",
                100.0 * a
            );
        }
        for (l, c) in &r.heldout {
            println!("  held-out cosine to the original at {l}: {c:.4}");
        }
        if let Some(s) = &slim {
            println!(
                "  slim model {} ({} params), verified exact",
                s["path"].as_str().unwrap_or(""),
                s["params"]
            );
        }
    }
    Ok(())
}
