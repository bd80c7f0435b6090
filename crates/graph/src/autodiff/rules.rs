//! The vector-Jacobian product of every op: one arm each.
//!
//! `vjp(c, op, x, y, g)` gets the node `y = op(x…)` and `g = ∂L/∂y`, and
//! records `∂L/∂xᵢ` for each operand that needs it with `c.grad(i, …)`.
//! A contribution may have the broadcast output's shape; the caller sums
//! it back to the operand's shape. In the comments `g` is the incoming
//! gradient, `y` the op's output, and products are elementwise unless
//! written `·` between matrices.

use super::Vjp;
use crate::{Conv2dParams, Op, ReduceKind, Result};
use crate::{DType, NodeId, Shape, TensorData};
use std::f64::consts::PI;

/// Records the operand gradients of `y = op(x…)` given `g = ∂L/∂y`.
pub(super) fn vjp(c: &mut Vjp, op: &Op, x: &[NodeId], y: NodeId, g: NodeId) -> Result<()> {
    match op {
        // Leaves have no operands.
        Op::Input { .. } | Op::Constant(_) | Op::Parameter { .. } => {}
        // Piecewise constant (masks, sign) or cut on purpose: no gradient.
        Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge | Op::Sign | Op::StopGradient => {}
        // C = A·B: ∂A = G·Bᵀ, ∂B = Aᵀ·G (broadcast batch dims summed by the caller).
        Op::MatMul => {
            c.grad(0, |c| {
                let bt = c.mt(x[1])?;
                c.push(Op::MatMul, &[g, bt])
            })?;
            c.grad(1, |c| {
                let at = c.mt(x[0])?;
                c.push(Op::MatMul, &[at, g])
            })?;
        }
        // ∂(a + b) = (g, g)
        Op::Add => {
            c.grad(0, |_| Ok(g))?;
            c.grad(1, |_| Ok(g))?;
        }
        // ∂(a − b) = (g, −g)
        Op::Sub => {
            c.grad(0, |_| Ok(g))?;
            c.grad(1, |c| c.unary(Op::Neg, g))?;
        }
        // ∂(a·b) = (g·b, g·a)
        Op::Mul => {
            c.grad(0, |c| c.mul(g, x[1]))?;
            c.grad(1, |c| c.mul(g, x[0]))?;
        }
        // ∂(a/b) = (g/b, −g·a/b²) with a/b² = y/b
        Op::Div => {
            c.grad(0, |c| c.div(g, x[1]))?;
            c.grad(1, |c| {
                let gy = c.mul(g, y)?;
                let q = c.div(gy, x[1])?;
                c.unary(Op::Neg, q)
            })?;
        }
        // ∂max(a, b) = (g·[a ≥ b], g·[a < b]): ties go to a, so max(x, x) passes g once.
        Op::Max => {
            c.grad(0, |c| c.masked(Op::Ge, x[0], x[1], g))?;
            c.grad(1, |c| c.masked(Op::Lt, x[0], x[1], g))?;
        }
        // ∂min(a, b) = (g·[a ≤ b], g·[a > b])
        Op::Min => {
            c.grad(0, |c| c.masked(Op::Le, x[0], x[1], g))?;
            c.grad(1, |c| c.masked(Op::Gt, x[0], x[1], g))?;
        }
        // ∂aᵇ = (g·b·aᵇ⁻¹, g·y·ln a)
        Op::Pow => {
            c.grad(0, |c| {
                let one = c.scalar(1.0)?;
                let b1 = c.sub(x[1], one)?;
                let p = c.push(Op::Pow, &[x[0], b1])?;
                let bp = c.mul(x[1], p)?;
                c.mul(g, bp)
            })?;
            c.grad(1, |c| {
                let ln = c.unary(Op::Log, x[0])?;
                let yl = c.mul(y, ln)?;
                c.mul(g, yl)
            })?;
        }
        // ∂where(k, a, b) = (–, k ? g : 0, k ? 0 : g)
        Op::Where => {
            c.grad(1, |c| {
                let zero = c.scalar(0.0)?;
                c.push(Op::Where, &[x[0], g, zero])
            })?;
            c.grad(2, |c| {
                let zero = c.scalar(0.0)?;
                c.push(Op::Where, &[x[0], zero, g])
            })?;
        }
        // ∂(−x) = −g
        Op::Neg => c.grad(0, |c| c.unary(Op::Neg, g))?,
        // ∂relu x = g·[x > 0]
        Op::Relu => c.grad(0, |c| {
            let zero = c.scalar(0.0)?;
            c.masked(Op::Gt, x[0], zero, g)
        })?,
        // ∂gelu x = g·(Φ(x) + x·φ(x))
        Op::Gelu => c.grad(0, |c| {
            let d = c.unary(Op::GeluGrad, x[0])?;
            c.mul(g, d)
        })?,
        // ∂gelu_tanh x = g·gelu_tanh′(x)
        Op::GeluTanh => c.grad(0, |c| {
            let d = c.unary(Op::GeluTanhGrad, x[0])?;
            c.mul(g, d)
        })?,
        // ∂(Φ(x) + x·φ(x)) = g·φ(x)·(2 − x²), φ(x) = e^(−x²/2)/√(2π)
        Op::GeluGrad => c.grad(0, |c| {
            let d = gelu_second_derivative(c, x[0])?;
            c.mul(g, d)
        })?,
        // ∂gelu_tanh′(x) = g·(1 − t²)·(u′ − x·t·u′² + x·u″/2), u = √(2/π)(x + 0.044715x³), t = tanh u
        Op::GeluTanhGrad => c.grad(0, |c| {
            let d = gelu_tanh_second_derivative(c, x[0])?;
            c.mul(g, d)
        })?,
        // ∂tanh x = g·(1 − y²)
        Op::Tanh => c.grad(0, |c| {
            let one = c.scalar(1.0)?;
            let y2 = c.mul(y, y)?;
            let d = c.sub(one, y2)?;
            c.mul(g, d)
        })?,
        // ∂σ(x) = g·y·(1 − y)
        Op::Sigmoid => c.grad(0, |c| {
            let one = c.scalar(1.0)?;
            let m = c.sub(one, y)?;
            let d = c.mul(y, m)?;
            c.mul(g, d)
        })?,
        // ∂(x·σ(x)) = g·σ(x)·(1 + x·(1 − σ(x)))
        Op::Silu => c.grad(0, |c| {
            let (one, s) = (c.scalar(1.0)?, c.unary(Op::Sigmoid, x[0])?);
            let m = c.sub(one, s)?;
            let xm = c.mul(x[0], m)?;
            let inner = c.add(one, xm)?;
            let d = c.mul(s, inner)?;
            c.mul(g, d)
        })?,
        // ∂eˣ = g·y
        Op::Exp => c.grad(0, |c| c.mul(g, y))?,
        // ∂ln x = g/x
        Op::Log => c.grad(0, |c| c.div(g, x[0]))?,
        // ∂√x = g/(2y)
        Op::Sqrt => c.grad(0, |c| {
            let q = c.div(g, y)?;
            c.unary(Op::Scale(0.5), q)
        })?,
        // ∂x^(−1/2) = −g·y³/2
        Op::Rsqrt => c.grad(0, |c| {
            let y2 = c.mul(y, y)?;
            let y3 = c.mul(y2, y)?;
            let gy3 = c.mul(g, y3)?;
            c.unary(Op::Scale(-0.5), gy3)
        })?,
        // ∂erf x = g·(2/√π)·e^(−x²)
        Op::Erf => c.grad(0, |c| {
            let x2 = c.mul(x[0], x[0])?;
            let e = c.unary(Op::Scale(-1.0), x2)?;
            let e = c.unary(Op::Exp, e)?;
            let d = c.unary(Op::Scale(2.0 / PI.sqrt()), e)?;
            c.mul(g, d)
        })?,
        // ∂|x| = g·sign(x)
        Op::Abs => c.grad(0, |c| {
            let s = c.unary(Op::Sign, x[0])?;
            c.mul(g, s)
        })?,
        // ∂(1/x) = −g·y²
        Op::Recip => c.grad(0, |c| {
            let y2 = c.mul(y, y)?;
            let gy2 = c.mul(g, y2)?;
            c.unary(Op::Neg, gy2)
        })?,
        // ∂(s·x) = s·g
        Op::Scale(s) => c.grad(0, |c| c.unary(Op::Scale(*s), g))?,
        // ∂cast x = g cast back (only float → float casts carry a gradient)
        Op::Cast(_) => c.grad(0, |c| {
            let to = c.dtype_of(x[0]);
            c.unary(Op::Cast(to), g)
        })?,
        // ∂reduce: g spread back over the reduced axes (see reduce_grad)
        Op::Reduce {
            kind,
            axes,
            keepdims,
        } => c.grad(0, |c| reduce_grad(c, *kind, axes, *keepdims, x[0], y, g))?,
        // ∂broadcast x = g, summed back to x's shape by the caller
        Op::Broadcast { .. } => c.grad(0, |_| Ok(g))?,
        // ∂softmax x = y·(g − Σₐₓᵢₛ g·y)
        Op::Softmax { axis } => c.grad(0, |c| {
            let gy = c.mul(g, y)?;
            let s = c.push(reduce(ReduceKind::Sum, vec![*axis], true), &[gy])?;
            let d = c.sub(g, s)?;
            c.mul(y, d)
        })?,
        // See layer_norm_grad.
        Op::LayerNorm { axis, eps, affine } => layer_norm_grad(c, x, g, *axis, *eps, *affine)?,
        // ∂reshape x = g reshaped back
        Op::Reshape { .. } => c.grad(0, |c| {
            let shape = c.shape(x[0]);
            c.unary(Op::Reshape { shape }, g)
        })?,
        // ∂transpose(x, p) = transpose(g, p⁻¹)
        Op::Transpose { perm } => c.grad(0, |c| {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            c.unary(Op::Transpose { perm: inv }, g)
        })?,
        // ∂x[r] = g padded with zeros back to x's shape
        Op::Slice { ranges } => c.grad(0, |c| {
            let dims = c.shape(x[0]);
            let pads = ranges.iter().zip(dims.dims());
            let pads = pads.map(|(r, &n)| (r.start, n - r.end)).collect();
            c.unary(Op::Pad { pads, value: 0.0 }, g)
        })?,
        // ∂pad x = the slice of g where x sits
        Op::Pad { pads, .. } => c.grad(0, |c| {
            let dims = c.shape(x[0]);
            let ranges = pads.iter().zip(dims.dims());
            let ranges = ranges.map(|(&(b, _), &n)| b..b + n).collect();
            c.unary(Op::Slice { ranges }, g)
        })?,
        // ∂concat(x₁…xₙ) = the pieces of g along the axis
        Op::Concat { axis } => {
            let full = c.shape(y);
            let mut start = 0;
            for (i, &xi) in x.iter().enumerate() {
                let len = c.shape(xi).dims()[*axis];
                c.grad(i, |c| {
                    let mut ranges: Vec<_> = full.dims().iter().map(|&n| 0..n).collect();
                    ranges[*axis] = start..start + len;
                    c.unary(Op::Slice { ranges }, g)
                })?;
                start += len;
            }
        }
        // ∂gather(T, ids) = (scatter_add(g, ids, V), –)
        Op::Gather => c.grad(0, |c| {
            let rows = c.shape(x[0]).dims()[0];
            c.push(Op::ScatterAdd { rows }, &[g, x[1]])
        })?,
        // ∂scatter_add(u, ids) = (gather(g, ids), –)
        Op::ScatterAdd { .. } => c.grad(0, |c| c.push(Op::Gather, &[g, x[1]]))?,
        // y[r] = x[r]·w[ids[r]]: ∂x = gather_matmul(g, wᵀ, ids) (w's last two
        // axes swapped), ∂w[n] = Σ_{r: ids[r] = n} x[r]ᵀ·g[r].
        Op::GatherMatMul => {
            c.grad(0, |c| {
                let wt = c.mt(x[1])?;
                c.push(Op::GatherMatMul, &[g, wt, x[2]])
            })?;
            c.grad(1, |c| gather_matmul_weight_grad(c, x, g))?;
        }
        // y = x ⋆ w: ∂x = conv2d_input_grad(g, w), ∂w = conv2d_weight_grad(x, g)
        Op::Conv2d(p) => {
            c.grad(0, |c| {
                let input_size = hw(&c.shape(x[0]));
                c.push(conv_input_grad(p, input_size), &[g, x[1]])
            })?;
            c.grad(1, |c| {
                let kernel = hw(&c.shape(x[1]));
                c.push(conv_weight_grad(p, kernel), &[x[0], g])
            })?;
        }
        // y = Cᵀ(dy, w), linear in each: ∂dy = g ⋆ w, ∂w = conv2d_weight_grad(g, dy)
        Op::Conv2dInputGrad { params, .. } => {
            c.grad(0, |c| c.push(Op::Conv2d(*params), &[g, x[1]]))?;
            c.grad(1, |c| {
                let kernel = hw(&c.shape(x[1]));
                c.push(conv_weight_grad(params, kernel), &[g, x[0]])
            })?;
        }
        // y = Σₙ dy·im2col(x)ᵀ: ∂x = conv2d_input_grad(dy, g), ∂dy = x ⋆ g
        Op::Conv2dWeightGrad { params, .. } => {
            c.grad(0, |c| {
                let input_size = hw(&c.shape(x[0]));
                c.push(conv_input_grad(params, input_size), &[x[1], g])
            })?;
            c.grad(1, |c| c.push(Op::Conv2d(*params), &[x[0], g]))?;
        }
    }
    Ok(())
}

fn reduce(kind: ReduceKind, axes: Vec<usize>, keepdims: bool) -> Op {
    Op::Reduce {
        kind,
        axes,
        keepdims,
    }
}

/// The last two dims of a rank-4 shape: (H, W) or (kh, kw).
fn hw(s: &Shape) -> (usize, usize) {
    let d = s.dims();
    (d[2], d[3])
}

fn conv_input_grad(params: &Conv2dParams, input_size: (usize, usize)) -> Op {
    let params = *params;
    Op::Conv2dInputGrad { params, input_size }
}

fn conv_weight_grad(params: &Conv2dParams, kernel: (usize, usize)) -> Op {
    let params = *params;
    Op::Conv2dWeightGrad { params, kernel }
}

/// `g` of the reduced shape spread over x's shape: sum copies it, mean
/// divides by the count, max sends it to the maxima (split evenly on ties).
fn reduce_grad(
    c: &mut Vjp,
    kind: ReduceKind,
    axes: &[usize],
    keepdims: bool,
    x: NodeId,
    y: NodeId,
    g: NodeId,
) -> Result<NodeId> {
    let xs = c.shape(x);
    let kept: Vec<usize> = (0..xs.rank())
        .map(|i| if axes.contains(&i) { 1 } else { xs.dims()[i] })
        .collect();
    let keep = |c: &mut Vjp, v| match keepdims {
        true => Ok(v),
        false => c.unary(
            Op::Reshape {
                shape: kept.clone().into(),
            },
            v,
        ),
    };
    let gk = keep(c, g)?;
    let spread = c.unary(Op::Broadcast { shape: xs.clone() }, gk)?;
    match kind {
        ReduceKind::Sum => Ok(spread),
        ReduceKind::Mean => {
            let n: usize = axes.iter().map(|&a| xs.dims()[a]).product();
            c.unary(Op::Scale(1.0 / n as f64), spread)
        }
        ReduceKind::Max => {
            let yk = keep(c, y)?;
            let mask = c.push(Op::Eq, &[x, yk])?;
            let count = c.push(reduce(ReduceKind::Sum, axes.to_vec(), true), &[mask])?;
            let share = c.div(mask, count)?;
            c.mul(share, spread)
        }
    }
}

/// Layer norm over axes A = axis..rank with n elements each, x̂ = (x − μ)·r,
/// r = 1/√(var + eps), y = x̂·γ + β:
/// ∂β = Σ_lead g, ∂γ = Σ_lead g·x̂, and with ĝ = g·γ (or g),
/// ∂x = r·(ĝ − mean_A ĝ − x̂·mean_A(ĝ·x̂)).
fn layer_norm_grad(
    c: &mut Vjp,
    x: &[NodeId],
    g: NodeId,
    axis: usize,
    eps: f64,
    affine: bool,
) -> Result<()> {
    let rank = c.shape(x[0]).rank();
    let inner: Vec<usize> = (axis..rank).collect();
    let lead: Vec<usize> = (0..axis).collect();
    let mean = |c: &mut Vjp, v| c.push(reduce(ReduceKind::Mean, inner.clone(), true), &[v]);
    // Recompute the statistics: x̂ and r.
    let mu = mean(c, x[0])?;
    let d = c.sub(x[0], mu)?;
    let d2 = c.mul(d, d)?;
    let var = mean(c, d2)?;
    let e = c.scalar(eps)?;
    let ve = c.add(var, e)?;
    let r = c.unary(Op::Rsqrt, ve)?;
    let xhat = c.mul(d, r)?;
    let sum_lead = |c: &mut Vjp, v| match lead.is_empty() {
        true => Ok(v),
        false => c.push(reduce(ReduceKind::Sum, lead.clone(), false), &[v]),
    };
    if affine {
        c.grad(1, |c| {
            let gx = c.mul(g, xhat)?;
            sum_lead(c, gx)
        })?;
        c.grad(2, |c| sum_lead(c, g))?;
    }
    c.grad(0, |c| {
        let gh = if affine { c.mul(g, x[1])? } else { g };
        let m1 = mean(c, gh)?;
        let ghx = c.mul(gh, xhat)?;
        let m2 = mean(c, ghx)?;
        let t = c.mul(xhat, m2)?;
        let a = c.sub(gh, m1)?;
        let b = c.sub(a, t)?;
        c.mul(r, b)
    })
}

/// ∂w of `gather_matmul(x [R, K], w [N, K, M], ids)`: the per-row outer
/// products x[r]ᵀ·g[r] ([R, K, M]) scatter-added into row ids[r]; rows with
/// id −1 are zeroed and sent to row 0 (ids·[ids ≥ 0]), so they add nothing.
fn gather_matmul_weight_grad(c: &mut Vjp, x: &[NodeId], g: NodeId) -> Result<NodeId> {
    let (xs, ws) = (c.shape(x[0]), c.shape(x[1]));
    let (r, k) = (xs.dims()[0], xs.dims()[1]);
    let (n, m) = (ws.dims()[0], ws.dims()[2]);
    let col = c.push(reshape([r, k, 1]), &[x[0]])?;
    let row = c.push(reshape([r, 1, m]), &[g])?;
    let outer = c.push(Op::MatMul, &[col, row])?;
    let flat = c.push(reshape([r, k * m]), &[outer])?;
    let zero = TensorData::scalar(0.0, DType::I64);
    let zero = c.graph.named(c.name.clone()).constant(zero)?;
    let valid = c.push(Op::Ge, &[x[2], zero])?;
    let ids = c.mul(x[2], valid)?;
    let valid = c.push(Op::Cast(c.dtype), &[valid])?;
    let valid = c.push(reshape([r, 1]), &[valid])?;
    let masked = c.mul(flat, valid)?;
    let sum = c.push(Op::ScatterAdd { rows: n }, &[masked, ids])?;
    c.push(reshape([n, k, m]), &[sum])
}

fn reshape<const R: usize>(dims: [usize; R]) -> Op {
    Op::Reshape {
        shape: Shape::from(dims),
    }
}

/// gelu″(x) = φ(x)·(2 − x²), φ(x) = e^(−x²/2)/√(2π).
fn gelu_second_derivative(c: &mut Vjp, x: NodeId) -> Result<NodeId> {
    let x2 = c.mul(x, x)?;
    let e = c.unary(Op::Scale(-0.5), x2)?;
    let e = c.unary(Op::Exp, e)?;
    let phi = c.unary(Op::Scale(1.0 / (2.0 * PI).sqrt()), e)?;
    let two = c.scalar(2.0)?;
    let m = c.sub(two, x2)?;
    c.mul(phi, m)
}

/// The tanh GELU's second derivative, with u = k₀(x + k₁x³), t = tanh u:
/// f″ = (1 − t²)·(u′ − x·t·u′² + x·u″/2), u′ = k₀(1 + 3k₁x²), u″ = 6k₀k₁x.
fn gelu_tanh_second_derivative(c: &mut Vjp, x: NodeId) -> Result<NodeId> {
    let (k0, k1) = ((2.0 / PI).sqrt(), 0.044_715);
    let x2 = c.mul(x, x)?;
    let x3 = c.mul(x2, x)?;
    let cube = c.unary(Op::Scale(k1), x3)?;
    let inner = c.add(x, cube)?;
    let u = c.unary(Op::Scale(k0), inner)?;
    let t = c.unary(Op::Tanh, u)?;
    let one = c.scalar(1.0)?;
    let q = c.unary(Op::Scale(3.0 * k1), x2)?;
    let q = c.add(one, q)?;
    let du = c.unary(Op::Scale(k0), q)?;
    // x·u″/2 = 3k₀k₁x².
    let half_xddu = c.unary(Op::Scale(3.0 * k0 * k1), x2)?;
    let du2 = c.mul(du, du)?;
    let xt = c.mul(x, t)?;
    let xtdu2 = c.mul(xt, du2)?;
    let s = c.sub(du, xtdu2)?;
    let s = c.add(s, half_xddu)?;
    let t2 = c.mul(t, t)?;
    let sech2 = c.sub(one, t2)?;
    c.mul(sech2, s)
}
