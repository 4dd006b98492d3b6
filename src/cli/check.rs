//! `sepprune check`: verify: gate graph (all ones) == original; slim(mask) == gated(mask) for
//! random masks.
use anyhow::Result;
use sepprune::verify;
use std::path::PathBuf;

use super::{load_analyzed, print_check};

#[derive(clap::Args)]
pub struct Args {
    pub model: PathBuf,
    /// Also check these masks.
    #[arg(long)]
    pub masks: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    pub trials: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Runtimes to check in (default: tract, and ORT when its library loads).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub runtime: Vec<sepprune::runtime::Runtime>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub decl: super::InputArgs,
}

pub fn run(a: Args) -> Result<()> {
    let Args {
        model,
        masks,
        trials,
        seed,
        seconds,
        runtime,
        json,
        decl,
    } = a;
    use sepprune::runtime::{ort, Runtime};
    let (ir, groups, masks) = load_analyzed(&model, seconds, masks, &decl)?;
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
    Ok(())
}
