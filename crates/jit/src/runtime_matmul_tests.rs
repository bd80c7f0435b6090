//! The MatMul helper with an epilogue set directly on its plan (the
//! lowering of graph patterns onto it comes separately), against a naive
//! product followed by separate passes.

use super::*;
use cranelora_kernels::gemm::{batched_workspace_len, Activation};
use cranelora_kernels::testing::{check_close, Nan};

fn values<T: Scalar>(len: usize, seed: usize) -> Vec<T> {
    (0..len)
        .map(|i| T::from_f64_lossy((((i * 7 + seed * 13) % 23) as f64 - 11.0) / 9.0))
        .collect()
}

/// epilogue(a·b) by definition, for a batch of `count` entries sharing `b`
/// (`shared_b`) or each with its own.
#[allow(clippy::too_many_arguments)]
fn expected<T: Scalar>(
    (count, m, n, k, r): (usize, usize, usize, usize, usize),
    shared_b: bool,
    a: &[T],
    b: &[T],
    [xa, lb, scale, bias, res]: [&[T]; 5],
) -> Vec<T> {
    let mut c = vec![T::zero(); count * m * n];
    for e in 0..count {
        let bo = if shared_b { 0 } else { e * k * n };
        for i in 0..m {
            let row = e * m + i;
            for j in 0..n {
                let mut t = (0..k).fold(T::zero(), |s, p| s + a[row * k + p] * b[bo + p * n + j]);
                let lora = (0..r).fold(T::zero(), |s, p| s + xa[row * r + p] * lb[p * n + j]);
                t = (t + T::from_f64_lossy(0.5) * lora) * scale[j] + bias[j];
                c[row * n + j] = t;
            }
        }
    }
    cranelora_kernels::math::apply_inplace(cranelora_kernels::math::Func::GeluTanh, &mut c);
    for (x, &y) in c.iter_mut().zip(res) {
        *x += T::from_f64_lossy(-2.0) * y;
    }
    c
}

fn check<T: Scalar>(shared_b: bool) {
    let (count, m, n, k, r) = (3, 5, 7, 4, 2);
    let (a, b) = (values::<T>(count * m * k, 1), values::<T>(count * k * n, 2));
    let (xa, lb) = (values::<T>(count * m * r, 3), values::<T>(r * n, 4));
    let (scale, bias, res) = (
        values::<T>(n, 5),
        values::<T>(n, 6),
        values::<T>(count * m * n, 7),
    );
    let workspace = batched_workspace_len::<T>(count, m, n, k, false);
    let plan = MatMulPlan {
        m,
        k,
        n,
        batch: (0..count)
            .map(|e| (e * m * k, if shared_b { 0 } else { e * k * n }))
            .collect(),
        packed: None,
        lens: (a.len(), b.len()),
        workspace,
        epilogue: EpilogueSpec {
            lora: Some((r, 0.5)),
            lora_stack: None,
            col_scale: true,
            bias: true,
            activation: Some(Activation::Func(Func::GeluTanh)),
            act_grad: false,
            residual: Some(-2.0),
        },
        layout: None,
    };
    let ptrs = EpiloguePtrs {
        xa: xa.as_ptr(),
        lora_b: lb.as_ptr(),
        col_scale: scale.as_ptr(),
        bias: bias.as_ptr(),
        residual: res.as_ptr(),
        lora_scale: std::ptr::null(),
        lora_ids: std::ptr::null(),
        act_grad: std::ptr::null_mut(),
    };
    let mut c = vec![T::nan(); count * m * n];
    let mut ws = vec![T::nan(); workspace];
    // SAFETY: every pointer addresses the element count the plan states.
    let status = unsafe {
        matmul_call(
            &plan,
            a.as_ptr(),
            b.as_ptr(),
            c.as_mut_ptr(),
            ws.as_mut_ptr(),
            &ptrs,
            std::ptr::null(),
        )
    };
    assert_eq!(status, OK);
    let want = expected(
        (count, m, n, k, r),
        shared_b,
        &a,
        &b,
        [&xa, &lb, &scale, &bias, &res],
    );
    let tol = 64.0 * T::EPSILON_F64;
    check_close(&c, &want, tol, tol, Nan::Mismatch)
        .unwrap_or_else(|e| panic!("shared B {shared_b}: {e}"));
}

#[test]
fn matmul_helper_applies_the_plan_epilogue_f32() {
    check::<f32>(true);
    check::<f32>(false);
}

#[test]
fn matmul_helper_applies_the_plan_epilogue_f64() {
    check::<f64>(true);
    check::<f64>(false);
}
