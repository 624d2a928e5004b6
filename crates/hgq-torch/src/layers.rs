//! Layers around the quantizers: [`QDense`] (hgq2's `QDense`, with EBOPs; also a tch
//! [`nn::ModuleT`]) and a [`Sequential`] container, its training step
//! ([`Sequential::train_step`]: native on float32 CPU tensors, autograd elsewhere) and its
//! Keras files ([`Sequential::to_keras_json`], [`Sequential::from_keras_json`],
//! [`Sequential::keras_variables`], [`Sequential::load_keras_variables`]).
//!
//! EBOPs (effective bit operations) are hgq2's resource estimate of a layer: for a dense
//! layer, `sum(bits_in @ bits_kernel) + mean(bits_bias) * units` with the input's bit widths
//! of one sample. In training they are added to the loss times the layer's `beta`, which
//! pushes bit widths down where the task does not need them.
//!
//! A loss of one's own goes through [`Sequential::forward`], which returns the output and
//! `beta * ebops` as tensors autograd differentiates:
//!
//! ```no_run
//! use hgq_torch::layers::{Activation, QDense, Sequential};
//! use hgq_torch::hgq_core::CallMode;
//! use hgq_torch::optim::{Adam, AdamConfig};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let mut model = Sequential::new();
//! model.add(&vs.root(), QDense::builder(64, 32).activation(Activation::Relu).beta(1e-5))?;
//! model.add(&vs.root(), QDense::builder(32, 10).beta(1e-5))?;
//! let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(3e-3))?;
//! let (x, labels) = (Tensor::rand([64, 64], (Kind::Float, Device::Cpu)), Tensor::zeros([64], (Kind::Int64, Device::Cpu)));
//! let out = model.forward(&x, CallMode::Training)?;
//! let loss = out.y.cross_entropy_for_logits(&labels) + out.ebops_loss;
//! opt.backward_step(&loss)?;
//! model.apply_constraints()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hgq_config::{Place, QuantizerConfig};
use hgq_core::CallMode;
use tch::{Kind, Tensor, nn};

use crate::optim::Adam;
use crate::quantizer::Quantizer;
use crate::{Result, TorchError};

mod native;

/// The activation after a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// None (Keras' `linear`).
    #[default]
    Linear,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// The Keras name (`"linear"`, `"relu"`).
    pub fn keras_name(self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
        }
    }

    /// Applies the activation to `x`.
    pub fn apply(self, x: Tensor) -> Tensor {
        match self {
            Activation::Linear => x,
            Activation::Relu => x.relu(),
        }
    }
}

/// Keras-style unique names: `q_dense`, `q_dense_1`, ... per base name, in creation order.
#[derive(Debug, Default, Clone)]
pub struct Names {
    counts: HashMap<String, usize>,
}

impl Names {
    /// The next name for `base` (`base`, then `base_1`, `base_2`, ...).
    pub fn next(&mut self, base: &str) -> String {
        let n = self.counts.entry(base.to_string()).or_insert(0);
        let name = if *n == 0 {
            base.to_string()
        } else {
            format!("{base}_{n}")
        };
        *n += 1;
        name
    }
}

/// A quantizer with the Keras path of its variables (`q_dense/q_dense_kq/fixed_point_quantizer_kbi`).
#[derive(Debug)]
pub struct Named {
    /// The quantizer.
    pub q: Quantizer,
    /// Its configuration (what the model JSON holds).
    pub config: QuantizerConfig,
    /// The Keras path of its variables.
    pub keras_path: String,
}

/// Builder of a [`QDense`]; defaults as hgq2: `kq` `default`/weight (KBI, SAT_SYM), `iq`
/// `default`/datalane (KIF, WRAP, one bit width per feature), `bq` `default`/bias, a bias,
/// no activation, `beta = 1e-5` (hgq2's `beta0`).
#[derive(Debug, Clone)]
pub struct QDenseBuilder {
    in_features: usize,
    /// The input's dimensions after the batch (the last is `in_features`).
    input_dims: Vec<usize>,
    units: usize,
    tape: Option<EbopsTape>,
    activation: Activation,
    use_bias: bool,
    beta: f64,
    name: Option<String>,
    iq: Option<QuantizerConfig>,
    kq: Option<QuantizerConfig>,
    bq: Option<QuantizerConfig>,
}

impl QDenseBuilder {
    /// The activation after the layer.
    pub fn activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }
    /// Whether the layer has a bias.
    pub fn use_bias(mut self, b: bool) -> Self {
        self.use_bias = b;
        self
    }
    /// The EBOPs weight in the loss.
    pub fn beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }
    /// Records the layer's `beta * ebops` of every training forward into `tape` (for a loss
    /// built around tch's [`nn::ModuleT`], where the forward returns the output alone).
    pub fn ebops_tape(mut self, tape: &EbopsTape) -> Self {
        self.tape = Some(tape.clone());
        self
    }
    /// The input's dimensions after the batch, for inputs of more than two dimensions (Keras'
    /// `Dense` on the last axis: `[particles, features]` for a Deep Sets layer over particles);
    /// the last must be `in_features`. The input quantizer's bit widths and the EBOPs take the
    /// whole shape (one multiply per position, as hgq2 counts them). Default: `[in_features]`.
    pub fn input_dims(mut self, dims: &[usize]) -> Self {
        self.input_dims = dims.to_vec();
        self
    }
    /// The layer's name (default: `q_dense`, `q_dense_1`, ...).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// The input quantizer's configuration.
    pub fn iq(mut self, c: QuantizerConfig) -> Self {
        self.iq = Some(c);
        self
    }
    /// The kernel quantizer's configuration.
    pub fn kq(mut self, c: QuantizerConfig) -> Self {
        self.kq = Some(c);
        self
    }
    /// The bias quantizer's configuration.
    pub fn bq(mut self, c: QuantizerConfig) -> Self {
        self.bq = Some(c);
        self
    }

    /// Builds the layer under `root / name` of a `VarStore`; `names` gives Keras' unique
    /// names (share one per model).
    pub fn build(self, root: &nn::Path, names: &mut Names) -> Result<QDense> {
        if self.in_features == 0 || self.units == 0 {
            return Err(TorchError::Invalid {
                what: "QDense size",
                why: format!(
                    "{} inputs and {} units (both must be positive)",
                    self.in_features, self.units
                ),
            });
        }
        check_beta(self.beta)?;
        if self.input_dims.last() != Some(&self.in_features) || self.input_dims.contains(&0) {
            return Err(TorchError::Invalid {
                what: "QDense input dimensions",
                why: format!(
                    "{:?} for {} inputs (positive sizes, the last the number of inputs)",
                    self.input_dims, self.in_features
                ),
            });
        }
        let name = self.name.clone().unwrap_or_else(|| names.next("q_dense"));
        let p = root / name.as_str();
        let (n_in, units) = (self.in_features as i64, self.units as i64);
        let conf = |c: Option<QuantizerConfig>, place| match c {
            Some(c) => Ok(c),
            None => QuantizerConfig::builder_default(place).build(),
        };
        let iq_conf = conf(self.iq, Place::Datalane)?;
        let kq_conf = conf(self.kq, Place::Weight)?;
        let bq_conf = conf(self.bq, Place::Bias)?;
        let mut quant =
            |suffix: &str, c: QuantizerConfig, shape: &[Option<usize>]| -> Result<Named> {
                let qname = format!("{name}_{suffix}");
                // Named as Keras does: one counter per class over the model.
                let core = c.to_core()?;
                let base = match &core.spec {
                    hgq_config::convert::QuantizerSpec::Kbi(_) => "fixed_point_quantizer_kbi",
                    hgq_config::convert::QuantizerSpec::Kif(_) => "fixed_point_quantizer_kif",
                    hgq_config::convert::QuantizerSpec::Float(_) => "float_point_quantizer",
                    hgq_config::convert::QuantizerSpec::Dummy => "dummy_quantizer",
                };
                let inner = names.next(base);
                let qp = &p / qname.as_str() / inner.as_str();
                let q = Quantizer::new(&qp, &core, shape)?;
                Ok(Named {
                    q,
                    config: c,
                    keras_path: format!("{name}/{qname}/{inner}"),
                })
            };
        let iq_shape: Vec<Option<usize>> = std::iter::once(None)
            .chain(self.input_dims.iter().map(|&d| Some(d)))
            .collect();
        let iq = quant("iq", iq_conf, &iq_shape)?;
        let kq = quant("kq", kq_conf, &[Some(self.in_features), Some(self.units)])?;
        let bq = if self.use_bias {
            Some(quant("bq", bq_conf, &[Some(self.units)])?)
        } else {
            None
        };
        // Keras' glorot_uniform and zeros.
        let limit = (6.0 / (n_in + units) as f64).sqrt();
        let kernel = p.var(
            "kernel",
            &[n_in, units],
            nn::Init::Uniform {
                lo: -limit,
                up: limit,
            },
        );
        let bias = self
            .use_bias
            .then(|| p.var("bias", &[units], nn::Init::Const(0.0)));
        Ok(QDense {
            name,
            in_features: self.in_features,
            input_dims: self.input_dims,
            units: self.units,
            activation: self.activation,
            beta: Cell::new(self.beta),
            tape: self.tape,
            kernel,
            bias,
            iq,
            kq,
            bq,
            ebops: RefCell::new(Ebops::Value(0)),
        })
    }
}

/// hgq2's `QDense`: `act(iq(x) @ kq(kernel) + bq(bias))`, with EBOPs.
#[derive(Debug)]
pub struct QDense {
    name: String,
    in_features: usize,
    input_dims: Vec<usize>,
    units: usize,
    activation: Activation,
    beta: Cell<f64>,
    /// Where training forwards record `beta * ebops` (see [`QDenseBuilder::ebops_tape`]).
    tape: Option<EbopsTape>,
    kernel: Tensor,
    bias: Option<Tensor>,
    iq: Named,
    kq: Named,
    bq: Option<Named>,
    ebops: RefCell<Ebops>,
}

/// A layer's EBOPs of its last training or tracing call: kept as the (detached) tensor the call
/// computed, read from the device only when asked, so that a training step reads nothing back
/// to the host.
#[derive(Debug)]
enum Ebops {
    Value(u32),
    Pending(Tensor),
}

impl Ebops {
    fn value(&self) -> u32 {
        match self {
            Ebops::Value(v) => *v,
            Ebops::Pending(t) => ebops_u32(t.double_value(&[])),
        }
    }
}

/// `beta` must be finite and `>= 0`.
fn check_beta(beta: f64) -> Result<()> {
    if beta.is_finite() && beta >= 0.0 {
        Ok(())
    } else {
        Err(TorchError::Invalid {
            what: "beta",
            why: format!("{beta} (must be finite, >= 0)"),
        })
    }
}

/// hgq2's uint32 cast of EBOPs: truncation toward zero; NaN and negative values are 0.
fn ebops_u32(v: f64) -> u32 {
    if v.is_finite() && v > 0.0 {
        v.min(u32::MAX as f64) as u32
    } else {
        0
    }
}

/// What a layer's forward returns.
#[derive(Debug)]
pub struct Output {
    /// The layer's output.
    pub y: Tensor,
    /// `beta * ebops` (training and tracing; zero in inference), a scalar to add to the loss.
    pub ebops_loss: Tensor,
}

impl QDense {
    /// A builder for a layer from `in_features` to `units`.
    pub fn builder(in_features: usize, units: usize) -> QDenseBuilder {
        QDenseBuilder {
            in_features,
            input_dims: vec![in_features],
            units,
            tape: None,
            activation: Activation::Linear,
            use_bias: true,
            beta: 1e-5,
            name: None,
            iq: None,
            kq: None,
            bq: None,
        }
    }

    /// The layer's name (`q_dense`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Input features.
    pub fn in_features(&self) -> usize {
        self.in_features
    }
    /// Output features.
    pub fn units(&self) -> usize {
        self.units
    }
    /// The activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }
    /// The EBOPs weight.
    pub fn beta(&self) -> f64 {
        self.beta.get()
    }
    /// Sets the EBOPs weight (a schedule calls this between steps); finite and `>= 0`.
    pub fn set_beta(&self, beta: f64) -> Result<()> {
        check_beta(beta)?;
        self.beta.set(beta);
        Ok(())
    }
    /// The input's dimensions after the batch (`[in_features]` for 2-D inputs).
    pub fn input_dims(&self) -> &[usize] {
        &self.input_dims
    }
    /// The output's dimensions after the batch: the input's with the last replaced by
    /// `units`.
    pub fn output_dims(&self) -> Vec<usize> {
        let mut d = self.input_dims.clone();
        if let Some(last) = d.last_mut() {
            *last = self.units;
        }
        d
    }

    /// Whether there is a bias.
    pub fn use_bias(&self) -> bool {
        self.bias.is_some()
    }
    /// The raw kernel (`[in, units]`, Keras' layout).
    pub fn kernel(&self) -> &Tensor {
        &self.kernel
    }
    /// The raw bias.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    /// The input quantizer.
    pub fn iq(&self) -> &Named {
        &self.iq
    }
    /// The kernel quantizer.
    pub fn kq(&self) -> &Named {
        &self.kq
    }
    /// The bias quantizer.
    pub fn bq(&self) -> Option<&Named> {
        self.bq.as_ref()
    }
    /// The EBOPs of the last training or tracing call, as hgq2 stores them (uint32).
    pub fn ebops(&self) -> u32 {
        let v = self.ebops.borrow().value();
        *self.ebops.borrow_mut() = Ebops::Value(v);
        v
    }

    fn quantizers(&self) -> impl Iterator<Item = &Named> {
        [&self.iq, &self.kq].into_iter().chain(self.bq.as_ref())
    }

    /// EBOPs from the current bit widths (differentiable through them).
    pub fn compute_ebops(&self) -> Result<Tensor> {
        let one_sample: Vec<i64> = std::iter::once(1)
            .chain(self.input_dims.iter().map(|&d| d as i64))
            .collect();
        let bw_inp = self.iq.q.bits_like(&one_sample)?;
        let bw_ker = self.kq.q.bits_like(self.kernel.size().as_slice())?;
        let mut e = bw_inp
            .f_matmul(&bw_ker.to_device(bw_inp.device()))?
            .f_sum(Kind::Float)?;
        if let Some(bq) = &self.bq {
            let bw_bias = bq.q.bits_like(&[self.units as i64])?;
            let dev = e.device();
            e += bw_bias.f_mean(Kind::Float)?.to_device(dev) * self.units as f64;
        }
        Ok(e)
    }

    /// `act(iq(x) @ kq(kernel) + bq(bias))`; in training and tracing also the EBOPs (stored,
    /// and `beta * ebops` returned for the loss).
    pub fn forward(&self, x: &Tensor, mode: CallMode) -> Result<Output> {
        self.check_input(x)?;
        let xq = self.iq.q.forward(x, mode)?;
        let k = self.kq.q.forward(&self.kernel, mode)?;
        let mut y = xq.f_matmul(&k)?;
        if let (Some(b), Some(bq)) = (&self.bias, &self.bq) {
            y += bq.q.forward(b, mode)?;
        }
        let y = self.activation.apply(y);
        let ebops_loss = if mode == CallMode::Inference {
            Tensor::from(0.0f32)
        } else {
            let e = self.compute_ebops()?;
            *self.ebops.borrow_mut() = Ebops::Pending(e.f_detach()?);
            let loss = e.f_mul_scalar(self.beta.get())?;
            if let (Some(tape), CallMode::Training) = (&self.tape, mode) {
                tape.record(&loss);
            }
            loss
        };
        Ok(Output { y, ebops_loss })
    }

    /// The input must fit the layer before any quantizer sees it (a quantizer tracking its
    /// integer bits would otherwise store them for a call that fails later).
    fn check_input(&self, x: &Tensor) -> Result<()> {
        let kind = x.f_kind()?;
        if kind != self.kernel.kind() {
            return Err(TorchError::Kind {
                what: "QDense input",
                kind,
            });
        }
        if x.device() != self.kernel.device() {
            return Err(TorchError::Device {
                what: "QDense kernel",
                expected: x.device(),
                got: self.kernel.device(),
            });
        }
        let size = x.size();
        let fits = size.len() == self.input_dims.len() + 1
            && size[1..]
                .iter()
                .zip(&self.input_dims)
                .all(|(&s, &d)| s == d as i64);
        if !fits {
            return Err(TorchError::Shape {
                built: std::iter::once(None)
                    .chain(self.input_dims.iter().map(|&d| Some(d)))
                    .collect(),
                got: size,
            });
        }
        Ok(())
    }

    /// Applies every quantizer's constraints (after an optimizer step).
    pub fn apply_constraints(&self) -> Result<()> {
        for q in self.quantizers() {
            q.q.apply_constraints()?;
        }
        Ok(())
    }

    /// Whether any quantizer has a regularizer.
    pub fn has_regularization(&self) -> bool {
        self.quantizers().any(|q| q.q.has_regularization())
    }

    /// The regularization losses of the quantizers.
    pub fn regularization_loss(&self) -> Result<Tensor> {
        let mut total = Tensor::from(0.0f32);
        for q in self.quantizers() {
            if q.q.has_regularization() {
                total = total.f_add(&q.q.regularization_loss()?)?;
            }
        }
        Ok(total)
    }

    /// Every variable with its Keras path (`q_dense/kernel`,
    /// `q_dense/q_dense_kq/fixed_point_quantizer_kbi/b`, ...), as hgq2 names them.
    pub fn keras_variables(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![(format!("{}/kernel", self.name), self.kernel.shallow_clone())];
        if let Some(b) = &self.bias {
            v.push((format!("{}/bias", self.name), b.shallow_clone()));
        }
        for q in self.quantizers() {
            for (n, t) in q.q.variables() {
                v.push((format!("{}/{n}", q.keras_path), t));
            }
        }
        v
    }

    fn reset_trace(&self) -> Result<()> {
        for q in self.quantizers() {
            q.q.reset_trace()?;
        }
        Ok(())
    }
}

/// The `beta * ebops` terms of training forwards, collected where the forward cannot return
/// them: layers inside tch's `nn::seq_t()` run through [`nn::ModuleT`], which returns the
/// output alone. Give one tape to the layers' builders ([`QDenseBuilder::ebops_tape`]) and add
/// [`EbopsTape::take`] to the loss after each forward. A handle: clones share the record.
#[derive(Debug, Clone, Default)]
pub struct EbopsTape(Arc<Mutex<Vec<Tensor>>>);

impl EbopsTape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }

    fn record(&self, loss: &Tensor) {
        self.lock().push(loss.shallow_clone());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Tensor>> {
        // A poisoned lock only means a panic elsewhere while it was held: a push or a take,
        // never half done.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sum of the terms recorded since the last take (differentiable; a scalar 0 when
    /// none), and an empty tape.
    pub fn take(&self) -> Result<Tensor> {
        let terms = std::mem::take(&mut *self.lock());
        let mut it = terms.into_iter();
        let Some(first) = it.next() else {
            return Ok(Tensor::from(0.0f32));
        };
        it.try_fold(
            first,
            |acc, t| Ok(acc.f_add(&t.f_to_device(acc.device())?)?),
        )
    }
}

/// tch's module interface, so that a `QDense` sits in `nn::seq_t()` beside tch's layers:
/// `forward_t(xs, true)` is a training forward, `false` an inference one. The EBOPs terms of
/// the loss come through an [`EbopsTape`]. The bit widths' constraints (which a [`Sequential`]
/// applies after each optimizer step) are applied at the start of each `forward_t`: tch's
/// interface has no call after the step, and the next forward is where the values are used
/// (they are the values hgq2 uses; a `VarStore` saved right after a step holds them before
/// the constraint).
///
/// tch's interface returns a tensor, not a `Result`: an input this layer refuses (see
/// [`QDense::forward`], which returns the error) panics here with that error, as tch's own
/// layers panic on shapes they cannot take.
///
/// ```no_run
/// use hgq_torch::layers::{Activation, EbopsTape, Names, QDense};
/// use tch::{nn, nn::ModuleT, Device, Kind, Tensor};
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let (mut names, tape) = (Names::default(), EbopsTape::new());
/// let q = QDense::builder(16, 8).activation(Activation::Relu).ebops_tape(&tape);
/// let net = nn::seq_t()
///     .add(nn::linear(vs.root() / "in", 4, 16, Default::default()))
///     .add_fn(|x| x.tanh())
///     .add(q.build(&vs.root(), &mut names)?);
/// let x = Tensor::rand([32, 4], (Kind::Float, Device::Cpu));
/// let y = net.forward_t(&x, true);
/// let loss = y.square().mean(Kind::Float) + tape.take()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl nn::ModuleT for QDense {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mode = if train {
            CallMode::Training
        } else {
            CallMode::Inference
        };
        match self
            .apply_constraints()
            .and_then(|()| self.forward(xs, mode))
        {
            Ok(out) => out.y,
            Err(e) => panic!("{}: {e}", self.name),
        }
    }
}

/// How [`Sequential::train_step_on`] computes a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepPath {
    /// [`StepPath::Native`] where it runs (float32 CPU tensors, quantizers without scaler,
    /// noise factor or affine map), else [`StepPath::Autograd`].
    #[default]
    Auto,
    /// Without autograd: hgq-core's passes and gradients, matrix products and Adam in plain
    /// loops over the `VarStore`'s memory. An error where it cannot run.
    Native,
    /// libtorch's autograd through the layers' forward (any device and kind).
    Autograd,
}

/// What a training step returns: scalars, detached, on the input's device (read them when
/// needed: reading a CUDA value waits for the device).
#[derive(Debug)]
pub struct StepOutput {
    /// The loss minimized: mean cross entropy + the layers' `beta * ebops` + the
    /// regularization losses (float32).
    pub loss: Tensor,
    /// How many rows' largest logit is their label (int64).
    pub correct: Tensor,
}

/// Layers applied in order.
#[derive(Debug, Default)]
pub struct Sequential {
    layers: Vec<QDense>,
    names: Names,
    /// The model's and the input layer's names in Keras JSON (read from a file; else Keras'
    /// defaults).
    keras_names: Option<(String, String)>,
}

/// What [`Sequential::forward`] returns.
#[derive(Debug)]
pub struct SequentialOutput {
    /// The last layer's output.
    pub y: Tensor,
    /// The sum of `beta * ebops` over the layers (zero in inference).
    pub ebops_loss: Tensor,
}

impl Sequential {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a layer under `root` (Keras' unique names over this model) and appends it. A
    /// layer whose input does not fit the last layer's output is an error before anything is
    /// built.
    pub fn add(&mut self, root: &nn::Path, layer: QDenseBuilder) -> Result<&QDense> {
        if let Some(last) = self.layers.last() {
            let out = last.output_dims();
            if layer.input_dims != out {
                return Err(TorchError::Invalid {
                    what: "layer input",
                    why: format!(
                        "{:?} after {} whose output is {out:?}",
                        layer.input_dims, last.name
                    ),
                });
            }
        }
        let l = layer.build(root, &mut self.names)?;
        self.layers.push(l);
        Ok(&self.layers[self.layers.len() - 1])
    }

    /// The layers.
    pub fn layers(&self) -> &[QDense] {
        &self.layers
    }

    /// Runs every layer in order.
    pub fn forward(&self, x: &Tensor, mode: CallMode) -> Result<SequentialOutput> {
        let mut y = x.shallow_clone();
        let mut loss: Option<Tensor> = None;
        for l in &self.layers {
            let o = l.forward(&y, mode)?;
            y = o.y;
            loss = Some(match loss {
                Some(a) => a + o.ebops_loss,
                None => o.ebops_loss,
            });
        }
        Ok(SequentialOutput {
            y,
            ebops_loss: loss.unwrap_or_else(|| Tensor::from(0.0f32)),
        })
    }

    /// One training step of a classifier: the forward in training mode, the mean cross entropy
    /// of the logits against `labels` (int64 class indices) plus the EBOPs and
    /// regularization losses, the gradients, one step of `opt`, the constraints. The path is
    /// [`StepPath::Auto`] (see [`Sequential::train_step_on`]).
    ///
    /// ```no_run
    /// use hgq_torch::layers::{Activation, QDense, Sequential};
    /// use hgq_torch::optim::{Adam, AdamConfig};
    /// use tch::{nn, Device, Kind, Tensor};
    ///
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let mut model = Sequential::new();
    /// model.add(&vs.root(), QDense::builder(64, 32).activation(Activation::Relu))?;
    /// model.add(&vs.root(), QDense::builder(32, 10))?;
    /// let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(3e-3))?;
    /// let x = Tensor::rand([64, 64], (Kind::Float, Device::Cpu));
    /// let labels = Tensor::zeros([64], (Kind::Int64, Device::Cpu));
    /// let out = model.train_step(&x, &labels, &mut opt)?;
    /// println!("loss {}", out.loss.double_value(&[]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn train_step(&self, x: &Tensor, labels: &Tensor, opt: &mut Adam) -> Result<StepOutput> {
        self.train_step_on(StepPath::Auto, x, labels, opt)
    }

    /// [`Sequential::train_step`] on a chosen path. Both paths compute the same step (the
    /// quantizers' values bit for bit; the gradients up to the order of float32 sums in the
    /// matrix products); the native one skips libtorch's per-operation cost, which is most of
    /// a step of the small networks HGQ trains.
    pub fn train_step_on(
        &self,
        path: StepPath,
        x: &Tensor,
        labels: &Tensor,
        opt: &mut Adam,
    ) -> Result<StepOutput> {
        if self.layers.is_empty() {
            return Err(TorchError::Invalid {
                what: "model",
                why: "no layers to train".into(),
            });
        }
        let native = match path {
            StepPath::Autograd => false,
            StepPath::Auto => native::unsupported(self, x, labels).is_none(),
            StepPath::Native => match native::unsupported(self, x, labels) {
                Some(why) => {
                    return Err(TorchError::Unsupported(format!(
                        "the native training step: {why}"
                    )));
                }
                None => true,
            },
        };
        if !native {
            return self.train_step_autograd(x, labels, opt);
        }
        let (loss, correct) = native::step(self, x, labels, opt)?;
        Ok(StepOutput {
            loss: Tensor::from(loss),
            correct: Tensor::from(correct),
        })
    }

    fn train_step_autograd(
        &self,
        x: &Tensor,
        labels: &Tensor,
        opt: &mut Adam,
    ) -> Result<StepOutput> {
        let out = self.forward(x, CallMode::Training)?;
        let mut loss = out
            .y
            .f_cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Mean, -100, 0.0)?
            .f_add(&out.ebops_loss.f_to_device(out.y.device())?)?;
        if self.has_regularization() {
            loss = loss.f_add(&self.regularization_loss()?.f_to_device(out.y.device())?)?;
        }
        opt.backward_step(&loss)?;
        self.apply_constraints()?;
        let correct = tch::no_grad(|| -> Result<Tensor> {
            Ok(out
                .y
                .f_argmax(-1, false)?
                .f_eq_tensor(labels)?
                .f_sum(Kind::Int64)?)
        })?;
        Ok(StepOutput {
            loss: loss.f_detach()?,
            correct,
        })
    }

    /// The total EBOPs of the last training or tracing call (sum of the layers' uint32 values).
    pub fn ebops(&self) -> u64 {
        self.layers.iter().map(|l| l.ebops() as u64).sum()
    }

    /// Applies every constraint (after an optimizer step).
    pub fn apply_constraints(&self) -> Result<()> {
        for l in &self.layers {
            l.apply_constraints()?;
        }
        Ok(())
    }

    /// Whether any layer has a regularizer (else [`Sequential::regularization_loss`] is 0).
    pub fn has_regularization(&self) -> bool {
        self.layers.iter().any(QDense::has_regularization)
    }

    /// The regularization losses.
    pub fn regularization_loss(&self) -> Result<Tensor> {
        let mut total = Tensor::from(0.0f32);
        for l in &self.layers {
            if l.has_regularization() {
                total = total.f_add(&l.regularization_loss()?)?;
            }
        }
        Ok(total)
    }

    /// hgq2's `trace_minmax`: resets the WRAP tracking, runs `batches` in tracing mode, and
    /// returns the EBOPs after it. No batch is an error (tracing nothing would leave every
    /// WRAP quantizer without integer bits); on an error every variable is as before the call.
    pub fn trace_minmax<'a>(&self, batches: impl IntoIterator<Item = &'a Tensor>) -> Result<u64> {
        let batches: Vec<&Tensor> = batches.into_iter().collect();
        if batches.is_empty() {
            return Err(TorchError::Invalid {
                what: "trace_minmax batches",
                why: "none given: give it the data whose ranges to record".into(),
            });
        }
        let saved: Vec<(Tensor, Tensor)> = self
            .layers
            .iter()
            .flat_map(|l| l.keras_variables())
            .map(|(_, t)| (t.detach().copy(), t))
            .collect();
        let ebops: Vec<u32> = self.layers.iter().map(QDense::ebops).collect();
        let traced = tch::no_grad(|| -> Result<()> {
            for l in &self.layers {
                l.reset_trace()?;
            }
            for b in &batches {
                self.forward(b, CallMode::Tracing)?;
            }
            Ok(())
        });
        if let Err(e) = traced {
            tch::no_grad(|| -> Result<()> {
                for (copy, var) in &saved {
                    var.shallow_clone().f_copy_(copy)?;
                }
                Ok(())
            })?;
            for (l, e) in self.layers.iter().zip(ebops) {
                *l.ebops.borrow_mut() = Ebops::Value(e);
            }
            return Err(e);
        }
        Ok(self.ebops())
    }

    /// Every variable with its Keras path.
    pub fn keras_variables(&self) -> Vec<(String, Tensor)> {
        self.layers
            .iter()
            .flat_map(QDense::keras_variables)
            .collect()
    }

    /// The model a Keras JSON describes (what [`Sequential::to_keras_json`] and hgq2's
    /// `model.to_json()` write for a chain of `QDense` layers), its variables created under
    /// `root` at their initial values (load trained ones with
    /// [`Sequential::load_keras_variables`]). What this crate does not build yet (an output
    /// quantizer, no input quantizer, EBOPs off or scaled, a frozen layer, an activation other
    /// than `linear` and `relu`) is an error naming the layer, before anything is built.
    ///
    /// ```no_run
    /// use hgq_torch::layers::Sequential;
    /// use tch::{nn, Device, Tensor};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let json = std::fs::read_to_string("out/demo/model.json")?;
    /// let model = Sequential::from_keras_json(&vs.root(), &json)?;
    /// model.load_keras_variables(&Tensor::read_safetensors("out/demo/weights.safetensors")?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_keras_json(root: &nn::Path, json: &str) -> Result<Sequential> {
        let spec = hgq_config::DenseModelSpec::from_json(json)?;
        let mut builders = Vec::with_capacity(spec.layers.len());
        let mut n_in = spec.input_dim;
        for (k, l) in spec.layers.iter().enumerate() {
            let name = l.name.clone().unwrap_or_else(|| format!("layer {k}"));
            let refuse = |what: &str| {
                Err(TorchError::Unsupported(format!(
                    "{name}: {what} (not built by this crate yet)"
                )))
            };
            let activation = match l.activation {
                None => Activation::Linear,
                Some(hgq_config::Activation::Relu) => Activation::Relu,
                Some(a) => return refuse(&format!("activation {}", a.as_str())),
            };
            let Some(iq) = &l.iq else {
                return refuse("enable_iq=False");
            };
            if l.oq.is_some() {
                return refuse("an output quantizer");
            }
            if !l.enable_ebops || l.ebops_factor != 1.0 || !l.trainable {
                return refuse(
                    "enable_ebops=False, an ebops_factor other than 1 or trainable=False",
                );
            }
            // Every configuration converts before the first layer is built.
            for c in [Some(iq), Some(&l.kq), l.use_bias.then_some(&l.bq)]
                .into_iter()
                .flatten()
            {
                c.to_core()?;
            }
            let mut b = QDense::builder(n_in, l.units)
                .activation(activation)
                .use_bias(l.use_bias)
                .beta(l.beta0)
                .iq(iq.clone())
                .kq(l.kq.clone());
            if l.use_bias {
                b = b.bq(l.bq.clone());
            }
            if let Some(n) = &l.name {
                b = b.name(n.as_str());
            }
            builders.push(b);
            n_in = l.units;
        }
        let mut model = Sequential::new();
        for b in builders {
            model.add(root, b)?;
        }
        model.keras_names = Some((spec.name, spec.input_name));
        Ok(model)
    }

    /// Sets every variable from `tensors`, named by Keras variable paths (what
    /// [`Sequential::keras_variables`] names and `weights.safetensors` holds). All or nothing:
    /// a variable without a tensor, a tensor of another shape, a non-finite value, or a tensor
    /// no variable takes (beside hgq2's `.../ebops` and `.../beta` bookkeeping) is an error
    /// before any variable changes.
    pub fn load_keras_variables(&self, tensors: &[(String, Tensor)]) -> Result<()> {
        let vars = self.keras_variables();
        let mut pairs = Vec::with_capacity(vars.len());
        for (path, var) in &vars {
            let Some((_, t)) = tensors.iter().find(|(n, _)| n == path) else {
                return Err(TorchError::Invalid {
                    what: "Keras variables",
                    why: format!("no tensor for {path}"),
                });
            };
            if t.size() != var.size() {
                return Err(TorchError::Invalid {
                    what: "Keras variables",
                    why: format!(
                        "{path}: shape {:?} for a variable of {:?}",
                        t.size(),
                        var.size()
                    ),
                });
            }
            let finite =
                tch::no_grad(|| -> Result<bool> { Ok(bool::try_from(t.f_isfinite()?.f_all()?)?) })?;
            if !finite {
                return Err(TorchError::NonFinite("a Keras variable's tensor"));
            }
            pairs.push((var, t));
        }
        let bookkeeping = |n: &str| n.ends_with("/ebops") || n.ends_with("/beta");
        if let Some((n, _)) = tensors
            .iter()
            .find(|(n, _)| !bookkeeping(n) && !vars.iter().any(|(p, _)| p == n))
        {
            return Err(TorchError::Invalid {
                what: "Keras variables",
                why: format!("{n}: no variable of this model has that path"),
            });
        }
        tch::no_grad(|| -> Result<()> {
            for (var, t) in pairs {
                let src = t.f_to_device(var.device())?.f_to_kind(var.kind())?;
                var.shallow_clone().f_copy_(&src)?;
            }
            Ok(())
        })
    }

    /// The model as hgq2's Keras JSON (`keras.models.model_from_json` loads it; the weights
    /// go by [`Sequential::keras_variables`]): `Input(in_features)` and the layers, each with
    /// its quantizer configurations, activation and `beta0`.
    pub fn to_keras_json(&self) -> Result<String> {
        let first = self.layers.first().ok_or_else(|| {
            TorchError::Unsupported("a model without layers has no Keras JSON".into())
        })?;
        if first.input_dims.len() != 1 {
            return Err(TorchError::Unsupported(format!(
                "Keras JSON of a model on inputs of {} dimensions (2-D inputs only, for now)",
                first.input_dims.len() + 1
            )));
        }
        let mut spec = hgq_config::DenseModelSpec::new(first.in_features);
        if let Some((model, input)) = &self.keras_names {
            spec = spec.name(model.as_str()).input_name(input.as_str());
        }
        for l in &self.layers {
            let act = match l.activation {
                Activation::Linear => None,
                Activation::Relu => Some(hgq_config::Activation::Relu),
            };
            let mut s = hgq_config::QDenseSpec::new(l.units)
                .name(l.name.as_str())
                .activation(act)
                .beta0(l.beta())
                .iq(l.iq.config.clone())
                .kq(l.kq.config.clone())
                .use_bias(l.bias.is_some());
            if let Some(bq) = &l.bq {
                s = s.bq(bq.config.clone());
            }
            spec = spec.layer(s);
        }
        Ok(spec.to_json()?)
    }
}
