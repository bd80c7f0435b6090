//! Interleaved timing probe for the GEMM at W1's and W3's shapes (ratios
//! within one process; the machine is shared, so absolute times are noisy).
//!
//! `cargo run --release -p cranelora-kernels --example gemm_probe -- [rounds] [w1|w3|all]`
//!
//! W1: each round times, in turn, the 64×1024×1024 product with a
//! prepacked weight on 1 and 2 threads, the same with a bias + GELU-tanh
//! epilogue, a chain of four such layers (W1 folded), and the GELU-tanh
//! pass alone; then the chain on 1 and 2 threads with the deep kernels
//! and with the regular `kc`-deep blocks (a workspace one element short of
//! `workspace_len`), interleaved, with the median of the per-round ratios. W3: each of MiniLM's 1024-row products (prepacked weights,
//! four in turn, 2 threads) as the library splits it and as a column or a
//! row split emulated over the pool (`w3` below). Medians over the rounds
//! are printed with GFLOP/s.

use cranelora_kernels::gemm::{
    gemm_ep, workspace_len, Activation, Epilogue, MatMut, MatRef, PackedRhs, Rhs,
};
use cranelora_kernels::math::{apply_inplace, Func};
use cranelora_kernels::pool;
use std::time::Instant;

const M: usize = 64;
const N: usize = 1024;
const K: usize = 1024;

/// Uniform values in [−0.03, 0.03).
fn data(len: usize, seed: u64) -> Vec<f32> {
    let x = cranelora_kernels::testing::uniform(len, seed, -0.03, 0.03);
    x.into_iter().map(|v| v as f32).collect()
}

struct Setup {
    x: Vec<f32>,
    w: Vec<PackedRhs<f32>>,
    bias: Vec<f32>,
    out: Vec<Vec<f32>>,
    ws: Vec<f32>,
    /// One element short of `workspace_len` on 1 and on 2 threads: too
    /// small for the deep kernels (`Family::for_product`), so the products
    /// take the regular `kc`-deep blocks on the same threads (the session-6
    /// kernels).
    ws_regular: [Vec<f32>; 2],
    regular: bool,
}

fn layer(s: &mut Setup, l: usize, input: Option<usize>, gelu: bool) {
    let mut out = std::mem::take(&mut s.out[l]);
    let x = match input {
        None => s.x.as_slice(),
        Some(i) => s.out[i].as_slice(),
    };
    let a = MatRef::new(x, M, K).expect("fits");
    let c = MatMut::new(&mut out, M, N).expect("fits");
    let ep = Epilogue {
        bias: Some(&s.bias),
        activation: gelu.then_some(Activation::Func(Func::GeluTanh)),
        ..Epilogue::none()
    };
    let ep = if input.is_none() && !gelu {
        Epilogue::none()
    } else {
        ep
    };
    let ws = if s.regular {
        &mut s.ws_regular[usize::from(pool::threads() > 1)]
    } else {
        &mut s.ws
    };
    gemm_ep(1.0, a, Rhs::Packed(&s.w[l]), 0.0, c, ws, &ep).expect("valid");
    s.out[l] = out;
}

/// µs per call: wall time; with `PROBE_CPU=1` the calling thread's time
/// on a CPU (Linux schedstat; only meaningful for 1-thread rows); with
/// `PROBE_CPU=all` the CPU time of all the process's threads (pool workers
/// included, with their spinning between jobs: on a loaded machine the
/// work a product costs, where its wall time mostly measures the load).
fn time(reps: usize, f: &mut dyn FnMut()) -> f64 {
    let cpu = std::env::var("PROBE_CPU").unwrap_or_default();
    let clock = match cpu.as_str() {
        "1" => thread_cpu_ns,
        "all" => process_cpu_ns,
        _ => {
            let t = Instant::now();
            (0..reps).for_each(|_| f());
            return t.elapsed().as_secs_f64() * 1e6 / reps as f64;
        }
    };
    let c = clock();
    (0..reps).for_each(|_| f());
    (clock() - c) as f64 / 1e3 / reps as f64
}

/// Nanoseconds the calling thread has run on a CPU (0 where unavailable).
fn thread_cpu_ns() -> u64 {
    schedstat_ns("/proc/thread-self/schedstat")
}

/// Nanoseconds all threads of this process have run on a CPU.
fn process_cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.flatten()
        .map(|t| schedstat_ns(&t.path().join("schedstat").to_string_lossy()))
        .sum()
}

fn schedstat_ns(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15);
    let which = std::env::args().nth(2).unwrap_or_else(|| "all".into());
    if which == "w1" || which == "all" {
        w1(rounds);
    }
    if which == "w3" || which == "all" {
        w3::run(rounds);
    }
}

/// W1 folded: four layers, bias + GELU-tanh after the first three.
fn chain(s: &mut Setup) {
    layer(s, 0, None, true);
    layer(s, 1, Some(0), true);
    layer(s, 2, Some(1), true);
    layer(s, 3, Some(2), false);
}

/// µs per W1-folded chain with the deep kernels and with the regular ones,
/// each after one untimed call, in the order given (alternate it between
/// rounds so neither always runs second).
fn deep_vs_regular(s: &mut Setup, reps: usize, regular_first: bool) -> (f64, f64) {
    let mut times = [0.0; 2];
    for regular in [regular_first, !regular_first] {
        s.regular = regular;
        chain(s);
        times[usize::from(regular)] = time(reps, &mut || chain(s));
    }
    s.regular = false;
    (times[0], times[1])
}

fn w1(rounds: usize) {
    let w: Vec<PackedRhs<f32>> = (0..4)
        .map(|l| {
            let d = data(K * N, 7 + l);
            PackedRhs::pack(MatRef::new(&d, K, N).expect("fits"))
        })
        .collect();
    let mut s = Setup {
        x: data(M * K, 1),
        w,
        bias: data(N, 3),
        out: vec![vec![0.0; M * N]; 4],
        ws: vec![0.0; workspace_len::<f32>(M, N, K, true) * 2],
        ws_regular: [1, 0].map(|threads| {
            pool::set_threads(threads);
            vec![0.0; workspace_len::<f32>(M, N, K, true) - 1]
        }),
        regular: false,
    };
    let names = [
        "gemm 1t",
        "gemm 1t 4 weights in turn",
        "gemm 2t",
        "gemm 2t 4 weights in turn",
        "gemm+gelu 2t",
        "W1-folded 4 layers 1t",
        "gelu_tanh pass 64x1024",
        "W1-folded 4 layers 1t, regular kc",
        "W1-folded 4 layers 2t",
        "W1-folded 4 layers 2t, regular kc",
    ];
    // Paired per round: regular-kc time / deep time, 1 and 2 threads.
    let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut t: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let reps = 20;
    for round in 0..rounds {
        pool::set_threads(1);
        t[0].push(time(reps, &mut || layer(&mut s, 0, None, false)));
        t[1].push(
            time(reps, &mut || {
                (0..4).for_each(|l| layer(&mut s, l, None, false))
            }) / 4.0,
        );
        pool::set_threads(0);
        t[2].push(time(reps, &mut || layer(&mut s, 0, None, false)));
        t[3].push(
            time(reps, &mut || {
                (0..4).for_each(|l| layer(&mut s, l, None, false))
            }) / 4.0,
        );
        t[4].push(time(reps, &mut || layer(&mut s, 0, None, true)));
        for (threads, (deep, regular)) in [(1, (5, 7)), (0, (8, 9))] {
            pool::set_threads(threads);
            let (d, r) = deep_vs_regular(&mut s, reps, round % 2 == 1);
            t[deep].push(d);
            t[regular].push(r);
            ratios[usize::from(threads == 0)].push(r / d);
        }
        pool::set_threads(0);
        let mut buf = s.out[3].clone();
        t[6].push(time(reps, &mut || {
            apply_inplace(Func::GeluTanh, &mut buf);
            std::hint::black_box(&buf);
        }));
    }
    let flops = 2.0 * (M * N * K) as f64;
    for (name, v) in names.iter().zip(&mut t) {
        let med = median(v);
        let gf = match *name {
            n if n.starts_with("W1") => 4.0 * flops / med / 1e3,
            n if n.starts_with("gelu") => 0.0,
            _ => flops / med / 1e3,
        };
        println!(
            "{name:32} median {med:9.1} µs  min {:9.1} µs  {gf:6.0} GFLOP/s",
            v[0]
        );
    }
    for (threads, r) in [1, 2].iter().zip(&mut ratios) {
        println!(
            "W1-folded {threads}t regular kc / deep, paired per round: median {:.3}",
            median(r)
        );
    }
}

/// W3 (MiniLM on 8 × 128 tokens): the 1024-row products with prepacked
/// weights, on 2 threads, four weights in turn (a forward pass streams its
/// weights). Besides the library's own split, a column split and a row
/// split are emulated through the public API: `parallel_for_slots` runs
/// the tasks, each a single-threaded `gemm` on its rectangle (a nested
/// call stays on its thread) into its own output buffer.
mod w3 {
    use super::{data, median, time};
    use cranelora_kernels::gemm::{gemm, workspace_len, MatMut, MatRef, PackedRhs, Rhs};
    use cranelora_kernels::pool;
    use std::ops::Range;
    use std::sync::Mutex;

    /// (m, n, k): the attention projections, the FFN's up and down products.
    const SHAPES: [(usize, usize, usize); 3] =
        [(1024, 384, 384), (1024, 1536, 384), (1024, 384, 1536)];

    /// `SHAPES`, or the `MxNxK` list (comma-separated) in `PROBE_SHAPES`.
    fn shapes() -> Vec<(usize, usize, usize)> {
        let Ok(list) = std::env::var("PROBE_SHAPES") else {
            return SHAPES.to_vec();
        };
        let dims = |s: &str| {
            let d: Vec<usize> = s
                .split('x')
                .map(|x| x.trim().parse().expect("MxNxK"))
                .collect();
            (d[0], d[1], d[2])
        };
        list.split(',').map(dims).collect()
    }
    /// Distinct weights per shape, used in turn.
    const WEIGHTS: usize = 4;
    /// Tasks of the emulated column split (two per thread, as the driver).
    const COLUMN_TASKS: usize = 4;
    /// Row tasks start at multiples of this (the AVX-512 f32 tile height).
    const MR: usize = 12;

    /// How a product is cut into tasks.
    #[derive(Clone, Copy)]
    enum Split {
        Library,
        Columns,
        Rows(usize),
    }

    const SPLITS: [(Split, &str); 4] = [
        (Split::Library, "library"),
        (Split::Columns, "4 column tasks"),
        (Split::Rows(4), "4 row tasks"),
        (Split::Rows(2), "2 row tasks"),
    ];

    /// Task `t` of `tasks` over `len`, cut at multiples of `unit` (as the driver).
    fn bounds(len: usize, unit: usize, tasks: usize, t: usize) -> Range<usize> {
        let units = len.div_ceil(unit);
        let bound = |t: usize| (units * t / tasks * unit).min(len);
        bound(t)..bound(t + 1)
    }

    struct Product {
        dims: (usize, usize, usize),
        x: Vec<f32>,
        weights: Vec<PackedRhs<f32>>,
        /// `columns[w][t]`: the columns of weight `w` owned by column task `t`.
        columns: Vec<Vec<PackedRhs<f32>>>,
        out: Vec<f32>,
        ws: Vec<f32>,
        task_out: Vec<Mutex<Vec<f32>>>,
        slot_ws: Vec<Mutex<Vec<f32>>>,
    }

    impl Product {
        fn new((m, n, k): (usize, usize, usize)) -> Self {
            let raw: Vec<Vec<f32>> = (0..WEIGHTS).map(|w| data(k * n, 11 + w as u64)).collect();
            let pack = |d: &[f32], cols: Range<usize>| {
                let v = MatRef::with_strides(&d[cols.start..], k, cols.len(), n, 1);
                PackedRhs::pack(v.expect("fits"))
            };
            let weights: Vec<_> = raw.iter().map(|d| pack(d, 0..n)).collect();
            let nr = weights[0].panel_width();
            let columns = raw
                .iter()
                .map(|d| {
                    (0..COLUMN_TASKS)
                        .map(|t| pack(d, bounds(n, nr, COLUMN_TASKS, t)))
                        .collect()
                })
                .collect();
            pool::set_threads(1);
            let one = workspace_len::<f32>(m, n, k, true);
            pool::set_threads(2);
            Self {
                dims: (m, n, k),
                x: data(m * k, 5),
                weights,
                columns,
                out: vec![0.0; m * n],
                ws: vec![0.0; workspace_len::<f32>(m, n, k, true)],
                task_out: (0..COLUMN_TASKS)
                    .map(|_| Mutex::new(vec![0.0; m * n]))
                    .collect(),
                slot_ws: (0..2).map(|_| Mutex::new(vec![0.0; one])).collect(),
            }
        }

        /// One product with weight `w`, cut as `split`.
        fn call(&mut self, w: usize, split: Split) {
            let (m, n, k) = self.dims;
            let a = MatRef::new(&self.x, m, k).expect("fits");
            let tasks = match split {
                Split::Library => {
                    let c = MatMut::new(&mut self.out, m, n).expect("fits");
                    let b = Rhs::Packed(&self.weights[w]);
                    gemm(1.0, a, b, 0.0, c, &mut self.ws).expect("valid");
                    return;
                }
                Split::Columns => COLUMN_TASKS,
                Split::Rows(t) => t,
            };
            let this = &*self;
            pool::parallel_for_slots(tasks, 2, &|t, slot| {
                let mut ws = this.slot_ws[slot].lock().expect("unpoisoned");
                let mut out = this.task_out[t].lock().expect("unpoisoned");
                let (a, b) = match split {
                    Split::Rows(_) => {
                        let rows = bounds(m, MR, tasks, t);
                        let a = MatRef::new(&this.x[rows.start * k..rows.end * k], rows.len(), k);
                        (a.expect("fits"), &this.weights[w])
                    }
                    _ => (a, &this.columns[w][t]),
                };
                let c = MatMut::new(&mut out[..a.rows() * b.n()], a.rows(), b.n());
                gemm(1.0, a, Rhs::Packed(b), 0.0, c.expect("fits"), &mut ws).expect("valid");
            });
        }
    }

    pub(super) fn run(rounds: usize) {
        pool::set_threads(2);
        let shapes = shapes();
        let mut products: Vec<Product> = shapes.iter().map(|&s| Product::new(s)).collect();
        let mut t = vec![vec![Vec::new(); SPLITS.len()]; shapes.len()];
        for _ in 0..rounds {
            for (p, times) in products.iter_mut().zip(&mut t) {
                let (m, n, k) = p.dims;
                let reps = (4e9 / (WEIGHTS * 2 * m * n * k) as f64).ceil() as usize;
                for (&(split, _), v) in SPLITS.iter().zip(times.iter_mut()) {
                    v.push(
                        time(reps, &mut || (0..WEIGHTS).for_each(|w| p.call(w, split)))
                            / WEIGHTS as f64,
                    );
                }
            }
        }
        pool::set_threads(0);
        for (&(m, n, k), times) in shapes.iter().zip(&mut t) {
            let flops = 2.0 * (m * n * k) as f64;
            for (&(_, name), v) in SPLITS.iter().zip(times.iter_mut()) {
                let med = median(v);
                let name = format!("{m}x{n}x{k} 2t {name}");
                println!(
                    "{name:32} median {med:9.1} µs  min {:9.1} µs  {:6.0} GFLOP/s",
                    v[0],
                    flops / med / 1e3
                );
            }
        }
    }
}
