//! A driver for profiling the serving functions (`perf record`, `valgrind
//! --tool=callgrind`): builds `serve-bench`'s server (W1's base, 8 adapters
//! of rank 16, batch 64), then runs one mode `N` times.
//!
//! `cargo run --release --example serve_profile -- folded|bound|mixed|interleaved N`
//!
//! `folded` is serve-bench's reference: adapter `a0` folded into the weights
//! (Inference export, LoRA folding on), the same batch.
//!
//! Use `--toggle-collect=*serve_profile::run_loop*` (callgrind) to count the
//! loop only, and `CRANELORA_PROFILE_THREADS=1` to keep the kernels' pool
//! on the calling thread (callgrind's toggle counts that thread only). The
//! adapters' weights are random (as in serve-bench); only the shapes matter.

use anyhow::{bail, Context, Result};
use cranelora::core::export::{export_model, input_specs, input_values, ExportMode, ExportOptions};
use cranelora::core::layers::Sequential;
use cranelora::core::lora::{LoraAdapter, LoraConfig};
use cranelora::core::{Input, Layer, Rng, Tensor};
use cranelora::graph::TensorData;
use cranelora::jit::{compile, Bindings, JitOptions};
use cranelora::serving::{adapter_of, compile_server, ServingConfig};
use cranelora::workloads;

const ADAPTERS: usize = 8;
const RANK: usize = 16;
const BATCH: usize = 64;

/// W1's base with a fresh rank-16 adapter from `seed` (serve-bench's model).
fn model(seed: u64) -> Result<Sequential<f32>> {
    let (w1, _) = workloads::w1::<f32>()?;
    let mut rng = Rng::new(seed);
    let mut m = Sequential::new();
    for k in 0..4 {
        let path = format!("fc{k}");
        let adapter = w1.child(&path)?.as_lora_adapter().context("W1 layers")?;
        let cfg = LoraConfig::new(RANK).with_alpha(2.0 * RANK as f64);
        let mut a = LoraAdapter::new(adapter.base_layer().clone_box(), cfg)?;
        let l = a.lora_layer_mut();
        let std_a = 1.0 / 32.0;
        l.a_mut()
            .set_value(Tensor::random_normal(&[1024, RANK], 0.0, std_a, &mut rng))?;
        l.b_mut()
            .set_value(Tensor::random_normal(&[RANK, 1024], 0.0, 0.25, &mut rng))?;
        m.push(&path, a)?;
    }
    m.set_training(false);
    Ok(m)
}

#[inline(never)]
fn run_loop(call: &mut dyn FnMut() -> Result<()>, n: usize) -> Result<()> {
    for _ in 0..n {
        call()?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, n] = args.as_slice() else {
        bail!("usage: serve_profile folded|bound|mixed|interleaved N");
    };
    let n: usize = n.parse().context("N")?;
    if let Ok(t) = std::env::var("CRANELORA_PROFILE_THREADS") {
        cranelora::kernels::pool::set_threads(t.parse().context("CRANELORA_PROFILE_THREADS")?);
    }
    let models: Vec<Sequential<f32>> = (0..ADAPTERS)
        .map(|i| model(100 + i as u64))
        .collect::<Result<_>>()?;
    let x = Tensor::<f32>::random_normal(&[BATCH, 1024], 0.0, 1.0, &mut Rng::new(7));
    let xs: Vec<TensorData> = input_values(&[Input::Float(&x)]);
    let mut cfg = ServingConfig::new(RANK);
    cfg.mixed_capacity = ADAPTERS;
    let srv = compile_server(&models[0], &input_specs(&[Input::Float(&x)]), &cfg)?;
    let names: Vec<String> = (0..ADAPTERS).map(|i| format!("a{i}")).collect();
    for (name, m) in names.iter().zip(&models) {
        srv.bind_adapter(name, &adapter_of(m)?)?;
    }
    srv.set_active(Some("a0"))?;
    let blocked = match mode.as_str() {
        "folded" => {
            let spec = input_specs(&[Input::Float(&x)]);
            let g = export_model(
                &models[0],
                &spec,
                &ExportOptions::new(ExportMode::Inference),
            )?;
            let f = compile(&g, &JitOptions::default())?;
            let mut y = f.run(&xs, &Bindings::new())?;
            return run_loop(&mut || Ok(f.run_into(&xs, &Bindings::new(), &mut y)?), n);
        }
        "bound" => {
            let mut y = srv.run(&xs)?;
            return run_loop(&mut || Ok(srv.run_into(&xs, &mut y)?), n);
        }
        "mixed" => true,
        "interleaved" => false,
        other => bail!("unknown mode `{other}`"),
    };
    let rows: Vec<Option<&str>> = (0..BATCH)
        .map(|r| {
            let a = if blocked {
                r * ADAPTERS / BATCH
            } else {
                r % ADAPTERS
            };
            Some(names[a].as_str())
        })
        .collect();
    let mut y = srv.run_batch_named(&xs, &rows)?;
    run_loop(&mut || Ok(srv.run_batch_named_into(&xs, &rows, &mut y)?), n)
}
