//! Merged or unmerged, per runtime-bound adapted layer: the cost model of
//! [`AdapterStrategy::Auto`] ([`JitOptions::adapter_strategy`](crate::JitOptions)).
//!
//! Per layer (fan_in `i`, fan_out `o`, rank `r`, `e` bytes per element,
//! `b` rows per call — read from the compiled graph, whose shapes are
//! fixed) and per serving load ([`ServingLoad`]: `n` resident adapters,
//! `c` calls between two rebinds, the memory budget for merged copies, the
//! cost `K` of moving one weight element):
//!
//! - **unmerged** — every call runs the low-rank branch: `b·r·(i + o)`
//!   multiply-adds for Linear, `b·r·o` plus `K·b·r` (the gathered rows of
//!   A) for Embedding; memory `n·r·(i + o)·e` (the adapters; the base
//!   weight is shared and, for Linear, prepacked once).
//! - **merged** — each bind folds `W + s·A·B` (`i·o·r` multiply-adds plus
//!   `i·o` to write the copy) and, for Linear, packs it for the GEMM once
//!   (`K·i·o`; the server binds it with `Bindings::insert_packed`, so calls
//!   read the packed copy as they read a prepacked Constant); an
//!   Embedding's gather reads the bound table as it is. That work is
//!   amortized over `c` calls; a call itself costs nothing over the base
//!   model. Memory `n·i·o·e` per resident adapter, twice for Linear (the
//!   merged copy and its packed copy).
//!
//! Merged is chosen when the per-bind work over `c` calls is below the
//! branch's per-call work and the merged copies fit what is left of the
//! budget (charged layer by layer, in graph order). DoRA layers (the per-feature scale needs the branch),
//! Conv2d layers (a bound kernel is not merged yet) and the mixed-batch
//! branch (rows take different adapters) stay unmerged under every
//! strategy, with that reason.
//!
//! `K` defaults to [`MOVE_COST`], measured by
//! [`measure_move_cost`](super::measure_move_cost) (docs/jit.md, "Merged or
//! unmerged"); [`ServingLoad::move_cost`] takes a calibration of the
//! serving machine.

use cranelora_graph::{DType, TensorData};
use std::fmt;
use std::sync::Arc;

/// The cost of packing one weight element for the GEMM, in units of one
/// multiply-add of the low-rank branch: the median of four
/// [`measure_move_cost`](super::measure_move_cost) runs on W1's shapes
/// (1024 × 1024, rank 16, 64 rows, f32: K = 2.34, 2.62, 2.82, 2.89) on the
/// development machine (docs/jit.md, "Merged or unmerged").
pub const MOVE_COST: f64 = 2.7;

/// How the compiler treats runtime-bound adapters (adapters whose A and B
/// are Parameters, as in a Serving-mode export).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum AdapterStrategy {
    /// Every layer keeps the low-rank branch (runtime-bound A and B).
    #[default]
    Unmerged,
    /// Every layer that can be merged is: its base weight becomes the
    /// Parameter `P.base_layer.weight`, bound to `W + s·A·B`.
    Merged,
    /// Per layer, by the cost model of the module docs.
    Auto(ServingLoad),
}

/// The serving load the cost model weighs (the rows per call come from the
/// compiled graph).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServingLoad {
    /// Adapters bound at once (each merged layer keeps one copy per adapter).
    pub resident_adapters: usize,
    /// Calls between two rebinds of an adapter (∞ for never).
    pub calls_per_rebind: f64,
    /// Bytes allowed for merged weight copies, over all layers.
    pub memory_budget: usize,
    /// K: the cost of packing one weight element, in branch multiply-adds.
    pub move_cost: f64,
}

impl ServingLoad {
    /// A load with the measured [`MOVE_COST`].
    pub fn new(resident_adapters: usize, calls_per_rebind: f64, memory_budget: usize) -> Self {
        Self {
            resident_adapters,
            calls_per_rebind,
            memory_budget,
            move_cost: MOVE_COST,
        }
    }
}

impl fmt::Display for ServingLoad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} resident adapters, {} calls per rebind, budget {} B, move cost {}",
            self.resident_adapters, self.calls_per_rebind, self.memory_budget, self.move_cost
        )
    }
}

impl fmt::Display for AdapterStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unmerged => f.write_str("Unmerged"),
            Self::Merged => f.write_str("Merged"),
            Self::Auto(load) => write!(f, "Auto ({load})"),
        }
    }
}

/// The geometry of an adapted layer's branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BranchKind {
    /// `x·A·B`.
    Linear,
    /// Two convolutions.
    Conv2d,
    /// `gather(A, ids)·B`.
    Embedding,
    /// `GatherMatMul`s over stacked adapters (a mixed-batch function).
    Mixed,
}

/// A runtime-bound adapted layer as the compiler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptedLayer {
    /// The layer path `P` (nodes `P.lora_xa`, …).
    pub path: String,
    /// The branch.
    pub kind: BranchKind,
    /// Rows of A.
    pub fan_in: usize,
    /// Columns of B.
    pub fan_out: usize,
    /// The compiled rank.
    pub rank: usize,
    /// Rows per call (the branch's input rows).
    pub rows: usize,
    /// The float dtype.
    pub dtype: DType,
    /// Whether the layer has a DoRA scale.
    pub dora: bool,
    /// Whether the base weight is a Constant the compiler can replace.
    pub constant_base: bool,
    /// Whether A, B and the branch's products are read by the branch only
    /// (not, say, by the backward nodes of a training step).
    pub private_branch: bool,
}

/// The choice for one layer and why.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerChoice {
    /// The layer path.
    pub path: String,
    /// Merged (the bound weight `P.base_layer.weight` is `W + s·A·B`) or not.
    pub merged: bool,
    /// The numbers behind the choice.
    pub reason: String,
    /// For a merged layer, the base weight W `[fan_in, fan_out]` the
    /// Parameter replaced (what a binder adds `s·A·B` to).
    pub base: Option<Arc<TensorData>>,
}

impl fmt::Display for LayerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.merged { "merged" } else { "unmerged" };
        write!(f, "{}: {what} ({})", self.path, self.reason)
    }
}

/// Why `l` cannot be merged, if it cannot.
fn unmergeable(l: &AdaptedLayer) -> Option<&'static str> {
    match l.kind {
        BranchKind::Mixed => Some("mixed-batch branch: rows take different adapters"),
        BranchKind::Conv2d => Some("Conv2d: merging a bound kernel is not implemented"),
        _ if l.dora => Some("DoRA: the per-feature scale needs the branch"),
        _ if !l.constant_base => Some("the base weight is not a Constant"),
        _ if !l.private_branch => {
            Some("A, B or the branch are read outside it (a training step's gradients?)")
        }
        _ => None,
    }
}

/// The choice for every layer, merged copies charged to the budget in order.
pub fn choose(layers: &[AdaptedLayer], strategy: &AdapterStrategy) -> Vec<(bool, String)> {
    let mut left = match strategy {
        AdapterStrategy::Auto(load) => load.memory_budget,
        AdapterStrategy::Unmerged | AdapterStrategy::Merged => 0,
    };
    layers
        .iter()
        .map(|l| match (unmergeable(l), strategy) {
            (Some(why), _) => (false, why.to_string()),
            (None, AdapterStrategy::Unmerged) => (false, "strategy Unmerged".into()),
            (None, AdapterStrategy::Merged) => (true, "strategy Merged".into()),
            (None, AdapterStrategy::Auto(load)) => decide(l, load, &mut left),
        })
        .collect()
}

/// The branch's multiply-adds per call, and the merged weight's fold and
/// pack per bind (module docs).
fn costs(l: &AdaptedLayer, load: &ServingLoad) -> (f64, f64, f64) {
    let (i, o, r, b) = (
        l.fan_in as f64,
        l.fan_out as f64,
        l.rank as f64,
        l.rows as f64,
    );
    let k = load.move_cost;
    let (branch, pack) = match l.kind {
        BranchKind::Embedding => (b * r * o + k * b * r, 0.0),
        _ => (b * r * (i + o), k * i * o),
    };
    (branch, i * o * (r + 1.0), pack)
}

/// One mergeable layer under `Auto`; `left` is the budget not yet used.
fn decide(l: &AdaptedLayer, load: &ServingLoad, left: &mut usize) -> (bool, String) {
    let (branch, fold, pack) = costs(l, load);
    let calls = load.calls_per_rebind.max(1.0);
    let per_call = (fold + pack) / calls;
    let copies = if pack > 0.0 { 2 } else { 1 }; // merged (+ packed)
    let bytes = load
        .resident_adapters
        .saturating_mul(copies * l.fan_in * l.fan_out * l.dtype.size_bytes());
    let numbers = format!(
        "{} rows; per call: branch {branch:.3e} vs (fold {fold:.3e} + pack {pack:.3e})/{} calls = {per_call:.3e} madds; {} merged copies {bytes} B, budget left {} B",
        l.rows, load.calls_per_rebind, load.resident_adapters, *left
    );
    if bytes > *left {
        (false, format!("over the memory budget; {numbers}"))
    } else if per_call >= branch {
        (false, format!("branch is cheaper; {numbers}"))
    } else {
        *left -= bytes;
        (true, format!("merged is cheaper; {numbers}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(i: usize, o: usize, r: usize, rows: usize) -> AdaptedLayer {
        AdaptedLayer {
            path: format!("l{i}x{o}"),
            kind: BranchKind::Linear,
            fan_in: i,
            fan_out: o,
            rank: r,
            rows,
            dtype: DType::F32,
            dora: false,
            constant_base: true,
            private_branch: true,
        }
    }

    fn auto(calls: f64, budget: usize) -> AdapterStrategy {
        AdapterStrategy::Auto(ServingLoad::new(2, calls, budget))
    }

    #[test]
    fn w1_layers_merge_when_rebinds_are_rarer_than_fold_and_pack() {
        // W1: 1024×1024, r 16, K 2.7. Batch 64: branch 64·16·2048 = 2.1e6
        // per call vs (fold 1024²·17 = 1.78e7 + pack 2.7·1024² = 2.8e6)/c:
        // merged for c > ~9.8 calls per rebind.
        let big = usize::MAX;
        let s = [layer(1024, 1024, 16, 64)];
        let c = choose(&s, &auto(9.0, big));
        assert!(!c[0].0 && c[0].1.contains("branch is cheaper"), "{c:?}");
        let c = choose(&s, &auto(10.0, big));
        assert!(c[0].0 && c[0].1.contains("merged is cheaper"), "{c:?}");
        // Batch 512: branch 1.68e7 → merged from c = 2.
        let s = [layer(1024, 1024, 16, 512)];
        assert!(!choose(&s, &auto(1.0, big))[0].0);
        assert!(choose(&s, &auto(2.0, big))[0].0);
    }

    #[test]
    fn the_budget_and_unmergeable_layers_keep_the_branch() {
        let s = [layer(1024, 1024, 16, 512), layer(1024, 1024, 16, 512)];
        // Two resident adapters of one 4 MiB layer, merged and packed, fit
        // 16 MiB once.
        let c = choose(&s, &auto(1e6, 16 << 20));
        assert_eq!((c[0].0, c[1].0), (true, false));
        assert!(c[1].1.contains("budget"), "{c:?}");
        let mut dora = s.clone();
        dora[0].dora = true;
        dora[1].kind = BranchKind::Mixed;
        for strategy in [auto(1e6, usize::MAX), AdapterStrategy::Merged] {
            let c = choose(&dora, &strategy);
            assert!(!c[0].0 && c[0].1.contains("DoRA"), "{c:?}");
            assert!(!c[1].0 && c[1].1.contains("mixed"), "{c:?}");
        }
        assert!(choose(&s, &AdapterStrategy::Unmerged).iter().all(|c| !c.0));
        assert!(choose(&s, &AdapterStrategy::Merged).iter().all(|c| c.0));
    }

    #[test]
    fn an_embedding_merges_whenever_the_fold_is_amortized() {
        // No repack: a gather reads the bound table as it is.
        let mut e = layer(30000, 768, 8, 128);
        e.kind = BranchKind::Embedding;
        // Branch 128·8·768 + 8·128·8 ≈ 7.9e5 per call; fold 30000·768·9 = 2.1e8.
        assert!(!choose(&[e.clone()], &auto(100.0, usize::MAX))[0].0);
        assert!(choose(&[e], &auto(1000.0, usize::MAX))[0].0);
    }
}
