//! GEMM epilogues (crates/jit/src/lower/epilogue.rs): a loop group
//! `act(x·W + b) (+ r)` runs inside the product's helper call. Checked
//! against the same graph compiled without fusion (node by node) and the
//! interpreter, f32 and f64, packed (constant) and unpacked weights, sizes
//! across the kernels' blocks and threading threshold; and that other
//! groups stay loops.

use crate::common;

use common::{apply, assert_same, data, Act, ACTS};
use cranelora_graph::{interpret, DType, Graph, TensorData};
use cranelora_jit::{compile, Bindings, JitOptions};

struct Case {
    m: usize,
    k: usize,
    n: usize,
    d: DType,
    act: Act,
    residual: bool,
    constant_w: bool,
}

/// `act(x·W + b) (+ r)`; inputs x, [W], b, [r].
fn build(c: &Case) -> (Graph, Vec<TensorData>) {
    let mut g = Graph::new();
    let mut ins = vec![data(&[c.m, c.k], c.d, 1, false)];
    let x = g.input("x", vec![c.m, c.k], c.d);
    let w_data = data(&[c.k, c.n], c.d, 2, false);
    let w = if c.constant_w {
        g.constant(w_data).expect("W")
    } else {
        ins.push(w_data);
        g.input("w", vec![c.k, c.n], c.d)
    };
    let b = g.input("b", vec![c.n], c.d);
    ins.push(data(&[c.n], c.d, 3, false));
    let mm = g.matmul(x, w).expect("x·W");
    let z = g.add(mm, b).expect("+b");
    let mut y = apply(&mut g, c.act, z);
    if c.residual {
        let r = g.input("r", vec![c.m, c.n], c.d);
        ins.push(data(&[c.m, c.n], c.d, 4, false));
        y = g.add(y, r).expect("+r");
    }
    g.set_outputs(&[y]).expect("y");
    (g, ins)
}

/// Every product through the GEMM helper (small ones would be inline).
fn gemm() -> JitOptions {
    JitOptions::default().with_inline_matmul_macs(0)
}

fn tol(d: DType) -> f64 {
    match d {
        DType::F32 => 2e-5,
        _ => 1e-12,
    }
}

#[test]
fn epilogues_match_unfused_code_and_the_interpreter() {
    let shapes = [(1, 3, 5), (7, 33, 9), (64, 256, 130)];
    for d in [DType::F32, DType::F64] {
        for (m, k, n) in shapes {
            for act in ACTS {
                for residual in [false, true] {
                    for constant_w in [true, false] {
                        let c = Case {
                            m,
                            k,
                            n,
                            d,
                            act,
                            residual,
                            constant_w,
                        };
                        let (g, ins) = build(&c);
                        let fused = compile(&g, &gemm()).expect("compiles");
                        let plain = gemm().with_fusion(false);
                        let unfused = compile(&g, &plain).expect("compiles");
                        // A bias add alone is an epilogue too (a group of
                        // one node reading its product).
                        let what = format!("{d} {m}x{k}x{n} {act:?} residual {residual}");
                        assert_eq!(fused.report().matmul_epilogues, 1, "{what}");
                        let a = fused.run(&ins, &Bindings::new()).expect("runs");
                        let b = unfused.run(&ins, &Bindings::new()).expect("runs");
                        let e = interpret(&g, &ins, &Default::default()).expect("interp");
                        assert_same(&a[0], &b[0], tol(d), tol(d));
                        assert_same(&a[0], &e[0], tol(d), tol(d));
                    }
                }
            }
        }
    }
}

#[test]
fn the_epilogue_group_needs_no_buffer_for_the_product() {
    let c = Case {
        m: 16,
        k: 8,
        n: 32,
        d: DType::F32,
        act: Act::GeluTanh,
        residual: false,
        constant_w: true,
    };
    let (g, _) = build(&c);
    let fused = compile(&g, &gemm()).expect("compiles");
    // x·W, x·W + b and the activation all live in the output buffer.
    assert!(
        fused.report().memory.slots.is_empty(),
        "{:?}",
        fused.report().memory.slots
    );
}

#[test]
fn other_groups_after_a_product_stay_loops() {
    for d in [DType::F32, DType::F64] {
        // gelu(x·W·2 + b): the scale is not an epilogue step. The second
        // chain's product is the first one after CSE (two readers), and its
        // bias add is also an output: neither is an epilogue.
        let mut g = Graph::new();
        let x = g.input("x", vec![5, 7], d);
        let w = g.input("w", vec![7, 6], d);
        let b = g.input("b", vec![6], d);
        let mm = g.matmul(x, w).expect("x·W");
        let s = g.scale(mm, 2.0).expect("·2");
        let z = g.add(s, b).expect("+b");
        let y = g.gelu(z).expect("gelu");
        let mm2 = g.matmul(x, w).expect("x·W");
        let z2 = g.add(mm2, b).expect("+b");
        let y2 = g.gelu(z2).expect("gelu");
        g.set_outputs(&[y, y2, z2]).expect("outputs");
        let ins = [
            data(&[5, 7], d, 1, false),
            data(&[7, 6], d, 2, false),
            data(&[6], d, 3, false),
        ];
        let c = compile(&g, &JitOptions::default().with_lora_fold(false)).expect("compiles");
        assert_eq!(c.report().matmul_epilogues, 0);
        let a = c.run(&ins, &Bindings::new()).expect("runs");
        let e = interpret(&g, &ins, &Default::default()).expect("interp");
        for (a, e) in a.iter().zip(&e) {
            assert_same(a, e, tol(d), tol(d));
        }
    }
}
