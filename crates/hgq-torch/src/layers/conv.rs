//! hgq2's `QConv1D` and `QConv2D`: `act(conv(iq(x), kq(kernel)) + bq(bias))`, channels last,
//! with EBOPs `sum(conv(bits_in, bits_kernel)) + mean(bits_bias) * (input positions) *
//! filters`, the bias term counted over the input's positions as hgq2 counts it.
use std::cell::{Cell, OnceCell, RefCell};

use hgq_config::sequential::{LayerSpec, QConvSpec};
use hgq_config::{Place, QuantizerConfig};
use hgq_core::CallMode;
use tch::{Kind, Tensor, nn};

use super::{
    Activation, Ebops, EbopsTape, Layer, Named, Names, Output, Padding, Pads, QBase,
    builder_common_setters, check_beta, check_input, config_or_default, io_quantizers,
    kernel_builder_setters, kernel_layer_methods, layer_builder, module_t, named_quantizer,
    qbase_layer_methods,
};
use crate::{Result, TorchError};

/// `(before, after)` padding and the output size of one spatial axis under `padding`, as
/// Keras computes them (`None`: the window does not fit).
pub(crate) fn geometry(
    padding: Padding,
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> Option<((usize, usize), usize)> {
    let span = dilation * (kernel - 1) + 1;
    let (pad, padded) = match padding {
        Padding::Valid => ((0, 0), input),
        Padding::Same => {
            let out = input.div_ceil(stride);
            let total = ((out - 1) * stride + span).saturating_sub(input);
            ((total / 2, total - total / 2), input + total)
        }
        Padding::Causal => ((span - 1, 0), input + span - 1),
    };
    (padded >= span).then(|| (pad, (padded - span) / stride + 1))
}

/// Keras' padding as torch takes it: per axis where it is symmetric (the operation pads),
/// else the flat list of a pad operation (last axis first), the operation padding nothing.
pub(crate) enum TorchPad {
    Symmetric(Vec<i64>),
    Explicit(Vec<i64>),
}

impl TorchPad {
    pub(crate) fn of(pads: &[(usize, usize)]) -> Self {
        if pads.iter().all(|(a, b)| a == b) {
            TorchPad::Symmetric(pads.iter().map(|&(a, _)| a as i64).collect())
        } else {
            TorchPad::Explicit(
                pads.iter()
                    .rev()
                    .flat_map(|&(a, b)| [a as i64, b as i64])
                    .collect(),
            )
        }
    }
}

/// `[n, *positions, channels]` to `[n, channels, *positions]` (torch's layout), and back.
pub(crate) fn channels_first(x: &Tensor, rank: usize) -> Result<Tensor> {
    let order: &[i64] = if rank == 1 { &[0, 2, 1] } else { &[0, 3, 1, 2] };
    Ok(x.f_permute(order)?)
}

/// `[n, channels, *positions]` back to Keras' `[n, *positions, channels]`.
pub(crate) fn channels_last(x: &Tensor, rank: usize) -> Result<Tensor> {
    let order: &[i64] = if rank == 1 { &[0, 2, 1] } else { &[0, 2, 3, 1] };
    Ok(x.f_permute(order)?)
}

/// Builder of a [`QConv`]; defaults as hgq2 (and Keras): strides 1, `valid` padding,
/// dilation 1, one group, a bias, no activation, `beta = 1e-5`, the quantizers `iq`
/// `default`/datalane, `kq` `default`/weight, `bq` `default`/bias.
#[derive(Debug, Clone)]
pub struct QConvBuilder {
    input_dims: Vec<usize>,
    filters: usize,
    kernel_size: Vec<usize>,
    strides: Vec<usize>,
    padding: Padding,
    dilation: Vec<usize>,
    groups: usize,
    activation: Activation,
    use_bias: bool,
    beta: f64,
    name: Option<String>,
    tape: Option<EbopsTape>,
    iq: Option<QuantizerConfig>,
    oq: Option<QuantizerConfig>,
    enable_iq: bool,
    enable_ebops: bool,
    trainable: bool,
    ebops_factor: f64,
    parallelization_factor: Option<usize>,
    kq: Option<QuantizerConfig>,
    bq: Option<QuantizerConfig>,
}

impl QConvBuilder {
    builder_common_setters!();
    kernel_builder_setters!();
    /// hgq2's `parallelization_factor`: how many outputs the firmware computes at once (its
    /// EBOPs scale by it over the layer's `n_parallel`); at least 1. Default: `n_parallel`,
    /// every output at once.
    pub fn parallelization_factor(mut self, p: usize) -> Self {
        self.parallelization_factor = Some(p);
        self
    }
    /// Strides, one per spatial axis.
    pub fn strides(mut self, s: &[usize]) -> Self {
        self.strides = s.to_vec();
        self
    }
    /// The padding.
    pub fn padding(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }
    /// Dilation rates, one per spatial axis (Keras refuses dilation above 1 with strides
    /// above 1).
    pub fn dilation(mut self, d: &[usize]) -> Self {
        self.dilation = d.to_vec();
        self
    }
    /// Groups: the channels and the filters are split into this many groups, each filter
    /// seeing the channels of its group.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    /// Whether the layer has a bias.
    pub fn use_bias(mut self, b: bool) -> Self {
        self.use_bias = b;
        self
    }

    fn invalid(&self, why: String) -> TorchError {
        TorchError::Invalid {
            what: "QConv geometry",
            why,
        }
    }

    /// The output's dimensions and each spatial axis' `(before, after)` padding.
    fn geometry(&self) -> Result<(Vec<usize>, Pads)> {
        let rank = self.kernel_size.len();
        if !(1..=2).contains(&rank) {
            return Err(self.invalid(format!("{rank} spatial axes (1 or 2)")));
        }
        if self.input_dims.len() != rank + 1 || self.input_dims.contains(&0) {
            return Err(self.invalid(format!(
                "input {:?} for {rank} spatial axes (positions and channels, all positive)",
                self.input_dims
            )));
        }
        let lens_ok = self.strides.len() == rank && self.dilation.len() == rank;
        let all = self
            .kernel_size
            .iter()
            .chain(&self.strides)
            .chain(&self.dilation);
        if !lens_ok || all.clone().any(|&v| v == 0) {
            return Err(self.invalid(format!(
                "kernel {:?}, strides {:?}, dilation {:?} (one positive value per spatial axis)",
                self.kernel_size, self.strides, self.dilation
            )));
        }
        if self.strides.iter().any(|&s| s > 1) && self.dilation.iter().any(|&d| d > 1) {
            return Err(self.invalid("strides and dilation both above 1 (Keras refuses)".into()));
        }
        if self.padding == Padding::Causal && rank != 1 {
            return Err(self.invalid("causal padding is for QConv1D only".into()));
        }
        let channels = self.input_dims[rank];
        if self.filters == 0
            || self.groups == 0
            || !channels.is_multiple_of(self.groups)
            || !self.filters.is_multiple_of(self.groups)
        {
            return Err(self.invalid(format!(
                "{} filters, {channels} channels, {} groups (positive, the groups dividing both)",
                self.filters, self.groups
            )));
        }
        let mut out = Vec::with_capacity(rank + 1);
        let mut pads = Vec::with_capacity(rank);
        for a in 0..rank {
            let (input, k) = (self.input_dims[a], self.kernel_size[a]);
            let Some((pad, n)) =
                geometry(self.padding, input, k, self.strides[a], self.dilation[a])
            else {
                return Err(self.invalid(format!(
                    "a window of {k} (dilation {}) over {input} positions with {} padding",
                    self.dilation[a],
                    self.padding.as_str()
                )));
            };
            out.push(n);
            pads.push(pad);
        }
        out.push(self.filters);
        Ok((out, pads))
    }

    /// Builds the layer under `root / name`; `names` gives Keras' unique names.
    pub fn build(self, root: &nn::Path, names: &mut Names) -> Result<QConv> {
        check_beta(self.beta)?;
        super::check_ebops_factor(self.ebops_factor)?;
        QBase::check_ebops_need_iq("the layer", self.enable_iq, self.enable_ebops)?;
        if self.parallelization_factor == Some(0) {
            return Err(TorchError::Invalid {
                what: "parallelization_factor",
                why: "0 (at least 1)".into(),
            });
        }
        let (output_dims, pads) = self.geometry()?;
        let rank = self.kernel_size.len();
        let base = if rank == 1 { "q_conv1d" } else { "q_conv2d" };
        let name = self.name.clone().unwrap_or_else(|| names.next(base));
        let p = root / name.as_str();
        let channels = self.input_dims[rank];
        let kernel_shape: Vec<usize> = self
            .kernel_size
            .iter()
            .copied()
            .chain([channels / self.groups, self.filters])
            .collect();
        let iq_conf = config_or_default(self.iq, Place::Datalane)?;
        let kq_conf = config_or_default(self.kq, Place::Weight)?;
        let bq_conf = config_or_default(self.bq, Place::Bias)?;
        let (oq, iq) = io_quantizers(
            names,
            &p,
            &name,
            self.oq,
            &output_dims,
            self.enable_iq.then_some(iq_conf),
            &self.input_dims,
        )?;
        let kq_shape: Vec<Option<usize>> = kernel_shape.iter().map(|&d| Some(d)).collect();
        let kq = named_quantizer(names, &p, &name, "kq", kq_conf, &kq_shape)?;
        let bq = if self.use_bias {
            Some(named_quantizer(
                names,
                &p,
                &name,
                "bq",
                bq_conf,
                &[Some(self.filters)],
            )?)
        } else {
            None
        };
        // Keras' glorot_uniform: fans over the receptive field.
        let receptive: usize = self.kernel_size.iter().product();
        let fans = receptive * (channels / self.groups + self.filters);
        let limit = (6.0 / fans as f64).sqrt();
        let dims: Vec<i64> = kernel_shape.iter().map(|&d| d as i64).collect();
        let kernel = p.var(
            "kernel",
            &dims,
            nn::Init::Uniform {
                lo: -limit,
                up: limit,
            },
        );
        let bias = self
            .use_bias
            .then(|| p.var("bias", &[self.filters as i64], nn::Init::Const(0.0)));
        Ok(QConv {
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
            output_dims,
            kernel_size: self.kernel_size,
            strides: self.strides,
            padding: self.padding,
            pads,
            dilation: self.dilation,
            groups: self.groups,
            activation: self.activation,
            kernel,
            bias,
            kq,
            bq,
            parallelization_factor: self.parallelization_factor,
            window_index: OnceCell::new(),
            native_windows: OnceCell::new(),
        })
    }
}

layer_builder!(QConvBuilder);

/// hgq2's `QConv1D` / `QConv2D` (channels last): `act(conv(iq(x), kq(kernel)) + bq(bias))`.
///
/// ```
/// use hgq_torch::layers::{Activation, Layer, Padding, QConv};
/// use hgq_torch::hgq_core::CallMode;
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// // 8 x 8 images of one channel, 4 filters of 3 x 3.
/// let conv = QConv::builder_2d([8, 8, 1], 4, [3, 3])
///     .activation(Activation::Relu)
///     .padding(Padding::Same)
///     .build(&vs.root(), &mut Default::default())?;
/// assert_eq!(conv.output_dims(), [8, 8, 4]);
/// let x = Tensor::rand([2, 8, 8, 1], (Kind::Float, Device::Cpu));
/// let out = conv.forward(&x, CallMode::Training)?;
/// assert_eq!(out.y.size(), [2, 8, 8, 4]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QConv {
    pub(crate) base: QBase,
    output_dims: Vec<usize>,
    kernel_size: Vec<usize>,
    strides: Vec<usize>,
    padding: Padding,
    /// `(before, after)` per spatial axis.
    pub(crate) pads: Pads,
    dilation: Vec<usize>,
    groups: usize,
    activation: Activation,
    kernel: Tensor,
    bias: Option<Tensor>,
    kq: Named,
    bq: Option<Named>,
    parallelization_factor: Option<usize>,
    /// [`QConv::window_index`], made at its first call.
    window_index: OnceCell<Tensor>,
    /// The native step's windows, made at its first step.
    pub(crate) native_windows: OnceCell<Vec<u32>>,
}

/// The most values [`QConv::conv_gather`] gathers for one call (batch x output positions x
/// window), where it is faster than libtorch's convolution on the CPU.
const GATHER_MAX: i64 = 3 << 17;

/// Every index of an array of shape `dims`, row-major.
pub(crate) fn positions(dims: &[usize]) -> impl Iterator<Item = Vec<usize>> + '_ {
    let total: usize = dims.iter().product();
    (0..total).map(move |mut j| {
        let mut at = vec![0; dims.len()];
        for d in (0..dims.len()).rev() {
            at[d] = j % dims[d];
            j /= dims[d];
        }
        at
    })
}

impl QConv {
    fn builder(input_dims: Vec<usize>, filters: usize, kernel_size: Vec<usize>) -> QConvBuilder {
        let rank = kernel_size.len();
        QConvBuilder {
            input_dims,
            filters,
            kernel_size,
            strides: vec![1; rank],
            padding: Padding::Valid,
            dilation: vec![1; rank],
            groups: 1,
            activation: Activation::Linear,
            use_bias: true,
            beta: 1e-5,
            name: None,
            tape: None,
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

    /// hgq2's `QConv1D` on inputs `[batch, length, channels]` (`input_dims = [length,
    /// channels]`): `filters` windows of `kernel` positions.
    pub fn builder_1d(input_dims: [usize; 2], filters: usize, kernel: usize) -> QConvBuilder {
        Self::builder(input_dims.to_vec(), filters, vec![kernel])
    }

    /// hgq2's `QConv2D` on inputs `[batch, height, width, channels]`: `filters` windows of
    /// `kernel = [kh, kw]`.
    pub fn builder_2d(input_dims: [usize; 3], filters: usize, kernel: [usize; 2]) -> QConvBuilder {
        Self::builder(input_dims.to_vec(), filters, kernel.to_vec())
    }

    /// Spatial axes: 1 (`QConv1D`) or 2 (`QConv2D`).
    pub fn rank(&self) -> usize {
        self.kernel_size.len()
    }
    /// Filters (output channels).
    pub fn filters(&self) -> usize {
        self.output_dims[self.rank()]
    }
    /// The window size per spatial axis.
    pub fn kernel_size(&self) -> &[usize] {
        &self.kernel_size
    }
    /// Strides per spatial axis.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    /// The padding.
    pub fn padding(&self) -> Padding {
        self.padding
    }
    /// Dilation rates per spatial axis.
    pub fn dilation(&self) -> &[usize] {
        &self.dilation
    }
    /// Groups.
    pub fn groups(&self) -> usize {
        self.groups
    }
    /// The activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }
    /// The raw kernel (`[*kernel_size, channels / groups, filters]`, Keras' layout).
    pub fn kernel(&self) -> &Tensor {
        &self.kernel
    }
    /// The raw bias.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    /// The input quantizer.
    pub fn iq(&self) -> Option<&Named> {
        self.base.iq.as_ref()
    }
    /// The kernel quantizer.
    pub fn kq(&self) -> &Named {
        &self.kq
    }
    /// The bias quantizer.
    pub fn bq(&self) -> Option<&Named> {
        self.bq.as_ref()
    }
    /// hgq2's `n_parallel`: the output's positions (what `parallelization_factor` defaults
    /// to; the products' EBOPs scale by their ratio).
    pub fn n_parallel(&self) -> usize {
        self.output_dims[..self.rank()].iter().product()
    }

    /// The parallelization factor given (`None`: hgq2's default, [`Self::n_parallel`]).
    pub fn parallelization_factor(&self) -> Option<usize> {
        self.parallelization_factor
    }

    /// The convolution of channels-last `x` (`[n, *positions, channels]`) with a Keras-layout
    /// kernel, as Keras' torch backend computes it: channels first for torch, symmetric
    /// padding given to the convolution, asymmetric padding as zeros around the input.
    fn conv(&self, x: &Tensor, kernel: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.conv_gather(x, kernel)? {
            return Ok(y);
        }
        let w_order: &[i64] = if self.rank() == 1 {
            &[2, 1, 0]
        } else {
            &[3, 2, 0, 1]
        };
        let mut xc = channels_first(x, self.rank())?;
        let w = kernel.f_permute(w_order)?;
        let padding = match TorchPad::of(&self.pads) {
            TorchPad::Symmetric(p) => p,
            TorchPad::Explicit(pad) => {
                xc = xc.f_constant_pad_nd(pad.as_slice())?;
                vec![0; self.rank()]
            }
        };
        let strides: Vec<i64> = self.strides.iter().map(|&s| s as i64).collect();
        let dilation: Vec<i64> = self.dilation.iter().map(|&d| d as i64).collect();
        let zeros = vec![0i64; self.rank()];
        // `_convolution` with TF32 off: libtorch lets cuDNN round float32 operands to TF32 (11
        // significant bits) by default, which quantized values of more bits do not survive; on
        // the CPU it is `convolution` itself. cuDNN's benchmark mode off, not deterministic
        // (libtorch's defaults).
        let y = xc.f_internal_convolution(
            &w,
            None::<&Tensor>,
            strides.as_slice(),
            padding.as_slice(),
            dilation.as_slice(),
            false,
            zeros.as_slice(),
            self.groups as i64,
            false,
            false,
            true,
            false,
        )?;
        channels_last(&y, self.rank())
    }

    /// The convolution on the CPU as one gather and one matrix product, channels last as
    /// Keras keeps them: the input's values under every window (`index_select` of the
    /// flattened, padded samples: im2col for the whole batch at once) times the kernel in
    /// Keras' layout (`[taps..., channels, filters]`, read as `[taps * channels, filters]`).
    /// Float32 on the CPU with one group, up to [`GATHER_MAX`] gathered values; `None`
    /// elsewhere (CUDA, float64, groups, larger calls: libtorch's convolution). For the small
    /// inputs HGQ trains this replaces oneDNN's per-call setup and the per-sample loop of
    /// libtorch's own im2col by three operations and their gradients (a matrix product's and
    /// a scatter-add). Each output sums the same products as
    /// `_convolution`'s: exact where the quantized operands make them exact, as for the
    /// outputs the firmware must match.
    fn conv_gather(&self, x: &Tensor, kernel: &Tensor) -> Result<Option<Tensor>> {
        let cpu = |t: &Tensor| t.device() == tch::Device::Cpu && t.kind() == Kind::Float;
        if !(cpu(x) && cpu(kernel)) || self.groups != 1 {
            return Ok(None);
        }
        let rank = self.rank();
        let n = x.size()[0];
        // Values under one window: its positions times the channels.
        let taps = (self.kernel_size.iter().product::<usize>() * self.base.input_dims[rank]) as i64;
        let outputs = self.output_dims[..rank].iter().product::<usize>() as i64;
        // Past this many gathered values oneDNN's direct convolution is the faster one (its
        // setup no longer dominates; `benches/RESULTS.md` has the crossover).
        if n.saturating_mul(outputs).saturating_mul(taps) > GATHER_MAX {
            return Ok(None);
        }
        let filters = self.filters() as i64;
        // Zeros around each sample where the padding asks for them (channels last: the pads
        // of the last axis come first, the channels get none).
        let x = if self.pads.iter().any(|&(a, b)| a + b > 0) {
            let pad: Vec<i64> = std::iter::once([0, 0])
                .chain(self.pads.iter().rev().map(|&(a, b)| [a as i64, b as i64]))
                .flatten()
                .collect();
            x.f_constant_pad_nd(pad.as_slice())?
        } else {
            x.shallow_clone()
        };
        let per_sample: i64 = x.size()[1..].iter().product();
        let index = self.window_index()?;
        let cols = x
            .f_reshape([n, per_sample])?
            .f_index_select(1, &index)?
            .f_reshape([-1, taps])?;
        let k = kernel.f_reshape([taps, filters])?;
        let mut dims: Vec<i64> = vec![n];
        dims.extend(self.output_dims[..rank].iter().map(|&d| d as i64));
        dims.push(filters);
        Ok(Some(cols.f_mm(&k)?.f_reshape(dims.as_slice())?))
    }

    /// For every output position and every tap of its window (row-major: positions, then
    /// the window's positions, then channels), the offset of the value it reads in one padded
    /// channels-last sample (every call's samples have the layer's input shape). Made once.
    fn window_index(&self) -> Result<Tensor> {
        if let Some(t) = self.window_index.get() {
            return Ok(t.shallow_clone());
        }
        let rank = self.rank();
        let channels = self.base.input_dims[rank] as i64;
        let padded: Vec<i64> = (0..rank)
            .map(|d| (self.base.input_dims[d] + self.pads[d].0 + self.pads[d].1) as i64)
            .collect();
        // Row-major strides of a padded sample `[*padded, channels]`.
        let mut stride = vec![channels; rank];
        for d in (0..rank.saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * padded[d + 1];
        }
        let out = &self.output_dims[..rank];
        let mut index = Vec::new();
        for o in positions(out) {
            for t in positions(&self.kernel_size) {
                let base: i64 = (0..rank)
                    .map(|d| {
                        let at = o[d] * self.strides[d] + t[d] * self.dilation[d];
                        at as i64 * stride[d]
                    })
                    .sum();
                index.extend((0..channels).map(|c| base + c));
            }
        }
        let t = Tensor::f_from_slice(&index)?;
        // Set here unless made meanwhile (the same values either way).
        let _ = self.window_index.set(t.shallow_clone());
        Ok(t)
    }

    /// EBOPs from the current bit widths (differentiable through them).
    pub fn compute_ebops(&self) -> Result<Tensor> {
        let bw_inp = self.base.input_bits()?;
        let bw_ker = self.kq.q.bits_like(self.kernel.size().as_slice())?;
        let bw_ker = bw_ker.f_to_device(bw_inp.device())?;
        let e = self.conv(&bw_inp, &bw_ker)?.f_sum(Kind::Float)?;
        // hgq2's `ebops * parallelization_factor / n_parallel` (the products only), in order.
        let n = self.n_parallel();
        let pf = self.parallelization_factor.unwrap_or(n);
        let mut e = e.f_mul_scalar(pf as f64)?.f_div_scalar(n as f64)?;
        if let Some(bq) = &self.bq {
            // hgq2 counts the bias over the input's positions (`prod(shape[:-1])` of the
            // one-sample input shape), not the output's.
            let positions: usize = self.base.input_dims[..self.rank()].iter().product();
            let bw_bias = bq.q.bits_like(&[self.filters() as i64])?;
            let dev = e.device();
            e += bw_bias.f_mean(Kind::Float)?.to_device(dev) * (positions * self.filters()) as f64;
        }
        Ok(e)
    }
}

impl Layer for QConv {
    qbase_layer_methods!();

    fn output_dims(&self) -> Vec<usize> {
        self.output_dims.clone()
    }
    fn forward(&self, x: &Tensor, mode: CallMode) -> Result<Output> {
        check_input("QConv input", x, &self.kernel, &self.base.input_dims)?;
        let xq = self.base.input(x, mode)?;
        let bias = self.bq.as_ref().zip(self.bias.as_ref());
        let (k, qb) = self
            .base
            .kernel_and_bias((&self.kq, &self.kernel), bias, mode)?;
        let mut y = self.conv(&xq, &k)?;
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
        let mut s = QConvSpec::new(self.filters(), self.kernel_size.clone())
            .name(self.name())
            .trainable(self.base.trainable)
            .strides(self.strides.clone())
            .padding(self.padding)
            .dilation_rate(self.dilation.clone())
            .groups(self.groups)
            .activation(self.activation.to_config())
            .beta0(self.base.beta0)
            .iq(self.base.iq.as_ref().map(|q| q.config.clone()))
            .oq(self.base.oq.as_ref().map(|q| q.config.clone()))
            .enable_ebops(self.base.enable_ebops)
            .ebops_factor(self.base.ebops_factor)
            .parallelization_factor(self.parallelization_factor.map_or(-1, |p| p as i64))
            .kq(self.kq.config.clone())
            .use_bias(self.bias.is_some());
        if let Some(bq) = &self.bq {
            s = s.bq(bq.config.clone());
        }
        Ok(s.into())
    }
}

module_t!(QConv);
