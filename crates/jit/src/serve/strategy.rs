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
//! Merged is chosen when its per-call work (`K·i·o + i·o·(r + 1)/c`) is
//! below the unmerged branch's and the merged copies fit the budget. A layer
//! with DoRA or a LoRA bias slot, or any layer of a server with mixed batches
//! (rows with different adapters share one weight), stays unmerged.
//!
//! `K` ([`MOVE_COST`] = 8) is the cost of packing one weight element in
//! units of one branch multiply-add: packing is memory-bound, the branch's
//! products run at GEMM speed. It comes from `cranelora serve-bench`'s
//! `bound` and `bound-merged` modes on W1 (docs/benchmarks.md: packing cost
//! 4–40 multiply-adds per element over the minimum and median times of one
//! noisy run; 8 is the rounded middle), so W1's layers (rank 16) merge only
//! from about 256 rows per call.

use super::adapters::LayerSlot;
use std::fmt;

/// The cost of packing one weight element, in branch multiply-adds (module docs).
pub const MOVE_COST: f64 = 8.0;

/// How adapted layers run in an [`AdapterServer`](super::AdapterServer).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum AdapterStrategy {
    /// Every layer keeps the low-rank branch (runtime-bound A and B).
    #[default]
    Unmerged,
    /// Every layer that can be merged is (Linear, no DoRA / LoRA bias, no
    /// mixed batches).
    Merged,
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
        AdapterStrategy::Unmerged | AdapterStrategy::Merged => 0,
    };
    slots
        .iter()
        .map(|s| {
            let (merged, reason) = match strategy {
                AdapterStrategy::Unmerged => (false, "strategy Unmerged".to_string()),
                AdapterStrategy::Merged => match unmergeable(s, mixed) {
                    Some(why) => (false, why.to_string()),
                    None => (true, "strategy Merged".to_string()),
                },
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

/// Why `s` cannot be merged, if it cannot.
fn unmergeable(s: &LayerSlot, mixed: bool) -> Option<&'static str> {
    if mixed {
        Some("mixed batches need the per-row low-rank branch")
    } else if s.dora_base.is_some() || s.bias {
        Some("DoRA / LoRA-bias slots keep the branch")
    } else if !s.linear {
        Some("only Linear layers are merged")
    } else {
        None
    }
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
    let merged = MOVE_COST * i * o + i * o * (r + 1.0) / load.calls_per_rebind.max(1.0);
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
        // W1: 1024×1024, r 16. Batch 64: branch 64·16·2048 = 2.1e6 per call
        // < the repack alone, 8·1024² = 8.4e6: never merged.
        let s = [slot(1024, 1024, 16)];
        let big = usize::MAX;
        let auto = |b, c| AdapterStrategy::Auto(load(b, c, big));
        assert!(!choose(&s, auto(64, f64::INFINITY), false)[0].merged);
        // Batch 512: branch 1.68e7 vs 8.4e6 + 1.78e7/c → merged for c > ~2.1.
        assert!(!choose(&s, auto(512, 2.0), false)[0].merged);
        assert!(choose(&s, auto(512, 3.0), false)[0].merged);
    }

    #[test]
    fn the_budget_and_mixed_batches_keep_the_branch() {
        let s = [slot(1024, 1024, 16), slot(1024, 1024, 16)];
        // Two resident copies of one 4 MiB layer fit 8 MiB once.
        let c = choose(&s, AdapterStrategy::Auto(load(512, 1e6, 8 << 20)), false);
        assert_eq!((c[0].merged, c[1].merged), (true, false));
        assert!(c[1].reason.contains("budget"), "{}", c[1]);
        let c = choose(&s, AdapterStrategy::Auto(load(512, 1e6, usize::MAX)), true);
        assert!(c.iter().all(|c| !c.merged && c.reason.contains("mixed")));
        assert!(choose(&s, AdapterStrategy::Unmerged, false)
            .iter()
            .all(|c| !c.merged));
    }
}
