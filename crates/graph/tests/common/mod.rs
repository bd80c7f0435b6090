//! Helpers shared by the integration tests: one-op graphs and value makers.
#![allow(dead_code)]

use cranelora_graph::{interpret, Bindings, DType, Graph, NodeId, Result, TensorData, Value};
use cranelora_kernels::testing::assert_close;

/// An f64 value of `shape`.
pub fn f64s(shape: &[usize], data: &[f64]) -> Value {
    TensorData::f64(shape.to_vec(), data.to_vec()).expect("test data fits its shape")
}

/// An f32 value of `shape`.
pub fn f32s(shape: &[usize], data: &[f32]) -> Value {
    TensorData::f32(shape.to_vec(), data.to_vec()).expect("test data fits its shape")
}

/// An i64 value of `shape`.
pub fn i64s(shape: &[usize], data: &[i64]) -> Value {
    TensorData::i64(shape.to_vec(), data.to_vec()).expect("test data fits its shape")
}

/// `v` converted to `dtype` (floats only, for running one test in f32 and f64).
pub fn as_dtype(v: &Value, dtype: DType) -> Value {
    let data = v.to_f64_vec();
    match dtype {
        DType::F32 => f32s(
            v.shape().dims(),
            &data.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        ),
        DType::F64 => f64s(v.shape().dims(), &data),
        DType::I64 => i64s(
            v.shape().dims(),
            &data.iter().map(|&x| x as i64).collect::<Vec<_>>(),
        ),
    }
}

/// Builds a graph with one Input per value (named `x0`, `x1`, …), lets
/// `build` add the node under test, and runs it.
pub fn try_run(
    inputs: &[Value],
    build: impl FnOnce(&mut Graph, &[NodeId]) -> Result<NodeId>,
) -> Result<Value> {
    let mut g = Graph::new();
    let ids: Vec<NodeId> = inputs
        .iter()
        .enumerate()
        .map(|(i, v)| g.input(&format!("x{i}"), v.shape(), v.dtype()))
        .collect();
    let out = build(&mut g, &ids)?;
    g.set_outputs(&[out])?;
    Ok(interpret(&g, inputs, &Bindings::new())?.remove(0))
}

/// [`try_run`], expecting success.
pub fn run(inputs: &[Value], build: impl FnOnce(&mut Graph, &[NodeId]) -> Result<NodeId>) -> Value {
    try_run(inputs, build).expect("the test graph builds and runs")
}

/// Asserts `actual` has `shape` and is close to `expected` (as f64).
#[track_caller]
pub fn check(actual: &Value, shape: &[usize], expected: &[f64], tol: f64) {
    assert_eq!(actual.shape().dims(), shape, "shape");
    assert_close(&actual.to_f64_vec(), expected, tol, tol);
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        bits as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    /// `n` uniform values in [-1, 1).
    pub fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.unit()).collect()
    }

    /// An f64 value of `shape` with uniform entries.
    pub fn value(&mut self, shape: &[usize]) -> Value {
        f64s(shape, &self.vec(shape.iter().product()))
    }
}

/// ⟨a, b⟩ over all elements.
pub fn dot(a: &Value, b: &Value) -> f64 {
    a.to_f64_vec()
        .iter()
        .zip(b.to_f64_vec())
        .map(|(x, y)| x * y)
        .sum()
}
