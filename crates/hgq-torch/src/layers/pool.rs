//! hgq2's pooling layers: `QMaxPooling1D/2D`, `QAveragePooling1D/2D` and the global ones,
//! `pool(iq(x))` channels last, with EBOPs `sum(bits_in)` (one accumulation per input
//! element, as hgq2 counts them).
use std::cell::{Cell, RefCell};

use hgq_config::sequential::{LayerSpec, QPoolSpec};
use hgq_config::{Place, QuantizerConfig};
use hgq_core::CallMode;
use tch::{Kind, Tensor, nn};

use super::{
    Ebops, EbopsTape, Layer, Named, Names, Output, Padding, Pads, PoolKind, QBase,
    builder_common_setters, check_beta, check_input, config_or_default, io_quantizers,
    layer_builder, module_t, qbase_layer_methods, quantizer_variables,
};
use crate::{Result, TorchError};

/// Builder of a [`QPool`]; defaults as hgq2: strides equal to the window, `valid` padding,
/// `beta = 1e-5`, the input quantizer `default`/datalane.
#[derive(Debug, Clone)]
pub struct QPoolBuilder {
    kind: PoolKind,
    input_dims: Vec<usize>,
    /// `None`: global (over every position).
    pool_size: Option<Vec<usize>>,
    strides: Option<Vec<usize>>,
    padding: Padding,
    beta: f64,
    name: Option<String>,
    tape: Option<EbopsTape>,
    iq: Option<QuantizerConfig>,
    oq: Option<QuantizerConfig>,
    enable_iq: bool,
    enable_ebops: bool,
    trainable: bool,
    ebops_factor: f64,
}

impl QPoolBuilder {
    builder_common_setters!();
    /// Strides per spatial axis (default: the window size).
    pub fn strides(mut self, s: &[usize]) -> Self {
        self.strides = Some(s.to_vec());
        self
    }
    /// The padding (`Valid` or `Same`).
    pub fn padding(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }

    fn invalid(&self, why: String) -> TorchError {
        TorchError::Invalid {
            what: "QPool geometry",
            why,
        }
    }

    fn rank(&self) -> usize {
        self.input_dims.len().saturating_sub(1)
    }

    /// Keras' automatic name of this layer class.
    fn auto_name(&self) -> String {
        let kind = match self.kind {
            PoolKind::Max => "max",
            PoolKind::Average => "average",
        };
        let global = if self.pool_size.is_none() {
            "global_"
        } else {
            ""
        };
        format!("q_{global}{kind}_pooling{}d", self.rank())
    }

    /// The output's dimensions, the strides and each axis' `(before, after)` padding.
    fn geometry(&self) -> Result<(Vec<usize>, Vec<usize>, Pads)> {
        let rank = self.rank();
        if !(1..=2).contains(&rank) || self.input_dims.contains(&0) {
            return Err(self.invalid(format!(
                "input {:?} (positions on 1 or 2 axes, then channels, all positive)",
                self.input_dims
            )));
        }
        let channels = self.input_dims[rank];
        let Some(pool) = &self.pool_size else {
            return Ok((vec![channels], Vec::new(), Vec::new()));
        };
        let strides = self.strides.clone().unwrap_or_else(|| pool.clone());
        if pool.len() != rank
            || strides.len() != rank
            || pool.iter().chain(&strides).any(|&v| v == 0)
        {
            return Err(self.invalid(format!(
                "window {pool:?}, strides {strides:?} (one positive value per spatial axis)"
            )));
        }
        if self.padding == Padding::Causal {
            return Err(self.invalid("causal padding is for QConv1D only".into()));
        }
        let mut out = Vec::with_capacity(rank + 1);
        let mut pads = Vec::with_capacity(rank);
        for a in 0..rank {
            let Some((pad, n)) =
                super::conv::geometry(self.padding, self.input_dims[a], pool[a], strides[a], 1)
            else {
                return Err(self.invalid(format!(
                    "a window of {} over {} positions",
                    pool[a], self.input_dims[a]
                )));
            };
            out.push(n);
            pads.push(pad);
        }
        out.push(channels);
        Ok((out, strides, pads))
    }

    /// Builds the layer under `root / name`; `names` gives Keras' unique names.
    pub fn build(self, root: &nn::Path, names: &mut Names) -> Result<QPool> {
        check_beta(self.beta)?;
        super::check_ebops_factor(self.ebops_factor)?;
        QBase::check_ebops_need_iq("the layer", self.enable_iq, self.enable_ebops)?;
        let (output_dims, strides, pads) = self.geometry()?;
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| names.next(&self.auto_name()));
        let p = root / name.as_str();
        let iq_conf = config_or_default(self.iq, Place::Datalane)?;
        let (oq, iq) = io_quantizers(
            names,
            &p,
            &name,
            self.oq,
            &output_dims,
            self.enable_iq.then_some(iq_conf),
            &self.input_dims,
        )?;
        // The quantizer's variables tell the kind and device the input must have.
        let like = iq
            .iter()
            .chain(&oq)
            .flat_map(|q| q.q.variables())
            .map(|(_, t)| t)
            .find(|t| t.kind() == Kind::Float)
            .unwrap_or_else(|| Tensor::zeros([1], (Kind::Float, p.device())));
        Ok(QPool {
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
            kind: self.kind,
            output_dims,
            pool_size: self.pool_size,
            strides,
            padding: self.padding,
            pads,
            like,
            native_windows: std::cell::OnceCell::new(),
        })
    }
}

layer_builder!(QPoolBuilder);

/// hgq2's pooling layers (channels last): `pool(iq(x))` over windows, or over every position
/// (the global ones, whose output is `[batch, channels]`).
///
/// With `Same` padding a window takes the input's values only: the max of, and the mean
/// over, the values inside the input (Keras' definition, its jax and TensorFlow backends, and
/// hls4ml's firmware). Keras' torch backend differs where the padding is asymmetric: it
/// repeats the edge values, and an average window at the edge counts its edge value twice.
///
/// ```
/// use hgq_torch::layers::{Layer, PoolKind, QPool};
/// use tch::{nn, Device};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let pool = QPool::builder_2d(PoolKind::Max, [6, 6, 3], [2, 2]).build(&vs.root(), &mut Default::default())?;
/// assert_eq!(pool.output_dims(), [3, 3, 3]);
/// assert_eq!(pool.name(), "q_max_pooling2d");
/// let global = QPool::global(PoolKind::Average, &[6, 6, 3]).build(&vs.root(), &mut Default::default())?;
/// assert_eq!(global.output_dims(), [3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QPool {
    pub(crate) base: QBase,
    kind: PoolKind,
    output_dims: Vec<usize>,
    pool_size: Option<Vec<usize>>,
    strides: Vec<usize>,
    padding: Padding,
    pub(crate) pads: Pads,
    /// A tensor of the kind and device the input must have.
    like: Tensor,
    /// The native step's windows, made at its first step.
    pub(crate) native_windows: std::cell::OnceCell<Vec<u32>>,
}

impl QPool {
    fn builder(
        kind: PoolKind,
        input_dims: Vec<usize>,
        pool_size: Option<Vec<usize>>,
    ) -> QPoolBuilder {
        QPoolBuilder {
            kind,
            input_dims,
            pool_size,
            strides: None,
            padding: Padding::Valid,
            beta: 1e-5,
            name: None,
            tape: None,
            iq: None,
            oq: None,
            enable_iq: true,
            enable_ebops: true,
            trainable: true,
            ebops_factor: 1.0,
        }
    }

    /// `QMaxPooling1D` / `QAveragePooling1D` on `[batch, length, channels]`.
    pub fn builder_1d(kind: PoolKind, input_dims: [usize; 2], pool: usize) -> QPoolBuilder {
        Self::builder(kind, input_dims.to_vec(), Some(vec![pool]))
    }

    /// `QMaxPooling2D` / `QAveragePooling2D` on `[batch, height, width, channels]`.
    pub fn builder_2d(kind: PoolKind, input_dims: [usize; 3], pool: [usize; 2]) -> QPoolBuilder {
        Self::builder(kind, input_dims.to_vec(), Some(pool.to_vec()))
    }

    /// The global poolings (`QGlobalMaxPooling1D`, `QGlobalAveragePooling2D`, ...) over
    /// `[batch, *positions, channels]`: one value per channel.
    pub fn global(kind: PoolKind, input_dims: &[usize]) -> QPoolBuilder {
        Self::builder(kind, input_dims.to_vec(), None)
    }

    /// Max or average.
    pub fn kind(&self) -> PoolKind {
        self.kind
    }
    /// Spatial axes (1 or 2).
    pub fn rank(&self) -> usize {
        self.base.input_dims.len() - 1
    }
    /// The window per spatial axis; `None` for a global pooling.
    pub fn pool_size(&self) -> Option<&[usize]> {
        self.pool_size.as_deref()
    }
    /// Strides per spatial axis (empty for a global pooling).
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    /// The padding.
    pub fn padding(&self) -> Padding {
        self.padding
    }
    /// The input quantizer.
    pub fn iq(&self) -> Option<&Named> {
        self.base.iq.as_ref()
    }

    /// EBOPs from the current bit widths: `sum(bits_in)` of one sample.
    pub fn compute_ebops(&self) -> Result<Tensor> {
        Ok(self.base.input_bits()?.f_sum(Kind::Float)?)
    }

    fn pool(&self, x: &Tensor) -> Result<Tensor> {
        let rank = self.rank() as i64;
        let Some(window) = &self.pool_size else {
            let axes: Vec<i64> = (1..=rank).collect();
            return Ok(match self.kind {
                PoolKind::Max => x.f_amax(axes.as_slice(), false)?,
                PoolKind::Average => x.f_mean_dim(axes.as_slice(), false, None::<Kind>)?,
            });
        };
        let mut xc = super::conv::channels_first(x, self.rank())?;
        let k: Vec<i64> = window.iter().map(|&v| v as i64).collect();
        let st: Vec<i64> = self.strides.iter().map(|&v| v as i64).collect();
        let y = match super::conv::TorchPad::of(&self.pads) {
            // Torch pads itself: outside the input for max, not counted for the average.
            super::conv::TorchPad::Symmetric(padding) => {
                let ones = vec![1i64; self.rank()];
                let (k, st, padding) = (k.as_slice(), st.as_slice(), padding.as_slice());
                match (self.kind, rank) {
                    (PoolKind::Max, 1) => {
                        xc.f_max_pool1d(k, st, padding, ones.as_slice(), false)?
                    }
                    (PoolKind::Max, _) => {
                        xc.f_max_pool2d(k, st, padding, ones.as_slice(), false)?
                    }
                    (PoolKind::Average, 1) => xc.f_avg_pool1d(k, st, padding, false, false)?,
                    (PoolKind::Average, _) => {
                        xc.f_avg_pool2d(k, st, padding, false, false, None)?
                    }
                }
            }
            super::conv::TorchPad::Explicit(pad) => match self.kind {
                // The edge values repeated: the max of the input's values.
                PoolKind::Max => {
                    xc = xc.f_pad(pad.as_slice(), "replicate", None::<f64>)?;
                    let (z, ones) = (vec![0i64; self.rank()], vec![1i64; self.rank()]);
                    if rank == 1 {
                        xc.f_max_pool1d(&k, &st, &z, &ones, false)?
                    } else {
                        xc.f_max_pool2d(&k, &st, &z, &ones, false)?
                    }
                }
                // Keras' average (and the firmware's): the mean of the input's values in the
                // window, window sums over zeros divided by the count of input values.
                PoolKind::Average => {
                    let spatial = &xc.size()[2..];
                    let ones = Tensor::f_ones(
                        [1i64, 1].iter().chain(spatial).copied().collect::<Vec<_>>(),
                        (xc.kind(), xc.device()),
                    )?;
                    let sum = |t: Tensor| -> Result<Tensor> {
                        let t = t.f_constant_pad_nd(pad.as_slice())?;
                        let (t, k, st) = if rank == 1 {
                            (t.f_unsqueeze(2)?, vec![1, k[0]], vec![1, st[0]])
                        } else {
                            (t, k.clone(), st.clone())
                        };
                        let s =
                            t.f_avg_pool2d(k.as_slice(), st.as_slice(), [0, 0], false, true, 1)?;
                        Ok(if rank == 1 { s.f_squeeze_dim(2)? } else { s })
                    };
                    sum(xc)?.f_div(&sum(ones)?)?
                }
            },
        };
        super::conv::channels_last(&y, self.rank())
    }
}

impl Layer for QPool {
    qbase_layer_methods!();

    fn output_dims(&self) -> Vec<usize> {
        self.output_dims.clone()
    }
    fn forward(&self, x: &Tensor, mode: CallMode) -> Result<Output> {
        check_input("QPool input", x, &self.like, &self.base.input_dims)?;
        let xq = self.base.input(x, mode)?;
        let y = self.pool(&xq)?;
        let y = self.base.output(y, mode)?;
        let ebops_loss = self.base.ebops_loss(mode, || self.compute_ebops())?;
        Ok(Output { y, ebops_loss })
    }

    fn quantizers(&self) -> Vec<&Named> {
        self.base.oq.iter().chain(self.base.iq.iter()).collect()
    }
    fn keras_variables(&self) -> Vec<(String, Tensor)> {
        quantizer_variables(&self.quantizers())
    }
    fn keras_spec(&self) -> Result<LayerSpec> {
        let s = match &self.pool_size {
            None => QPoolSpec::global(self.kind, self.rank()),
            Some(w) => QPoolSpec::new(self.kind, w.clone())
                .strides(self.strides.clone())
                .padding(self.padding),
        };
        Ok(s.name(self.name())
            .trainable(self.base.trainable)
            .beta0(self.base.beta0)
            .iq(self.base.iq.as_ref().map(|q| q.config.clone()))
            .oq(self.base.oq.as_ref().map(|q| q.config.clone()))
            .enable_ebops(self.base.enable_ebops)
            .ebops_factor(self.base.ebops_factor)
            .into())
    }
}

module_t!(QPool);
