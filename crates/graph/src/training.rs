//! Training-step graphs: a model graph, a loss, its gradients and one
//! optimizer step as ONE graph, which the interpreter runs and the JIT
//! compiles (workload W4).
//!
//! [`training_step`] takes a model graph exported for training (trainable
//! weights are [`Op::Parameter`] nodes named by weight path, the model's
//! prediction is its first output), appends a [`Loss`] against a new
//! `target` Input, differentiates it with [`grad`] with respect
//! to the selected Parameters, and appends the [`Optimizer`]'s update.
//!
//! # The executor contract
//!
//! - **Inputs:** the model's inputs in their order, then `target`.
//! - **Bindings:** every Parameter of the model (trainable or not), plus
//!   the optimizer state of [`UpdateKind::OptimizerState`] updates (zeros
//!   before the first step: [`TrainingStep::initial_state`]).
//! - **Outputs:** output 0 is the loss (a scalar); output `i + 1` is
//!   `updates[i].new_value`, of exactly the shape and dtype of the
//!   Parameter named `updates[i].parameter`, which it replaces for the next
//!   step ([`TrainingStep::apply`] does that on a `Bindings` map).
//! - **In place:** every update is an elementwise chain from the old
//!   parameter (and old optimizer state) to the new value: element `i` of
//!   the new value reads only element `i` of the old ones. An executor may
//!   therefore store each new value straight into the buffer bound for its
//!   Parameter, provided every other node that reads that Parameter,
//!   directly or through a view such as a lowered Transpose (the forward
//!   pass, gradients that use the weight), has run before the store. The
//!   gradients themselves are computed fresh each step (nothing accumulates
//!   across calls).
//!
//! ```
//! use cranelora_graph::training::{training_step, Loss, Optimizer, Trainable};
//! use cranelora_graph::{interpret, Bindings, DType, Graph, TensorData};
//!
//! // y = x·w, one SGD step on (y − target)².
//! let mut model = Graph::new();
//! let x = model.input("x", [1, 1], DType::F64);
//! let w = model.parameter("w", [1, 1], DType::F64);
//! let y = model.matmul(x, w)?;
//! model.set_outputs(&[y])?;
//! let step = training_step(&model, Loss::Mse, &Trainable::All, &Optimizer::Sgd { lr: 0.1 })?;
//!
//! let mut bindings = Bindings::new();
//! bindings.insert("w".into(), TensorData::f64([1, 1], vec![2.0])?);
//! let inputs = [TensorData::f64([1, 1], vec![1.0])?, TensorData::f64([1, 1], vec![1.0])?];
//! let out = interpret(&step.graph, &inputs, &bindings)?;
//! assert_eq!(out[0].to_f64_vec(), vec![1.0]); // (2 − 1)²
//! step.apply(&out, &mut bindings);
//! assert_eq!(bindings["w"].to_f64_vec(), vec![1.8]); // 2 − 0.1·2·(2 − 1)
//! # Ok::<(), cranelora_graph::Error>(())
//! ```

use crate::{grad, Bindings, DType, Graph, NodeId, Op, ReduceKind, Result, TensorData, Value};

mod sgd;
use sgd::{sgd, sgd_momentum, Momentum};

/// The loss between the model's output `y` and the `target` Input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// mean((y − target)²) over all elements; `target` has y's shape and dtype
    /// (PyTorch's `MSELoss()`).
    Mse,
    /// Cross-entropy of logits y [..., C] against class ids `target` i64
    /// [...]: the mean over rows of logsumexp(y_row) − y_row\[target\]
    /// (PyTorch's `CrossEntropyLoss()`). An id outside `0..C` picks no
    /// logit: its row's loss is logsumexp(y_row).
    CrossEntropy,
}

/// Which Parameters are trained; the others stay fixed (bound, not updated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trainable {
    /// Every Parameter of the model.
    All,
    /// Parameters whose name contains this text (`"lora_"`).
    NameContains(String),
    /// Parameters with exactly these names (names absent from the graph select nothing).
    Names(Vec<String>),
}

impl Trainable {
    /// Whether the Parameter called `name` is trained.
    pub fn selects(&self, name: &str) -> bool {
        match self {
            Trainable::All => true,
            Trainable::NameContains(part) => name.contains(part.as_str()),
            Trainable::Names(names) => names.iter().any(|n| n == name),
        }
    }
}

/// Adam's hyper-parameters (PyTorch's `Adam` / `AdamW` semantics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first-moment average.
    pub beta1: f64,
    /// Decay of the second-moment average.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Weight decay (0 for none).
    pub weight_decay: f64,
    /// `true`: AdamW's decoupled decay p ← p·(1 − lr·wd); `false`: Adam's
    /// L2 decay g ← g + wd·p.
    pub decoupled: bool,
}

impl Adam {
    /// Adam with PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, no decay.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        }
    }

    /// AdamW with PyTorch's defaults and this decoupled weight decay.
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        Self {
            weight_decay,
            decoupled: true,
            ..Self::new(lr)
        }
    }
}

/// The update applied to each trained Parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// p ← p − lr·∂L/∂p.
    Sgd {
        /// Learning rate.
        lr: f64,
    },
    /// Adam or AdamW, with bias correction. Its state is Parameters
    /// `adam.m.<name>` and `adam.v.<name>` per trained Parameter (its
    /// shape) and `adam.step` (a scalar of the loss dtype, the number of
    /// steps taken), all zero before the first step and updated as outputs.
    Adam(Adam),
    /// SGD with momentum as PyTorch's `SGD(momentum=μ, nesterov=…)` (no
    /// dampening): b ← μ·b + g, then p ← p − lr·b, or p ← p − lr·(g + μ·b)
    /// with Nesterov. Its state is a Parameter `sgd.momentum.<name>` per
    /// trained Parameter, zero before the first step.
    SgdMomentum {
        /// Learning rate.
        lr: f64,
        /// The momentum factor μ.
        momentum: f64,
        /// Nesterov's look-ahead form.
        nesterov: bool,
    },
}

/// What an updated Parameter holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateKind {
    /// A trained weight of the model.
    Weight,
    /// Optimizer state added by the training step; zero before the first step.
    OptimizerState,
}

/// One output of a training step that replaces a Parameter's value.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamUpdate {
    /// The name of the Parameter (and its binding) this output replaces.
    pub parameter: String,
    /// The Parameter node.
    pub node: NodeId,
    /// The node holding the value after the step; a graph output.
    pub new_value: NodeId,
    /// A model weight or optimizer state.
    pub kind: UpdateKind,
}

/// A graph computing the loss and one optimizer step (contract in the [module docs](self)).
#[derive(Clone, Debug)]
pub struct TrainingStep {
    /// The model, loss, gradients and updates; outputs `[loss, updates…]`.
    pub graph: Graph,
    /// The loss node, output 0.
    pub loss: NodeId,
    /// The `target` Input, the graph's last input.
    pub target: NodeId,
    /// The updated Parameters, in output order (output `i + 1` is `updates[i]`).
    pub updates: Vec<ParamUpdate>,
}

impl TrainingStep {
    /// Zero values for every optimizer-state Parameter, to bind before the first step.
    pub fn initial_state(&self) -> Bindings {
        let state = self.updates.iter();
        let state = state.filter(|u| u.kind == UpdateKind::OptimizerState);
        state
            .map(|u| {
                let node = self
                    .graph
                    .node(u.node)
                    .expect("internal: updates name live nodes");
                let zero = TensorData::full(&node.shape, 0.0, node.dtype);
                (u.parameter.clone(), zero)
            })
            .collect()
    }

    /// Binds each updated value of `outputs` (a run of [`TrainingStep::graph`])
    /// under its Parameter's name, ready for the next step. Extra or missing
    /// outputs are ignored.
    pub fn apply(&self, outputs: &[Value], bindings: &mut Bindings) {
        for (u, v) in self.updates.iter().zip(outputs.iter().skip(1)) {
            bindings.insert(u.parameter.clone(), v.clone());
        }
    }
}

/// Builds the training-step graph of `model` (contract in the [module docs](self)).
///
/// The model's first output is the prediction; the Parameters `trainable`
/// selects are trained in index order (none selected: the step only
/// computes the loss).
///
/// # Errors
/// [`Error::Verify`](crate::Error::Verify) for a model that fails
/// verification (for example with no output, or an Input already named
/// `target`); the errors of [`grad`] (an integer prediction);
/// [`Error::Shape`](crate::Error::Shape) for a rank-0 prediction with
/// cross-entropy.
pub fn training_step(
    model: &Graph,
    loss: Loss,
    trainable: &Trainable,
    optimizer: &Optimizer,
) -> Result<TrainingStep> {
    crate::verify(model)?;
    let mut graph = model.clone();
    let y = graph.outputs()[0];
    let (target, loss) = match loss {
        Loss::Mse => mse(&mut graph, y)?,
        Loss::CrossEntropy => cross_entropy(&mut graph, y)?,
    };
    let params = trained(&graph, trainable);
    let ids: Vec<NodeId> = params.iter().map(|(_, id)| *id).collect();
    let grads = grad(&mut graph, loss, &ids)?;
    let updates = match optimizer {
        Optimizer::Sgd { lr } => sgd(&mut graph, &params, &grads, *lr)?,
        Optimizer::SgdMomentum {
            lr,
            momentum,
            nesterov,
        } => {
            let m = Momentum {
                lr: *lr,
                momentum: *momentum,
                nesterov: *nesterov,
            };
            sgd_momentum(&mut graph, &params, &grads, m)?
        }
        Optimizer::Adam(adam) => adam_updates(&mut graph, &params, &grads, adam, loss)?,
    };
    let mut outputs = vec![loss];
    outputs.extend(updates.iter().map(|u| u.new_value));
    graph.set_outputs(&outputs)?;
    crate::verify(&graph)?;
    Ok(TrainingStep {
        graph,
        loss,
        target,
        updates,
    })
}

/// The selected Parameters as (name, node), in index order.
fn trained(graph: &Graph, trainable: &Trainable) -> Vec<(String, NodeId)> {
    let nodes = graph.node_ids().into_iter();
    let params = nodes.filter_map(|id| match &graph.node(id)?.op {
        Op::Parameter { name } if trainable.selects(name) => Some((name.clone(), id)),
        _ => None,
    });
    params.collect()
}

fn all_axes(graph: &Graph, id: NodeId) -> Vec<usize> {
    let rank = graph.node(id).map_or(0, |n| n.shape.rank());
    (0..rank).collect()
}

/// mean((y − target)²); returns (target, loss).
fn mse(graph: &mut Graph, y: NodeId) -> Result<(NodeId, NodeId)> {
    let (shape, dtype) = shape_dtype(graph, y);
    let target = graph.input("target", shape, dtype);
    let diff = graph.named("loss.diff").sub(y, target)?;
    let sq = graph.named("loss.sq").mul(diff, diff)?;
    let axes = all_axes(graph, sq);
    let loss = graph
        .named("loss")
        .reduce(sq, ReduceKind::Mean, &axes, false)?;
    Ok((target, loss))
}

/// mean over rows of logsumexp(y) − y[target], with the row max subtracted
/// (behind StopGradient: logsumexp does not depend on the shift); returns
/// (target, loss).
fn cross_entropy(graph: &mut Graph, y: NodeId) -> Result<(NodeId, NodeId)> {
    let (shape, dtype) = shape_dtype(graph, y);
    let Some((&classes, rows)) = shape.dims().split_last() else {
        let reason = "cross-entropy needs logits of rank ≥ 1 ([..., classes])".to_string();
        return Err(crate::Error::Shape {
            node: graph.desc(y),
            op: "cross_entropy".into(),
            shapes: vec![shape.clone()],
            reason,
        });
    };
    let last = shape.rank() - 1;
    let target = graph.input("target", rows.to_vec(), DType::I64);
    let max = graph
        .named("loss.max")
        .reduce(y, ReduceKind::Max, &[last], true)?;
    let max = graph.named("loss.max").stop_gradient(max)?;
    let z = graph.named("loss.shifted").sub(y, max)?;
    let e = graph.named("loss.exp").exp(z)?;
    let sum = graph
        .named("loss.sum_exp")
        .reduce(e, ReduceKind::Sum, &[last], true)?;
    let lse = graph.named("loss.logsumexp").log(sum)?;
    // One-hot of the ids: [..., 1] ids against the [C] class numbers.
    let ids = graph.named("loss.ids").cast(target, dtype)?;
    let mut col = rows.to_vec();
    col.push(1);
    let ids = graph.named("loss.ids").reshape(ids, col)?;
    let numbers: Vec<f64> = (0..classes).map(|c| c as f64).collect();
    let numbers = cast_data(TensorData::f64([classes], numbers)?, dtype);
    let numbers = graph.named("loss.classes").constant(numbers)?;
    let onehot = graph.named("loss.onehot").equal(ids, numbers)?;
    let picked = graph.named("loss.picked").mul(onehot, z)?;
    let picked = graph
        .named("loss.picked")
        .reduce(picked, ReduceKind::Sum, &[last], true)?;
    let per_row = graph.named("loss.per_row").sub(lse, picked)?;
    let axes = all_axes(graph, per_row);
    let loss = graph
        .named("loss")
        .reduce(per_row, ReduceKind::Mean, &axes, false)?;
    Ok((target, loss))
}

fn cast_data(data: TensorData, dtype: DType) -> TensorData {
    match dtype {
        DType::F32 => {
            let v: Vec<f32> = data.to_f64_vec().iter().map(|&x| x as f32).collect();
            TensorData::f32(data.shape(), v).expect("internal: same element count")
        }
        _ => data,
    }
}

fn shape_dtype(graph: &Graph, id: NodeId) -> (crate::Shape, DType) {
    let node = graph.node(id).expect("internal: training uses live nodes");
    (node.shape.clone(), node.dtype)
}

fn weight_update(name: &str, node: NodeId, new_value: NodeId) -> ParamUpdate {
    ParamUpdate {
        parameter: name.into(),
        node,
        new_value,
        kind: UpdateKind::Weight,
    }
}

/// Adam / AdamW as PyTorch computes it, with t the new step count:
/// g ← g + wd·p (Adam), p ← p·(1 − lr·wd) (AdamW),
/// m ← β₁m + (1 − β₁)g, v ← β₂v + (1 − β₂)g²,
/// p ← p − lr/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + eps).
fn adam_updates(
    graph: &mut Graph,
    params: &[(String, NodeId)],
    grads: &[NodeId],
    adam: &Adam,
    loss: NodeId,
) -> Result<Vec<ParamUpdate>> {
    let (_, dtype) = shape_dtype(graph, loss);
    let step = graph.parameter("adam.step", [], dtype);
    let one = graph.scalar(1.0, dtype)?;
    let t = graph.named("update(adam.step)").add(step, one)?;
    // 1 − βᵗ for both betas: the bias corrections, scalars shared by every parameter.
    let correction = |graph: &mut Graph, beta: f64, name: &str| -> Result<NodeId> {
        let b = graph.scalar(beta, dtype)?;
        let bt = graph.named(name).pow(b, t)?;
        graph.named(name).sub(one, bt)
    };
    let bc1 = correction(graph, adam.beta1, "adam.bias_correction1")?;
    let bc2 = correction(graph, adam.beta2, "adam.bias_correction2")?;
    let lr = graph.scalar(adam.lr, dtype)?;
    let step_size = graph.named("adam.step_size").div(lr, bc1)?;
    let sqrt_bc2 = graph.named("adam.bias_correction2").sqrt(bc2)?;
    let mut weights = Vec::new();
    let mut state = Vec::new();
    for ((name, p), &g) in params.iter().zip(grads) {
        let moments = AdamMoments {
            step_size,
            sqrt_bc2,
            step_dtype: dtype,
        };
        let (new_p, m, v) = moments.update(graph, adam, name, *p, g)?;
        weights.push(weight_update(name, *p, new_p));
        state.extend([m, v]);
    }
    state.push(ParamUpdate {
        parameter: "adam.step".into(),
        node: step,
        new_value: t,
        kind: UpdateKind::OptimizerState,
    });
    weights.extend(state);
    Ok(weights)
}

/// The scalars one Adam step shares across parameters.
struct AdamMoments {
    step_size: NodeId,
    sqrt_bc2: NodeId,
    step_dtype: DType,
}

impl AdamMoments {
    /// The new (parameter, m, v) of one trained Parameter `p` with gradient `g`.
    fn update(
        &self,
        graph: &mut Graph,
        adam: &Adam,
        name: &str,
        p: NodeId,
        g: NodeId,
    ) -> Result<(NodeId, ParamUpdate, ParamUpdate)> {
        let (shape, dtype) = shape_dtype(graph, p);
        let at = |what: &str| format!("adam({name}).{what}");
        let (m_name, v_name) = (format!("adam.m.{name}"), format!("adam.v.{name}"));
        let m = graph.parameter(&m_name, shape.clone(), dtype);
        let v = graph.parameter(&v_name, shape, dtype);
        let (step_size, sqrt_bc2) = self.scalars(graph, dtype)?;
        let g = if adam.weight_decay != 0.0 && !adam.decoupled {
            let decay = graph.named(at("decay")).scale(p, adam.weight_decay)?;
            graph.named(at("grad")).add(g, decay)?
        } else {
            g
        };
        let m_old = graph.named(at("m")).scale(m, adam.beta1)?;
        let m_add = graph.named(at("m")).scale(g, 1.0 - adam.beta1)?;
        let m_new = graph.named(format!("update({m_name})")).add(m_old, m_add)?;
        let g2 = graph.named(at("v")).mul(g, g)?;
        let v_old = graph.named(at("v")).scale(v, adam.beta2)?;
        let v_add = graph.named(at("v")).scale(g2, 1.0 - adam.beta2)?;
        let v_new = graph.named(format!("update({v_name})")).add(v_old, v_add)?;
        let root = graph.named(at("denom")).sqrt(v_new)?;
        let root = graph.named(at("denom")).div(root, sqrt_bc2)?;
        let eps = graph.scalar(adam.eps, dtype)?;
        let denom = graph.named(at("denom")).add(root, eps)?;
        let ratio = graph.named(at("delta")).div(m_new, denom)?;
        let delta = graph.named(at("delta")).mul(step_size, ratio)?;
        let p = if adam.weight_decay != 0.0 && adam.decoupled {
            let keep = 1.0 - adam.lr * adam.weight_decay;
            graph.named(at("decayed")).scale(p, keep)?
        } else {
            p
        };
        let new_p = graph.named(format!("update({name})")).sub(p, delta)?;
        let state = |parameter: String, node, new_value| ParamUpdate {
            parameter,
            node,
            new_value,
            kind: UpdateKind::OptimizerState,
        };
        Ok((new_p, state(m_name, m, m_new), state(v_name, v, v_new)))
    }

    /// The shared scalars in `dtype` (cast when a parameter's dtype differs from the loss's).
    fn scalars(&self, graph: &mut Graph, dtype: DType) -> Result<(NodeId, NodeId)> {
        if dtype == self.step_dtype {
            return Ok((self.step_size, self.sqrt_bc2));
        }
        Ok((
            graph.cast(self.step_size, dtype)?,
            graph.cast(self.sqrt_bc2, dtype)?,
        ))
    }
}
