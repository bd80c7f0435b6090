//! The `extern "C"` helpers the generated code calls, and the plans they read.
//!
//! Each helper is registered with `JITBuilder::symbol` under the name in
//! [`symbols`]. Matrix products and convolutions run the kernels crate's
//! GEMM (and im2col / col2im) — the same code eager layers and the
//! interpreter run — with workspace from the arena's scratch area, so a call
//! allocates nothing. Pow calls Rust's `powf` per element; softmax and
//! layer norm are row kernels
//! written here (mirroring the interpreter) until they are emitted as CLIF.
//!
//! A helper that takes a plan reads a `Box`ed plan owned by the
//! [`CompiledGraph`](crate::CompiledGraph) whose code calls it; its address is
//! a constant in that code. Helpers never panic across the C ABI: kernel
//! errors become a nonzero status.

use crate::lower::gather_matmul::GatherMatMulPlan;
pub use fused_rows::{Bcast, SoftmaxPlan};
pub use sum_norm::{SumNormPlan, SumTerm, MAX_TERMS as SUM_NORM_MAX_TERMS};

#[path = "runtime_softmax.rs"]
mod fused_rows;
#[path = "runtime_sum_norm.rs"]
mod sum_norm;
use cranelora_kernels::gemm::{
    gemm, gemm_batched, ActGradOut, Batch, BatchRhs, Epilogue, EpilogueSpec, LoraTerm, MatMut,
    MatRef, PackedRhs, Rhs, StridedLayout,
};
use cranelora_kernels::im2col::{col2im, im2col, Conv2dGeometry};
use cranelora_kernels::math::{apply_inplace, reduce, Func};
use cranelora_kernels::pool::{parallel_for, threads, PARALLEL_MIN_FLOPS};
use cranelora_kernels::Scalar;

/// Status returned by the generated function: success.
pub const OK: i32 = 0;
/// Status: a Gather / ScatterAdd id was out of range (details in the status words).
pub const INDEX_OUT_OF_RANGE: i32 = 1;
/// Status: a kernel failed (the failing node is in status word 0).
pub const KERNEL_ERROR: i32 = 2;

/// A (batched, broadcast) matrix product `c = epilogue(a·b)`.
///
/// The helper runs the whole batch in one call
/// ([`gemm_batched`]): one large product when the entries of `a` are
/// consecutive and share one `b` (a weight applied to `[batch, seq, d]`),
/// else entries spread over the pool's threads.
///
/// **Epilogue.** With a non-empty [`epilogue`](Self::epilogue) the helper
/// applies it to each block of the stacked `(batch·m) × n` output while it
/// is in cache: LoRA term `s·XA·LB` (`XA` is `(batch·m) × r`, `LB` `r × n`),
/// per-column scale and bias (`n`), activation, and `ρ·R` (`R` is
/// `(batch·m) × n`), in that order (see `cranelora_kernels::gemm::Epilogue`).
/// Their buffers are the helper's pointer arguments after `scratch` (null
/// when the step is absent), then a runtime factor of the LoRA term (one
/// element multiplying the plan's `s`; null: `s` alone), then the per-row
/// adapter ids of a mixed-adapter batch (`EpilogueSpec::lora_stack`; null
/// without).
///
/// **Packed B.** A constant 2-D B is packed at compile time
/// ([`Self::packed`]). A 2-D Parameter B may come packed with its binding
/// (`Bindings::insert_packed`): the helper's last argument then points to
/// that [`PackedRhs`] (null: B is packed by the GEMM on every call).
/// `linalg::matmul_with_epilogue` is the lowering entry point that fills
/// both.
#[derive(Debug)]
pub struct MatMulPlan<T> {
    /// Rows of each product.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of each product.
    pub n: usize,
    /// Element offsets of each batch entry's A and B (C's are `i·m·n`).
    pub batch: Vec<(usize, usize)>,
    /// B packed at compile time (a constant 2-D weight).
    pub packed: Option<PackedRhs<T>>,
    /// Elements of A and B.
    pub lens: (usize, usize),
    /// Workspace elements available in the scratch area.
    pub workspace: usize,
    /// What follows the product (empty: plain `c = a·b`).
    pub epilogue: EpilogueSpec,
    /// Strided operands or output (attention heads read and written in
    /// place, `lower/heads.rs`); `None`: contiguous row-major entries,
    /// C's at `i·m·n`. `lens` are then the lengths of the buffers the views
    /// lie in (the output's has `batch.len()·m·n` elements either way).
    pub layout: Option<StridedLayout>,
}

/// The epilogue operands of a [`matmul`] call, as passed by generated code.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct EpiloguePtrs<T> {
    /// `XA`, `(batch·m) × r`.
    pub xa: *const T,
    /// The adapter's `B`, `r × n`.
    pub lora_b: *const T,
    /// Per-column scale, `n`.
    pub col_scale: *const T,
    /// Per-column bias, `n`.
    pub bias: *const T,
    /// Residual, `(batch·m) × n`.
    pub residual: *const T,
    /// A runtime factor of the LoRA term, one element (null: none).
    pub lora_scale: *const T,
    /// Per-row adapter ids, `batch·m` (i64, −1 = none), when the plan's
    /// epilogue has `lora_stack = Some(N)`: `lora_b` is then `N·r × n`.
    pub lora_ids: *const i64,
    /// The activation derivative's output, `(batch·m) × n`, when the plan's
    /// epilogue has `act_grad` (written, not read).
    pub act_grad: *mut T,
}

impl<T: Scalar> MatMulPlan<T> {
    /// The epilogue of the plan over the buffers of `ptrs`.
    ///
    /// # Safety
    /// Each pointer of a step the plan's epilogue has points to the number
    /// of valid elements documented on [`EpiloguePtrs`], alive for `'a`;
    /// `lora_scale` is null or points to one element; `lora_ids` points to
    /// `batch·m` ids when the spec has a `lora_stack`; `act_grad`, when the
    /// spec has one, points to `batch·m·n` writable elements that nothing
    /// else reads or writes during `'a`.
    unsafe fn bind_epilogue<'a>(&self, ptrs: &EpiloguePtrs<T>) -> Option<Epilogue<'a, T>> {
        let (rows, n, spec) = (self.batch.len() * self.m, self.n, &self.epilogue);
        // SAFETY: by this function's contract.
        let slice = |p: *const T, len: usize| unsafe { std::slice::from_raw_parts(p, len) };
        let mat = |p, r: usize, c: usize| MatRef::new(slice(p, r * c), r, c).ok();
        let lora = match spec.lora {
            Some((r, s)) => Some(LoraTerm {
                xa: mat(ptrs.xa, rows, r)?,
                b: mat(ptrs.lora_b, r * spec.lora_stack.unwrap_or(1), n)?,
                // SAFETY: by this function's contract.
                ids: spec
                    .lora_stack
                    .map(|_| unsafe { std::slice::from_raw_parts(ptrs.lora_ids, rows) }),
                scale: match ptrs.lora_scale.is_null() {
                    true => T::from_f64_lossy(s),
                    false => T::from_f64_lossy(s) * slice(ptrs.lora_scale, 1)[0],
                },
            }),
            None => None,
        };
        let residual = match spec.residual {
            Some(rho) => Some((mat(ptrs.residual, rows, n)?, T::from_f64_lossy(rho))),
            None => None,
        };
        Some(Epilogue {
            lora,
            col_scale: spec.col_scale.then(|| slice(ptrs.col_scale, n)),
            bias: spec.bias.then(|| slice(ptrs.bias, n)),
            activation: spec.activation,
            // SAFETY: by this function's contract (exclusive, rows·n elements).
            act_grad: spec
                .act_grad
                .then(|| unsafe { ActGradOut::from_raw_parts(ptrs.act_grad, rows, n, n) }),
            residual,
        })
    }
}

/// What a [`ConvPlan`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKind {
    /// out = conv2d(x, w).
    Forward,
    /// out = the input gradient from (dy, w).
    InputGrad,
    /// out = the weight gradient from (x, dy).
    WeightGrad,
}

/// A convolution or one of its gradients over a batch of images.
#[derive(Debug)]
pub struct ConvPlan {
    /// Which product.
    pub kind: ConvKind,
    /// One image's geometry.
    pub geom: Conv2dGeometry,
    /// Images.
    pub batch: usize,
    /// Output channels O.
    pub out_channels: usize,
    /// Elements of the two operands and of the output.
    pub lens: (usize, usize, usize),
    /// Elements of the im2col matrix (its scratch space is rounded up to this).
    pub col_elems: usize,
    /// Workspace elements after the columns.
    pub workspace: usize,
    /// Rows of the im2col matrix (C·kh·kw).
    pub rows: usize,
    /// Columns of the im2col matrix (oh·ow).
    pub cols: usize,
}

/// A row-wise kernel over `[outer, len, inner]` (softmax along the middle
/// axis; layer norm with `inner = 1` over rows of `len`).
#[derive(Debug)]
pub struct RowPlan {
    /// Product of the dims before the axis.
    pub outer: usize,
    /// The normalized extent.
    pub len: usize,
    /// Product of the dims after the axis.
    pub inner: usize,
    /// Layer norm's epsilon (unused by softmax).
    pub eps: f64,
}

/// Every helper: its symbol name and address, registered with the JIT builder.
pub fn symbols() -> Vec<(&'static str, *const u8)> {
    vec![
        ("cranelora_matmul_f32", matmul::<f32> as *const u8),
        ("cranelora_matmul_f64", matmul::<f64> as *const u8),
        ("cranelora_conv_f32", conv::<f32> as *const u8),
        ("cranelora_conv_f64", conv::<f64> as *const u8),
        ("cranelora_pow_f32", pow_f32 as *const u8),
        ("cranelora_pow_f64", pow_f64 as *const u8),
        ("cranelora_softmax_f32", softmax::<f32> as *const u8),
        ("cranelora_softmax_f64", softmax::<f64> as *const u8),
        (
            "cranelora_softmax_fused_f32",
            softmax_fused::<f32> as *const u8,
        ),
        (
            "cranelora_softmax_fused_f64",
            softmax_fused::<f64> as *const u8,
        ),
        ("cranelora_layer_norm_f32", layer_norm::<f32> as *const u8),
        ("cranelora_layer_norm_f64", layer_norm::<f64> as *const u8),
        ("cranelora_sum_norm_f32", sum_norm::run::<f32> as *const u8),
        ("cranelora_sum_norm_f64", sum_norm::run::<f64> as *const u8),
        (
            "cranelora_gather_matmul_f32",
            gather_matmul::<f32> as *const u8,
        ),
        (
            "cranelora_gather_matmul_f64",
            gather_matmul::<f64> as *const u8,
        ),
    ]
}

/// `c = epilogue(a·b)` for every batch entry of the plan, in one
/// [`gemm_batched`] call.
///
/// # Safety
/// `plan` points to a live [`MatMulPlan<T>`]; `a`, `b` and `c` point to
/// `lens.0`, `lens.1` and `batch.len()·m·n` valid elements (b may be null
/// when the plan holds a packed B), c not overlapping a, b or the epilogue
/// operands (nor `act_grad`, which overlaps none of them either); `scratch` points to `workspace` writable elements used by
/// nothing else during the call; the epilogue pointers are as
/// [`MatMulPlan::bind_epilogue`] requires (null for absent steps);
/// `packed_b` is null or points to a live `PackedRhs<T>` of B's values,
/// `k × n` (`CompiledGraph` passes one only with those dims).
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn matmul<T: Scalar>(
    plan: *const MatMulPlan<T>,
    a: *const T,
    b: *const T,
    c: *mut T,
    scratch: *mut T,
    xa: *const T,
    lora_b: *const T,
    col_scale: *const T,
    bias: *const T,
    residual: *const T,
    lora_scale: *const T,
    lora_ids: *const i64,
    act_grad: *mut T,
    packed_b: *const PackedRhs<T>,
) -> i32 {
    let ptrs = EpiloguePtrs {
        xa,
        lora_b,
        col_scale,
        bias,
        residual,
        lora_scale,
        lora_ids,
        act_grad,
    };
    // SAFETY: the caller's contract above (the compiled code passes the
    // buffers the memory plan sized for this node).
    unsafe { matmul_call(&*plan, a, b, c, scratch, &ptrs, packed_b) }
}

/// [`matmul`] with the epilogue pointers gathered (also called by tests).
///
/// # Safety
/// As [`matmul`].
pub(crate) unsafe fn matmul_call<T: Scalar>(
    p: &MatMulPlan<T>,
    a: *const T,
    b: *const T,
    c: *mut T,
    scratch: *mut T,
    ptrs: &EpiloguePtrs<T>,
    packed_b: *const PackedRhs<T>,
) -> i32 {
    // SAFETY: the caller's contract (see `matmul`).
    let (a, c, ws, ep) = unsafe {
        (
            std::slice::from_raw_parts(a, p.lens.0),
            std::slice::from_raw_parts_mut(c, p.batch.len() * p.m * p.n),
            std::slice::from_raw_parts_mut(scratch, p.workspace),
            p.bind_epilogue(ptrs),
        )
    };
    let rhs = match (&p.packed, packed_b.is_null()) {
        (Some(packed), _) => BatchRhs::Packed(packed),
        // SAFETY: the caller's contract: a non-null `packed_b` points to a
        // live PackedRhs<T> for the whole call.
        (None, false) => BatchRhs::Packed(unsafe { &*packed_b }),
        // SAFETY: as above; without a packed B, b points to lens.1 elements.
        (None, true) => BatchRhs::Entries(unsafe { std::slice::from_raw_parts(b, p.lens.1) }),
    };
    let batch = Batch {
        m: p.m,
        n: p.n,
        k: p.k,
        offsets: &p.batch,
        layout: p.layout.as_ref(),
    };
    let Some(ep) = ep else {
        return KERNEL_ERROR; // not reached: each view is made to fit its slice
    };
    match gemm_batched(&batch, a, rhs, c, ws, &ep) {
        Ok(()) => OK,
        Err(_) => KERNEL_ERROR,
    }
}

/// The convolution product of the plan, image by image.
///
/// # Safety
/// `plan` points to a live [`ConvPlan`]; `x`, `y` and `out` point to
/// `lens.0`, `lens.1` and `lens.2` valid elements of `T`, out not overlapping
/// the others; `scratch` points to `col_elems + workspace` writable elements
/// used by nothing else during the call.
unsafe extern "C" fn conv<T: Scalar>(
    plan: *const ConvPlan,
    x: *const T,
    y: *const T,
    out: *mut T,
    scratch: *mut T,
) -> i32 {
    // SAFETY: the caller's contract above.
    let (p, x, y, out, scratch) = unsafe {
        let p = &*plan;
        (
            p,
            std::slice::from_raw_parts(x, p.lens.0),
            std::slice::from_raw_parts(y, p.lens.1),
            std::slice::from_raw_parts_mut(out, p.lens.2),
            std::slice::from_raw_parts_mut(scratch, p.col_elems + p.workspace),
        )
    };
    match conv_images(p, x, y, out, scratch) {
        Ok(()) => OK,
        Err(_) => KERNEL_ERROR,
    }
}

/// [`conv`] on slices: the interpreter's algorithm (crates/graph interp/linalg.rs).
fn conv_images<T: Scalar>(
    p: &ConvPlan,
    x: &[T],
    y: &[T],
    out: &mut [T],
    scratch: &mut [T],
) -> cranelora_kernels::Result<()> {
    let g = &p.geom;
    let (rows, cols, img, o) = (g.col_rows(), g.col_cols(), g.image_len(), p.out_channels);
    let (col, ws) = scratch.split_at_mut(p.col_elems);
    let col = &mut col[..rows * cols];
    if p.kind != ConvKind::Forward {
        out.fill(T::zero());
    }
    for i in 0..p.batch {
        match p.kind {
            ConvKind::Forward => {
                // out_i (O × oh·ow) = w (O × rows) · im2col(x_i)
                im2col(g, &x[i * img..(i + 1) * img], col)?;
                let c = MatMut::new(&mut out[i * o * cols..(i + 1) * o * cols], o, cols)?;
                let w = MatRef::new(y, o, rows)?;
                gemm(
                    T::one(),
                    w,
                    Rhs::Mat(MatRef::new(col, rows, cols)?),
                    T::zero(),
                    c,
                    ws,
                )?;
            }
            ConvKind::InputGrad => {
                // dx_i = col2im(wᵀ (rows × O) · dy_i (O × cols))
                let wt = MatRef::new(y, o, rows)?.t();
                let dy = MatRef::new(&x[i * o * cols..(i + 1) * o * cols], o, cols)?;
                let c = MatMut::new(col, rows, cols)?;
                gemm(T::one(), wt, Rhs::Mat(dy), T::zero(), c, ws)?;
                col2im(g, col, &mut out[i * img..(i + 1) * img])?;
            }
            ConvKind::WeightGrad => {
                // dw += dy_i (O × cols) · im2col(x_i)ᵀ
                im2col(g, &x[i * img..(i + 1) * img], col)?;
                let dy = MatRef::new(&y[i * o * cols..(i + 1) * o * cols], o, cols)?;
                let colt = MatRef::new(col, rows, cols)?.t();
                let c = MatMut::new(out, o, rows)?;
                gemm(T::one(), dy, Rhs::Mat(colt), T::one(), c, ws)?;
            }
        }
    }
    Ok(())
}

extern "C" fn pow_f32(a: f32, b: f32) -> f32 {
    a.powf(b)
}

extern "C" fn pow_f64(a: f64, b: f64) -> f64 {
    a.powf(b)
}

/// Softmax along the middle axis of `[outer, len, inner]`, as the interpreter:
/// max (NaN-propagating), exp(x − max) by the kernels, divided by the sum.
///
/// # Safety
/// `plan` points to a live [`RowPlan`]; `x` and `out` point to
/// `outer·len·inner` elements, `out` writable and not overlapping `x`.
unsafe extern "C" fn softmax<T: Scalar>(plan: *const RowPlan, x: *const T, out: *mut T) {
    // SAFETY: the caller's contract above.
    let (p, x, out) = unsafe {
        let p = &*plan;
        let n = p.outer * p.len * p.inner;
        (
            p,
            std::slice::from_raw_parts(x, n),
            std::slice::from_raw_parts_mut(out, n),
        )
    };
    if p.inner == 1 && p.len > 0 {
        softmax_rows(x, out, p.len);
        return;
    }
    let (len, inner) = (p.len, p.inner);
    for o in 0..p.outer {
        let base = o * len * inner;
        for j in 0..inner {
            let mut max = T::neg_infinity();
            for i in 0..len {
                let v = x[base + i * inner + j];
                if max.is_nan() {
                    break;
                }
                if v.is_nan() || v > max {
                    max = v;
                }
            }
            for i in 0..len {
                out[base + i * inner + j] = x[base + i * inner + j] - max;
            }
        }
    }
    apply_inplace(Func::Exp, out);
    for o in 0..p.outer {
        let base = o * len * inner;
        for j in 0..inner {
            let sum = (0..len).fold(T::zero(), |s, i| s + out[base + i * inner + j]);
            for i in 0..len {
                out[base + i * inner + j] /= sum;
            }
        }
    }
}

/// Softmax over contiguous rows of `len` (the last axis), each row by
/// [`normalize_row`]; rows split over the kernels' pool when the whole is
/// large.
fn softmax_rows<T: Scalar>(x: &[T], out: &mut [T], len: usize) {
    // ~20 operations per element decide whether threads pay off.
    for_row_blocks(out, len, 20, &|first, out| {
        let x = &x[first * len..first * len + out.len()];
        for (x, o) in x.chunks_exact(len).zip(out.chunks_exact_mut(len)) {
            o.copy_from_slice(x);
            normalize_row(o);
        }
    });
}

/// Runs `f(first_row, rows)` over blocks of whole rows of `len` covering
/// `out`: one block when the work (`ops_per_elem` per element) is small,
/// else one block per pool thread. Nothing to do for empty rows.
fn for_row_blocks<T: Scalar>(
    out: &mut [T],
    len: usize,
    ops_per_elem: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    if len == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / len;
    let tasks = if ops_per_elem * out.len() >= PARALLEL_MIN_FLOPS {
        threads().min(rows)
    } else {
        1
    };
    if tasks <= 1 {
        f(0, out);
        return;
    }
    let per = rows.div_ceil(tasks);
    let out_addr = out.as_mut_ptr() as usize;
    parallel_for(tasks, &|t| {
        let (start, end) = ((t * per).min(rows), ((t + 1) * per).min(rows));
        // SAFETY: task `t` alone touches rows start..end of `out`
        // (disjoint ranges for distinct t, all within `out`, whose borrow
        // outlives `parallel_for`, which returns only when every task is done).
        let out = unsafe {
            std::slice::from_raw_parts_mut(
                (out_addr as *mut T).add(start * len),
                (end - start) * len,
            )
        };
        f(start, out);
    });
}

/// One row's softmax in place by the kernels' row reduction
/// ([`reduce::softmax`]): the max (NaN wins), `exp(x − max)`, its sum and
/// the division by the sum, each a vector pass, as the interpreter (see
/// docs/jit.md, "Row reductions").
fn normalize_row<T: Scalar>(out: &mut [T]) {
    reduce::softmax(out);
}

/// The fused softmax of `lower/softmax.rs` (see [`SoftmaxPlan`]).
///
/// # Safety
/// `plan` points to a live [`SoftmaxPlan`]; `x` and `out` point to
/// `rows·len` valid elements, `out` either equal to `x` (run in place) or
/// not overlapping it, and not overlapping any other operand; each
/// select's two pointers are non-null exactly when the plan has that
/// select and point to the `len` elements its [`Bcast`]s give.
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn softmax_fused<T: Scalar>(
    plan: *const SoftmaxPlan,
    x: *const T,
    mask_cond: *const T,
    mask_fill: *const T,
    post_cond: *const T,
    post_other: *const T,
    out: *mut T,
) {
    // SAFETY: the caller's contract above (the compiled code passes the
    // buffers of the matched nodes, whose shapes the plan was built from).
    unsafe {
        let p = &*plan;
        let n = p.row_dims.iter().product::<usize>() * p.len;
        let slice = |ptr: *const T, len: usize| std::slice::from_raw_parts(ptr, len);
        let pair = |sel: &Option<(Bcast, Bcast)>, c: *const T, o: *const T| {
            sel.as_ref()
                .map(|(bc, bo)| (slice(c, bc.len), slice(o, bo.len)))
        };
        // In place: the scores are read from `out` itself.
        let in_place = std::ptr::eq(x, out.cast_const());
        let ops = fused_rows::Operands {
            x: (!in_place).then(|| slice(x, n)),
            mask: pair(&p.mask, mask_cond, mask_fill),
            post: pair(&p.post, post_cond, post_other),
        };
        fused_rows::run(p, &ops, std::slice::from_raw_parts_mut(out, n))
    }
}

/// (x − mean)/√(var + eps)·γ + β over rows of `len` (biased variance), as
/// the interpreter; γ and β are null when not affine. Mean and variance come
/// from the kernels' vector row sums ([`reduce::moments`], reassociated);
/// rows split over the kernels' pool when the input is large.
///
/// # Safety
/// `plan` points to a live [`RowPlan`]; `x` and `out` point to `outer·len`
/// elements, `out` writable and not overlapping `x`; `gamma` and `beta` are
/// both null or both point to `len` elements.
unsafe extern "C" fn layer_norm<T: Scalar>(
    plan: *const RowPlan,
    x: *const T,
    gamma: *const T,
    beta: *const T,
    out: *mut T,
) {
    // SAFETY: the caller's contract above.
    let (p, x, out, affine) = unsafe {
        let p = &*plan;
        let n = p.outer * p.len;
        let affine = (!gamma.is_null()).then(|| {
            (
                std::slice::from_raw_parts(gamma, p.len),
                std::slice::from_raw_parts(beta, p.len),
            )
        });
        (
            p,
            std::slice::from_raw_parts(x, n),
            std::slice::from_raw_parts_mut(out, n),
            affine,
        )
    };
    if p.len == 0 {
        return;
    }
    let len = p.len;
    let eps = T::from_f64_lossy(p.eps);
    // ~10 operations per element (two reduction passes, the affine map).
    for_row_blocks(out, len, 10, &|first, out| {
        let x = &x[first * len..first * len + out.len()];
        for (row, dst) in x.chunks_exact(len).zip(out.chunks_exact_mut(len)) {
            let (mean, rstd) = row_stats(row, eps);
            match affine {
                Some((g, b)) => {
                    for (((d, &v), &g), &b) in dst.iter_mut().zip(row).zip(g).zip(b) {
                        *d = (v - mean) * rstd * g + b;
                    }
                }
                None => dst
                    .iter_mut()
                    .zip(row)
                    .for_each(|(d, &v)| *d = (v - mean) * rstd),
            }
        }
    });
}

/// A LayerNorm row's mean and `1/√(var + eps)` (biased variance, from
/// [`reduce::moments`]); shared with the fused sum + norm
/// (`runtime_sum_norm.rs`), which then applies the same expression in place.
fn row_stats<T: Scalar>(row: &[T], eps: T) -> (T, T) {
    let (mean, var) = reduce::moments(row);
    (mean, (var + eps).sqrt().recip())
}

/// `out[r] = x[r]·w[ids[r]]` (crate::lower::gather_matmul).
///
/// # Safety
/// `plan` points to a live [`GatherMatMulPlan`]; `x`, `w`, `ids` and `out`
/// point to `rows·k`, `stack·k·m`, `rows` and `rows·m` valid elements, out
/// not overlapping the others; `scratch` points to the node's scratch area
/// (`ws + ws_len` elements of T, 64-byte aligned) used by nothing else
/// during the call; `status` points to 4 writable words.
unsafe extern "C" fn gather_matmul<T: Scalar>(
    plan: *const GatherMatMulPlan,
    x: *const T,
    w: *const T,
    ids: *const i64,
    out: *mut T,
    scratch: *mut u8,
    status: *mut [i64; 4],
) -> i32 {
    // SAFETY: the caller's contract above. The index words occupy the
    // scratch bytes before element offset `xs` and the element slice starts
    // there, so the two mutable slices do not overlap; the area is 64-byte
    // aligned, so both are aligned for their types.
    let (p, buffers) = unsafe {
        let p = &*plan;
        let rest = p.ws + p.ws_len - p.xs;
        let elems = scratch.add(p.xs * std::mem::size_of::<T>()).cast::<T>();
        let buffers = crate::lower::gather_matmul::Buffers {
            x: std::slice::from_raw_parts(x, p.rows * p.k),
            w: std::slice::from_raw_parts(w, p.stack * p.k * p.m),
            ids: std::slice::from_raw_parts(ids, p.rows),
            out: std::slice::from_raw_parts_mut(out, p.rows * p.m),
            index: std::slice::from_raw_parts_mut(scratch.cast::<usize>(), p.stack + 2 + p.rows),
            scratch: std::slice::from_raw_parts_mut(elems, rest),
            status: &mut *status,
        };
        (p, buffers)
    };
    crate::lower::gather_matmul::run(p, buffers)
}

#[cfg(test)]
#[path = "runtime_matmul_tests.rs"]
mod matmul_tests;
