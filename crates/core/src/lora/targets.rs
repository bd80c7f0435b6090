//! [`LoraTarget`] for the built-in layers.

use super::target::{LoraGeometry, LoraTarget};
use crate::activation::Activation;
use crate::layer::{Input, Inputs, Layer, Weight};
use crate::layers::{Dense, FullyConnected};
use crate::{Result, Tensor};
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
