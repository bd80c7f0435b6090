//! Epilogues and batched products against the reference loop followed by
//! separate passes, one per epilogue step, f32 and f64.

use super::tests::Rng;
use super::*;
use crate::math::{apply_inplace, Func};
use crate::testing::{check_close, Nan};

fn random<T: Scalar>(rng: &mut Rng, len: usize) -> Vec<T> {
    (0..len).map(|_| T::from_f64_lossy(rng.unit())).collect()
}

/// The operands of one epilogue: XA (m×r), LB (r×n), scale, bias, R (m×n).
struct Data<T> {
    xa: Vec<T>,
    lb: Vec<T>,
    scale: Vec<T>,
    bias: Vec<T>,
    res: Vec<T>,
    r: usize,
}

impl<T: Scalar> Data<T> {
    fn new(rng: &mut Rng, m: usize, n: usize) -> Self {
        let r = 1 + rng.below(5);
        Self {
            xa: random(rng, m * r),
            lb: random(rng, r * n),
            scale: random(rng, n),
            bias: random(rng, n),
            res: random(rng, m * n),
            r,
        }
    }

    /// The epilogue with the steps of `mask` (bits: lora, scale, bias, act, residual).
    fn epilogue(&self, mask: u32, act: Activation, (m, n): (usize, usize)) -> Epilogue<'_, T> {
        let on = |bit: u32| mask & (1 << bit) != 0;
        Epilogue {
            lora: on(0).then(|| LoraTerm {
                xa: MatRef::new(&self.xa, m, self.r).expect("fits"),
                b: MatRef::new(&self.lb, self.r, n).expect("fits"),
                scale: T::from_f64_lossy(2.0),
                ids: None,
            }),
            col_scale: on(1).then_some(&self.scale[..]),
            bias: on(2).then_some(&self.bias[..]),
            activation: on(3).then_some(act),
            act_grad: None,
            residual: on(4).then(|| {
                (
                    MatRef::new(&self.res, m, n).expect("fits"),
                    T::from_f64_lossy(0.5),
                )
            }),
        }
    }
}

/// The epilogue applied to a finished `c` (m×n, contiguous) in separate passes.
fn separate_passes<T: Scalar>(ep: &Epilogue<'_, T>, c: &mut [T], n: usize) {
    let rows = c.len() / n.max(1);
    if let Some(l) = &ep.lora {
        let r = l.xa.cols();
        for i in 0..rows {
            // Per-row adapters: row i reads block ids[i] of the B stack.
            let block = match l.ids {
                Some(ids) if ids[i] < 0 => continue,
                Some(ids) => ids[i] as usize * r,
                None => 0,
            };
            for j in 0..n {
                let dot = (0..r).fold(T::zero(), |s, p| s + l.xa.at(i, p) * l.b.at(block + p, j));
                c[i * n + j] += l.scale * dot;
            }
        }
    }
    let each = |c: &mut [T], f: &dyn Fn(usize, T) -> T| {
        c.iter_mut().enumerate().for_each(|(e, x)| *x = f(e, *x));
    };
    if let Some(s) = ep.col_scale {
        each(c, &|e, x| x * s[e % n]);
    }
    if let Some(b) = ep.bias {
        each(c, &|e, x| x + b[e % n]);
    }
    match ep.activation {
        Some(Activation::Relu) => each(c, &|_, x| {
            if x > T::zero() || x.is_nan() {
                x
            } else {
                T::zero()
            }
        }),
        Some(Activation::Func(f)) => apply_inplace(f, c),
        None => {}
    }
    if let Some((r, rho)) = &ep.residual {
        each(c, &|e, x| x + *rho * r.at(e / n, e % n));
    }
}

const ACTS: [Activation; 4] = [
    Activation::Relu,
    Activation::Func(Func::GeluTanh),
    Activation::Func(Func::GeluErf),
    Activation::Func(Func::Silu),
];

fn check_epilogues<T: Scalar>(seed: u64) {
    let mut rng = Rng(seed);
    // Edge sizes, several cache blocks in k, m and n, and threaded sizes.
    let shapes = [
        (1, 1, 1),
        (7, 33, 5),
        (150, 40, 300),
        (3, 1100, 5),
        (64, 200, 100),
        (13, 70, 600),
        // One deep depth block (`Family::for_product`) with a prepacked B.
        (40, 70, 520),
    ];
    for (s, &(m, n, k)) in shapes.iter().enumerate() {
        let (a, b) = (random::<T>(&mut rng, m * k), random::<T>(&mut rng, k * n));
        let (a, b) = (
            MatRef::new(&a, m, k).expect("fits"),
            MatRef::new(&b, k, n).expect("fits"),
        );
        let packed = PackedRhs::pack(b);
        let data = Data::<T>::new(&mut rng, m, n);
        for mask in 0..32u32 {
            let ep = data.epilogue(mask, ACTS[(mask as usize + s) % 4], (m, n));
            let beta = T::from_f64_lossy([0.0, 1.0][rng.below(2)]);
            let c0 = random::<T>(&mut rng, m * n);
            let mut expected = c0.clone();
            reference::gemm(
                T::one(),
                a,
                b,
                beta,
                &mut MatMut::new(&mut expected, m, n).expect("fits"),
            );
            separate_passes(&ep, &mut expected, n);
            let rhs = if mask % 2 == 0 {
                Rhs::Packed(&packed)
            } else {
                Rhs::Mat(b)
            };
            let mut actual = c0.clone();
            let cv = MatMut::new(&mut actual, m, n).expect("fits");
            let mut ws = vec![T::nan(); workspace_len::<T>(m, n, k, mask % 2 == 0)];
            gemm_ep(T::one(), a, rhs, beta, cv, &mut ws, &ep).expect("valid product");
            let tol = 8.0 * (k as f64 + 8.0) * T::EPSILON_F64 * (k as f64 + 1.0);
            check_close(&actual, &expected, tol, tol, Nan::Mismatch)
                .unwrap_or_else(|e| panic!("{m}×{n}×{k} epilogue {:?}: {e}", ep.spec()));
        }
    }
}

#[test]
fn epilogue_matches_separate_passes_f32() {
    check_epilogues::<f32>(0x1234_5678_9abc_def1);
}

#[test]
fn epilogue_matches_separate_passes_f64() {
    check_epilogues::<f64>(0x0fed_cba9_8765_4321);
}

#[test]
fn epilogue_shapes_are_checked() {
    let (a, b) = (vec![1.0f32; 4 * 3], vec![1.0f32; 3 * 5]);
    let (a, b) = (
        MatRef::new(&a, 4, 3).expect("fits"),
        MatRef::new(&b, 3, 5).expect("fits"),
    );
    let bias = [0.0f32; 4];
    let mut c = vec![0.0f32; 20];
    let mut ws = vec![0.0f32; workspace_len::<f32>(4, 5, 3, false)];
    let ep = Epilogue {
        bias: Some(&bias[..]),
        ..Epilogue::none()
    };
    let cv = MatMut::new(&mut c, 4, 5).expect("fits");
    let err = gemm_ep(1.0, a, Rhs::Mat(b), 0.0, cv, &mut ws, &ep).unwrap_err();
    assert!(err.to_string().contains("bias"), "{err}");
}

/// Batches of every kind against one reference product per entry.
fn check_batches<T: Scalar>(seed: u64) {
    let mut rng = Rng(seed);
    // (count, m, n, k, offsets kind): 0 consecutive A + shared B (one
    // product), 1 per-entry B (split by entries), 2 shared B but A reused
    // (a broadcast), 3 large entries run in turn.
    let cases = [
        (6, 5, 7, 3, 0),
        (96, 16, 16, 8, 1),
        (9, 9, 4, 11, 2),
        (3, 70, 90, 200, 1),
        (1, 3, 3, 3, 1),
    ];
    for &(count, m, n, k, kind) in &cases {
        let offsets: Vec<(usize, usize)> = (0..count)
            .map(|i| match kind {
                0 => (i * m * k, 0),
                1 => (i * m * k, i * k * n),
                _ => ((i % 3) * m * k, 0),
            })
            .collect();
        let (a, b) = (
            random::<T>(&mut rng, count * m * k),
            random::<T>(&mut rng, count * k * n),
        );
        let data = Data::<T>::new(&mut rng, count * m, n);
        let ep = data.epilogue(0b11111, Activation::Func(Func::GeluTanh), (count * m, n));
        let mut expected = vec![T::zero(); count * m * n];
        for (i, &(ao, bo)) in offsets.iter().enumerate() {
            let ai = MatRef::new(&a[ao..ao + m * k], m, k).expect("fits");
            let bi = MatRef::new(&b[bo..bo + k * n], k, n).expect("fits");
            let mut ci =
                MatMut::new(&mut expected[i * m * n..(i + 1) * m * n], m, n).expect("fits");
            reference::gemm(T::one(), ai, bi, T::zero(), &mut ci);
        }
        separate_passes(&ep, &mut expected, n);
        let batch = Batch {
            m,
            n,
            k,
            offsets: &offsets,
            layout: None,
        };
        let packed = PackedRhs::pack(MatRef::new(&b[..k * n], k, n).expect("fits"));
        let rhs = if kind == 1 {
            BatchRhs::Entries(&b)
        } else {
            BatchRhs::Packed(&packed)
        };
        let mut actual = vec![T::nan(); count * m * n];
        let mut ws = vec![T::nan(); batched_workspace_len::<T>(count, m, n, k, kind != 1)];
        gemm_batched(&batch, &a, rhs, &mut actual, &mut ws, &ep).expect("valid batch");
        let tol = 8.0 * (k as f64 + 8.0) * T::EPSILON_F64 * (k as f64 + 1.0);
        check_close(&actual, &expected, tol, tol, Nan::Mismatch)
            .unwrap_or_else(|e| panic!("batch {count}×{m}×{n}×{k} kind {kind}: {e}"));
    }
}

#[test]
fn batched_products_match_per_entry_reference_f32() {
    check_batches::<f32>(0x5555_aaaa_1234_0001);
}

#[test]
fn batched_products_match_per_entry_reference_f64() {
    check_batches::<f64>(0x5555_aaaa_1234_0002);
}

#[test]
fn batched_rejects_entries_past_their_buffers() {
    let a = vec![0.0f64; 8];
    let mut c = vec![0.0f64; 8];
    let mut ws = vec![0.0f64; batched_workspace_len::<f64>(2, 2, 2, 2, false)];
    let batch = Batch {
        m: 2,
        n: 2,
        k: 2,
        offsets: &[(0, 0), (6, 4)],
        layout: None,
    };
    let err = gemm_batched(
        &batch,
        &a,
        BatchRhs::Entries(&a),
        &mut c,
        &mut ws,
        &Epilogue::none(),
    );
    assert!(matches!(err, Err(KernelError::Length { .. })), "{err:?}");
}

/// The LoRA step alone, row by row at column offsets, against the sum
/// `Σ_p s·XA[i, p]·B[p, j]` in f64: ranks 1–64, row lengths around the
/// register chunk (31, 32, 33, 70), contiguous and transposed `B`.
fn lora_rows_match_the_rank_sum<T: Scalar>() {
    let mut rng = Rng(41);
    let (m, n) = (3, 75);
    for r in [1, 5, 16, 64] {
        let xa: Vec<T> = random(&mut rng, m * r);
        let lb: Vec<T> = random(&mut rng, r * n);
        let lb_t: Vec<T> = (0..n * r).map(|q| lb[(q % r) * n + q / r]).collect();
        let scale = T::from_f64_lossy(0.75);
        let views = [
            MatRef::new(&lb, r, n).expect("fits"),
            MatRef::new(&lb_t, n, r).expect("fits").t(),
        ];
        for b in views {
            let ep = Epilogue {
                lora: Some(LoraTerm {
                    xa: MatRef::new(&xa, m, r).expect("fits"),
                    b,
                    scale,
                    ids: None,
                }),
                ..Epilogue::none()
            };
            for (j0, len) in [(0, 31), (0, 32), (3, 33), (5, 70), (0, n)] {
                for i in 0..m {
                    let base: Vec<T> = random(&mut rng, len);
                    let mut row = base.clone();
                    ep.apply_row(i, j0, &mut row);
                    let want: Vec<f64> = (0..len)
                        .map(|j| {
                            let term: f64 = (0..r)
                                .map(|p| {
                                    xa[i * r + p].to_f64_exact() * lb[p * n + j0 + j].to_f64_exact()
                                })
                                .sum();
                            base[j].to_f64_exact() + 0.75 * term
                        })
                        .collect();
                    let got: Vec<f64> = row.iter().map(|v| v.to_f64_exact()).collect();
                    let tol = 4.0 * (r as f64 + 2.0) * T::EPSILON_F64;
                    check_close(&got, &want, tol, tol, Nan::Mismatch)
                        .unwrap_or_else(|e| panic!("r {r} j0 {j0} len {len}: {e}"));
                }
            }
        }
    }
}

#[test]
fn lora_rows_match_the_rank_sum_f32_f64() {
    lora_rows_match_the_rank_sum::<f32>();
    lora_rows_match_the_rank_sum::<f64>();
}

/// The LoRA term as the driver runs it on the microkernels (a depth-`r`
/// pass per block of `C`, `B` read in place, edge columns row by row)
/// against the reference product plus the rank sum: several row and
/// column blocks, an edge micro-panel, threaded sizes, a transposed `XA`,
/// ranks around the kernels' depth block (r > kc falls back to the rows).
/// Runs `β·C0 + A·B` with epilogue `ep` (B prepacked for even `case`,
/// plain for odd) and compares it with `expected`, at a tolerance for a
/// depth of `A`'s columns plus the rank `r`.
#[allow(clippy::too_many_arguments)]
fn lora_product_matches<T: Scalar>(
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    (beta, mut actual): (T, Vec<T>),
    ep: &Epilogue<'_, T>,
    expected: &[T],
    r: usize,
    case: usize,
    what: &str,
) {
    let (m, n, k) = (a.rows(), b.cols(), a.cols());
    let packed = PackedRhs::pack(b);
    let rhs = [Rhs::Packed(&packed), Rhs::Mat(b)][case % 2];
    let cv = MatMut::new(&mut actual, m, n).expect("fits");
    let mut ws = vec![T::nan(); workspace_len::<T>(m, n, k, case.is_multiple_of(2))];
    gemm_ep(T::one(), a, rhs, beta, cv, &mut ws, ep).expect("valid product");
    let depth = (k + r) as f64;
    let tol = 8.0 * (depth + 8.0) * T::EPSILON_F64 * (depth + 1.0);
    check_close(&actual, expected, tol, tol, Nan::Mismatch)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

fn lora_pass_matches_reference<T: Scalar>() {
    let mut rng = Rng(77);
    let cases = [
        (150, 1100, 300, 16),
        (64, 1024, 1024, 16),
        (40, 96, 50, 64),
        (7, 64, 5, 300),
        (33, 45, 20, 1),
    ];
    for (case, &(m, n, k, r)) in cases.iter().enumerate() {
        let (a, b) = (random::<T>(&mut rng, m * k), random::<T>(&mut rng, k * n));
        let (a, b) = (
            MatRef::new(&a, m, k).expect("fits"),
            MatRef::new(&b, k, n).expect("fits"),
        );
        let xa: Vec<T> = random(&mut rng, m * r);
        let lb: Vec<T> = random(&mut rng, r * n);
        // Odd cases read XA through a transposed view (column stride ≠ 1).
        let xa_t: Vec<T> = (0..m * r).map(|q| xa[(q % m) * r + q / m]).collect();
        let xa_view = if case % 2 == 1 {
            MatRef::new(&xa_t, r, m).expect("fits").t()
        } else {
            MatRef::new(&xa, m, r).expect("fits")
        };
        let ep = Epilogue {
            lora: Some(LoraTerm {
                xa: xa_view,
                b: MatRef::new(&lb, r, n).expect("fits"),
                scale: T::from_f64_lossy(0.5),
                ids: None,
            }),
            bias: Some(&lb[..n]),
            ..Epilogue::none()
        };
        let c0 = random::<T>(&mut rng, m * n);
        let mut expected = c0.clone();
        let ev = &mut MatMut::new(&mut expected, m, n).expect("fits");
        reference::gemm(T::one(), a, b, T::one(), ev);
        separate_passes(&ep, &mut expected, n);
        let what = format!("{m}×{n}×{k} rank {r}");
        lora_product_matches(a, b, (T::one(), c0.clone()), &ep, &expected, r, case, &what);
    }
}

#[test]
fn lora_pass_matches_reference_f32_f64() {
    lora_pass_matches_reference::<f32>();
    lora_pass_matches_reference::<f64>();
}

/// Row ids for `m` rows over `stack` adapters: `Sorted(run)` gives runs of
/// `run` rows per adapter in order with the third run on no adapter (−1);
/// `Scattered` draws each row's id at random from `−1..stack`.
enum Ids {
    Sorted(usize),
    Scattered,
}

fn row_ids(rng: &mut Rng, m: usize, stack: usize, how: &Ids) -> Vec<i64> {
    (0..m)
        .map(|i| match how {
            Ids::Sorted(run) if i / run == 2 => -1,
            Ids::Sorted(run) => ((i / run) % stack) as i64,
            Ids::Scattered => rng.below(stack + 1) as i64 - 1,
        })
        .collect()
}

/// The LoRA term with per-row adapters (a mixed-adapter batch: `LB` the
/// stack of N adapters' `B`, each row picking one, id −1 none) through the
/// GEMM's epilogue against the reference product plus the per-row rank
/// sum: sorted runs longer and shorter than the microkernel pass's
/// minimum, runs crossing the `mc` row block, scattered ids, threaded
/// sizes (W1's 64 × 1024 × 1024 with 8 adapters of rank 16), fewer rows
/// than the pass needs, a prepacked and a per-call `B`.
fn grouped_lora_pass_matches_reference<T: Scalar>() {
    let mut rng = Rng(91);
    let cases = [
        ((64, 1024, 1024, 16, 8), Ids::Sorted(8)),
        ((64, 1024, 256, 16, 8), Ids::Scattered),
        ((300, 100, 40, 4, 3), Ids::Sorted(50)),
        ((50, 70, 30, 5, 4), Ids::Sorted(3)),
        ((3, 40, 20, 2, 2), Ids::Scattered),
    ];
    for (case, ((m, n, k, r, stack), how)) in cases.iter().enumerate() {
        let (m, n, k, r, stack) = (*m, *n, *k, *r, *stack);
        let (a, b) = (random::<T>(&mut rng, m * k), random::<T>(&mut rng, k * n));
        let (a, b) = (
            MatRef::new(&a, m, k).expect("fits"),
            MatRef::new(&b, k, n).expect("fits"),
        );
        let xa: Vec<T> = random(&mut rng, m * r);
        let lb: Vec<T> = random(&mut rng, stack * r * n);
        let ids = row_ids(&mut rng, m, stack, how);
        let ep = Epilogue {
            lora: Some(LoraTerm {
                xa: MatRef::new(&xa, m, r).expect("fits"),
                b: MatRef::new(&lb, stack * r, n).expect("fits"),
                scale: T::from_f64_lossy(0.5),
                ids: Some(&ids),
            }),
            bias: Some(&lb[..n]),
            activation: Some(Activation::Func(Func::GeluTanh)),
            ..Epilogue::none()
        };
        assert_eq!(ep.spec().lora_stack, Some(stack));
        let mut expected = vec![T::zero(); m * n];
        let ev = &mut MatMut::new(&mut expected, m, n).expect("fits");
        reference::gemm(T::one(), a, b, T::zero(), ev);
        separate_passes(&ep, &mut expected, n);
        let what = format!("{m}×{n}×{k} rank {r} × {stack}");
        let c0 = vec![T::nan(); m * n];
        lora_product_matches(a, b, (T::zero(), c0), &ep, &expected, r, case, &what);
    }
}

#[test]
fn grouped_lora_pass_matches_reference_f32_f64() {
    grouped_lora_pass_matches_reference::<f32>();
    grouped_lora_pass_matches_reference::<f64>();
}

/// Per-row adapter ids are checked: one per row, each in `−1..N`, and the
/// `B` stack must hold N whole r×n blocks.
#[test]
fn grouped_lora_rejects_bad_ids_and_stacks() {
    let (m, n, r) = (4, 8, 2);
    let xa = vec![1.0f32; m * r];
    let lb = vec![1.0f32; 3 * r * n];
    let check = |ids: &[i64], b_rows: usize| {
        let ep = Epilogue {
            lora: Some(LoraTerm {
                xa: MatRef::new(&xa, m, r).expect("fits"),
                b: MatRef::new(&lb[..b_rows * n], b_rows, n).expect("fits"),
                scale: 1.0,
                ids: Some(ids),
            }),
            ..Epilogue::none()
        };
        ep.check(m, n)
    };
    assert!(check(&[0, 1, 2, -1], 3 * r).is_ok());
    for bad in [&[0, 1, 3, -1][..], &[0, -2, 1, 1], &[0, 1, 2]] {
        let err = check(bad, 3 * r);
        assert!(
            matches!(&err, Err(KernelError::Geometry { message, .. }) if message.contains("id")),
            "{bad:?}: {err:?}"
        );
    }
    assert!(check(&[0, 0, 0, 0], 3 * r - 1).is_err(), "a partial block");
}

/// `ep` with a derivative output over `d` (m×n, contiguous).
fn with_grad<'a, T: Scalar>(
    ep: &Epilogue<'a, T>,
    d: &'a mut [T],
    m: usize,
    n: usize,
) -> Epilogue<'a, T> {
    assert_eq!(d.len(), m * n);
    // SAFETY: `d` is borrowed mutably for 'a and only the GEMM calls of
    // the test, one at a time, use the view.
    let out = unsafe { ActGradOut::from_raw_parts(d.as_mut_ptr(), m, n, n) };
    Epilogue {
        act_grad: Some(out),
        ..*ep
    }
}

/// The derivative output holds `act'` of the pre-activation, bit for bit
/// what `math::apply` gives on the product run without its activation and
/// residual, and the main output is unchanged by it: every available ISA,
/// two pool threads (column and row tasks, shared packed `A`), packed and
/// unpacked `B`, every LoRA / scale / bias / residual combination.
fn check_act_grad<T: Scalar>(seed: u64) {
    crate::pool::set_threads(2);
    let mut rng = Rng(seed);
    let shapes = [
        (1, 1, 1),
        (7, 33, 5),
        (64, 200, 100),
        (150, 40, 300),
        (64, 300, 600),
    ];
    for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
        for &(m, n, k) in &shapes {
            let (a, b) = (random::<T>(&mut rng, m * k), random::<T>(&mut rng, k * n));
            let (a, b) = (
                MatRef::new(&a, m, k).expect("fits"),
                MatRef::new(&b, k, n).expect("fits"),
            );
            let packed = PackedRhs::pack_for(b, isa);
            let data = Data::<T>::new(&mut rng, m, n);
            for mask in [0b01000, 0b01100, 0b01111, 0b11101] {
                let act = [Func::GeluTanh, Func::GeluErf][rng.below(2)];
                let ep = data.epilogue(mask, Activation::Func(act), (m, n));
                let rhs = || match mask & 1 {
                    0 => Rhs::Packed(&packed),
                    _ => Rhs::Mat(b),
                };
                let run = |ep: &Epilogue<'_, T>| {
                    let mut c = vec![T::nan(); m * n];
                    let mut ws = vec![T::nan(); workspace_len_on::<T>(isa, m, n, k, mask & 1 == 0)];
                    let cv = MatMut::new(&mut c, m, n).expect("fits");
                    gemm_on(isa, T::one(), a, rhs(), T::zero(), cv, &mut ws, ep).expect("valid");
                    c
                };
                let plain = run(&ep);
                let mut pre = run(&Epilogue {
                    activation: None,
                    residual: None,
                    ..ep
                });
                let grad = Activation::Func(act).derivative().expect("GELU has one");
                {
                    // The GEMM's mode: subnormal inputs read as zero.
                    let _daz = driver::DenormalsAreZero::set();
                    apply_inplace(grad, &mut pre);
                }
                let mut d = vec![T::nan(); m * n];
                let fused = run(&with_grad(&ep, &mut d, m, n));
                let what = format!("{isa:?} {m}×{n}×{k} {:?}", ep.spec());
                assert!(bits_equal(&fused, &plain), "{what}: output changed");
                if let Some(i) = d
                    .iter()
                    .zip(&pre)
                    .position(|(x, y)| !bits_equal(&[*x], &[*y]))
                {
                    panic!("{what}: derivative differs at {i}: {} vs {}", d[i], pre[i]);
                }
            }
        }
    }
    crate::pool::set_threads(0);
}

fn bits_equal<T: Scalar>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_f64_exact().to_bits() == y.to_f64_exact().to_bits())
}

#[test]
fn activation_derivative_output_matches_apply_f32() {
    check_act_grad::<f32>(0xd0e5_9a4d_0000_0032);
}

#[test]
fn activation_derivative_output_matches_apply_f64() {
    check_act_grad::<f64>(0xd0e5_9a4d_0000_0064);
}

/// A batch of products (one GEMM call per entry, entries on the pool's
/// threads) writes each entry's rows of the stacked derivative output.
#[test]
fn batched_products_write_their_rows_of_the_derivative() {
    crate::pool::set_threads(2);
    let (m, n, k, count) = (5, 40, 30, 3);
    let mut rng = Rng(0xba7c_4ed0);
    let a = random::<f64>(&mut rng, count * m * k);
    let b = random::<f64>(&mut rng, count * k * n);
    let bias = random::<f64>(&mut rng, n);
    let offsets: Vec<(usize, usize)> = (0..count).map(|e| (e * m * k, e * k * n)).collect();
    let batch = Batch {
        m,
        n,
        k,
        offsets: &offsets,
        layout: None,
    };
    let ep = Epilogue {
        bias: Some(&bias[..]),
        activation: Some(Activation::Func(Func::GeluTanh)),
        ..Epilogue::none()
    };
    let mut ws = vec![0.0; batched_workspace_len::<f64>(count, m, n, k, false)];
    let mut c = vec![0.0; count * m * n];
    let mut d = vec![f64::NAN; count * m * n];
    let fused = with_grad(&ep, &mut d, count * m, n);
    gemm_batched(&batch, &a, BatchRhs::Entries(&b), &mut c, &mut ws, &fused).expect("valid");
    for e in 0..count {
        let mut pre = vec![0.0; m * n];
        reference::gemm(
            1.0,
            MatRef::new(&a[e * m * k..], m, k).expect("fits"),
            MatRef::new(&b[e * k * n..], k, n).expect("fits"),
            0.0,
            &mut MatMut::new(&mut pre, m, n).expect("fits"),
        );
        pre.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x += bias[i % n]);
        apply_inplace(Func::GeluTanhGrad, &mut pre);
        let got = &d[e * m * n..(e + 1) * m * n];
        check_close(got, &pre, 1e-12, 1e-12, Nan::Mismatch)
            .unwrap_or_else(|err| panic!("entry {e}: {err}"));
    }
    crate::pool::set_threads(0);
}

/// A derivative output needs a GELU activation and the product's shape.
#[test]
fn derivative_output_is_checked() {
    let (a, b) = (vec![1.0f32; 4 * 3], vec![1.0f32; 3 * 5]);
    let (a, b) = (
        MatRef::new(&a, 4, 3).expect("fits"),
        MatRef::new(&b, 3, 5).expect("fits"),
    );
    let mut ws = vec![0.0f32; workspace_len::<f32>(4, 5, 3, false)];
    for (act, rows, needle) in [
        (Some(Activation::Relu), 4, "needs GELU"),
        (None, 4, "needs GELU"),
        (
            Some(Activation::Func(Func::GeluErf)),
            3,
            "activation derivative",
        ),
    ] {
        let mut c = vec![0.0f32; 20];
        let mut d = vec![0.0f32; rows * 5];
        let ep = Epilogue {
            activation: act,
            ..Epilogue::none()
        };
        let ep = with_grad(&ep, &mut d, rows, 5);
        let cv = MatMut::new(&mut c, 4, 5).expect("fits");
        let err = gemm_ep(1.0, a, Rhs::Mat(b), 0.0, cv, &mut ws, &ep).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
}
