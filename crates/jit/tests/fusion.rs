//! Fused loop groups (crates/jit/src/lower/fused.rs): fused vs unfused vs
//! the interpreter on elementwise chains with broadcast operands (per-row
//! bias, scalars), odd sizes, f32 and f64; fewer arena bytes when fused.
//! Also the vector row reductions that fused chains feed (reduce.rs):
//! within their documented reassociation bound.

use crate::common;

use common::{assert_same, data};
use cranelora_graph::{interpret, DType, Graph, NodeId, ReduceKind, TensorData};
use cranelora_jit::{compile, Bindings, CompiledGraph, JitOptions};

const FLOATS: [DType; 2] = [DType::F32, DType::F64];
const SIZES: [usize; 5] = [1, 3, 5, 17, 1023];

fn tol(d: DType) -> f64 {
    match d {
        DType::F32 => 1e-6,
        _ => 1e-14,
    }
}

fn compiled(g: &Graph, fuse: bool) -> CompiledGraph {
    compile(g, &JitOptions::default().with_fusion(fuse)).expect("compiles")
}

/// Runs `g` fused and unfused: both equal bit for bit (the same operations
/// in the same order), and close to the interpreter. Returns the fused
/// and unfused compiled graphs.
#[track_caller]
fn check(g: &Graph, inputs: &[TensorData]) -> (CompiledGraph, CompiledGraph) {
    let expected = interpret(g, inputs, &cranelora_graph::Bindings::new()).expect("interpreter");
    let (fused, unfused) = (compiled(g, true), compiled(g, false));
    let a = fused.run(inputs, &Bindings::new()).expect("runs");
    let b = unfused.run(inputs, &Bindings::new()).expect("runs");
    for ((a, b), e) in a.iter().zip(&b).zip(&expected) {
        let (va, vb) = (a.to_f64_vec(), b.to_f64_vec());
        let same = va
            .iter()
            .zip(&vb)
            .all(|(x, y)| x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan());
        assert!(same, "fused {va:?}\nunfused {vb:?}");
        assert_same(a, e, tol(e.dtype()), tol(e.dtype()) * 1e-3);
    }
    assert_eq!(unfused.report().fused_groups, 0);
    (fused, unfused)
}

/// y = tanh(gelu(x + bias)·s + x), x `[rows, n]`, bias `[n]`, s a scalar input.
fn bias_gelu_chain(rows: usize, n: usize, d: DType) -> (Graph, NodeId) {
    let mut g = Graph::new();
    let x = g.input("x", vec![rows, n], d);
    let b = g.input("b", vec![n], d);
    let s = g.input("s", Vec::<usize>::new(), d);
    let z = g.add(x, b).expect("bias");
    let h = g.gelu(z).expect("gelu");
    let h = g.mul(h, s).expect("scale");
    let r = g.add(h, x).expect("residual");
    let y = g.tanh(r).expect("tanh");
    g.set_outputs(&[y]).expect("node");
    (g, y)
}

#[test]
fn fused_chain_with_broadcast_operands_matches_unfused_and_interp() {
    for d in FLOATS {
        for n in SIZES {
            for rows in [1, 3] {
                let (g, _) = bias_gelu_chain(rows, n, d);
                let ins = [
                    data(&[rows, n], d, n as u64, true),
                    data(&[n], d, 7, true),
                    data(&[], d, 3, false),
                ];
                let (fused, _) = check(&g, &ins);
                assert_eq!(fused.report().fused_groups, 1, "{d} {rows}x{n}");
            }
        }
    }
}

#[test]
fn column_bias_and_every_math_function_fuse() {
    // x [n, 3] + c [n, 1] (a per-row bias: stride 0 along the inner dim),
    // then every emitted function in turn.
    for d in FLOATS {
        for n in SIZES {
            let mut g = Graph::new();
            let x = g.input("x", vec![n, 3], d);
            let c = g.input("c", vec![n, 1], d);
            let mut v = g.add(x, c).expect("add");
            v = g.sigmoid(v).expect("sigmoid");
            v = g.silu(v).expect("silu");
            v = g.gelu_tanh(v).expect("gelu_tanh");
            v = g.gelu_grad(v).expect("gelu_grad");
            v = g.gelu_tanh_grad(v).expect("gelu_tanh_grad");
            v = g.erf(v).expect("erf");
            v = g.exp(v).expect("exp");
            v = g.log(v).expect("log");
            g.set_outputs(&[v]).expect("node");
            let ins = [data(&[n, 3], d, 11, true), data(&[n, 1], d, 12, true)];
            let (fused, _) = check(&g, &ins);
            assert_eq!(fused.report().fused_groups, 1);
        }
    }
}

#[test]
fn comparisons_where_and_casts_fuse_on_the_scalar_path() {
    for d in FLOATS {
        for n in [1, 5, 17] {
            let mut g = Graph::new();
            let x = g.input("x", vec![2, n], d);
            let zero = g.scalar(0.0, d).expect("scalar");
            let pos = g.greater(x, zero).expect("gt");
            let e = g.exp(x).expect("exp");
            let twice = g.scale(x, 2.0).expect("scale");
            let y = g.select(pos, twice, e).expect("where");
            let m = g.max(y, x).expect("max");
            let i = g.cast(m, DType::I64).expect("cast");
            g.set_outputs(&[m, i]).expect("nodes");
            check(&g, &[data(&[2, n], d, n as u64, true)]);
        }
    }
}

#[test]
fn a_member_used_outside_the_group_is_stored_and_others_are_not() {
    // h feeds both the rest of the chain and a reduction (outside the
    // group): h is a group output, the other members live in registers.
    for d in FLOATS {
        let mut g = Graph::new();
        let x = g.input("x", vec![4, 17], d);
        let h = g.tanh(x).expect("tanh");
        let h = g.scale(h, 3.0).expect("scale");
        let s = g.reduce(h, ReduceKind::Sum, &[1], true).expect("reduce");
        let y = g.sub(h, s).expect("sub");
        let y = g.exp(y).expect("exp");
        g.set_outputs(&[y]).expect("node");
        let (fused, unfused) = check(&g, &[data(&[4, 17], d, 5, true)]);
        assert!(fused.report().fused_groups >= 1);
        let slots = |c: &CompiledGraph| c.report().memory.slots.len();
        assert!(slots(&fused) < slots(&unfused), "{}", fused.report().memory);
    }
}

#[test]
fn fused_chain_allocates_fewer_arena_bytes() {
    for d in FLOATS {
        let (g, _) = bias_gelu_chain(64, 1023, d);
        let (fused, unfused) = (compiled(&g, true), compiled(&g, false));
        // Unfused: the four intermediates [64, 1023] take arena buffers
        // (two at a time, reused); fused: they stay in registers.
        assert_eq!(fused.arena_bytes(), 0, "{}", fused.report().memory);
        let one = 64 * 1023 * d.size_bytes();
        assert!(
            unfused.arena_bytes() >= 2 * one,
            "{}",
            unfused.report().memory
        );
    }
}

/// Row sums and means in vector accumulators: each row within
/// (n/lanes + lanes)·ε·Σ|x| of the exact sum (f32: against the f64 sum;
/// f64: against the interpreter, whose own left-to-right error n·ε·Σ|x| is
/// added to the bound). Max is exact.
#[test]
fn vector_row_reductions_stay_within_the_reassociation_bound() {
    for d in FLOATS {
        let (eps, lanes) = match d {
            DType::F32 => (f64::from(f32::EPSILON), 4.0),
            _ => (f64::EPSILON, 2.0),
        };
        for (dims, axes) in [
            (vec![3, 1023], vec![1]),
            (vec![2, 3, 17], vec![1, 2]),
            (vec![5, 4], vec![1]),
        ] {
            for kind in [ReduceKind::Sum, ReduceKind::Mean, ReduceKind::Max] {
                let mut g = Graph::new();
                let x = g.input("x", dims.clone(), d);
                let y = g.reduce(x, kind, &axes, false).expect("reduce");
                g.set_outputs(&[y]).expect("node");
                let input = data(&dims, d, 9, false);
                let c = compiled(&g, true);
                let got = c
                    .run(std::slice::from_ref(&input), &Bindings::new())
                    .expect("runs");
                let want = interpret(&g, std::slice::from_ref(&input), &Default::default())
                    .expect("interpreter");
                let (got, want) = (got[0].to_f64_vec(), want[0].to_f64_vec());
                let xs = input.to_f64_vec();
                let n = xs.len() / got.len();
                for (r, row) in xs.chunks(n).enumerate() {
                    let scale = if kind == ReduceKind::Mean {
                        n as f64
                    } else {
                        1.0
                    };
                    let abs_sum: f64 = row.iter().map(|v| v.abs()).sum::<f64>() / scale;
                    let (reference, own) = match (kind, d) {
                        (ReduceKind::Max, _) => (want[r], 0.0),
                        (_, DType::F32) => (row.iter().sum::<f64>() / scale, 0.0),
                        _ => (want[r], n as f64),
                    };
                    let bound = (n as f64 / lanes + lanes + own + 1.0) * eps * abs_sum;
                    let err = (got[r] - reference).abs();
                    assert!(
                        err <= bound,
                        "{kind:?} {d} {dims:?} row {r}: {err:e} > {bound:e}"
                    );
                }
            }
        }
    }
}

/// An explicit Broadcast inside a chain is a stride-0 read, not a copy:
/// in `relu(x + broadcast(b)) · broadcast(s)` the plan puts the first
/// broadcast, add, relu and mul in one group; `broadcast(s)` starts a group
/// of its own (plan rule 3: none of its operands is grouped) and is copied.
#[test]
fn explicit_broadcasts_fuse_as_strided_reads() {
    for d in FLOATS {
        for n in [1, 5, 17] {
            let mut g = Graph::new();
            let x = g.input("x", vec![3, n], d);
            let b = g.input("b", vec![n], d);
            let s = g.input("s", vec![3, 1], d);
            let bb = g.broadcast(b, vec![3, n]).expect("broadcast");
            let z = g.add(x, bb).expect("add");
            let r = g.relu(z).expect("relu");
            let sb = g.broadcast(s, vec![3, n]).expect("broadcast");
            let y = g.mul(r, sb).expect("mul");
            g.set_outputs(&[y]).expect("node");
            let ins = [
                data(&[3, n], d, 1, true),
                data(&[n], d, 2, true),
                data(&[3, 1], d, 3, false),
            ];
            let (fused, unfused) = check(&g, &ins);
            assert_eq!(fused.report().fused_groups, 1);
            let buffers = |c: &CompiledGraph| c.report().memory.slots.len();
            assert!(buffers(&fused) <= 1, "{}", fused.report().memory);
            assert!(buffers(&unfused) >= 3, "{}", unfused.report().memory);
        }
    }
}

/// A BERT embedding block: `LayerNorm(word[ids] + type[types] + pos)`, the
/// word table `[11, dm]`, types `[2, dm]`, positions `[s, dm]` broadcast over
/// the batch; `swap` puts each chain operand second (`pos + (…)`).
fn embedding_block(
    d: DType,
    (b, s, dm): (usize, usize, usize),
    swap: bool,
    affine: bool,
) -> (Graph, Vec<TensorData>) {
    let mut g = Graph::new();
    let word = g.input("word", vec![11, dm], d);
    let types = g.input("types", vec![2, dm], d);
    let pos = g.input("pos", vec![s, dm], d);
    let ids = g.input("ids", vec![b, s], DType::I64);
    let tids = g.input("tids", vec![b, s], DType::I64);
    let w = g
        .push(cranelora_graph::Op::Gather, &[word, ids])
        .expect("word");
    let t = g
        .push(cranelora_graph::Op::Gather, &[types, tids])
        .expect("type");
    let add = |g: &mut Graph, x: NodeId, y: NodeId| if swap { g.add(y, x) } else { g.add(x, y) };
    let e = add(&mut g, w, t).expect("w + t");
    let e = add(&mut g, e, pos).expect("+ pos");
    let mut ins = vec![
        data(&[11, dm], d, 31, true),
        data(&[2, dm], d, 32, false),
        data(&[s, dm], d, 33, false),
        TensorData::i64([b, s], (0..b * s).map(|i| (i * 7 % 11) as i64).collect()).expect("ids"),
        TensorData::i64([b, s], (0..b * s).map(|i| (i % 3 % 2) as i64).collect()).expect("types"),
    ];
    let gb = affine.then(|| {
        ins.push(data(&[dm], d, 34, false));
        ins.push(data(&[dm], d, 35, false));
        (g.input("gamma", vec![dm], d), g.input("beta", vec![dm], d))
    });
    let y = g.layer_norm(e, gb, 2, 1e-12).expect("norm");
    g.set_outputs(&[y]).expect("y");
    (g, ins)
}

/// The embedding block runs as one sum + norm pass (`lower/sum_norm.rs`):
/// bit for bit the unfused gathers, adds and LayerNorm, and close to the
/// interpreter, for either operand order, with and without γ and β, row
/// widths below, at and above a vector, NaN and infinities in the table.
#[test]
fn embedding_sum_and_norm_fuse_and_match_unfused() {
    for d in FLOATS {
        for dims in [(1, 1, 1), (2, 5, 7), (3, 4, 16), (2, 9, 33)] {
            for (swap, affine) in [(false, true), (true, true), (false, false)] {
                let (g, ins) = embedding_block(d, dims, swap, affine);
                let (fused, unfused) = check(&g, &ins);
                let what = format!("{d} {dims:?} swap {swap} affine {affine}");
                assert_eq!(fused.report().fused_sum_norms, 1, "{what}");
                assert_eq!(unfused.report().fused_sum_norms, 0, "{what}");
                // No buffers for the two gathered copies and the sums.
                let bytes = |c: &CompiledGraph| c.report().memory.arena_bytes;
                assert!(bytes(&fused) < bytes(&unfused), "{what}");
            }
        }
    }
}

/// An id outside the table is the Gather's error, fused or not.
#[test]
fn embedding_ids_out_of_range_are_the_gathers_error() {
    for bad in [11, -1] {
        let (g, mut ins) = embedding_block(DType::F32, (2, 3, 8), false, true);
        let mut ids = ins[3]
            .to_f64_vec()
            .iter()
            .map(|&x| x as i64)
            .collect::<Vec<_>>();
        ids[4] = bad;
        ins[3] = TensorData::i64([2, 3], ids).expect("ids");
        let errors: Vec<String> = [true, false]
            .map(|fuse| {
                compiled(&g, fuse)
                    .run(&ins, &Bindings::new())
                    .expect_err("bad id")
                    .to_string()
            })
            .into();
        assert_eq!(errors[0], errors[1]);
        assert!(
            errors[0].contains(&format!("id {bad} is outside 0..11")),
            "{}",
            errors[0]
        );
    }
}

/// Not fused (and still right): a sum with no lookup (a residual add stays
/// with its product's epilogue), more terms than one call takes; fused: a
/// lookup that is also a graph output (read as a plain term), a `[b, s, 1]`
/// term broadcast along the row.
#[test]
fn sum_norms_need_a_sole_gather_and_a_plain_chain() {
    for d in FLOATS {
        let (b, s, dm) = (2, 3, 8);
        let norm = |g: &mut Graph, x: NodeId| {
            let y = g.layer_norm(x, None, 2, 1e-5).expect("norm");
            g.set_outputs(&[y]).expect("y");
        };
        let table = |g: &mut Graph| g.input("table", vec![5, dm], d);
        let ids = TensorData::i64([b, s], vec![0, 4, 2, 1, 3, 0]).expect("ids");
        // x + y, no lookup.
        let mut g = Graph::new();
        let (x, y) = (
            g.input("x", vec![b, s, dm], d),
            g.input("y", vec![b, s, dm], d),
        );
        let e = g.add(x, y).expect("sum");
        norm(&mut g, e);
        let ins = [
            data(&[b, s, dm], d, 1, false),
            data(&[b, s, dm], d, 2, false),
        ];
        assert_eq!(check(&g, &ins).0.report().fused_sum_norms, 0);
        // Two lookups, the first an output too (read from its buffer as a
        // plain term, the second absorbed); then nine lookups (too many).
        // Distinct ids per lookup, or CSE makes them one.
        for terms in [2, 9] {
            let mut g = Graph::new();
            let t = table(&mut g);
            let mut ins = vec![data(&[5, dm], d, 3, false)];
            let rows: Vec<NodeId> = (0..terms)
                .map(|k| {
                    let i = g.input(&format!("ids{k}"), vec![b, s], DType::I64);
                    let v = (0..b * s).map(|j| ((j + k) % 5) as i64).collect();
                    ins.push(TensorData::i64([b, s], v).expect("ids"));
                    g.push(cranelora_graph::Op::Gather, &[t, i])
                        .expect("gather")
                })
                .collect();
            let e = rows[1..]
                .iter()
                .fold(rows[0], |acc, &r| g.add(acc, r).expect("sum"));
            let y = g.layer_norm(e, None, 2, 1e-5).expect("norm");
            let outs = if terms == 2 {
                vec![y, rows[0]]
            } else {
                vec![y]
            };
            g.set_outputs(&outs).expect("outs");
            let fused = usize::from(terms == 2);
            assert_eq!(
                check(&g, &ins).0.report().fused_sum_norms,
                fused,
                "{d} {terms} terms"
            );
        }
        // gather + x with x [b, s, 1]: the Add broadcasts, its shape is the
        // norm's; a [b, s, 1] term read through a stride-0 last axis is fused.
        let mut g = Graph::new();
        let (t, i) = (table(&mut g), g.input("ids", vec![b, s], DType::I64));
        let r = g
            .push(cranelora_graph::Op::Gather, &[t, i])
            .expect("gather");
        let col = g.input("col", vec![b, s, 1], d);
        let e = g.add(r, col).expect("sum");
        norm(&mut g, e);
        let ins = [
            data(&[5, dm], d, 4, false),
            ids.clone(),
            data(&[b, s, 1], d, 5, false),
        ];
        assert_eq!(
            check(&g, &ins).0.report().fused_sum_norms,
            1,
            "{d} column term"
        );
    }
}
