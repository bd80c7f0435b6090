//! Interleaved timing probe for the vector math kernels (ratios within one
//! process; the machine is shared, so absolute times are noisy).
//!
//! `cargo run --release -p cranelora-kernels --example math_probe -- [rounds] [isa]`
//!
//! `isa` is `avx512` (default when available), `avx2` or `portable`. Each
//! round times, in turn, every function below over a 64K-element buffer
//! (in and out together 512 KiB: L2) and over 1.5M elements (W3's
//! 1024×1536 FFN activation: memory), f32 and f64 for the GELUs. Reported:
//! the median over rounds of the calling thread's CPU time per element
//! (Linux schedstat, so time the thread spent preempted is excluded), in
//! nanoseconds and in cycles at the nominal clock from `/proc/cpuinfo`,
//! and the minimum in cycles (the least disturbed round).
//! `apply_inplace` (the GEMM epilogue's entry point) is timed too.

use cranelora_kernels::math::{apply_inplace_with, apply_with, Func, Isa};
use cranelora_kernels::Scalar;
use std::time::Instant;

const FUNCS: [(Func, &str); 7] = [
    (Func::GeluErf, "gelu_erf"),
    (Func::GeluTanh, "gelu_tanh"),
    (Func::Exp, "exp"),
    (Func::Tanh, "tanh"),
    (Func::Erf, "erf"),
    (Func::Sigmoid, "sigmoid"),
    (Func::GeluErfGrad, "gelu_erf_grad"),
];

/// Uniform values in [−6, 6] (no subnormals in or out).
fn data(len: usize, seed: u64) -> Vec<f64> {
    cranelora_kernels::testing::uniform(len, seed, -6.0, 6.0)
}

/// Nanoseconds the calling thread has run on a CPU (wall time where
/// schedstat is unavailable).
fn thread_ns(start: Instant) -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| start.elapsed().as_nanos() as u64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The nominal clock in GHz (first `cpu MHz` line), 1.0 if unknown.
fn ghz() -> f64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("cpu MHz"))?;
            line.split(':').nth(1)?.trim().parse::<f64>().ok()
        })
        .map_or(1.0, |mhz| mhz / 1e3)
}

/// One timed case: a closure over its own buffers, `len` elements per call.
struct Case {
    name: String,
    len: usize,
    run: Box<dyn FnMut()>,
    ns: Vec<f64>,
}

fn case<T: Scalar>(isa: Isa, f: Func, name: &str, len: usize, inplace: bool) -> Case {
    let x: Vec<T> = data(len, 7).into_iter().map(T::from_f64_lossy).collect();
    let mut out = x.clone();
    let run: Box<dyn FnMut()> = if inplace {
        // Refreshed from `x` each call so that repeated GELU does not drift
        // into subnormals; the copy is timed too (documented).
        Box::new(move || {
            out.copy_from_slice(&x);
            apply_inplace_with(isa, f, &mut out);
        })
    } else {
        Box::new(move || apply_with(isa, f, &x, &mut out).expect("equal lengths"))
    };
    let tag = if inplace { " inplace+copy" } else { "" };
    Case {
        name: format!("{name} {} {len}{tag}", std::any::type_name::<T>()),
        len,
        run,
        ns: Vec::new(),
    }
}

fn pick_isa(name: Option<String>) -> Isa {
    let avail = Isa::available();
    match name {
        Some(n) => *avail
            .iter()
            .find(|i| i.name() == n)
            .unwrap_or_else(|| panic!("isa {n} not available here")),
        None => avail[0],
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(9);
    let isa = pick_isa(args.next());
    let mut cases = Vec::new();
    for len in [64 * 1024, 1536 * 1024] {
        for (f, name) in FUNCS {
            cases.push(case::<f32>(isa, f, name, len, false));
        }
        for (f, name) in &FUNCS[..2] {
            cases.push(case::<f64>(isa, *f, name, len, false));
        }
        cases.push(case::<f32>(isa, Func::GeluErf, "gelu_erf", len, true));
        cases.push(case::<f32>(isa, Func::GeluTanh, "gelu_tanh", len, true));
    }
    for _ in 0..rounds {
        for c in &mut cases {
            let reps = (32 << 20) / c.len;
            let start = Instant::now();
            let t0 = thread_ns(start);
            for _ in 0..reps {
                (c.run)();
            }
            let dt = thread_ns(start) - t0;
            c.ns.push(dt as f64 / (reps * c.len) as f64);
        }
    }
    let ghz = ghz();
    println!("isa {}, {rounds} rounds, {ghz:.2} GHz nominal", isa.name());
    println!(
        "{:<40} {:>8} {:>8} {:>8}",
        "case", "ns/elem", "cyc/elem", "min cyc"
    );
    for c in &mut cases {
        let ns = median(&mut c.ns);
        let min = c.ns[0];
        println!(
            "{:<40} {:>8.3} {:>8.2} {:>8.2}",
            c.name,
            ns,
            ns * ghz,
            min * ghz
        );
    }
}
