//! `sepprune bench`: latency across runtimes (interleaved runs), beside the MACs ratio. Ratios
//! are to the first model.
use anyhow::Result;
use sepprune::onnx;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    pub models: Vec<PathBuf>,
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub seconds: Vec<f64>,
    /// Runtimes: ort, ort-cuda (onnxruntime-gpu), tract.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "ort,tract")]
    pub runtime: Vec<sepprune::runtime::Runtime>,
    /// Batch sizes (a model that declares batch 1 gets its batch axis widened).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// ORT CUDA: capture each model's run in a CUDA graph and replay it.
    #[arg(long)]
    pub cuda_graph: bool,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    #[arg(long, default_value_t = 30)]
    pub runs: usize,
    #[arg(long)]
    pub json: bool,
    /// Time Candle training steps instead of inference (fine-tuning: forward, backward,
    /// AdamW; mask learning: a Gumbel-Softmax step), on the CPU (all cores) or with `--cuda`
    /// on the GPU, fine-tuning at each `--batch`. `--runtime` and `--threads` do not apply.
    #[arg(long)]
    pub train: bool,
    /// With `--train`: on the first CUDA GPU (a build with `--features cuda`).
    #[arg(long, requires = "train")]
    pub cuda: bool,
}

pub fn run(a: Args) -> Result<()> {
    let Args {
        models,
        seconds,
        runtime,
        batch,
        cuda_graph,
        threads,
        warmup,
        runs,
        json,
        train,
        cuda,
    } = a;
    anyhow::ensure!(!models.is_empty(), "give at least one model");
    let ms: Vec<(String, onnx::ModelProto)> = models
        .iter()
        .map(|p| Ok((p.display().to_string(), onnx::load(p)?)))
        .collect::<Result<_>>()?;
    if train {
        use sepprune::bench::train;
        let device = sepprune::learn::device(cuda)?;
        let mut rows = vec![];
        for (name, m) in &ms {
            rows.extend(train::bench_train(
                name, m, &seconds, &batch, &device, warmup, runs,
            )?);
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print!("{}", train::markdown(&rows));
        }
        return Ok(());
    }
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
    Ok(())
}
