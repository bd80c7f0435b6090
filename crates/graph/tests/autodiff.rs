//! Reverse-mode autodiff: every op's gradient against central finite
//! differences in f64 run by the interpreter; accumulation over several
//! consumers; StopGradient and comparisons; pruning; names and errors.

use crate::common;

use common::{f64s, i64s, Rng};
use cranelora_graph::{
    grad, interpret, Bindings, Conv2dParams, DType, Error, Graph, NodeId, Op, ReduceKind, Result,
    TensorData, Value,
};
use cranelora_kernels::testing::assert_close;

/// Step and tolerance of a finite-difference check.
#[derive(Clone, Copy)]
struct Fd {
    h: f64,
    tol: f64,
}

const FD: Fd = Fd { h: 1e-5, tol: 1e-7 };

/// Builds y = build(inputs…) and L = Σ R⊙y for a fixed random R, then checks
/// ∂L/∂x from [`grad`] against central differences for every f64 input
/// (i64 inputs are ids or conditions, not differentiated).
#[track_caller]
fn check_grad(inputs: &[Value], build: impl Fn(&mut Graph, &[NodeId]) -> Result<NodeId>) {
    check_grad_with(inputs, build, FD);
}

#[track_caller]
fn check_grad_with(
    inputs: &[Value],
    build: impl Fn(&mut Graph, &[NodeId]) -> Result<NodeId>,
    fd: Fd,
) {
    let mut g = Graph::new();
    let ids: Vec<NodeId> = inputs
        .iter()
        .enumerate()
        .map(|(i, v)| g.input(&format!("x{i}"), v.shape(), v.dtype()))
        .collect();
    let y = build(&mut g, &ids).expect("the op builds");
    let ynode = g.node(y).expect("y is a node").clone();
    let r = Rng(0x5eed).value(ynode.shape.dims());
    let r = if ynode.dtype == DType::F32 {
        TensorData::f32(
            r.shape(),
            r.to_f64_vec().iter().map(|&v| v as f32).collect(),
        )
        .expect("same length")
    } else {
        r
    };
    let r = g.constant(r).expect("constant");
    let ry = g.mul(y, r).expect("R⊙y");
    let axes: Vec<usize> = (0..ynode.shape.rank()).collect();
    let loss = g
        .named("L")
        .reduce(ry, ReduceKind::Sum, &axes, false)
        .expect("Σ");
    let mut forward = g.clone();
    forward.set_outputs(&[loss]).expect("L is a node");
    let wrt: Vec<usize> = (0..inputs.len())
        .filter(|&i| inputs[i].dtype() == DType::F64)
        .collect();
    let wrt_ids: Vec<NodeId> = wrt.iter().map(|&i| ids[i]).collect();
    let grads = grad(&mut g, loss, &wrt_ids).expect("grad builds");
    g.set_outputs(&grads).expect("grads are nodes");
    let analytic = interpret(&g, inputs, &Bindings::new()).expect("the gradient graph runs");
    let eval = |vals: &[Value]| {
        let out = interpret(&forward, vals, &Bindings::new()).expect("forward runs");
        out[0].to_f64_vec()[0]
    };
    for (k, &i) in wrt.iter().enumerate() {
        assert_eq!(
            analytic[k].shape(),
            inputs[i].shape(),
            "∂L/∂x{i} has x{i}'s shape"
        );
        let base = inputs[i].to_f64_vec();
        let numeric: Vec<f64> = (0..base.len())
            .map(|j| {
                let at = |delta: f64| {
                    let mut data = base.clone();
                    data[j] += delta;
                    let mut vals = inputs.to_vec();
                    vals[i] = f64s(inputs[i].shape().dims(), &data);
                    eval(&vals)
                };
                (at(fd.h) - at(-fd.h)) / (2.0 * fd.h)
            })
            .collect();
        assert_close(&analytic[k].to_f64_vec(), &numeric, fd.tol, fd.tol);
    }
}

/// Uniform values in [-1, 1) pushed at least `gap` away from 0.
fn away_from_zero(rng: &mut Rng, shape: &[usize], gap: f64) -> Value {
    let n = shape.iter().product();
    let v: Vec<f64> = rng.vec(n).iter().map(|&x| x + gap * x.signum()).collect();
    f64s(shape, &v)
}

/// Uniform values in [lo, lo + 1).
fn positive(rng: &mut Rng, shape: &[usize], lo: f64) -> Value {
    let n = shape.iter().product();
    let v: Vec<f64> = rng.vec(n).iter().map(|&x| lo + (x + 1.0) / 2.0).collect();
    f64s(shape, &v)
}

fn unary(op: Op, x: Value) {
    check_grad(&[x], |g, x| g.push(op.clone(), &[x[0]]));
}

#[test]
fn smooth_unary_ops_match_finite_differences() {
    let mut rng = Rng(1);
    let ops = [
        Op::Neg,
        Op::Gelu,
        Op::GeluTanh,
        Op::GeluGrad,
        Op::GeluTanhGrad,
        Op::Tanh,
        Op::Sigmoid,
        Op::Silu,
        Op::Exp,
        Op::Erf,
        Op::Scale(-2.5),
    ];
    for op in ops {
        let x = f64s(
            &[2, 3],
            &rng.vec(6).iter().map(|v| 2.0 * v).collect::<Vec<_>>(),
        );
        unary(op, x);
    }
    for op in [Op::Log, Op::Sqrt, Op::Rsqrt] {
        unary(op, positive(&mut rng, &[2, 3], 0.5));
    }
}

#[test]
fn kinked_unary_ops_match_finite_differences_away_from_the_kink() {
    let mut rng = Rng(2);
    for op in [Op::Relu, Op::Abs, Op::Recip] {
        unary(op, away_from_zero(&mut rng, &[3, 4], 0.2));
    }
}

#[test]
fn sign_and_comparisons_have_zero_gradient() {
    // (StopGradient is the identity forward, so finite differences do not
    // apply to it: see stop_gradient_blocks_one_path_only.)
    let mut rng = Rng(3);
    unary(Op::Sign, away_from_zero(&mut rng, &[4], 0.2));
    for op in [Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge] {
        let (a, b) = (rng.value(&[3, 2]), rng.value(&[2]));
        check_grad(&[a, b], |g, x| g.push(op.clone(), &[x[0], x[1]]));
    }
    // A mask used as a factor: ∂(a·[a > b]) = ([a > b], 0).
    let (a, b) = (rng.value(&[3, 2]), rng.value(&[2]));
    check_grad(&[a, b], |g, x| {
        let m = g.greater(x[0], x[1])?;
        g.mul(x[0], m)
    });
}

#[test]
fn binary_ops_reduce_broadcast_gradients_to_the_operand_shapes() {
    let mut rng = Rng(4);
    let pairs: [(&[usize], &[usize]); 3] =
        [(&[2, 3, 4], &[3, 1]), (&[1, 4], &[2, 3, 1]), (&[3], &[])];
    for (sa, sb) in pairs {
        for op in [Op::Add, Op::Sub, Op::Mul] {
            check_grad(&[rng.value(sa), rng.value(sb)], |g, x| {
                g.push(op.clone(), &[x[0], x[1]])
            });
        }
        let b = away_from_zero(&mut rng, sb, 0.3);
        check_grad(&[rng.value(sa), b], |g, x| g.div(x[0], x[1]));
        let (a, b) = (positive(&mut rng, sa, 0.5), rng.value(sb));
        check_grad(&[a, b], |g, x| g.pow(x[0], x[1]));
    }
}

#[test]
fn max_and_min_match_finite_differences_away_from_ties() {
    let a = f64s(&[2, 3], &[0.5, -1.0, 2.0, 0.1, -0.3, 1.0]);
    let b = f64s(&[3], &[0.2, -0.5, 1.5]);
    for op in [Op::Max, Op::Min] {
        check_grad(&[a.clone(), b.clone()], |g, x| {
            g.push(op.clone(), &[x[0], x[1]])
        });
    }
}

#[test]
fn max_of_a_node_with_itself_passes_the_gradient_once() {
    let x = f64s(&[3], &[0.5, -1.0, 2.0]);
    check_grad(&[x], |g, x| g.max(x[0], x[0]));
}

#[test]
fn where_routes_the_gradient_and_ignores_the_condition() {
    let mut rng = Rng(5);
    let cond = i64s(&[2, 1], &[1, 0]);
    let (a, b) = (rng.value(&[2, 3]), rng.value(&[3]));
    check_grad(&[cond, a, b], |g, x| g.select(x[0], x[1], x[2]));
    // A float mask condition gets no gradient either.
    let mask = f64s(&[3], &[1.0, 0.0, 1.0]);
    let (a, b) = (rng.value(&[3]), rng.value(&[3]));
    let mut g = Graph::new();
    let (m, xa, xb) = (
        g.input("m", [3], DType::F64),
        g.input("a", [3], DType::F64),
        g.input("b", [3], DType::F64),
    );
    let y = g.select(m, xa, xb).expect("where");
    let loss = g.reduce(y, ReduceKind::Sum, &[0], false).expect("Σ");
    let grads = grad(&mut g, loss, &[m, xa, xb]).expect("grad");
    g.set_outputs(&grads).expect("nodes");
    let out = interpret(&g, &[mask, a, b], &Bindings::new()).expect("runs");
    assert_eq!(out[0].to_f64_vec(), vec![0.0; 3]);
    assert_eq!(out[1].to_f64_vec(), vec![1.0, 0.0, 1.0]);
    assert_eq!(out[2].to_f64_vec(), vec![0.0, 1.0, 0.0]);
}

#[test]
fn casts_pass_the_gradient_between_float_dtypes_and_not_through_i64() {
    let x = f64s(&[4], &[0.25, -1.5, 2.0, 0.75]);
    // y = cast(3·cast(x, f32), f64): exact up to f32 rounding, so a wide step.
    check_grad_with(
        std::slice::from_ref(&x),
        |g, x| {
            let x32 = g.cast(x[0], DType::F32)?;
            let s = g.scale(x32, 3.0)?;
            g.cast(s, DType::F64)
        },
        Fd { h: 1e-2, tol: 1e-5 },
    );
    // Through i64 nothing flows (x + 0.3 keeps away from the truncation steps).
    check_grad(&[x], |g, x| {
        let c = g.scalar(0.3, DType::F64)?;
        let shifted = g.add(x[0], c)?;
        let i = g.cast(shifted, DType::I64)?;
        g.cast(i, DType::F64)
    });
}

#[test]
fn reductions_with_and_without_keepdims_match_finite_differences() {
    let mut rng = Rng(6);
    for kind in [ReduceKind::Sum, ReduceKind::Mean, ReduceKind::Max] {
        for (axes, keepdims) in [
            (&[0, 2][..], false),
            (&[1][..], true),
            (&[0, 1, 2][..], false),
        ] {
            let x = rng.value(&[2, 3, 4]);
            check_grad(&[x], |g, x| g.reduce(x[0], kind, axes, keepdims));
        }
    }
}

#[test]
fn reduce_max_splits_the_gradient_evenly_between_ties() {
    let mut g = Graph::new();
    let x = g.input("x", [4], DType::F64);
    let m = g.reduce(x, ReduceKind::Max, &[0], false).expect("max");
    let dx = grad(&mut g, m, &[x]).expect("grad");
    g.set_outputs(&dx).expect("node");
    let v = f64s(&[4], &[1.0, 3.0, 3.0, 2.0]);
    let out = interpret(&g, &[v], &Bindings::new()).expect("runs");
    assert_eq!(out[0].to_f64_vec(), vec![0.0, 0.5, 0.5, 0.0]);
}

#[test]
fn broadcast_softmax_and_layer_norm_match_finite_differences() {
    let mut rng = Rng(7);
    check_grad(&[rng.value(&[3, 1])], |g, x| g.broadcast(x[0], [2, 3, 4]));
    for axis in [0, 1] {
        check_grad(&[rng.value(&[3, 4])], |g, x| g.softmax(x[0], axis));
    }
    let (x, gamma, beta) = (
        rng.value(&[2, 3, 4]),
        rng.value(&[3, 4]),
        rng.value(&[3, 4]),
    );
    check_grad(&[x, gamma, beta], |g, x| {
        g.layer_norm(x[0], Some((x[1], x[2])), 1, 1e-5)
    });
    let (x, gamma, beta) = (rng.value(&[2, 3]), rng.value(&[2, 3]), rng.value(&[2, 3]));
    check_grad(&[x, gamma, beta], |g, x| {
        g.layer_norm(x[0], Some((x[1], x[2])), 0, 1e-3)
    });
    check_grad(&[rng.value(&[3, 5])], |g, x| {
        g.layer_norm(x[0], None, 1, 0.0)
    });
}

#[test]
fn data_movement_ops_match_finite_differences() {
    let mut rng = Rng(8);
    let x = || Rng(9).value(&[2, 3, 4]);
    check_grad(&[x()], |g, x| g.reshape(x[0], [4, 6]));
    check_grad(&[x()], |g, x| g.transpose(x[0], &[2, 0, 1]));
    check_grad(&[x()], |g, x| g.slice(x[0], &[1..2, 0..3, 1..3]));
    check_grad(&[x()], |g, x| g.pad(x[0], &[(1, 0), (0, 2), (1, 1)], 0.5));
    let parts = [
        rng.value(&[2, 1, 4]),
        rng.value(&[2, 3, 4]),
        rng.value(&[2, 2, 4]),
    ];
    check_grad(&parts, |g, x| g.concat(x, 1));
    check_grad(&[rng.value(&[3])], |g, x| g.concat(&[x[0], x[0]], 0));
}

#[test]
fn gather_and_scatter_add_match_finite_differences() {
    let mut rng = Rng(10);
    let ids = i64s(&[2, 3], &[4, 0, 4, 1, 1, 2]);
    check_grad(&[rng.value(&[5, 3]), ids.clone()], |g, x| {
        g.gather(x[0], x[1])
    });
    check_grad(&[rng.value(&[2, 3, 4]), ids], |g, x| {
        g.scatter_add(x[0], x[1], 6)
    });
}

#[test]
fn conv2d_and_its_gradient_ops_match_finite_differences() {
    let mut rng = Rng(11);
    let p = Conv2dParams {
        stride: (2, 1),
        padding: (1, 2),
        dilation: (1, 2),
    };
    let (x, w) = (rng.value(&[2, 2, 5, 4]), rng.value(&[3, 2, 2, 2]));
    check_grad(&[x.clone(), w.clone()], |g, x| g.conv2d(x[0], x[1], p));
    // dy has the convolution's output shape: [2, 3, 3, 6].
    let dy = rng.value(&[2, 3, 3, 6]);
    check_grad(&[dy.clone(), w], |g, x| {
        g.conv2d_input_grad(x[0], x[1], p, (5, 4))
    });
    check_grad(&[x, dy], |g, x| g.conv2d_weight_grad(x[0], x[1], p, (2, 2)));
}

#[test]
fn matmul_matches_finite_differences_with_broadcast_batch_dims() {
    let mut rng = Rng(12);
    check_grad(&[rng.value(&[3, 4]), rng.value(&[4, 2])], |g, x| {
        g.matmul(x[0], x[1])
    });
    check_grad(
        &[rng.value(&[2, 1, 3, 4]), rng.value(&[5, 4, 2])],
        |g, x| g.matmul(x[0], x[1]),
    );
    check_grad(&[rng.value(&[3, 4]), rng.value(&[2, 4, 2])], |g, x| {
        g.matmul(x[0], x[1])
    });
}

#[test]
fn a_node_with_several_consumers_accumulates_its_gradients() {
    // L = Σ (x·x + x): ∂L/∂x = 2x + 1.
    let mut g = Graph::new();
    let x = g.input("x", [3], DType::F64);
    let xx = g.mul(x, x).expect("x·x");
    let y = g.add(xx, x).expect("x·x + x");
    let loss = g.reduce(y, ReduceKind::Sum, &[0], false).expect("Σ");
    let dx = grad(&mut g, loss, &[x]).expect("grad");
    g.set_outputs(&dx).expect("node");
    let out = interpret(&g, &[f64s(&[3], &[1.0, -2.0, 0.5])], &Bindings::new()).expect("runs");
    assert_eq!(out[0].to_f64_vec(), vec![3.0, -3.0, 2.0]);
    let mut rng = Rng(13);
    check_grad(&[rng.value(&[3])], |g, x| {
        let xx = g.mul(x[0], x[0])?;
        let e = g.exp(x[0])?;
        let s = g.add(xx, e)?;
        g.add(s, x[0])
    });
}

#[test]
fn stop_gradient_blocks_one_path_only() {
    // L = Σ stop(x)·x: ∂L/∂x = x, not 2x.
    let mut g = Graph::new();
    let x = g.input("x", [2], DType::F64);
    let s = g.stop_gradient(x).expect("stop");
    let y = g.mul(s, x).expect("mul");
    let loss = g.reduce(y, ReduceKind::Sum, &[0], false).expect("Σ");
    let dx = grad(&mut g, loss, &[x]).expect("grad");
    g.set_outputs(&dx).expect("node");
    let out = interpret(&g, &[f64s(&[2], &[1.5, -2.0])], &Bindings::new()).expect("runs");
    assert_eq!(out[0].to_f64_vec(), vec![1.5, -2.0]);
}

#[test]
fn only_nodes_between_wrt_and_the_output_get_gradient_nodes() {
    // L = Σ gelu(x·W + b) with W, b constant: no node may compute ∂W (xᵀ·G) or ∂b.
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F64);
    let w = g
        .constant(TensorData::f64([3, 4], vec![0.5; 12]).expect("12"))
        .expect("W");
    let b = g
        .constant(TensorData::f64([4], vec![0.1; 4]).expect("4"))
        .expect("b");
    let xw = g.matmul(x, w).expect("x·W");
    let z = g.add(xw, b).expect("+b");
    let y = g.gelu(z).expect("gelu");
    let loss = g.reduce(y, ReduceKind::Sum, &[0, 1], false).expect("Σ");
    let before = g.len();
    let dx = grad(&mut g, loss, &[x]).expect("grad");
    // The seed, its reshape and broadcast back over Σ's axes, gelu′ and its
    // product, Wᵀ and G·Wᵀ: b's unbroadcast and ∂W (needing xᵀ) are pruned.
    assert_eq!(g.len() - before, 7, "{}", cranelora_graph::dump(&g));
    assert!(g.users(x).iter().all(|&u| u == xw), "nothing new reads x");
    assert_eq!(
        g.node(dx[0]).expect("node").name.as_deref(),
        Some("grad(x)")
    );
}

#[test]
fn gradient_nodes_are_named_after_their_nodes() {
    let mut g = Graph::new();
    let x = g.input("x", [2], DType::F64);
    let w = g.parameter("fc.weight", [2], DType::F64);
    let y = g.named("fc.mul").mul(x, w).expect("mul");
    let e = g.named("act").exp(y).expect("exp");
    let loss = g
        .named("loss")
        .reduce(e, ReduceKind::Sum, &[0], false)
        .expect("Σ");
    let dw = grad(&mut g, loss, &[w]).expect("grad");
    let name = |id: NodeId| g.node(id).and_then(|n| n.name.clone());
    assert_eq!(name(dw[0]).as_deref(), Some("grad(fc.weight)"));
    let names: Vec<String> = g.node_ids().into_iter().filter_map(name).collect();
    for expected in ["grad(loss)", "vjp(loss)", "grad(act)", "grad(fc.mul)"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}

#[test]
fn an_unreachable_wrt_node_gets_a_zero_gradient() {
    let mut g = Graph::new();
    let x = g.input("x", [2], DType::F64);
    let u = g.input("unused", [3], DType::F64);
    let loss = g.reduce(x, ReduceKind::Sum, &[0], false).expect("Σ");
    let grads = grad(&mut g, loss, &[x, u]).expect("grad");
    g.set_outputs(&grads).expect("nodes");
    let vals = [f64s(&[2], &[1.0, 2.0]), f64s(&[3], &[1.0, 2.0, 3.0])];
    let out = interpret(&g, &vals, &Bindings::new()).expect("runs");
    assert_eq!(out[0].to_f64_vec(), vec![1.0, 1.0]);
    assert_eq!(out[1].to_f64_vec(), vec![0.0, 0.0, 0.0]);
}

#[test]
fn grad_refuses_non_scalar_outputs_and_integer_nodes() {
    let mut g = Graph::new();
    let x = g.input("x", [2], DType::F64);
    let ids = g.input("ids", [2], DType::I64);
    let err = grad(&mut g, x, &[x]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let loss = g.reduce(x, ReduceKind::Sum, &[0], false).expect("Σ");
    let err = grad(&mut g, loss, &[ids]).unwrap_err();
    assert!(matches!(err, Error::DType { .. }), "{err}");
    // A one-element output of any rank is accepted.
    let one = g.reshape(loss, [1, 1]).expect("reshape");
    assert!(grad(&mut g, one, &[x]).is_ok());
}

#[test]
fn gradients_of_gradients_are_differentiable() {
    // The gradient graph uses only IR ops, so it can be differentiated again:
    // L = Σ x³, ∂L/∂x = 3x², Σ ∂L/∂x differentiated = 6x.
    let mut g = Graph::new();
    let x = g.input("x", [3], DType::F64);
    let x2 = g.mul(x, x).expect("x²");
    let x3 = g.mul(x2, x).expect("x³");
    let loss = g.reduce(x3, ReduceKind::Sum, &[0], false).expect("Σ");
    let dx = grad(&mut g, loss, &[x]).expect("grad")[0];
    let s = g.reduce(dx, ReduceKind::Sum, &[0], false).expect("Σ");
    let ddx = grad(&mut g, s, &[x]).expect("grad of grad");
    g.set_outputs(&ddx).expect("node");
    let out = interpret(&g, &[f64s(&[3], &[1.0, -2.0, 0.5])], &Bindings::new()).expect("runs");
    assert_close(&out[0].to_f64_vec(), &[6.0, -12.0, 3.0], 1e-12, 1e-12);
}
