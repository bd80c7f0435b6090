//! Interleaved timing probe for the GEMM at W1's shapes (ratios within one
//! process; the machine is shared, so absolute times are noisy).
//!
//! `cargo run --release -p cranelora-kernels --example gemm_probe -- [reps]`
//!
//! Each round times, in turn: the 64×1024×1024 product with a prepacked
//! weight on 1 and 2 threads, the same with a bias + GELU-tanh epilogue, a
//! chain of four such layers (W1 folded), and the GELU-tanh pass alone;
//! medians over the rounds are printed with GFLOP/s.

use cranelora_kernels::gemm::{
    gemm_ep, workspace_len, Activation, Epilogue, MatMut, MatRef, PackedRhs, Rhs,
};
use cranelora_kernels::math::{apply_inplace, Func};
use cranelora_kernels::pool;
use std::time::Instant;

const M: usize = 64;
const N: usize = 1024;
const K: usize = 1024;

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.06
        })
        .collect()
}

struct Setup {
    x: Vec<f32>,
    w: Vec<PackedRhs<f32>>,
    bias: Vec<f32>,
    out: Vec<Vec<f32>>,
    ws: Vec<f32>,
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
    gemm_ep(1.0, a, Rhs::Packed(&s.w[l]), 0.0, c, &mut s.ws, &ep).expect("valid");
    s.out[l] = out;
}

/// µs per call: wall time, or with `PROBE_CPU=1` the calling thread's time
/// on a CPU (Linux schedstat; only meaningful for 1-thread rows).
fn time(reps: usize, f: &mut dyn FnMut()) -> f64 {
    let cpu = std::env::var("PROBE_CPU").is_ok_and(|v| v == "1");
    let (t, c) = (Instant::now(), thread_cpu_ns());
    for _ in 0..reps {
        f();
    }
    if cpu {
        return (thread_cpu_ns() - c) as f64 / 1e3 / reps as f64;
    }
    t.elapsed().as_secs_f64() * 1e6 / reps as f64
}

/// Nanoseconds the calling thread has run on a CPU (0 where unavailable).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
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
    };
    let names = [
        "gemm 1t",
        "gemm 1t 4 weights in turn",
        "gemm 2t",
        "gemm 2t 4 weights in turn",
        "gemm+gelu 2t",
        "W1-folded 4 layers 1t",
        "gelu_tanh pass 64x1024",
    ];
    let mut t: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let reps = 20;
    for _ in 0..rounds {
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
        pool::set_threads(1);
        t[5].push(time(reps, &mut || {
            layer(&mut s, 0, None, true);
            layer(&mut s, 1, Some(0), true);
            layer(&mut s, 2, Some(1), true);
            layer(&mut s, 3, Some(2), false);
        }));
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
            "{name:28} median {med:9.1} µs  min {:9.1} µs  {gf:6.0} GFLOP/s",
            v[0]
        );
    }
}
