//! Inference for the data-movement, indexing and convolution ops.

use super::{check_axis, dtype_err, float, same_dtype, shape_err, Inferred, Shape};
use crate::{Conv2dParams, DType};
use std::ops::Range;

pub(super) fn transpose((x, d): (&Shape, DType), perm: &[usize]) -> Inferred {
    let mut seen = vec![false; x.rank()];
    let is_perm = perm.len() == x.rank()
        && perm
            .iter()
            .all(|&p| p < x.rank() && !std::mem::replace(&mut seen[p], true));
    if !is_perm {
        return shape_err(format!(
            "{perm:?} is not a permutation of the {} axes",
            x.rank()
        ));
    }
    let dims: Vec<usize> = perm.iter().map(|&p| x.dims()[p]).collect();
    Ok(Some((Shape::from(dims), d)))
}

pub(super) fn slice((x, d): (&Shape, DType), ranges: &[Range<usize>]) -> Inferred {
    if ranges.len() != x.rank() {
        return shape_err(format!("{} ranges for rank {}", ranges.len(), x.rank()));
    }
    for (axis, (r, &n)) in ranges.iter().zip(x.dims()).enumerate() {
        if r.start > r.end || r.end > n {
            return shape_err(format!("range {r:?} on axis {axis} of size {n}"));
        }
    }
    let dims: Vec<usize> = ranges.iter().map(|r| r.end - r.start).collect();
    Ok(Some((Shape::from(dims), d)))
}

pub(super) fn pad((x, d): (&Shape, DType), pads: &[(usize, usize)]) -> Inferred {
    if pads.len() != x.rank() {
        return shape_err(format!("{} pad pairs for rank {}", pads.len(), x.rank()));
    }
    let dims: Vec<usize> = x
        .dims()
        .iter()
        .zip(pads)
        .map(|(n, (b, a))| b + n + a)
        .collect();
    Ok(Some((Shape::from(dims), d)))
}

pub(super) fn concat(ins: &[(&Shape, DType)], axis: usize) -> Inferred {
    let d = same_dtype(ins)?;
    let first = ins[0].0;
    check_axis(axis, first.rank())?;
    let mut dims = first.dims().to_vec();
    dims[axis] = 0;
    for (s, _) in ins {
        let agrees = s.rank() == first.rank()
            && (0..first.rank()).all(|i| i == axis || s.dims()[i] == first.dims()[i]);
        if !agrees {
            return shape_err(format!("{s} and {first} differ outside axis {axis}"));
        }
        dims[axis] += s.dims()[axis];
    }
    Ok(Some((Shape::from(dims), d)))
}

fn ids(d: DType) -> Result<(), super::InferError> {
    if d == DType::I64 {
        Ok(())
    } else {
        dtype_err(format!("ids must be i64, got {d}"))
    }
}

pub(super) fn gather(ins: &[(&Shape, DType)]) -> Inferred {
    let ((table, d), (idx, id)) = (ins[0], ins[1]);
    ids(id)?;
    if table.rank() != 2 {
        return shape_err(format!("the table must be [V, D], got {table}"));
    }
    let mut dims = idx.dims().to_vec();
    dims.push(table.dims()[1]);
    Ok(Some((Shape::from(dims), d)))
}

pub(super) fn scatter_add(ins: &[(&Shape, DType)], rows: usize) -> Inferred {
    let ((upd, d), (idx, id)) = (ins[0], ins[1]);
    float(d)?;
    ids(id)?;
    let u = upd.dims();
    if u.len() != idx.rank() + 1 || &u[..idx.rank()] != idx.dims() {
        return shape_err(format!(
            "updates must be ids' shape {idx} plus one dim, got {upd}"
        ));
    }
    Ok(Some((Shape::from([rows, u[u.len() - 1]]), d)))
}

pub(super) fn gather_matmul(ins: &[(&Shape, DType)]) -> Inferred {
    let ((x, d), (w, dw), (idx, id)) = (ins[0], ins[1], ins[2]);
    float(d)?;
    ids(id)?;
    if d != dw {
        return shape_err(format!("x is {d} but the stacked weights are {dw}"));
    }
    let (&[r, k], &[_, k2, m], &[r2]) = (x.dims(), w.dims(), idx.dims()) else {
        return shape_err(format!(
            "need x [R, K], w [N, K, M], ids [R]; got {x}, {w}, {idx}"
        ));
    };
    if k != k2 || r != r2 {
        return shape_err(format!(
            "need x [R, K], w [N, K, M], ids [R] with equal R and K; got {x}, {w}, {idx}"
        ));
    }
    Ok(Some((Shape::from([r, m]), d)))
}

/// Splits a rank-4 shape into its dims, or explains which operand is not rank 4.
fn rank4(s: &Shape, what: &str) -> Result<[usize; 4], super::InferError> {
    match s.dims() {
        &[a, b, c, e] => Ok([a, b, c, e]),
        _ => shape_err(format!("{what} must be rank 4, got {s}")),
    }
}

/// The output (oh, ow) of a convolution, or the geometry's complaint.
fn conv_out(
    p: &Conv2dParams,
    channels: usize,
    hw: (usize, usize),
    kernel: (usize, usize),
) -> Result<(usize, usize), super::InferError> {
    let geom = p.geometry(channels, hw, kernel);
    match geom.validate() {
        Ok(()) => Ok(geom.output_size()),
        Err(e) => shape_err(e.to_string()),
    }
}

pub(super) fn conv2d(ins: &[(&Shape, DType)], p: &Conv2dParams) -> Inferred {
    let d = float(same_dtype(ins)?)?;
    let [n, c, h, w] = rank4(ins[0].0, "x [N, C, H, W]")?;
    let [o, c2, kh, kw] = rank4(ins[1].0, "w [O, C, kh, kw]")?;
    if c != c2 {
        return shape_err(format!("x has {c} channels, w expects {c2}"));
    }
    let (oh, ow) = conv_out(p, c, (h, w), (kh, kw))?;
    Ok(Some((Shape::from([n, o, oh, ow]), d)))
}

pub(super) fn conv2d_input_grad(
    ins: &[(&Shape, DType)],
    p: &Conv2dParams,
    (h, w): (usize, usize),
) -> Inferred {
    let d = float(same_dtype(ins)?)?;
    let [n, o, oh, ow] = rank4(ins[0].0, "dy [N, O, oh, ow]")?;
    let [o2, c, kh, kw] = rank4(ins[1].0, "w [O, C, kh, kw]")?;
    if o != o2 {
        return shape_err(format!("dy has {o} channels, w has {o2} outputs"));
    }
    let expected = conv_out(p, c, (h, w), (kh, kw))?;
    if expected != (oh, ow) {
        return shape_err(format!(
            "a {h}×{w} input gives {expected:?} outputs, dy has ({oh}, {ow})"
        ));
    }
    Ok(Some((Shape::from([n, c, h, w]), d)))
}

pub(super) fn conv2d_weight_grad(
    ins: &[(&Shape, DType)],
    p: &Conv2dParams,
    (kh, kw): (usize, usize),
) -> Inferred {
    let d = float(same_dtype(ins)?)?;
    let [n, c, h, w] = rank4(ins[0].0, "x [N, C, H, W]")?;
    let [n2, o, oh, ow] = rank4(ins[1].0, "dy [N, O, oh, ow]")?;
    if n != n2 {
        return shape_err(format!("x has batch {n}, dy has batch {n2}"));
    }
    let expected = conv_out(p, c, (h, w), (kh, kw))?;
    if expected != (oh, ow) {
        return shape_err(format!(
            "a {kh}×{kw} kernel gives {expected:?} outputs, dy has ({oh}, {ow})"
        ));
    }
    Ok(Some((Shape::from([o, c, kh, kw]), d)))
}
