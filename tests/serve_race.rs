//! Serving while other threads bind, unbind and swap adapters: every call
//! runs with one whole adapter set, and a mixed batch's rows run with the
//! adapters they name in the set the call started with — never with the
//! adapter that took over a slot meanwhile. No test asserts on timing or
//! on a thread having seen a change: each result must equal a reference
//! for one of the states it may have started in.

use cranelora::core::export::tensor_to_data;
use cranelora::core::lora::LoraConfig;
use cranelora::core::testing::assert_close;
use cranelora::graph::TensorData;
use cranelora::jit::serve::{Adapter, AdapterServer};
use cranelora::jit::Error;
use cranelora::serving::{adapter_of, ServingConfig};
use std::sync::Arc;

use crate::serve_support;
use serve_support::*;

#[test]
fn concurrent_swaps_and_calls_each_use_one_whole_adapter() {
    let srv = Arc::new(server::<f32>(&ServingConfig::new(8)));
    let x = input::<f32>();
    let xs = [tensor_to_data(&x)];
    let mut expected = Vec::new();
    for (i, name) in ["a", "b"].iter().enumerate() {
        let m = adapted::<f32>(LoraConfig::new(4 + 4 * i), 30 + i as u64);
        srv.bind_adapter(name, &adapter_of(&m).expect("a"))
            .expect("bind");
        srv.set_active(Some(name)).expect("active");
        expected.push(srv.run(&xs).expect("run")[0].clone());
    }
    let swapper = Arc::clone(&srv);
    let swaps = while_writing(
        3,
        move |n| {
            swapper.set_active(Some(["a", "b"][n % 2])).expect("swap");
        },
        move || {
            let mut out = srv.run(&xs).expect("run");
            for _ in 0..200 {
                srv.run_into(&xs, &mut out).expect("run");
                assert!(
                    out[0] == expected[0] || out[0] == expected[1],
                    "a torn adapter"
                );
            }
        },
    );
    assert!(swaps > 0);
}

/// Rebinding an adapter (a new copy of the mixed stacks) while other
/// threads run mixed batches: every call sees one whole set — each batch
/// equals the batch under the old or the new weights, bit for bit.
#[test]
fn concurrent_rebinds_and_mixed_calls_each_use_one_whole_set() {
    let mut cfg = ServingConfig::new(8);
    cfg.mixed_capacity = 3;
    let srv = Arc::new(server::<f32>(&cfg));
    let xs = tensor_to_data(&input::<f32>());
    let versions: Vec<_> = (0..2)
        .map(|i| adapter_of(&adapted::<f32>(LoraConfig::new(3 + i), 60 + i as u64)).expect("a"))
        .collect();
    let fixed = adapter_of(&adapted::<f32>(LoraConfig::new(5), 70)).expect("a");
    srv.bind_adapter("fixed", &fixed).expect("bind");
    let rows: Vec<Option<&str>> = (0..ROWS)
        .map(|r| [Some("fixed"), Some("b"), None][r % 3])
        .collect();
    let inputs = [xs];
    let mut expected = Vec::new();
    for v in &versions {
        srv.bind_adapter("b", v).expect("bind");
        expected.push(srv.run_batch_named(&inputs, &rows).expect("batch")[0].clone());
    }
    assert_ne!(expected[0], expected[1]);
    let binder = Arc::clone(&srv);
    let binds = while_writing(
        2,
        move |n| {
            binder.bind_adapter("b", &versions[n % 2]).expect("rebind");
        },
        move || {
            let mut out = srv.run_batch_named(&inputs, &rows).expect("batch");
            for _ in 0..200 {
                srv.run_batch_named_into(&inputs, &rows, &mut out)
                    .expect("batch");
                assert!(
                    out[0] == expected[0] || out[0] == expected[1],
                    "a torn adapter set"
                );
            }
        },
    );
    assert!(binds > 0);
}

/// Row `r` of the batch run one row at a time: `x` through the
/// single-adapter function with `rows[r]` active.
fn row_by_row(srv: &AdapterServer, xs: &[TensorData], rows: &[Option<&str>]) -> Vec<f64> {
    let o = SIZES[2];
    let mut out = Vec::new();
    for (r, name) in rows.iter().enumerate() {
        srv.set_active(*name).expect("active");
        let y = srv.run(xs).expect("single")[0].to_f64_vec();
        out.extend_from_slice(&y[r * o..(r + 1) * o]);
    }
    srv.set_active(None).expect("none");
    out
}

fn adapter(rank: usize, seed: u64) -> Adapter {
    adapter_of(&adapted::<f32>(LoraConfig::new(rank), seed)).expect("adapter")
}

/// The rows of a batch: `fixed` and `name` alternating with the base model.
fn rows_with(name: &str) -> [Option<&str>; ROWS] {
    let n = Some(name);
    [Some("fixed"), n, None, n, Some("fixed"), n]
}

/// A server with `fixed` in slot 0 and `b` in slot 1 of 2, and the
/// row-by-row references of `rows_with("b")` and `rows_with("c")`.
fn two_slot_server() -> (AdapterServer, Vec<TensorData>, Vec<f64>, Vec<f64>) {
    let mut cfg = ServingConfig::new(8);
    cfg.mixed_capacity = 2;
    let srv = server::<f32>(&cfg);
    let xs = vec![tensor_to_data(&input::<f32>())];
    srv.bind_adapter("fixed", &adapter(5, 80)).expect("fixed");
    srv.bind_adapter("c", &adapter(3, 82)).expect("c");
    let want_c = row_by_row(&srv, &xs, &rows_with("c"));
    srv.unbind_adapter("c").expect("unbind c");
    srv.bind_adapter("b", &adapter(4, 81)).expect("b");
    let want_b = row_by_row(&srv, &xs, &rows_with("b"));
    assert_eq!((srv.slot_of("fixed"), srv.slot_of("b")), (Some(0), Some(1)));
    (srv, xs, want_b, want_c)
}

fn is_unbound(e: &Error, name: &str) -> bool {
    let text = e.to_string();
    text.contains("no adapter of that name is bound") && text.contains(&format!("{name:?}"))
}

/// Ids resolved in a snapshot, then `b` unbound and `c` bound into `b`'s
/// slot: the snapshot still runs those ids (and `b` by name) with `b`'s
/// weights; a new call by name runs `c` and rejects `b`.
#[test]
fn a_snapshot_runs_the_adapters_its_names_resolved_to_after_a_slot_changes_hands() {
    let (srv, xs, want_b, want_c) = two_slot_server();
    let snap = srv.mixed_snapshot().expect("mixed");
    let ids = snap.row_ids(&rows_with("b")).expect("ids");
    srv.unbind_adapter("b").expect("unbind b");
    srv.bind_adapter("c", &adapter(3, 82)).expect("c");
    assert_eq!(srv.slot_of("c"), snap.slot_of("b"), "c took b's slot");
    let fixed = Some("fixed".to_string());
    assert_eq!(snap.slots(), [fixed.clone(), Some("b".into())]);
    assert_eq!(
        srv.mixed_snapshot().expect("mixed").slots(),
        [fixed, Some("c".into())]
    );

    let with_ids = [xs[0].clone(), ids];
    let got = snap.run_batch(&with_ids).expect("snapshot ids")[0].to_f64_vec();
    assert_close(&got, &want_b, tol::<f32>(), tol::<f32>());
    let got = snap
        .run_batch_named(&xs, &rows_with("b"))
        .expect("snapshot names");
    assert_close(&got[0].to_f64_vec(), &want_b, tol::<f32>(), tol::<f32>());
    let e = snap
        .run_batch_named(&xs, &rows_with("c"))
        .expect_err("c is not in the snapshot");
    assert!(is_unbound(&e, "c"), "{e}");

    let got = srv
        .run_batch_named(&xs, &rows_with("c"))
        .expect("c by name");
    assert_close(&got[0].to_f64_vec(), &want_c, tol::<f32>(), tol::<f32>());
    let e = srv
        .run_batch_named(&xs, &rows_with("b"))
        .expect_err("b is unbound");
    assert!(is_unbound(&e, "b"), "{e}");
    let e = srv
        .run_batch_named(&xs, &rows_with("c")[..5])
        .expect_err("5 of 6 rows");
    assert!(e.to_string().contains("expected 6 adapter names"), "{e}");
    let mut bare = ServingConfig::new(8);
    bare.mixed_capacity = 0;
    let e = server::<f32>(&bare)
        .run_batch_named(&xs, &[None; ROWS])
        .expect_err("no mixed");
    assert!(e.to_string().contains("mixed_capacity = 0"), "{e}");
}

/// One thread hands slot 1 back and forth between `b` and `c` (unbind one,
/// bind the other) while others run mixed batches naming `b` or `c`: each
/// call either fails because its adapter was unbound when it started, or
/// equals the row-by-row result of the adapters it named — never a row run
/// with the adapter that held the slot by the time the ids were used.
#[test]
fn concurrent_slot_handovers_never_run_a_row_with_an_adapter_it_did_not_name() {
    let (srv, xs, want_b, want_c) = two_slot_server();
    let srv = Arc::new(srv);
    let (ab, ac) = (adapter(4, 81), adapter(3, 82));
    // The two references differ on every row naming b or c (so a row run
    // with the other adapter cannot pass the comparison).
    let o = SIZES[2];
    for r in [1, 3, 5] {
        let gap = (r * o..(r + 1) * o).map(|i| (want_b[i] - want_c[i]).abs());
        assert!(gap.fold(0.0, f64::max) > 1e-2, "row {r}: b and c agree");
    }
    let writer = Arc::clone(&srv);
    let handovers = while_writing(
        3,
        move |n| {
            let (from, to, a) = [("b", "c", &ac), ("c", "b", &ab)][n % 2];
            writer.unbind_adapter(from).expect("unbind");
            writer.bind_adapter(to, a).expect("bind");
        },
        move || {
            let mut out = srv.run_batch_named(&xs, &[None; ROWS]).expect("base");
            for i in 0..200 {
                let (name, want) = [("b", &want_b), ("c", &want_c)][i % 2];
                match srv.run_batch_named_into(&xs, &rows_with(name), &mut out) {
                    Ok(()) => assert_close(&out[0].to_f64_vec(), want, tol::<f32>(), tol::<f32>()),
                    Err(e) => assert!(is_unbound(&e, name), "{e}"),
                }
            }
        },
    );
    assert!(handovers > 0);
}
