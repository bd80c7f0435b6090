//! `LoraLayer<T>`: the low-rank branch `s·(x·A)·B (+ bias)` for every
//! target geometry, with its backward.
//!
//! Shapes: A is `fan_in × r`, B is `r × out`, the optional bias `[out]`,
//! the optional DoRA magnitude `[out]` (used by the adapter, stored here so
//! the packing order is A, B, bias, magnitude). For Conv2d, A's rows are in
//! PyTorch's `(c, i, j)` flattening order, so PEFT's `r × in × kh × kw`
//! kernel maps to A by a reshape and a transpose, and the branch is im2col
//! followed by two GEMMs.

use super::channels;
use super::config::{LoraConfig, LoraInit};
use super::target::LoraGeometry;
use crate::export::{ExportContext, NodeInput};
use crate::layer::{Diagnostics, Input, Inputs, Layer, Weight};
use crate::{Error, Result, Rng, Tensor};
use cranelora_graph::NodeId;
use cranelora_kernels::im2col::{col2im, im2col, Conv2dGeometry};
use cranelora_kernels::Scalar;

/// What backward needs from the last training-mode forward.
#[derive(Clone, Debug)]
enum Cache<T> {
    /// Rows of the input (`rows × in`) and `x·A` (`rows × r`).
    Linear {
        x: Tensor<T>,
        h: Tensor<T>,
        x_shape: Vec<usize>,
    },
    /// Per image: the im2col matrix and `Aᵀ·cols` (`r × P`).
    Conv {
        cols: Vec<Tensor<T>>,
        h: Vec<Tensor<T>>,
        geom: Conv2dGeometry,
        x_shape: Vec<usize>,
    },
    /// The flat ids and `A[ids]` (`rows × r`).
    Embedding { ids: Vec<usize>, h: Tensor<T> },
}

/// The LoRA branch of one adapter.
#[derive(Clone, Debug)]
pub struct LoraLayer<T> {
    geometry: LoraGeometry,
    config: LoraConfig,
    a: Weight<T>,
    b: Weight<T>,
    bias: Option<Weight<T>>,
    magnitude: Option<Weight<T>>,
    training: bool,
    cache: Option<Cache<T>>,
}

fn init_pair<T: Scalar>(g: &LoraGeometry, cfg: &LoraConfig) -> (Tensor<T>, Tensor<T>) {
    let (fan_in, out, r) = (g.fan_in(), g.fan_out(), cfg.rank);
    let mut rng = Rng::new(cfg.seed);
    let embedding = matches!(g, LoraGeometry::Embedding { .. });
    let kaiming = |rows: usize, cols: usize, fan: usize, rng: &mut Rng| {
        let bound = 1.0 / (fan as f64).sqrt();
        Tensor::random_uniform(&[rows, cols], -bound, bound, rng)
    };
    match (cfg.init, embedding) {
        (LoraInit::Random, false) => {
            let a = kaiming(fan_in, r, fan_in, &mut rng);
            (a, kaiming(r, out, r, &mut rng))
        }
        (LoraInit::Random, true) => {
            let a = Tensor::random_normal(&[fan_in, r], 0.0, 1.0, &mut rng);
            (a, Tensor::random_normal(&[r, out], 0.0, 1.0, &mut rng))
        }
        (_, true) => (
            Tensor::zeros(&[fan_in, r]),
            Tensor::random_normal(&[r, out], 0.0, 1.0, &mut rng),
        ),
        (LoraInit::Default, false) => (
            kaiming(fan_in, r, fan_in, &mut rng),
            Tensor::zeros(&[r, out]),
        ),
        (LoraInit::Gaussian, false) => (
            Tensor::random_normal(&[fan_in, r], 0.0, 1.0 / r as f64, &mut rng),
            Tensor::zeros(&[r, out]),
        ),
    }
}

impl<T: Scalar> LoraLayer<T> {
    /// A branch for `geometry`, initialized per `config.init`. A DoRA
    /// magnitude, if configured, starts at ones; the adapter sets it to the
    /// column norms of the base weight.
    ///
    /// # Errors
    /// [`Error::Config`] if the rank does not fit the geometry, or a dilated
    /// convolution (PEFT does not pass dilation to A, so we refuse rather
    /// than compute something different).
    pub fn new(geometry: LoraGeometry, config: LoraConfig) -> Result<Self> {
        config.validate(geometry.fan_in(), geometry.fan_out())?;
        if let LoraGeometry::Conv2d { dilation, .. } = geometry {
            if dilation != (1, 1) {
                return Err(Error::config("LoraAdapter", format!("LoRA on a dilated convolution (dilation {dilation:?}) is not supported: PEFT does not dilate A")));
            }
        }
        if config.lora_bias && matches!(geometry, LoraGeometry::Embedding { .. }) {
            return Err(Error::config(
                "LoraAdapter",
                "a LoRA bias is not supported on an embedding (as in PEFT)",
            ));
        }
        let (a, b) = init_pair(&geometry, &config);
        let out = geometry.fan_out();
        Ok(Self {
            geometry,
            config,
            a: Weight::new("lora_a", a),
            b: Weight::new("lora_b", b),
            bias: config
                .lora_bias
                .then(|| Weight::new("lora_bias", Tensor::zeros(&[out]))),
            magnitude: config
                .use_dora
                .then(|| Weight::new("lora_magnitude", Tensor::ones(&[out]))),
            training: true,
            cache: None,
        })
    }

    /// The geometry of the branch.
    pub fn geometry(&self) -> LoraGeometry {
        self.geometry
    }

    /// The configuration.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The scaling s as `T`.
    pub fn scaling(&self) -> T {
        T::from_f64_lossy(self.config.scaling())
    }

    /// A (`fan_in × r`).
    pub fn a(&self) -> &Weight<T> {
        &self.a
    }

    /// A, mutably.
    pub fn a_mut(&mut self) -> &mut Weight<T> {
        &mut self.a
    }

    /// B (`r × out`).
    pub fn b(&self) -> &Weight<T> {
        &self.b
    }

    /// B, mutably.
    pub fn b_mut(&mut self) -> &mut Weight<T> {
        &mut self.b
    }

    /// The bias on B, if configured.
    pub fn bias(&self) -> Option<&Weight<T>> {
        self.bias.as_ref()
    }

    /// The bias on B, mutably.
    pub fn bias_mut(&mut self) -> Option<&mut Weight<T>> {
        self.bias.as_mut()
    }

    /// The DoRA magnitude, if configured.
    pub fn magnitude(&self) -> Option<&Weight<T>> {
        self.magnitude.as_ref()
    }

    /// The DoRA magnitude, mutably.
    pub fn magnitude_mut(&mut self) -> Option<&mut Weight<T>> {
        self.magnitude.as_mut()
    }

    /// The update `s·A·B` as a `fan_in × out` matrix.
    ///
    /// # Errors
    /// Only on an internal shape inconsistency.
    pub fn delta(&self) -> Result<Tensor<T>> {
        Ok(self.a.value().matmul(self.b.value())?.scale(self.scaling()))
    }

    fn no_cache(&self) -> Error {
        Error::NoForwardCache {
            path: String::new(),
            kind: "LoraLayer".into(),
        }
    }

    fn forward_linear(&mut self, x: &Tensor<T>, in_features: usize) -> Result<Tensor<T>> {
        if x.ndim() == 0 || x.shape()[x.ndim() - 1] != in_features {
            return Err(Error::shape(
                "LoraLayer",
                "input",
                format!("[.., {in_features}]"),
                x.shape(),
            ));
        }
        let x2 = x.reshape(&[x.len() / in_features, in_features])?;
        let h = x2.matmul(self.a.value())?;
        let y = h.matmul(self.b.value())?.scale(self.scaling());
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("internal: checked non-empty") = self.geometry.fan_out();
        if self.training {
            self.cache = Some(Cache::Linear {
                x: x2,
                h,
                x_shape: x.shape().to_vec(),
            });
        }
        y.reshape(&shape)
    }

    fn forward_conv(&mut self, x: &Tensor<T>) -> Result<Tensor<T>> {
        let LoraGeometry::Conv2d {
            in_channels,
            kernel,
            stride,
            padding,
            dilation,
            ..
        } = self.geometry
        else {
            unreachable!("internal: called for conv geometry only")
        };
        if x.ndim() != 4 || x.shape()[1] != in_channels {
            return Err(Error::shape(
                "LoraLayer",
                "input",
                format!("[N, {in_channels}, H, W]"),
                x.shape(),
            ));
        }
        let (n, h, w) = (x.shape()[0], x.shape()[2], x.shape()[3]);
        let geom = Conv2dGeometry {
            channels: in_channels,
            height: h,
            width: w,
            kernel,
            stride,
            padding,
            dilation,
        };
        geom.validate()?;
        let (oh, ow) = geom.output_size();
        let xc = x.clone().into_contiguous();
        let xs = xc.as_slice().expect("internal: contiguous");
        let (mut all_cols, mut all_h, mut out) = (Vec::new(), Vec::new(), Vec::new());
        for img in xs.chunks(geom.image_len()).take(n) {
            let mut cols = vec![T::zero(); geom.col_rows() * geom.col_cols()];
            im2col(&geom, img, &mut cols)?;
            let cols = Tensor::from_vec(cols, &[geom.col_rows(), geom.col_cols()])?;
            let hi = self.a.value().matmul_t(true, &cols, false)?;
            out.extend(
                self.b
                    .value()
                    .matmul_t(true, &hi, false)?
                    .scale(self.scaling())
                    .to_vec(),
            );
            if self.training {
                all_cols.push(cols);
                all_h.push(hi);
            }
        }
        if self.training {
            self.cache = Some(Cache::Conv {
                cols: all_cols,
                h: all_h,
                geom,
                x_shape: x.shape().to_vec(),
            });
        }
        Tensor::from_vec(out, &[n, self.geometry.fan_out(), oh, ow])
    }

    fn forward_embedding(&mut self, ids: &crate::IdTensor) -> Result<Tensor<T>> {
        let vocab = self.geometry.fan_in();
        let mut flat = Vec::with_capacity(ids.len());
        for (position, &id) in ids.array().iter().enumerate() {
            if id < 0 || id as usize >= vocab {
                return Err(Error::IdOutOfRange {
                    path: String::new(),
                    kind: "LoraLayer".into(),
                    id,
                    position,
                    vocab,
                });
            }
            flat.push(id as usize);
        }
        let a = self.a.value().array();
        let r = self.config.rank;
        let rows: Vec<T> = flat
            .iter()
            .flat_map(|&i| (0..r).map(move |j| a[[i, j]]))
            .collect();
        let h = Tensor::from_vec(rows, &[flat.len(), r])?;
        let y = h.matmul(self.b.value())?.scale(self.scaling());
        let mut shape = ids.shape().to_vec();
        shape.push(self.geometry.fan_out());
        if self.training {
            self.cache = Some(Cache::Embedding { ids: flat, h });
        }
        y.reshape(&shape)
    }

    fn add_bias(&self, y: Tensor<T>) -> Result<Tensor<T>> {
        match &self.bias {
            Some(b) => channels::add(&y, b.value(), self.geometry.channel_axis(y.ndim())),
            None => Ok(y),
        }
    }
}

impl<T: Scalar> LoraLayer<T> {
    /// ∂L/∂B = s·hᵀ·g and ∂L/∂h = s·g·Bᵀ, for `h` (`rows × r`) and `g` (`rows × out`).
    fn backward_b(&mut self, h: &Tensor<T>, g: &Tensor<T>) -> Result<Tensor<T>> {
        let s = self.scaling();
        self.b
            .accumulate_grad(&h.matmul_t(true, g, false)?.scale(s))?;
        Ok(g.matmul_t(false, self.b.value(), true)?.scale(s))
    }

    fn backward_linear(&mut self, g: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        let Some(Cache::Linear { x, h, x_shape }) = self.cache.take() else {
            return Err(self.no_cache());
        };
        let g2 = g.reshape(&[x.shape()[0], self.geometry.fan_out()])?;
        let dh = self.backward_b(&h, &g2)?;
        self.a.accumulate_grad(&x.matmul_t(true, &dh, false)?)?;
        let dx = dh
            .matmul_t(false, self.a.value(), true)?
            .reshape(&x_shape)?;
        self.cache = Some(Cache::Linear { x, h, x_shape });
        Ok(Some(dx))
    }

    fn backward_conv(&mut self, g: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        let Some(Cache::Conv {
            cols,
            h,
            geom,
            x_shape,
        }) = self.cache.take()
        else {
            return Err(self.no_cache());
        };
        let (out, p) = (self.geometry.fan_out(), geom.col_cols());
        let gc = g.clone().into_contiguous();
        let gs = gc.as_slice().expect("internal: contiguous");
        let mut dx = vec![T::zero(); x_shape.iter().product()];
        for (n, (cols_n, h_n)) in cols.iter().zip(&h).enumerate() {
            // Per image: y = s·Bᵀ·h with h = Aᵀ·cols, so with g (out × P):
            // ∂B = s·h·gᵀ, ∂h = s·B·g, ∂A = cols·∂hᵀ, ∂cols = A·∂h.
            let g_n = Tensor::from_vec(gs[n * out * p..(n + 1) * out * p].to_vec(), &[out, p])?;
            let s = self.scaling();
            self.b
                .accumulate_grad(&h_n.matmul_t(false, &g_n, true)?.scale(s))?;
            let dh = self.b.value().matmul(&g_n)?.scale(s);
            self.a
                .accumulate_grad(&cols_n.matmul_t(false, &dh, true)?)?;
            let dcols = self.a.value().matmul(&dh)?;
            let img = &mut dx[n * geom.image_len()..(n + 1) * geom.image_len()];
            col2im(&geom, dcols.as_slice().expect("internal: contiguous"), img)?;
        }
        self.cache = Some(Cache::Conv {
            cols,
            h,
            geom,
            x_shape: x_shape.clone(),
        });
        Ok(Some(Tensor::from_vec(dx, &x_shape)?))
    }

    fn backward_embedding(&mut self, g: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        let Some(Cache::Embedding { ids, h }) = self.cache.take() else {
            return Err(self.no_cache());
        };
        let g2 = g.reshape(&[ids.len(), self.geometry.fan_out()])?;
        let dh = self.backward_b(&h, &g2)?;
        if self.a.trainable() {
            // A[ids] is a gather: its gradient scatters ∂h's rows back, adding repeats.
            let mut da = Tensor::zeros(self.a.value().shape());
            let (arr, dh) = (da.array_mut(), dh.array());
            for (row, &id) in ids.iter().enumerate() {
                for j in 0..self.config.rank {
                    arr[[id, j]] += dh[[row, j]];
                }
            }
            self.a.accumulate_grad(&da)?;
        }
        self.cache = Some(Cache::Embedding { ids, h });
        Ok(None)
    }
}

impl<T: Scalar> Layer<T> for LoraLayer<T> {
    fn kind(&self) -> &'static str {
        "LoraLayer"
    }

    /// `s·branch(x) + bias` (no DoRA scaling: the adapter applies it).
    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let inputs = Inputs::new(inputs, "LoraLayer");
        let y = match self.geometry {
            LoraGeometry::Linear { in_features, .. } => {
                self.forward_linear(inputs.float(0)?, in_features)?
            }
            LoraGeometry::Conv2d { .. } => self.forward_conv(inputs.float(0)?)?,
            LoraGeometry::Embedding { .. } => self.forward_embedding(inputs.ids()?)?,
        };
        self.add_bias(y)
    }

    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        if let Some(b) = self.bias.as_mut().filter(|b| b.trainable()) {
            let axis = self.geometry.channel_axis(grad_output.ndim());
            b.accumulate_grad(&channels::sum(grad_output, axis)?)?;
        }
        match self.geometry {
            LoraGeometry::Linear { .. } => self.backward_linear(grad_output),
            LoraGeometry::Conv2d { .. } => self.backward_conv(grad_output),
            LoraGeometry::Embedding { .. } => self.backward_embedding(grad_output),
        }
    }

    fn weights(&self) -> Vec<&Weight<T>> {
        [
            Some(&self.a),
            Some(&self.b),
            self.bias.as_ref(),
            self.magnitude.as_ref(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn weights_mut(&mut self) -> Vec<&mut Weight<T>> {
        [
            Some(&mut self.a),
            Some(&mut self.b),
            self.bias.as_mut(),
            self.magnitude.as_mut(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn set_own_training(&mut self, training: bool) {
        self.training = training;
        if !training {
            self.cache = None;
        }
    }

    fn reset_own_state(&mut self) {
        self.cache = None;
    }

    fn clone_box(&self) -> Box<dyn Layer<T>> {
        Box::new(self.clone())
    }

    fn supports_jit(&self) -> bool {
        self.export_lowerable()
    }

    /// `s·branch(x) + bias` as graph nodes named `<path>.lora_…` (see `lora/export.rs`).
    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        self.export_branch(ctx, inputs)
    }

    fn diagnostics(&self) -> Diagnostics {
        let mut d = vec![
            ("kind".to_string(), self.kind().to_string()),
            ("rank".to_string(), self.config.rank.to_string()),
            ("alpha".to_string(), self.config.alpha().to_string()),
            ("scaling".to_string(), self.config.scaling().to_string()),
        ];
        d.extend(crate::layer::weight_diagnostics(
            self.parameter_count(),
            self.total_parameter_count(),
            &self.weights(),
        ));
        d
    }
}
