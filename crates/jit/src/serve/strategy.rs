//! Merged or unmerged, per adapted layer: the cost model of
//! [`AdapterStrategy::Auto`].
//!
//! Per layer (fan_in `i`, fan_out `o`, rank `r`, `e` bytes per element) and
//! per serving load ([`ServingLoad`]: batch rows `b`, resident adapters `n`,
//! calls between two rebinds `c`, the memory budget for weight copies):
//!
//! - **unmerged** — every call runs the low-rank branch: `b·r·(i + o)`
//!   multiply-adds; memory `n·r·(i + o)·e` (the adapters; the base weight is
//!   shared and prepacked once).
//! - **merged** — each bind folds `W + s·A·B` (`i·o·r` multiply-adds, plus
//!   `i·o` to write the copy), amortized over `c` calls; every call then
//!   packs the bound weight for the GEMM (`i·o` element moves: a bound
//!   weight is a Parameter, so it cannot be prepacked at compile time);
//!   memory `n·i·o·e` (one merged copy per resident adapter).
//!
//! Merged is chosen when its per-call work (`i·o + i·o·(r + 1)/c`) is below
//! the unmerged branch's and the merged copies fit the budget. A layer with
//! DoRA or a LoRA bias slot, or any layer of a server with mixed batches
//! (rows with different adapters share one weight), stays unmerged.
//! Element moves are counted like multiply-adds: both are one
//! vector-lane operation, and packing is memory-bound as the branch's
//! small products are.

use super::adapters::LayerSlot;
use std::fmt;

/// How adapted layers run in an [`AdapterServer`](super::AdapterServer).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum AdapterStrategy {
    /// Every layer keeps the low-rank branch (runtime-bound A and B).
    #[default]
    Unmerged,
    /// Per layer, by the cost model of the module docs.
    Auto(ServingLoad),
}

/// The serving load the cost model weighs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServingLoad {
    /// Rows per call.
    pub batch: usize,
    /// Adapters bound at once.
    pub resident_adapters: usize,
    /// Calls between two rebinds of an adapter (∞ for never).
    pub calls_per_rebind: f64,
    /// Bytes allowed for merged weight copies, over all layers.
    pub memory_budget: usize,
}

/// The choice for one layer and why.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerChoice {
    /// The layer path.
    pub path: String,
    /// Merged (the bound weight is `W + s·A·B`) or not.
    pub merged: bool,
    /// The numbers behind the choice.
    pub reason: String,
}

impl fmt::Display for LayerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.merged { "merged" } else { "unmerged" };
        write!(f, "{}: {what} ({})", self.path, self.reason)
    }
}

/// The choice for every slot, merged copies charged to the budget in slot order.
pub fn choose(slots: &[LayerSlot], strategy: AdapterStrategy, mixed: bool) -> Vec<LayerChoice> {
    let mut left = match strategy {
        AdapterStrategy::Auto(load) => load.memory_budget,
        AdapterStrategy::Unmerged => 0,
    };
    slots
        .iter()
        .map(|s| {
            let (merged, reason) = match strategy {
                AdapterStrategy::Unmerged => (false, "strategy Unmerged".to_string()),
                AdapterStrategy::Auto(load) => decide(s, &load, mixed, &mut left),
            };
            LayerChoice {
                path: s.path.clone(),
                merged,
                reason,
            }
        })
        .collect()
}

/// One layer's decision; `left` is the budget not yet used.
fn decide(s: &LayerSlot, load: &ServingLoad, mixed: bool, left: &mut usize) -> (bool, String) {
    if mixed {
        return (
            false,
            "mixed batches need the per-row low-rank branch".into(),
        );
    }
    if s.dora_base.is_some() || s.bias {
        return (false, "DoRA / LoRA-bias slots keep the branch".into());
    }
    if !s.linear {
        return (false, "only Linear layers are merged".into());
    }
    let (i, o, r) = (s.fan_in as f64, s.fan_out as f64, s.rank as f64);
    let unmerged = load.batch as f64 * r * (i + o);
    let merged = i * o + i * o * (r + 1.0) / load.calls_per_rebind.max(1.0);
    let bytes = load.resident_adapters * s.fan_in * s.fan_out * s.dtype.size_bytes();
    let numbers = format!(
        "per call: branch {unmerged:.3e} vs repack + amortized fold {merged:.3e} madds; merged copies {bytes} B, budget left {left} B",
        left = *left
    );
    if bytes > *left {
        (false, format!("over the memory budget; {numbers}"))
    } else if merged >= unmerged {
        (false, format!("branch is cheaper; {numbers}"))
    } else {
        *left -= bytes;
        (true, format!("merged is cheaper; {numbers}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cranelora_graph::DType;

    fn slot(i: usize, o: usize, r: usize) -> LayerSlot {
        LayerSlot {
            path: format!("l{i}x{o}"),
            fan_in: i,
            fan_out: o,
            rank: r,
            dtype: DType::F32,
            bias: false,
            dora_base: None,
            linear: true,
            merged_base: None,
        }
    }

    fn load(batch: usize, calls: f64, budget: usize) -> ServingLoad {
        ServingLoad {
            batch,
            resident_adapters: 2,
            calls_per_rebind: calls,
            memory_budget: budget,
        }
    }

    #[test]
    fn w1_layers_stay_unmerged_at_batch_64_and_merge_at_large_batches() {
        // W1: 1024×1024, r 16, batch 64: branch 64·16·2048 = 2.10e6 per call
        // vs repack 1.05e6 + fold 1.78e7/c → merged only for c > ~17.
        let s = [slot(1024, 1024, 16)];
        let big = usize::MAX;
        assert!(!choose(&s, AdapterStrategy::Auto(load(64, 10.0, big)), false)[0].merged);
        assert!(choose(&s, AdapterStrategy::Auto(load(64, 1e6, big)), false)[0].merged);
        // Batch 16: 5.2e5 < the repack alone: never merged.
        assert!(
            !choose(
                &s,
                AdapterStrategy::Auto(load(16, f64::INFINITY, big)),
                false
            )[0]
            .merged
        );
    }

    #[test]
    fn the_budget_and_mixed_batches_keep_the_branch() {
        let s = [slot(1024, 1024, 16), slot(1024, 1024, 16)];
        // Two resident copies of one 4 MiB layer fit 8 MiB once.
        let c = choose(&s, AdapterStrategy::Auto(load(64, 1e6, 8 << 20)), false);
        assert_eq!((c[0].merged, c[1].merged), (true, false));
        assert!(c[1].reason.contains("budget"), "{}", c[1]);
        let c = choose(&s, AdapterStrategy::Auto(load(64, 1e6, usize::MAX)), true);
        assert!(c.iter().all(|c| !c.merged && c.reason.contains("mixed")));
        assert!(choose(&s, AdapterStrategy::Unmerged, false)
            .iter()
            .all(|c| !c.merged));
    }
}
