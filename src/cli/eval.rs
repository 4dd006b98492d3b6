//! `sepprune eval`: SI-SDR, SI-SDRi and SDRi on a LibriMix-style directory (mix/, s1/, s2/
//! ...); several models are compared, per mixing condition when the set has a conditions.json.
use anyhow::{Context, Result};
use sepprune::onnx;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    pub models: Vec<PathBuf>,
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 16000)]
    pub rate: u32,
    /// Runtime: tract, ort or ort-cuda.
    #[arg(long, value_enum, default_value = "tract")]
    pub runtime: sepprune::runtime::Runtime,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let Args {
        models,
        data,
        rate,
        runtime,
        json,
    } = a;
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
