//! `cranelora serve-bench --adapters N --rank r [--json FILE] [--quick] [--size D]`:
//! serving N adapters on W1's shapes (4 dense D→D, D = 1024, GELU-tanh,
//! batch 64), every mode timed in one run so the ratios are comparable.
//!
//! | mode | one timed call |
//! | --- | --- |
//! | `folded` | the batch through a function compiled with one adapter folded into the weights |
//! | `bound` | the batch through the serving function, the adapter a runtime binding (rank padded to r) |
//! | `bound-merged` | the same, every layer merged (bound weight W + s·A·B, merged and packed once per bind: `AdapterStrategy::Auto`'s alternative) |
//! | `swap` | `set_active` between two bound adapters |
//! | `mixed` | the batch with rows spread evenly over the N adapters (in N consecutive blocks), one `run_batch_named` call (names resolved per call) |
//! | `mixed-interleaved` | the same with row i on adapter i mod N (every group gathered) |
//! | `separate` | N calls, one per adapter, each a function compiled for batch/N rows with that adapter folded, summed |
//! | `merged-per-adapter` | N calls of the whole batch on per-adapter merged functions (a server keeping one merged copy per adapter; forward only, the merges not timed), summed |

use crate::files::write_atomic;
use anyhow::{bail, Context, Result};
use cranelora::bench::{self, measure, Stats};
use cranelora::core::export::{
    export_model, input_specs, input_values, ExportMode, ExportOptions, InputSpec,
};
use cranelora::core::layers::Sequential;
use cranelora::core::lora::{LoraAdapter, LoraConfig};
use cranelora::core::{Input, Layer, Rng, Tensor};
use cranelora::graph::TensorData;
use cranelora::jit::serve::AdapterStrategy;
use cranelora::jit::{compile, Bindings, CompiledGraph, JitOptions};
use cranelora::serving::{adapter_of, compile_server, ServingConfig};
use cranelora::workloads;
use std::time::Duration;

/// The options of one run.
struct Options {
    adapters: usize,
    rank: usize,
    size: usize,
    batch: usize,
    target: Duration,
    json: Option<String>,
}

fn parse(args: &[String], usage: &str) -> Result<Options> {
    let mut o = Options {
        adapters: 8,
        rank: 16,
        size: 1024,
        batch: 64,
        target: Duration::from_millis(1000),
        json: None,
    };
    let mut it = args.iter();
    let number = |it: &mut std::slice::Iter<'_, String>, flag: &str| -> Result<usize> {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        let n: usize = v
            .parse()
            .with_context(|| format!("{flag}: `{v}` is not a count"))?;
        if n == 0 {
            bail!("{flag} must be at least 1");
        }
        Ok(n)
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--adapters" => o.adapters = number(&mut it, flag)?,
            "--rank" => o.rank = number(&mut it, flag)?,
            "--size" => o.size = number(&mut it, flag)?,
            "--quick" => o.target = Duration::from_millis(200),
            "--json" => o.json = Some(it.next().context("--json needs a file")?.clone()),
            other => bail!("serve-bench: unknown option `{other}`\n\n{usage}"),
        }
    }
    if !o.batch.is_multiple_of(o.adapters) {
        bail!(
            "--adapters {} must divide the batch of {}",
            o.adapters,
            o.batch
        );
    }
    Ok(o)
}

/// W1's base (4 dense size→size, GELU-tanh after the first 3) with a fresh
/// rank-`r` adapter (α = 2r, A and B random non-zero) from `seed`.
fn model(size: usize, r: usize, seed: u64) -> Result<Sequential<f32>> {
    let (w1, _) = workloads::w1::<f32>()?;
    let mut rng = Rng::new(seed);
    let mut m = Sequential::new();
    for k in 0..4 {
        let path = format!("fc{k}");
        let adapter = w1
            .child(&path)?
            .as_lora_adapter()
            .context("W1 layers are adapters")?;
        let mut base = adapter.base_layer().clone_box();
        if size != 1024 {
            base = shrink(base.as_ref(), size)?;
        }
        let cfg = LoraConfig::new(r).with_alpha(2.0 * r as f64);
        let mut a = LoraAdapter::new(base, cfg)?;
        let l = a.lora_layer_mut();
        let std_a = 1.0 / (size as f64).sqrt();
        l.a_mut()
            .set_value(Tensor::random_normal(&[size, r], 0.0, std_a, &mut rng))?;
        let std_b = 1.0 / (r as f64).sqrt();
        l.b_mut()
            .set_value(Tensor::random_normal(&[r, size], 0.0, std_b, &mut rng))?;
        m.push(&path, a)?;
    }
    m.set_training(false);
    Ok(m)
}

/// A `size × size` dense layer with the activation of `base` (for `--size`).
fn shrink(base: &dyn Layer<f32>, size: usize) -> Result<Box<dyn Layer<f32>>> {
    let dense = base.as_lora_target().context("W1 layers are dense")?;
    let mut rng = Rng::new(workloads::SEED);
    let std = 1.0 / (size as f64).sqrt();
    let w = Tensor::random_normal(&[size, size], 0.0, std, &mut rng);
    let b = Tensor::random_normal(&[size], 0.0, std, &mut rng);
    let act = dense.activation();
    Ok(Box::new(cranelora::core::layers::Dense::from_weights(
        w,
        Some(b),
        act,
    )?))
}

/// A folded (Inference-mode, LoRA folding on) function of `m` for `rows` rows.
fn folded(m: &Sequential<f32>, rows: usize, size: usize) -> Result<CompiledGraph> {
    let spec = [InputSpec::float("x", &[rows, size])];
    let g = export_model(m, &spec, &ExportOptions::new(ExportMode::Inference))?;
    Ok(compile(&g, &JitOptions::default())?)
}

fn data(x: &Tensor<f32>) -> Vec<TensorData> {
    input_values(&[Input::Float(x)])
}

/// Runs the command (module docs).
pub fn run(args: &[String], usage: &str) -> Result<()> {
    let o = parse(args, usage)?;
    let (cpu, cores) = bench::machine();
    println!(
        "cranelora serve-bench: {cpu}, {cores} cores; {} adapters of rank {}, 4 dense {s}→{s}, batch {}",
        o.adapters, o.rank, o.batch, s = o.size
    );
    let results = measure_all(&o)?;
    let folded_us = results[0].1.median.as_secs_f64() * 1e6;
    println!(
        "{:<20} {:>12} {:>12} {:>10}",
        "mode", "median µs", "min µs", "÷ folded"
    );
    for (mode, s) in &results {
        let (med, min) = (s.median.as_secs_f64() * 1e6, s.min.as_secs_f64() * 1e6);
        println!(
            "{mode:<20} {med:>12.3} {min:>12.3} {:>10.3}",
            med / folded_us
        );
    }
    if let Some(path) = &o.json {
        let json = to_json(&results, &o, &cpu, cores);
        let text = serde_json::to_string_pretty(&json)? + "\n";
        write_atomic(path, &text)?;
        println!("wrote {path}");
    }
    Ok(())
}

/// Every mode, in the table's order.
fn measure_all(o: &Options) -> Result<Vec<(&'static str, Stats)>> {
    let n = o.adapters;
    let models: Vec<Sequential<f32>> = (0..n)
        .map(|i| model(o.size, o.rank, 100 + i as u64))
        .collect::<Result<_>>()?;
    let x = Tensor::random_normal(
        &[o.batch, o.size],
        0.0,
        1.0,
        &mut Rng::new(workloads::SEED + 1),
    );
    let xs = data(&x);
    let mut out = Vec::new();

    let f = folded(&models[0], o.batch, o.size)?;
    let mut y = f.run(&xs, &Bindings::new())?;
    out.push((
        "folded",
        measure(o.target, &mut || {
            Ok(f.run_into(&xs, &Bindings::new(), &mut y)?)
        })?,
    ));

    let mut cfg = ServingConfig::new(o.rank);
    cfg.mixed_capacity = n;
    let srv = compile_server(&models[0], &input_specs(&[Input::Float(&x)]), &cfg)?;
    for (i, m) in models.iter().enumerate() {
        srv.bind_adapter(&format!("a{i}"), &adapter_of(m)?)?;
    }
    srv.set_active(Some("a0"))?;
    let mut y = srv.run(&xs)?;
    out.push((
        "bound",
        measure(o.target, &mut || Ok(srv.run_into(&xs, &mut y)?))?,
    ));

    out.push(("bound-merged", bound_merged(o, &models, &x, &xs)?));

    let names = ["a0", if n > 1 { "a1" } else { "a0" }];
    let mut k = 0usize;
    out.push((
        "swap",
        measure(o.target, &mut || {
            k += 1;
            Ok(srv.set_active(Some(names[k % 2]))?)
        })?,
    ));

    let names: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
    for (mode, blocked) in [("mixed", true), ("mixed-interleaved", false)] {
        let rows: Vec<Option<&str>> = (0..o.batch)
            .map(|r| Some(names[if blocked { r * n / o.batch } else { r % n }].as_str()))
            .collect();
        let mut y = srv.run_batch_named(&xs, &rows)?;
        out.push((
            mode,
            measure(o.target, &mut || {
                Ok(srv.run_batch_named_into(&xs, &rows, &mut y)?)
            })?,
        ));
    }

    let rows = o.batch / n;
    let parts: Vec<(CompiledGraph, Vec<TensorData>)> = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let xi = Tensor::from_vec(
                x.to_vec()[i * rows * o.size..(i + 1) * rows * o.size].to_vec(),
                &[rows, o.size],
            )?;
            Ok((folded(m, rows, o.size)?, data(&xi)))
        })
        .collect::<Result<_>>()?;
    out.push(("separate", time_each(o.target, &parts)?));

    let merged: Vec<(CompiledGraph, Vec<TensorData>)> = models
        .iter()
        .map(|m| Ok((folded(m, o.batch, o.size)?, xs.clone())))
        .collect::<Result<_>>()?;
    out.push(("merged-per-adapter", time_each(o.target, &merged)?));
    Ok(out)
}

/// The batch through a server whose every layer is merged (the bound base
/// weight is W + s·A·B, packed for the GEMM once when bound): what
/// `AdapterStrategy::Auto` trades against `bound` (its `MOVE_COST`).
fn bound_merged(
    o: &Options,
    models: &[Sequential<f32>],
    x: &Tensor<f32>,
    xs: &[TensorData],
) -> Result<Stats> {
    let mut cfg = ServingConfig::new(o.rank);
    cfg.jit.adapter_strategy = AdapterStrategy::Merged;
    let srv = compile_server(&models[0], &input_specs(&[Input::Float(x)]), &cfg)?;
    if !srv.strategy().iter().all(|c| c.merged) {
        bail!(
            "bound-merged: the cost model kept a branch: {:?}",
            srv.strategy()
        );
    }
    srv.bind_adapter("a0", &adapter_of(&models[0])?)?;
    srv.set_active(Some("a0"))?;
    let mut y = srv.run(xs)?;
    measure(o.target, &mut || Ok(srv.run_into(xs, &mut y)?))
}

/// One call of each function in turn, as one timed unit.
fn time_each(target: Duration, parts: &[(CompiledGraph, Vec<TensorData>)]) -> Result<Stats> {
    let mut outs: Vec<Vec<TensorData>> = parts
        .iter()
        .map(|(c, xs)| c.run(xs, &Bindings::new()))
        .collect::<std::result::Result<_, _>>()?;
    measure(target, &mut || {
        for ((c, xs), y) in parts.iter().zip(outs.iter_mut()) {
            c.run_into(xs, &Bindings::new(), y)?;
        }
        Ok(())
    })
}

/// The bench JSON schema with workload `serve`.
fn to_json(results: &[(&str, Stats)], o: &Options, cpu: &str, cores: usize) -> serde_json::Value {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|(mode, s)| {
            serde_json::json!({
                "workload": "serve",
                "mode": mode,
                "median_us": us(s.median),
                "min_us": us(s.min),
                "gflops": serde_json::Value::Null,
            })
        })
        .collect();
    serde_json::json!({
        "machine": {"cpu": cpu, "cores": cores},
        "results": rows,
        "serve": {"adapters": o.adapters, "rank": o.rank, "size": o.size, "batch": o.batch},
    })
}
