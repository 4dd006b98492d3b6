//! `sepprune eval`: SI-SDR, SI-SDRi and SDRi on a LibriMix-style directory (mix/, s1/, s2/
//! ...); several models are compared, per mixing condition when the set has a conditions.json.
//! `--task sv`: speaker verification (EER, minDCF) on a directory of speaker folders.
use anyhow::{Context, Result};
use sepprune::onnx;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    pub models: Vec<PathBuf>,
    /// A LibriMix-style set (separation), or a directory of speaker folders (`--task sv`).
    #[arg(long)]
    pub data: PathBuf,
    /// What to score: separation or enhancement (SI-SDRi), or speaker verification of
    /// embeddings (every pair of utterances a trial, cosine scores: EER and minDCF).
    #[arg(long, value_enum, default_value_t = Task::Separation)]
    pub task: Task,
    /// With --task sv: subtract the embeddings' mean over the set before the cosine
    /// scores (for frame features of a general encoder, not a speaker encoder's output).
    #[arg(long)]
    pub center: bool,
    #[arg(long, default_value_t = 16000)]
    pub rate: u32,
    /// Runtime: tract, ort or ort-cuda.
    #[arg(long, value_enum, default_value = "tract")]
    pub runtime: sepprune::runtime::Runtime,
    #[arg(long)]
    pub json: bool,
}

/// The tasks `eval` scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    Separation,
    Sv,
}

pub fn run(a: Args) -> Result<()> {
    let Args {
        models,
        data,
        task,
        center,
        rate,
        runtime,
        json,
    } = a;
    if task == Task::Sv {
        let mut reports = vec![];
        for model in &models {
            let m = onnx::load(model)?;
            let r = sepprune::sv::evaluate(&m, &data, runtime, center)
                .with_context(|| format!("speaker verification of {}", model.display()))?;
            if !json {
                println!(
                    "{}: EER {:.2}%, minDCF(0.01) {:.3} over {} trials ({} same-speaker), {} speakers, {} utterances",
                    model.display(),
                    100.0 * r.eer,
                    r.min_dcf,
                    r.trials,
                    r.target_trials,
                    r.speakers,
                    r.utterances
                );
            }
            reports.push(serde_json::json!({"model": model, "sv": r}));
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&reports)?);
        }
        return Ok(());
    }
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
            .map(|p| {
                p.file_name().map_or_else(
                    || p.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                )
            })
            .collect();
        let pairs: Vec<(&str, &sepprune::eval::EvalReport)> = names
            .iter()
            .map(String::as_str)
            .zip(reports.iter())
            .collect();
        print!("{}", sepprune::eval::condition_tables(&pairs));
    }
    Ok(())
}
