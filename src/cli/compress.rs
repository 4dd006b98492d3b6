//! `sepprune compress`: the whole pipeline (masks or blocks, prune, verify, refit,
//! fine-tune, eval, bench) and a report directory beside OUT. Exit status 2: a quality
//! gate (`--fail-below`, `--max-drop`) failed.
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    pub model: PathBuf,
    /// A set of `mix --split-by` (train/, val/, test/: trained, validated and scored
    /// apart), or a LibriMix-style scoring set (also the training set unless --train).
    #[arg(long)]
    pub data: PathBuf,
    /// Training set for masks and fine-tuning (keep it apart from --data for held-out figures).
    #[arg(long)]
    pub train: Option<PathBuf>,
    #[arg(short, long)]
    pub output: PathBuf,
    /// Share of the separator's MACs to keep.
    #[arg(long, default_value_t = 0.5)]
    pub target_macs: f64,
    /// A latency to meet instead of a MACs share: ms for 1 s of input at batch 1 on the
    /// first --runtime. Candidates cut without data (channels, and with --structure auto
    /// also whole blocks) are measured there, a latency model is fitted per structure, and
    /// the share (and structure) that meets the target while keeping the most MACs is used.
    #[arg(long, value_name = "MS")]
    pub target_latency: Option<f64>,
    /// Remove channels, whole residual blocks (depth), or choose by the first
    /// --runtime (depth for ort-cuda, where batch-1 latency follows the node count).
    #[arg(long, value_enum, default_value_t = sepprune::pipeline::Structure::Auto)]
    pub structure: sepprune::pipeline::Structure,
    /// How channels are chosen (--structure channels): the gates' Fisher information
    /// (label-free), the Gumbel learner, a norm, random, or Taylor (docs/recovery.md).
    #[arg(long, value_enum, default_value_t = sepprune::pipeline::DEFAULT_METHOD)]
    pub method: sepprune::pipeline::Method,
    /// Mask-learner iterations.
    #[arg(long, default_value_t = 200)]
    pub iters: usize,
    /// Fine-tuning budget in minutes (0: none).
    #[arg(long, default_value_t = 15.0)]
    pub finetune_minutes: f64,
    /// Fine-tuning budget in steps instead: the same model, data and seed then give the
    /// same output, byte for byte.
    #[arg(long)]
    pub finetune_steps: Option<usize>,
    /// Peak fine-tuning learning rate (Adam), decayed to 0 on a cosine over the budget.
    /// Default: 1e-4 with references, 3e-4 with --teacher (docs/recovery.md).
    #[arg(long)]
    pub finetune_lr: Option<f64>,
    /// Soft threshold of the fine-tuning loss in dB (Wisdom et al. 2020, eq. 5): an item
    /// matched beyond it adds little gradient. Default: none.
    #[arg(long, value_name = "DB")]
    pub finetune_loss_max_db: Option<f64>,
    /// With --teacher: distil only remixes on which the teacher improves the SI-SDR of the
    /// remixed speech by at least DB (it does not teach its failures); `off`: every remix.
    /// Default: 9 dB (docs/recovery.md).
    #[arg(long, value_name = "DB|off", value_parser = parse_min_gain, allow_negative_numbers = true)]
    pub finetune_min_teacher_gain: Option<MinGain>,
    /// The fine-tuned weights kept: the best validation's, or the last step's (the rate
    /// has decayed to 0). Default: best with references, last with --teacher
    /// (docs/recovery.md).
    #[arg(long, value_enum)]
    pub finetune_keep: Option<sepprune::learn::finetune::Keep>,
    /// Label-free: learn and fine-tune against the original model's outputs.
    #[arg(long)]
    pub teacher: bool,
    /// Crop length in seconds for learning and fine-tuning.
    #[arg(long, default_value_t = 0.5)]
    pub seconds: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_delimiter = ',', value_enum, default_value = "ort,tract")]
    pub runtime: Vec<sepprune::runtime::Runtime>,
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Run Candle on the first CUDA GPU (a build with `--features cuda`).
    #[arg(long)]
    pub cuda: bool,
    /// Skip the least-squares refit of the linear layers before fine-tuning.
    #[arg(long)]
    pub no_refit: bool,
    /// Label-free remixes added to the refit's calibration audio (see `prune
    /// --refit-remix`).
    #[arg(long, default_value_t = 80)]
    pub refit_remix: usize,
    /// Quality gate: exit with status 2 when the compressed model's SI-SDRi on the test
    /// set is below this (dB); the model then goes to OUT.report/rejected.onnx, not OUT.
    #[arg(long, value_name = "DB", allow_negative_numbers = true)]
    pub fail_below: Option<f64>,
    /// Quality gate: exit with status 2 when the compressed model loses more than this
    /// SI-SDRi (dB) against the original; the model then goes to OUT.report/rejected.onnx.
    #[arg(long, value_name = "DB")]
    pub max_drop: Option<f64>,
    /// Print report.json instead of the summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub decl: super::InputArgs,
}

/// `--finetune-min-teacher-gain`: a threshold in dB, or `off`.
#[derive(Clone, Copy, Debug)]
pub struct MinGain(Option<f64>);

fn parse_min_gain(s: &str) -> std::result::Result<MinGain, String> {
    match s {
        "off" => Ok(MinGain(None)),
        _ => s
            .parse::<f64>()
            .ok()
            .filter(|g| g.is_finite())
            .map(|g| MinGain(Some(g)))
            .ok_or_else(|| format!("`{s}` is neither a number of dB nor `off`")),
    }
}

pub fn run(a: Args) -> Result<()> {
    let o = sepprune::pipeline::Options {
        target_macs: a.target_macs,
        target_latency: a.target_latency,
        structure: a.structure,
        method: a.method,
        iters: a.iters,
        finetune_minutes: a.finetune_minutes,
        finetune_steps: a.finetune_steps,
        finetune_lr: a.finetune_lr.unwrap_or(if a.teacher {
            sepprune::pipeline::LABEL_FREE_LR
        } else {
            sepprune::pipeline::REFERENCES_LR
        }),
        finetune_loss_max_db: a.finetune_loss_max_db,
        finetune_min_teacher_gain: match a.finetune_min_teacher_gain {
            Some(MinGain(g)) => g,
            None => a
                .teacher
                .then_some(sepprune::pipeline::LABEL_FREE_MIN_TEACHER_GAIN),
        },
        finetune_keep: a.finetune_keep.unwrap_or(if a.teacher {
            sepprune::pipeline::LABEL_FREE_KEEP
        } else {
            sepprune::learn::finetune::Keep::Best
        }),
        teacher: a.teacher,
        seconds: a.seconds,
        seed: a.seed,
        runtimes: a.runtime,
        bench_runs: a.runs,
        progress: true,
        cuda: a.cuda,
        refit: !a.no_refit,
        refit_remix: a.refit_remix,
        fail_below: a.fail_below,
        max_drop: a.max_drop,
        inputs: a.decl.inputs.clone(),
        frame_rate: a.decl.frame_rate,
    };
    let c = sepprune::pipeline::compress(&a.model, &a.data, a.train.as_deref(), &a.output, &o)?;
    if a.json {
        println!("{}", std::fs::read_to_string(c.dir.join("report.json"))?);
    } else {
        print!("{}", c.summary);
    }
    if let Some(r) = c.rejected {
        eprintln!("error: quality gate: {r}");
        std::process::exit(2);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_teacher_gain_threshold_is_a_number_of_db_or_off() {
        assert_eq!(parse_min_gain("9").unwrap().0, Some(9.0));
        assert_eq!(parse_min_gain("-3.5").unwrap().0, Some(-3.5));
        assert_eq!(parse_min_gain("off").unwrap().0, None);
        for bad in ["", "nine", "inf", "NaN"] {
            let e = parse_min_gain(bad).unwrap_err();
            assert!(e.contains("neither"), "{bad}: {e}");
        }
    }
}
