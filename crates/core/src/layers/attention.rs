//! MultiHeadAttention: scaled dot-product attention over `h` heads, with the
//! four projections as replaceable children.
//!
//! Shapes: the input `x` is `[batch, seq, d]`. For self-attention the keys
//! and values come from `x` too; a second float input `[batch, seq_k, d]`
//! makes it cross-attention (keys and values from that source). The output
//! is `[batch, seq, d]`. With `dh = d / h`, per batch entry and head:
//!
//! ```text
//! Q = query(x), K = key(src), V = value(src)          (each split into h heads of dh)
//! A = softmax(Q·Kᵀ/√dh + M)                              [seq, seq_k]
//! y = output(concat_heads(A·V))
//! ```
//!
//! `M` is `−∞` where attention is not allowed: above the diagonal when
//! `causal` (key `j` is hidden from query `i` when `j > i`, top-left
//! aligned as PyTorch's `is_causal`), and at keys the padding mask (an
//! [`Input::Mask`] of shape `[batch, seq_k]`, `true` = attend) hides. A query
//! row whose keys are *all* hidden has all-zero attention weights instead of
//! NaN, so its context vector is zero and its output is the output
//! projection applied to zero (the output bias).
//!
//! The projections are the children `query`, `key`, `value` and `output`,
//! built as [`Dense`] layers (`d × d`, with bias, no activation); the layer
//! uses them only through [`Layer::forward`] and [`Layer::backward`], so a
//! LoRA adapter can replace any of them by path. The layer has no weights
//! of its own. Its graph export lives in `attention_export.rs`.
//!
//! [`MultiHeadAttention::fused`] builds PyTorch's `nn.MultiheadAttention`
//! layout instead: one child `in_proj` (`d × 3d`, PyTorch's
//! `in_proj_weight`/`in_proj_bias`) whose output splits into Q, K and V, and
//! `out_proj`. One LoRA adapter on `in_proj` then has the single A shared by
//! Q, K and V that PEFT trains for `nn.MultiheadAttention` (its gradient
//! sums over the three). The fused form is self-attention only.

use super::Dense;
use crate::export::{ExportContext, NodeInput};
use crate::layer::{Input, Inputs, Layer};
use crate::{Activation, Error, Mask, Result, Rng, Tensor};
use cranelora_graph::NodeId;
use cranelora_kernels::math::reduce;
use cranelora_kernels::Scalar;

const KIND: &str = "MultiHeadAttention";
/// The children's names, in declaration order.
const CHILDREN: [&str; 4] = ["query", "key", "value", "output"];

/// What `backward` needs: the per-head projections and the attention weights.
#[derive(Clone, Debug)]
struct Cache<T> {
    /// Queries, keys and values split into heads: `[batch, h, seq(_k), dh]`.
    q: Tensor<T>,
    k: Tensor<T>,
    v: Tensor<T>,
    /// Attention weights `[batch, h, seq, seq_k]` (zero where masked).
    probs: Tensor<T>,
    /// Whether keys and values came from a second input.
    cross: bool,
}

/// How the queries, keys and values are projected.
#[derive(Debug)]
enum Proj<T> {
    /// Children `query`, `key`, `value`, each `d × d`.
    Separate([Box<dyn Layer<T>>; 3]),
    /// One child `in_proj`, `d × 3d`, split into Q, K, V (PyTorch's layout).
    Fused(Box<dyn Layer<T>>),
}

/// Multi-head scaled dot-product attention (self- or cross-attention).
#[derive(Debug)]
pub struct MultiHeadAttention<T> {
    embed_dim: usize,
    num_heads: usize,
    causal: bool,
    proj: Proj<T>,
    output: Box<dyn Layer<T>>,
    training: bool,
    cache: Option<Cache<T>>,
    /// ∂L/∂(key/value source) of the last cross-attention backward.
    source_grad: Option<Tensor<T>>,
}

// By hand: the derive would ask for `T: Clone`, but cloning the boxed children needs `T: Scalar`.
impl<T: Scalar> Clone for MultiHeadAttention<T> {
    fn clone(&self) -> Self {
        let proj = match &self.proj {
            Proj::Separate(p) => Proj::Separate(p.clone()),
            Proj::Fused(p) => Proj::Fused(p.clone()),
        };
        Self {
            proj,
            output: self.output.clone(),
            cache: self.cache.clone(),
            source_grad: self.source_grad.clone(),
            ..*self
        }
    }
}

impl<T: Scalar> MultiHeadAttention<T> {
    /// Attention over `embed_dim = d` features in `num_heads` heads, not
    /// causal, with the four `d × d` projections initialized as PyTorch's
    /// `nn.Linear`.
    ///
    /// # Errors
    /// [`Error::Config`] if a size is zero or `num_heads` does not divide `embed_dim`.
    pub fn new(embed_dim: usize, num_heads: usize, rng: &mut Rng) -> Result<Self> {
        if embed_dim == 0 || num_heads == 0 || !embed_dim.is_multiple_of(num_heads) {
            return Err(Error::config(
                KIND,
                format!("num_heads {num_heads} must be positive and divide embed_dim {embed_dim}"),
            ));
        }
        let d = embed_dim;
        let mut proj = || -> Result<Box<dyn Layer<T>>> {
            Ok(Box::new(Dense::new(d, d, true, Activation::Identity, rng)?))
        };
        Ok(Self {
            embed_dim,
            num_heads,
            causal: false,
            proj: Proj::Separate([proj()?, proj()?, proj()?]),
            output: proj()?,
            training: true,
            cache: None,
            source_grad: None,
        })
    }

    /// PyTorch's `nn.MultiheadAttention` layout: children `in_proj`
    /// (`d × 3d`, whose output columns are Q, K, V in that order) and
    /// `out_proj` (`d × d`), initialized as `nn.Linear`. Self-attention only.
    ///
    /// # Errors
    /// As [`MultiHeadAttention::new`].
    pub fn fused(embed_dim: usize, num_heads: usize, rng: &mut Rng) -> Result<Self> {
        let mut mha = Self::new(embed_dim, num_heads, rng)?;
        let d = embed_dim;
        mha.proj = Proj::Fused(Box::new(Dense::new(
            d,
            3 * d,
            true,
            Activation::Identity,
            rng,
        )?));
        Ok(mha)
    }

    /// Whether the projections are the fused `in_proj` / `out_proj` pair.
    pub fn is_fused(&self) -> bool {
        matches!(self.proj, Proj::Fused(_))
    }

    /// The name of the output projection child: `output`, or `out_proj` when fused.
    pub fn output_name(&self) -> &'static str {
        if self.is_fused() {
            "out_proj"
        } else {
            "output"
        }
    }

    /// Switches causal masking on or off.
    pub fn set_causal(&mut self, causal: bool) {
        self.causal = causal;
    }

    /// Whether query `i` is kept from seeing keys `j > i`.
    pub fn causal(&self) -> bool {
        self.causal
    }

    /// The model width `d`.
    pub fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    /// The number of heads `h`.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// The width of one head, `d / h`.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// `1/√dh`, the scale of the scores.
    fn scale(&self) -> T {
        T::from_f64_lossy(1.0 / (self.head_dim() as f64).sqrt())
    }

    /// ∂L/∂(key/value source), `[batch, seq_k, d]`, of the last backward of a
    /// cross-attention call ([`Layer::backward`] returns only the gradient
    /// of the first float input, the queries' source).
    pub fn take_source_gradient(&mut self) -> Option<Tensor<T>> {
        self.source_grad.take()
    }

    /// `seq` of a `[batch, seq, d]` input, checked (and its batch against `batch`).
    fn check_input(&self, what: &str, x: &Tensor<T>, batch: Option<usize>) -> Result<usize> {
        let d = self.embed_dim;
        match x.shape() {
            &[b, s, last] if last == d && batch.is_none_or(|batch| batch == b) => Ok(s),
            shape => {
                let b = batch.map_or("batch".to_string(), |b| b.to_string());
                Err(Error::shape(KIND, what, format!("[{b}, seq, {d}]"), shape))
            }
        }
    }

    /// Whether query `i` of batch entry `b` may attend to key `j`.
    fn keep<'m>(&self, mask: Option<&'m Mask>) -> impl Fn(usize, usize, usize) -> bool + 'm {
        let causal = self.causal;
        move |b, i, j| (!causal || j <= i) && mask.is_none_or(|m| m.array()[[b, j]])
    }

    /// Runs the three input projections and the masked softmax; the cache
    /// holds everything the context `P·V` and the backward pass need.
    fn attend(
        &mut self,
        x: &Tensor<T>,
        src: Option<&Tensor<T>>,
        mask: Option<&Mask>,
    ) -> Result<Cache<T>> {
        let (h, cross, src) = (self.num_heads, src.is_some(), src.unwrap_or(x));
        let [q, k, v] = match &mut self.proj {
            Proj::Separate([query, key, value]) => [
                project(query, "query", x)?,
                project(key, "key", src)?,
                project(value, "value", src)?,
            ],
            Proj::Fused(_) if cross => {
                let msg = "the fused (in_proj) form is self-attention only: one float input";
                return Err(Error::config(KIND, msg));
            }
            Proj::Fused(in_proj) => split_qkv(&project_fused(in_proj, x)?)?,
        };
        let (q, k, v) = (
            split_heads(&q, h)?,
            split_heads(&k, h)?,
            split_heads(&v, h)?,
        );
        let mut probs = q.matmul(&k.t()?)?.scale(self.scale()).into_contiguous();
        masked_softmax(&mut probs, h, x.shape()[1], self.keep(mask));
        Ok(Cache {
            q,
            k,
            v,
            probs,
            cross,
        })
    }
}

/// `child(x)` for a `[b, s, d]` input, its error prefixed with `name` and its
/// output checked to be `[b, s, d]` as well.
fn project<T: Scalar>(
    child: &mut Box<dyn Layer<T>>,
    name: &str,
    x: &Tensor<T>,
) -> Result<Tensor<T>> {
    let y = child.forward(&[Input::Float(x)]).map_err(|e| e.at(name))?;
    if y.shape() != x.shape() {
        let (what, e) = (format!("{name} output"), format!("{:?}", x.shape()));
        return Err(Error::shape(KIND, &what, e, y.shape()));
    }
    Ok(y)
}

/// `in_proj(x)` for a `[b, s, d]` input, checked to be `[b, s, 3d]`.
fn project_fused<T: Scalar>(in_proj: &mut Box<dyn Layer<T>>, x: &Tensor<T>) -> Result<Tensor<T>> {
    let y = in_proj
        .forward(&[Input::Float(x)])
        .map_err(|e| e.at("in_proj"))?;
    let s = x.shape();
    if y.shape() != [s[0], s[1], 3 * s[2]] {
        let expected = format!("[{}, {}, {}]", s[0], s[1], 3 * s[2]);
        return Err(Error::shape(KIND, "in_proj output", expected, y.shape()));
    }
    Ok(y)
}

/// `[b, s, 3d]` → Q, K, V, each `[b, s, d]` (consecutive column blocks).
fn split_qkv<T: Scalar>(qkv: &Tensor<T>) -> Result<[Tensor<T>; 3]> {
    let d = qkv.shape()[2] / 3;
    let part = |i: usize| {
        let block = qkv
            .array()
            .slice_axis(ndarray::Axis(2), (i * d..(i + 1) * d).into());
        Tensor::from_array(block.as_standard_layout().into_owned())
    };
    Ok([part(0), part(1), part(2)])
}

/// `child.backward(g)`, which must return an input gradient.
fn project_back<T: Scalar>(
    child: &mut Box<dyn Layer<T>>,
    name: &str,
    g: &Tensor<T>,
) -> Result<Tensor<T>> {
    let no_grad = || Error::config(KIND, format!("child `{name}` gave no input gradient"));
    child
        .backward(g)
        .map_err(|e| e.at(name))?
        .ok_or_else(no_grad)
}

/// `[b, s, h·dh]` → `[b, h, s, dh]`.
fn split_heads<T: Scalar>(t: &Tensor<T>, h: usize) -> Result<Tensor<T>> {
    let s = t.shape();
    t.reshape(&[s[0], s[1], h, s[2] / h])?
        .transpose(&[0, 2, 1, 3])
}

/// `[b, h, s, dh]` → `[b, s, h·dh]`.
fn merge_heads<T: Scalar>(t: &Tensor<T>) -> Result<Tensor<T>> {
    let s = t.shape();
    t.transpose(&[0, 2, 1, 3])?
        .reshape(&[s[0], s[2], s[1] * s[3]])
}

/// Row-wise softmax of `[b, h, sq, sk]` scores over the kept keys, in place.
/// Hidden entries become 0; a row with no kept key becomes all zeros.
fn masked_softmax<T: Scalar>(
    scores: &mut Tensor<T>,
    h: usize,
    sq: usize,
    keep: impl Fn(usize, usize, usize) -> bool,
) {
    let sk = scores.shape()[3];
    let data = scores
        .as_slice_mut()
        .expect("internal: scores are contiguous");
    for (r, row) in data.chunks_mut(sk.max(1)).enumerate() {
        let (b, i) = (r / (h * sq), r % sq);
        for (_, v) in row.iter_mut().enumerate().filter(|&(j, _)| !keep(b, i, j)) {
            *v = T::neg_infinity();
        }
        // NaN-propagating, so a row of NaN scores stays NaN.
        if reduce::max(row) == T::neg_infinity() {
            row.fill(T::zero());
            continue;
        }
        // The kernels' row softmax: x − max keeps every exponent ≤ 0 (no
        // overflow), exp(−∞) = 0 for the hidden keys; vector passes for
        // max, exp, sum and the division by the sum.
        reduce::softmax(row);
    }
}

/// ∂L/∂scores from ∂L/∂probs through a row softmax: `p ⊙ (dp − Σⱼ p⊙dp)`.
/// Hidden entries (p = 0) and fully hidden rows get zero.
fn softmax_backward<T: Scalar>(probs: &Tensor<T>, dprobs: &Tensor<T>) -> Tensor<T> {
    let sk = probs.shape()[3].max(1);
    let mut ds = dprobs.clone().into_contiguous();
    let p = probs.as_slice().expect("internal: probs are contiguous");
    let g = ds.as_slice_mut().expect("internal: contiguous");
    for (gr, pr) in g.chunks_mut(sk).zip(p.chunks(sk)) {
        let dot = gr.iter().zip(pr).map(|(&a, &b)| a * b).sum::<T>();
        gr.iter_mut()
            .zip(pr)
            .for_each(|(gv, &pv)| *gv = pv * (*gv - dot));
    }
    ds
}

/// ∂L/∂(Q, K, V) per head from ∂L/∂context per head `[b, h, sq, dh]`.
fn attention_backward<T: Scalar>(
    c: &Cache<T>,
    dctx: &Tensor<T>,
    scale: T,
) -> Result<[Tensor<T>; 3]> {
    // ctx = P·V  ⇒  ∂P = ∂ctx·Vᵀ, ∂V = Pᵀ·∂ctx
    let dprobs = dctx.matmul(&c.v.t()?)?;
    let dv = c.probs.t()?.matmul(dctx)?;
    // scores = Q·Kᵀ·scale  ⇒  ∂Q = ∂S·K·scale, ∂K = ∂Sᵀ·Q·scale
    let ds = softmax_backward(&c.probs, &dprobs).scale(scale);
    let dq = ds.matmul(&c.k)?;
    let dk = ds.t()?.matmul(&c.q)?;
    Ok([dq, dk, dv])
}

impl<T: Scalar> Layer<T> for MultiHeadAttention<T> {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        // A failed call must not leave an older cache behind: the children have moved on.
        self.reset_own_state();
        let inp = Inputs::new(inputs, KIND);
        let x = inp.float(0)?;
        self.check_input("input", x, None)?;
        let batch = x.shape()[0];
        let source = inp.float(1).ok();
        let sk = self.check_input("key/value input", source.unwrap_or(x), Some(batch))?;
        let mask = inp.mask();
        if let Some(m) = mask.filter(|m| m.shape() != [batch, sk]) {
            let expected = format!("[{batch}, {sk}] (batch, keys)");
            return Err(Error::shape(KIND, "mask", expected, m.shape()));
        }
        let cache = self.attend(x, source, mask)?;
        let ctx = merge_heads(&cache.probs.matmul(&cache.v)?)?;
        let name = self.output_name();
        let y = project(&mut self.output, name, &ctx)?;
        self.cache = self.training.then_some(cache);
        Ok(y)
    }

    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        let cache = self.cache.as_ref().ok_or_else(|| Error::NoForwardCache {
            path: String::new(),
            kind: KIND.into(),
        })?;
        let s = cache.q.shape();
        let expected = [s[0], s[2], self.embed_dim];
        if grad_output.shape() != expected {
            let (what, e) = ("output gradient", format!("{expected:?}"));
            return Err(Error::shape(KIND, what, e, grad_output.shape()));
        }
        let name = self.output_name();
        let dctx = project_back(&mut self.output, name, grad_output)?;
        let dctx = split_heads(&dctx, self.num_heads)?;
        let [dq, dk, dv] = attention_backward(cache, &dctx, self.scale())?;
        let [dq, dk, dv] = [merge_heads(&dq)?, merge_heads(&dk)?, merge_heads(&dv)?];
        let [query, key, value] = match &mut self.proj {
            Proj::Separate(p) => p,
            Proj::Fused(in_proj) => {
                // [Q | K | V] = x·W_in: the column blocks' gradients side by side.
                let views = [dq.array().view(), dk.array().view(), dv.array().view()];
                let dqkv = ndarray::concatenate(ndarray::Axis(2), &views)
                    .map_err(|e| Error::config(KIND, format!("internal: {e}")))?;
                return project_back(in_proj, "in_proj", &Tensor::from_array(dqkv)).map(Some);
            }
        };
        let dx = project_back(query, "query", &dq)?;
        let dk = project_back(key, "key", &dk)?;
        let dsrc = dk.add(&project_back(value, "value", &dv)?)?;
        if cache.cross {
            self.source_grad = Some(dsrc);
            Ok(Some(dx))
        } else {
            // Q, K and V all read x: their input gradients add up.
            dx.add(&dsrc).map(Some)
        }
    }

    fn children(&self) -> Vec<(&str, &dyn Layer<T>)> {
        match &self.proj {
            Proj::Separate([q, k, v]) => {
                let p = [q, k, v, &self.output];
                CHILDREN.into_iter().zip(p.map(|c| c.as_ref())).collect()
            }
            Proj::Fused(in_proj) => vec![
                ("in_proj", in_proj.as_ref()),
                ("out_proj", self.output.as_ref()),
            ],
        }
    }

    fn children_mut(&mut self) -> Vec<(&str, &mut Box<dyn Layer<T>>)> {
        match &mut self.proj {
            Proj::Separate([q, k, v]) => CHILDREN
                .into_iter()
                .zip([q, k, v, &mut self.output])
                .collect(),
            Proj::Fused(in_proj) => vec![("in_proj", in_proj), ("out_proj", &mut self.output)],
        }
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn set_own_training(&mut self, training: bool) {
        self.training = training;
        if !training {
            self.reset_own_state();
        }
    }

    fn reset_own_state(&mut self) {
        self.cache = None;
        self.source_grad = None;
    }

    fn clone_box(&self) -> Box<dyn Layer<T>> {
        Box::new(self.clone())
    }

    fn supports_jit(&self) -> bool {
        let own = super::attention_export::own_ops_lowerable();
        own && self.children().iter().all(|(_, c)| c.supports_jit())
    }

    /// See `attention_export.rs`: masks are graph inputs, fully hidden rows zero.
    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        super::attention_export::export(self, ctx, inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_tensor_close, check_gradients, GradCheck};
    use ndarray::Axis;

    /// Attention by definition, one (batch, head, query) row at a time:
    /// `ctx[b, i, head] = Σ_j softmax_j(q_i·k_j/√dh) v_j` over the keys
    /// `keep(b, i, j)` allows; a row with no such key stays zero.
    fn reference(
        mha: &MultiHeadAttention<f64>,
        x: &Tensor<f64>,
        keep: impl Fn(usize, usize, usize) -> bool,
    ) -> Tensor<f64> {
        let proj = |name: &str, x: &Tensor<f64>| {
            let w = mha.child(name).unwrap().named_weights();
            x.matmul(&w[0].1).unwrap().add(&w[1].1).unwrap()
        };
        let (q, k, v) = (proj("query", x), proj("key", x), proj("value", x));
        let (q, k, v) = (q.array(), k.array(), v.array());
        let (b, s, d, dh) = (x.shape()[0], x.shape()[1], x.shape()[2], mha.head_dim());
        let mut ctx = ndarray::ArrayD::<f64>::zeros(x.shape());
        let rows =
            (0..b).flat_map(|bi| (0..d / dh).flat_map(move |hi| (0..s).map(move |i| (bi, hi, i))));
        for (bi, hi, i) in rows {
            let cols = hi * dh..(hi + 1) * dh;
            let score = |j: usize| {
                let dot: f64 = cols.clone().map(|c| q[[bi, i, c]] * k[[bi, j, c]]).sum();
                (dot / (dh as f64).sqrt()).exp()
            };
            let e: Vec<f64> = (0..s)
                .map(|j| if keep(bi, i, j) { score(j) } else { 0.0 })
                .collect();
            let sum: f64 = e.iter().sum();
            for c in cols.clone().filter(|_| sum > 0.0) {
                ctx[[bi, i, c]] = (0..s).map(|j| e[j] / sum * v[[bi, j, c]]).sum();
            }
        }
        proj("output", &Tensor::from_array(ctx))
    }

    fn setup(seed: u64) -> (MultiHeadAttention<f64>, Tensor<f64>, Mask) {
        let mut rng = Rng::new(seed);
        let mha = MultiHeadAttention::new(4, 2, &mut rng).unwrap();
        let x = Tensor::random_normal(&[2, 3, 4], 0.0, 1.0, &mut rng);
        let padding = vec![true, true, false, true, false, true];
        (mha, x, Mask::from_vec(padding, &[2, 3]).unwrap())
    }

    #[test]
    fn forward_matches_per_head_reference_in_f64_and_f32() {
        let (mut mha, x, m) = setup(1);
        let y = mha.forward_float(&x).unwrap();
        assert_tensor_close(&y, &reference(&mha, &x, |_, _, _| true), 1e-12, 0.0);
        let mut mha32 = MultiHeadAttention::<f32>::new(4, 2, &mut Rng::new(0)).unwrap();
        let cast = mha.named_weights().into_iter().map(|(n, w)| (n, w.cast()));
        mha32.load_weights(&cast.collect(), true).unwrap();
        let y32 = mha32.forward_float(&x.cast()).unwrap();
        assert_tensor_close(&y32, &y.cast(), 1e-5, 1e-6);
        mha.set_causal(true);
        let y = mha.forward(&[Input::Float(&x), Input::Mask(&m)]).unwrap();
        let keep = |b: usize, i: usize, j: usize| j <= i && m.array()[[b, j]];
        assert_tensor_close(&y, &reference(&mha, &x, keep), 1e-12, 0.0);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (mha, x, m) = setup(2);
        let src = Tensor::random_normal(&[2, 5, 4], 0.0, 1.0, &mut Rng::new(3));
        let cases = [
            (false, vec![Input::Float(&x)]),
            (true, vec![Input::Float(&x)]),
            (false, vec![Input::Float(&x), Input::Mask(&m)]),
            (true, vec![Input::Float(&x), Input::Float(&src)]),
        ];
        for (n, (causal, inputs)) in cases.into_iter().enumerate() {
            let mut mha = mha.clone();
            mha.set_causal(causal);
            check_gradients(&mut mha, &inputs, GradCheck::default())
                .unwrap_or_else(|e| panic!("case {n}: {e}"));
        }
        // Cross-attention: backward returns ∂L/∂x and keeps ∂L/∂src aside.
        let (mut mha, inputs) = (mha.clone(), [Input::Float(&x), Input::Float(&src)]);
        let y = mha.forward(&inputs).unwrap();
        assert_eq!(y.shape(), &[2, 3, 4]);
        let dx = mha.backward(&Tensor::ones(y.shape())).unwrap().unwrap();
        assert_eq!(dx.shape(), &[2, 3, 4]);
        assert_eq!(mha.take_source_gradient().unwrap().shape(), &[2, 5, 4]);
    }

    #[test]
    fn fully_masked_row_gives_zero_context_not_nan() {
        let (mut mha, x, _) = setup(6);
        let m = Mask::from_vec(vec![true, true, true, false, false, false], &[2, 3]).unwrap();
        let y = mha.forward(&[Input::Float(&x), Input::Mask(&m)]).unwrap();
        // Batch entry 1 sees nothing: its context is 0, so each output row is the output bias.
        let bias = mha.child("output").unwrap().named_weights()[1].1.to_vec();
        let row1: Vec<f64> = y.array().index_axis(Axis(0), 1).iter().copied().collect();
        assert_eq!(row1, bias.repeat(3));
        let mut grads = mha
            .backward(&Tensor::ones(y.shape()))
            .unwrap()
            .unwrap()
            .to_vec();
        grads.extend(mha.gradients());
        assert!(grads.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn projections_are_replaceable_children() {
        let (mut mha, x, _) = setup(7);
        assert_eq!(mha.layer_paths(), ["query", "key", "value", "output"]);
        assert_eq!(mha.named_weights()[0].0, "query.weight");
        assert_eq!(mha.parameter_count(), 4 * (16 + 4));
        let before = mha.forward_float(&x).unwrap();
        let new = Dense::new(4, 4, true, Activation::Identity, &mut Rng::new(99)).unwrap();
        mha.replace_child("query", Box::new(new)).unwrap();
        let after = mha.forward_float(&x).unwrap();
        assert_ne!(before, after);
        assert_tensor_close(&after, &reference(&mha, &x, |_, _, _| true), 1e-12, 0.0);
    }

    #[test]
    fn bad_shapes_and_configuration_are_errors_naming_the_layer() {
        let (mut mha, x, _) = setup(8);
        let mut fails = |inputs: &[Input<'_, f64>], parts: &[&str]| {
            let msg = mha.forward(inputs).unwrap_err().to_string();
            assert!(parts.iter().all(|p| msg.contains(p)), "{msg}");
        };
        let bad_x = Tensor::zeros(&[2, 3, 5]);
        fails(
            &[Input::Float(&bad_x)],
            &[KIND, "[batch, seq, 4]", "[2, 3, 5]"],
        );
        let m = Mask::from_vec(vec![true; 4], &[2, 2]).unwrap();
        fails(
            &[Input::Float(&x), Input::Mask(&m)],
            &[KIND, "mask", "[2, 3]"],
        );
        let src = Tensor::zeros(&[3, 3, 4]);
        fails(
            &[Input::Float(&x), Input::Float(&src)],
            &["key/value", "[2, seq, 4]"],
        );
        let bad = MultiHeadAttention::<f32>::new(6, 4, &mut Rng::new(0));
        assert!(matches!(bad, Err(Error::Config { .. })));
        mha.set_training(false);
        let y = mha.forward_float(&x).unwrap();
        let no_cache = mha.backward(&y);
        assert!(matches!(no_cache, Err(Error::NoForwardCache { .. })));
    }
}
