//! One supervised training step, the loop every eager fine-tuning run repeats.

use crate::layer::{Input, Layer};
use crate::loss::LossOutput;
use crate::optim::Optimizer;
use crate::{Result, Tensor};
use cranelora_kernels::Scalar;

/// `zero_grad → forward → loss → backward → optimizer step`; returns the loss
/// before the step. `loss` maps the model's output to the loss and its gradient
/// (e.g. `|y| loss::mse(y, &target)`).
///
/// # Errors
/// Whatever the forward pass, the loss, the backward pass or the optimizer returns.
pub fn train_step<T: Scalar>(
    model: &mut dyn Layer<T>,
    optimizer: &mut dyn Optimizer<T>,
    inputs: &[Input<'_, T>],
    loss: &dyn Fn(&Tensor<T>) -> Result<LossOutput<T>>,
) -> Result<T> {
    model.set_training(true);
    model.zero_grad();
    let y = model.forward(inputs)?;
    let out = loss(&y)?;
    model.backward(&out.grad)?;
    optimizer.step(model)?;
    Ok(out.value)
}
