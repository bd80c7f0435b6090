//! Eager forward on the workloads of WORKLOADS.md (W1 unmerged and merged, W2),
//! f32, through the layers' own forward in eval mode. The compiled modes
//! join these benchmarks when the JIT lands.

use cranelora::core::lora::merge_all;
use cranelora::core::Layer;
use cranelora::workloads::{w1, w1_flops, w2};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn eager(c: &mut Criterion) {
    let (mut model, x) = w1::<f32>().expect("W1 builds");
    let mut merged = model.clone();
    merge_all(&mut merged).expect("W1 merges");
    let mut g = c.benchmark_group("W1");
    g.throughput(Throughput::Elements(w1_flops(false) as u64));
    g.bench_function("eager", |b| {
        b.iter(|| model.forward_float(&x).expect("forward"))
    });
    g.throughput(Throughput::Elements(w1_flops(true) as u64));
    g.bench_function("merged-eager", |b| {
        b.iter(|| merged.forward_float(&x).expect("forward"))
    });
    g.finish();

    let (mut tiny, x) = w2::<f32>().expect("W2 builds");
    c.bench_function("W2/eager", |b| {
        b.iter(|| tiny.forward_float(&x).expect("forward"))
    });
}

criterion_group!(benches, eager);
criterion_main!(benches);
