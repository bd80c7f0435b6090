//! What a layer exposes so a LoRA adapter can wrap it: [`LoraTarget`].
//!
//! The per-type logic of the seed's adapter subclasses (validation, the
//! shape of the LoRA branch, merging) lives here, behind one small
//! object-safe trait that Dense, FullyConnected, Conv2d and Embedding
//! implement and expose through `Layer::as_lora_target_mut`, so a boxed
//! child of any container can be wrapped without downcasting.
//!
//! Every target's weight is seen by LoRA as a `fan_in × out` matrix `W̃`
//! (for Dense that is its own `in × out` layout; for Conv2d the transpose
//! of PyTorch's kernel flattened to `out × (in·kh·kw)`; for Embedding the
//! `vocab × dim` table), so the update is always `W̃ + s·A·B`.

use crate::activation::Activation;
use crate::export::{ExportContext, NodeInput};
use crate::layer::{Input, Layer, Weight};
use crate::{Error, Result, Tensor};
use cranelora_graph::NodeId;
use cranelora_kernels::Scalar;

/// The shape of a LoRA target, which decides the shape of the LoRA branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraGeometry {
    /// `x [.., in] → [.., out]`; branch `(x·A)·B`.
    Linear {
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
    },
    /// NCHW convolution; branch: A is a convolution with the base's kernel,
    /// stride and padding and `r` output channels, B a 1×1 convolution.
    Conv2d {
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
        /// Kernel (height, width).
        kernel: (usize, usize),
        /// Stride.
        stride: (usize, usize),
        /// Padding.
        padding: (usize, usize),
        /// Dilation (LoRA requires (1, 1), as PEFT does not pass it to A).
        dilation: (usize, usize),
    },
    /// `ids [..] → [.., dim]`; branch `A[ids]·B`.
    Embedding {
        /// Vocabulary size.
        num_embeddings: usize,
        /// Embedding dimension.
        embedding_dim: usize,
    },
}

impl LoraGeometry {
    /// Rows of `A`: `in`, `in·kh·kw`, or the vocabulary size.
    pub fn fan_in(&self) -> usize {
        match *self {
            LoraGeometry::Linear { in_features, .. } => in_features,
            LoraGeometry::Conv2d {
                in_channels,
                kernel,
                ..
            } => in_channels * kernel.0 * kernel.1,
            LoraGeometry::Embedding { num_embeddings, .. } => num_embeddings,
        }
    }

    /// Columns of `B`: output features, output channels, or the embedding dimension.
    pub fn fan_out(&self) -> usize {
        match *self {
            LoraGeometry::Linear { out_features, .. } => out_features,
            LoraGeometry::Conv2d { out_channels, .. } => out_channels,
            LoraGeometry::Embedding { embedding_dim, .. } => embedding_dim,
        }
    }

    /// The axis of the output that indexes output features (1 for NCHW, else the last).
    pub fn channel_axis(&self, output_ndim: usize) -> usize {
        match self {
            LoraGeometry::Conv2d { .. } => 1,
            _ => output_ndim.saturating_sub(1),
        }
    }

    /// The base weight in its native layout as the `fan_in × out` matrix `W̃`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `w` does not have the geometry's native shape.
    pub fn to_fan_in_out<T: Scalar>(&self, w: &Tensor<T>) -> Result<Tensor<T>> {
        self.check_native(w)?;
        match self {
            LoraGeometry::Conv2d { out_channels, .. } => {
                w.reshape(&[*out_channels, self.fan_in()])?.t()
            }
            _ => Ok(w.clone()),
        }
    }

    /// The inverse of [`LoraGeometry::to_fan_in_out`].
    ///
    /// # Errors
    /// [`Error::Shape`] if `m` is not `fan_in × out`.
    pub fn from_fan_in_out<T: Scalar>(&self, m: &Tensor<T>) -> Result<Tensor<T>> {
        if m.shape() != [self.fan_in(), self.fan_out()] {
            let expected = format!("[{}, {}]", self.fan_in(), self.fan_out());
            return Err(Error::shape(
                "LoRA",
                "fan_in × out matrix",
                expected,
                m.shape(),
            ));
        }
        match *self {
            LoraGeometry::Conv2d {
                in_channels,
                out_channels,
                kernel,
                ..
            } => m
                .t()?
                .reshape(&[out_channels, in_channels, kernel.0, kernel.1]),
            _ => Ok(m.clone()),
        }
    }

    fn native_shape(&self) -> Vec<usize> {
        match *self {
            LoraGeometry::Linear {
                in_features,
                out_features,
            } => vec![in_features, out_features],
            LoraGeometry::Conv2d {
                in_channels,
                out_channels,
                kernel,
                ..
            } => {
                vec![out_channels, in_channels, kernel.0, kernel.1]
            }
            LoraGeometry::Embedding {
                num_embeddings,
                embedding_dim,
            } => {
                vec![num_embeddings, embedding_dim]
            }
        }
    }

    fn check_native<T: Scalar>(&self, w: &Tensor<T>) -> Result<()> {
        let expected = self.native_shape();
        if w.shape() != expected.as_slice() {
            return Err(Error::shape(
                "LoRA",
                "base weight",
                format!("{expected:?}"),
                w.shape(),
            ));
        }
        Ok(())
    }
}

/// A layer a LoRA adapter can wrap: the pre-activation path, the weight the
/// update applies to, and how to rebuild the layer with new weights.
pub trait LoraTarget<T: Scalar> {
    /// The layer's geometry.
    fn lora_geometry(&self) -> LoraGeometry;

    /// The output before the activation (bias included); caches like `forward`.
    ///
    /// # Errors
    /// As the layer's `forward`.
    fn forward_pre(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>>;

    /// Backpropagates ∂L/∂pre-activation: accumulates the layer's trainable
    /// weight gradients and returns ∂L/∂input (`None` for id inputs).
    ///
    /// # Errors
    /// As the layer's `backward`.
    fn backward_pre(&mut self, grad_pre: &Tensor<T>) -> Result<Option<Tensor<T>>>;

    /// Appends the pre-activation (bias included) to the graph of `ctx`:
    /// [`LoraTarget::forward_pre`] as a graph, which the adapter's export
    /// joins with the LoRA branch before the activation.
    ///
    /// # Errors
    /// As the layer's `export_graph`.
    fn export_pre(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId>;

    /// The activation applied after the pre-activation.
    fn activation(&self) -> Activation;

    /// The weight LoRA updates, in the layer's native layout.
    fn lora_weight(&self) -> &Weight<T>;

    /// The bias, if any.
    fn lora_bias(&self) -> Option<&Weight<T>>;

    /// The bias, mutably, if any.
    fn lora_bias_mut(&mut self) -> Option<&mut Weight<T>>;

    /// A copy of the layer (same type, activation and options) with the given
    /// weight (native layout) and bias: the seed's CreateMergedLayerWithClone.
    ///
    /// # Errors
    /// [`Error::Shape`] if a shape does not fit the layer.
    fn with_weights(&self, weight: Tensor<T>, bias: Option<Tensor<T>>)
        -> Result<Box<dyn Layer<T>>>;
}
