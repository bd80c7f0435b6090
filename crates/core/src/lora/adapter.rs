//! `LoraAdapter<T>`: the seed's LoRAAdapterBase, written once for every
//! layer type.
//!
//! **Where the delta goes.** The seed writes `output = base(x) + lora(x)`.
//! For a layer with a built-in activation that would make merging
//! impossible, so — a deliberate reading of the seed — the delta is added to
//! the base's *pre-activation* output and the activation applied after:
//! `y = act(pre(x) + s·lora(x))`. For activation-free layers this is
//! exactly the seed's formula, and it is what PEFT computes when the
//! activation is a separate module; it is the only reading under which a
//! merged layer equals the adapter.
//!
//! **DoRA** (PEFT's formula): with `V = W̃ + s·A·B` and `n` the L2 norm of
//! each output feature's column of V, treated as a constant in backward,
//! `y = act((m/n) ⊙ (pre(x) − bias + s·lora(x)) + bias)`.
//!
//! **Parameters**: the base layer is the child `base_layer`; the LoRA
//! matrices are the adapter's own weights `lora_a`, `lora_b`, then
//! `lora_bias` and `lora_magnitude` if configured. The flat vector is
//! therefore the base's trainable weights (none when frozen) followed by A,
//! B, the LoRA bias, the DoRA magnitude.

use super::channels;
use super::config::LoraConfig;
use super::layer::LoraLayer;
use super::target::{LoraGeometry, LoraTarget};
use crate::activation::Activation;
use crate::export::{ExportContext, NodeInput};
use crate::layer::{weight_diagnostics, Diagnostics, Input, Layer, Weight};
use crate::{Error, Result, Tensor};
use cranelora_graph::NodeId;
use cranelora_kernels::Scalar;

/// DoRA's per-forward quantities.
#[derive(Clone, Debug)]
struct DoraCache<T> {
    /// n, the column norms of V (constant in backward).
    norm: Tensor<T>,
    /// `pre − bias + s·lora`, the input of the m/n scaling.
    inner: Tensor<T>,
}

/// A LoRA adapter around a base layer.
#[derive(Debug)]
pub struct LoraAdapter<T> {
    base: Box<dyn Layer<T>>,
    lora: LoraLayer<T>,
    training: bool,
    cache: Option<ForwardCache<T>>,
    /// A DoRA norm held fixed instead of recomputed (the gradient-check surrogate).
    held_norm: Option<Tensor<T>>,
}

/// What backward needs from the last training-mode forward.
#[derive(Clone, Debug)]
struct ForwardCache<T> {
    /// The pre-activation z.
    z: Tensor<T>,
    /// The output y = act(z).
    y: Tensor<T>,
    /// DoRA's quantities, with DoRA.
    dora: Option<DoraCache<T>>,
}

// Manual: a derive would not see that `Box<dyn Layer<T>>` is Clone for `T: Scalar`.
impl<T: Scalar> Clone for LoraAdapter<T> {
    fn clone(&self) -> Self {
        Self {
            base: self.base.clone(),
            lora: self.lora.clone(),
            training: self.training,
            cache: self.cache.clone(),
            held_norm: self.held_norm.clone(),
        }
    }
}

fn target<T: Scalar>(base: &dyn Layer<T>) -> &dyn LoraTarget<T> {
    base.as_lora_target()
        .expect("internal: the base was checked to be a LoRA target")
}

impl<T: Scalar> LoraAdapter<T> {
    /// Checks that `base` can be wrapped with `config`; returns its geometry.
    ///
    /// # Errors
    /// [`Error::Config`] if the layer is not a LoRA target, the rank breaks
    /// `1 ≤ r ≤ min(fan_in, out)`, or the variant does not apply.
    pub fn check(base: &dyn Layer<T>, config: &LoraConfig) -> Result<LoraGeometry> {
        let t = base.as_lora_target().ok_or_else(|| {
            Error::config("LoraAdapter", format!("a {} layer cannot be adapted with LoRA (targets: Dense, FullyConnected, Conv2d, Embedding)", base.kind()))
        })?;
        let g = t.lora_geometry();
        LoraLayer::<T>::new(g, *config)?;
        Ok(g)
    }

    /// Wraps `base` (the seed's constructor: rank, alpha defaulting to rank,
    /// freeze_base defaulting to true — all in `config`).
    ///
    /// # Errors
    /// As [`LoraAdapter::check`].
    pub fn new(mut base: Box<dyn Layer<T>>, config: LoraConfig) -> Result<Self> {
        let geometry = Self::check(base.as_ref(), &config)?;
        let mut lora = LoraLayer::new(geometry, config)?;
        if config.freeze_base {
            base.set_trainable(false);
        }
        if config.use_dora {
            // m starts at n = ‖W̃ + s·A·B‖ per column, so the adapter starts as the base.
            let v = geometry
                .to_fan_in_out(target(base.as_ref()).lora_weight().value())?
                .add(&lora.delta()?)?;
            let norm = channels::column_norms(&v)?;
            lora.magnitude_mut()
                .expect("internal: DoRA has a magnitude")
                .set_value(norm)?;
        }
        base.set_training(true);
        Ok(Self {
            base,
            lora,
            training: true,
            cache: None,
            held_norm: None,
        })
    }

    /// [`LoraAdapter::new`] for an unboxed layer.
    ///
    /// # Errors
    /// As [`LoraAdapter::check`].
    pub fn wrap(base: impl Layer<T> + 'static, config: LoraConfig) -> Result<Self> {
        Self::new(Box::new(base), config)
    }

    /// α.
    pub fn alpha(&self) -> f64 {
        self.lora.config().alpha()
    }

    /// The rank r.
    pub fn rank(&self) -> usize {
        self.lora.config().rank
    }

    /// The scaling s (α/r, or α/√r with rsLoRA).
    pub fn scaling(&self) -> f64 {
        self.lora.config().scaling()
    }

    /// The configuration.
    pub fn config(&self) -> &LoraConfig {
        self.lora.config()
    }

    /// The wrapped base layer.
    pub fn base_layer(&self) -> &dyn Layer<T> {
        self.base.as_ref()
    }

    /// The LoRA branch.
    pub fn lora_layer(&self) -> &LoraLayer<T> {
        &self.lora
    }

    /// The LoRA branch, mutably (e.g. to set A and B).
    pub fn lora_layer_mut(&mut self) -> &mut LoraLayer<T> {
        &mut self.lora
    }

    /// Whether no base weight is trainable.
    pub fn is_base_frozen(&self) -> bool {
        self.base.parameter_count() == 0
    }

    /// DoRA only: holds n at its current value (`true`) instead of
    /// recomputing it from A and B on every forward, or releases it. With n
    /// held, the forward is the surrogate whose exact derivative the backward
    /// computes (PEFT's detached norm), which is what finite-difference
    /// checks need. Not for training.
    #[doc(hidden)]
    pub fn hold_dora_norm(&mut self, hold: bool) -> Result<()> {
        self.held_norm = match (hold, self.lora.magnitude()) {
            (true, Some(_)) => Some(channels::column_norms(&self.adapted_weight()?)?),
            _ => None,
        };
        Ok(())
    }

    fn geometry(&self) -> LoraGeometry {
        self.lora.geometry()
    }

    /// `V = W̃ + s·A·B`, the adapted weight as a `fan_in × out` matrix.
    fn adapted_weight(&self) -> Result<Tensor<T>> {
        let w = target(self.base.as_ref()).lora_weight().value();
        self.geometry().to_fan_in_out(w)?.add(&self.lora.delta()?)
    }

    /// m / n per output feature, or `None` without DoRA.
    fn dora_scale(&self, norm: &Tensor<T>) -> Option<Result<Tensor<T>>> {
        self.lora.magnitude().map(|m| m.value().div(norm))
    }
}

impl<T: Scalar> LoraAdapter<T> {
    fn base_mut(&mut self) -> &mut dyn LoraTarget<T> {
        self.base
            .as_lora_target_mut()
            .expect("internal: the base was checked to be a LoRA target")
    }

    fn activation(&self) -> Activation {
        target(self.base.as_ref()).activation()
    }

    fn bias_value(&self) -> Option<Tensor<T>> {
        target(self.base.as_ref())
            .lora_bias()
            .map(|b| b.value().clone())
    }

    /// The pre-activation `z` and, with DoRA, its cached quantities.
    fn pre_activation(
        &mut self,
        inputs: &[Input<'_, T>],
    ) -> Result<(Tensor<T>, Option<DoraCache<T>>)> {
        let pre = self
            .base_mut()
            .forward_pre(inputs)
            .map_err(|e| e.at("base_layer"))?;
        let delta = self.lora.forward(inputs)?;
        if delta.shape() != pre.shape() {
            return Err(Error::shape(
                "LoraAdapter",
                "LoRA branch output",
                format!("the base's {:?}", pre.shape()),
                delta.shape(),
            ));
        }
        let norm = match self.lora.magnitude() {
            None => return Ok((pre.add(&delta)?, None)),
            Some(_) => match &self.held_norm {
                Some(n) => n.clone(),
                None => channels::column_norms(&self.adapted_weight()?)?,
            },
        };
        let axis = self.geometry().channel_axis(pre.ndim());
        let bias = self.bias_value();
        let pre_nb = match &bias {
            Some(b) => channels::add(&pre, &b.map(|v| -v), axis)?,
            None => pre,
        };
        let inner = pre_nb.add(&delta)?;
        let scale = self
            .dora_scale(&norm)
            .expect("internal: DoRA has a magnitude")?;
        let mut z = channels::scale(&inner, &scale, axis)?;
        if let Some(b) = &bias {
            z = channels::add(&z, b, axis)?;
        }
        Ok((z, Some(DoraCache { norm, inner })))
    }

    /// Backward of the DoRA scaling: accumulates ∂m and fixes the bias
    /// gradient; returns the gradient entering the base and LoRA paths.
    fn backward_dora(&mut self, gz: &Tensor<T>, dora: &DoraCache<T>) -> Result<Tensor<T>> {
        let axis = self.geometry().channel_axis(gz.ndim());
        let scale = self
            .dora_scale(&dora.norm)
            .expect("internal: DoRA has a magnitude")?;
        // z = (m/n)·inner + b with n constant: ∂m = Σ gz·inner / n, ∂inner = gz·m/n.
        let dm = channels::sum(&gz.mul(&dora.inner)?, axis)?.div(&dora.norm)?;
        self.lora
            .magnitude_mut()
            .expect("internal: DoRA has a magnitude")
            .accumulate_grad(&dm)?;
        let g_inner = channels::scale(gz, &scale, axis)?;
        if let Some(b) = self.base_mut().lora_bias_mut().filter(|b| b.trainable()) {
            // The base's backward adds Σ g_inner to its bias; the bias is outside the scaling.
            b.accumulate_grad(&channels::sum(&gz.sub(&g_inner)?, axis)?)?;
        }
        Ok(g_inner)
    }

    /// A plain layer of the base's type whose forward equals the adapter's
    /// (the seed's MergeToOriginalLayer): `W̃ + s·A·B` (DoRA: `(m/n) ⊙ V`),
    /// bias plus the LoRA bias, activation kept.
    ///
    /// # Errors
    /// [`Error::Config`] if a merged weight is not finite (PEFT's
    /// `safe_merge`): the adapter is left as it was.
    pub fn merge(&self) -> Result<Box<dyn Layer<T>>> {
        let mut v = self.adapted_weight()?;
        if let Some(scale) = self.dora_scale(&channels::column_norms(&v)?) {
            v = v.mul(&scale?.reshape(&[1, self.geometry().fan_out()])?)?;
        }
        let bias = match (self.bias_value(), self.lora.bias()) {
            (Some(b), Some(lb)) => Some(b.add(lb.value())?),
            (None, Some(lb)) => Some(lb.value().clone()),
            (b, None) => b,
        };
        let finite = |t: &Tensor<T>| t.array().iter().all(|v| v.is_finite());
        if !finite(&v) || !bias.as_ref().is_none_or(finite) {
            return Err(Error::config(
                "LoraAdapter",
                "merge refused: the merged weights would not be finite",
            ));
        }
        let weight = self.geometry().from_fan_in_out(&v)?;
        let mut merged = target(self.base.as_ref()).with_weights(weight, bias)?;
        merged.set_trainable(true);
        Ok(merged)
    }

    /// Recovers an adapter from a layer merged from this one: the base is
    /// `merged − s·A·B` (DoRA: `merged ⊙ n/m − s·A·B`, with n taken from
    /// this adapter's base, i.e. the norm at merge time), the LoRA part is
    /// this adapter's. Inverts [`LoraAdapter::merge`] up to rounding.
    ///
    /// # Errors
    /// [`Error::Config`] if `merged` is not a LoRA target of the same geometry.
    pub fn unmerge(&self, merged: &dyn Layer<T>) -> Result<Self> {
        let t = merged
            .as_lora_target()
            .filter(|t| t.lora_geometry() == self.geometry())
            .ok_or_else(|| {
                Error::config(
                    "LoraAdapter",
                    format!(
                        "cannot unmerge a {} that does not have this adapter's geometry",
                        merged.kind()
                    ),
                )
            })?;
        let mut v = self.geometry().to_fan_in_out(t.lora_weight().value())?;
        if let Some(scale) = self.dora_scale(&channels::column_norms(&self.adapted_weight()?)?) {
            v = v.div(&scale?.reshape(&[1, self.geometry().fan_out()])?)?;
        }
        let w = self
            .geometry()
            .from_fan_in_out(&v.sub(&self.lora.delta()?)?)?;
        let bias = match (t.lora_bias(), self.lora.bias()) {
            (Some(b), Some(lb)) if self.bias_value().is_some() => Some(b.value().sub(lb.value())?),
            (Some(_), Some(_)) => None,
            (b, _) => b.map(|b| b.value().clone()),
        };
        let mut base = t.with_weights(w, bias)?;
        if self.lora.config().freeze_base {
            base.set_trainable(false);
        }
        Ok(Self {
            base,
            lora: self.lora.clone(),
            training: self.training,
            cache: None,
            held_norm: None,
        })
    }
}

impl<T: Scalar> Layer<T> for LoraAdapter<T> {
    fn kind(&self) -> &'static str {
        "LoraAdapter"
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let (z, dora) = self.pre_activation(inputs)?;
        let y = self.activation().apply(&z);
        self.cache = self.training.then(|| ForwardCache {
            z,
            y: y.clone(),
            dora,
        });
        Ok(y)
    }

    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        let ForwardCache { z, y, dora } =
            self.cache.take().ok_or_else(|| Error::NoForwardCache {
                path: String::new(),
                kind: self.kind().into(),
            })?;
        if grad_output.shape() != y.shape() {
            return Err(Error::shape(
                self.kind(),
                "output gradient",
                format!("{:?}", y.shape()),
                grad_output.shape(),
            ));
        }
        let gz = self.activation().backward(&z, &y, grad_output)?;
        let g = match &dora {
            Some(d) => self.backward_dora(&gz, d)?,
            None => gz,
        };
        self.cache = Some(ForwardCache { z, y, dora });
        // Both paths read the same input: their input gradients add.
        let dx_base = self
            .base_mut()
            .backward_pre(&g)
            .map_err(|e| e.at("base_layer"))?;
        let dx_lora = self.lora.backward(&g)?;
        match (dx_base, dx_lora) {
            (Some(a), Some(b)) => a.add(&b).map(Some),
            (a, b) => Ok(a.or(b)),
        }
    }

    fn weights(&self) -> Vec<&Weight<T>> {
        self.lora.weights()
    }

    fn weights_mut(&mut self) -> Vec<&mut Weight<T>> {
        self.lora.weights_mut()
    }

    fn children(&self) -> Vec<(&str, &dyn Layer<T>)> {
        vec![("base_layer", self.base.as_ref())]
    }

    fn children_mut(&mut self) -> Vec<(&str, &mut Box<dyn Layer<T>>)> {
        vec![("base_layer", &mut self.base)]
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn set_own_training(&mut self, training: bool) {
        self.training = training;
        self.lora.set_own_training(training);
        if !training {
            self.cache = None;
        }
    }

    fn reset_own_state(&mut self) {
        self.cache = None;
        self.lora.reset_own_state();
    }

    fn clone_box(&self) -> Box<dyn Layer<T>> {
        Box::new(self.clone())
    }

    fn supports_training(&self) -> bool {
        self.base.supports_training() && self.lora.supports_training()
    }

    fn supports_jit(&self) -> bool {
        self.base.supports_jit() && self.lora.supports_jit()
    }

    /// Base up to its pre-activation, the LoRA branch, one Add, the
    /// activation (DoRA as PEFT, its norm behind a StopGradient): see `lora/export.rs`.
    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        self.export_adapter(ctx, inputs)
    }

    fn as_lora_adapter(&self) -> Option<&LoraAdapter<T>> {
        Some(self)
    }

    fn diagnostics(&self) -> Diagnostics {
        let norm = |t: &Tensor<T>| {
            t.array()
                .iter()
                .map(|v| v.to_f64_exact().powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let update = self.lora.delta().map(|d| norm(&d)).unwrap_or(f64::NAN);
        let mut d = vec![
            ("kind".to_string(), self.kind().to_string()),
            ("base".to_string(), self.base.kind().to_string()),
            ("rank".to_string(), self.rank().to_string()),
            ("alpha".to_string(), self.alpha().to_string()),
            ("scaling".to_string(), self.scaling().to_string()),
            ("update.norm".to_string(), format!("{update:.6}")),
        ];
        d.extend(weight_diagnostics(
            self.parameter_count(),
            self.total_parameter_count(),
            &self.weights(),
        ));
        d
    }
}
