//! Compiled code is freed on drop: the bytes of anonymous executable
//! mappings (where Cranelift's JIT puts code, one mmap per module, rounded
//! to pages) return to their level after a fixed number of compile/drop
//! cycles. Its own test binary (one test), so no other test compiles
//! concurrently. Linux only (reads /proc/self/maps); elsewhere it checks
//! nothing but the cycles themselves.

mod common;

use common::data;
use cranelora_graph::{DType, Graph};
use cranelora_jit::{compile, Bindings, JitOptions};

/// Bytes of anonymous (no backing file) executable mappings.
fn exec_bytes() -> Option<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut total = 0;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next()?, f.next()?);
        let path = f.nth(3); // after offset, device, inode
        if !perms.contains('x') || path.is_some() {
            continue;
        }
        let (a, b) = range.split_once('-')?;
        let (a, b) = (
            usize::from_str_radix(a, 16).ok()?,
            usize::from_str_radix(b, 16).ok()?,
        );
        total += b - a;
    }
    Some(total)
}

fn graph() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [8, 33], DType::F32);
    let w = g.parameter("w", [33, 17], DType::F32);
    let y = g.matmul(x, w).expect("mm");
    let y = g.gelu(y).expect("gelu");
    let y = g.softmax(y, 1).expect("softmax");
    g.set_outputs(&[y]).expect("node");
    g
}

const CYCLES: usize = 200;
const HELD: usize = 20;

#[test]
fn compiled_code_is_released_on_drop() {
    let g = graph();
    let mut b = Bindings::new();
    b.insert("w", data(&[33, 17], DType::F32, 1, false))
        .expect("w");
    let x = [data(&[8, 33], DType::F32, 2, false)];
    let cycle = || {
        let c = compile(&g, &JitOptions::default()).expect("compile");
        c.run(&x, &b).expect("run");
    };
    for _ in 0..5 {
        cycle();
    }
    let page = 4096;
    let Some(base) = exec_bytes() else {
        (0..CYCLES).for_each(|_| cycle());
        return;
    };
    // The measure sees JIT code: each live graph holds at least a page.
    let held: Vec<_> = (0..HELD)
        .map(|_| compile(&g, &JitOptions::default()).expect("compile"))
        .collect();
    let live = exec_bytes().expect("maps");
    assert!(
        live >= base + HELD * page,
        "{HELD} live graphs: {base} → {live} executable bytes"
    );
    drop(held);
    let freed = exec_bytes().expect("maps");
    assert!(freed <= base + 4 * page, "after drop: {base} → {freed}");
    for _ in 0..CYCLES {
        cycle();
    }
    let after = exec_bytes().expect("maps");
    assert!(
        after <= base + 4 * page,
        "{CYCLES} compile/run/drop cycles: {base} → {after} executable bytes \
         (a leak would add ≥ {} bytes)",
        CYCLES * page
    );
}
