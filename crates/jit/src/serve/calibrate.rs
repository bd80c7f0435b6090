//! Measuring the cost model's `K` ([`ServingLoad::move_cost`](super::ServingLoad)):
//! what packing one weight element for the GEMM costs, in multiply-adds of
//! the low-rank branch, on this machine.
//!
//! Three functions of one shape are compiled and timed in the same run,
//! interleaved (so a loaded machine slows all three alike), each call into
//! preallocated outputs:
//!
//! - `x·W`, W a Constant (prepacked at compile time);
//! - `x·W`, W a Parameter (packed on every call — a merged layer);
//! - `(x·A)·B`, A and B Parameters (the branch of an unmerged layer).
//!
//! With the minimum time of each over the repetitions, packing costs
//! `(t_param − t_const) / (i·o)` per element and the branch
//! `t_branch / (b·r·(i + o))` per multiply-add; `K` is their ratio.

use crate::{compile, Bindings, JitOptions, Result};
use cranelora_graph::{DType, Graph, TensorData};
use std::time::{Duration, Instant};

/// One measurement of `K` (module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoveCost {
    /// Nanoseconds to pack one weight element.
    pub pack_ns: f64,
    /// Nanoseconds per multiply-add of the branch.
    pub madd_ns: f64,
    /// `pack_ns / madd_ns`: the cost model's `K`.
    pub move_cost: f64,
}

/// The shapes and repetitions of a [`measure_move_cost`] run.
#[derive(Clone, Copy, Debug)]
pub struct MoveCostShape {
    /// The float dtype.
    pub dtype: DType,
    /// Rows of W and A.
    pub fan_in: usize,
    /// Columns of W and B.
    pub fan_out: usize,
    /// Columns of A.
    pub rank: usize,
    /// Rows of x.
    pub rows: usize,
    /// Timed calls of each function (the minimum counts).
    pub reps: usize,
}

fn values(shape: &[usize], dtype: DType, seed: usize) -> TensorData {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|k| (((k * 7919 + seed * 104_729) % 2003) as f64 / 2003.0) - 0.5)
        .collect();
    super::adapters::tensor(shape, v, dtype)
}

/// The three graphs of the module docs.
fn graphs(s: &MoveCostShape) -> Result<[Graph; 3]> {
    let (i, o, r, b, d) = (s.fan_in, s.fan_out, s.rank, s.rows, s.dtype);
    let mut constant = Graph::new();
    let x = constant.input("x", [b, i], d);
    let w = constant.constant(values(&[i, o], d, 1))?;
    let y = constant.matmul(x, w)?;
    constant.set_outputs(&[y])?;
    let mut param = Graph::new();
    let x = param.input("x", [b, i], d);
    let w = param.parameter("w", [i, o], d);
    let y = param.matmul(x, w)?;
    param.set_outputs(&[y])?;
    let mut branch = Graph::new();
    let x = branch.input("x", [b, i], d);
    let a = branch.parameter("a", [i, r], d);
    let bb = branch.parameter("b", [r, o], d);
    let xa = branch.matmul(x, a)?;
    let y = branch.matmul(xa, bb)?;
    branch.set_outputs(&[y])?;
    Ok([constant, param, branch])
}

/// Measures `K` on this machine (module docs).
///
/// # Errors
/// Compile or run errors (none for non-zero shapes).
pub fn measure_move_cost(s: &MoveCostShape) -> Result<MoveCost> {
    let (i, o, r, b, d) = (s.fan_in, s.fan_out, s.rank, s.rows, s.dtype);
    let opts = JitOptions::default();
    let compiled = graphs(s)?
        .iter()
        .map(|g| compile(g, &opts))
        .collect::<Result<Vec<_>>>()?;
    let mut bindings = Bindings::new();
    bindings.insert("w", values(&[i, o], d, 1))?;
    bindings.insert("a", values(&[i, r], d, 2))?;
    bindings.insert("b", values(&[r, o], d, 3))?;
    let x = [values(&[b, i], d, 4)];
    let mut outs = compiled
        .iter()
        .map(|c| c.run(&x, &bindings))
        .collect::<Result<Vec<_>>>()?;
    let mut best = [Duration::MAX; 3];
    for _ in 0..s.reps.max(1) {
        for ((c, out), t) in compiled.iter().zip(&mut outs).zip(&mut best) {
            let start = Instant::now();
            c.run_into(&x, &bindings, out)?;
            *t = (*t).min(start.elapsed());
        }
    }
    let ns = |t: Duration| t.as_secs_f64() * 1e9;
    let pack_ns = (ns(best[1]) - ns(best[0])).max(0.0) / (i * o) as f64;
    let madd_ns = ns(best[2]) / (b * r * (i + o)) as f64;
    Ok(MoveCost {
        pack_ns,
        madd_ns,
        move_cost: pack_ns / madd_ns,
    })
}
