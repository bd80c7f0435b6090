//! GEMM at the shapes of docs/../WORKLOADS.md: ours (packed and unpacked
//! `B`, 1 and 2 threads) against matrixmultiply and the `gemm` crate.
//!
//! Throughput is reported as elements = floating-point operations
//! (2·m·n·k), so criterion's "elem/s" reads as FLOP/s.
//!
//! ```text
//! cargo bench -p cranelora-kernels --features benches --bench gemm -- --warm-up-time 1 --measurement-time 3
//! ```

use cranelora_kernels::gemm::{gemm, workspace_len, MatMut, MatRef, PackedRhs, Rhs};
use cranelora_kernels::pool;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

/// (m, n, k): W1's dense layer, its LoRA down and up products, W2's layer, and a cube.
const SHAPES: [(usize, usize, usize); 5] = [
    (64, 1024, 1024),
    (64, 16, 1024),
    (64, 1024, 16),
    (1, 64, 64),
    (1024, 1024, 1024),
];

/// Deterministic values in [-1, 1).
fn fill(len: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

struct Operands {
    m: usize,
    n: usize,
    k: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl Operands {
    fn new((m, n, k): (usize, usize, usize)) -> Self {
        Self {
            m,
            n,
            k,
            a: fill(m * k, 1),
            b: fill(k * n, 2),
            c: vec![0.0; m * n],
        }
    }

    fn id(&self, name: &str) -> BenchmarkId {
        BenchmarkId::new(name, format!("{}x{}x{}", self.m, self.n, self.k))
    }
}

/// Ours, with `B` packed once or packed per call, on `threads` threads.
fn ours(c: &mut Criterion, o: &mut Operands, threads: usize) {
    let (m, n, k) = (o.m, o.n, o.k);
    let a = MatRef::new(&o.a, m, k).expect("a fits");
    let b = MatRef::new(&o.b, k, n).expect("b fits");
    let packed = PackedRhs::pack(b);
    pool::set_threads(threads);
    let mut group = c.benchmark_group("gemm_f32");
    group.throughput(Throughput::Elements((2 * m * n * k) as u64));
    for (name, rhs) in [("ours-packed", Rhs::Packed(&packed)), ("ours", Rhs::Mat(b))] {
        let mut ws = vec![0.0; workspace_len::<f32>(m, n, k, matches!(rhs, Rhs::Packed(_)))];
        group.bench_function(o.id(&format!("{name}-{threads}t")), |bench| {
            bench.iter(|| {
                let cv = MatMut::new(&mut o.c, m, n).expect("c fits");
                gemm(1.0, black_box(a), rhs, 0.0, cv, &mut ws).expect("valid product");
            })
        });
    }
    group.finish();
    pool::set_threads(0);
}

/// The comparison GEMMs, each on 2 threads (matrixmultiply: MATMUL_NUM_THREADS).
fn others(c: &mut Criterion, o: &mut Operands) {
    let (m, n, k) = (o.m, o.n, o.k);
    let mut group = c.benchmark_group("gemm_f32");
    group.throughput(Throughput::Elements((2 * m * n * k) as u64));
    group.bench_function(o.id("matrixmultiply"), |bench| {
        bench.iter(|| {
            // SAFETY: a, b, c are row-major m×k, k×n, m×n buffers of those sizes.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    o.a.as_ptr(),
                    k as isize,
                    1,
                    o.b.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    o.c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            }
        })
    });
    for (name, par) in [
        ("gemm-crate-1t", gemm::Parallelism::None),
        ("gemm-crate-2t", gemm::Parallelism::Rayon(2)),
    ] {
        group.bench_function(o.id(name), |bench| {
            bench.iter(|| {
                // SAFETY: as above; strides are (column, row) pairs in elements.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        o.c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        o.a.as_ptr(),
                        1,
                        k as isize,
                        o.b.as_ptr(),
                        1,
                        n as isize,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        par,
                    )
                }
            })
        });
    }
    group.finish();
}

fn bench_gemm(c: &mut Criterion) {
    for shape in SHAPES {
        let mut o = Operands::new(shape);
        ours(c, &mut o, 1);
        ours(c, &mut o, 2);
        others(c, &mut o);
    }
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
