//! Measures where inline small products (crates/jit/src/lower/small_matmul.rs)
//! stop paying off: each `x[m,k] · W[k,n]` (W constant, f32) compiled with
//! the inline path and with the runtime GEMM call, run alternately in
//! rounds, median time per call of each. Ratios within one run are what
//! count on a shared machine.
//!
//! `cargo run --release --example inline_threshold -- [rounds]`

use anyhow::{Context, Result};
use cranelora::graph::{DType, Graph, TensorData};
use cranelora::jit::{compile, Bindings, CompiledGraph, JitOptions};
use std::time::Instant;

fn graph(m: usize, k: usize, n: usize) -> Result<(Graph, TensorData)> {
    let mut g = Graph::new();
    let x = g.input("x", vec![m, k], DType::F32);
    let w: Vec<f32> = (0..k * n).map(|i| ((i * 7919) % 13) as f32 * 0.1 - 0.6).collect();
    let w = g.constant(TensorData::f32(vec![k, n], w)?)?;
    let y = g.matmul(x, w)?;
    g.set_outputs(&[y])?;
    let xs: Vec<f32> = (0..m * k).map(|i| ((i * 31) % 11) as f32 * 0.1 - 0.5).collect();
    Ok((g, TensorData::f32(vec![m, k], xs)?))
}

/// Nanoseconds per call over a batch of calls.
fn time(c: &CompiledGraph, x: &TensorData, outs: &mut [TensorData], calls: u32) -> Result<f64> {
    let b = Bindings::new();
    let inputs = std::slice::from_ref(x);
    let start = Instant::now();
    for _ in 0..calls {
        c.run_into(inputs, &b, outs)?;
    }
    Ok(start.elapsed().as_nanos() as f64 / calls as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let rounds: usize = match std::env::args().nth(1) {
        Some(s) => s.parse().context("rounds")?,
        None => 21,
    };
    let shapes = [
        (1, 64, 4),
        (1, 4, 64),
        (1, 64, 10),
        (1, 64, 64),
        (1, 128, 128),
        (4, 64, 64),
        (1, 256, 64),
        (8, 64, 64),
        (16, 64, 64),
        (1, 256, 256),
        (32, 64, 32),
    ];
    println!("m k n macs inline_ns call_ns call/inline");
    for (m, k, n) in shapes {
        let (g, x) = graph(m, k, n)?;
        let inline = compile(&g, &JitOptions::default().with_inline_matmul_macs(usize::MAX))?;
        let call = compile(&g, &JitOptions::default().with_inline_matmul_macs(0))?;
        let mut outs = vec![TensorData::f32(vec![m, n], vec![0.0; m * n])?];
        let calls = (200_000 / (m * k * n).max(64)).clamp(20, 2000) as u32;
        let (mut ti, mut tc) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ti.push(time(&inline, &x, &mut outs, calls)?);
            tc.push(time(&call, &x, &mut outs, calls)?);
        }
        let (ti, tc) = (median(&mut ti), median(&mut tc));
        println!("{m} {k} {n} {} {ti:.0} {tc:.0} {:.2}", m * k * n, tc / ti);
    }
    Ok(())
}
