//! GEMM epilogues: work applied to each block of `C` right after the
//! product, while the block is still in cache, instead of separate passes
//! over memory.
//!
//! For output element `(i, j)`, with `t = α·(A·B)[i, j] + β·C[i, j]`:
//!
//! ```text
//! t ← t + s·Σ_p XA[i, p]·LB[p, j]     LoRA accumulation (XA is m×r, LB r×n)
//! t ← t · scale[j]                    per-column scale (DoRA magnitude)
//! t ← t + bias[j]                     per-column bias
//! D[i, j] ← act'(t)                   activation derivative (optional second output)
//! t ← act(t)                          activation (ReLU or a `math::Func`)
//! t ← t + ρ·R[i, j]                   scaled residual add (after the activation)
//! ```
//!
//! With per-row adapters (mixed-adapter batches, [`LoraTerm::ids`]) `LB`
//! is a stack of N adapters' `B` and row `i` reads block `ids[i]` of it:
//! `t ← t + s·Σ_p XA[i, p]·LB[ids[i]·r + p, j]` (nothing for id −1).
//!
//! The derivative output serves training steps: the forward of a layer
//! `act(x·W + b + s·XA·B)` also needs `act'` at the pre-activation for its
//! backward, and computing it here, from the block in cache, saves keeping
//! the pre-activation and a separate pass over it ([`ActGradOut`]; GELU
//! erf and tanh, whose derivatives are kernels functions).
//!
//! Every step is optional. [`EpilogueSpec`] is the closed, data-free
//! description (what a compiled plan stores); [`Epilogue`] binds it to the
//! operands of one call and is what [`gemm_ep`](super::gemm_ep) takes.

use super::MatRef;
use crate::math::{apply, apply_inplace, Func};
use crate::{KernelError, Result, Scalar};
use std::marker::PhantomData;

/// The activation of an epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x` if `x > 0` or NaN, else `0` (the interpreter's ReLU).
    Relu,
    /// One of the kernels' vector functions (GELU erf/tanh, SiLU, tanh, …).
    Func(Func),
}

impl Activation {
    /// The kernels function computing this activation's derivative, for
    /// the activations that have one ([`ActGradOut`]): GELU erf and tanh.
    pub fn derivative(self) -> Option<Func> {
        match self {
            Activation::Func(Func::GeluErf) => Some(Func::GeluErfGrad),
            Activation::Func(Func::GeluTanh) => Some(Func::GeluTanhGrad),
            _ => None,
        }
    }
}

/// What an epilogue does, without its data (see the module docs for the order).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EpilogueSpec {
    /// LoRA accumulation `s·XA·LB`: `Some((rank, s))`.
    pub lora: Option<(usize, f64)>,
    /// Per-row adapters: `Some(N)` when `LB` stacks N adapters' `B` and
    /// each row picks one by its id ([`LoraTerm::ids`]).
    pub lora_stack: Option<usize>,
    /// Multiply each column by `scale[j]`.
    pub col_scale: bool,
    /// Add `bias[j]` to each column.
    pub bias: bool,
    /// Apply an activation.
    pub activation: Option<Activation>,
    /// Also write the activation's derivative at the pre-activation to a
    /// second m×n output ([`ActGradOut`]).
    pub act_grad: bool,
    /// Add `ρ·R`: `Some(ρ)`.
    pub residual: Option<f64>,
}

impl EpilogueSpec {
    /// The empty epilogue: `C` is the plain product.
    pub const NONE: Self = Self {
        lora: None,
        lora_stack: None,
        col_scale: false,
        bias: false,
        activation: None,
        act_grad: false,
        residual: None,
    };

    /// Whether the epilogue does nothing.
    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }
}

/// The LoRA term of an epilogue: `s·XA·LB`.
#[derive(Clone, Copy, Debug)]
pub struct LoraTerm<'a, T> {
    /// `X·A`, m×r (computed beforehand: a thin product).
    pub xa: MatRef<'a, T>,
    /// `B` of the adapter, r×n; with [`ids`](Self::ids), the N adapters'
    /// `B` stacked, (N·r)×n.
    pub b: MatRef<'a, T>,
    /// The scaling `s` (α/r).
    pub scale: T,
    /// Per-row adapters (a mixed-adapter batch): row `i` of `XA` is
    /// multiplied by block `ids[i]` of `b` (rows `ids[i]·r..(ids[i] + 1)·r`),
    /// or adds nothing for id −1. `None`: one adapter, `b` is r×n.
    pub ids: Option<&'a [i64]>,
}

impl<'a, T: Copy> LoraTerm<'a, T> {
    /// The number of adapters `b` stacks (1 without [`ids`](Self::ids)).
    pub fn stack(&self) -> usize {
        match self.ids {
            Some(_) => self.b.rows() / self.xa.cols().max(1),
            None => 1,
        }
    }

    /// The one-adapter term of row `i` (`None`: row `i` has no adapter).
    /// With ids, `b` becomes that adapter's r×n block.
    pub(super) fn of_row(&self, i: usize) -> Option<LoraTerm<'a, T>> {
        let Some(ids) = self.ids else {
            return Some(*self);
        };
        let g = usize::try_from(ids[i]).ok()?;
        let r = self.xa.cols();
        let b = self.b;
        Some(LoraTerm {
            b: MatRef {
                data: &b.data[(g * r * b.row_stride).min(b.data.len())..],
                rows: r,
                ..b
            },
            ids: None,
            ..*self
        })
    }
}

/// The second output of an epilogue: an m×n matrix (row stride `rs`) that
/// receives `act'(t)`, the derivative of the epilogue's activation at the
/// pre-activation `t` (after the LoRA term, column scale and bias).
///
/// A raw view, so that an [`Epilogue`] stays `Copy` and can be shared by the
/// threads of one product: each thread writes the rows of the blocks of `C`
/// it computes, so writes never overlap. Made only by the `unsafe`
/// [`ActGradOut::from_raw_parts`], whose contract gives the product
/// exclusive use of the buffer.
#[derive(Clone, Copy, Debug)]
pub struct ActGradOut<'a, T> {
    ptr: *mut T,
    rows: usize,
    cols: usize,
    rs: usize,
    _buffer: PhantomData<&'a mut [T]>,
}

// SAFETY: the view is only written through `row_mut`, by the threads of
// one product on disjoint rows of blocks (`Epilogue::apply_row` is called
// once per finished block row), and `from_raw_parts`' contract excludes any
// other access while products using it run.
unsafe impl<T: Send> Send for ActGradOut<'_, T> {}
// SAFETY: as for Send.
unsafe impl<T: Send> Sync for ActGradOut<'_, T> {}

impl<'a, T> ActGradOut<'a, T> {
    /// The `rows × cols` matrix at `ptr` with row stride `rs` (≥ `cols`).
    ///
    /// # Safety
    /// `ptr` points to `(rows − 1)·rs + cols` writable elements (none if
    /// `rows` or `cols` is 0), alive for `'a`; during `'a`, nothing else
    /// reads or writes them except GEMM calls with an epilogue holding this
    /// view (or a copy of it), and no two such calls run at the same time.
    pub unsafe fn from_raw_parts(ptr: *mut T, rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            ptr,
            rows,
            cols,
            rs: rs.max(cols),
            _buffer: PhantomData,
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `i`, columns `j0..j0 + len`; panics outside the matrix (the
    /// epilogue's shapes were checked: a broken internal invariant).
    ///
    /// # Safety
    /// No other live reference to these elements (each row of each block is
    /// written by the one task that computed it).
    #[allow(clippy::mut_from_ref)]
    unsafe fn row_mut(&self, i: usize, j0: usize, len: usize) -> &mut [T] {
        assert!(
            i < self.rows && j0 + len <= self.cols,
            "internal: derivative row outside its output"
        );
        // SAFETY: in bounds (just checked; `from_raw_parts`' contract gives
        // the elements), exclusive by this function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.rs + j0), len) }
    }
}

/// An epilogue bound to the operands of one m×n product.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a, T> {
    /// LoRA accumulation.
    pub lora: Option<LoraTerm<'a, T>>,
    /// Per-column scale, `n` elements.
    pub col_scale: Option<&'a [T]>,
    /// Per-column bias, `n` elements.
    pub bias: Option<&'a [T]>,
    /// The activation.
    pub activation: Option<Activation>,
    /// Where `act'` at the pre-activation goes (needs an activation with a
    /// [`derivative`](Activation::derivative)).
    pub act_grad: Option<ActGradOut<'a, T>>,
    /// Residual `R` (m×n) and its factor `ρ`.
    pub residual: Option<(MatRef<'a, T>, T)>,
}

impl<T> Default for Epilogue<'_, T> {
    fn default() -> Self {
        Self {
            lora: None,
            col_scale: None,
            bias: None,
            activation: None,
            act_grad: None,
            residual: None,
        }
    }
}

fn mismatch(what: &'static str, expected: (usize, usize), actual: (usize, usize)) -> KernelError {
    KernelError::Geometry {
        what: "gemm epilogue",
        message: format!("{what} is {actual:?}, the product needs {expected:?}"),
    }
}

impl<'a, T: Scalar> Epilogue<'a, T> {
    /// Nothing after the product.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether the epilogue does nothing.
    ///
    /// Field by field, without [`spec`](Self::spec)'s float conversions:
    /// in debug builds `spec().is_none()` raised MXCSR's sticky denormal
    /// flag on the caller's thread before the GEMM set its mode (kernels
    /// test `subnormal_inputs_count_as_zero_and_the_mode_is_restored`).
    pub fn is_none(&self) -> bool {
        let Self {
            lora,
            col_scale,
            bias,
            activation,
            act_grad,
            residual,
        } = self;
        lora.is_none()
            && col_scale.is_none()
            && bias.is_none()
            && activation.is_none()
            && act_grad.is_none()
            && residual.is_none()
    }

    /// The data-free description of this epilogue.
    pub fn spec(&self) -> EpilogueSpec {
        EpilogueSpec {
            lora: self.lora.map(|l| (l.xa.cols(), l.scale.to_f64_exact())),
            lora_stack: self.lora.and_then(|l| l.ids.map(|_| l.stack())),
            col_scale: self.col_scale.is_some(),
            bias: self.bias.is_some(),
            activation: self.activation,
            act_grad: self.act_grad.is_some(),
            residual: self.residual.map(|(_, r)| r.to_f64_exact()),
        }
    }

    /// Checks every operand against an m×n product.
    ///
    /// # Errors
    /// [`KernelError::Geometry`] naming the operand whose shape is wrong.
    pub fn check(&self, m: usize, n: usize) -> Result<()> {
        if let Some(l) = &self.lora {
            let r = l.xa.cols();
            if l.xa.rows() != m {
                return Err(mismatch("LoRA X·A", (m, r), (l.xa.rows(), r)));
            }
            let rows = r * l.stack();
            if (l.b.rows(), l.b.cols()) != (rows, n) || (l.ids.is_some() && r == 0) {
                return Err(mismatch("LoRA B", (rows, n), (l.b.rows(), l.b.cols())));
            }
            if let Some(ids) = l.ids {
                check_ids(ids, m, l.stack())?;
            }
        }
        for (what, v) in [("column scale", self.col_scale), ("bias", self.bias)] {
            if let Some(v) = v.filter(|v| v.len() != n) {
                return Err(mismatch(what, (1, n), (1, v.len())));
            }
        }
        if let Some((r, _)) = &self.residual {
            if (r.rows(), r.cols()) != (m, n) {
                return Err(mismatch("residual", (m, n), (r.rows(), r.cols())));
            }
        }
        if let Some(d) = &self.act_grad {
            if (d.rows(), d.cols()) != (m, n) {
                return Err(mismatch(
                    "activation derivative",
                    (m, n),
                    (d.rows(), d.cols()),
                ));
            }
            if self.activation.and_then(Activation::derivative).is_none() {
                return Err(KernelError::Geometry {
                    what: "gemm epilogue",
                    message: format!(
                        "an activation derivative output needs GELU (erf or tanh), the activation is {:?}",
                        self.activation
                    ),
                });
            }
        }
        Ok(())
    }

    /// The epilogue of rows `first..first + rows` of the product (for a
    /// product computed in row blocks, e.g. the entries of a batch); the
    /// shapes must have been [`check`](Self::check)ed for the whole.
    pub(super) fn rows(&self, first: usize, rows: usize) -> Self {
        let skip = |v: MatRef<'a, T>| MatRef {
            data: &v.data[(first * v.row_stride).min(v.data.len())..],
            rows,
            ..v
        };
        Self {
            lora: self.lora.map(|l| LoraTerm {
                xa: skip(l.xa),
                ids: l
                    .ids
                    .map(|ids| &ids[first.min(ids.len())..(first + rows).min(ids.len())]),
                ..l
            }),
            residual: self.residual.map(|(r, rho)| (skip(r), rho)),
            act_grad: self.act_grad.map(|d| ActGradOut {
                ptr: d.ptr.wrapping_add(first.min(d.rows) * d.rs),
                rows,
                ..d
            }),
            ..*self
        }
    }

    /// The same epilogue over the same buffers seen as type `U` (= `T`).
    pub(super) fn retype<U: Scalar>(&self, view: impl Fn(&'a [T]) -> &'a [U]) -> Epilogue<'a, U> {
        let conv = |x: T| U::from_f64_lossy(x.to_f64_exact());
        Epilogue {
            lora: self.lora.map(|l| LoraTerm {
                xa: l.xa.retype(view(l.xa.data)),
                b: l.b.retype(view(l.b.data)),
                scale: conv(l.scale),
                ids: l.ids,
            }),
            col_scale: self.col_scale.map(&view),
            bias: self.bias.map(&view),
            activation: self.activation,
            act_grad: self.act_grad.map(|d| ActGradOut {
                ptr: d.ptr.cast::<U>(),
                rows: d.rows,
                cols: d.cols,
                rs: d.rs,
                _buffer: PhantomData,
            }),
            residual: self
                .residual
                .map(|(r, rho)| (r.retype(view(r.data)), conv(rho))),
        }
    }

    /// Applies the epilogue to `row`, which is `C[i, j0..j0 + row.len()]`.
    ///
    /// The caller has [`check`](Self::check)ed the shapes.
    pub(super) fn apply_row(&self, i: usize, j0: usize, row: &mut [T]) {
        let cols = j0..j0 + row.len();
        if let Some(l) = self.lora.as_ref().and_then(|l| l.of_row(i)) {
            add_lora_row(row, i, j0, &l);
        }
        if let Some(s) = self.col_scale {
            row.iter_mut()
                .zip(&s[cols.clone()])
                .for_each(|(x, &s)| *x *= s);
        }
        if let Some(b) = self.bias {
            row.iter_mut()
                .zip(&b[cols.clone()])
                .for_each(|(x, &b)| *x += b);
        }
        if let Some((d, f)) = self
            .act_grad
            .zip(self.activation.and_then(Activation::derivative))
        {
            // SAFETY: row `i`, columns `cols` of C are this call's alone
            // (one task per block row), hence the same part of `d`.
            let out = unsafe { d.row_mut(i, j0, row.len()) };
            let done = apply(f, row, out);
            debug_assert!(done.is_ok(), "internal: equal lengths");
        }
        match self.activation {
            Some(Activation::Relu) => row.iter_mut().for_each(|x| {
                if !(*x > T::zero() || x.is_nan()) {
                    *x = T::zero();
                }
            }),
            Some(Activation::Func(f)) => apply_inplace(f, row),
            None => {}
        }
        if let Some((r, rho)) = &self.residual {
            add_scaled(row, *rho, *r, i, cols);
        }
    }
}

/// Checks per-row adapter ids: one per row, each in `−1..stack`.
fn check_ids(ids: &[i64], m: usize, stack: usize) -> Result<()> {
    if ids.len() != m {
        return Err(mismatch("LoRA row ids", (m, 1), (ids.len(), 1)));
    }
    match ids.iter().find(|&&g| g < -1 || g >= stack as i64) {
        Some(bad) => Err(KernelError::Geometry {
            what: "gemm epilogue",
            message: format!("LoRA row id {bad} is outside -1..{stack}"),
        }),
        None => Ok(()),
    }
}

/// Columns of the LoRA term summed in registers at a time: 32 f32 are two
/// AVX-512 / four AVX2 / eight SSE vectors, so the sum over the rank stays
/// in registers on every ISA.
const LORA_CHUNK: usize = 32;

/// `row[j] += Σ_p (s·XA[i, p])·B[p, j0 + j]`: for each chunk of
/// [`LORA_CHUNK`] columns the rank sum is accumulated in a local array (in
/// registers) and added to `row` once, instead of one load and store of
/// the row per rank column. The order is the interpreter's (`XA·B` summed,
/// then added), not the base product's.
pub(super) fn add_lora_row<T: Scalar>(row: &mut [T], i: usize, j0: usize, l: &LoraTerm<'_, T>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above), the only
        // requirement of the target feature; the body is safe code.
        unsafe { add_lora_row_avx512(row, i, j0, l) };
        return;
    }
    add_lora_row_generic(row, i, j0, l);
}

/// [`add_lora_row_generic`] compiled with AVX-512 enabled.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_lora_row_avx512<T: Scalar>(row: &mut [T], i: usize, j0: usize, l: &LoraTerm<'_, T>) {
    add_lora_row_generic(row, i, j0, l);
}

#[inline(always)]
fn add_lora_row_generic<T: Scalar>(row: &mut [T], i: usize, j0: usize, l: &LoraTerm<'_, T>) {
    let (r, b) = (l.xa.cols(), &l.b);
    for (c, chunk) in row.chunks_mut(LORA_CHUNK).enumerate() {
        let start = j0 + c * LORA_CHUNK;
        let mut acc = [T::zero(); LORA_CHUNK];
        for p in 0..r {
            let w = l.scale * l.xa.at(i, p);
            if b.col_stride == 1 {
                let at = p * b.row_stride + start;
                let src = &b.data[at..at + chunk.len()];
                if let Ok(src) = <&[T; LORA_CHUNK]>::try_from(src) {
                    // A whole chunk: fixed trip count, vectorized and unrolled.
                    for j in 0..LORA_CHUNK {
                        acc[j] += w * src[j];
                    }
                } else {
                    for (a, &v) in acc.iter_mut().zip(src) {
                        *a += w * v;
                    }
                }
            } else {
                for (j, a) in acc.iter_mut().take(chunk.len()).enumerate() {
                    *a += w * b.at(p, start + j);
                }
            }
        }
        chunk.iter_mut().zip(acc).for_each(|(x, a)| *x += a);
    }
}

/// `row[j] += w·m[p, cols.start + j]`.
#[inline]
fn add_scaled<T: Scalar>(
    row: &mut [T],
    w: T,
    m: MatRef<'_, T>,
    p: usize,
    cols: std::ops::Range<usize>,
) {
    if m.col_stride == 1 {
        let start = p * m.row_stride;
        let src = &m.data[start + cols.start..start + cols.end];
        row.iter_mut().zip(src).for_each(|(x, &b)| *x += w * b);
    } else {
        for (x, j) in row.iter_mut().zip(cols) {
            *x += w * m.at(p, j);
        }
    }
}
