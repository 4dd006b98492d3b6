//! The `sepprune` command line.
mod cli;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "sepprune",
    version,
    about = "Structured channel pruning for ONNX speech separation models (SepPrune)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Options from a TOML file, one table per command (`[compress]`, keys are long option
    /// names: `target_macs = 0.3`, `runtime = ["ort", "tract"]`, `teacher = true`); the
    /// command line overrides it. Default: `sepprune.toml` in the working directory, if any.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Params and MACs per node and region (ptflops conventions), and the channel groups.
    Inspect(cli::inspect::Args),
    /// Physically remove channels (by a MACs budget, `--ratio`, or from a masks file) and/or
    /// whole residual blocks (`--drop-blocks`, `--blocks`).
    Prune(cli::prune::Args),
    /// Write the gate graph: one gate vector per prunable channel group.
    Gate(cli::gate::Args),
    /// Build an enhancement set (mix/, s1/) from speech and noise directories.
    Mix(cli::mix::Args),
    /// SI-SDR, SI-SDRi and SDRi on a LibriMix-style directory (mix/, s1/, s2/ ...); several
    /// models are compared, per mixing condition when the set has a conditions.json.
    Eval(cli::eval::Args),
    /// Latency across runtimes (interleaved runs), beside the MACs ratio. Ratios are to the first model.
    Bench(cli::bench::Args),
    /// The whole pipeline: masks (learned by default), prune, verify, fine-tune, eval,
    /// bench, and a report directory beside OUT.
    Compress(cli::compress::Args),
    /// Learn channel masks with the SepPrune Gumbel learner (Candle, CPU) on a data set.
    Learn(cli::learn::Args),
    /// Fine-tune every weight of a (slimmed) model with Candle (Adam, validation split,
    /// learning rate halved on plateaus, early stop); writes ONNX with updated initializers.
    Finetune(cli::finetune::Args),
    /// Verify: gate graph (all ones) == original; slim(mask) == gated(mask) for random masks.
    Check(cli::check::Args),
}

fn main() -> Result<()> {
    // a closed pipe (`sepprune inspect ... | head`) ends the process quietly, as for any
    // Unix filter, instead of panicking in `println!`
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse_from(with_config(std::env::args_os().collect())?);
    match cli.cmd {
        Cmd::Inspect(a) => cli::inspect::run(a),
        Cmd::Prune(a) => cli::prune::run(a),
        Cmd::Gate(a) => cli::gate::run(a),
        Cmd::Mix(a) => cli::mix::run(a),
        Cmd::Eval(a) => cli::eval::run(a),
        Cmd::Bench(a) => cli::bench::run(a),
        Cmd::Compress(a) => cli::compress::run(a),
        Cmd::Learn(a) => cli::learn::run(a),
        Cmd::Finetune(a) => cli::finetune::run(a),
        Cmd::Check(a) => cli::check::run(a),
    }
}

/// The command line with the options of the config file (`Cli::config`) that it does not
/// give itself, appended.
///
/// Errors: an unreadable or malformed file, a key that is no option of the command.
fn with_config(mut args: Vec<OsString>) -> Result<Vec<OsString>> {
    let text: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let explicit = text
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--config") {
            Some("") => text.get(i + 1).cloned(),
            Some(v) => v.strip_prefix('=').map(str::to_string),
            None => None,
        });
    let path = match explicit {
        Some(p) => PathBuf::from(p),
        None if Path::new("sepprune.toml").is_file() => PathBuf::from("sepprune.toml"),
        None => return Ok(args),
    };
    // the command name: the first word that is no option and no value of --config
    let Some(at) =
        (1..text.len()).find(|&i| !text[i].starts_with('-') && text[i - 1] != "--config")
    else {
        return Ok(args);
    };
    let cli = Cli::command();
    let Some(cmd) = cli.find_subcommand(&text[at]) else {
        return Ok(args);
    };
    let file =
        std::fs::read_to_string(&path).with_context(|| format!("config {}", path.display()))?;
    let table: toml::Table = file
        .parse()
        .with_context(|| format!("config {}: not TOML", path.display()))?;
    let Some(opts) = table.get(&text[at]) else {
        return Ok(args);
    };
    let opts = opts
        .as_table()
        .with_context(|| format!("config {}: [{}] is not a table", path.display(), text[at]))?;
    let scalar = |key: &str, v: &toml::Value| -> Result<String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => anyhow::bail!(
                "config {}: {key}: a string, number, boolean or list",
                path.display()
            ),
        }
    };
    let mut extra: Vec<OsString> = vec![];
    for (key, value) in opts {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .with_context(|| {
                format!(
                    "config {}: `sepprune {}` has no option --{long}",
                    path.display(),
                    text[at]
                )
            })?;
        let given = text.iter().any(|a| {
            a == &format!("--{long}")
                || a.starts_with(&format!("--{long}="))
                || arg.get_short().is_some_and(|s| a == &format!("-{s}"))
        });
        if given {
            continue;
        }
        match value {
            toml::Value::Boolean(true) => extra.push(format!("--{long}").into()),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                let items = items
                    .iter()
                    .map(|v| scalar(key, v))
                    .collect::<Result<Vec<_>>>()?;
                if arg.get_value_delimiter().is_some() {
                    extra.push(format!("--{long}={}", items.join(",")).into());
                } else {
                    extra.push(format!("--{long}").into());
                    extra.extend(items.into_iter().map(OsString::from));
                }
            }
            v => extra.push(format!("--{long}={}", scalar(key, v)?).into()),
        }
    }
    // at the end: a list option of the file cannot swallow the command's positionals
    args.extend(extra);
    Ok(args)
}
