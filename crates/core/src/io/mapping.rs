//! Names and layouts of a model's weights in files: ours, PyTorch's and PEFT's.
//!
//! Every weight of a model has one [`Entry`]: our full name (layer path +
//! weight name), the file's name for it and how the file lays it out. Saving
//! converts ours → theirs, loading theirs → ours, with the same entry.
//!
//! | our weight | PyTorch / PEFT name | their shape |
//! |---|---|---|
//! | Dense / FullyConnected `weight` `[in, out]` | `weight` | `[out, in]` |
//! | Conv2d, Embedding, LayerNorm weights, every `bias` | same | same |
//! | adapter `lora_a` `[fan_in, r]` | `lora_A.weight` (`lora_embedding_A`) | `[r, in]`, `[r, C, kh, kw]`, `[r, V]` |
//! | adapter `lora_b` `[r, out]` | `lora_B.weight` (`lora_embedding_B`) | `[out, r]`, `[out, r, 1, 1]`, `[D, r]` |
//! | adapter `lora_bias` `[out]` | `lora_B.bias` | `[out]` |
//! | adapter `lora_magnitude` `[out]` | `lora_magnitude_vector` | `[out]`, conv `[1, out, 1, 1]` |
//! | fused attention `P.in_proj.weight` `[d, 3d]` | `P.in_proj_weight` | `[3d, d]` |
//! | … with LoRA: `P.in_proj.lora_a`, `P.out_proj.*` | `P.lora_A.weight`, `P.base_layer.out_proj.*` | as above |

use crate::layer::{join, visit, Layer};
use crate::lora::{LoraAdapter, LoraGeometry};
use crate::{Result, Tensor};
use cranelora_kernels::Scalar;

/// How weights are named (and laid out) in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Naming {
    /// Our names and layouts: `fc1.weight` is `in × out`, an adapter's
    /// weights are `fc1.lora_a`, `fc1.lora_b`, its base `fc1.base_layer.weight`.
    #[default]
    Native,
    /// A PyTorch `state_dict`: Dense / FullyConnected `weight` is `out × in`;
    /// Conv2d, Embedding and LayerNorm weights as they are; a LoRA adapter's
    /// weights as PEFT names and lays them out in memory (`fc1.lora_A.weight`
    /// `r × in`, …, `fc1.base_layer.weight`), without the adapter name.
    PyTorch,
}

/// How the file lays a weight out relative to ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Identical.
    Same,
    /// Ours is a 2-D `[m, n]`; theirs is its transpose `[n, m]` reshaped to this shape.
    Transpose(Vec<usize>),
    /// Same elements in the same order, reshaped to this shape.
    Reshape(Vec<usize>),
}

/// One weight: our name and shape, the file's name and layout.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub ours: String,
    pub theirs: String,
    pub our_shape: Vec<usize>,
    pub layout: Layout,
    /// The weight belongs to a LoRA adapter (A, B, LoRA bias, magnitude).
    pub lora: bool,
    /// The layer path of the weight's layer.
    pub layer: String,
}

impl Entry {
    /// The shape the file must have.
    pub fn their_shape(&self) -> Vec<usize> {
        match &self.layout {
            Layout::Same => self.our_shape.clone(),
            Layout::Transpose(s) | Layout::Reshape(s) => s.clone(),
        }
    }

    /// Our tensor in the file's layout.
    pub fn to_theirs<T: Scalar>(&self, t: &Tensor<T>) -> Result<Tensor<T>> {
        match &self.layout {
            Layout::Same => Ok(t.clone()),
            Layout::Transpose(s) => t.t()?.reshape(s),
            Layout::Reshape(s) => t.reshape(s),
        }
    }

    /// The file's tensor (already checked to have [`Entry::their_shape`]) in our layout.
    pub fn to_ours<T: Scalar>(&self, t: &Tensor<T>) -> Result<Tensor<T>> {
        match &self.layout {
            Layout::Same => Ok(t.clone()),
            Layout::Transpose(_) => {
                let (m, n) = (self.our_shape[0], self.our_shape[1]);
                t.reshape(&[n, m])?.t()
            }
            Layout::Reshape(_) => t.reshape(&self.our_shape),
        }
    }
}

/// The entries of every weight of `model`, layers parents first.
pub(crate) fn entries<T: Scalar>(model: &dyn Layer<T>, naming: Naming) -> Vec<Entry> {
    let mut out = layer_entries(model, naming);
    if naming == Naming::PyTorch {
        rename_fused_attention(model, &mut out);
    }
    out
}

/// PyTorch's `nn.MultiheadAttention` names for a fused attention at `P`:
/// `P.in_proj.weight` is `P.in_proj_weight` (and `_bias`); with LoRA on the
/// in-projection PEFT wraps the attention module itself, so the adapter is
/// `P.lora_A.weight` / `P.lora_B.weight`, the base `P.base_layer.in_proj_weight`,
/// and the output projection lives under `P.base_layer.out_proj`.
fn rename_fused_attention<T: Scalar>(model: &dyn Layer<T>, entries: &mut [Entry]) {
    let mut fused = Vec::new();
    visit(model, &mut |path, layer| {
        if layer.kind() == "MultiHeadAttention" {
            if let Ok(in_proj) = layer.child("in_proj") {
                fused.push((path.to_string(), in_proj.as_lora_adapter().is_some()));
            }
        }
    });
    for (p, adapted) in fused {
        let (in_prefix, out_prefix) = (join(&p, "in_proj."), join(&p, "out_proj."));
        for e in entries.iter_mut() {
            if let Some(rest) = e.theirs.strip_prefix(&in_prefix) {
                e.theirs = match (adapted, rest.strip_prefix("base_layer.")) {
                    (true, Some(w)) => join(&p, &format!("base_layer.in_proj_{w}")),
                    (true, None) => join(&p, rest),
                    (false, _) => join(&p, &format!("in_proj_{rest}")),
                };
            } else if let Some(rest) = e.theirs.strip_prefix(&out_prefix).filter(|_| adapted) {
                e.theirs = join(&p, &format!("base_layer.out_proj.{rest}"));
            }
        }
    }
}

/// The entries of every weight of `model` before renames, layers parents first.
fn layer_entries<T: Scalar>(model: &dyn Layer<T>, naming: Naming) -> Vec<Entry> {
    let mut out = Vec::new();
    visit(model, &mut |path, layer| {
        let adapter = layer.as_lora_adapter();
        let linear = matches!(
            layer.as_lora_target().map(|t| t.lora_geometry()),
            Some(LoraGeometry::Linear { .. })
        );
        for w in layer.weights() {
            let shape = w.value().shape().to_vec();
            let ours = join(path, w.name());
            let (theirs, layout, lora) = match (naming, adapter) {
                (Naming::Native, _) => (ours.clone(), Layout::Same, adapter.is_some()),
                (Naming::PyTorch, Some(a)) => {
                    let (suffix, layout) = lora_entry(a, w.name(), &shape);
                    (join(path, &suffix), layout, true)
                }
                (Naming::PyTorch, None) if linear && w.name() == "weight" && shape.len() == 2 => (
                    ours.clone(),
                    Layout::Transpose(vec![shape[1], shape[0]]),
                    false,
                ),
                (Naming::PyTorch, None) => (ours.clone(), Layout::Same, false),
            };
            out.push(Entry {
                ours,
                theirs,
                our_shape: shape,
                layout,
                lora,
                layer: path.to_string(),
            });
        }
    });
    out
}

/// PEFT's name (relative to the adapted module) and layout of an adapter's own weight.
fn lora_entry<T: Scalar>(a: &LoraAdapter<T>, name: &str, shape: &[usize]) -> (String, Layout) {
    let g = a.lora_layer().geometry();
    let r = a.rank();
    let out = g.fan_out();
    let embedding = matches!(g, LoraGeometry::Embedding { .. });
    match (name, g) {
        (
            "lora_a",
            LoraGeometry::Conv2d {
                in_channels,
                kernel,
                ..
            },
        ) => (
            "lora_A.weight".into(),
            Layout::Transpose(vec![r, in_channels, kernel.0, kernel.1]),
        ),
        ("lora_a", _) if embedding => (
            "lora_embedding_A".into(),
            Layout::Transpose(vec![r, g.fan_in()]),
        ),
        ("lora_a", _) => (
            "lora_A.weight".into(),
            Layout::Transpose(vec![r, g.fan_in()]),
        ),
        ("lora_b", LoraGeometry::Conv2d { .. }) => (
            "lora_B.weight".into(),
            Layout::Transpose(vec![out, r, 1, 1]),
        ),
        ("lora_b", _) if embedding => ("lora_embedding_B".into(), Layout::Transpose(vec![out, r])),
        ("lora_b", _) => ("lora_B.weight".into(), Layout::Transpose(vec![out, r])),
        ("lora_bias", _) => ("lora_B.bias".into(), Layout::Same),
        ("lora_magnitude", LoraGeometry::Conv2d { .. }) => (
            "lora_magnitude_vector".into(),
            Layout::Reshape(vec![1, out, 1, 1]),
        ),
        ("lora_magnitude", _) => ("lora_magnitude_vector".into(), Layout::Same),
        // A weight this mapping does not know keeps our name and layout.
        (other, _) => (other.to_string(), Layout::Reshape(shape.to_vec())),
    }
}

/// Every weight of `model` under `naming`'s names and layouts (layers parents first).
///
/// # Errors
/// Only on an internal layout inconsistency (shapes come from the model).
pub fn named_tensors<T: Scalar>(
    model: &dyn Layer<T>,
    naming: Naming,
) -> Result<Vec<(String, Tensor<T>)>> {
    let values: std::collections::HashMap<String, Tensor<T>> =
        model.named_weights().into_iter().collect();
    entries(model, naming)
        .into_iter()
        .map(|e| {
            let v = values
                .get(&e.ours)
                .expect("internal: entries and named_weights list the same weights");
            Ok((e.theirs.clone(), e.to_theirs(v)?))
        })
        .collect()
}
