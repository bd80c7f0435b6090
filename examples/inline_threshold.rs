//! Measures where inline small products (crates/jit/src/lower/small_matmul.rs)
//! stop paying off: each `x[m,k] · W[k,n]` (W constant, f32) compiled with
//! the inline path and with the runtime GEMM call, run alternately in
//! rounds, median time per call of each. Ratios within one run are what
//! count on a shared machine.
//!
//! Then W2 (WORKLOADS.md) the same way: jit and jit-folded with the
//! default threshold, with every product a GEMM call (the code before
//! inline products) and with every product inline (straight-line code),
//! and rustc-baseline, interleaved.
//!
//! `cargo run --release --example inline_threshold -- [rounds]`

use anyhow::{Context, Result};
use cranelora::bench::{build_forward, Mode, Runner};
use cranelora::core::export::{bindings_for, export_model, input_specs, input_values};
use cranelora::core::export::{ExportMode, ExportOptions};
use cranelora::core::Input;
use cranelora::graph::{DType, Graph, TensorData};
use cranelora::jit::{compile, Bindings, CompiledGraph, JitOptions};
use cranelora::workloads;
use std::time::Instant;

fn graph(m: usize, k: usize, n: usize) -> Result<(Graph, TensorData)> {
    let mut g = Graph::new();
    let x = g.input("x", vec![m, k], DType::F32);
    let w: Vec<f32> = (0..k * n)
        .map(|i| ((i * 7919) % 13) as f32 * 0.1 - 0.6)
        .collect();
    let w = g.constant(TensorData::f32(vec![k, n], w)?)?;
    let y = g.matmul(x, w)?;
    g.set_outputs(&[y])?;
    let xs: Vec<f32> = (0..m * k)
        .map(|i| ((i * 31) % 11) as f32 * 0.1 - 0.5)
        .collect();
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

/// W2 compiled with LoRA folding `fold` and inline products up to `macs`.
fn w2_runner<'a>(x: &'a [TensorData], fold: bool, macs: usize) -> Result<Runner<'a>> {
    let (model, xt) = workloads::w2::<f32>()?;
    let inputs = [Input::Float(&xt)];
    let mode = if fold {
        ExportMode::Inference
    } else {
        ExportMode::Serving
    };
    let g = export_model(&model, &input_specs(&inputs), &ExportOptions::new(mode))?;
    let b = Bindings::from_map(&bindings_for(&model, &g)?)?;
    let options = JitOptions::default()
        .with_lora_fold(fold)
        .with_inline_matmul_macs(macs);
    let c = compile(&g, &options)?;
    let mut out = c.run(x, &b)?;
    Ok(Box::new(move || {
        c.run_into(x, &b, &mut out)?;
        Ok(())
    }))
}

/// Nanoseconds per call of `f` over `calls` calls.
fn time_runner(f: &mut Runner<'_>, calls: u32) -> Result<f64> {
    let start = Instant::now();
    for _ in 0..calls {
        f()?;
    }
    Ok(start.elapsed().as_nanos() as f64 / calls as f64)
}

/// W2: jit / jit-folded, inline vs GEMM calls, and rustc-baseline.
fn w2(rounds: usize) -> Result<()> {
    let (model, xt) = workloads::w2::<f32>()?;
    let x = input_values(&[Input::Float(&xt)]);
    let default = JitOptions::default().inline_matmul_macs;
    let mut runners: Vec<(&str, Runner<'_>)> = vec![
        ("jit", w2_runner(&x, false, default)?),
        ("jit (GEMM calls)", w2_runner(&x, false, 0)?),
        (
            "jit (straight-line: inline up to 4096 MACs)",
            w2_runner(&x, false, 4096)?,
        ),
        ("jit-folded", w2_runner(&x, true, default)?),
        ("jit-folded (GEMM calls)", w2_runner(&x, true, 0)?),
        (
            "jit-folded (straight-line: inline up to 4096 MACs)",
            w2_runner(&x, true, 4096)?,
        ),
        (
            "rustc-baseline",
            build_forward(Mode::RustcBaseline, &model, &xt)?.1,
        ),
    ];
    let mut times = vec![Vec::new(); runners.len()];
    for _ in 0..rounds {
        for (t, (_, f)) in times.iter_mut().zip(&mut runners) {
            t.push(time_runner(f, 20_000)?);
        }
    }
    let base = median(&mut times[runners.len() - 1].clone());
    println!("W2 mode median_ns min_ns /rustc-baseline");
    for (t, (name, _)) in times.iter_mut().zip(&runners) {
        let min = t.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median(t);
        println!("W2 {name}: {med:.0} {min:.0} {:.2}", med / base);
    }
    Ok(())
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
        let inline = compile(
            &g,
            &JitOptions::default().with_inline_matmul_macs(usize::MAX),
        )?;
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
    w2(rounds)
}
