//! Graph transforms that rewrite a [`Graph`] in place, and the manager that
//! runs them.
//!
//! Every transform is a [`Pass`]: `run(&mut Graph) -> Result<Changed>`. Each
//! keeps the interpreter's results, exactly or within the tolerance its
//! module documents where it reorders floating-point arithmetic:
//!
//! | pass | file | changes results by |
//! | --- | --- | --- |
//! | [`Simplify`] | `simplify.rs` | nothing (±0 aside), except scale merging: ≤ 2 ulp |
//! | [`ConstFold`] | `const_fold.rs` | nothing: the interpreter computes the value |
//! | [`LoraFold`] | `lora_fold.rs` | reordered sums: ≈ k·ε relative to \|x\|·(\|W\| + \|s\|·\|A\|·\|B\|) |
//! | [`Cse`] | `cse.rs` | nothing |
//! | [`DeadCodeElim`] | `dce.rs` | nothing |
//!
//! Fusion grouping ([`plan_fusion`], `fuse.rs`) does not change the graph:
//! it returns a [`FusionPlan`], a side table the JIT reads and the
//! interpreter ignores.
//!
//! [`PassManager`] runs the default pipeline — simplify → constant folding
//! → LoRA folding → CSE → DCE, looped until nothing changes (at most
//! [`PassOptions::max_iterations`] rounds), then fusion grouping — with a
//! switch per pass, verification after each pass (debug builds and tests),
//! an optional dump after each pass, and per-pass timings in a
//! [`PassReport`].
//!
//! ```
//! use cranelora_graph::passes::{PassManager, PassOptions};
//! use cranelora_graph::{DType, Graph, TensorData};
//!
//! // y = (x·1)·W with W a constant: simplification removes the ·1.
//! let mut g = Graph::new();
//! let x = g.input("x", [2, 3], DType::F32);
//! let one = g.scalar(1.0, DType::F32)?;
//! let x1 = g.mul(x, one)?;
//! let w = g.constant(TensorData::f32([3, 2], vec![1.0; 6])?)?;
//! let y = g.matmul(x1, w)?;
//! g.set_outputs(&[y])?;
//!
//! let report = PassManager::new(PassOptions::default()).run(&mut g)?;
//! assert_eq!(g.len(), 3); // x, W, matmul
//! assert!(report.fusion.is_some());
//! # Ok::<(), cranelora_graph::Error>(())
//! ```

// Public so that each pass's requirements, guarantees and rules (its `//!`)
// appear in the API docs; the types are re-exported here.
pub mod const_fold;
pub mod cse;
pub mod dce;
pub mod fuse;
pub mod lora_fold;
pub mod manager;
pub mod simplify;

pub use const_fold::ConstFold;
pub use cse::Cse;
pub use dce::DeadCodeElim;
pub use fuse::{plan_fusion, FusionGroup, FusionPlan};
pub use lora_fold::LoraFold;
pub use manager::{PassManager, PassOptions, PassReport, PassRun};
pub use simplify::Simplify;

use crate::{Graph, NodeId, Op, Result};
use std::fmt;
use std::ops::AddAssign;

/// A transform of a graph in place.
pub trait Pass {
    /// The pass's name in reports and dumps (`simplify`, `cse`, …).
    fn name(&self) -> &'static str;

    /// Rewrites `g` in place and says what changed.
    ///
    /// # Errors
    /// An error from the graph (e.g. [`Error::Cycle`](crate::Error::Cycle)
    /// for a cyclic graph); a pass never leaves a graph that fails
    /// [`verify`](crate::verify()) when given one that passes.
    fn run(&self, g: &mut Graph) -> Result<Changed>;
}

/// What one run of a pass changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Nodes removed from the graph.
    pub removed: usize,
    /// Nodes added to the graph.
    pub added: usize,
    /// Rewrites applied: rules fired, nodes folded or merged.
    pub rewritten: usize,
}

impl Changed {
    /// Whether the pass changed anything.
    pub fn any(&self) -> bool {
        self.removed + self.added + self.rewritten > 0
    }
}

impl AddAssign for Changed {
    fn add_assign(&mut self, other: Self) {
        self.removed += other.removed;
        self.added += other.added;
        self.rewritten += other.rewritten;
    }
}

impl fmt::Display for Changed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-{} +{} ~{}", self.removed, self.added, self.rewritten)
    }
}

/// Whether `id` may be removed once nothing uses it: Inputs are the call
/// signature and Parameters the binding signature, so both stay.
fn removable(g: &Graph, id: NodeId) -> bool {
    g.node(id)
        .is_some_and(|n| !matches!(n.op, Op::Input { .. } | Op::Parameter { .. }))
}

/// Removes `id` if it is unused and not an output, then its operands that
/// become unused in turn; returns how many nodes were removed.
///
/// Rewriting passes call this on each node they replaced, so that they leave
/// no garbage of their own behind (whole-graph cleanup is DCE's job).
fn sweep(g: &mut Graph, id: NodeId) -> usize {
    let mut removed = 0;
    let mut stack = vec![id];
    while let Some(id) = stack.pop() {
        let dead = removable(g, id) && g.users(id).is_empty() && !g.outputs().contains(&id);
        if !dead {
            continue;
        }
        let operands = g.operands(id);
        g.remove_node(id);
        removed += 1;
        stack.extend(operands);
    }
    removed
}

/// Makes every use of `old` a use of `new` and sweeps `old`; the count of
/// nodes removed.
///
/// # Errors
/// As [`Graph::replace_uses`] (the two nodes' types differ).
fn replace(g: &mut Graph, old: NodeId, new: NodeId) -> Result<usize> {
    g.replace_uses(old, new)?;
    Ok(sweep(g, old))
}

/// Adds `op` on `operands` named like `like`, for a node that replaces `like`.
fn push_like(g: &mut Graph, like: NodeId, op: Op, operands: &[NodeId]) -> Result<NodeId> {
    if let Some(name) = g.node(like).and_then(|n| n.name.clone()) {
        g.named(name);
    }
    g.push(op, operands)
}

/// The constant's data, if `id` is a Constant node.
fn constant(g: &Graph, id: NodeId) -> Option<&std::sync::Arc<crate::TensorData>> {
    match &g.node(id)?.op {
        Op::Constant(data) => Some(data),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn sweep_removes_a_dead_chain_but_keeps_inputs_and_parameters() {
        let mut g = Graph::new();
        let x = g.input("x", [2], DType::F32);
        let p = g.parameter("p", [2], DType::F32);
        let a = g.add(x, p).expect("same shapes");
        let b = g.exp(a).expect("float");
        let y = g.neg(x).expect("neg");
        g.set_outputs(&[y]).expect("y is a node");
        assert_eq!(sweep(&mut g, b), 2);
        assert_eq!(g.len(), 3);
        assert!(g.node(x).is_some() && g.node(p).is_some());
        assert_eq!(sweep(&mut g, y), 0, "outputs stay");
    }
}
