//! `sepprune gate`: writes the gate graph: one gate vector per prunable channel group.
use anyhow::Result;
use sepprune::{gates, onnx};
use std::path::PathBuf;

use super::load_analyzed;

#[derive(clap::Args)]
pub struct Args {
    pub model: PathBuf,
    #[arg(short, long)]
    pub output: PathBuf,
    /// Gate values from a masks file (default: all ones).
    #[arg(long)]
    pub masks: Option<PathBuf>,
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Print `{"output", "gates"}` as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub decl: super::InputArgs,
}

pub fn run(a: Args) -> Result<()> {
    let Args {
        model,
        output,
        masks,
        seconds,
        json,
        decl,
    } = a;
    let (ir, groups, masks) = load_analyzed(&model, seconds, masks, &decl)?;
    let g = gates::gate_graph(&ir, &groups, masks.as_ref())?;
    onnx::save(&g, &output, Some(&model), false)?;
    let gates = groups.prunable().count();
    if json {
        println!(
            "{}",
            serde_json::json!({ "output": output, "gates": gates })
        );
    } else {
        println!("{}: {gates} gates", output.display());
    }
    Ok(())
}
