//! The graph export of the LoRA branch and the adapter: the DAG of
//! `docs/lora.md`, node for node.
//!
//! At the adapter path `P`, with the base layer exported under
//! `P.base_layer` up to its pre-activation:
//!
//! ```text
//! x ─ base_layer.matmul ─ base_layer.bias_add ───────────────┐
//!  └─ P.lora_xa (x·A) ─ P.lora_xab (·B) ─ P.lora_scale (·s) ─ P.add ─ P.act
//! ```
//!
//! One Add node (`P.add`) joins the two paths; the activation follows it.
//! The branch is `x·A·B` for Linear, two convolutions for Conv2d (A as an
//! `r`-channel kernel with the base's stride and padding, B as a 1×1
//! kernel), and `gather(A, ids)·B` for Embedding; the LoRA bias is added
//! after the scaling (`P.lora_bias_add`). With DoRA,
//! `z = (m/n) ⊙ (pre − b + s·lora(x)) + b` where `n = ‖W̃ + s·A·B‖` per output
//! feature passes through a StopGradient (`P.lora_dora_norm`), so autodiff
//! gives PEFT's gradients (the norm is detached). All branch nodes are
//! named `P.lora_…`, so DOT pictures cluster them per adapter.

use super::adapter::LoraAdapter;
use super::layer::LoraLayer;
use super::target::{LoraGeometry, LoraTarget};
use crate::export::{self, ExportContext, NodeInput, NodeInputs};
use crate::layer::Weight;
use crate::{Error, Result};
use cranelora_graph::{Conv2dParams, NodeId, Op, ReduceKind, Shape};
use cranelora_kernels::Scalar;

/// `v` (`[C]`) reshaped to broadcast along the channel axis of the
/// geometry's output: unchanged for the last axis, `[C, 1, 1]` for NCHW.
fn along_channels(
    ctx: &mut ExportContext<'_>,
    suffix: &str,
    v: NodeId,
    geometry: LoraGeometry,
) -> Result<NodeId> {
    match geometry {
        LoraGeometry::Conv2d { out_channels, .. } => {
            Ok(ctx.named(suffix).reshape(v, [out_channels, 1, 1])?)
        }
        _ => Ok(v),
    }
}

impl<T: Scalar> LoraLayer<T> {
    /// Whether the JIT lowers every op [`LoraLayer::export_branch`] and the DoRA export emit.
    pub(crate) fn export_lowerable(&self) -> bool {
        let any = Shape::scalar();
        let branch = match self.geometry() {
            LoraGeometry::Linear { .. } => vec![Op::MatMul],
            LoraGeometry::Conv2d { .. } => vec![
                Op::Transpose { perm: vec![] },
                Op::Reshape { shape: any.clone() },
                Op::Conv2d(Conv2dParams::default()),
            ],
            LoraGeometry::Embedding { .. } => vec![Op::Gather, Op::MatMul],
        };
        let common = [Op::Scale(1.0), Op::Add, Op::Reshape { shape: any }];
        let dora = [
            Op::MatMul,
            Op::Mul,
            Op::Div,
            Op::Neg,
            Op::Sqrt,
            Op::StopGradient,
            Op::Transpose { perm: vec![] },
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes: vec![0],
                keepdims: false,
            },
        ];
        let dora_ok = self.magnitude().is_none() || export::lowerable(&dora);
        export::lowerable(&branch) && export::lowerable(&common) && dora_ok
    }

    /// Appends `s·branch(x) + lora_bias` at the adapter's path (no DoRA
    /// scaling: the adapter applies it): `forward` as a graph.
    ///
    /// # Errors
    /// A missing input or a shape the branch cannot take.
    pub(crate) fn export_branch(
        &self,
        ctx: &mut ExportContext<'_>,
        inputs: &[NodeInput],
    ) -> Result<NodeId> {
        let inputs = NodeInputs::new(inputs, "LoraLayer");
        let (a, b) = (ctx.weight(self.a(), true)?, ctx.weight(self.b(), true)?);
        let (r, out) = (self.config().rank, self.geometry().fan_out());
        let up = match self.geometry() {
            LoraGeometry::Linear { in_features, .. } => {
                let x = inputs.float(0)?;
                let dims = ctx.dims(x)?;
                if dims.last() != Some(&in_features) {
                    let expected = format!("[.., {in_features}]");
                    return Err(Error::shape("LoraLayer", "input", expected, &dims));
                }
                let xa = ctx.named("lora_xa").matmul(x, a)?;
                ctx.named("lora_xab").matmul(xa, b)?
            }
            LoraGeometry::Conv2d {
                in_channels,
                kernel,
                stride,
                padding,
                dilation,
                ..
            } => {
                let x = inputs.float(0)?;
                // A (C·kh·kw × r) is the r-channel kernel Aᵀ reshaped to [r, C, kh, kw].
                let at = ctx.named("lora_a_t").transpose(a, &[1, 0])?;
                let shape = [r, in_channels, kernel.0, kernel.1];
                let ak = ctx.named("lora_a_kernel").reshape(at, shape)?;
                let params = Conv2dParams {
                    stride,
                    padding,
                    dilation,
                };
                let xa = ctx.named("lora_xa").conv2d(x, ak, params)?;
                // B (r × out) is the 1×1 kernel Bᵀ reshaped to [out, r, 1, 1].
                let bt = ctx.named("lora_b_t").transpose(b, &[1, 0])?;
                let bk = ctx.named("lora_b_kernel").reshape(bt, [out, r, 1, 1])?;
                let unit = Conv2dParams::default();
                ctx.named("lora_xab").conv2d(xa, bk, unit)?
            }
            LoraGeometry::Embedding { .. } => {
                let ids = inputs.ids()?;
                let xa = ctx.named("lora_xa").gather(a, ids)?;
                ctx.named("lora_xab").matmul(xa, b)?
            }
        };
        let mut y = ctx.named("lora_scale").scale(up, self.config().scaling())?;
        if let Some(bias) = self.bias() {
            let bias = ctx.weight(bias, true)?;
            let bias = along_channels(ctx, "lora_bias_reshape", bias, self.geometry())?;
            y = ctx.named("lora_bias_add").add(y, bias)?;
        }
        Ok(y)
    }
}

impl<T: Scalar> LoraAdapter<T> {
    fn target(&self) -> &dyn LoraTarget<T> {
        self.base_layer()
            .as_lora_target()
            .expect("internal: the base was checked to be a LoRA target")
    }

    /// The adapter's eval-mode forward as a graph (module docs).
    pub(crate) fn export_adapter(
        &self,
        ctx: &mut ExportContext<'_>,
        inputs: &[NodeInput],
    ) -> Result<NodeId> {
        let t = self.target();
        let pre = ctx.child("base_layer", |ctx| t.export_pre(ctx, inputs))?;
        let delta = self.lora_layer().export_branch(ctx, inputs)?;
        let (pd, dd) = (ctx.dims(pre)?, ctx.dims(delta)?);
        if pd != dd {
            let (what, expected) = ("LoRA branch output", format!("the base's {pd:?}"));
            return Err(Error::shape("LoraAdapter", what, expected, &dd));
        }
        let z = match self.lora_layer().magnitude() {
            None => ctx.named("add").add(pre, delta)?,
            Some(m) => self.export_dora(ctx, pre, delta, m)?,
        };
        t.activation().export(ctx, z)
    }

    /// `n = ‖W̃ + s·A·B‖` per output feature (columns of the `fan_in × out`
    /// matrix), behind a StopGradient.
    fn export_dora_norm(&self, ctx: &mut ExportContext<'_>) -> Result<NodeId> {
        let (t, lora) = (self.target(), self.lora_layer());
        let geometry = lora.geometry();
        let w = ctx.child("base_layer", |ctx| ctx.weight(t.lora_weight(), false))?;
        // W̃: the conv kernel [O, C, kh, kw] flattened to O × fan_in, transposed.
        let w = match geometry {
            LoraGeometry::Conv2d { out_channels, .. } => {
                let flat = [out_channels, geometry.fan_in()];
                let flat = ctx.named("lora_dora_w_flat").reshape(w, flat)?;
                ctx.named("lora_dora_w").transpose(flat, &[1, 0])?
            }
            _ => w,
        };
        let (a, b) = (ctx.weight(lora.a(), true)?, ctx.weight(lora.b(), true)?);
        let ab = ctx.named("lora_dora_ab").matmul(a, b)?;
        let delta = ctx
            .named("lora_dora_delta")
            .scale(ab, lora.config().scaling())?;
        let v = ctx.named("lora_dora_v").add(w, delta)?;
        let squares = ctx.named("lora_dora_v2").mul(v, v)?;
        let sum = ctx.named("lora_dora_sum");
        let sum = sum.reduce(squares, ReduceKind::Sum, &[0], false)?;
        let norm = ctx.named("lora_dora_sqrt").sqrt(sum)?;
        Ok(ctx.named("lora_dora_norm").stop_gradient(norm)?)
    }

    /// `z = (m/n) ⊙ (pre − b + delta) + b`, with the join `P.add` inside.
    fn export_dora(
        &self,
        ctx: &mut ExportContext<'_>,
        pre: NodeId,
        delta: NodeId,
        magnitude: &Weight<T>,
    ) -> Result<NodeId> {
        let geometry = self.lora_layer().geometry();
        let norm = self.export_dora_norm(ctx)?;
        let m = ctx.weight(magnitude, true)?;
        let scale = ctx.named("lora_dora_scale").div(m, norm)?;
        let scale = along_channels(ctx, "lora_dora_scale_reshape", scale, geometry)?;
        let t = self.target();
        let bias = match t.lora_bias() {
            Some(b) => {
                let b = ctx.child("base_layer", |ctx| ctx.weight(b, false))?;
                Some(along_channels(ctx, "lora_dora_bias_reshape", b, geometry)?)
            }
            None => None,
        };
        let unbiased = match bias {
            None => pre,
            Some(b) => match unbiased_operand(ctx, pre) {
                // The base exported `pre = y + b`: take `y` itself, which is
                // exact and leaves `(x·W + s·x·A·B)·(m/n)` for LoRA folding.
                Some(y) => y,
                None => {
                    let neg = ctx.named("lora_dora_bias_neg").neg(b)?;
                    ctx.named("lora_dora_unbias").add(pre, neg)?
                }
            },
        };
        let inner = ctx.named("add").add(unbiased, delta)?;
        let z = ctx.named("lora_dora_mul").mul(inner, scale)?;
        match bias {
            Some(b) => Ok(ctx.named("lora_dora_rebias").add(z, b)?),
            None => Ok(z),
        }
    }
}

/// If `pre` is the base's `bias_add` node (`y + b`, as Dense, FullyConnected
/// and Conv2d export their bias), the operand `y` before the bias.
fn unbiased_operand(ctx: &mut ExportContext<'_>, pre: NodeId) -> Option<NodeId> {
    let g = ctx.graph();
    let node = g.node(pre)?;
    let is_bias_add = matches!(node.op, cranelora_graph::Op::Add)
        && node
            .name
            .as_deref()
            .is_some_and(|n| n.ends_with(".bias_add"));
    is_bias_add
        .then(|| g.operands(pre).first().copied())
        .flatten()
}
