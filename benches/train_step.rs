//! One fine-tuning step on the real Conv-TasNet (forward + backward + Adam on every weight,
//! 1 s of audio, batch 1, Candle CPU) and one mask-learner step (gates only), beside ORT's
//! forward latency on the same input (issue 3's target: a training step within 4x of ORT).
//! ORT runs with as many threads as Candle uses (all cores) and with one.
//!
//!     cargo bench --bench train_step
//!     RAYON_NUM_THREADS=1 CANDLE_NUM_THREADS=1 cargo bench --bench train_step  # Candle on 1 thread
//!
//! Candle's GEMM threads follow `RAYON_NUM_THREADS`, its elementwise pool
//! `CANDLE_NUM_THREADS`: set both for a one-thread step.
use criterion::{criterion_group, criterion_main, Criterion};
use sepprune::learn::finetune::Trainer;
use sepprune::learn::gumbel::{step, GumbelConfig, Item, Scores};
use sepprune::learn::loss::Loss;
use sepprune::learn::run::gated_graph;
use sepprune::onnx;
use sepprune::prune::Budget;
use sepprune::runtime::{ort, Runner, Runtime};
mod common;

fn train_step(c: &mut Criterion) {
    let path = common::real_model();
    let model = onnx::load(&path).unwrap();
    let n = 16000;
    let x = sepprune::verify::test_signal(n, 16000.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut g = c.benchmark_group("1 s, batch 1");
    g.sample_size(10);
    if ort::available() {
        for threads in [1, cores] {
            let mut r = Runner::new(Runtime::Ort, &model, &[1, 1, n], threads).unwrap();
            g.bench_function(format!("ORT forward, {threads} threads"), |b| {
                b.iter(|| r.run(&x).unwrap())
            });
        }
    } else {
        eprintln!("ORT library not found: ORT forward not measured");
    }
    let item = Item {
        input: x.clone(),
        targets: vec![x.iter().map(|v| 0.8 * v).collect()],
    };
    let mut t = Trainer::new(&model, n, 1e-4, 5.0, Loss::SiSdr, &candle_core::Device::Cpu).unwrap();
    g.bench_function("fine-tuning step (all weights)", |b| {
        b.iter(|| t.step(&item).unwrap())
    });
    let (graph, cands) =
        gated_graph(&model, n, &Budget::new(0.5), &candle_core::Device::Cpu).unwrap();
    let cands: Vec<_> = cands.iter().collect();
    let cfg = GumbelConfig::default();
    let mut scores = Scores::new(&cands, cfg.init);
    let mut rng = sepprune::learn::gumbel::rng_at(0, 0);
    g.bench_function("mask-learner step (gates)", |b| {
        b.iter(|| step(&graph, &mut scores, &cfg, &item, &mut rng).unwrap())
    });
    g.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
