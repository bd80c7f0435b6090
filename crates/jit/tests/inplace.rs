//! The placement of in-place updates (`inplace.rs`) on hand-built graphs:
//! a store that must wait (the old value is read after the new one is
//! computed), an update copied from another Parameter, a swap (rejected),
//! the checks before a step, and publishing a trainer's parameters to
//! concurrent inference through `SharedBindings`.

use crate::common;

use common::{assert_same, data};
use cranelora_graph::{interpret, DType, Graph, ReduceKind, TensorData};
use cranelora_jit::{compile, Bindings, Error, JitOptions, SharedBindings, Trainer};
use std::sync::Arc;

fn bind(pairs: &[(&str, TensorData)]) -> Bindings {
    let mut b = Bindings::new();
    for (k, v) in pairs {
        b.insert(*k, v.clone()).expect("contiguous");
    }
    b
}

/// Runs `steps` steps of `g` with `updates` in the interpreter and in a
/// Trainer and compares every output and every parameter at every step.
fn compare(
    g: &Graph,
    updates: &[(usize, String)],
    start: &Bindings,
    ins: &[TensorData],
    steps: usize,
) -> Trainer {
    compare_with(g, updates, start, ins, steps, &JitOptions::default())
}

/// [`compare`] with the given compile options.
fn compare_with(
    g: &Graph,
    updates: &[(usize, String)],
    start: &Bindings,
    ins: &[TensorData],
    steps: usize,
    options: &JitOptions,
) -> Trainer {
    let mut t = Trainer::with_updates(g, updates, start.clone(), options).expect("trainer");
    let mut reference = start.to_map();
    for _ in 0..steps {
        let expected = interpret(g, ins, &reference).expect("interp");
        t.step(ins).expect("step");
        let plain: Vec<&TensorData> = (0..expected.len())
            .filter(|k| !updates.iter().any(|u| u.0 == *k))
            .map(|k| &expected[k])
            .collect();
        for (a, e) in t.outputs().iter().zip(plain) {
            assert_same(a, e, 1e-12, 1e-12);
        }
        for (k, name) in updates {
            reference.insert(name.clone(), expected[*k].clone());
        }
        for (name, value) in &reference {
            assert_same(t.bindings().get(name).expect("bound"), value, 1e-12, 1e-12);
        }
    }
    t
}

#[test]
fn an_update_computed_before_the_last_read_of_the_old_value_is_copied_at_the_end() {
    // new = p − x/2 comes first in the order; r = Σ p·new reads p after it.
    let mut g = Graph::new();
    let p = g.parameter("p", [4], DType::F64);
    let x = g.input("x", [4], DType::F64);
    let half = g.scale(x, 0.5).expect("half");
    let new = g.sub(p, half).expect("new");
    let prod = g.mul(p, new).expect("prod");
    let r = g.reduce(prod, ReduceKind::Sum, &[0], false).expect("r");
    g.set_outputs(&[r, new]).expect("outputs");
    let start = bind(&[("p", data(&[4], DType::F64, 1, false))]);
    let ins = [data(&[4], DType::F64, 2, false)];
    // Node by node, `new` is stored before `p·new` reads p: copied at the end.
    let unfused = JitOptions::default().with_fusion(false);
    let t = compare_with(&g, &[(1, "p".into())], &start, &ins, 3, &unfused);
    assert!(!t.updates()[0].in_place, "the store must wait for p·new");
    // Fused, half/new/prod are one loop whose iteration i loads p[i] before
    // storing new[i]: the store may go straight into p.
    let t = compare(&g, &[(1, "p".into())], &start, &ins, 3);
    assert!(t.updates()[0].in_place, "one fused loop reads p[i] first");
}

#[test]
fn updates_in_place_when_the_writer_is_the_last_reader() {
    // r = Σ p·p first, then new = p·0.9 + x: stored straight into p.
    let mut g = Graph::new();
    let p = g.parameter("p", [3, 4], DType::F32);
    let x = g.input("x", [4], DType::F32);
    let sq = g.mul(p, p).expect("sq");
    let r = g.reduce(sq, ReduceKind::Sum, &[0, 1], false).expect("r");
    let kept = g.scale(p, 0.9).expect("kept");
    let new = g.add(kept, x).expect("new");
    g.set_outputs(&[r, new]).expect("outputs");
    let start = bind(&[("p", data(&[3, 4], DType::F32, 3, false))]);
    let ins = [data(&[4], DType::F32, 4, false)];
    let mut t = Trainer::with_updates(
        &g,
        &[(1, "p".into())],
        start.clone(),
        &JitOptions::default(),
    )
    .expect("trainer");
    assert!(t.updates()[0].in_place);
    let mut reference = start.to_map();
    for _ in 0..4 {
        let expected = interpret(&g, &ins, &reference).expect("interp");
        t.step(&ins).expect("step");
        assert_same(&t.outputs()[0], &expected[0], 1e-6, 1e-6);
        reference.insert("p".into(), expected[1].clone());
        assert_same(
            t.bindings().get("p").expect("p"),
            &reference["p"],
            1e-6,
            1e-6,
        );
    }
}

#[test]
fn an_update_from_another_parameter_reads_its_old_value() {
    // p ← q (old), q ← q + x: the copy from q runs before q is replaced.
    let mut g = Graph::new();
    let q = g.parameter("q", [5], DType::F64);
    let _p = g.parameter("p", [5], DType::F64);
    let x = g.input("x", [5], DType::F64);
    let q2 = g.add(q, x).expect("q2");
    let s = g.reduce(q2, ReduceKind::Sum, &[0], false).expect("s");
    g.set_outputs(&[s, q, q2]).expect("outputs");
    let start = bind(&[
        ("p", data(&[5], DType::F64, 5, false)),
        ("q", data(&[5], DType::F64, 6, false)),
    ]);
    let ins = [data(&[5], DType::F64, 7, false)];
    let updates = [(1, "p".to_string()), (2, "q".to_string())];
    compare(&g, &updates, &start, &ins, 3);
    // The same with the copy into q listed first.
    g.set_outputs(&[s, q2, q]).expect("outputs");
    let updates = [(1, "q".to_string()), (2, "p".to_string())];
    compare(&g, &updates, &start, &ins, 3);
}

#[test]
fn a_swap_of_parameters_is_an_error_naming_the_update() {
    let mut g = Graph::new();
    let p = g.parameter("p", [2], DType::F64);
    let q = g.parameter("q", [2], DType::F64);
    let s = g.add(p, q).expect("s");
    g.set_outputs(&[s, q, p]).expect("outputs");
    let start = bind(&[
        ("p", data(&[2], DType::F64, 1, false)),
        ("q", data(&[2], DType::F64, 2, false)),
    ]);
    let updates = [(1, "p".to_string()), (2, "q".to_string())];
    let err = Trainer::with_updates(&g, &updates, start, &JitOptions::default());
    assert!(matches!(err, Err(Error::Update { .. })), "{:?}", err.err());
}

#[test]
fn bad_updates_and_bindings_are_errors_naming_them() {
    let mut g = Graph::new();
    let p = g.parameter("p", [3], DType::F64);
    let x = g.input("x", [3], DType::F64);
    let new = g.add(p, x).expect("new");
    let c = g.cast(new, DType::F32).expect("cast");
    g.set_outputs(&[new, c]).expect("outputs");
    let good = bind(&[("p", data(&[3], DType::F64, 1, false))]);
    let o = JitOptions::default();
    let update = |k: usize, name: &str| vec![(k, name.to_string())];
    let err = |r: Result<Trainer, Error>| r.err().expect("an error");
    match err(Trainer::with_updates(&g, &update(2, "p"), good.clone(), &o)) {
        Error::Update {
            output: 2,
            parameter,
            ..
        } => assert_eq!(parameter, "p"),
        e => panic!("{e}"),
    }
    let e = err(Trainer::with_updates(&g, &update(1, "p"), good.clone(), &o));
    assert!(e.to_string().contains("f32"), "{e}");
    let twice = vec![(0, "p".to_string()), (0, "q".to_string())];
    assert!(matches!(
        err(Trainer::with_updates(&g, &twice, good.clone(), &o)),
        Error::Update { .. }
    ));
    match err(Trainer::with_updates(
        &g,
        &update(0, "p"),
        Bindings::new(),
        &o,
    )) {
        Error::MissingBinding { name } => assert_eq!(name, "p"),
        e => panic!("{e}"),
    }
    let wrong = bind(&[("p", data(&[4], DType::F64, 1, false))]);
    match err(Trainer::with_updates(&g, &update(0, "p"), wrong, &o)) {
        Error::Mismatch {
            what: "parameter",
            name,
            ..
        } => assert_eq!(name, "p"),
        e => panic!("{e}"),
    }
    // An update target the graph does not read is still checked.
    match err(Trainer::with_updates(
        &g,
        &update(0, "fresh"),
        good.clone(),
        &o,
    )) {
        Error::MissingBinding { name } => assert_eq!(name, "fresh"),
        e => panic!("{e}"),
    }
    // A step with a wrong input fails before running: p is untouched.
    let mut t = Trainer::with_updates(&g, &update(0, "p"), good.clone(), &o).expect("trainer");
    match t.step(&[data(&[3], DType::F32, 2, false)]) {
        Err(Error::Mismatch {
            what: "input",
            name,
            ..
        }) => assert_eq!(name, "x"),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.bindings().get("p"), good.get("p"));
    assert!(t.set("p", data(&[2], DType::F64, 1, false)).is_err());
    assert_eq!(t.bindings().get("p"), good.get("p"));
    t.set("p", data(&[3], DType::F64, 9, false))
        .expect("same spec");
    // A name the step neither reads nor updates (a typo) is refused.
    match t.set("q", data(&[3], DType::F64, 9, false)) {
        Err(Error::MissingBinding { name }) => assert_eq!(name, "q"),
        other => panic!("{other:?}"),
    }
    assert!(t.bindings().get("q").is_none());
}

#[test]
fn a_trainer_publishes_parameters_to_concurrent_inference() {
    // Inference threads read snapshots through SharedBindings while the
    // trainer updates its own buffers: a snapshot never changes under them.
    let mut g = Graph::new();
    let w = g.parameter("w", [8, 8], DType::F32);
    let x = g.input("x", [4, 8], DType::F32);
    let y = g.matmul(x, w).expect("y");
    let y = g.tanh(y).expect("tanh");
    g.set_outputs(&[y]).expect("y");
    let infer = Arc::new(compile(&g, &JitOptions::default()).expect("infer"));
    // Training: w ← w − 0.01·xᵀ·(x·w) (a made-up step, elementwise in w).
    let mut s = g.clone();
    let xt = s.transpose(x, &[1, 0]).expect("xt");
    let xw = s.matmul(x, w).expect("xw");
    let gw = s.matmul(xt, xw).expect("gw");
    let step = s.scale(gw, 0.01).expect("step");
    let new = s.sub(w, step).expect("new");
    s.set_outputs(&[y, new]).expect("outputs");
    let start = bind(&[("w", data(&[8, 8], DType::F32, 1, false))]);
    let mut trainer = Trainer::with_updates(
        &s,
        &[(1, "w".into())],
        start.clone(),
        &JitOptions::default(),
    )
    .expect("trainer");
    assert!(trainer.updates()[0].in_place);
    let shared = Arc::new(SharedBindings::new(start));
    let ins = vec![data(&[4, 8], DType::F32, 2, false)];
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (infer, shared, ins) = (Arc::clone(&infer), Arc::clone(&shared), ins.clone());
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let b = shared.load();
                    let first = infer.run(&ins, &b).expect("run");
                    let again = infer.run(&ins, &b).expect("run");
                    assert_eq!(first, again, "a snapshot changed while in use");
                }
            })
        })
        .collect();
    for _ in 0..50 {
        trainer.step(&ins).expect("step");
        shared.store(trainer.bindings().clone());
    }
    for r in readers {
        r.join().expect("reader");
    }
    assert_eq!(shared.load().get("w"), trainer.bindings().get("w"));
}

#[test]
fn an_update_of_a_parameter_the_graph_does_not_read_is_stored_too() {
    // `count` is only written (a running statistic): its buffer is bound,
    // checked and written, though no node reads it.
    let mut g = Graph::new();
    let p = g.parameter("p", [3], DType::F64);
    let x = g.input("x", [3], DType::F64);
    let new = g.add(p, x).expect("new");
    let doubled = g.scale(x, 2.0).expect("doubled");
    g.set_outputs(&[new, doubled]).expect("outputs");
    let start = bind(&[
        ("p", data(&[3], DType::F64, 1, false)),
        ("count", data(&[3], DType::F64, 2, false)),
    ]);
    let ins = [data(&[3], DType::F64, 3, false)];
    let updates = [(0, "p".to_string()), (1, "count".to_string())];
    let mut t = Trainer::with_updates(&g, &updates, start.clone(), &JitOptions::default())
        .expect("trainer");
    assert!(t.updates().iter().all(|u| u.in_place), "{:?}", t.updates());
    assert!(t.outputs().is_empty());
    for _ in 0..2 {
        t.step(&ins).expect("step");
    }
    let expected = interpret(&g, &ins, &start.to_map()).expect("interp")[1].clone();
    assert_same(
        t.bindings().get("count").expect("count"),
        &expected,
        0.0,
        0.0,
    );
    let x2: Vec<f64> = ins[0].to_f64_vec().iter().map(|v| v * 2.0).collect();
    let p0 = start.get("p").expect("p").to_f64_vec();
    let p2: Vec<f64> = p0.iter().zip(&x2).map(|(p, x)| p + x).collect();
    assert_eq!(t.bindings().get("p").expect("p").to_f64_vec(), p2);
}

#[test]
fn a_fused_softmax_step_never_writes_a_parameter_it_reads() {
    // new = where(c, softmax(x), p): the fused softmax writes each row
    // before its select reads `p`, so the update must not go into p.
    let mut g = Graph::new();
    let p = g.parameter("p", [2, 5], DType::F32);
    let x = g.input("x", [2, 5], DType::F32);
    let c = g.input("c", [2, 5], DType::F32);
    let s = g.softmax(x, 1).expect("softmax");
    let new = g.select(c, s, p).expect("select");
    g.set_outputs(&[new]).expect("outputs");
    let start = bind(&[("p", data(&[2, 5], DType::F32, 5, false))]);
    let mask: Vec<f32> = (0..10).map(|i| f32::from(u8::from(i % 3 == 0))).collect();
    let mask = TensorData::f32([2, 5], mask).expect("mask");
    let ins = [data(&[2, 5], DType::F32, 6, false), mask];
    let t = compare(&g, &[(0, "p".into())], &start, &ins, 3);
    assert!(
        !t.updates()[0].in_place,
        "the softmax row is written before p is read"
    );
}
