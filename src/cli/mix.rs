//! `sepprune mix`: Build an enhancement set (mix/, s1/) from speech and noise directories.
use anyhow::Result;
use sepprune::onnx;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Directories of clean speech (WAV, FLAC; any layout, searched recursively).
    #[arg(long, num_args = 1.., required = true)]
    pub speech: Vec<PathBuf>,
    /// Directories of noise recordings (WAV, FLAC).
    #[arg(long, num_args = 1.., required = true)]
    pub noise: Vec<PathBuf>,
    #[arg(short, long)]
    pub output: PathBuf,
    /// SNRs in dB, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,5")]
    pub snr: Vec<f64>,
    #[arg(long, default_value_t = 16000)]
    pub rate: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Hold out every N-th utterance and every N-th noise file (sorted by name): writes
    /// OUT/train and OUT/test, which share no utterance and no noise recording.
    #[arg(long, conflicts_with = "split_by")]
    pub holdout: Option<usize>,
    /// Split by speaker and/or noise category (see `src/audio/corpus.rs` for how they are
    /// read from file and folder names): writes OUT/train, OUT/val and OUT/test, each with
    /// its mixtures, `conditions.json` and `sources.json`, and OUT/splits.json.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub split_by: Vec<sepprune::audio::corpus::SplitBy>,
    /// With --split-by: share of speakers (and noise categories) in validation.
    #[arg(long, default_value_t = 0.1)]
    pub val_share: f64,
    /// With --split-by: share of speakers (and noise categories) in test.
    #[arg(long, default_value_t = 0.2)]
    pub test_share: f64,
    /// With --split-by: mixtures written per split (train, val, test).
    #[arg(long, value_delimiter = ',', default_value = "200,40,100")]
    pub mixtures: Vec<usize>,
    /// With --split-by: longest mixture, in seconds (longer speech is cropped).
    #[arg(long, default_value_t = 4.0)]
    pub max_seconds: f64,
    /// Print the splits (or the mixture counts) as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    if !a.split_by.is_empty() {
        use sepprune::audio::{corpus, dataset};
        anyhow::ensure!(
            a.mixtures.len() == 3,
            "--mixtures takes three counts: train,val,test"
        );
        let c = corpus::Corpus::scan(&a.speech, &a.noise)?;
        let s = corpus::split(&c, &a.split_by, a.val_share, a.test_share, a.seed)?;
        for (k, (name, part)) in [("train", &s.train), ("val", &s.val), ("test", &s.test)]
            .into_iter()
            .enumerate()
        {
            let n = dataset::build_split(
                part,
                &a.output.join(name),
                a.mixtures[k],
                &a.snr,
                a.max_seconds,
                a.rate,
                a.seed ^ (k as u64 + 1),
            )?;
            let (sp, nz) = part.groups();
            if a.json {
                continue;
            }
            println!("{}/{name}: {n} mixtures from {} speakers ({} files) and {} noise categories ({} files)",
                a.output.display(), sp.len(), part.speech.len(), nz.len(), part.noise.len());
        }
        onnx::write_atomic(
            &a.output.join("splits.json"),
            serde_json::to_string_pretty(&s)?.as_bytes(),
        )?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        return Ok(());
    }
    anyhow::ensure!(
        a.speech.len() == 1 && a.noise.len() == 1,
        "without --split-by, give one --speech and one --noise directory"
    );
    let n = sepprune::audio::dataset::build_enhancement(
        &a.speech[0],
        &a.noise[0],
        &a.output,
        &a.snr,
        a.rate,
        a.seed,
        a.holdout,
    )?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "output": a.output, "mixtures": n })
        );
        return Ok(());
    }
    match n.as_slice() {
        [train, test] => println!(
            "{}: {train} training mixtures in train/, {test} held-out mixtures in test/",
            a.output.display()
        ),
        _ => println!("{}: {} mixtures", a.output.display(), n[0]),
    }
    Ok(())
}
