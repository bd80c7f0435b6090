//! Adapter weights and how they become the Parameters of a serving graph.
//!
//! A compiled serving model has, per adapted layer `P` (a [`LayerSlot`]),
//! the Parameters `P.lora_a` `[fan_in, R]`, `P.lora_b` `[R, fan_out]`, and
//! where the slot has them `P.lora_bias` `[fan_out]` and
//! `P.lora_dora_scale` `[fan_out]`. [`bind_layers`] turns an [`Adapter`]
//! (any rank `r ≤ R`, any scaling) into those values, once per bind:
//!
//! - rank padding: `A` fills the first `r` columns of `P.lora_a`, the other
//!   columns are zero; `s·B` fills the first `r` rows of `P.lora_b`. The
//!   padded product `x·A_pad·B_pad = s·x·A·B` exactly (the extra terms are
//!   zeros), so adapters of every rank run on one compiled function.
//! - scaling: folded into `B` (the serving graph is exported with scaling 1).
//! - DoRA: `m / ‖W̃ + s·A·B‖` per output feature, computed here once, in f64;
//!   a plain adapter on a DoRA slot gets the scale 1.
//! - a layer the adapter does not adapt gets zeros (no delta).

use crate::{Bindings, Error, Result};
use cranelora_graph::{DType, TensorData};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One adapted layer of a compiled serving model.
#[derive(Clone, Debug)]
pub struct LayerSlot {
    /// The adapter's layer path `P` (Parameters are `P.lora_a`, …).
    pub path: String,
    /// Rows of A (`in_features`, or C·kh·kw for a convolution).
    pub fan_in: usize,
    /// Columns of B.
    pub fan_out: usize,
    /// The compiled rank R: adapters of rank `r ≤ R` are zero-padded.
    pub rank: usize,
    /// The float dtype of the model.
    pub dtype: DType,
    /// Whether the graph has `P.lora_bias`.
    pub bias: bool,
    /// The base weight W̃ (`fan_in × fan_out`) when the graph has
    /// `P.lora_dora_scale` (DoRA layers); `None` otherwise.
    pub dora_base: Option<Arc<TensorData>>,
    /// The base weight W `[fan_in, fan_out]` when the compiler merged the
    /// layer ([`super::AdapterStrategy`], set by
    /// [`AdapterServer::new`](super::AdapterServer::new)): the graph reads
    /// `P.base_layer.weight` as a Parameter, bound to `W + s·A·B`, and has
    /// no branch.
    pub merged_base: Option<Arc<TensorData>>,
}

impl LayerSlot {
    /// `P.<suffix>`.
    pub fn param(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.path)
    }

    /// The base weight's Parameter of a merged slot, `P.base_layer.weight`.
    pub fn base_param(&self) -> String {
        self.param("base_layer.weight")
    }
}

/// One layer's adapter weights: A `[fan_in, r]`, B `[r, fan_out]`, the
/// scaling s (α/r or α/√r), the LoRA bias `[fan_out]` and the DoRA
/// magnitude `[fan_out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerAdapter {
    /// A, `[fan_in, r]`.
    pub a: TensorData,
    /// B, `[r, fan_out]`.
    pub b: TensorData,
    /// s.
    pub scaling: f64,
    /// The LoRA bias, added after the scaled product.
    pub bias: Option<TensorData>,
    /// DoRA's magnitude m.
    pub magnitude: Option<TensorData>,
}

/// An adapter: layer path → its weights.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Adapter {
    /// The adapted layers.
    pub layers: BTreeMap<String, LayerAdapter>,
}

/// The values of one layer's Parameters (see the module docs), as f64
/// row-major vectors: A padded, s·B padded, bias, DoRA scale.
#[derive(Clone, Debug)]
pub(crate) struct LayerValues {
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub bias: Option<Vec<f64>>,
    pub dora_scale: Option<Vec<f64>>,
}

fn err(name: &str, reason: String) -> Error {
    Error::Adapter {
        adapter: name.to_string(),
        reason,
    }
}

/// `slot`'s values for `layer` (`None`: the layer is not adapted).
pub(crate) fn layer_values(
    name: &str,
    slot: &LayerSlot,
    layer: Option<&LayerAdapter>,
) -> Result<LayerValues> {
    let (fi, fo, rr) = (slot.fan_in, slot.fan_out, slot.rank);
    let (mut a, mut b) = (vec![0.0; fi * rr], vec![0.0; rr * fo]);
    let Some(l) = layer else {
        return Ok(LayerValues {
            a,
            b,
            bias: slot.bias.then(|| vec![0.0; fo]),
            dora_scale: slot.dora_base.as_ref().map(|_| vec![1.0; fo]),
        });
    };
    let p = &slot.path;
    let (ad, bd) = (l.a.shape(), l.b.shape());
    let r = match (ad.dims(), bd.dims()) {
        (&[i, r], &[r2, o]) if i == fi && o == fo && r == r2 => r,
        _ => {
            let want = format!("A [{fi}, r] and B [r, {fo}]");
            return Err(err(name, format!("layer `{p}`: {want}, got {ad} and {bd}")));
        }
    };
    if r > rr {
        let why = format!("layer `{p}` has rank {r}, above the compiled maximum {rr}");
        return Err(err(name, why));
    }
    for t in [
        Some(&l.a),
        Some(&l.b),
        l.bias.as_ref(),
        l.magnitude.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if t.dtype() != slot.dtype {
            let why = format!(
                "layer `{p}`: {} weights in a {} model",
                t.dtype(),
                slot.dtype
            );
            return Err(err(name, why));
        }
    }
    let (av, bv) = (l.a.to_f64_vec(), l.b.to_f64_vec());
    for i in 0..fi {
        a[i * rr..i * rr + r].copy_from_slice(&av[i * r..(i + 1) * r]);
    }
    for (k, row) in bv.chunks(fo).enumerate() {
        for (dst, &v) in b[k * fo..(k + 1) * fo].iter_mut().zip(row) {
            *dst = l.scaling * v;
        }
    }
    let bias = vector(name, p, "LoRA bias", l.bias.as_ref(), fo, slot.bias)?;
    let bias = slot.bias.then(|| bias.unwrap_or_else(|| vec![0.0; fo]));
    let m = vector(
        name,
        p,
        "DoRA magnitude",
        l.magnitude.as_ref(),
        fo,
        slot.dora_base.is_some(),
    )?;
    let dora_scale = match (&slot.dora_base, m) {
        (None, _) => None,
        (Some(_), None) => Some(vec![1.0; fo]),
        (Some(w), Some(m)) => Some(dora_scale(w, &a, &b, &m, rr)),
    };
    Ok(LayerValues {
        a,
        b,
        bias,
        dora_scale,
    })
}

/// A `[n]` vector of the adapter, if present and allowed by the slot.
fn vector(
    name: &str,
    path: &str,
    what: &str,
    t: Option<&TensorData>,
    n: usize,
    allowed: bool,
) -> Result<Option<Vec<f64>>> {
    let Some(t) = t else { return Ok(None) };
    if !allowed {
        let why = format!("layer `{path}` has a {what}, which the compiled model has no slot for (compile with it enabled)");
        return Err(err(name, why));
    }
    if t.shape().dims() != [n] {
        let why = format!("layer `{path}`: {what} must be [{n}], got {}", t.shape());
        return Err(err(name, why));
    }
    Ok(Some(t.to_f64_vec()))
}

/// `W̃ + A_pad·(s·B)_pad` (`fan_in × fan_out`, row-major), in f64.
fn merge(w: &TensorData, a: &[f64], sb: &[f64], r: usize) -> Vec<f64> {
    let fo = sb.len() / r.max(1);
    let mut v = w.to_f64_vec();
    for (i, row) in v.chunks_mut(fo).enumerate() {
        for k in 0..r {
            let aik = a[i * r + k];
            if aik != 0.0 {
                for (o, &bv) in row.iter_mut().zip(&sb[k * fo..(k + 1) * fo]) {
                    *o += aik * bv;
                }
            }
        }
    }
    v
}

/// `m / ‖W̃ + A_pad·(s·B)_pad‖` per column (DoRA's scale, PEFT's norm).
fn dora_scale(w: &TensorData, a: &[f64], sb: &[f64], m: &[f64], r: usize) -> Vec<f64> {
    let fo = m.len();
    let v = merge(w, a, sb, r);
    let mut sq = vec![0.0; fo];
    for row in v.chunks(fo) {
        for (s, &x) in sq.iter_mut().zip(row) {
            *s += x * x;
        }
    }
    m.iter().zip(sq).map(|(&m, s)| m / s.sqrt()).collect()
}

/// A tensor of `dtype` from f64 values.
pub(crate) fn tensor(shape: &[usize], v: Vec<f64>, dtype: DType) -> TensorData {
    let t = match dtype {
        DType::F32 => TensorData::f32(shape, v.into_iter().map(|x| x as f32).collect()),
        _ => TensorData::f64(shape, v),
    };
    t.expect("internal: the value count matches the shape")
}

/// The single-adapter Parameters of every slot for `adapter` (module docs).
///
/// # Errors
/// [`Error::Adapter`] naming the layer: a layer the model does not adapt,
/// wrong shapes or dtype, a rank above R, a bias or magnitude without a slot.
pub fn bind_layers(name: &str, slots: &[LayerSlot], adapter: &Adapter) -> Result<Bindings> {
    bindings_of(slots, &adapter_values(name, slots, adapter)?, |_| false)
}

/// Every slot's values for `adapter` (errors as [`bind_layers`]).
pub(crate) fn adapter_values(
    name: &str,
    slots: &[LayerSlot],
    adapter: &Adapter,
) -> Result<Vec<LayerValues>> {
    check_paths(name, slots, adapter)?;
    slots
        .iter()
        .map(|s| layer_values(name, s, adapter.layers.get(&s.path)))
        .collect()
}

/// The single-adapter Parameters from every slot's values: `W + A·(s·B)`
/// for a merged slot (and its LoRA bias), A, s·B, bias, DoRA scale otherwise.
/// A 2-D weight whose Parameter name `packed` accepts (the compiled
/// products read it as their right operand: a merged weight, the `x·A` of
/// an unmerged branch, the `xa·B` of a branch outside an epilogue) is bound
/// with its GEMM-packed copy ([`Bindings::insert_packed`]), so calls do
/// not repack it: packing is bind-time work, like the padding.
pub(crate) fn bindings_of(
    slots: &[LayerSlot],
    values: &[LayerValues],
    packed: impl Fn(&str) -> bool,
) -> Result<Bindings> {
    let mut out = Bindings::new();
    let put = |out: &mut Bindings, name: String, value: TensorData| match packed(&name) {
        true => out.insert_packed(name, value),
        false => out.insert(name, value),
    };
    for (s, v) in slots.iter().zip(values) {
        let (d, fo) = (s.dtype, s.fan_out);
        if let Some(b) = &v.bias {
            out.insert(s.param("lora_bias"), tensor(&[fo], b.clone(), d))?;
        }
        if let Some(w) = &s.merged_base {
            let merged = tensor(&[s.fan_in, fo], merge(w, &v.a, &v.b, s.rank), d);
            put(&mut out, s.base_param(), merged)?;
            continue;
        }
        let a = tensor(&[s.fan_in, s.rank], v.a.clone(), d);
        put(&mut out, s.param("lora_a"), a)?;
        put(
            &mut out,
            s.param("lora_b"),
            tensor(&[s.rank, fo], v.b.clone(), d),
        )?;
        if let Some(c) = &v.dora_scale {
            out.insert(s.param("lora_dora_scale"), tensor(&[fo], c.clone(), d))?;
        }
    }
    Ok(out)
}

/// Every adapted layer of `adapter` is a slot of the model.
pub(crate) fn check_paths(name: &str, slots: &[LayerSlot], adapter: &Adapter) -> Result<()> {
    for p in adapter.layers.keys() {
        if !slots.iter().any(|s| &s.path == p) {
            let known: Vec<&str> = slots.iter().map(|s| s.path.as_str()).collect();
            let why = format!(
                "layer `{p}` is not an adapted layer of the compiled model (those are {known:?})"
            );
            return Err(err(name, why));
        }
    }
    Ok(())
}
