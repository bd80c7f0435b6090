//! Proves that `CompiledGraph::run_into`, `BoundGraph::run_into` and `Trainer::step` allocate
//! nothing once warm: a counting global allocator around the calls (its own
//! test binary, no harness, so no other test allocates concurrently).

use cranelora_graph::training::{training_step, Adam, Loss, Optimizer, Trainable};
use cranelora_graph::{DType, Graph, TensorData};
use cranelora_jit::{compile, Bindings, JitOptions, Trainer};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
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

fn main() {
    run_into_allocates_nothing();
    a_training_step_allocates_nothing();
}

/// An AdamW step of a LoRA layer (loss, gradients, optimizer state).
fn a_training_step_allocates_nothing() {
    let mut g = Graph::new();
    let x = g.input("x", [16, 24], DType::F32);
    let w = g.parameter("fc.weight", [24, 12], DType::F32);
    let a = g.parameter("fc.lora_a", [24, 4], DType::F32);
    let b = g.parameter("fc.lora_b", [4, 12], DType::F32);
    let xw = g.matmul(x, w).expect("xw");
    let xa = g.matmul(x, a).expect("xa");
    let xab = g.matmul(xa, b).expect("xab");
    let y = g.add(xw, xab).expect("y");
    let y = g.gelu_tanh(y).expect("gelu");
    g.set_outputs(&[y]).expect("y");
    let lora = Trainable::NameContains("lora_".into());
    let opt = Optimizer::Adam(Adam::adamw(1e-3, 0.01));
    let step = training_step(&g, Loss::Mse, &lora, &opt).expect("step");
    let mut params = Bindings::new();
    for (name, shape) in [
        ("fc.weight", [24, 12]),
        ("fc.lora_a", [24, 4]),
        ("fc.lora_b", [4, 12]),
    ] {
        let n = shape[0] * shape[1];
        let v = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 20.0).collect();
        params
            .insert(name, TensorData::f32(shape, v).expect("sized"))
            .expect("bind");
    }
    let mut t = Trainer::new(&step, params, &JitOptions::default()).expect("trainer");
    let inputs = [
        TensorData::f32([16, 24], (0..384).map(|i| (i % 17) as f32 / 17.0).collect()).expect("x"),
        TensorData::f32([16, 12], vec![0.25; 192]).expect("target"),
    ];
    let first = t.step(&inputs).expect("warm-up");
    let before = ALLOCS.load(Ordering::SeqCst);
    let mut last = first;
    for _ in 0..100 {
        last = t.step(&inputs).expect("step");
    }
    let allocated = ALLOCS.load(Ordering::SeqCst) - before;
    assert_eq!(
        allocated, 0,
        "Trainer::step allocated {allocated} times in 100 steps"
    );
    assert!(last < first, "the loss went down: {first} → {last}");
    println!("alloc: Trainer::step made 0 allocations in 100 AdamW steps");
}

fn run_into_allocates_nothing() {
    // A graph with a GEMM (workspace from the arena), a kernel call, a
    // reduction, a gather summed and normalized, and data movement.
    let mut g = Graph::new();
    let x = g.input("x", [16, 40], DType::F32);
    let w = g.parameter("w", [40, 24], DType::F32);
    let wc = g
        .constant(TensorData::f32([24, 8], vec![0.5; 192]).expect("192"))
        .expect("c");
    let table = g.input("table", [10, 8], DType::F32);
    let ids = g.input("ids", [16], DType::I64);
    let y = g.matmul(x, w).expect("mm");
    let y = g.gelu_tanh(y).expect("gelu");
    let y = g.matmul(y, wc).expect("mm");
    let e = g
        .push(cranelora_graph::Op::Gather, &[table, ids])
        .expect("gather");
    let y = g.add(y, e).expect("add");
    // A LayerNorm over the lookup's sum: one fused helper call (sum_norm).
    let y = g.layer_norm(y, None, 1, 1e-5).expect("norm");
    let y = g.softmax(y, 1).expect("softmax");
    let t = g.transpose(y, &[1, 0]).expect("t");
    let s = g
        .reduce(t, cranelora_graph::ReduceKind::Sum, &[1], false)
        .expect("sum");
    g.set_outputs(&[y, s]).expect("outputs");

    let c = compile(&g, &JitOptions::default()).expect("compile");
    assert_eq!(c.report().fused_sum_norms, 1);
    let mut b = Bindings::new();
    b.insert(
        "w",
        TensorData::f32([40, 24], vec![0.01; 960]).expect("960"),
    )
    .expect("w");
    let inputs = [
        TensorData::f32([16, 40], (0..640).map(|i| i as f32 / 640.0).collect()).expect("x"),
        TensorData::f32([10, 8], vec![0.1; 80]).expect("table"),
        TensorData::i64([16], (0..16).map(|i| i % 10).collect()).expect("ids"),
    ];
    let mut outs = c.run(&inputs, &b).expect("warm-up");
    let before = ALLOCS.load(Ordering::SeqCst);
    for _ in 0..100 {
        c.run_into(&inputs, &b, &mut outs).expect("run");
    }
    let allocated = ALLOCS.load(Ordering::SeqCst) - before;
    assert_eq!(
        allocated, 0,
        "run_into allocated {allocated} times in 100 calls"
    );
    println!("alloc: run_into made 0 allocations in 100 calls");

    let c = std::sync::Arc::new(c);
    let mut bound = c.bind(std::sync::Arc::new(b)).expect("bind");
    let expected = outs.clone();
    let before = ALLOCS.load(Ordering::SeqCst);
    for _ in 0..100 {
        bound.run_into(&inputs, &mut outs).expect("run");
    }
    let allocated = ALLOCS.load(Ordering::SeqCst) - before;
    assert_eq!(
        allocated, 0,
        "BoundGraph::run_into allocated {allocated} times in 100 calls"
    );
    assert_eq!(outs, expected);
    println!("alloc: BoundGraph::run_into made 0 allocations in 100 calls");
}
