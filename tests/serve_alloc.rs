//! Swapping the active adapter and calling the serving functions allocate
//! nothing once warm: a global allocator that counts the allocations of
//! the measuring thread only (so the test harness's threads do not count).

use cranelora::core::export::{tensor_to_data, InputSpec};
use cranelora::core::layers::{Dense, Sequential};
use cranelora::core::lora::{LoraAdapter, LoraConfig, LoraInit};
use cranelora::core::{Activation, Rng, Tensor};
use cranelora::graph::TensorData;
use cranelora::serving::{adapter_of, compile_server, ServingConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn model(rank: usize, seed: u64) -> Sequential<f32> {
    let mut rng = Rng::new(1);
    let mut m = Sequential::new();
    for k in 0..2 {
        let d = Dense::new(16, 16, true, Activation::Relu, &mut rng).expect("dense");
        let cfg = LoraConfig::new(rank)
            .with_init(LoraInit::Random)
            .with_seed(seed + k);
        m.push(
            &format!("fc{k}"),
            LoraAdapter::wrap(d, cfg).expect("adapter"),
        )
        .expect("push");
    }
    m
}

#[test]
fn swaps_and_calls_allocate_nothing_once_warm() {
    let mut cfg = ServingConfig::new(4);
    cfg.mixed_capacity = 2;
    let srv =
        compile_server(&model(4, 1), &[InputSpec::float("x", &[8, 16])], &cfg).expect("server");
    srv.bind_adapter("a", &adapter_of(&model(4, 2)).expect("a"))
        .expect("a");
    srv.bind_adapter("b", &adapter_of(&model(2, 3)).expect("b"))
        .expect("b");
    let x = tensor_to_data(&Tensor::<f32>::random_normal(
        &[8, 16],
        0.0,
        1.0,
        &mut Rng::new(4),
    ));
    let ids = TensorData::i64([8], vec![0, 0, 1, -1, 1, 0, 1, 1]).expect("ids");
    let (xs, mixed) = ([x.clone()], [x, ids]);
    let mut y = srv.run(&xs).expect("run");
    let mut ym = srv.run_batch(&mixed).expect("mixed");
    let (a, b) = (Some("a"), Some("b"));
    let named = [a, a, b, None, b, a, b, b];
    for name in ["a", "b", "a"] {
        srv.set_active(Some(name)).expect("swap");
        srv.run_into(&xs, &mut y).expect("run");
        srv.run_batch_into(&mixed, &mut ym).expect("mixed");
        srv.run_batch_named_into(&xs, &named, &mut ym)
            .expect("named");
    }
    COUNTING.with(|c| c.set(true));
    for i in 0..500 {
        srv.set_active(Some(["a", "b"][i % 2])).expect("swap");
        srv.run_into(&xs, &mut y).expect("run");
        srv.run_batch_into(&mixed, &mut ym).expect("mixed");
        srv.run_batch_named_into(&xs, &named, &mut ym)
            .expect("named");
    }
    srv.set_active(None).expect("none");
    COUNTING.with(|c| c.set(false));
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed),
        0,
        "allocations in 500 swaps and calls"
    );
}
