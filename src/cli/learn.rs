//! `sepprune learn`: learn channel masks with the SepPrune Gumbel learner (Candle, CPU) on a
//! data set.
use anyhow::{Context, Result};
use sepprune::onnx;
use sepprune::prune::{self, Residual};
use std::path::PathBuf;

use super::residual_choice;

#[derive(clap::Args)]
pub struct Args {
    pub model: PathBuf,
    /// LibriMix-style directory (mix/, s1/, ...).
    #[arg(long)]
    pub data: PathBuf,
    /// Masks file to write (for `prune --masks`).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Share of the separator's MACs to keep in the final masks (scores ranked under this
    /// budget). Without it, the paper's rule: keep channels with sigmoid(score) > eps.
    #[arg(long)]
    pub target_macs: Option<f64>,
    #[arg(long, default_value_t = 0.7)]
    pub eps: f64,
    #[arg(long, default_value_t = 1.0)]
    pub tau: f64,
    #[arg(long, default_value_t = 500)]
    pub iters: usize,
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
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
}

pub fn run(a: Args) -> Result<()> {
    let Args {
        model,
        data,
        output,
        target_macs,
        eps,
        tau,
        iters,
        lr,
        seed,
        init,
        loss,
        teacher,
        seconds,
        crops_per_file,
        checkpoint,
        residual,
        prune_residual,
        cuda,
        json,
    } = a;
    use sepprune::learn::{gumbel::GumbelConfig, run};
    let t0 = std::time::Instant::now();
    let m = onnx::load(&model)?;
    if let Some(t) = target_macs {
        anyhow::ensure!(t > 0.0 && t <= 1.0, "--target-macs {t} must be in (0, 1]");
    }
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
        samples: (seconds * 16000.0).round().max(1.0) as usize,
        crops_per_file,
        teacher,
        budget: prune::Budget {
            residual: residual_choice(residual, prune_residual),
            ..prune::Budget::new(target_macs.map(|t| 1.0 - t).unwrap_or(0.0))
        },
        checkpoint,
        progress: !json,
        device: sepprune::learn::device(cuda)?,
    };
    let r = run::learn(&m, &data, &o)
        .with_context(|| format!("learning masks for {}", model.display()))?;
    r.budgeted.masks.write(&output)?;
    let b = &r.budgeted;
    let tail = r.losses.len().saturating_sub(25);
    let last = r.losses[tail..].iter().sum::<f64>() / (r.losses.len() - tail).max(1) as f64;
    let summary = serde_json::json!({
        "masks": output, "steps": r.scores.step, "seconds": t0.elapsed().as_secs_f64(),
        "final_loss_mean_last_25": last,
        "separator_macs": [b.scope_macs.0, b.scope_macs.1],
        "separator_macs_kept": b.scope_macs.1 as f64 / b.scope_macs.0 as f64,
        "groups_pruned": b.masks.groups.len(),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{}: {} steps in {:.0} s, loss (last 25) {:.2} dB, separator MACs kept {:.1}%, {} groups pruned",
            output.display(), r.scores.step, t0.elapsed().as_secs_f64(), last,
            100.0 * b.scope_macs.1 as f64 / b.scope_macs.0 as f64, b.masks.groups.len()
        );
    }
    Ok(())
}
