//! [`LoraTarget`] for the built-in layers.

use super::target::{LoraGeometry, LoraTarget};
use crate::activation::Activation;
use crate::export::{ExportContext, NodeInput, NodeInputs};
use crate::layer::{Input, Inputs, Layer, Weight};
use crate::layers::{Conv2d, Dense, Embedding, FullyConnected};
use crate::{Error, Result, Tensor};
use cranelora_graph::NodeId;
use cranelora_kernels::Scalar;

impl<T: Scalar> LoraTarget<T> for Dense<T> {
    fn lora_geometry(&self) -> LoraGeometry {
        LoraGeometry::Linear {
            in_features: self.in_features(),
            out_features: self.out_features(),
        }
    }
    fn forward_pre(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let x = Inputs::new(inputs, "Dense").float(0)?;
        Dense::forward_pre(self, x)
    }
    fn export_pre(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        let x = NodeInputs::new(inputs, "Dense").float(0)?;
        Dense::export_pre(self, ctx, x)
    }
    fn backward_pre(&mut self, grad_pre: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        Dense::backward_pre(self, grad_pre).map(Some)
    }
    fn activation(&self) -> Activation {
        Dense::activation(self)
    }
    fn lora_weight(&self) -> &Weight<T> {
        self.weight()
    }
    fn lora_bias(&self) -> Option<&Weight<T>> {
        self.bias()
    }
    fn lora_bias_mut(&mut self) -> Option<&mut Weight<T>> {
        self.bias_mut()
    }
    fn with_weights(
        &self,
        weight: Tensor<T>,
        bias: Option<Tensor<T>>,
    ) -> Result<Box<dyn Layer<T>>> {
        Ok(Box::new(Dense::from_weights(
            weight,
            bias,
            Dense::activation(self),
        )?))
    }
}

impl<T: Scalar> LoraTarget<T> for FullyConnected<T> {
    fn lora_geometry(&self) -> LoraGeometry {
        self.dense().lora_geometry()
    }
    fn forward_pre(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        LoraTarget::forward_pre(self.dense_mut(), inputs)
    }
    fn export_pre(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        LoraTarget::export_pre(self.dense(), ctx, inputs)
    }
    fn backward_pre(&mut self, grad_pre: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        LoraTarget::backward_pre(self.dense_mut(), grad_pre)
    }
    fn activation(&self) -> Activation {
        Activation::Identity
    }
    fn lora_weight(&self) -> &Weight<T> {
        self.dense().weight()
    }
    fn lora_bias(&self) -> Option<&Weight<T>> {
        self.dense().bias()
    }
    fn lora_bias_mut(&mut self) -> Option<&mut Weight<T>> {
        self.dense_mut().bias_mut()
    }
    fn with_weights(
        &self,
        weight: Tensor<T>,
        bias: Option<Tensor<T>>,
    ) -> Result<Box<dyn Layer<T>>> {
        Ok(Box::new(FullyConnected::from_weights(weight, bias)?))
    }
}

impl<T: Scalar> LoraTarget<T> for Conv2d<T> {
    fn lora_geometry(&self) -> LoraGeometry {
        let o = self.options();
        LoraGeometry::Conv2d {
            in_channels: self.in_channels(),
            out_channels: self.out_channels(),
            kernel: self.kernel(),
            stride: o.stride,
            padding: o.padding,
            dilation: o.dilation,
        }
    }
    /// A convolution has no activation: the pre-activation is the output.
    fn forward_pre(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        self.forward(inputs)
    }
    fn export_pre(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        self.export_graph(ctx, inputs)
    }
    fn backward_pre(&mut self, grad_pre: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        self.backward(grad_pre)
    }
    fn activation(&self) -> Activation {
        Activation::Identity
    }
    fn lora_weight(&self) -> &Weight<T> {
        self.weight()
    }
    fn lora_bias(&self) -> Option<&Weight<T>> {
        self.bias()
    }
    fn lora_bias_mut(&mut self) -> Option<&mut Weight<T>> {
        self.bias_mut()
    }
    fn with_weights(
        &self,
        weight: Tensor<T>,
        bias: Option<Tensor<T>>,
    ) -> Result<Box<dyn Layer<T>>> {
        Ok(Box::new(Conv2d::from_weights(
            weight,
            bias,
            self.options(),
        )?))
    }
}

impl<T: Scalar> LoraTarget<T> for Embedding<T> {
    fn lora_geometry(&self) -> LoraGeometry {
        LoraGeometry::Embedding {
            num_embeddings: self.num_embeddings(),
            embedding_dim: self.embedding_dim(),
        }
    }
    /// A lookup has no activation: the pre-activation is the output.
    fn forward_pre(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        self.forward(inputs)
    }
    fn export_pre(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        self.export_graph(ctx, inputs)
    }
    fn backward_pre(&mut self, grad_pre: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        self.backward(grad_pre)
    }
    fn activation(&self) -> Activation {
        Activation::Identity
    }
    fn lora_weight(&self) -> &Weight<T> {
        self.weight()
    }
    fn lora_bias(&self) -> Option<&Weight<T>> {
        None
    }
    fn lora_bias_mut(&mut self) -> Option<&mut Weight<T>> {
        None
    }
    fn with_weights(
        &self,
        weight: Tensor<T>,
        bias: Option<Tensor<T>>,
    ) -> Result<Box<dyn Layer<T>>> {
        if bias.is_some() {
            return Err(Error::config(
                "Embedding",
                "an embedding has no bias to merge a LoRA bias into",
            ));
        }
        Ok(Box::new(Embedding::from_weights(
            weight,
            self.padding_idx(),
        )?))
    }
}
