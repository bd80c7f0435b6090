//! Attention blocks (`lower/heads.rs`, `lower/softmax.rs`): head split and
//! merge read and written in place by the products, and the scale → mask
//! select → softmax → row select chain as one row pass. Every graph is
//! checked against the interpreter, with the default passes and with every
//! pass off, in f32 and f64, on odd shapes; the report says the paths were
//! taken.

use crate::common;

use common::{assert_same, check, data};
use cranelora_graph::{interpret, Bindings, DType, Graph, NodeId, ReduceKind, TensorData};
use cranelora_jit::{compile, JitOptions};

/// The default options with every product a GEMM call: these shapes are
/// small enough to be emitted inline (`lower/small_matmul.rs`), and only
/// GEMM calls read or write head transposes in place. (`common::check`
/// runs the defaults, inline products and copied transposes.)
fn gemm_path() -> JitOptions {
    JitOptions::default().with_inline_matmul_macs(0)
}

fn tol(d: DType) -> f64 {
    match d {
        DType::F32 => 1e-5,
        _ => 1e-12,
    }
}

/// A keep mask `[b, s]` (1 = attend) with row `b` hiding its last `b` keys
/// and, when `empty_row`, the last row hiding all of them.
fn keep(b: usize, s: usize, d: DType, empty_row: bool) -> TensorData {
    let v: Vec<f64> = (0..b * s)
        .map(|i| {
            let (row, key) = (i / s, i % s);
            let hidden = key + row >= s || (empty_row && row + 1 == b);
            if hidden {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    match d {
        DType::F32 => TensorData::f32(vec![b, s], v.iter().map(|&x| x as f32).collect()),
        _ => TensorData::f64(vec![b, s], v),
    }
    .expect("sized")
}

/// `[b, s, h·dh]` → heads `[b, h, s, dh]`.
fn heads(g: &mut Graph, t: NodeId, (b, s, h, dh): (usize, usize, usize, usize)) -> NodeId {
    let split = g.reshape(t, vec![b, s, h, dh]).expect("split");
    g.transpose(split, &[0, 2, 1, 3]).expect("heads")
}

/// Self-attention over projections q, k, v `[b, s, h·dh]` as crates/core
/// exports it: optional padding mask `[b, s]`.
fn attention(dims: (usize, usize, usize, usize), d: DType, mask: bool) -> (Graph, Vec<TensorData>) {
    let (b, s, h, dh) = dims;
    let mut g = Graph::new();
    let mut ins = Vec::new();
    let mut proj = |g: &mut Graph, name: &str, seed: u64| {
        ins.push(data(&[b, s, h * dh], d, seed, false));
        g.input(name, vec![b, s, h * dh], d)
    };
    let (q, k, v) = (
        proj(&mut g, "q", 1),
        proj(&mut g, "k", 2),
        proj(&mut g, "v", 3),
    );
    let (q, k, v) = (
        heads(&mut g, q, dims),
        heads(&mut g, k, dims),
        heads(&mut g, v, dims),
    );
    let kt = g.transpose(k, &[0, 1, 3, 2]).expect("kᵀ");
    let scores = g.matmul(q, kt).expect("q·kᵀ");
    let scores = g.scale(scores, 1.0 / (dh as f64).sqrt()).expect("scale");
    let probs = if mask {
        let m = g.input("mask", vec![b, s], d);
        ins.push(keep(b, s, d, true));
        let m = g.reshape(m, vec![b, 1, 1, s]).expect("mask");
        let lowest = g.scalar(-1e30, d).expect("fill");
        let masked = g.select(m, scores, lowest).expect("masked");
        let p = g.softmax(masked, 3).expect("softmax");
        let any = g.reduce(m, ReduceKind::Max, &[3], true).expect("any");
        let zero = g.scalar(0.0, d).expect("zero");
        g.select(any, p, zero).expect("probs")
    } else {
        g.softmax(scores, 3).expect("softmax")
    };
    let ctx = g.matmul(probs, v).expect("p·v");
    let ctx = g.transpose(ctx, &[0, 2, 1, 3]).expect("merge");
    let out = g.reshape(ctx, vec![b, s, h * dh]).expect("merged");
    g.set_outputs(&[out]).expect("out");
    (g, ins)
}

#[test]
fn attention_blocks_match_the_interpreter() {
    let shapes = [(1, 1, 1, 1), (2, 5, 3, 7), (3, 17, 2, 8), (2, 33, 4, 16)];
    for d in [DType::F32, DType::F64] {
        for dims in shapes {
            for mask in [false, true] {
                let (g, ins) = attention(dims, d, mask);
                check(&g, &ins, &Bindings::new(), tol(d));
                let c = compile(&g, &gemm_path()).expect("compiles");
                let r = c.report();
                // q, k (twice), v read in place; the context written in place
                // (with size-1 dims, simplification may turn a transpose into
                // a reshape and a one-key softmax into a constant).
                let ones = [dims.0, dims.1, dims.2, dims.3].contains(&1);
                if !ones {
                    // (4 when the passes compose the two transposes of K into one)
                    assert!(r.head_transposes >= 4, "{d} {dims:?} mask {mask}");
                    assert_eq!(r.fused_softmaxes, 1, "{d} {dims:?} mask {mask}");
                    // The scores are read by the softmax only: overwritten.
                    assert_eq!(r.softmaxes_in_place, 1, "{d} {dims:?} mask {mask}");
                }
                // The same operations as the copies and separate passes: bit for bit.
                let off = gemm_path().with_attention(false);
                let plain = compile(&g, &off).expect("compiles");
                assert_eq!(
                    plain.report().head_transposes + plain.report().fused_softmaxes,
                    0
                );
                let jb = cranelora_jit::Bindings::new();
                let (a, b) = (
                    c.run(&ins, &jb).expect("runs"),
                    plain.run(&ins, &jb).expect("runs"),
                );
                assert_same(&a[0], &b[0], 0.0, 0.0);
            }
        }
    }
}

#[test]
fn fully_masked_rows_are_zero_and_others_sum_to_one() {
    let (b, s, h, dh) = (3, 6, 2, 4);
    let (g, ins) = attention((b, s, h, dh), DType::F64, true);
    // Read the probabilities: P·V with V = ones gives each row's sum.
    let mut ins = ins;
    ins[2] = TensorData::f64(vec![b, s, h * dh], vec![1.0; b * s * h * dh]).expect("ones");
    let c = compile(&g, &gemm_path()).expect("compiles");
    let out = c.run(&ins, &cranelora_jit::Bindings::new()).expect("runs");
    for (i, v) in out[0].to_f64_vec().iter().enumerate() {
        let want = if i / (s * h * dh) + 1 == b { 0.0 } else { 1.0 };
        assert!((v - want).abs() < 1e-12, "element {i}: {v} vs {want}");
    }
}

/// `Transpose(x, perm)·w` and `Transpose(x·w, perm)` for permutations of a
/// rank-4 `x`; each transpose is read or written in place when the product
/// allows it, and copied otherwise.
#[test]
fn transposed_operands_and_outputs_match_the_interpreter() {
    let perms: [[usize; 4]; 5] = [
        [0, 2, 1, 3],
        [2, 0, 1, 3],
        [1, 0, 3, 2],
        [3, 1, 2, 0],
        [0, 1, 3, 2],
    ];
    let dims = [2, 3, 5, 4];
    for d in [DType::F32, DType::F64] {
        for perm in perms {
            let mut g = Graph::new();
            let x = g.input("x", dims.to_vec(), d);
            let t = g.transpose(x, &perm).expect("t");
            let td: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
            let w = g.input("w", vec![td[3], 6], d);
            let y = g.matmul(t, w).expect("t·w");
            // x·W2, then transposed; W2 is broadcast over the batch dims.
            let w2 = g.input("w2", vec![dims[3], 3], d);
            let z = g.matmul(x, w2).expect("x·w2");
            let zt = g.transpose(z, &perm).expect("zᵀ");
            g.set_outputs(&[y, zt]).expect("outs");
            let ins = [
                data(&dims, d, 5, false),
                data(&[td[3], 6], d, 6, false),
                data(&[dims[3], 3], d, 7, false),
            ];
            check(&g, &ins, &Bindings::new(), tol(d));
            let c = compile(&g, &gemm_path()).expect("compiles");
            let keeps_rows = perm[3] == 3;
            let expected = 1 + usize::from(keeps_rows);
            assert_eq!(c.report().head_transposes, expected, "{perm:?}");
        }
    }
}

/// A transpose that is also a graph output, or read by something other
/// than a product, is copied (and still right).
#[test]
fn transposes_with_other_readers_are_copied() {
    let d = DType::F32;
    let mut g = Graph::new();
    let x = g.input("x", vec![2, 4, 3, 5], d);
    let t = g.transpose(x, &[0, 2, 1, 3]).expect("t");
    let w = g.input("w", vec![5, 2], d);
    let y = g.matmul(t, w).expect("t·w");
    let e = g.exp(t).expect("exp");
    let u = g.transpose(x, &[0, 2, 1, 3]).expect("u");
    let y2 = g.matmul(u, w).expect("u·w");
    g.set_outputs(&[y, e, y2, u]).expect("outs");
    let ins = [data(&[2, 4, 3, 5], d, 8, false), data(&[5, 2], d, 9, false)];
    let expected = interpret(&g, &ins, &Bindings::new()).expect("interp");
    let mut o = gemm_path();
    o.passes.cse = false; // keep t and u apart
    let c = compile(&g, &o).expect("compiles");
    assert_eq!(c.report().head_transposes, 0);
    let out = c.run(&ins, &cranelora_jit::Bindings::new()).expect("runs");
    for (a, e) in out.iter().zip(&expected) {
        assert_same(a, e, tol(d), tol(d));
    }
}

/// The softmax row pass with a scale only, a scaled mask, a scaled mask with
/// a non-scalar fill, a select after it alone, and a mask with no scale; every pattern against the
/// interpreter, NaN and infinities in the scores included.
#[test]
fn softmax_patterns_match_the_interpreter() {
    let dims = [2, 3, 7];
    for d in [DType::F32, DType::F64] {
        // Scores from an input (a buffer of their own) or computed (an
        // arena buffer the softmax overwrites in place).
        for (case, computed) in (0..5).flat_map(|c| [(c, false), (c, true)]) {
            let mut g = Graph::new();
            let x = g.input("x", dims.to_vec(), d);
            let x = if computed { g.exp(x).expect("exp") } else { x };
            let cond = g.input("cond", vec![2, 1, 7], d);
            let fill = g.input("fill", vec![3, 1], d);
            let mut ins = vec![
                data(&dims, d, 10, true),
                data(&[2, 1, 7], d, 11, true),
                data(&[3, 1], d, 12, false),
            ];
            let s = match case {
                0 => g.scale(x, 0.37).expect("scale"),
                1 | 2 => {
                    let filler = if case == 1 {
                        g.scalar(-5.0, d).expect("fill")
                    } else {
                        fill
                    };
                    let sc = g.scale(x, 2.0).expect("scale");
                    g.select(cond, sc, filler).expect("mask")
                }
                3 => x,
                _ => {
                    let filler = g.scalar(-7.0, d).expect("fill");
                    g.select(cond, x, filler).expect("mask")
                }
            };
            let p = g.softmax(s, 2).expect("softmax");
            let y = if case == 2 || case == 3 {
                let rows = g.input("rows", vec![2, 3, 1], d);
                ins.push(data(&[2, 3, 1], d, 13, true));
                g.select(rows, p, fill).expect("post")
            } else {
                p
            };
            // Read by another node (not a graph output): an arena buffer.
            let y = if computed { g.neg(y).expect("neg") } else { y };
            g.set_outputs(&[y]).expect("y");
            check(&g, &ins, &Bindings::new(), tol(d));
            let c = compile(&g, &gemm_path()).expect("compiles");
            assert_eq!(c.report().fused_softmaxes, 1, "{d} case {case}");
            let in_place = usize::from(computed);
            assert_eq!(c.report().softmaxes_in_place, in_place, "{d} case {case}");
        }
    }
}
