//! The `sepprune` command line.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sepprune::{inspect, ir::Ir, onnx};
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
    },
}

fn load_ir(path: &PathBuf, seconds: f64, rate: u32) -> Result<Ir> {
    let model = onnx::load(path)?;
    let samples = (seconds * rate as f64).round() as usize;
    Ir::new(model, samples).with_context(|| format!("{}: shape inference failed", path.display()))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Inspect {
            model,
            seconds,
            rate,
            json,
            nodes,
        } => {
            let ir = load_ir(&model, seconds, rate)?;
            let (report, _) = inspect::inspect(&ir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", inspect::render(&report, nodes));
            }
        }
    }
    Ok(())
}
