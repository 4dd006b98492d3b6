//! The `sepprune` command line.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sepprune::learn::refit::{RefitOptions, RefitScope};
use sepprune::prune::{self, Criterion, Masks, Residual, Scope};
use sepprune::{analysis, gates, inspect, ir::Ir, onnx, verify};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sepprune",
    version,
    about = "Structured channel pruning for ONNX speech separation models (SepPrune)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Params and MACs per node and region (ptflops conventions), and the channel groups.
    Inspect {
        model: PathBuf,
        /// Input length in seconds.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Sample rate in Hz.
        #[arg(long, default_value_t = 16000)]
        rate: u32,
        /// Machine-readable JSON on stdout.
        #[arg(long)]
        json: bool,
        /// List every node with params or MACs.
        #[arg(long)]
        nodes: bool,
        /// MACs conventions of this ptflops release (they differ on ConvTranspose: 0.7.5
        /// counts input positions, 0.7.4 and earlier output positions).
        #[arg(long, value_enum, default_value_t = sepprune::ops::Ptflops::V075)]
        ptflops: sepprune::ops::Ptflops,
    },
    /// Physically remove channels (by a MACs budget, `--ratio`, or from a masks file) and/or
    /// whole residual blocks (`--drop-blocks`, `--blocks`).
    Prune {
        model: PathBuf,
        /// Output ONNX file (written atomically).
        #[arg(short, long)]
        output: PathBuf,
        /// Share of the scope's MACs to remove, in [0, 1).
        #[arg(long, conflicts_with = "masks", required_unless_present_any = ["masks", "drop_blocks", "blocks"])]
        ratio: Option<f64>,
        /// Remove this many whole residual blocks (depth pruning; `inspect` lists them):
        /// those whose removal alone changes the output least on the mixtures of `--data`
        /// (label-free ablation). Channels are then pruned in what remains.
        #[arg(long, conflicts_with = "blocks")]
        drop_blocks: Option<usize>,
        /// Remove these residual blocks (ids from `inspect`).
        #[arg(long, value_delimiter = ',')]
        blocks: Vec<usize>,
        /// Kept channel indices per group (format: see `src/prune/masks.rs`).
        #[arg(long)]
        masks: Option<PathBuf>,
        /// Channel ranking: L1/L2 norms of the group's parameters, random, or first-order
        /// Taylor on the gates from `--data` (with references).
        #[arg(long, value_enum, default_value_t = Criterion::L1)]
        criterion: Criterion,
        /// Data for `--criterion taylor` (LibriMix-style directory with references).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Crop length in seconds for `--criterion taylor`.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = Scope::Separator)]
        scope: Scope,
        /// Keep channel counts multiples of K.
        #[arg(long, default_value_t = 1)]
        round_to: usize,
        /// Group ids (from `inspect`) to keep whole; the budget comes from the others.
        #[arg(long, value_delimiter = ',')]
        keep_groups: Vec<usize>,
        /// Residual and skip streams (`inspect` marks them): kept whole while the other
        /// groups can meet the budget (auto), never pruned (keep), or pruned like the rest.
        #[arg(long, value_enum, default_value_t = Residual::Auto)]
        residual: Residual,
        /// Shorthand for `--residual prune`.
        #[arg(long, conflicts_with = "residual")]
        prune_residual: bool,
        /// Also write the masks used here.
        #[arg(long)]
        save_masks: Option<PathBuf>,
        /// Allow OUT to be the input file.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
        /// Skip the verification of the output.
        #[arg(long)]
        no_verify: bool,
        /// Runtime of the verification (default: ORT when its library loads, else tract).
        #[arg(long, value_enum)]
        verify_runtime: Option<sepprune::runtime::Runtime>,
        /// Length of the verification signal, in seconds at 16 kHz.
        #[arg(long, default_value_t = 0.25)]
        verify_seconds: f64,
        /// After slicing (and its verification), refit the linear layers by least squares
        /// on the mixtures of this directory so that they reproduce the original model's
        /// activations (He et al. 2017; label-free: references are not read).
        #[arg(long)]
        refit: Option<PathBuf>,
        /// Which linear layers `--refit` re-solves.
        #[arg(long, value_enum, default_value_t = RefitScope::Sliced)]
        refit_scope: RefitScope,
        /// Calibration crops per mixture for `--refit` (of `--seconds` each).
        #[arg(long, default_value_t = 2)]
        refit_crops: usize,
        /// Extra calibration crops for `--refit`, remixed label-free: the original model's
        /// estimates on the mixtures as speech, their residuals (perturbed in speed, tilt and
        /// direction) or coloured noise as noise, at SNRs in [-5, 10] dB.
        #[arg(long, default_value_t = 0)]
        refit_remix: usize,
        /// Ridge strength of `--refit`, relative to the mean diagonal of the Gram matrix.
        #[arg(long, default_value_t = 1e-4)]
        ridge: f64,
    },
    /// Write the gate graph: one gate vector per prunable channel group.
    Gate {
        model: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Gate values from a masks file (default: all ones).
        #[arg(long)]
        masks: Option<PathBuf>,
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// Build an enhancement set (mix/, s1/) from speech and noise directories.
    Mix(MixArgs),
    /// SI-SDR, SI-SDRi and SDRi on a LibriMix-style directory (mix/, s1/, s2/ ...); several
    /// models are compared, per mixing condition when the set has a conditions.json.
    Eval {
        #[arg(required = true)]
        models: Vec<PathBuf>,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 16000)]
        rate: u32,
        /// Runtime: tract, ort or ort-cuda.
        #[arg(long, value_enum, default_value = "tract")]
        runtime: sepprune::runtime::Runtime,
        #[arg(long)]
        json: bool,
    },
    /// Latency across runtimes (interleaved runs), beside the MACs ratio. Ratios are to the first model.
    Bench {
        models: Vec<PathBuf>,
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        seconds: Vec<f64>,
        /// Runtimes: ort, ort-cuda (onnxruntime-gpu), tract.
        #[arg(long, value_delimiter = ',', value_enum, default_value = "ort,tract")]
        runtime: Vec<sepprune::runtime::Runtime>,
        /// Batch sizes (a model that declares batch 1 gets its batch axis widened).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        batch: Vec<usize>,
        /// ORT CUDA: capture each model's run in a CUDA graph and replay it.
        #[arg(long)]
        cuda_graph: bool,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long, default_value_t = 30)]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
    /// The whole pipeline: masks (learned by default), prune, verify, fine-tune, eval,
    /// bench, and a report directory beside OUT.
    Compress {
        model: PathBuf,
        /// Scoring set (LibriMix-style); also the training set unless --train is given.
        #[arg(long)]
        data: PathBuf,
        /// Training set for masks and fine-tuning (keep it apart from --data for held-out figures).
        #[arg(long)]
        train: Option<PathBuf>,
        #[arg(short, long)]
        output: PathBuf,
        /// Share of the separator's MACs to keep.
        #[arg(long, default_value_t = 0.5)]
        target_macs: f64,
        #[arg(long, value_enum, default_value_t = sepprune::pipeline::Method::Learned)]
        method: sepprune::pipeline::Method,
        /// Mask-learner iterations.
        #[arg(long, default_value_t = 200)]
        iters: usize,
        /// Fine-tuning budget in minutes (0: none).
        #[arg(long, default_value_t = 5.0)]
        finetune_minutes: f64,
        /// Label-free: learn and fine-tune against the original model's outputs.
        #[arg(long)]
        teacher: bool,
        /// Crop length in seconds for learning and fine-tuning.
        #[arg(long, default_value_t = 0.5)]
        seconds: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_delimiter = ',', value_enum, default_value = "ort,tract")]
        runtime: Vec<sepprune::runtime::Runtime>,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Run Candle on the first CUDA GPU (a build with `--features cuda`).
        #[arg(long)]
        cuda: bool,
        /// Skip the least-squares refit of the linear layers before fine-tuning.
        #[arg(long)]
        no_refit: bool,
        /// Label-free remixes added to the refit's calibration audio (see `prune
        /// --refit-remix`).
        #[arg(long, default_value_t = 80)]
        refit_remix: usize,
    },
    /// Learn channel masks with the SepPrune Gumbel learner (Candle, CPU) on a data set.
    Learn {
        model: PathBuf,
        /// LibriMix-style directory (mix/, s1/, ...).
        #[arg(long)]
        data: PathBuf,
        /// Masks file to write (for `prune --masks`).
        #[arg(short, long)]
        output: PathBuf,
        /// Share of the separator's MACs to keep in the final masks (scores ranked under this
        /// budget). Without it, the paper's rule: keep channels with sigmoid(score) > eps.
        #[arg(long)]
        target_macs: Option<f64>,
        #[arg(long, default_value_t = 0.7)]
        eps: f64,
        #[arg(long, default_value_t = 1.0)]
        tau: f64,
        #[arg(long, default_value_t = 500)]
        iters: usize,
        #[arg(long, default_value_t = 0.1)]
        lr: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Initial score of every channel.
        #[arg(long, default_value_t = 3.0)]
        init: f64,
        #[arg(long, value_enum, default_value_t = sepprune::learn::loss::Loss::SiSdr)]
        loss: sepprune::learn::loss::Loss,
        /// Targets are the original model's outputs (no references needed).
        #[arg(long)]
        teacher: bool,
        /// Crop length in seconds.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        #[arg(long, default_value_t = 2)]
        crops_per_file: usize,
        /// Scores checkpoint (resumed when present).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Residual and skip streams: learned only when the other groups cannot meet
        /// `--target-macs` (auto), never (keep), or always (prune).
        #[arg(long, value_enum, default_value_t = Residual::Auto)]
        residual: Residual,
        /// Shorthand for `--residual prune`.
        #[arg(long, conflicts_with = "residual")]
        prune_residual: bool,
        /// Run Candle on the first CUDA GPU (a build with `--features cuda`).
        #[arg(long)]
        cuda: bool,
        #[arg(long)]
        json: bool,
    },
    /// Fine-tune every weight of a (slimmed) model with Candle (Adam, validation split,
    /// learning rate halved on plateaus, early stop); writes ONNX with updated initializers.
    Finetune {
        model: PathBuf,
        /// LibriMix-style directory (mix/, s1/, ...); references are not needed with --teacher.
        #[arg(long)]
        data: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Distill from this model (usually the original, unpruned one).
        #[arg(long)]
        teacher: Option<PathBuf>,
        /// At most this many passes over the training crops.
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        /// Wall-clock budget in minutes.
        #[arg(long)]
        minutes: Option<f64>,
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// Clip the gradient to this global L2 norm (0: off).
        #[arg(long, default_value_t = 5.0)]
        clip: f64,
        /// Crop length in seconds.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        #[arg(long, default_value_t = 2)]
        crops_per_file: usize,
        /// Every K-th file is the validation split (unless --val).
        #[arg(long, default_value_t = 5)]
        val_every_file: usize,
        /// A separate validation set (e.g. the val/ of `mix --split-by`).
        #[arg(long)]
        val: Option<PathBuf>,
        /// Run Candle on the first CUDA GPU (a build with `--features cuda`).
        #[arg(long)]
        cuda: bool,
        /// Validate every N steps (default: once per epoch).
        #[arg(long)]
        val_every: Option<usize>,
        /// Stop after this many validations without improvement.
        #[arg(long, default_value_t = 3)]
        stop_after: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = sepprune::learn::loss::Loss::SiSdr)]
        loss: sepprune::learn::loss::Loss,
        /// A fresh dynamically mixed example at every step instead of fixed crops: sources
        /// and noises of different files remixed (references), or with --teacher the
        /// teacher's speech estimates remixed with noises, the teacher's outputs on each
        /// remix being its targets (label-free distillation; validation then also holds
        /// remixes of the validation files).
        #[arg(long)]
        dynamic_mix: bool,
        /// With --dynamic-mix, perturb recorded noises: speed (x2/3 to x3/2), spectral tilt,
        /// time reversal.
        #[arg(long, requires = "dynamic_mix")]
        perturb_noise: bool,
        /// With --teacher --dynamic-mix: distil only remixes on which the teacher improves
        /// SI-SDR by at least this many dB (measured against the remixed sources).
        #[arg(long, value_name = "DB", requires_all = ["teacher", "dynamic_mix"], allow_hyphen_values = true)]
        min_teacher_gain: Option<f64>,
        /// With --teacher: also distil the teacher's activations at every linear layer, on
        /// the channels these masks (the ones MODEL was pruned with) kept.
        #[arg(long, requires = "teacher", value_name = "MASKS.json")]
        hints: Option<PathBuf>,
        /// Weight of the hint loss beside the output loss (both in dB).
        #[arg(long, default_value_t = 1.0)]
        hint_weight: f64,
        /// Validations without improvement before the learning rate is halved.
        #[arg(long, default_value_t = 1)]
        patience: usize,
        /// Validate and write an exponential moving average of the weights with this decay
        /// per step (e.g. 0.998), not the last weights.
        #[arg(long)]
        ema: Option<f64>,
        /// Allow OUT to be the input file.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Verify: gate graph (all ones) == original; slim(mask) == gated(mask) for random masks.
    Check {
        model: PathBuf,
        /// Also check these masks.
        #[arg(long)]
        masks: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        trials: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Runtimes to check in (default: tract, and ORT when its library loads).
        #[arg(long, value_delimiter = ',', value_enum)]
        runtime: Vec<sepprune::runtime::Runtime>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct MixArgs {
    /// Directories of clean speech (WAV, FLAC; any layout, searched recursively).
    #[arg(long, num_args = 1.., required = true)]
    speech: Vec<PathBuf>,
    /// Directories of noise recordings (WAV, FLAC).
    #[arg(long, num_args = 1.., required = true)]
    noise: Vec<PathBuf>,
    #[arg(short, long)]
    output: PathBuf,
    /// SNRs in dB, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,5")]
    snr: Vec<f64>,
    #[arg(long, default_value_t = 16000)]
    rate: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Hold out every N-th utterance and every N-th noise file (sorted by name): writes
    /// OUT/train and OUT/test, which share no utterance and no noise recording.
    #[arg(long, conflicts_with = "split_by")]
    holdout: Option<usize>,
    /// Split by speaker and/or noise category (see `src/audio/corpus.rs` for how they are
    /// read from file and folder names): writes OUT/train, OUT/val and OUT/test, each with
    /// its mixtures, `conditions.json` and `sources.json`, and OUT/splits.json.
    #[arg(long, value_delimiter = ',', value_enum)]
    split_by: Vec<sepprune::audio::corpus::SplitBy>,
    /// With --split-by: share of speakers (and noise categories) in validation.
    #[arg(long, default_value_t = 0.1)]
    val_share: f64,
    /// With --split-by: share of speakers (and noise categories) in test.
    #[arg(long, default_value_t = 0.2)]
    test_share: f64,
    /// With --split-by: mixtures written per split (train, val, test).
    #[arg(long, value_delimiter = ',', default_value = "200,40,100")]
    mixtures: Vec<usize>,
    /// With --split-by: longest mixture, in seconds (longer speech is cropped).
    #[arg(long, default_value_t = 4.0)]
    max_seconds: f64,
}

/// `--prune-residual` is the shorthand of `--residual prune`.
fn residual_choice(residual: Residual, prune_residual: bool) -> Residual {
    if prune_residual {
        Residual::Prune
    } else {
        residual
    }
}

fn print_check(r: &verify::CheckReport) {
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
fn verify_length(ir: &Ir, seconds: f64, quiet: bool) -> usize {
    let n = (seconds * 16000.0).round().max(1.0) as usize;
    if n == ir.samples {
        return n;
    }
    match Ir::new(ir.model.clone(), n) {
        Ok(_) => n,
        Err(e) => {
            if !quiet {
                eprintln!(
                    "note: the model does not run at {n} samples ({e}); it looks like a \
                     fixed-length export, so it is verified at {} samples",
                    ir.samples
                );
            }
            ir.samples
        }
    }
}

/// The depth-pruning part of `prune`: the blocks to remove (given, or ranked by ablation
/// on `data`), the depth-pruned model in the exporter's form, verified unless `no_verify`.
#[allow(clippy::too_many_arguments)]
fn depth_step(
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
    anyhow::ensure!(!blocks.is_empty(), "the model has no removable residual block");
    let rt = runtime.unwrap_or_else(sepprune::runtime::Runtime::preferred);
    let removed: Vec<usize> = match drop {
        Some(n) => {
            anyhow::ensure!(n < blocks.len(), "--drop-blocks {n}: the model has {} blocks", blocks.len());
            let data = data.context("--drop-blocks ranks blocks by ablation on --data DIR")?;
            let samples = (seconds * 16000.0).round().max(1.0) as usize;
            let crops = sepprune::learn::data::mixture_crops(data, samples, 1)?;
            let ranking = depth::ablation_ranking(ir, &blocks, &crops, rt)?;
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

fn load_ir(path: &std::path::Path, seconds: f64, rate: u32) -> Result<Ir> {
    let model = onnx::load(path)?;
    let samples = (seconds * rate as f64).round() as usize;
    Ir::new(model, samples).with_context(|| format!("{}: shape inference failed", path.display()))
}

/// A model at `seconds`, its channel groups, and masks read from `masks` when given.
fn load_analyzed(
    model: &std::path::Path,
    seconds: f64,
    masks: Option<PathBuf>,
) -> Result<(Ir, analysis::Groups, Option<Masks>)> {
    let ir = load_ir(model, seconds, 16000)?;
    let groups = analysis::analyze_groups(&ir)?;
    let masks = masks.map(|p| Masks::read(&p)).transpose()?;
    Ok((ir, groups, masks))
}

fn main() -> Result<()> {
    // a closed pipe (`sepprune inspect ... | head`) ends the process quietly, as for any
    // Unix filter, instead of panicking in `println!`
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Inspect {
            model,
            seconds,
            rate,
            json,
            nodes,
            ptflops,
        } => {
            let ir = load_ir(&model, seconds, rate)?;
            let (report, _) = inspect::inspect_as(&ir, ptflops)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", inspect::render(&report, nodes));
            }
        }
        Cmd::Mix(a) => {
            if !a.split_by.is_empty() {
                use sepprune::audio::{corpus, dataset};
                anyhow::ensure!(a.mixtures.len() == 3, "--mixtures takes three counts: train,val,test");
                let c = corpus::Corpus::scan(&a.speech, &a.noise)?;
                let s = corpus::split(&c, &a.split_by, a.val_share, a.test_share, a.seed)?;
                for (k, (name, part)) in [("train", &s.train), ("val", &s.val), ("test", &s.test)].into_iter().enumerate() {
                    let n = dataset::build_split(part, &a.output.join(name), a.mixtures[k], &a.snr, a.max_seconds, a.rate, a.seed ^ (k as u64 + 1))?;
                    let (sp, nz) = part.groups();
                    println!("{}/{name}: {n} mixtures from {} speakers ({} files) and {} noise categories ({} files)",
                        a.output.display(), sp.len(), part.speech.len(), nz.len(), part.noise.len());
                }
                onnx::write_atomic(&a.output.join("splits.json"), serde_json::to_string_pretty(&s)?.as_bytes())?;
                return Ok(());
            }
            anyhow::ensure!(a.speech.len() == 1 && a.noise.len() == 1, "without --split-by, give one --speech and one --noise directory");
            let n = sepprune::audio::dataset::build_enhancement(
                &a.speech[0], &a.noise[0], &a.output, &a.snr, a.rate, a.seed, a.holdout,
            )?;
            match n.as_slice() {
                [train, test] => println!(
                    "{}: {train} training mixtures in train/, {test} held-out mixtures in test/",
                    a.output.display()
                ),
                _ => println!("{}: {} mixtures", a.output.display(), n[0]),
            }
        }
        Cmd::Eval {
            models,
            data,
            rate,
            runtime,
            json,
        } => {
            let mut reports = vec![];
            for model in &models {
                let m = onnx::load(model)?;
                let r = sepprune::eval::eval(&m, &data, rate, runtime)
                    .with_context(|| format!("evaluating {}", model.display()))?;
                if !json {
                    println!(
                        "{}: {} mixtures, SI-SDR {:.2} dB, SI-SDRi {:.2} dB, SDRi {:.2} dB",
                        model.display(),
                        r.examples,
                        r.si_sdr,
                        r.si_sdri,
                        r.sdri
                    );
                }
                reports.push(r);
            }
            if json {
                match reports.as_slice() {
                    [one] => println!("{}", serde_json::to_string_pretty(one)?),
                    all => println!("{}", serde_json::to_string_pretty(all)?),
                }
            } else {
                let names: Vec<String> = models
                    .iter()
                    .map(|p| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned()))
                    .collect();
                let pairs: Vec<(&str, &sepprune::eval::EvalReport)> =
                    names.iter().map(String::as_str).zip(reports.iter()).collect();
                print!("{}", sepprune::eval::condition_tables(&pairs));
            }
        }
        Cmd::Bench {
            models,
            seconds,
            runtime,
            batch,
            cuda_graph,
            threads,
            warmup,
            runs,
            json,
        } => {
            anyhow::ensure!(!models.is_empty(), "give at least one model");
            let ms: Vec<(String, onnx::ModelProto)> = models
                .iter()
                .map(|p| Ok((p.display().to_string(), onnx::load(p)?)))
                .collect::<Result<_>>()?;
            let o = sepprune::bench::BenchOptions {
                seconds,
                batches: batch,
                runtimes: runtime,
                rate: 16000,
                threads,
                cuda_graph,
                warmup,
                runs,
            };
            let rows = sepprune::bench::bench(&ms, &o)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", sepprune::bench::markdown(&rows));
            }
        }
        Cmd::Compress {
            model,
            data,
            train,
            output,
            target_macs,
            method,
            iters,
            finetune_minutes,
            teacher,
            seconds,
            seed,
            runtime,
            runs,
            cuda,
            no_refit,
            refit_remix,
        } => {
            let o = sepprune::pipeline::Options {
                target_macs,
                method,
                iters,
                finetune_minutes,
                teacher,
                seconds,
                seed,
                runtimes: runtime,
                bench_runs: runs,
                progress: true,
                cuda,
                refit: !no_refit,
                refit_remix,
            };
            let train = train.unwrap_or_else(|| data.clone());
            let dir = sepprune::pipeline::compress(&model, &data, &train, &output, &o)?;
            print!("{}", std::fs::read_to_string(dir.join("report.md"))?);
            println!("\nreport: {}", dir.display());
        }
        Cmd::Gate {
            model,
            output,
            masks,
            seconds,
        } => {
            let (ir, groups, masks) = load_analyzed(&model, seconds, masks)?;
            let g = gates::gate_graph(&ir, &groups, masks.as_ref())?;
            onnx::save(&g, &output, Some(&model), false)?;
            println!("{}: {} gates", output.display(), groups.prunable().count());
        }
        Cmd::Learn {
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
        } => {
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
        }
        Cmd::Finetune {
            model,
            data,
            output,
            teacher,
            epochs,
            minutes,
            lr,
            clip,
            seconds,
            crops_per_file,
            val_every_file,
            val,
            val_every,
            stop_after,
            seed,
            loss,
            dynamic_mix,
            perturb_noise,
            min_teacher_gain,
            hints,
            hint_weight,
            patience,
            ema,
            force,
            cuda,
            json,
        } => {
            use sepprune::learn::finetune::{finetune, FinetuneOptions};
            let m = onnx::load(&model)?;
            let o = FinetuneOptions {
                samples: (seconds * 16000.0).round().max(1.0) as usize,
                crops_per_file,
                teacher: teacher.as_ref().map(|p| onnx::load(p)).transpose()?,
                lr,
                clip,
                epochs,
                minutes,
                val_every_file,
                val_data: val,
                val_every,
                stop_after,
                seed,
                loss,
                progress: !json,
                device: sepprune::learn::device(cuda)?,
                dynamic_mix,
                perturb_noise,
                min_teacher_gain,
                hints: hints.as_ref().map(|p| Masks::read(p)).transpose()?,
                hint_weight,
                patience,
                ema,
            };
            let r = finetune(&m, &data, &o)
                .with_context(|| format!("fine-tuning {}", model.display()))?;
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
                    "{} -> {}: {} parameters, validation loss {:.2} -> {:.2} dB (best at step {})",
                    model.display(),
                    output.display(),
                    r.parameters,
                    first.val_loss,
                    r.best.val_loss,
                    r.best.step
                );
            }
        }
        Cmd::Check {
            model,
            masks,
            trials,
            seed,
            seconds,
            runtime,
            json,
        } => {
            use sepprune::runtime::{ort, Runtime};
            let (ir, groups, masks) = load_analyzed(&model, seconds, masks)?;
            let x = verify::test_signal(ir.samples, 16000.0);
            let runtimes = if runtime.is_empty() {
                let mut r = vec![Runtime::Tract];
                if ort::available() {
                    r.push(Runtime::Ort);
                }
                r
            } else {
                runtime
            };
            let mut reports = vec![];
            for rt in runtimes {
                let r = verify::check(
                    &ir,
                    &groups,
                    masks.as_ref().map(|m| (m, None)),
                    trials,
                    seed,
                    &x,
                    rt,
                )?;
                if !json {
                    println!("{}:", rt.name());
                    print_check(&r);
                }
                reports.push(r);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            }
            anyhow::ensure!(reports.iter().all(|r| r.passed), "verification failed");
        }
        Cmd::Prune {
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
            refit_remix,
            ridge,
            drop_blocks,
            blocks,
        } => {
            let t0 = std::time::Instant::now();
            let rt = verify_runtime.unwrap_or(sepprune::runtime::Runtime::Ort);
            // load the ORT library while slicing (it takes a Python lookup and a dlopen)
            let ort_ready = (!no_verify && rt == sepprune::runtime::Runtime::Ort)
                .then(|| std::thread::spawn(sepprune::runtime::ort::available));
            let ir = load_ir(&model, 1.0, 16000)?;
            if drop_blocks.is_some() || !blocks.is_empty() {
                let depth = depth_step(&ir, drop_blocks, blocks, data.as_deref(), seconds, verify_runtime, no_verify, verify_seconds, json)?;
                if ratio.is_none() && masks.is_none() {
                    onnx::save(&depth, &output, Some(&model), force)?;
                    let (a, b) = (analysis::profile(&ir), analysis::profile(&Ir::new(depth, ir.samples)?));
                    println!(
                        "{} -> {}: params {} -> {}, MACs {} -> {} ({:.3}x), nodes {} -> {}",
                        model.display(), output.display(), a.params, b.params, a.macs, b.macs,
                        a.macs as f64 / b.macs as f64, a.nodes.len(), b.nodes.len()
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
                    };
                    let b = if criterion == Criterion::Taylor {
                        let data = data
                            .as_ref()
                            .context("--criterion taylor needs --data DIR")?;
                        let samples = (seconds * 16000.0).round().max(1.0) as usize;
                        sepprune::learn::taylor::taylor_masks(
                            &ir,
                            &groups,
                            &budget,
                            data,
                            samples,
                            &candle_core::Device::Cpu,
                        )
                        .with_context(|| format!("Taylor scores on {}", data.display()))?
                    } else {
                        prune::masks_for_ratio(&ir, &groups, &budget)?
                    };
                    (b.masks, b.residual)
                }
                (None, Some(p)) => (Masks::read(&p)?, false),
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
                        ridge,
                        scope: refit_scope,
                        remix: refit_remix,
                        seed: 0,
                        progress: !json,
                    };
                    let r = sepprune::learn::refit::refit(
                        &ir,
                        &groups,
                        &masks,
                        &slim_ir.model,
                        data,
                        &o,
                    )
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
                masks.write(&p)?;
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
            if let Some(r) = ratio.filter(|&r| kept > 1.0 - r + 0.05 && residual == Residual::Keep)
            {
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
        }
    }
    Ok(())
}

/// One line per refitted layer group summary: mean relative reconstruction error before and
/// after, and the worst layer.
fn print_refit(r: &sepprune::learn::refit::Refitted) {
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
