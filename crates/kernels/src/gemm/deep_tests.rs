//! The deep-block kernels (`Family::for_product`): which products take
//! them, their workspace, and their results against the reference GEMM.

use super::select::{blocking, blocking_for, HasFamily};
use super::tests::{check_product, Rng};
use super::*;
use crate::testing::{check_close, Nan};

/// The rule on both element types: short `A`, prepacked `B`, `k` more than
/// one regular depth block and at most one deep block.
fn check_rule<E: HasFamily + Scalar>(mc: usize) {
    let fam = E::family(Isa::Avx512);
    let deep = fam.deep.expect("AVX-512 has deep kernels");
    let kc = fam.blocking.kc;
    let cases = [
        ((64, 1024, true), true),                  // W1's layers
        ((64, 1024, false), false),                // B packed per call
        ((mc, kc + 1, true), true),                // one row block, k just past kc
        ((mc + 1, 1024, true), false),             // two row blocks of A
        ((64, kc, true), false),                   // one regular block already
        ((1, deep.blocking.kc, true), true),       // one row
        ((64, deep.blocking.kc + 1, true), false), // deeper than one block
    ];
    for ((m, k, packed), expect_deep) in cases {
        let got = fam.for_product(m, k, packed);
        assert_eq!(
            std::ptr::eq(got, deep),
            expect_deep,
            "{} m {m} k {k} packed {packed}",
            E::DTYPE
        );
    }
    assert!(deep.deep.is_none() && deep.blocking.lda >= deep.blocking.kc);
    assert_eq!(
        (deep.blocking.mr, deep.blocking.nr, deep.blocking.mc),
        (fam.blocking.mr, fam.blocking.nr, fam.blocking.mc),
        "same tiles and row blocks (PackedRhs does not depend on kc)"
    );
}

#[test]
fn deep_kernels_run_short_products_with_prepacked_weights() {
    if !Isa::Avx512.available() {
        return;
    }
    check_rule::<f32>(144);
    check_rule::<f64>(96);
}

/// Short products with a prepacked `B` over one deep block, on one and two
/// threads: W1's shape, rows that are not a multiple of `mr` (23, one row,
/// `mc`), `k` just past a regular block and at the deep limit, `n` not a
/// multiple of `nr` and crossing a column block, random α/β/`A` layouts
/// (strided and transposed `A` included), on every available ISA.
fn check_deep<T: Scalar>(seed: u64, mc: usize) {
    let mut rng = Rng(seed);
    for threads in [1, 2] {
        crate::pool::set_threads(threads);
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            for shape in [
                (64, 1024, 1024),
                (23, 70, 257),
                (1, 1100, 700),
                (mc, 100, 1024),
                (64, 33, 300),
            ] {
                check_product::<T>(isa, &mut rng, shape, true);
            }
        }
    }
    crate::pool::set_threads(0);
}

#[test]
fn deep_block_products_match_reference_f32() {
    check_deep::<f32>(0xdee9_0f32_1024_0001, 144);
}

#[test]
fn deep_block_products_match_reference_f64() {
    check_deep::<f64>(0xdee9_0f64_1024_0002, 96);
}

/// `workspace_len` makes room for the deep kernels' `A` block, and a
/// workspace sized for the regular blocking (one thread's share) still
/// gives the reference result on the regular kernels.
fn check_fallback<T: Scalar>(seed: u64) {
    let (m, n, k) = (64, 96, 700);
    let isa = Isa::detect();
    let regular = driver::per_thread_len::<T>(blocking::<T>(isa), m, n, k, true);
    let deep = driver::per_thread_len::<T>(blocking_for::<T>(isa, m, k, true), m, n, k, true);
    assert!(workspace_len::<T>(m, n, k, true) >= deep);
    let mut rng = Rng(seed);
    let a: Vec<T> = (0..m * k).map(|_| T::from_f64_lossy(rng.unit())).collect();
    let b: Vec<T> = (0..k * n).map(|_| T::from_f64_lossy(rng.unit())).collect();
    let (a, b) = (
        MatRef::new(&a, m, k).expect("fits"),
        MatRef::new(&b, k, n).expect("fits"),
    );
    let mut expected = vec![T::zero(); m * n];
    reference::gemm(
        T::one(),
        a,
        b,
        T::zero(),
        &mut MatMut::new(&mut expected, m, n).expect("fits"),
    );
    let packed = PackedRhs::pack(b);
    for len in [regular, deep, workspace_len::<T>(m, n, k, true)] {
        let mut c = vec![T::nan(); m * n];
        let mut ws = vec![T::nan(); len];
        let cv = MatMut::new(&mut c, m, n).expect("fits");
        gemm(T::one(), a, Rhs::Packed(&packed), T::zero(), cv, &mut ws).expect("valid");
        let tol = 4.0 * (k as f64 + 2.0) * T::EPSILON_F64 * (k as f64 + 1.0);
        check_close(&c, &expected, tol, tol, Nan::Mismatch)
            .unwrap_or_else(|e| panic!("{} workspace {len}: {e}", T::DTYPE));
    }
}

#[test]
fn short_workspace_keeps_the_regular_kernels_f32_f64() {
    check_fallback::<f32>(0xfa11_bac4_0f32_0003);
    check_fallback::<f64>(0xfa11_bac4_0f64_0004);
}
