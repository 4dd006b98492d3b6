//! Criterion benches of the compiler passes on the real Conv-TasNet (`benches/common`):
//! decode + shape inference, channel groups, budgeted masks, slicing.
use criterion::{criterion_group, criterion_main, Criterion};
use sepprune::analysis::analyze_groups;
use sepprune::ir::Ir;
use sepprune::onnx;
use sepprune::prune::{masks_for_ratio, slim, Budget};
mod common;

fn passes(c: &mut Criterion) {
    let path = common::real_model();
    let model = onnx::load(&path).unwrap();
    c.bench_function("load+infer", |b| {
        b.iter(|| Ir::new(onnx::load(&path).unwrap(), 16000).unwrap())
    });
    let ir = Ir::new(model, 16000).unwrap();
    c.bench_function("groups", |b| b.iter(|| analyze_groups(&ir).unwrap()));
    let gs = analyze_groups(&ir).unwrap();
    c.bench_function("masks ratio 0.5", |b| {
        b.iter(|| masks_for_ratio(&ir, &gs, &Budget::new(0.5)).unwrap())
    });
    let m = masks_for_ratio(&ir, &gs, &Budget::new(0.5)).unwrap().masks;
    c.bench_function("slim", |b| b.iter(|| slim(&ir, &gs, &m).unwrap()));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = passes
}
criterion_main!(benches);
