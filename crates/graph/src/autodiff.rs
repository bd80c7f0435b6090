//! Reverse-mode automatic differentiation as a graph transformation.
//!
//! [`grad`] appends to the graph the nodes that compute the gradient of a
//! one-element output with respect to chosen nodes, so a training step is
//! one DAG that the interpreter runs and the JIT compiles; there is no
//! runtime tape.
//!
//! - The per-op rules are one `vjp` function with one arm per [`Op`]
//!   (`autodiff/rules.rs`); each arm returns its operands' gradients at
//!   the op's output shape.
//! - Broadcast operands get their gradient summed back to their own shape
//!   here, in `unbroadcast`, not in the rules.
//! - A node used by several consumers gets the sum of their contributions
//!   (accumulated by Add).
//! - Only nodes on a path from a `wrt` node to the output, through float
//!   nodes, get gradient nodes; StopGradient, comparisons, Sign, Where's
//!   condition and integer operands (Gather / ScatterAdd ids) pass nothing.
//! - The gradient of node `n` is named `grad(<n's name>)` (an unnamed node
//!   is shown as `<op>%<index>`); the intermediate nodes of the rule that
//!   differentiates `n` are named `vjp(<n's name>)`.
//!
//! ```
//! use cranelora_graph::{autodiff::grad, interpret, Bindings, DType, Graph, ReduceKind, TensorData};
//!
//! // L = Σ x², so ∂L/∂x = 2x.
//! let mut g = Graph::new();
//! let x = g.input("x", [3], DType::F64);
//! let sq = g.mul(x, x)?;
//! let loss = g.reduce(sq, ReduceKind::Sum, &[0], false)?;
//! let dx = grad(&mut g, loss, &[x])?;
//! g.set_outputs(&[loss, dx[0]])?;
//! let x0 = TensorData::f64([3], vec![1.0, -2.0, 0.5])?;
//! let out = interpret(&g, &[x0], &Bindings::new())?;
//! assert_eq!(out[1].to_f64_vec(), vec![2.0, -4.0, 1.0]);
//! # Ok::<(), cranelora_graph::Error>(())
//! ```

use crate::{DType, Error, Graph, NodeId, Op, ReduceKind, Result, Shape, TensorData};
use std::collections::{HashMap, HashSet};

mod rules;

/// Adds to `graph` the nodes computing ∂`output`/∂`wrt[i]` and returns
/// them, one per `wrt` node, each of that node's shape and dtype.
///
/// `output` must hold one element (shape `[]`, `[1]`, `[1, 1]`, …) of a
/// float dtype; its gradient seed is 1. A `wrt` node the output does not
/// depend on (or depends on only through StopGradient or non-differentiable
/// operands) gets a zero gradient: a scalar 0 broadcast to its shape. The
/// graph's outputs are left unchanged.
///
/// # Errors
/// [`Error::UnknownNode`] for an id not in the graph, [`Error::Shape`] for
/// an output with more than one element, [`Error::DType`] for an integer
/// output or `wrt` node, [`Error::Cycle`] for a cyclic graph.
pub fn grad(graph: &mut Graph, output: NodeId, wrt: &[NodeId]) -> Result<Vec<NodeId>> {
    check_request(graph, output, wrt)?;
    let order = graph.topo_order()?;
    let relevant = on_paths(graph, &order, output, wrt);
    let (shape, dtype) = typed(graph, output);
    let seed = TensorData::full(&shape, 1.0, dtype);
    let seed = graph.named(grad_name(graph, output)).constant(seed)?;
    let mut grads = HashMap::from([(output, seed)]);
    for &id in order.iter().rev() {
        let Some(&g) = grads.get(&id).filter(|_| relevant.contains(&id)) else {
            continue;
        };
        let operands = graph.operands(id);
        let need: Vec<bool> = operands.iter().map(|o| relevant.contains(o)).collect();
        if !need.contains(&true) {
            continue;
        }
        let op = graph
            .node(id)
            .expect("internal: topo_order lists live nodes")
            .op
            .clone();
        let mut ctx = Vjp::new(graph, id, need);
        rules::vjp(&mut ctx, &op, &operands, id, g)?;
        for (operand, contribution) in operands.into_iter().zip(ctx.out) {
            if let Some(c) = contribution {
                let c = unbroadcast(graph, c, operand)?;
                accumulate(graph, &mut grads, operand, c, g)?;
            }
        }
    }
    wrt.iter().map(|&w| result_for(graph, &grads, w)).collect()
}

/// Checks that the ids exist, that `output` has one float element and that
/// every `wrt` node is a float.
fn check_request(graph: &Graph, output: NodeId, wrt: &[NodeId]) -> Result<()> {
    let desc = |id| graph.desc(id);
    for &id in std::iter::once(&output).chain(wrt) {
        let node = graph
            .node(id)
            .ok_or(Error::UnknownNode { node: desc(id), id })?;
        if !node.dtype.is_float() {
            return Err(Error::DType {
                node: desc(id),
                op: format!("grad of {}", node.op),
                dtypes: vec![node.dtype],
                reason: "gradients exist only for f32 and f64 nodes".into(),
            });
        }
    }
    let out = graph.node(output).expect("internal: checked above");
    if out.shape.numel() != 1 {
        return Err(Error::Shape {
            node: desc(output),
            op: format!("grad of {}", out.op),
            shapes: vec![out.shape.clone()],
            reason: "the differentiated output must hold exactly one element".into(),
        });
    }
    Ok(())
}

/// The float nodes on a path (of float nodes) from some `wrt` node to `output`.
fn on_paths(graph: &Graph, order: &[NodeId], output: NodeId, wrt: &[NodeId]) -> HashSet<NodeId> {
    let is_float = |id: NodeId| graph.node(id).is_some_and(|n| n.dtype.is_float());
    // Forward: descendants of `wrt` (in topo order an operand comes first).
    let mut below: HashSet<NodeId> = wrt.iter().copied().collect();
    for &id in order {
        if is_float(id) && graph.operands(id).iter().any(|o| below.contains(o)) {
            below.insert(id);
        }
    }
    // Backward: ancestors of `output` among them.
    let mut on = HashSet::new();
    let mut stack = vec![output];
    while let Some(id) = stack.pop() {
        if below.contains(&id) && on.insert(id) {
            stack.extend(graph.operands(id));
        }
    }
    on
}

/// The shape and dtype of a live node.
fn typed(graph: &Graph, id: NodeId) -> (Shape, DType) {
    let node = graph.node(id).expect("internal: autodiff uses live nodes");
    (node.shape.clone(), node.dtype)
}

/// The node's name, or `<op>%<index>` for an unnamed node.
fn label(graph: &Graph, id: NodeId) -> String {
    match graph.node(id) {
        Some(n) => n
            .name
            .clone()
            .unwrap_or_else(|| format!("{}{id}", n.op.name())),
        None => id.to_string(),
    }
}

fn grad_name(graph: &Graph, id: NodeId) -> String {
    format!("grad({})", label(graph, id))
}

/// `g` summed over the axes where it was broadcast, to `operand`'s shape.
fn unbroadcast(graph: &mut Graph, g: NodeId, operand: NodeId) -> Result<NodeId> {
    let (have, _) = typed(graph, g);
    let (want, _) = typed(graph, operand);
    if have == want {
        return Ok(g);
    }
    let lead = have.rank().saturating_sub(want.rank());
    let axes: Vec<usize> = (0..have.rank())
        .filter(|&i| i < lead || (want.dims()[i - lead] == 1 && have.dims()[i] != 1))
        .collect();
    let name = grad_name(graph, operand);
    let summed = if axes.is_empty() {
        g
    } else {
        graph
            .named(&name)
            .reduce(g, ReduceKind::Sum, &axes, false)?
    };
    graph.named(name).reshape(summed, want)
}

/// Adds contribution `c` to `operand`'s gradient. `incoming` is the
/// gradient being propagated: a rule may pass it through unchanged, and
/// then it keeps its own name.
fn accumulate(
    graph: &mut Graph,
    grads: &mut HashMap<NodeId, NodeId>,
    operand: NodeId,
    c: NodeId,
    incoming: NodeId,
) -> Result<()> {
    let name = grad_name(graph, operand);
    let total = match grads.get(&operand) {
        Some(&prev) => graph.named(name).add(prev, c)?,
        None if c == incoming => c,
        None => {
            graph.set_name(c, Some(name))?;
            c
        }
    };
    grads.insert(operand, total);
    Ok(())
}

/// The gradient of `w`, or a zero of its type if nothing reached it.
fn result_for(graph: &mut Graph, grads: &HashMap<NodeId, NodeId>, w: NodeId) -> Result<NodeId> {
    if let Some(&g) = grads.get(&w) {
        return Ok(g);
    }
    let (shape, dtype) = typed(graph, w);
    let zero = graph.scalar(0.0, dtype)?;
    graph.named(grad_name(graph, w)).broadcast(zero, shape)
}

/// What one rule works with: the graph, the node being differentiated (for
/// naming and its dtype), which operands need a gradient, and the
/// contributions collected so far.
pub(crate) struct Vjp<'a> {
    graph: &'a mut Graph,
    name: String,
    dtype: DType,
    need: Vec<bool>,
    out: Vec<Option<NodeId>>,
}

impl<'a> Vjp<'a> {
    fn new(graph: &'a mut Graph, node: NodeId, need: Vec<bool>) -> Self {
        let name = format!("vjp({})", label(graph, node));
        let (_, dtype) = typed(graph, node);
        let out = vec![None; need.len()];
        Self {
            graph,
            name,
            dtype,
            need,
            out,
        }
    }

    /// Records operand `i`'s contribution, built by `f` only if operand `i`
    /// needs a gradient.
    fn grad(&mut self, i: usize, f: impl FnOnce(&mut Self) -> Result<NodeId>) -> Result<()> {
        if self.need[i] {
            self.out[i] = Some(f(self)?);
        }
        Ok(())
    }

    /// A node named after the rule.
    fn push(&mut self, op: Op, args: &[NodeId]) -> Result<NodeId> {
        self.graph.named(self.name.clone()).push(op, args)
    }

    fn add(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.push(Op::Add, &[a, b])
    }

    fn sub(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.push(Op::Sub, &[a, b])
    }

    fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.push(Op::Mul, &[a, b])
    }

    fn div(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.push(Op::Div, &[a, b])
    }

    fn unary(&mut self, op: Op, x: NodeId) -> Result<NodeId> {
        self.push(op, &[x])
    }

    /// A rank-0 constant in the differentiated node's dtype.
    fn scalar(&mut self, v: f64) -> Result<NodeId> {
        let data = TensorData::scalar(v, self.dtype);
        self.graph.named(self.name.clone()).constant(data)
    }

    /// `g` where `cmp(a, b)` holds, else 0.
    fn masked(&mut self, cmp: Op, a: NodeId, b: NodeId, g: NodeId) -> Result<NodeId> {
        let mask = self.push(cmp, &[a, b])?;
        self.mul(mask, g)
    }

    /// `x` with its last two axes swapped.
    fn mt(&mut self, x: NodeId) -> Result<NodeId> {
        let r = self.shape(x).rank();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.push(Op::Transpose { perm }, &[x])
    }

    fn shape(&self, id: NodeId) -> Shape {
        typed(self.graph, id).0
    }

    fn dtype_of(&self, id: NodeId) -> DType {
        typed(self.graph, id).1
    }
}
