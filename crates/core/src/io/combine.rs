//! Weighted combination of adapters: PEFT's `add_weighted_adapter` with
//! `combination_type="cat"` or `"linear"`.
//!
//! With per-module scalings `s_i` and weights `w_i`, in PEFT's layouts
//! (A `r × fan_in…`, B `out × r…`):
//!
//! - `cat` (exact): `A = concat_rows(w_i·s_i·A_i)`, `B = concat_cols(B_i)`,
//!   so `B·A = Σ w_i·s_i·B_i·A_i`; the rank is `Σ r_i` (the config ranks,
//!   rank patterns included, as PEFT sums them), zero-padded where a module
//!   has fewer.
//! - `linear` (PEFT's approximation; all config ranks equal):
//!   `A = Σ sign(w_i·s_i)·√|w_i·s_i|·A_i`, `B = Σ √|w_i·s_i|·B_i` — the
//!   cross terms `B_i·A_j` make it differ from the weighted sum of updates.
//!
//! The result has `lora_alpha = r`, no rank or alpha pattern and no rsLoRA,
//! so its scaling is 1. (PEFT copies `use_rslora` from the first adapter,
//! which would make an rsLoRA combination's scaling √r; we keep 1, the
//! intended value.) DoRA, LoRA biases and saved base biases are refused:
//! PEFT's combination ignores them, which would be a silently different model.

use super::peft::{PeftAdapter, PEFT_PREFIX};
use crate::lora::{BiasMode, TargetModules};
use crate::{Error, Result, Tensor};
use cranelora_kernels::Scalar;
use std::collections::{BTreeMap, BTreeSet};

/// How [`combine_adapters`] combines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combination {
    /// Concatenate the ranks (exact).
    Cat,
    /// Sum square-root-weighted A and B (PEFT's approximation; equal ranks).
    Linear,
}

fn refuse(message: impl Into<String>) -> Error {
    Error::config("combine_adapters", message)
}

/// A module's A and B keys in the file (`lora_A.weight` or `lora_embedding_A`).
fn module_keys(adapter: &PeftAdapter<impl Scalar>) -> Result<BTreeMap<String, (String, String)>> {
    let mut out = BTreeMap::new();
    for key in adapter.tensors.keys() {
        let rest = key.strip_prefix(PEFT_PREFIX).unwrap_or(key);
        let (module, b) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            (m, format!("{PEFT_PREFIX}{m}.lora_B.weight"))
        } else if let Some(m) = rest.strip_suffix(".lora_embedding_A") {
            (m, format!("{PEFT_PREFIX}{m}.lora_embedding_B"))
        } else if rest.ends_with(".lora_B.weight") || rest.ends_with(".lora_embedding_B") {
            continue;
        } else {
            return Err(refuse(format!("tensor `{key}` is not a LoRA A or B (DoRA magnitudes, LoRA biases and base biases cannot be combined)")));
        };
        if !adapter.tensors.contains_key(&b) {
            return Err(refuse(format!("`{key}` has no matching `{b}`")));
        }
        out.insert(module.to_string(), (key.clone(), b));
    }
    Ok(out)
}

/// The largest rank a config gives any module (PEFT sizes the new adapter by it).
fn config_rank(a: &PeftAdapter<impl Scalar>) -> usize {
    a.config
        .rank_pattern
        .iter()
        .map(|(_, r)| *r)
        .fold(a.config.r, usize::max)
}

/// Combines `adapters` with `weights` into one new adapter (see the module docs).
///
/// # Errors
/// [`Error::Config`] for no adapters, a weight count that differs, DoRA,
/// LoRA or base biases, a mix of list and regex `target_modules`, unequal
/// ranks with [`Combination::Linear`], or one module with different shapes
/// in two adapters.
pub fn combine_adapters<T: Scalar>(
    adapters: &[&PeftAdapter<T>],
    weights: &[f64],
    how: Combination,
) -> Result<PeftAdapter<T>> {
    let first = adapters
        .first()
        .ok_or_else(|| refuse("no adapters to combine"))?;
    if weights.len() != adapters.len() {
        return Err(refuse(format!(
            "{} adapters but {} weights",
            adapters.len(),
            weights.len()
        )));
    }
    for a in adapters {
        if a.config.use_dora || a.config.lora_bias || a.config.bias != BiasMode::None {
            return Err(refuse("DoRA, LoRA biases and trained base biases cannot be combined (PEFT would drop them)"));
        }
    }
    let ranks: Vec<usize> = adapters.iter().map(|a| config_rank(a)).collect();
    let new_rank = match how {
        Combination::Cat => ranks.iter().sum(),
        Combination::Linear if ranks.iter().all(|&r| r == ranks[0]) => ranks[0],
        Combination::Linear => {
            return Err(refuse(format!(
                "linear combination needs equal ranks, got {ranks:?}"
            )))
        }
    };
    let keys = adapters
        .iter()
        .map(|a| module_keys(a))
        .collect::<Result<Vec<_>>>()?;
    let modules: BTreeSet<&String> = keys.iter().flat_map(|k| k.keys()).collect();
    let mut tensors = BTreeMap::new();
    for module in modules {
        let mut acc: Option<Pair<T>> = None;
        let mut offset = 0;
        for (i, a) in adapters.iter().enumerate() {
            let Some((ka, kb)) = keys[i].get(module) else {
                continue;
            };
            let ws = weights[i] * a.config.scaling_for(module);
            let (ta, tb) = (&a.tensors[ka], &a.tensors[kb]);
            let pair = acc.get_or_insert_with(|| Pair::zeros(ka, kb, ta, tb, new_rank));
            pair.check(module, ta, tb, offset)?;
            match how {
                Combination::Cat => {
                    pair.add_rows(ta, offset, ws);
                    pair.add_cols(tb, offset, 1.0);
                    offset += ta.shape()[0];
                }
                Combination::Linear => {
                    pair.add_rows(ta, 0, ws.signum() * ws.abs().sqrt());
                    pair.add_cols(tb, 0, ws.abs().sqrt());
                }
            }
        }
        if let Some(p) = acc {
            tensors.insert(p.key_a.clone(), Tensor::from_vec(p.a, &p.shape_a)?);
            tensors.insert(p.key_b.clone(), Tensor::from_vec(p.b, &p.shape_b)?);
        }
    }
    let mut config = first.config.clone();
    config.r = new_rank;
    config.lora_alpha = new_rank as f64;
    config.rank_pattern.clear();
    config.alpha_pattern.clear();
    config.use_rslora = false;
    config.target_modules = union_targets(adapters)?;
    Ok(PeftAdapter { config, tensors })
}

/// PEFT's union: the set of names, or the regexes as `(a)|(b)`.
fn union_targets<T: Scalar>(adapters: &[&PeftAdapter<T>]) -> Result<TargetModules> {
    let mut names = BTreeSet::new();
    let mut regexes = Vec::new();
    for a in adapters {
        match &a.config.target_modules {
            TargetModules::Names(n) => names.extend(n.iter().cloned()),
            TargetModules::Regex(r) => regexes.push(format!("({r})")),
        }
    }
    match (names.is_empty(), regexes.is_empty()) {
        (_, true) => Ok(TargetModules::Names(names.into_iter().collect())),
        (true, false) => Ok(TargetModules::Regex(regexes.join("|"))),
        (false, false) => Err(refuse(
            "target_modules mixes lists and regex strings across adapters",
        )),
    }
}

/// The new A (`new_rank × rest`) and B (`out × new_rank`) of one module, row-major.
struct Pair<T> {
    key_a: String,
    key_b: String,
    shape_a: Vec<usize>,
    shape_b: Vec<usize>,
    a: Vec<T>,
    b: Vec<T>,
}

impl<T: Scalar> Pair<T> {
    fn zeros(ka: &str, kb: &str, ta: &Tensor<T>, tb: &Tensor<T>, rank: usize) -> Self {
        let mut shape_a = ta.shape().to_vec();
        let mut shape_b = tb.shape().to_vec();
        if let Some(r) = shape_a.first_mut() {
            *r = rank;
        }
        if let Some(r) = shape_b.get_mut(1) {
            *r = rank;
        }
        Self {
            key_a: ka.to_string(),
            key_b: kb.to_string(),
            a: vec![T::zero(); shape_a.iter().product()],
            b: vec![T::zero(); shape_b.iter().product()],
            shape_a,
            shape_b,
        }
    }

    /// A must be `r × rest` and B `out × r × 1…` with this module's rest and
    /// out, and rows `offset..offset + r` must fit the new rank.
    fn check(&self, module: &str, ta: &Tensor<T>, tb: &Tensor<T>, offset: usize) -> Result<()> {
        let (sa, sb) = (ta.shape(), tb.shape());
        let ok = sa.len() == self.shape_a.len()
            && sb.len() == self.shape_b.len()
            && sa.len() >= 2
            && sb.len() >= 2
            && sa[1..] == self.shape_a[1..]
            && sb[0] == self.shape_b[0]
            && sb[2..].iter().all(|&d| d == 1)
            && sb[1] == sa[0]
            && offset + sa[0] <= self.shape_a[0];
        if ok {
            Ok(())
        } else {
            Err(refuse(format!(
                "module `{module}`: A {sa:?} and B {sb:?} do not fit the combined A {:?} and B {:?}",
                self.shape_a, self.shape_b
            )))
        }
    }

    /// Adds `scale·ta` into rows `offset..` of A.
    fn add_rows(&mut self, ta: &Tensor<T>, offset: usize, scale: f64) {
        let row: usize = self.shape_a[1..].iter().product();
        let s = T::from_f64_lossy(scale);
        for (i, v) in ta.array().iter().enumerate() {
            self.a[offset * row + i] += s * *v;
        }
    }

    /// Adds `scale·tb` into columns `offset..` of B (as `out × new_rank`).
    fn add_cols(&mut self, tb: &Tensor<T>, offset: usize, scale: f64) {
        let (r, cols) = (tb.shape()[1], self.shape_b[1]);
        let s = T::from_f64_lossy(scale);
        for (i, v) in tb.array().iter().enumerate() {
            let (o, k) = (i / r, i % r);
            self.b[o * cols + offset + k] += s * *v;
        }
    }
}
