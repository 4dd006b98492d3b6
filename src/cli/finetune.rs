//! `sepprune finetune`: fine-tune every weight of a (slimmed) model with Candle (Adam,
//! validation split, learning rate halved on plateaus, early stop); writes ONNX with updated
//! initializers.
use anyhow::{Context, Result};
use sepprune::onnx;
use sepprune::prune::Masks;
use sepprune::runtime::tract::TractTeacher;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    pub model: PathBuf,
    /// LibriMix-style directory (mix/, s1/, ...); references are not needed with --teacher.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(short, long)]
    pub output: PathBuf,
    /// Distill from this model (usually the original, unpruned one).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// At most this many passes over the training crops.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Wall-clock budget in minutes.
    #[arg(long)]
    pub minutes: Option<f64>,
    /// At most this many steps.
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Clip the gradient to this global L2 norm (0: off).
    #[arg(long, default_value_t = 5.0)]
    pub clip: f64,
    /// Crop length in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 2)]
    pub crops_per_file: usize,
    /// Every K-th file is the validation split (unless --val).
    #[arg(long, default_value_t = 5)]
    pub val_every_file: usize,
    /// A separate validation set (e.g. the val/ of `mix --split-by`).
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// A test set scored at every validation for learning curves (JSON history); it
    /// decides nothing.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Run Candle on the first CUDA GPU (a build with `--features cuda`).
    #[arg(long)]
    pub cuda: bool,
    /// Validate every N steps (default: once per epoch).
    #[arg(long)]
    pub val_every: Option<usize>,
    /// Stop after this many validations without improvement.
    #[arg(long, default_value_t = 3)]
    pub stop_after: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = sepprune::learn::loss::Loss::SiSdr)]
    pub loss: sepprune::learn::loss::Loss,
    /// Soft threshold of the training loss (dB): `10 log10(||t||² / (||e||² + τ||t||²))`,
    /// `τ = 10^(-DB/10)` (Wisdom et al. 2020, eq. 5). Validation keeps the plain metric.
    #[arg(long, value_name = "DB")]
    pub loss_max_db: Option<f64>,
    /// A fresh dynamically mixed example at every step instead of fixed crops: sources
    /// and noises of different files remixed (references), or with --teacher the
    /// teacher's speech estimates remixed with noises, the teacher's outputs on each
    /// remix being its targets (label-free distillation; validation then also holds
    /// remixes of the validation files).
    #[arg(long)]
    pub dynamic_mix: bool,
    /// With --dynamic-mix, perturb recorded noises: speed (x2/3 to x3/2), spectral tilt,
    /// time reversal.
    #[arg(long, requires = "dynamic_mix")]
    pub perturb_noise: bool,
    /// With --teacher --dynamic-mix: distil only remixes on which the teacher improves
    /// SI-SDR by at least this many dB (measured against the remixed sources).
    #[arg(long, value_name = "DB", requires_all = ["teacher", "dynamic_mix"], allow_hyphen_values = true)]
    pub min_teacher_gain: Option<f64>,
    /// With --teacher: also distil the teacher's activations at every linear layer, on
    /// the channels these masks (the ones MODEL was pruned with) kept.
    #[arg(long, requires = "teacher", value_name = "MASKS.json")]
    pub hints: Option<PathBuf>,
    /// Weight of the hint loss beside the output loss (both in dB).
    #[arg(long, default_value_t = 1.0)]
    pub hint_weight: f64,
    /// Validations without improvement before the learning rate is halved (plateau).
    #[arg(long, default_value_t = 1)]
    pub patience: usize,
    /// Learning-rate schedule: halve on plateaus, or a cosine decay to 0 over the budget
    /// (--steps, --minutes or --epochs).
    #[arg(long, value_enum, default_value_t = sepprune::learn::finetune::Schedule::Plateau)]
    pub schedule: sepprune::learn::finetune::Schedule,
    /// Linear learning-rate warm-up over the first N steps (0: none).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub warmup_steps: usize,
    /// The weights written: the best validation's, or the last step's.
    #[arg(long, value_enum, default_value_t = sepprune::learn::finetune::Keep::Best)]
    pub keep: sepprune::learn::finetune::Keep,
    /// Validate and write an exponential moving average of the weights with this decay
    /// per step (e.g. 0.998), not the last weights.
    #[arg(long)]
    pub ema: Option<f64>,
    /// Items per step. Above 1, the model is rewritten for that batch (a batch-1 export's
    /// literal batch in Reshape targets follows the input) and refused if it then computes
    /// an item differently from alone; `--hints` need 1.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Allow OUT to be the input file.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub decl: super::InputArgs,
}

pub fn run(a: Args) -> Result<()> {
    let Args {
        model,
        data,
        output,
        teacher,
        epochs,
        minutes,
        steps,
        lr,
        clip,
        seconds,
        crops_per_file,
        val_every_file,
        val,
        test,
        val_every,
        stop_after,
        seed,
        loss,
        loss_max_db,
        dynamic_mix,
        perturb_noise,
        min_teacher_gain,
        hints,
        hint_weight,
        patience,
        schedule,
        warmup_steps,
        keep,
        ema,
        batch,
        force,
        cuda,
        json,
        decl,
    } = a;
    use sepprune::learn::finetune::{finetune, FinetuneOptions};
    let mut m = onnx::load(&model)?;
    sepprune::ir::declare_inputs(&mut m, &decl.inputs, decl.frame_rate)
        .with_context(|| format!("{}: input declaration", model.display()))?;
    let o = FinetuneOptions {
        samples: (seconds * 16000.0).round().max(1.0) as usize,
        crops_per_file,
        teacher: teacher
            .as_ref()
            .map(|p| onnx::load(p).map(TractTeacher::shared))
            .transpose()?,
        lr,
        clip,
        epochs,
        steps,
        minutes,
        val_every_file,
        val_data: val,
        test_data: test,
        val_every,
        stop_after,
        seed,
        loss,
        loss_max_db,
        progress: !json,
        device: sepprune::learn::device(cuda)?,
        dynamic_mix,
        perturb_noise,
        min_teacher_gain,
        hints: hints.as_ref().map(|p| Masks::read(p)).transpose()?,
        hint_weight,
        patience,
        schedule,
        warmup_steps,
        keep,
        ema,
        batch,
    };
    let r = finetune(&m, &data, &o).with_context(|| format!("fine-tuning {}", model.display()))?;
    onnx::save(&r.model, &output, Some(&model), force)?;
    let first = &r.history[0];
    if json {
        let v = serde_json::json!({
            "input": model, "output": output, "parameters": r.parameters,
            "best": r.best, "history": r.history,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for h in &r.history {
            println!(
                "step {:>5} {:>7.0} s  train loss {:>7.2} dB  val loss {:>7.2} dB  lr {:.1e}",
                h.step, h.seconds, h.train_loss, h.val_loss, h.lr
            );
        }
        println!(
            "{} -> {}: {} parameters, validation loss {:.2} -> {:.2} dB ({} at step {})",
            model.display(),
            output.display(),
            r.parameters,
            first.val_loss,
            r.best.val_loss,
            match o.keep {
                sepprune::learn::finetune::Keep::Best => "best",
                sepprune::learn::finetune::Keep::Last => "last",
            },
            r.best.step
        );
    }
    Ok(())
}
