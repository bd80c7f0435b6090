//! A driver for instruction-count profiling (`valgrind --tool=callgrind`):
//! builds one workload in one mode, then runs it `N` times.
//!
//! `cargo run --release --example profile -- W3 jit 3`
//!
//! Wall-clock timings on a shared machine are noisy; instruction counts of
//! this driver under callgrind are not. Builds and the first (checked) call
//! are outside the timed loop; use `--toggle-collect=*profile::run_loop*`
//! (callgrind) to count the loop only. `CRANELORA_THREADS=1` runs the
//! kernels' pool on the calling thread alone, so that count is complete
//! (callgrind's toggle counts the calling thread only).

use anyhow::{bail, Context, Result};
use cranelora::bench::{build_forward, Mode, Runner};
use cranelora::workloads;

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
        bail!("usage: profile W1|W2|W3 eager|interp|jit|jit-folded|merged-eager|rustc-baseline N");
    };
    let modes = [
        Mode::Eager,
        Mode::Interp,
        Mode::Jit,
        Mode::JitFolded,
        Mode::MergedEager,
        Mode::RustcBaseline,
    ];
    let mode = modes
        .into_iter()
        .find(|m| m.name() == mode)
        .with_context(|| format!("unknown mode `{mode}`"))?;
    let n: usize = n.parse().context("N")?;
    if let Ok(t) = std::env::var("CRANELORA_THREADS") {
        let t: usize = t.parse().context("CRANELORA_THREADS")?;
        cranelora::kernels::pool::set_threads(t);
    }
    let (model, x) = match w.as_str() {
        "W1" => workloads::w1::<f32>()?,
        "W2" => workloads::w2::<f32>()?,
        "W3" => workloads::w3::<f32>()?,
        _ => bail!("workload `{w}`: W1, W2 or W3"),
    };
    let (_, mut call) = build_forward(mode, &model, &x)?;
    let start = std::time::Instant::now();
    run_loop(&mut call, n)?;
    println!(
        "{w} {}: {:?} per call",
        mode.name(),
        start.elapsed() / n as u32
    );
    Ok(())
}
