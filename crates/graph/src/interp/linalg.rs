//! Matrix products and convolutions, all through the kernels crate's GEMM
//! (convolutions through im2col / col2im and GEMM): no second copy of
//! either lives in the graph crate.

use crate::Conv2dParams;
use cranelora_kernels::gemm::{gemm_alloc, MatMut, MatRef, Rhs};
use cranelora_kernels::im2col::{col2im, im2col};
use cranelora_kernels::{Result, Scalar};
use ndarray::{ArrayD, IxDyn};

const VERIFIED: &str = "internal: the verifier checked the shapes";

/// The elements of `a` broadcast to `shape`, in row-major order.
fn broadcast_vec<T: Scalar>(a: &ArrayD<T>, shape: &[usize]) -> Vec<T> {
    a.broadcast(IxDyn(shape))
        .expect(VERIFIED)
        .iter()
        .copied()
        .collect()
}

/// The dims of a rank-4 array.
fn dims4<T>(a: &ArrayD<T>) -> [usize; 4] {
    a.shape().try_into().expect(VERIFIED)
}

/// `c ← a·b` (β = 0) for row-major m×k and k×n slices.
fn product<T: Scalar>(a: MatRef<'_, T>, b: MatRef<'_, T>, c: &mut [T]) -> Result<()> {
    let c = MatMut::new(c, a.rows(), b.cols())?;
    gemm_alloc(T::one(), a, Rhs::Mat(b), T::zero(), c)
}

/// a [..., m, k] · b [..., k, n] → `out` [..., m, n]: both operands are
/// broadcast to the output's batch dims, then one GEMM per batch entry.
pub(super) fn matmul<T: Scalar>(a: &ArrayD<T>, b: &ArrayD<T>, out: &[usize]) -> Result<ArrayD<T>> {
    let r = out.len();
    let (batch, m, n) = (&out[..r - 2], out[r - 2], out[r - 1]);
    let k = a.shape()[a.ndim() - 1];
    let a = broadcast_vec(a, &[batch, &[m, k]].concat());
    let b = broadcast_vec(b, &[batch, &[k, n]].concat());
    let count: usize = batch.iter().product();
    let mut c = vec![T::zero(); count * m * n];
    for i in 0..count {
        let ai = MatRef::new(&a[i * m * k..(i + 1) * m * k], m, k)?;
        let bi = MatRef::new(&b[i * k * n..(i + 1) * k * n], k, n)?;
        product(ai, bi, &mut c[i * m * n..(i + 1) * m * n])?;
    }
    Ok(ArrayD::from_shape_vec(IxDyn(out), c).expect(VERIFIED))
}

/// The first id of `ids` outside `−1..n` (−1 selects no weight), as (id, n).
pub(super) fn check_stack_ids(
    ids: &ArrayD<i64>,
    n: usize,
) -> std::result::Result<(), (i64, usize)> {
    match ids.iter().find(|&&i| i < -1 || i >= n as i64) {
        Some(&i) => Err((i, n)),
        None => Ok(()),
    }
}

/// x [R, K], w [N, K, M], ids [R] (checked by [`check_stack_ids`]) → [R, M]:
/// row `r` is the 1×K·K×M product `x[r]·w[ids[r]]`, or zeros for id −1.
/// One GEMM per row: the definition, not a fast path.
pub(super) fn gather_matmul<T: Scalar>(
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    ids: &ArrayD<i64>,
) -> Result<ArrayD<T>> {
    let (r, k, m) = (x.shape()[0], x.shape()[1], w.shape()[2]);
    let (x, w) = (broadcast_vec(x, x.shape()), broadcast_vec(w, w.shape()));
    let mut c = vec![T::zero(); r * m];
    for (row, &id) in ids.iter().enumerate() {
        let Ok(n) = usize::try_from(id) else { continue };
        let xr = MatRef::new(&x[row * k..(row + 1) * k], 1, k)?;
        let wn = MatRef::new(&w[n * k * m..(n + 1) * k * m], k, m)?;
        product(xr, wn, &mut c[row * m..(row + 1) * m])?;
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&[r, m]), c).expect(VERIFIED))
}

/// x [N, C, H, W] ⋆ w [O, C, kh, kw] → [N, O, oh, ow]: per image,
/// `out (O × oh·ow) = w (O × C·kh·kw) · im2col(x)`.
pub(super) fn conv2d<T: Scalar>(
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    p: &Conv2dParams,
) -> Result<ArrayD<T>> {
    let [n, c, h, wd] = dims4(x);
    let [o, _, kh, kw] = dims4(w);
    let geom = p.geometry(c, (h, wd), (kh, kw));
    let (oh, ow) = geom.output_size();
    let (rows, cols, img) = (geom.col_rows(), geom.col_cols(), geom.image_len());
    let (xs, ws) = (broadcast_vec(x, x.shape()), broadcast_vec(w, w.shape()));
    let mut col = vec![T::zero(); rows * cols];
    let mut out = vec![T::zero(); n * o * cols];
    for i in 0..n {
        im2col(&geom, &xs[i * img..(i + 1) * img], &mut col)?;
        let wm = MatRef::new(&ws, o, rows)?;
        product(
            wm,
            MatRef::new(&col, rows, cols)?,
            &mut out[i * o * cols..(i + 1) * o * cols],
        )?;
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&[n, o, oh, ow]), out).expect(VERIFIED))
}

/// dy [N, O, oh, ow], w [O, C, kh, kw] → dx [N, C, H, W]: per image,
/// `dx = col2im(wᵀ (C·kh·kw × O) · dy (O × oh·ow))`, the adjoint of [`conv2d`] in x.
pub(super) fn conv2d_input_grad<T: Scalar>(
    dy: &ArrayD<T>,
    w: &ArrayD<T>,
    p: &Conv2dParams,
    (h, wd): (usize, usize),
) -> Result<ArrayD<T>> {
    let [n, o, _, _] = dims4(dy);
    let [_, c, kh, kw] = dims4(w);
    let geom = p.geometry(c, (h, wd), (kh, kw));
    let (rows, cols, img) = (geom.col_rows(), geom.col_cols(), geom.image_len());
    let (dys, ws) = (broadcast_vec(dy, dy.shape()), broadcast_vec(w, w.shape()));
    let mut col = vec![T::zero(); rows * cols];
    let mut dx = vec![T::zero(); n * img];
    for i in 0..n {
        let wt = MatRef::new(&ws, o, rows)?.t();
        product(
            wt,
            MatRef::new(&dys[i * o * cols..(i + 1) * o * cols], o, cols)?,
            &mut col,
        )?;
        col2im(&geom, &col, &mut dx[i * img..(i + 1) * img])?;
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&[n, c, h, wd]), dx).expect(VERIFIED))
}

/// x [N, C, H, W], dy [N, O, oh, ow] → dw [O, C, kh, kw]:
/// `dw (O × C·kh·kw) = Σₙ dy (O × oh·ow) · im2col(x)ᵀ`, the adjoint of [`conv2d`] in w.
pub(super) fn conv2d_weight_grad<T: Scalar>(
    x: &ArrayD<T>,
    dy: &ArrayD<T>,
    p: &Conv2dParams,
    (kh, kw): (usize, usize),
) -> Result<ArrayD<T>> {
    let [n, c, h, wd] = dims4(x);
    let [_, o, _, _] = dims4(dy);
    let geom = p.geometry(c, (h, wd), (kh, kw));
    let (rows, cols, img) = (geom.col_rows(), geom.col_cols(), geom.image_len());
    let (xs, dys) = (broadcast_vec(x, x.shape()), broadcast_vec(dy, dy.shape()));
    let mut col = vec![T::zero(); rows * cols];
    let mut dw = vec![T::zero(); o * rows];
    for i in 0..n {
        im2col(&geom, &xs[i * img..(i + 1) * img], &mut col)?;
        let dyi = MatRef::new(&dys[i * o * cols..(i + 1) * o * cols], o, cols)?;
        let colt = MatRef::new(&col, rows, cols)?.t();
        // β = 1 accumulates the images' contributions.
        gemm_alloc(
            T::one(),
            dyi,
            Rhs::Mat(colt),
            T::one(),
            MatMut::new(&mut dw, o, rows)?,
        )?;
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&[o, c, kh, kw]), dw).expect(VERIFIED))
}
