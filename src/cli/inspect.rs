//! `sepprune inspect`: params and MACs per node and region (ptflops conventions), and the
//! channel groups.
use anyhow::Result;
use sepprune::inspect;
use std::path::PathBuf;

use super::load_ir;

#[derive(clap::Args)]
pub struct Args {
    pub model: PathBuf,
    /// Input length in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Sample rate in Hz.
    #[arg(long, default_value_t = 16000)]
    pub rate: u32,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub decl: super::InputArgs,
    /// List every node with params or MACs.
    #[arg(long)]
    pub nodes: bool,
    /// MACs conventions of this ptflops release (they differ on ConvTranspose: 0.7.5
    /// counts input positions, 0.7.4 and earlier output positions).
    #[arg(long, value_enum, default_value_t = sepprune::ops::Ptflops::V075)]
    pub ptflops: sepprune::ops::Ptflops,
}

pub fn run(a: Args) -> Result<()> {
    let Args {
        model,
        seconds,
        rate,
        json,
        nodes,
        ptflops,
        decl,
    } = a;
    let ir = load_ir(&model, seconds, rate, &decl)?;
    let (report, _) = inspect::inspect_as(&ir, ptflops)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", inspect::render(&report, nodes));
        for (ni, why) in &ir.opaque {
            let n = &ir.nodes()[*ni];
            println!(
                "opaque: node '{}' ({}): {why}; its channels are frozen",
                n.name(),
                n.op_type()
            );
        }
    }
    Ok(())
}
