//! `compress`: structure selection (channels or whole residual blocks), pruning,
//! verification, recovery (least-squares refit, fine-tuning), evaluation and benchmark,
//! with a report directory beside OUT (`OUT.report/`: `report.md`, `report.json`, the
//! masks or removed blocks, and PNG plots). OUT is written only when verification passes.
//!
//! Data: a set of `mix --split-by` (with `splits.json`) gives the training split (masks,
//! refit, dynamic mixing from its speech and noise files), the validation split (early
//! stopping and learning-rate halving) and the test split (every score in the report, by
//! condition): the test split is never used to choose anything. A plain LibriMix directory
//! is scored as given, trained on `--train` (or on itself: in-sample, and the report says
//! so).
use crate::analysis::blocks::{find_blocks, Block};
use crate::analysis::{analyze_groups, profile, Profile, Region};
use crate::bench::{self, Runtime};
use crate::error::{Error, Result};
use crate::eval::{self, EvalReport};
use crate::ir::Ir;
use crate::learn::finetune::{finetune, FinetuneOptions, Finetuned};
use crate::learn::gumbel::GumbelConfig;
use crate::learn::refit::{refit, RefitOptions};
use crate::learn::run::{learn, LearnOptions};
use crate::onnx::{self, ModelProto};
use crate::prune::{depth, masks_for_ratio, Budget, Criterion, Masks};
use crate::report::plots::{self, Series};
use crate::runtime::tract::TractTeacher;
use crate::verify::{self, CheckReport};
use std::path::{Path, PathBuf};

/// How channels are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Method {
    /// The SepPrune Gumbel learner (Candle).
    Learned,
    L1,
    L2,
    Random,
    /// First-order Taylor on the gates (needs references).
    Taylor,
    /// Label-free Fisher information of the gates (src/learn/fisher.rs).
    Fisher,
}

/// What is removed to meet the MACs target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Structure {
    /// Channels of every prunable group (speeds up compute-bound runtimes: CPUs).
    Channels,
    /// Whole residual blocks, ranked by label-free ablation (speeds up launch-bound
    /// runtimes: a GPU at batch 1, `docs/gpu.md`).
    Depth,
    /// Depth when the first benchmark runtime is `ort-cuda`, channels otherwise.
    Auto,
}

/// Peak fine-tuning learning rate with references: the earlier recipe's, kept (the cosine
/// schedule, docs/recovery.md).
pub const REFERENCES_LR: f64 = 1e-4;

/// Peak fine-tuning learning rate label-free (`--teacher`), chosen on the validation split
/// of the real Conv-TasNet at half its separator MACs, 1400 steps from one refit: SI-SDRi
/// 4.56 dB at 1e-4 (its loss soft-thresholded at 20 dB, which scores as the plain loss
/// does on the test split), 4.75 at 3e-4, 4.82 at 1e-3 (the original: 5.54); the two
/// higher rates are within the noise of 40 mixtures, and 3e-4 is the smaller step
/// (docs/recovery.md).
pub const LABEL_FREE_LR: f64 = 3e-4;

/// Label-free fine-tuning distils only remixes on which the teacher improves the SI-SDR of
/// the remixed speech by at least this many dB
/// ([`crate::learn::augment::Augmenter::with_min_teacher_gain`]): the student then does not
/// learn the teacher's failures. Chosen on the validation split of the real Conv-TasNet at
/// half its separator MACs, 1400 steps from one refit: SI-SDRi 4.75 dB distilling every
/// remix, 5.31 dB at 6, 5.95 dB at 9 (the original: 5.54); 12 dB scored as 9 does on the
/// test split at twice the CPU time. A step costs 1.6x one that distils every remix: the
/// teacher runs on every remix drawn (docs/recovery.md).
pub const LABEL_FREE_MIN_TEACHER_GAIN: f64 = 9.0;

/// How `compress` chooses channels by default: the gates' Fisher information on crops of
/// the training mixtures ([`crate::learn::fisher`]), label-free and nearly deterministic.
/// On the real Conv-TasNet at half its separator MACs (test split): label-free (seed 0,
/// 1500 steps) the Gumbel learner distilling the teacher kept 6.34 dB after the refit and
/// 7.53 fine-tuned, random channels (every group at the same share) 6.30 and 7.73, Fisher
/// 7.69 and 8.20 (five seeds: 8.21 against 7.56); with references (seed 0) Fisher 8.88
/// against the learner's 7.74, of the original's 8.98 (docs/recovery.md).
pub const DEFAULT_METHOD: Method = Method::Fisher;

/// Which fine-tuned weights `compress --teacher` keeps: the last step's. Its validation
/// loss (agreement with the teacher on 40 crops of 0.5 s) picked steps 576 to 1280 of 1500
/// in seven of eight runs, while the validation split's SI-SDRi on whole files preferred
/// the last weights on all four seeds where they differed (e.g. 5.72 -> 6.05 dB for seed
/// 2; docs/recovery.md).
pub const LABEL_FREE_KEEP: crate::learn::finetune::Keep = crate::learn::finetune::Keep::Last;

#[derive(Clone)]
pub struct Options {
    /// Share of separator MACs to keep.
    pub target_macs: f64,
    /// A latency to meet instead (ms, 1 s of input, batch 1, on the first runtime): the
    /// MACs share and, with [`Structure::Auto`], the structure come from a latency model
    /// fitted on measured candidates ([`super::latency`]).
    pub target_latency: Option<f64>,
    pub structure: Structure,
    pub method: Method,
    /// Learner iterations.
    pub iters: usize,
    /// Fine-tuning budget in minutes (0: no fine-tuning).
    pub finetune_minutes: f64,
    /// Fine-tuning budget in steps instead of minutes: the output is then the same, byte
    /// for byte, for the same model, data and seed (a time budget depends on the machine).
    pub finetune_steps: Option<usize>,
    /// Peak fine-tuning learning rate (Adam), decayed on a cosine over the budget
    /// ([`REFERENCES_LR`], [`LABEL_FREE_LR`]).
    pub finetune_lr: f64,
    /// Soft threshold of the fine-tuning loss in dB ([`FinetuneOptions::loss_max_db`]).
    pub finetune_loss_max_db: Option<f64>,
    /// Label-free: distil only remixes on which the teacher gains at least this many dB
    /// ([`LABEL_FREE_MIN_TEACHER_GAIN`]); `None`: every remix. Unused with references.
    pub finetune_min_teacher_gain: Option<f64>,
    /// The fine-tuned weights kept: the best validation's or the last step's
    /// ([`LABEL_FREE_KEEP`]).
    pub finetune_keep: crate::learn::finetune::Keep,
    /// Label-free: learn and fine-tune against the original model's outputs.
    pub teacher: bool,
    /// Crop length (seconds) for learning and fine-tuning.
    pub seconds: f64,
    pub seed: u64,
    pub runtimes: Vec<Runtime>,
    pub bench_runs: usize,
    pub progress: bool,
    /// Learn and fine-tune on the first CUDA GPU.
    pub cuda: bool,
    /// Refit the linear layers by least squares on the training mixtures before
    /// fine-tuning ([`crate::learn::refit`], label-free; channel pruning only).
    pub refit: bool,
    /// Label-free remixes added to the refit's calibration audio
    /// ([`crate::learn::refit::RefitOptions::remix`]).
    pub refit_remix: usize,
    /// Quality gate: the compressed model's SI-SDRi on the test set must be at least this
    /// (dB).
    pub fail_below: Option<f64>,
    /// Quality gate: the compressed model may lose at most this much SI-SDRi (dB) against
    /// the original on the test set.
    pub max_drop: Option<f64>,
    /// Input declarations (`NAME=1,T,80`) and the time axis' frame rate where the defaults
    /// do not fit ([`crate::ir::declare_inputs`]).
    pub inputs: Vec<String>,
    pub frame_rate: Option<f64>,
}

/// Wall-clock and CPU seconds per stage, for the report: the budget of `compress` is stated
/// in CPU-minutes (user + system time of every thread), which exceeds the wall-clock time
/// where a stage runs several threads.
#[derive(Default, serde::Serialize)]
struct Timings(Vec<(&'static str, f64, f64)>);

/// User + system CPU seconds of this process so far, all threads (`getrusage`).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given and reads nothing else
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return f64::NAN;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    s(u.ru_utime) + s(u.ru_stime)
}

impl Timings {
    fn time<T>(&mut self, stage: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let (t, c) = (std::time::Instant::now(), cpu_seconds());
        let r = f();
        self.0
            .push((stage, t.elapsed().as_secs_f64(), cpu_seconds() - c));
        r
    }
    fn total(&self) -> f64 {
        self.0.iter().map(|s| s.1).sum()
    }
    fn total_cpu(&self) -> f64 {
        self.0.iter().map(|s| s.2).sum()
    }
    fn markdown(&self) -> String {
        let mut md = String::from("\n| stage | seconds | CPU seconds |\n|---|---|---|\n");
        for (s, t, c) in &self.0 {
            md += &format!("| {s} | {t:.0} | {c:.0} |\n");
        }
        md + &format!(
            "| total | {:.0} | {:.0} ({:.1} CPU-minutes) |\n",
            self.total(),
            self.total_cpu(),
            self.total_cpu() / 60.0
        )
    }
}

/// The sets a run uses (module docs).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sets {
    pub train: PathBuf,
    pub val: Option<PathBuf>,
    pub test: PathBuf,
    /// Scores come from the training set itself.
    pub in_sample: bool,
}

impl Sets {
    /// The sets of `data`: its `train/`, `val/` and `test/` when it holds a `splits.json`,
    /// else `data` scored as given and trained on `train` (or on `data`).
    pub fn of(data: &Path, train: Option<&Path>) -> Sets {
        if data.join("splits.json").exists() {
            return Sets {
                train: data.join("train"),
                val: Some(data.join("val")),
                test: data.join("test"),
                in_sample: false,
            };
        }
        let t = train.unwrap_or(data).to_path_buf();
        Sets {
            in_sample: t == data,
            train: t,
            val: None,
            test: data.to_path_buf(),
        }
    }
}

/// What was removed, for the report.
enum Removed {
    Channels(Masks),
    Blocks {
        blocks: Vec<Block>,
        removed: Vec<usize>,
        ranking: Vec<(usize, f64)>,
    },
}

/// The pruned model before recovery.
struct Pruned {
    /// The model in canonical form for refit/fine-tuning (channels) or exporter form
    /// (depth), and how to write a model of the same nodes in the exporter's form.
    model: ModelProto,
    ir: Ir,
    removed: Removed,
    check: CheckReport,
}

fn ratio_ok(t: f64) -> Result<()> {
    if (0.0..=1.0).contains(&t) && t > 0.0 {
        Ok(())
    } else {
        Err(Error::Option {
            option: "--target-macs",
            value: t.to_string(),
            msg: "must be in (0, 1]".into(),
        })
    }
}

/// Channel pruning: masks (learned or a criterion) under the separator MACs budget,
/// sliced and verified against the gate graph.
fn prune_channels(
    model: &ModelProto,
    ir: &Ir,
    train: &Path,
    o: &Options,
    device: &candle_core::Device,
    timings: &mut Timings,
) -> Result<Pruned> {
    let groups = analyze_groups(ir)?;
    let samples = (o.seconds * 16000.0).round().max(1.0) as usize;
    let budget = Budget {
        seed: o.seed,
        criterion: match o.method {
            Method::L2 => Criterion::L2,
            Method::Random => Criterion::Random,
            Method::Taylor => Criterion::Taylor,
            Method::Fisher => Criterion::Fisher,
            _ => Criterion::L1,
        },
        ..Budget::new(1.0 - o.target_macs)
    };
    let masks = timings.time("channels: masks", || match o.method {
        Method::Learned => {
            let lo = LearnOptions {
                cfg: GumbelConfig {
                    iters: o.iters,
                    seed: o.seed,
                    ..GumbelConfig::default()
                },
                method: Default::default(),
                distill: false,
                heldout: None,
                weights: None,
                sv: None,
                samples,
                crops_per_file: 2,
                teacher: o.teacher.then(|| TractTeacher::shared(model.clone())),
                budget: budget.clone(),
                checkpoint: None,
                progress: o.progress,
                device: device.clone(),
            };
            Ok(learn(model, train, &lo)?.budgeted.masks)
        }
        Method::Taylor => Ok(crate::learn::taylor::taylor_masks(
            ir, &groups, &budget, train, samples, device,
        )?
        .masks),
        Method::Fisher => Ok(crate::learn::fisher::fisher_masks(
            ir, &groups, &budget, train, samples, device,
        )?
        .masks),
        _ => Ok(masks_for_ratio(ir, &groups, &budget)?.masks),
    })?;
    let (slim_ir, _, check) = timings.time("channels: slicing, verification", || {
        verify::slim_verified(ir, &groups, &masks, 2, o.seed)
    })?;
    let mut model = slim_ir.model.clone();
    if o.refit {
        let ro = RefitOptions {
            samples: 16000,
            crops_per_file: 2,
            remix: o.refit_remix,
            seed: o.seed,
            // the same refit at a third less time on the real Conv-TasNet (docs/recovery.md)
            row_stride: 4,
            progress: o.progress,
            teacher: (o.refit_remix > 0).then(|| TractTeacher::shared(ir.model.clone())),
            ..RefitOptions::default()
        };
        model = timings
            .time("channels: least-squares refit", || {
                refit(ir, &groups, &masks, &slim_ir.model, train, &ro)
            })?
            .model;
    }
    Ok(Pruned {
        model,
        ir: slim_ir,
        removed: Removed::Channels(masks.stamped(ir, &groups)),
        check,
    })
}

/// Depth pruning: blocks ranked by label-free ablation on up to 24 training crops of 1 s,
/// removed in that order until the separator's kept MACs are as near `target_macs` as
/// whole blocks allow; verified against the block gate graph.
fn prune_depth(ir: &Ir, train: &Path, o: &Options) -> Result<Pruned> {
    let blocks = find_blocks(ir);
    if blocks.is_empty() {
        return Err(Error::Option {
            option: "--structure",
            value: "depth".into(),
            msg: "the model has no removable residual block".into(),
        });
    }
    let mut crops = crate::learn::data::mixture_crops(train, 16000, 1)?;
    crops.truncate(24);
    let rt = Runtime::preferred();
    let ranking = depth::ablation_ranking(ir, &blocks, &mut |m| {
        crate::runtime::run_each(rt, m, &crops)
    })?;
    let sep = profile(ir).regions[&Region::Separator].macs as f64;
    let target = (1.0 - o.target_macs) * sep;
    let removed = depth::blocks_to_cut(ir, &blocks, ranking.iter().map(|r| r.0), target);
    let dropped = depth::drop_blocks(ir, &blocks, &removed)?;
    let x = verify::test_signal(ir.samples, 16000.0);
    let check = verify::check_depth(ir, &blocks, &removed, &dropped, &x, rt)?;
    if !check.passed {
        return Err(Error::Verification(String::new()));
    }
    Ok(Pruned {
        ir: Ir::new(dropped.clone(), ir.samples)?,
        model: dropped,
        removed: Removed::Blocks {
            blocks,
            removed,
            ranking,
        },
        check,
    })
}

fn row(name: &str, p: &Profile, e: &EvalReport, base: &EvalReport) -> String {
    format!(
        "| {name} | {} | {:.3} | {:.2} | {:.2} ({:.0}%) | {:.2} |\n",
        p.params,
        p.macs as f64 / 1e9,
        e.si_sdr,
        e.si_sdri,
        100.0 * e.si_sdri / base.si_sdri,
        e.sdri
    )
}

/// What [`compress`] wrote.
pub struct Compressed {
    /// The report directory (`OUT.report`).
    pub dir: PathBuf,
    /// A one-screen summary: sizes, MACs, quality kept, speed-ups per runtime, where the
    /// report is.
    pub summary: String,
    /// The quality gate that failed (`Options::fail_below`, `Options::max_drop`): the
    /// model was then written to `OUT.report/rejected.onnx`, not to OUT.
    pub rejected: Option<String>,
}

/// Runs the pipeline (module docs). Writes OUT and its report directory.
///
/// Errors: a bad target, data or model; failed verification (nothing is written). A failed
/// quality gate is no error: the report is written, the model goes to
/// `OUT.report/rejected.onnx` and [`Compressed::rejected`] says why.
pub fn compress(
    model_path: &Path,
    data: &Path,
    train: Option<&Path>,
    out: &Path,
    o: &Options,
) -> Result<Compressed> {
    ratio_ok(o.target_macs)?;
    let sets = Sets::of(data, train);
    let mut model = onnx::load(model_path)?;
    crate::ir::declare_inputs(&mut model, &o.inputs, o.frame_rate)?;
    let ir = Ir::new(model.clone(), 16000)?;
    let device = crate::learn::device(o.cuda)?;
    let mut timings = Timings::default();
    let latency = match o.target_latency {
        Some(ms) => Some(timings.time("latency target: candidates measured", || {
            let rt = o.runtimes.first().copied().unwrap_or(Runtime::preferred());
            super::latency::plan(&model, &ir, ms, o.structure, rt, o.bench_runs)
        })?),
        None => None,
    };
    let planned;
    let o = match &latency {
        Some(p) => {
            planned = Options {
                target_macs: p.target_macs,
                structure: p.structure,
                ..o.clone()
            };
            &planned
        }
        None => o,
    };
    let structure = match o.structure {
        Structure::Auto if o.runtimes.first() == Some(&Runtime::OrtCuda) => Structure::Depth,
        Structure::Auto => Structure::Channels,
        s => s,
    };
    let pruned = match structure {
        Structure::Depth => timings.time("depth: ablation, removal, verification", || {
            prune_depth(&ir, &sets.train, o)
        })?,
        _ => prune_channels(&model, &ir, &sets.train, o, &device, &mut timings)?,
    };
    let samples = (o.seconds * 16000.0).round().max(1.0) as usize;
    let tuned: Option<Finetuned> =
        if o.finetune_minutes > 0.0 || o.finetune_steps.is_some_and(|s| s > 0) {
            // the recipe (docs/recovery.md, chosen on the validation split): a fresh remix
            // every step, with perturbed noises; the lr decays to 0 on a cosine over the
            // budget (halving on plateaus spent most of a budget at lr < 1e-6); the weights
            // kept are the best of the validations every 64 steps, or the last step's
            // (`finetune_keep`; label-free by default)
            let fo = FinetuneOptions {
                samples,
                crops_per_file: if sets.val.is_some() { 1 } else { 4 },
                teacher: o.teacher.then(|| TractTeacher::shared(model.clone())),
                lr: o.finetune_lr,
                loss_max_db: o.finetune_loss_max_db,
                min_teacher_gain: o.finetune_min_teacher_gain.filter(|_| o.teacher),
                dynamic_mix: true,
                perturb_noise: true,
                minutes: o.finetune_steps.is_none().then_some(o.finetune_minutes),
                epochs: 1000,
                steps: o.finetune_steps,
                val_every: Some(64),
                val_data: sets.val.clone(),
                // scored at every validation for the report's curves, never for a decision
                test_data: (!sets.in_sample).then(|| sets.test.clone()),
                schedule: crate::learn::finetune::Schedule::Cosine,
                stop_after: usize::MAX,
                keep: o.finetune_keep,
                seed: o.seed,
                progress: o.progress,
                device: device.clone(),
                ..FinetuneOptions::default()
            };
            Some(timings.time("fine-tuning", || finetune(&pruned.model, &sets.train, &fo))?)
        } else {
            None
        };
    // the exporter's norm forms put back (runtimes fuse them)
    let export = |m: &ModelProto| match &pruned.removed {
        Removed::Channels(_) => pruned.ir.exported(m),
        Removed::Blocks { .. } => m.clone(),
    };
    let final_model = export(tuned.as_ref().map_or(&pruned.model, |t| &t.model));
    let rt = Runtime::preferred();
    let (before, after_prune, after_refit, after) = timings.time("evaluation", || {
        let before = eval::eval(&model, &sets.test, 16000, rt)?;
        let after_prune = eval::eval(&export(&pruned.ir.model), &sets.test, 16000, rt)?;
        let after_refit = match (&pruned.removed, o.refit) {
            (Removed::Channels(_), true) => {
                Some(eval::eval(&export(&pruned.model), &sets.test, 16000, rt)?)
            }
            _ => None,
        };
        let after = match &tuned {
            Some(_) => Some(eval::eval(&final_model, &sets.test, 16000, rt)?),
            None => None,
        };
        Ok((before, after_prune, after_refit, after))
    })?;
    let rows = timings.time("benchmark", || {
        bench::bench(
            &[
                ("original".into(), model.clone()),
                ("compressed".into(), final_model.clone()),
            ],
            &bench::BenchOptions {
                runtimes: o.runtimes.clone(),
                warmup: 3,
                runs: o.bench_runs,
                ..bench::BenchOptions::default()
            },
        )
    })?;
    let (pa, pb) = (profile(&ir), profile(&pruned.ir));
    let dir = PathBuf::from(format!("{}.report", out.display()));
    let final_eval = after
        .as_ref()
        .or(after_refit.as_ref())
        .unwrap_or(&after_prune);
    let rejected = quality_gate(o, before.si_sdri, final_eval.si_sdri);
    let written = match &rejected {
        None => out.to_path_buf(),
        Some(_) => dir.join("rejected.onnx"),
    };
    onnx::save(&final_model, &written, Some(model_path), false)?;
    let removed_json = match &pruned.removed {
        Removed::Channels(m) => {
            m.write(&dir.join("masks.json"))?;
            serde_json::json!({"structure": "channels", "groups_pruned": m.groups.len()})
        }
        Removed::Blocks {
            blocks,
            removed,
            ranking,
        } => serde_json::json!({
            "structure": "depth", "blocks": blocks.len(), "removed": removed,
            "ablation": ranking,
        }),
    };
    let pngs = plots_for(
        &dir,
        &pa,
        &pb,
        &pruned,
        &before,
        final_eval,
        &after_prune,
        &after_refit,
        &tuned,
        &rows,
    )?;
    let sep = |p: &Profile| p.regions[&Region::Separator].macs;
    let json = serde_json::json!({
        "model": model_path, "output": out, "structure": structure, "method": o.method,
        "teacher": o.teacher, "sets": sets,
        "params": [pa.params, pb.params], "macs": [pa.macs, pb.macs],
        "separator_macs": [sep(&pa), sep(&pb)],
        "removed": removed_json,
        "check": pruned.check,
        "eval": { "original": before, "pruned": after_prune, "refitted": after_refit, "finetuned": after },
        "finetune": tuned.as_ref().map(|t| serde_json::json!({"kept": o.finetune_keep, "best": t.best, "history": t.history})),
        "bench": rows,
        "plots": pngs,
        "timings": timings,
        "quality_gate": { "fail_below": o.fail_below, "max_drop": o.max_drop, "rejected": rejected },
        "latency_target": latency,
    });
    let what = match &pruned.removed {
        Removed::Channels(_) => format!(
            "{:?} channel masks{}",
            o.method,
            if o.refit {
                " + least-squares refit"
            } else {
                ""
            }
        ),
        Removed::Blocks {
            blocks, removed, ..
        } => {
            format!(
                "{} of {} residual blocks removed",
                removed.len(),
                blocks.len()
            )
        }
    };
    let mut md = format!(
        "# sepprune compress report\n\nmodel: `{}` -> `{}`: {what}{}, separator MACs kept {:.1}%\n\
         trained on `{}`{}; scores on `{}`{}\n\n\
         | model | params | GMac (1 s) | SI-SDR dB | SI-SDRi dB (kept) | SDRi dB |\n|---|---|---|---|---|---|\n",
        model_path.display(),
        out.display(),
        if o.teacher { ", label-free (teacher)" } else { "" },
        100.0 * sep(&pb) as f64 / sep(&pa) as f64,
        sets.train.display(),
        sets.val.as_ref().map_or(String::new(), |v| format!(", validated on `{}`", v.display())),
        sets.test.display(),
        if sets.in_sample { " (the training set: in-sample)" } else { "" },
    );
    md += &row("original", &pa, &before, &before);
    md += &row("pruned", &pb, &after_prune, &before);
    if let Some(a) = &after_refit {
        md += &row("pruned + least-squares refit", &pb, a, &before);
    }
    if let (Some(a), Some(t)) = (&after, &tuned) {
        let secs = t.history.last().map_or(0.0, |h| h.seconds);
        md += &row(&format!("+ fine-tuned ({secs:.0} s)"), &pb, a, &before);
    }
    md += &eval::condition_tables(&[("original", &before), ("compressed", final_eval)]);
    md += &format!(
        "\nverification ({}): {}\n\n{}",
        pruned.check.runtime,
        pruned
            .check
            .trials
            .iter()
            .map(|t| format!(
                "{} {:.1e}",
                if t.passed { "pass" } else { "FAIL" },
                t.rel_err
            ))
            .collect::<Vec<_>>()
            .join(", "),
        bench::markdown(&rows)
    );
    // the latency reached: the final bench's first runtime at 1 s
    let reached = latency.as_ref().and_then(|p| {
        rows.iter()
            .find(|r| r.model != "original" && r.runtime == p.runtime && r.seconds == 1.0)
            .map(|r| (p, r.median_ms))
    });
    if let Some(p) = &latency {
        md += &p.markdown();
        if let Some((_, ms)) = reached {
            md += &format!(
                "
Measured after compression (the benchmark above): {ms:.2} ms.
"
            );
        }
    }
    md += &timings.markdown();
    if let Some(r) = &rejected {
        md += &format!(
            "\n**Rejected by the quality gate**: {r}; the model is `rejected.onnx` here.\n"
        );
    }
    md += "\n";
    for p in &pngs {
        md += &format!("![{p}]({p})\n");
    }
    onnx::write_atomic(
        &dir.join("report.json"),
        serde_json::to_string_pretty(&json)
            .map_err(Error::json(dir.join("report.json")))?
            .as_bytes(),
    )?;
    onnx::write_atomic(&dir.join("report.md"), md.as_bytes())?;
    let mut summary = format!(
        "sepprune compress: {} -> {} ({what}{})\n  params  {:.3} M -> {:.3} M ({:.0}%)\n  MACs    {:.3} -> {:.3} GMac for 1 s ({:.2}x fewer)\n  quality SI-SDRi {:.2} -> {:.2} dB ({:+.2} dB): {:.0}% kept on {} mixtures of `{}`{}\n  speed  ",
        model_path.display(),
        out.display(),
        if o.teacher { ", label-free" } else { "" },
        pa.params as f64 / 1e6,
        pb.params as f64 / 1e6,
        100.0 * pb.params as f64 / pa.params as f64,
        pa.macs as f64 / 1e9,
        pb.macs as f64 / 1e9,
        pa.macs as f64 / pb.macs as f64,
        before.si_sdri,
        final_eval.si_sdri,
        final_eval.si_sdri - before.si_sdri,
        100.0 * final_eval.si_sdri / before.si_sdri,
        final_eval.examples,
        sets.test.display(),
        if sets.in_sample { " (in-sample)" } else { "" },
    );
    for r in rows.iter().filter(|r| r.model != "original") {
        summary += &format!(
            " {} {:.0} s: {:.2}x;",
            r.runtime.name(),
            r.seconds,
            r.speedup
        );
    }
    if let Some((p, ms)) = reached {
        summary += &format!(
            "\n  latency target {:.2} ms on {}: {ms:.2} ms measured ({:.2} predicted, {:.2} before)",
            p.target_ms,
            p.runtime.name(),
            p.predicted_ms,
            p.original_ms
        );
    }
    summary += &format!(
        "\n  verified in {}: {}\n  time    {:.1} min ({:.1} CPU-minutes)\n  report  {} ({} plots)\n",
        pruned.check.runtime,
        if pruned.check.passed { "pass" } else { "FAIL" },
        timings.total() / 60.0,
        timings.total_cpu() / 60.0,
        dir.join("report.md").display(),
        pngs.len()
    );
    if let Some(r) = &rejected {
        summary += &format!(
            "  REJECTED by the quality gate: {r}; the model is {}\n",
            written.display()
        );
    }
    Ok(Compressed {
        dir,
        summary,
        rejected,
    })
}

/// The failed quality gate of `o` for these SI-SDRi figures (dB), if any.
fn quality_gate(o: &Options, original: f64, compressed: f64) -> Option<String> {
    // a NaN score fails every gate
    if let Some(min) = o
        .fail_below
        .filter(|&m| compressed.is_nan() || compressed < m)
    {
        return Some(format!(
            "SI-SDRi {compressed:.2} dB is below --fail-below {min} dB"
        ));
    }
    if let Some(d) = o
        .max_drop
        .filter(|&d| compressed.is_nan() || original - compressed > d)
    {
        return Some(format!(
            "SI-SDRi dropped by {:.2} dB ({original:.2} -> {compressed:.2}), more than --max-drop {d} dB",
            original - compressed
        ));
    }
    None
}

/// The report's charts; returns their file names (in `dir`).
#[allow(clippy::too_many_arguments)]
fn plots_for(
    dir: &Path,
    pa: &Profile,
    pb: &Profile,
    pruned: &Pruned,
    before: &EvalReport,
    last: &EvalReport,
    after_prune: &EvalReport,
    after_refit: &Option<EvalReport>,
    tuned: &Option<Finetuned>,
    rows: &[bench::Row],
) -> Result<Vec<String>> {
    let mut out = vec![];
    let mut put = |name: &str, r: Result<()>| -> Result<()> {
        r?;
        out.push(name.to_string());
        Ok(())
    };
    let regions: Vec<Region> = pa.regions.keys().copied().collect();
    let names: Vec<String> = regions.iter().map(|r| r.name().to_string()).collect();
    let per = |p: &Profile, f: fn(&crate::analysis::cost::RegionCost) -> u64, scale: f64| {
        regions
            .iter()
            .map(|r| f(&p.regions[r]) as f64 / scale)
            .collect::<Vec<f64>>()
    };
    put(
        "macs_by_region.png",
        plots::bars(
            &dir.join("macs_by_region.png"),
            "MACs per region (1 s of audio)",
            "GMac",
            &names,
            &[
                Series {
                    name: "original".into(),
                    values: per(pa, |c| c.macs, 1e9),
                },
                Series {
                    name: "compressed".into(),
                    values: per(pb, |c| c.macs, 1e9),
                },
            ],
        ),
    )?;
    put(
        "params_by_region.png",
        plots::bars(
            &dir.join("params_by_region.png"),
            "Parameters per region",
            "M params",
            &names,
            &[
                Series {
                    name: "original".into(),
                    values: per(pa, |c| c.params, 1e6),
                },
                Series {
                    name: "compressed".into(),
                    values: per(pb, |c| c.params, 1e6),
                },
            ],
        ),
    )?;
    match &pruned.removed {
        Removed::Channels(m) => {
            let cats: Vec<String> = m.groups.keys().map(|g| g.to_string()).collect();
            let kept: Vec<f64> = m
                .groups
                .values()
                .map(|g| g.keep.len() as f64 / g.size.max(1) as f64)
                .collect();
            put(
                "kept_channels.png",
                plots::bars(
                    &dir.join("kept_channels.png"),
                    "Channels kept per group (ids from inspect)",
                    "share kept",
                    &cats,
                    &[Series {
                        name: "kept".into(),
                        values: kept,
                    }],
                ),
            )?;
        }
        Removed::Blocks {
            blocks,
            removed,
            ranking,
        } => {
            let cats: Vec<String> = blocks.iter().map(|b| b.id.to_string()).collect();
            let score = |b: usize| ranking.iter().find(|r| r.0 == b).map_or(0.0, |r| r.1);
            let pick = |keep: bool| -> Vec<f64> {
                (0..blocks.len())
                    .map(|b| {
                        if removed.contains(&b) != keep {
                            score(b)
                        } else {
                            0.0
                        }
                    })
                    .collect()
            };
            put(
                "blocks.png",
                plots::bars(
                    &dir.join("blocks.png"),
                    "Output change when each block (id from inspect) is removed alone",
                    "relative change",
                    &cats,
                    &[
                        Series {
                            name: "kept".into(),
                            values: pick(true),
                        },
                        Series {
                            name: "removed".into(),
                            values: pick(false),
                        },
                    ],
                ),
            )?;
        }
    }
    let gmac = |p: &Profile| p.macs as f64 / 1e9;
    let mut pts = vec![
        (gmac(pa), before.si_sdri, "original".to_string()),
        (gmac(pb), after_prune.si_sdri, "pruned".to_string()),
    ];
    if let Some(r) = after_refit {
        pts.push((gmac(pb), r.si_sdri, "refit".into()));
    }
    if tuned.is_some() {
        pts.push((gmac(pb), last.si_sdri, "fine-tuned".into()));
    }
    put(
        "quality_vs_macs.png",
        plots::points(
            &dir.join("quality_vs_macs.png"),
            "Quality against cost",
            "GMac (1 s)",
            "SI-SDRi (dB)",
            &pts,
        ),
    )?;
    if let Some(t) = tuned {
        let curve = |f: fn(&crate::learn::finetune::Eval) -> f64| -> Vec<(f64, f64)> {
            t.history.iter().map(|h| (h.step as f64, f(h))).collect()
        };
        put(
            "learning_curve.png",
            plots::lines(
                &dir.join("learning_curve.png"),
                "Fine-tuning",
                "step",
                "loss (dB, lower is better)",
                &[
                    Series {
                        name: "validation".into(),
                        values: curve(|h| h.val_loss),
                    },
                    Series {
                        name: "test (not used for any decision)".into(),
                        values: curve(|h| h.test_loss.unwrap_or(f64::NAN)),
                    },
                    Series {
                        name: "training (mean since last validation)".into(),
                        values: curve(|h| h.train_loss),
                    },
                ],
            ),
        )?;
    }
    let mut cats: Vec<String> = vec![];
    let (mut orig, mut comp) = (vec![], vec![]);
    for r in rows {
        let cat = format!("{} {:.0} s", r.runtime.name(), r.seconds);
        if !cats.contains(&cat) {
            cats.push(cat);
        }
        if r.model == "original" {
            orig.push(r.median_ms)
        } else {
            comp.push(r.median_ms)
        }
    }
    put(
        "latency.png",
        plots::bars(
            &dir.join("latency.png"),
            "Latency (median, batch 1)",
            "ms",
            &cats,
            &[
                Series {
                    name: "original".into(),
                    values: orig,
                },
                Series {
                    name: "compressed".into(),
                    values: comp,
                },
            ],
        ),
    )?;
    if let Some(noise) = before.by_condition.get("noise_category") {
        let cats: Vec<String> = noise.keys().cloned().collect();
        let of = |e: &EvalReport| -> Vec<f64> {
            cats.iter()
                .map(|c| {
                    e.by_condition
                        .get("noise_category")
                        .and_then(|m| m.get(c))
                        .map_or(0.0, |s| s.si_sdri)
                })
                .collect()
        };
        put(
            "quality_by_noise.png",
            plots::bars(
                &dir.join("quality_by_noise.png"),
                "SI-SDRi by noise category (test split)",
                "SI-SDRi (dB)",
                &cats,
                &[
                    Series {
                        name: "original".into(),
                        values: of(before),
                    },
                    Series {
                        name: "compressed".into(),
                        values: of(last),
                    },
                ],
            ),
        )?;
    }
    Ok(out)
}
