//! hgq2's layers over the quantizers, each a [`Layer`] (and, those of one input, a tch
//! [`nn::ModuleT`], so that it sits in `nn::seq_t()` beside tch's own layers): [`QDense`], the
//! convolutions [`QConv`] (`QConv1D`, `QConv2D`), the poolings [`QPool`] (max and average,
//! windowed and global, 1-D and 2-D), [`QBatchNorm`], the merges [`QMerge`] (`QAdd`,
//! `QSubtract`, `QMultiply`, `QMaximum`, `QMinimum`, `QAveragePow2`) and Keras' [`Flatten`],
//! [`Reshape`], [`ActivationLayer`] and [`ReLU`]. Models of them: a [`Sequential`] chain, its
//! training step ([`Sequential::train_step`]: native on float32 CPU chains of `QDense`,
//! `QConv`, `QPool`, `Flatten` and `Reshape`, autograd elsewhere), and a [`Functional`] graph (several inputs and outputs, merges); both
//! with their Keras JSON (`to_keras_json`, `from_keras_json`: hgq2's `model.to_json()` byte
//! for byte), their variables by Keras path (`keras_variables`, `load_keras_variables`) and
//! Keras 3 `.keras` archives (`save_keras`, `load_keras`).
//!
//! Tensors are laid out as Keras lays them out (channels last: `[batch, height, width,
//! channels]`; kernels `[kh, kw, in / groups, filters]`), so that bit widths, variables and
//! exports are hgq2's element for element.
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
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use hgq_config::sequential::LayerSpec;
use hgq_config::{Place, QuantizerConfig};
use hgq_core::CallMode;
use tch::{Tensor, nn};

use crate::quantizer::Quantizer;
use crate::{Result, TorchError};

mod activation;
mod archive;
mod batchnorm;
mod bn_dense;
mod conv;
mod dense;
mod einsum;
mod einsum_bn;
mod functional;
mod merge;
mod model;
pub(crate) mod native;
mod pool;
mod reshape;
mod sequential;
mod softmax;
mod spec;
mod table;

/// The native step's matrix product `a @ b` (`m x k` by `k x n`; each operand its values, row
/// stride and column stride) into a buffer of `hgq_core::scratch`, computed as a step computes
/// it: `hgq-bench-step` times a step's products with it (the floor of its step).
#[doc(hidden)]
pub fn native_product(
    dims: (usize, usize, usize),
    a: native::Operand<'_>,
    b: native::Operand<'_>,
) -> crate::Result<Vec<f32>> {
    native::product(dims, a, b)
}

pub use activation::{ActivationLayer, ReLU};
pub use batchnorm::{QBatchNorm, QBatchNormBuilder};
pub use bn_dense::{QBatchNormDense, QBatchNormDenseBuilder};
pub use conv::{QConv, QConvBuilder};
pub use dense::{QDense, QDenseBuilder};
pub use einsum::{QEinsumDense, QEinsumDenseBuilder};
pub use einsum_bn::{QEinsumDenseBatchnorm, QEinsumDenseBatchnormBuilder};
pub use functional::{Functional, FunctionalOutput, NodeId};
pub use hgq_config::sequential::MergeOp;
/// Keras' padding and the pooling kinds: hgq-config's, the words of the model JSON.
pub use hgq_config::sequential::{Padding, PoolKind};
pub use merge::{QMerge, QMergeBuilder};
pub use pool::{QPool, QPoolBuilder};

/// `(before, after)` padding per spatial axis.
pub(crate) type Pads = Vec<(usize, usize)>;
pub use reshape::{Flatten, Reshape};
pub use sequential::{Sequential, SequentialOutput, StepOutput, StepPath};
pub use softmax::{QSoftmax, QSoftmaxBuilder};
pub use table::{QUnaryFunctionLut, QUnaryFunctionLutBuilder};

/// What every layer does: a forward in the three modes ([`CallMode`]), its EBOPs, the
/// constraints and regularization of its quantizers, WRAP tracing, its Keras variables.
/// [`Sequential`] holds any layers through this trait; each layer is also a tch
/// [`nn::ModuleT`].
///
/// Shapes are per sample (the batch axis left out) and in Keras' layout.
pub trait Layer: Debug + Any {
    /// The layer's name (Keras' automatic `q_dense`, `q_conv2d_1`, ... or the user's).
    fn name(&self) -> &str;
    /// The input's dimensions after the batch.
    fn input_dims(&self) -> &[usize];
    /// The output's dimensions after the batch.
    fn output_dims(&self) -> Vec<usize>;
    /// The forward pass: in training and tracing also the EBOPs (kept, see [`Layer::ebops`]),
    /// and `beta * ebops` returned for the loss. An input of another shape, kind or device
    /// is an error before any state changes.
    fn forward(&self, x: &Tensor, mode: CallMode) -> Result<Output>;
    /// How many inputs the layer takes (1; a merge layer 2 or more, each of
    /// [`Layer::input_dims`]).
    fn arity(&self) -> usize {
        1
    }
    /// The forward pass of a layer of several inputs (a merge); for one input,
    /// [`Layer::forward`].
    fn forward_inputs(&self, xs: &[&Tensor], mode: CallMode) -> Result<Output> {
        match xs {
            [x] => self.forward(x, mode),
            _ => Err(TorchError::Invalid {
                what: "layer inputs",
                why: format!("{} inputs for {}, which takes one", xs.len(), self.name()),
            }),
        }
    }
    /// The EBOPs of the last training or tracing call, as hgq2 stores them (uint32); 0 for
    /// layers without (Flatten).
    fn ebops(&self) -> u32 {
        0
    }
    /// The EBOPs weight in the loss; `None` for layers without EBOPs.
    fn beta(&self) -> Option<f64> {
        None
    }
    /// Sets the EBOPs weight (a schedule calls this between steps): finite and `>= 0`; an
    /// error for layers without EBOPs.
    fn set_beta(&self, beta: f64) -> Result<()> {
        let _ = beta;
        Err(TorchError::Invalid {
            what: "beta",
            why: format!("{} has no EBOPs", self.name()),
        })
    }
    /// The layer's quantizers, input side first (input, kernel, bias).
    fn quantizers(&self) -> Vec<&Named> {
        Vec::new()
    }
    /// Applies every quantizer's constraints (after an optimizer step).
    fn apply_constraints(&self) -> Result<()> {
        self.quantizers()
            .iter()
            .try_for_each(|q| q.q.apply_constraints())
    }
    /// Whether any quantizer has a regularizer.
    fn has_regularization(&self) -> bool {
        self.quantizers().iter().any(|q| q.q.has_regularization())
    }
    /// The regularization losses of the quantizers (a float32 scalar).
    fn regularization_loss(&self) -> Result<Tensor> {
        let mut total = Tensor::from(0.0f32);
        for q in self.quantizers() {
            if q.q.has_regularization() {
                total = total.f_add(&q.q.regularization_loss()?)?;
            }
        }
        Ok(total)
    }
    /// Resets WRAP tracing (hgq2's `trace_minmax` does this before its batches).
    fn reset_trace(&self) -> Result<()> {
        self.quantizers().iter().try_for_each(|q| q.q.reset_trace())
    }
    /// Every variable with its Keras path (`q_dense/kernel`,
    /// `q_dense/q_dense_kq/fixed_point_quantizer_kbi/b`, ...), as hgq2 names them.
    fn keras_variables(&self) -> Vec<(String, Tensor)>;
    /// The layer as hgq2's Keras JSON describes it (what `model.to_json()` writes for it):
    /// [`Sequential::to_keras_json`] writes these.
    fn keras_spec(&self) -> Result<LayerSpec>;
    /// Keras' `trainable` (`false`: the layer's own weights frozen).
    fn trainable(&self) -> bool {
        true
    }
    /// Whether Keras holds the layer's `beta` and `ebops` before its own non-trainable
    /// variables (hgq2 makes them first in QBatchNormDense and QEinsumDenseBatchnorm, last in
    /// the others): the order of a `.keras` archive.
    #[doc(hidden)]
    fn bookkeeping_before_state(&self) -> bool {
        false
    }
    /// hgq2's bookkeeping of the layer and of its sublayers that have EBOPs (QSoftmax's
    /// tables): `(Keras path of the layer, beta, kept EBOPs)`, what an archive holds as
    /// `{path}/beta` and `{path}/ebops`.
    #[doc(hidden)]
    fn bookkeeping(&self) -> Vec<(String, f64, u32)> {
        self.beta()
            .map(|b| (self.name().to_string(), b, self.ebops()))
            .into_iter()
            .collect()
    }
    /// Restores one entry of [`Layer::bookkeeping`] (read from an archive).
    #[doc(hidden)]
    fn restore_bookkeeping(&self, path: &str, beta: Option<f64>, ebops: Option<u32>) -> Result<()> {
        if path == self.name() {
            if let Some(b) = beta {
                self.set_beta(b)?;
            }
            if let Some(e) = ebops {
                self.restore_ebops(e);
            }
        }
        Ok(())
    }
    /// Sets the kept EBOPs (used to restore them when a call fails half way).
    #[doc(hidden)]
    fn restore_ebops(&self, ebops: u32) {
        let _ = ebops;
    }
    /// The layer as [`Any`], to reach its own type ([`Sequential::layer`]).
    fn as_any(&self) -> &dyn Any;
}

impl dyn Layer {
    /// The layer as its own type, if it is one.
    ///
    /// ```
    /// use hgq_torch::layers::{Layer, QDense};
    /// use tch::{nn, Device};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let l: Box<dyn Layer> = Box::new(QDense::builder(4, 2).build(&vs.root(), &mut Default::default())?);
    /// assert_eq!(l.downcast_ref::<QDense>().unwrap().units(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn downcast_ref<T: Layer>(&self) -> Option<&T> {
        self.as_any().downcast_ref::<T>()
    }
}

/// A layer's description before it is built: what [`Sequential::add`] takes. Every layer's
/// builder implements it.
pub trait LayerBuilder {
    /// The input's dimensions after the batch the layer will take.
    fn input_dims(&self) -> Vec<usize>;
    /// Builds the layer under `root` (Keras' unique names from `names`).
    fn build_layer(self, root: &nn::Path, names: &mut Names) -> Result<Box<dyn Layer>>;
}

/// `impl nn::ModuleT` for a [`Layer`]: `forward_t(xs, true)` is a training forward, `false`
/// an inference one; constraints are applied first (tch's interface has no call after the
/// optimizer step); a refused input panics with the error [`Layer::forward`] returns.
macro_rules! module_t {
    ($(#[$doc:meta])* $t:ty) => {
        $(#[$doc])*
        impl tch::nn::ModuleT for $t {
            fn forward_t(&self, xs: &tch::Tensor, train: bool) -> tch::Tensor {
                $crate::layers::module_forward(self, xs, train)
            }
        }
    };
}
pub(crate) use module_t;

/// The [`Layer`] methods every quantized layer answers from its [`QBase`] (`self.base`, or the
/// field path given): name,
/// input dimensions, EBOPs, beta, the kept EBOPs, `as_any`.
macro_rules! qbase_layer_methods {
    () => {
        $crate::layers::qbase_layer_methods!(base);
    };
    ($($base:ident).+) => {
        fn name(&self) -> &str {
            &self.$($base).+.name
        }
        fn input_dims(&self) -> &[usize] {
            &self.$($base).+.input_dims
        }
        fn ebops(&self) -> u32 {
            self.$($base).+.ebops()
        }
        fn beta(&self) -> Option<f64> {
            self.$($base).+.enable_ebops.then(|| self.$($base).+.beta.get())
        }
        fn set_beta(&self, beta: f64) -> $crate::Result<()> {
            self.$($base).+.set_beta(beta)
        }
        fn restore_ebops(&self, ebops: u32) {
            *self.$($base).+.ebops.borrow_mut() = $crate::layers::Ebops::Value(ebops);
        }
        fn trainable(&self) -> bool {
            self.$($base).+.trainable
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    };
}
pub(crate) use qbase_layer_methods;

/// The [`Layer`] methods of a layer with a kernel and an optional bias and their quantizers
/// (fields `base`, `kernel`, `bias`, `kq`, `bq`): its quantizers (output, input, kernel, bias)
/// and its Keras variables.
macro_rules! kernel_layer_methods {
    () => {
        fn quantizers(&self) -> Vec<&$crate::layers::Named> {
            self.base
                .oq
                .iter()
                .chain(self.base.iq.iter())
                .chain([&self.kq])
                .chain(self.bq.as_ref())
                .collect()
        }
        fn keras_variables(&self) -> Vec<(String, tch::Tensor)> {
            let mut v = $crate::layers::kernel_bias_variables(
                &self.base.name,
                &self.kernel,
                self.bias.as_ref(),
            );
            v.extend($crate::layers::quantizer_variables(&self.quantizers()));
            v
        }
    };
}
pub(crate) use kernel_layer_methods;

/// `impl LayerBuilder` for a builder with an `input_dims` field and a `build` method.
macro_rules! layer_builder {
    ($t:ty) => {
        impl $crate::layers::LayerBuilder for $t {
            fn input_dims(&self) -> Vec<usize> {
                self.input_dims.clone()
            }
            fn build_layer(
                self,
                root: &tch::nn::Path,
                names: &mut $crate::layers::Names,
            ) -> $crate::Result<Box<dyn $crate::layers::Layer>> {
                Ok(Box::new(self.build(root, names)?))
            }
        }
    };
}
pub(crate) use layer_builder;

/// The setters every quantized layer's builder has: `beta`, `name`, `ebops_tape`,
/// `enable_ebops`, `ebops_factor`, `trainable` (fields of those names).
macro_rules! builder_base_setters {
    () => {
        /// The EBOPs weight in the loss (finite, `>= 0`; hgq2's `beta0`).
        pub fn beta(mut self, beta: f64) -> Self {
            self.beta = beta;
            self
        }
        /// The layer's name (default: Keras' automatic name for the class).
        pub fn name(mut self, name: impl Into<String>) -> Self {
            self.name = Some(name.into());
            self
        }
        /// Records the layer's `beta * ebops` of every training forward into `tape` (for a
        /// loss built around tch's [`tch::nn::ModuleT`], whose forward returns the output
        /// alone).
        pub fn ebops_tape(mut self, tape: &$crate::layers::EbopsTape) -> Self {
            self.tape = Some(tape.clone());
            self
        }
        /// hgq2's `enable_ebops`: `false` leaves the layer without EBOPs (and their loss).
        /// Default: `true`.
        pub fn enable_ebops(mut self, on: bool) -> Self {
            self.enable_ebops = on;
            self
        }
        /// hgq2's `ebops_factor`: the layer's EBOPs are scaled by it (finite, `>= 0`).
        /// Default: 1.
        pub fn ebops_factor(mut self, f: f64) -> Self {
            self.ebops_factor = f;
            self
        }
        /// Keras' `trainable`: `false` freezes the layer's own weights (kernel, bias, the
        /// normalization's scale and offset: no gradient reaches them, so no optimizer moves
        /// them; a batch-normalized dense layer then also normalizes with its moving
        /// statistics in training). As hgq2 0.2.0 does, the quantizers' bit widths still
        /// train and WRAP quantizers still trace, and the EBOPs still count. Default: `true`.
        pub fn trainable(mut self, t: bool) -> Self {
            self.trainable = t;
            self
        }
    };
}
pub(crate) use builder_base_setters;

/// The setters of a builder of a layer with a kernel and a bias: `activation`, `kq`, `bq`
/// (fields of those names; the quantizers' `Option`s).
macro_rules! kernel_builder_setters {
    () => {
        /// The activation after the layer.
        pub fn activation(mut self, a: $crate::layers::Activation) -> Self {
            self.activation = a;
            self
        }
        /// The kernel quantizer's configuration.
        pub fn kq(mut self, c: hgq_config::QuantizerConfig) -> Self {
            self.kq = Some(c);
            self
        }
        /// The bias quantizer's configuration.
        pub fn bq(mut self, c: hgq_config::QuantizerConfig) -> Self {
            self.bq = Some(c);
            self
        }
    };
}
pub(crate) use kernel_builder_setters;

/// [`builder_base_setters`] and the input and output quantizers' setters `iq`, `no_iq`, `oq`
/// (fields `iq`, `enable_iq`, `oq`).
macro_rules! builder_common_setters {
    () => {
        $crate::layers::builder_base_setters!();
        /// The input quantizer's configuration (default: hgq2's `default`/datalane).
        pub fn iq(mut self, c: hgq_config::QuantizerConfig) -> Self {
            self.iq = Some(c);
            self.enable_iq = true;
            self
        }
        /// No input quantizer (hgq2's `enable_iq=False`: the input is taken as it is, for
        /// inputs quantized already, e.g. by the output quantizer of the layer before); EBOPs
        /// go off with it, as hgq2's default has them (they need the input's bit widths).
        pub fn no_iq(mut self) -> Self {
            self.iq = None;
            self.enable_iq = false;
            self.enable_ebops = false;
            self
        }
        /// An output quantizer of this configuration (hgq2's `enable_oq=True`, `oq_conf`;
        /// hgq2's default is `QuantizerConfig('default', 'datalane')`): the layer's output,
        /// after its activation, goes through it. Default: none.
        pub fn oq(mut self, c: hgq_config::QuantizerConfig) -> Self {
            self.oq = Some(c);
            self
        }
    };
}
pub(crate) use builder_common_setters;

pub(crate) fn module_forward(l: &dyn Layer, xs: &Tensor, train: bool) -> Tensor {
    let mode = if train {
        CallMode::Training
    } else {
        CallMode::Inference
    };
    match l.apply_constraints().and_then(|()| l.forward(xs, mode)) {
        Ok(out) => out.y,
        Err(e) => panic!("{}: {e}", l.name()),
    }
}

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
    /// The activation as the model JSON writes it (`None`: `linear`).
    pub fn to_config(self) -> Option<hgq_config::Activation> {
        match self {
            Activation::Linear => None,
            Activation::Relu => Some(hgq_config::Activation::Relu),
        }
    }

    /// The activation of a model JSON, where this crate has it (`linear` and `relu`).
    pub fn from_config(a: Option<hgq_config::Activation>) -> Option<Self> {
        match a {
            None => Some(Activation::Linear),
            Some(hgq_config::Activation::Relu) => Some(Activation::Relu),
            Some(_) => None,
        }
    }

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

/// A layer's EBOPs of its last training or tracing call: kept as the (detached) tensor the call
/// computed, read from the device only when asked, so that a training step reads nothing back
/// to the host.
#[derive(Debug)]
pub(crate) enum Ebops {
    Value(u32),
    Pending(Tensor),
}

impl Ebops {
    fn value(&self) -> u32 {
        match self {
            Ebops::Value(v) => *v,
            Ebops::Pending(t) => {
                crate::host::note("EBOPs");
                ebops_u32(t.double_value(&[]))
            }
        }
    }
}

/// `ebops_factor` must be finite and `>= 0`.
pub(crate) fn check_ebops_factor(f: f64) -> Result<()> {
    if f.is_finite() && f >= 0.0 {
        Ok(())
    } else {
        Err(TorchError::Invalid {
            what: "ebops_factor",
            why: format!("{f} (must be finite, >= 0)"),
        })
    }
}

/// `beta` must be finite and `>= 0`.
pub(crate) fn check_beta(beta: f64) -> Result<()> {
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
pub(crate) fn ebops_u32(v: f64) -> u32 {
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

/// What the quantized layers share: the name, the input quantizer, `beta`, the EBOPs of the
/// last training or tracing call and the tape they are recorded to.
#[derive(Debug)]
pub(crate) struct QBase {
    pub(crate) name: String,
    pub(crate) input_dims: Vec<usize>,
    pub(crate) beta: Cell<f64>,
    /// The initial `beta` (hgq2's `beta0`, what the Keras JSON holds whatever a schedule or
    /// an archive set since).
    pub(crate) beta0: f64,
    pub(crate) tape: Option<EbopsTape>,
    pub(crate) ebops: RefCell<Ebops>,
    /// The input quantizer; `None` is hgq2's `enable_iq=False` (the input taken as it is).
    pub(crate) iq: Option<Named>,
    /// The output quantizer (hgq2's `enable_oq`), if any.
    pub(crate) oq: Option<Named>,
    /// hgq2's `enable_ebops`: without, the layer has no EBOPs (nor `beta`).
    pub(crate) enable_ebops: bool,
    /// hgq2's `ebops_factor`: the EBOPs computed are scaled by it.
    pub(crate) ebops_factor: f64,
    /// Keras' `trainable`: `false` freezes the layer's own weights (hgq2 0.2.0 keeps its
    /// quantizers' bit widths trained).
    pub(crate) trainable: bool,
}

impl QBase {
    pub(crate) fn ebops(&self) -> u32 {
        let v = self.ebops.borrow().value();
        *self.ebops.borrow_mut() = Ebops::Value(v);
        v
    }

    pub(crate) fn set_beta(&self, beta: f64) -> Result<()> {
        check_beta(beta)?;
        self.beta.set(beta);
        Ok(())
    }

    /// Keeps `e` (the layer's EBOPs of this call) and returns `beta * e` for the loss, also
    /// recorded to the tape in training; zero in inference (where `e` is not computed).
    pub(crate) fn ebops_loss(
        &self,
        mode: CallMode,
        e: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        if mode == CallMode::Inference || !self.enable_ebops {
            return Ok(Tensor::from(0.0f32));
        }
        let e = e()?;
        let e = if self.ebops_factor == 1.0 {
            e
        } else {
            e.f_mul_scalar(self.ebops_factor)?
        };
        *self.ebops.borrow_mut() = Ebops::Pending(e.f_detach()?);
        let loss = e.f_mul_scalar(self.beta.get())?;
        if let (Some(tape), CallMode::Training) = (&self.tape, mode) {
            tape.record(&loss);
        }
        Ok(loss)
    }

    /// One of the layer's own weights as the forward uses it: itself, or, in a frozen layer
    /// (`trainable=False`), detached (no gradient reaches it, so no optimizer moves it).
    pub(crate) fn weight(&self, w: &Tensor) -> Tensor {
        if self.trainable {
            w.shallow_clone()
        } else {
            w.detach()
        }
    }

    /// A layer's kernel and bias (if any) through their quantizers. They are the same on every
    /// data-parallel process, so their quantizers' tracking needs no collective
    /// ([`hgq_core::sync::suspend`]).
    pub(crate) fn kernel_and_bias(
        &self,
        (kq, kernel): (&Named, &Tensor),
        bias: Option<(&Named, &Tensor)>,
        mode: CallMode,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let _local = hgq_core::sync::suspend();
        let k = kq.q.forward(&self.weight(kernel), mode)?;
        let b = match bias {
            Some((bq, b)) => Some(bq.q.forward(&self.weight(b), mode)?),
            None => None,
        };
        Ok((k, b))
    }

    /// `y` through the output quantizer, if the layer has one.
    pub(crate) fn output(&self, y: Tensor, mode: CallMode) -> Result<Tensor> {
        match &self.oq {
            Some(oq) => oq.q.forward(&y, mode),
            None => Ok(y),
        }
    }

    /// `x` through the input quantizer, if the layer has one.
    pub(crate) fn input(&self, x: &Tensor, mode: CallMode) -> Result<Tensor> {
        match &self.iq {
            Some(iq) => iq.q.forward(x, mode),
            None => Ok(x.shallow_clone()),
        }
    }

    /// The input quantizer's bit widths for one sample (`[1, *input_dims]`); EBOPs need them.
    pub(crate) fn input_bits(&self) -> Result<Tensor> {
        let one_sample: Vec<i64> = std::iter::once(1)
            .chain(self.input_dims.iter().map(|&d| d as i64))
            .collect();
        match &self.iq {
            Some(iq) => iq.q.bits_like(&one_sample),
            None => Err(TorchError::Invalid {
                what: "EBOPs",
                why: format!("{} has no input quantizer", self.name),
            }),
        }
    }

    /// hgq2's rule: EBOPs need the input quantizer.
    pub(crate) fn check_ebops_need_iq(name: &str, iq: bool, ebops: bool) -> Result<()> {
        if ebops && !iq {
            return Err(TorchError::Invalid {
                what: "enable_ebops",
                why: format!("{name}: EBOPs need the input quantizer (enable_iq)"),
            });
        }
        Ok(())
    }
}

/// The input must fit the layer (kind and device of `like`, `[batch, *dims]`) before any
/// quantizer sees it: a quantizer tracking its integer bits would otherwise store them for a
/// call that fails later.
pub(crate) fn check_input(
    what: &'static str,
    x: &Tensor,
    like: &Tensor,
    dims: &[usize],
) -> Result<()> {
    let kind = x.f_kind()?;
    if kind != like.kind() {
        return Err(TorchError::Kind { what, kind });
    }
    if x.device() != like.device() {
        return Err(TorchError::Device {
            what,
            expected: x.device(),
            got: like.device(),
        });
    }
    reshape::check_dims(&x.size(), dims)
}

/// The quantizer configuration given, else hgq2's default for `place`.
pub(crate) fn config_or_default(
    c: Option<QuantizerConfig>,
    place: Place,
) -> Result<QuantizerConfig> {
    match c {
        Some(c) => Ok(c),
        None => Ok(QuantizerConfig::builder_default(place).build()?),
    }
}

/// Builds a layer's quantizer `{layer}_{suffix}` under `p` (the layer's path), named as Keras
/// names it: one counter per quantizer class over the model (`fixed_point_quantizer_kif_1`).
pub(crate) fn named_quantizer(
    names: &mut Names,
    p: &nn::Path,
    layer: &str,
    suffix: &str,
    config: QuantizerConfig,
    shape: &[Option<usize>],
) -> Result<Named> {
    let qname = format!("{layer}_{suffix}");
    let core = config.to_core()?;
    let inner = names.next(quantizer_class(&core));
    let qp = p / qname.as_str() / inner.as_str();
    let q = Quantizer::new(&qp, &core, shape)?;
    Ok(Named {
        q,
        config,
        keras_path: format!("{layer}/{qname}/{inner}"),
    })
}

/// Keras' automatic name of a quantizer's inner layer (`fixed_point_quantizer_kif`, ...).
pub(crate) fn quantizer_class(core: &hgq_config::CoreQuantizer) -> &'static str {
    match &core.spec {
        hgq_config::convert::QuantizerSpec::Kbi(_) => "fixed_point_quantizer_kbi",
        hgq_config::convert::QuantizerSpec::Kif(_) => "fixed_point_quantizer_kif",
        hgq_config::convert::QuantizerSpec::Float(_) => "float_point_quantizer",
        hgq_config::convert::QuantizerSpec::Dummy => "dummy_quantizer",
    }
}

/// A layer's output and input quantizers (`{layer}_oq`, `{layer}_iq`; `None` where the layer
/// has none), made in hgq2's order: the output quantizer first (its base class makes it), so
/// it takes the first number of its class.
#[allow(clippy::too_many_arguments)]
pub(crate) fn io_quantizers(
    names: &mut Names,
    p: &nn::Path,
    layer: &str,
    oq: Option<QuantizerConfig>,
    output_dims: &[usize],
    iq: Option<QuantizerConfig>,
    input_dims: &[usize],
) -> Result<(Option<Named>, Option<Named>)> {
    let oq = match oq {
        Some(c) => Some(named_quantizer(
            names,
            p,
            layer,
            "oq",
            c,
            &batch_shape(output_dims),
        )?),
        None => None,
    };
    let iq = match iq {
        Some(c) => Some(named_quantizer(
            names,
            p,
            layer,
            "iq",
            c,
            &batch_shape(input_dims),
        )?),
        None => None,
    };
    Ok((oq, iq))
}

/// `[None, *dims]`: a quantizer's input shape for a batch of `dims`.
pub(crate) fn batch_shape(dims: &[usize]) -> Vec<Option<usize>> {
    std::iter::once(None)
        .chain(dims.iter().map(|&d| Some(d)))
        .collect()
}

/// A quantizer variable's Keras path: hgq2 keeps the stochastic rounding's seed state in a
/// Keras `SeedGenerator` object of the quantizer (`.../seed_generator/seed_generator_state`).
pub(crate) fn variable_path(quantizer: &str, name: hgq_core::quantizer::VarName) -> String {
    match name {
        hgq_core::quantizer::VarName::SeedState => format!("{quantizer}/seed_generator/{name}"),
        _ => format!("{quantizer}/{name}"),
    }
}

/// A layer's `kernel` and `bias` (if any) with their Keras paths (`{layer}/kernel`, ...).
pub(crate) fn kernel_bias_variables(
    layer: &str,
    kernel: &Tensor,
    bias: Option<&Tensor>,
) -> Vec<(String, Tensor)> {
    std::iter::once((format!("{layer}/kernel"), kernel.shallow_clone()))
        .chain(bias.map(|b| (format!("{layer}/bias"), b.shallow_clone())))
        .collect()
}

/// The variables of `quantizers` with their Keras paths.
pub(crate) fn quantizer_variables(quantizers: &[&Named]) -> Vec<(String, Tensor)> {
    let mut v = Vec::new();
    for q in quantizers {
        for (n, t) in q.q.variables() {
            v.push((variable_path(&q.keras_path, n), t));
        }
    }
    v
}
