//! Residual: `y = x + f(x)` around one child named `inner`.

use crate::export::{self, ExportContext, NodeInput, NodeInputs};
use crate::layer::{Input, Inputs, Layer};
use crate::{Error, Result, Tensor};
use cranelora_graph::{NodeId, Op};
use cranelora_kernels::Scalar;

/// A residual connection `y = x + f(x)`; `f` must keep the input's shape.
#[derive(Debug)]
pub struct Residual<T> {
    inner: Box<dyn Layer<T>>,
    training: bool,
}

// Manual: a derive would not see that `Box<dyn Layer<T>>` is Clone for `T: Scalar`.
impl<T: Scalar> Clone for Residual<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            training: self.training,
        }
    }
}

impl<T: Scalar> Residual<T> {
    /// Wraps `inner` (the child is named `inner` in paths).
    pub fn new(inner: impl Layer<T> + 'static) -> Self {
        Self::from_boxed(Box::new(inner))
    }

    /// Wraps a boxed `inner`.
    pub fn from_boxed(mut inner: Box<dyn Layer<T>>) -> Self {
        inner.set_training(true);
        Self {
            inner,
            training: true,
        }
    }
}

impl<T: Scalar> Layer<T> for Residual<T> {
    fn kind(&self) -> &'static str {
        "Residual"
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let x = Inputs::new(inputs, self.kind()).float(0)?;
        let fx = self.inner.forward(inputs).map_err(|e| e.at("inner"))?;
        if fx.shape() != x.shape() {
            return Err(Error::shape(
                self.kind(),
                "inner output",
                format!("the input's shape {:?}", x.shape()),
                fx.shape(),
            ));
        }
        x.add(&fx)
    }

    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        // ∂(x + f(x))/∂x = 1 + f'(x): the skip path passes the gradient through.
        let d_inner = self
            .inner
            .backward(grad_output)
            .map_err(|e| e.at("inner"))?;
        let d_inner = d_inner
            .ok_or_else(|| Error::config(self.kind(), "inner layer has no float input gradient"))?;
        d_inner.add(grad_output).map(Some)
    }

    fn children(&self) -> Vec<(&str, &dyn Layer<T>)> {
        vec![("inner", self.inner.as_ref())]
    }

    fn children_mut(&mut self) -> Vec<(&str, &mut Box<dyn Layer<T>>)> {
        vec![("inner", &mut self.inner)]
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn set_own_training(&mut self, training: bool) {
        self.training = training;
    }

    fn reset_own_state(&mut self) {}

    fn clone_box(&self) -> Box<dyn Layer<T>> {
        Box::new(self.clone())
    }

    fn supports_jit(&self) -> bool {
        export::lowerable(&[Op::Add]) && self.inner.supports_jit()
    }

    /// `x + inner(x)`, the add named `<path>.add`.
    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        let x = NodeInputs::new(inputs, self.kind()).float(0)?;
        let fx = ctx.child("inner", |ctx| self.inner.export_graph(ctx, inputs))?;
        let (xs, fs) = (ctx.dims(x)?, ctx.dims(fx)?);
        if fs != xs {
            let expected = format!("the input's shape {xs:?}");
            return Err(Error::shape(self.kind(), "inner output", expected, &fs));
        }
        Ok(ctx.named("add").add(x, fx)?)
    }
}
