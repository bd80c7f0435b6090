//! The reference interpreter: the executable definition of every op.
//!
//! [`interpret`] verifies the graph, checks the inputs and bindings against
//! the nodes' declared types, then evaluates the nodes in topological order
//! with ndarray, one exhaustive `match` arm per op. Matrix products and
//! convolutions call the kernels crate's GEMM (and im2col / col2im), and the
//! transcendental functions call `kernels::math`, so the interpreter, eager
//! layers and the JIT share one implementation of each. Everything else is
//! written to be obviously right rather than fast.

use crate::{Error, Graph, Node, NodeId, Op, ReduceKind, Result, Value};
use cranelora_kernels::math::Func;
use cranelora_kernels::KernelError;
use std::collections::HashMap;

/// Dispatches on the float dtype of a value: runs `$body` with `$a` bound to
/// its array and wraps the resulting array in the same dtype.
macro_rules! float {
    ($v:expr, $a:ident => $body:expr) => {
        match $v {
            Value::F32($a) => Value::F32($body),
            Value::F64($a) => Value::F64($body),
            Value::I64(_) => unreachable!("internal: the verifier admits only floats here"),
        }
    };
}

/// Like `float!`, for ops defined on every dtype.
macro_rules! any {
    ($v:expr, $a:ident => $body:expr) => {
        match $v {
            Value::F32($a) => Value::F32($body),
            Value::F64($a) => Value::F64($body),
            Value::I64($a) => Value::I64($body),
        }
    };
}

mod elem;
mod linalg;
mod structural;

use elem::{kernel, mask, max_nan, min_nan, relu, sign, typed, Elem};
use structural as st;

/// Parameter values by name: trainable weights or LoRA adapters bound at run time.
pub type Bindings = HashMap<String, Value>;

/// Runs `graph` on `inputs` (one per [`Graph::inputs`], in that order) with
/// Parameter values from `bindings`, and returns one value per
/// [`Graph::outputs`].
///
/// # Errors
/// [`Error::Verify`] for a graph that fails [`verify`](crate::verify());
/// [`Error::InputCount`], [`Error::ValueMismatch`] for inputs or bindings of
/// the wrong shape or dtype; [`Error::MissingBinding`];
/// [`Error::IndexOutOfRange`] for gather / scatter-add ids outside the table.
pub fn interpret(graph: &Graph, inputs: &[Value], bindings: &Bindings) -> Result<Vec<Value>> {
    crate::verify(graph)?;
    if inputs.len() != graph.inputs().len() {
        return Err(Error::InputCount {
            expected: graph.inputs().len(),
            actual: inputs.len(),
        });
    }
    let run = Run {
        graph,
        inputs: graph.inputs().iter().copied().zip(inputs).collect(),
        bindings,
    };
    let mut values: HashMap<NodeId, Value> = HashMap::new();
    for id in graph.topo_order()? {
        let node = graph
            .node(id)
            .expect("internal: topo_order lists live nodes");
        let operands = graph.operands(id);
        let args: Vec<&Value> = operands
            .iter()
            .map(|o| {
                values
                    .get(o)
                    .expect("internal: operands come first in topo order")
            })
            .collect();
        let value = run.eval(id, node, &args)?;
        assert!(
            value.dtype() == node.dtype && value.shape() == node.shape,
            "internal: {} produced {}{} for declared {}{}",
            node.op,
            value.dtype(),
            value.shape(),
            node.dtype,
            node.shape
        );
        values.insert(id, value);
    }
    let outputs = graph.outputs().iter();
    Ok(outputs.map(|o| values[o].clone()).collect())
}

/// What one call of [`interpret`] evaluates against.
struct Run<'a> {
    graph: &'a Graph,
    inputs: HashMap<NodeId, &'a Value>,
    bindings: &'a Bindings,
}

impl Run<'_> {
    /// The value of one node from its operands' values.
    fn eval(&self, id: NodeId, node: &Node, args: &[&Value]) -> Result<Value> {
        let shape = node.shape.dims();
        let x = args.first().copied();
        let x = || x.expect("internal: the verifier checked the arity");
        Ok(match &node.op {
            Op::Input { name } => {
                self.checked("input", name, node, self.inputs.get(&id).copied())?
            }
            Op::Constant(data) => (**data).clone(),
            Op::Parameter { name } => {
                self.checked("parameter", name, node, self.bindings.get(name))?
            }
            Op::MatMul => {
                float!(x(), a => linalg::matmul(a, typed(args[1]), shape).map_err(self.kernel(id))?)
            }
            Op::Add => any!(x(), a => st::zip2(a, typed(args[1]), shape, Elem::add)),
            Op::Sub => any!(x(), a => st::zip2(a, typed(args[1]), shape, Elem::sub)),
            Op::Mul => any!(x(), a => st::zip2(a, typed(args[1]), shape, Elem::mul)),
            Op::Div => float!(x(), a => st::zip2(a, typed(args[1]), shape, |p, q| p / q)),
            Op::Max => any!(x(), a => st::zip2(a, typed(args[1]), shape, max_nan)),
            Op::Min => any!(x(), a => st::zip2(a, typed(args[1]), shape, min_nan)),
            Op::Pow => float!(x(), a => st::zip2(a, typed(args[1]), shape, |p, q| p.powf(q))),
            Op::Eq => any!(x(), a => st::zip2(a, typed(args[1]), shape, |p, q| mask(p == q))),
            Op::Ne => any!(x(), a => st::zip2(a, typed(args[1]), shape, |p, q| mask(p != q))),
            Op::Lt => any!(x(), a => st::zip2(a, typed(args[1]), shape, |p, q| mask(p < q))),
            Op::Le => any!(x(), a => st::zip2(a, typed(args[1]), shape, |p, q| mask(p <= q))),
            Op::Gt => any!(x(), a => st::zip2(a, typed(args[1]), shape, |p, q| mask(p > q))),
            Op::Ge => any!(x(), a => st::zip2(a, typed(args[1]), shape, |p, q| mask(p >= q))),
            Op::Where => {
                let cond = elem::truthy(x());
                any!(args[1], a => st::zip3(&cond, a, typed(args[2]), shape))
            }
            Op::Sign => any!(x(), a => a.mapv(sign)),
            Op::Neg => any!(x(), a => a.mapv(Elem::neg)),
            Op::Relu => float!(x(), a => a.mapv(relu)),
            Op::Gelu => float!(x(), a => kernel(Func::GeluErf, a)),
            Op::GeluTanh => float!(x(), a => kernel(Func::GeluTanh, a)),
            Op::GeluGrad => float!(x(), a => kernel(Func::GeluErfGrad, a)),
            Op::GeluTanhGrad => float!(x(), a => kernel(Func::GeluTanhGrad, a)),
            Op::Tanh => float!(x(), a => kernel(Func::Tanh, a)),
            Op::Sigmoid => float!(x(), a => kernel(Func::Sigmoid, a)),
            Op::Silu => float!(x(), a => kernel(Func::Silu, a)),
            Op::Exp => float!(x(), a => kernel(Func::Exp, a)),
            Op::Erf => float!(x(), a => kernel(Func::Erf, a)),
            Op::Log => float!(x(), a => kernel(Func::Log, a)),
            Op::Sqrt => float!(x(), a => a.mapv(|v| v.sqrt())),
            Op::Rsqrt => float!(x(), a => a.mapv(|v| v.sqrt().recip())),
            Op::Abs => any!(x(), a => a.mapv(Elem::abs)),
            Op::Recip => float!(x(), a => a.mapv(|v| v.recip())),
            Op::Scale(s) => float!(x(), a => elem::scale(a, *s)),
            Op::Cast(to) => elem::cast(x(), *to),
            Op::StopGradient => x().clone(),
            Op::Reduce {
                kind,
                axes,
                keepdims,
            } => match kind {
                ReduceKind::Sum => {
                    any!(x(), a => st::reduce(a, axes, *keepdims, Elem::ZERO, Elem::add))
                }
                ReduceKind::Max => {
                    any!(x(), a => st::reduce(a, axes, *keepdims, Elem::LOWEST, max_nan))
                }
                ReduceKind::Mean => float!(x(), a => st::mean(a, axes, *keepdims)),
            },
            Op::Broadcast { .. } => any!(x(), a => st::broadcast(a, shape)),
            Op::Softmax { axis } => float!(x(), a => st::softmax(a, *axis)),
            Op::LayerNorm { axis, eps, affine } => {
                let gamma_beta = affine.then(|| (args[1], args[2]));
                float!(x(), a => st::layer_norm(a, gamma_beta, *axis, *eps))
            }
            Op::Reshape { .. } => any!(x(), a => st::reshape(a, shape)),
            Op::Transpose { perm } => any!(x(), a => st::transpose(a, perm)),
            Op::Slice { ranges } => any!(x(), a => st::slice(a, ranges)),
            Op::Pad { pads, value } => any!(x(), a => st::pad(a, pads, *value, shape)),
            Op::Concat { axis } => any!(x(), _a => st::concat(args, *axis)),
            Op::Gather => any!(x(), a => st::gather(a, typed(args[1])).map_err(self.range(id))?),
            Op::ScatterAdd { rows } => {
                float!(x(), a => st::scatter_add(a, typed(args[1]), *rows).map_err(self.range(id))?)
            }
            Op::GatherMatMul => float!(x(), a => {
                let ids = typed(args[2]);
                let n = args[1].shape().dims()[0];
                linalg::check_stack_ids(ids, n).map_err(self.range(id))?;
                linalg::gather_matmul(a, typed(args[1]), ids).map_err(self.kernel(id))?
            }),
            Op::Conv2d(p) => {
                float!(x(), a => linalg::conv2d(a, typed(args[1]), p).map_err(self.kernel(id))?)
            }
            Op::Conv2dInputGrad { params, input_size } => float!(x(), dy => {
                let grad = linalg::conv2d_input_grad(dy, typed(args[1]), params, *input_size);
                grad.map_err(self.kernel(id))?
            }),
            Op::Conv2dWeightGrad { params, kernel } => float!(x(), a => {
                let grad = linalg::conv2d_weight_grad(a, typed(args[1]), params, *kernel);
                grad.map_err(self.kernel(id))?
            }),
        })
    }

    /// An input or binding after checking it against its node's declared type.
    fn checked(
        &self,
        what: &'static str,
        name: &str,
        node: &Node,
        value: Option<&Value>,
    ) -> Result<Value> {
        let value = value.ok_or_else(|| Error::MissingBinding { name: name.into() })?;
        if value.dtype() != node.dtype || value.shape() != node.shape {
            return Err(Error::ValueMismatch {
                what,
                name: name.into(),
                expected_shape: node.shape.clone(),
                expected_dtype: node.dtype,
                actual_shape: value.shape(),
                actual_dtype: value.dtype(),
            });
        }
        Ok(value.clone())
    }

    /// Wraps a kernel's error with the node it ran for.
    fn kernel(&self, id: NodeId) -> impl Fn(KernelError) -> Error + '_ {
        move |source| Error::Kernel {
            node: self.graph.desc(id),
            op: self.op_name(id),
            source: Box::new(source),
        }
    }

    /// Turns an out-of-range `(index, bound)` into an error naming the node.
    fn range(&self, id: NodeId) -> impl Fn((i64, usize)) -> Error + '_ {
        move |(index, bound)| Error::IndexOutOfRange {
            node: self.graph.desc(id),
            op: self.op_name(id),
            index,
            bound,
        }
    }

    fn op_name(&self, id: NodeId) -> String {
        self.graph
            .node(id)
            .map(|n| n.op.to_string())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, TensorData};

    #[test]
    fn input_is_passed_through() {
        let mut g = Graph::new();
        let x = g.input("x", [2], DType::I64);
        g.set_outputs(&[x]).expect("x is a node");
        let v = TensorData::i64([2], vec![3, 4]).expect("2 elements");
        let out = interpret(&g, std::slice::from_ref(&v), &Bindings::new()).expect("valid");
        assert_eq!(out, vec![v]);
    }
}
