//! hgq2's `QEinsumDense`: Keras' `EinsumDense` with quantized input, kernel and bias,
//! `act(einsum(equation, iq(x), kq(kernel)) + bq(bias))`. EBOPs: the equation's inputs
//! contracted to a scalar over the bit widths, `einsum("{lhs}->", bits_in, bits_kernel)`, plus
//! `mean(bits_bias)` per output value, scaled by `parallelization_factor / n_parallel`.
use std::cell::{Cell, RefCell};

use hgq_config::sequential::{LayerSpec, QEinsumDenseSpec, einsum_shapes};
use hgq_config::{Place, QuantizerConfig};
use hgq_core::CallMode;
use tch::{Kind, Tensor, nn};

use super::{
    Activation, Ebops, EbopsTape, Layer, Named, Names, Output, QBase, builder_common_setters,
    check_beta, check_input, config_or_default, io_quantizers, kernel_builder_setters,
    kernel_layer_methods, layer_builder, module_t, named_quantizer, qbase_layer_methods,
};
use crate::{Result, TorchError};

/// Builder of a [`QEinsumDense`]; defaults as hgq2 (the quantizers of [`super::QDense`]), no
/// bias unless `bias_axes` is given, no activation, `beta = 1e-5`.
#[derive(Debug, Clone)]
pub struct QEinsumDenseBuilder {
    pub(crate) equation: String,
    pub(crate) input_dims: Vec<usize>,
    pub(crate) output_shape: Vec<Option<usize>>,
    pub(crate) bias_axes: Option<String>,
    pub(crate) tape: Option<EbopsTape>,
    pub(crate) activation: Activation,
    pub(crate) beta: f64,
    pub(crate) name: Option<String>,
    pub(crate) iq: Option<QuantizerConfig>,
    pub(crate) oq: Option<QuantizerConfig>,
    pub(crate) enable_iq: bool,
    pub(crate) enable_ebops: bool,
    pub(crate) trainable: bool,
    pub(crate) ebops_factor: f64,
    pub(crate) parallelization_factor: Option<usize>,
    pub(crate) kq: Option<QuantizerConfig>,
    pub(crate) bq: Option<QuantizerConfig>,
}

impl QEinsumDenseBuilder {
    builder_common_setters!();
    kernel_builder_setters!();
    /// The output axes that have a bias (Keras' `bias_axes`, letters of the equation's
    /// output). Default: no bias.
    pub fn bias_axes(mut self, axes: impl Into<String>) -> Self {
        self.bias_axes = Some(axes.into());
        self
    }
    /// hgq2's `parallelization_factor` (at least 1). Default: `n_parallel`.
    pub fn parallelization_factor(mut self, p: usize) -> Self {
        self.parallelization_factor = Some(p);
        self
    }

    /// Builds the layer under `root / name`; `names` gives Keras' unique names.
    pub fn build(self, root: &nn::Path, names: &mut Names) -> Result<QEinsumDense> {
        check_beta(self.beta)?;
        super::check_ebops_factor(self.ebops_factor)?;
        QBase::check_ebops_need_iq("the layer", self.enable_iq, self.enable_ebops)?;
        if self.parallelization_factor == Some(0) {
            return Err(TorchError::Invalid {
                what: "parallelization_factor",
                why: "0 (at least 1)".into(),
            });
        }
        if self.input_dims.is_empty() || self.input_dims.contains(&0) {
            return Err(TorchError::Invalid {
                what: "QEinsumDense input dimensions",
                why: format!("{:?} (positive sizes)", self.input_dims),
            });
        }
        let shapes = einsum_shapes(
            &self.equation,
            self.bias_axes.as_deref(),
            &self.input_dims,
            &self.output_shape,
        )?;
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| names.next("q_einsum_dense"));
        let p = root / name.as_str();
        let iq_conf = config_or_default(self.iq, Place::Datalane)?;
        let kq_conf = config_or_default(self.kq, Place::Weight)?;
        let bq_conf = config_or_default(self.bq, Place::Bias)?;
        let (oq, iq) = io_quantizers(
            names,
            &p,
            &name,
            self.oq,
            &shapes.output,
            self.enable_iq.then_some(iq_conf),
            &self.input_dims,
        )?;
        let some = |d: &[usize]| d.iter().map(|&d| Some(d)).collect::<Vec<_>>();
        let kq = named_quantizer(names, &p, &name, "kq", kq_conf, &some(&shapes.kernel))?;
        let bq = match &shapes.bias {
            Some(b) => Some(named_quantizer(names, &p, &name, "bq", bq_conf, &some(b))?),
            None => None,
        };
        let (fan_in, fan_out) = fans(&shapes.kernel);
        // Keras' glorot_uniform (fans as Keras computes them for the kernel's shape) and
        // zeros.
        let limit = (6.0 / (fan_in + fan_out).max(1.0)).sqrt();
        let to_i64 = |d: &[usize]| d.iter().map(|&d| d as i64).collect::<Vec<_>>();
        let kernel = p.var(
            "kernel",
            &to_i64(&shapes.kernel),
            nn::Init::Uniform {
                lo: -limit,
                up: limit,
            },
        );
        let bias = shapes
            .bias
            .as_ref()
            .map(|b| p.var("bias", &to_i64(b), nn::Init::Const(0.0)));
        Ok(QEinsumDense {
            base: QBase {
                name,
                input_dims: self.input_dims,
                beta: Cell::new(self.beta),
                beta0: self.beta,
                tape: self.tape,
                ebops: RefCell::new(Ebops::Value(0)),
                iq,
                oq,
                enable_ebops: self.enable_ebops,
                trainable: self.trainable,
                ebops_factor: self.ebops_factor,
            },
            equation: self.equation,
            output_shape: self.output_shape,
            bias_axes: self.bias_axes,
            output_dims: shapes.output,
            n_parallel: shapes.n_parallel,
            activation: self.activation,
            kernel,
            bias,
            kq,
            bq,
            parallelization_factor: self.parallelization_factor,
        })
    }
}

layer_builder!(QEinsumDenseBuilder);

/// Keras' fans of a kernel shape: 2-D `(rows, cols)`; more, the leading axes as the receptive
/// field.
fn fans(shape: &[usize]) -> (f64, f64) {
    match shape {
        [] => (1.0, 1.0),
        [n] => (*n as f64, *n as f64),
        [a, b] => (*a as f64, *b as f64),
        _ => {
            let n = shape.len();
            let rf: usize = shape[..n - 2].iter().product();
            ((shape[n - 2] * rf) as f64, (shape[n - 1] * rf) as f64)
        }
    }
}

/// hgq2's `QEinsumDense`: `act(einsum(equation, iq(x), kq(kernel)) + bq(bias))`; EBOPs
/// `einsum("{lhs}->", bits_in, bits_kernel) + mean(bits_bias) * outputs`, scaled by
/// `parallelization_factor / n_parallel`.
///
/// ```
/// use hgq_torch::layers::{Layer, QEinsumDense};
/// use hgq_torch::hgq_core::CallMode;
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// // Dense over the features of each of 4 particles.
/// let l = QEinsumDense::builder("abc,cd->abd", &[4, 6], &[Some(4), Some(5)])
///     .bias_axes("d")
///     .build(&vs.root(), &mut Default::default())?;
/// let out = l.forward(&Tensor::randn([2, 4, 6], (Kind::Float, Device::Cpu)), CallMode::Training)?;
/// assert_eq!(out.y.size(), [2, 4, 5]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QEinsumDense {
    pub(crate) base: QBase,
    pub(crate) equation: String,
    pub(crate) output_shape: Vec<Option<usize>>,
    pub(crate) bias_axes: Option<String>,
    pub(crate) output_dims: Vec<usize>,
    pub(crate) n_parallel: usize,
    pub(crate) activation: Activation,
    pub(crate) kernel: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) kq: Named,
    pub(crate) bq: Option<Named>,
    pub(crate) parallelization_factor: Option<usize>,
}

impl QEinsumDense {
    /// A builder of `einsum(equation, x, kernel)` for inputs `[batch, *input_dims]`;
    /// `output_shape` is Keras' (the output after the batch, `None` where the input gives the
    /// size).
    pub fn builder(
        equation: &str,
        input_dims: &[usize],
        output_shape: &[Option<usize>],
    ) -> QEinsumDenseBuilder {
        QEinsumDenseBuilder {
            equation: equation.to_string(),
            input_dims: input_dims.to_vec(),
            output_shape: output_shape.to_vec(),
            bias_axes: None,
            tape: None,
            activation: Activation::Linear,
            beta: 1e-5,
            name: None,
            iq: None,
            oq: None,
            enable_iq: true,
            enable_ebops: true,
            trainable: true,
            ebops_factor: 1.0,
            parallelization_factor: None,
            kq: None,
            bq: None,
        }
    }

    /// The equation.
    pub fn equation(&self) -> &str {
        &self.equation
    }
    /// The raw kernel (Keras' shape from the equation).
    pub fn kernel(&self) -> &Tensor {
        &self.kernel
    }
    /// The raw bias.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    /// The kernel quantizer.
    pub fn kq(&self) -> &Named {
        &self.kq
    }
    /// hgq2's `n_parallel`.
    pub fn n_parallel(&self) -> usize {
        self.n_parallel
    }

    /// EBOPs from the current bit widths (differentiable through them).
    pub fn compute_ebops(&self) -> Result<Tensor> {
        let bw_inp = self.base.input_bits()?;
        let dev = bw_inp.device();
        let bw_ker = self
            .kq
            .q
            .bits_like(self.kernel.size().as_slice())?
            .f_to_device(dev)?;
        let lhs = self.equation.split("->").next().unwrap_or_default();
        let mut e = Tensor::f_einsum(&format!("{lhs}->"), &[&bw_inp, &bw_ker], None::<&[i64]>)?;
        if let (Some(bq), Some(b)) = (&self.bq, &self.bias) {
            let bw_bias = bq.q.bits_like(b.size().as_slice())?.f_to_device(dev)?;
            let size: usize = self.output_dims.iter().product();
            e = e.f_add(&(bw_bias.f_mean(Kind::Float)? * size as f64))?;
        }
        let pf = self.parallelization_factor.unwrap_or(self.n_parallel);
        Ok(e.f_mul_scalar(pf as f64)?
            .f_div_scalar(self.n_parallel as f64)?)
    }
}

impl Layer for QEinsumDense {
    qbase_layer_methods!();

    fn output_dims(&self) -> Vec<usize> {
        self.output_dims.clone()
    }
    fn forward(&self, x: &Tensor, mode: CallMode) -> Result<Output> {
        check_input("QEinsumDense input", x, &self.kernel, &self.base.input_dims)?;
        let bias = self.bq.as_ref().zip(self.bias.as_ref());
        let (k, qb) = self
            .base
            .kernel_and_bias((&self.kq, &self.kernel), bias, mode)?;
        let xq = self.base.input(x, mode)?;
        let mut y = Tensor::f_einsum(&self.equation, &[&xq, &k], None::<&[i64]>)?;
        if let Some(qb) = qb {
            y = y.f_add(&qb)?;
        }
        let y = self.activation.apply(y);
        let y = self.base.output(y, mode)?;
        let ebops_loss = self.base.ebops_loss(mode, || self.compute_ebops())?;
        Ok(Output { y, ebops_loss })
    }

    kernel_layer_methods!();
    fn keras_spec(&self) -> Result<LayerSpec> {
        let mut s = QEinsumDenseSpec::new(&self.equation, self.output_shape.clone())
            .name(self.name())
            .trainable(self.base.trainable)
            .activation(self.activation.to_config())
            .beta0(self.base.beta0)
            .iq(self.base.iq.as_ref().map(|q| q.config.clone()))
            .oq(self.base.oq.as_ref().map(|q| q.config.clone()))
            .enable_ebops(self.base.enable_ebops)
            .ebops_factor(self.base.ebops_factor)
            .parallelization_factor(self.parallelization_factor.map_or(-1, |p| p as i64))
            .kq(self.kq.config.clone());
        if let (Some(axes), Some(bq)) = (&self.bias_axes, &self.bq) {
            s = s.bias_axes(axes.clone()).bq(bq.config.clone());
        }
        Ok(s.into())
    }
}

module_t!(QEinsumDense);
