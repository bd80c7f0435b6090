//! Mixed-adapter LoRA terms in the base product's GEMM epilogue
//! (crates/jit/src/lower/epilogue.rs): the graph the serving rewrite
//! builds for a mixed batch,
//!
//! ```text
//! act((x·W + b) + gather_matmul(gather_matmul(x, A_stack, ids), B_stack, ids)) (+ r)
//! ```
//!
//! compiles to one GEMM call whose epilogue adds each row's own adapter
//! term (`EpilogueSpec::lora_stack`). Checked against the interpreter (and
//! the unfused compile) in f32 and f64 for sorted runs of several lengths,
//! scattered ids, rows without adapter (id −1), fewer rows than the
//! microkernel pass needs, sizes the GEMM threads, and bad ids as errors.

use crate::common;

use common::{apply, check, data, no_passes, Act};
use cranelora_graph::{interpret, Bindings, DType, Graph, TensorData};
use cranelora_jit::{compile, JitOptions};

/// Rows, depth, columns, rank, stacked adapters.
type Dims = (usize, usize, usize, usize, usize);

/// The mixed LoRA layer; `xa_input` makes `XA` an Input (so the only
/// GatherMatMul is the epilogue's, whose ids nothing else checks).
fn layer(
    d: DType,
    (rows, k, n, r, stack): Dims,
    act: Act,
    residual: bool,
    xa_input: bool,
) -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [rows, k], d);
    let ids = g.input("ids", [rows], DType::I64);
    let w = g.constant(scaled(data(&[k, n], d, 11, false))).expect("W");
    let bias = g.constant(data(&[n], d, 12, false)).expect("b");
    let b_stack = g.parameter("b_stack", [stack, r, n], d);
    let xa = if xa_input {
        g.input("xa", [rows, r], d)
    } else {
        let a_stack = g.parameter("a_stack", [stack, k, r], d);
        g.gather_matmul(x, a_stack, ids).expect("x·A")
    };
    let xab = g.gather_matmul(xa, b_stack, ids).expect("xa·B");
    let mm = g.matmul(x, w).expect("x·W");
    let base = g.add(mm, bias).expect("bias");
    let sum = g.add(base, xab).expect("sum");
    let mut out = apply(&mut g, act, sum);
    if residual {
        let res = g.input("res", [rows, n], d);
        out = g.add(out, res).expect("residual");
    }
    g.set_outputs(&[out]).expect("output");
    g
}

/// Values scaled down so the sums stay near 1 (GELU's interesting range).
fn scaled(t: TensorData) -> TensorData {
    let v: Vec<f64> = t.to_f64_vec().iter().map(|x| 0.1 * x).collect();
    let shape = t.shape().dims().to_vec();
    match t.dtype() {
        DType::F32 => TensorData::f32(shape, v.iter().map(|&x| x as f32).collect()),
        _ => TensorData::f64(shape, v),
    }
    .expect("sized")
}

/// The inputs of [`layer`] in its order (x, ids, then XA and the residual
/// when it has them) and the adapters' stacks.
fn inputs(
    d: DType,
    (rows, k, n, r, stack): Dims,
    ids: &[i64],
    (xa_input, residual): (bool, bool),
) -> (Vec<TensorData>, Bindings) {
    let mut values = vec![
        data(&[rows, k], d, 1, false),
        TensorData::i64([rows], ids.to_vec()).expect("ids"),
    ];
    if xa_input {
        values.push(data(&[rows, r], d, 4, false));
    }
    if residual {
        values.push(data(&[rows, n], d, 5, false));
    }
    let mut b = Bindings::new();
    b.insert("b_stack".into(), data(&[stack, r, n], d, 2, false));
    b.insert("a_stack".into(), scaled(data(&[stack, k, r], d, 3, false)));
    (values, b)
}

/// Ids for `rows` rows: runs of `run` rows per adapter in order, the third
/// run on no adapter; `run = 0`: scattered (a fixed pseudo-random pattern).
fn ids(rows: usize, stack: usize, run: usize) -> Vec<i64> {
    (0..rows)
        .map(|i| match run {
            0 => ((i * 7 + 3) % (stack + 1)) as i64 - 1,
            _ if i / run == 2 => -1,
            _ => ((i / run) % stack) as i64,
        })
        .collect()
}

#[test]
fn mixed_lora_terms_fuse_into_the_gemm_and_match_the_interpreter() {
    let cases: [(Dims, usize, Act, bool); 6] = [
        ((64, 256, 128, 8, 8), 8, Act::GeluTanh, false), // serve-bench's layout, threaded
        ((64, 256, 128, 8, 4), 0, Act::GeluTanh, true),  // scattered: the row step
        ((40, 48, 70, 4, 3), 13, Act::Relu, false),      // runs over an edge micro-panel
        ((30, 20, 33, 2, 2), 3, Act::None, true),        // runs shorter than the pass
        ((3, 64, 48, 2, 2), 1, Act::Silu, false),        // too few rows for the pass
        ((24, 32, 40, 4, 3), 100, Act::Gelu, false),     // one run: one adapter
    ];
    for d in [DType::F32, DType::F64] {
        let tol = if d == DType::F32 { 2e-5 } else { 1e-12 };
        for (dims, run, act, residual) in cases {
            let g = layer(d, dims, act, residual, false);
            let id = ids(dims.0, dims.4, run);
            let (values, b) = inputs(d, dims, &id, (false, residual));
            let fused = compile(&g, &JitOptions::default()).expect("compiles");
            assert_eq!(fused.report().matmul_epilogues, 1, "{dims:?} {d:?}");
            check(&g, &values, &b, tol);
        }
    }
}

#[test]
fn rows_without_adapter_get_the_base_layer_only() {
    let dims = (16, 24, 40, 4, 2);
    let d = DType::F64;
    let g = layer(d, dims, Act::GeluTanh, false, false);
    let c = compile(&g, &JitOptions::default()).expect("compiles");
    let (values, b) = inputs(d, dims, &[-1; 16], (false, false));
    let jb = cranelora_jit::Bindings::from_map(&b).expect("bindings");
    let got = c.run(&values, &jb).expect("runs");
    // The same rows through the layer on adapter 0 with a zero B.
    let mut zero = b.clone();
    zero.insert(
        "b_stack".into(),
        TensorData::full(&[2, 4, 40].into(), 0.0, d),
    );
    let on_zero = [
        values[0].clone(),
        TensorData::i64([16], vec![0; 16]).expect("ids"),
    ];
    let want = interpret(&g, &on_zero, &zero).expect("interp");
    common::assert_same(&got[0], &want[0], 1e-12, 1e-14);
}

#[test]
fn bad_ids_reaching_the_epilogue_are_errors() {
    let dims = (8, 16, 32, 2, 2);
    let d = DType::F32;
    for xa_input in [false, true] {
        let g = layer(d, dims, Act::Relu, false, xa_input);
        for options in [JitOptions::default(), no_passes()] {
            let c = compile(&g, &options).expect("compiles");
            for bad in [2, -2] {
                let mut id = ids(8, 2, 4);
                id[5] = bad;
                let (values, b) = inputs(d, dims, &id, (xa_input, false));
                let jb = cranelora_jit::Bindings::from_map(&b).expect("bindings");
                assert!(
                    c.run(&values, &jb).is_err(),
                    "id {bad}, XA input {xa_input}"
                );
                assert!(interpret(&g, &values, &b).is_err());
            }
        }
    }
}
