//! The workloads of WORKLOADS.md in the modes of `cranelora bench`, under
//! criterion (statistics, change detection, HTML reports in
//! target/criterion/). The builders are `cranelora::bench`'s own
//! ([`forward_runner`], [`train_runner`], [`compile_once`]), so every mode is
//! checked against eager before it is timed, exactly as in `cranelora bench`.
//!
//! Groups: `W1` (eager, interp, jit, jit-folded, merged-eager; throughput in
//! FLOPs, so criterion's "elem/s" is FLOP/s), `W2` (all six modes, incl.
//! rustc-baseline), `W3` (all five modes; interp is ~0.4 s per call, so the
//! group uses flat sampling with 10 samples), `W4` (eager, interp, jit: one
//! SGD step), `W5` (W3's export + passes + JIT compile, jit and jit-folded).
//! Filter with e.g. `cargo bench --features benches --bench workloads -- W2`
//! (criterion is an optional dependency behind the `benches` feature).

use cranelora::bench::{
    compile_once, eager_expected, forward_runner, train_runner, Mode, Runner, Workload,
};
use cranelora::core::export::ExportMode;
use cranelora::workloads::{w1, w1_flops, w2, w3, w4};
use criterion::{
    criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup, Criterion,
    SamplingMode, Throughput,
};
use std::time::Duration;

fn bench_runner(g: &mut BenchmarkGroup<'_, WallTime>, mode: Mode, runner: anyhow::Result<Runner>) {
    let mut f = runner.unwrap_or_else(|e| panic!("{}: {e:#}", mode.name()));
    g.bench_function(mode.name(), |b| b.iter(|| f().expect("call")));
}

fn forward_group(
    c: &mut Criterion,
    w: Workload,
    built: (
        cranelora::core::layers::Sequential<f32>,
        cranelora::core::Tensor<f32>,
    ),
    configure: impl Fn(&mut BenchmarkGroup<'_, WallTime>, Mode),
) {
    let (model, x) = built;
    let expected = eager_expected(&model, &x).expect("eager forward");
    let mut g = c.benchmark_group(w.name());
    for &mode in w.modes() {
        configure(&mut g, mode);
        bench_runner(&mut g, mode, forward_runner(w, mode, &model, &x, &expected));
    }
    g.finish();
}

fn w1_bench(c: &mut Criterion) {
    forward_group(c, Workload::W1, w1().expect("W1 builds"), |g, mode| {
        let merged = matches!(mode, Mode::JitFolded | Mode::MergedEager);
        g.throughput(Throughput::Elements(w1_flops(merged) as u64));
        // interp is ~25 ms per call: fewer, flat samples.
        if mode == Mode::Interp {
            g.sampling_mode(SamplingMode::Flat).sample_size(10);
        } else {
            g.sampling_mode(SamplingMode::Auto).sample_size(30);
        }
        g.measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1));
    });
}

fn w2_bench(c: &mut Criterion) {
    forward_group(c, Workload::W2, w2().expect("W2 builds"), |g, _| {
        g.measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500));
    });
}

fn w3_bench(c: &mut Criterion) {
    // 37–60 ms per call, interp ~0.4 s: flat sampling, 10 samples.
    forward_group(c, Workload::W3, w3().expect("W3 builds"), |g, _| {
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1));
    });
}

fn w4_bench(c: &mut Criterion) {
    let (model, x, y) = w4().expect("W4 builds");
    let mut g = c.benchmark_group(Workload::W4.name());
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for &mode in Workload::W4.modes() {
        bench_runner(&mut g, mode, train_runner(mode, &model, &x, &y));
    }
    g.finish();
}

fn w5_bench(c: &mut Criterion) {
    let (model, x) = w3().expect("W3 builds");
    let mut g = c.benchmark_group(Workload::W5.name());
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (mode, export_mode, fold) in [
        (Mode::Jit, ExportMode::Serving, false),
        (Mode::JitFolded, ExportMode::Inference, true),
    ] {
        g.bench_function(format!("compile-W3-{}", mode.name()), |b| {
            b.iter(|| compile_once(&model, &x, export_mode, fold).expect("compile"))
        });
    }
    g.finish();
}

criterion_group!(benches, w1_bench, w2_bench, w3_bench, w4_bench, w5_bench);
criterion_main!(benches);
