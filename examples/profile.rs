//! A driver for instruction-count profiling (`valgrind --tool=callgrind`):
//! builds one workload in one mode, then runs it `N` times.
//!
//! `cargo run --release --example profile -- W3 jit 3`
//!
//! Wall-clock timings on a shared machine are noisy; instruction counts of
//! this driver under callgrind are not. Builds and the first (checked) call
//! are outside the timed loop; use `--toggle-collect=*profile::run_loop*`
//! (callgrind) to count the loop only. `CRANELORA_PROFILE_THREADS=1` caps
//! the kernels' pool (callgrind's `--toggle-collect` only counts the calling
//! thread, so complete counts need one thread). W4 runs the training step
//! (modes eager, interp, jit). `minilm=DIR` as the workload runs the
//! BERT-family model in `DIR` on the `minilm` bench's batch (8 × 128,
//! padded rows) through the embedder (modes `eager` and `jit`).

use anyhow::{bail, Context, Result};
use cranelora::bench::{build_forward, minilm, train_runner, Mode, Runner};
use cranelora::embed::{Embedder, Engine};
use cranelora::workloads;
use cranelora_core::models::BertModel;

#[inline(never)]
fn run_loop(call: &mut Runner<'_>, n: usize) -> Result<()> {
    for _ in 0..n {
        call()?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [w, mode, n] = args.as_slice() else {
        bail!(
            "usage: profile W1|W2|W3|W4 eager|interp|jit|jit-bound|jit-folded|merged-eager|rustc-baseline N"
        );
    };
    let modes = [
        Mode::Eager,
        Mode::Interp,
        Mode::Jit,
        Mode::JitBound,
        Mode::JitFolded,
        Mode::MergedEager,
        Mode::RustcBaseline,
    ];
    let mode = modes
        .into_iter()
        .find(|m| m.name() == mode)
        .with_context(|| format!("unknown mode `{mode}`"))?;
    let n: usize = n.parse().context("N")?;
    if let Ok(t) = std::env::var("CRANELORA_PROFILE_THREADS") {
        cranelora::kernels::pool::set_threads(t.parse().context("CRANELORA_PROFILE_THREADS")?);
    }
    if w == "W4" {
        let (model, x, y) = workloads::w4::<f32>()?;
        let mut call = train_runner(mode, &model, &x, &y)?;
        return timed(w, mode, &mut call, n);
    }
    if let Some(dir) = w.strip_prefix("minilm=") {
        return profile_minilm(dir, mode, n);
    }
    let (model, x) = match w.as_str() {
        "W1" => workloads::w1::<f32>()?,
        "W2" => workloads::w2::<f32>()?,
        "W3" => workloads::w3::<f32>()?,
        _ => bail!("workload `{w}`: W1, W2, W3 or W4"),
    };
    let (_, mut call) = build_forward(mode, &model, &x)?;
    timed(w, mode, &mut call, n)
}

/// Runs `call` `n` times inside [`run_loop`] and prints the time per call.
fn timed(w: &str, mode: Mode, call: &mut Runner<'_>, n: usize) -> Result<()> {
    let (start, cpu) = (std::time::Instant::now(), thread_cpu_ns());
    run_loop(call, n)?;
    let wall = start.elapsed() / n.max(1) as u32;
    let cpu = match (cpu, thread_cpu_ns()) {
        (Some(a), Some(b)) => format!(
            ", calling thread on CPU {:.1} µs",
            (b - a) as f64 / 1e3 / n.max(1) as f64
        ),
        _ => String::new(),
    };
    println!("{w} {}: {wall:?} per call{cpu}", mode.name());
    Ok(())
}

/// The `minilm` bench's batch through the embedder, `n` times.
fn profile_minilm(dir: &str, mode: Mode, n: usize) -> Result<()> {
    let model = BertModel::<f32>::from_pretrained(std::path::Path::new(dir))?;
    let batch = minilm::batch(model.config().vocab_size)?;
    let engine = match mode {
        Mode::Eager => Engine::Eager,
        Mode::Jit => Engine::Jit { fold_lora: true },
        _ => bail!("minilm: modes eager and jit"),
    };
    let mut e = Embedder::new(model, engine)?;
    e.embed(&batch)?;
    let mut call: Runner<'_> = Box::new(|| e.embed(&batch).map(|_| ()));
    timed("minilm", mode, &mut call, n)
}

/// Nanoseconds the calling thread has run on a CPU (Linux schedstat): on a
/// loaded machine, with `CRANELORA_PROFILE_THREADS=1`, a steadier measure
/// than wall time, as it leaves out the time other processes held the core.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}
