//! hgq2's `QSoftmax`: a softmax the firmware computes with two lookup tables,
//! `e = exp_table(max(x) - x)` (stable; `exp_table(x)` otherwise) and
//! `y = e * inv_table(sum(e))` over the softmax axes, each table a [`QUnaryFunctionLut`] with
//! its own quantizers and EBOPs. hgq2 forces the tables' output quantizers to SAT and
//! RND_CONV with `k0 = 0` (unsigned), and unless `allow_heterogeneous_table`, one bit width
//! for each table's input.
//!
//! EBOPs: the layer's own (the subtraction, the sum, the products; scaled by the
//! parallelization factor) plus each table's, as hgq2 sums them.
use std::cell::{Cell, RefCell};

use hgq_config::sequential::{LayerSpec, QSoftmaxSpec};
use hgq_config::{InitValue, Params, Place, QuantizerConfig};
use hgq_core::CallMode;
use hgq_core::{OverflowMode, RoundMode};
use tch::{Kind, Tensor, nn};

use super::table::{QUnaryFunctionLutBuilder, TableFn, check_float_input, one_bit_width};
use super::{
    Ebops, EbopsTape, Layer, Named, Names, Output, QBase, QUnaryFunctionLut, builder_base_setters,
    check_beta, config_or_default, io_quantizers, layer_builder, module_t, quantizer_variables,
};
use crate::{Result, TorchError};

/// Builder of a [`QSoftmax`]; defaults as hgq2: over the last axis, stable, no input
/// quantizer, the tables' input quantizers `default`/datalane (one bit width each), their
/// output quantizers `default`/table (per element), `input_scaler = 1`, EBOPs on,
/// `beta = 1e-5`. `beta` and `enable_ebops` hold for the layer and its two tables,
/// `ebops_factor` for the layer's own EBOPs only (as hgq2 makes the tables).
#[derive(Debug, Clone)]
pub struct QSoftmaxBuilder {
    input_dims: Vec<usize>,
    axes: Vec<i64>,
    stable: bool,
    tape: Option<EbopsTape>,
    beta: f64,
    name: Option<String>,
    iq: Option<QuantizerConfig>,
    oq: Option<QuantizerConfig>,
    enable_iq: bool,
    enable_ebops: bool,
    trainable: bool,
    ebops_factor: f64,
    exp_iq: Option<QuantizerConfig>,
    exp_oq: Option<QuantizerConfig>,
    inv_iq: Option<QuantizerConfig>,
    inv_oq: Option<QuantizerConfig>,
    heterogeneous_table: bool,
    input_scaler: f64,
    parallelization_factor: Option<usize>,
}

impl QSoftmaxBuilder {
    builder_base_setters!();
    /// An input quantizer of this configuration (hgq2's default has none).
    pub fn iq(mut self, c: QuantizerConfig) -> Self {
        self.iq = Some(c);
        self.enable_iq = true;
        self
    }
    /// An output quantizer (hgq2's `enable_oq=True`). Default: none.
    pub fn oq(mut self, c: QuantizerConfig) -> Self {
        self.oq = Some(c);
        self
    }
    /// The softmax axes, the batch axis counted (`-1`: the last; `1`: the first after the
    /// batch). Default: `[-1]`.
    pub fn axes(mut self, axes: &[i64]) -> Self {
        self.axes = axes.to_vec();
        self
    }
    /// `false`: `exp(x)` without subtracting the maximum (and no input quantizer on the
    /// exponential's table). Default: `true`.
    pub fn stable(mut self, s: bool) -> Self {
        self.stable = s;
        self
    }
    /// The exponential table's input quantizer (used when stable).
    pub fn exp_iq(mut self, c: QuantizerConfig) -> Self {
        self.exp_iq = Some(c);
        self
    }
    /// The exponential table's output quantizer (forced to SAT, RND_CONV, `k0 = 0`).
    pub fn exp_oq(mut self, c: QuantizerConfig) -> Self {
        self.exp_oq = Some(c);
        self
    }
    /// The inverse table's input quantizer.
    pub fn inv_iq(mut self, c: QuantizerConfig) -> Self {
        self.inv_iq = Some(c);
        self
    }
    /// The inverse table's output quantizer (forced to SAT, RND_CONV, `k0 = 0`).
    pub fn inv_oq(mut self, c: QuantizerConfig) -> Self {
        self.inv_oq = Some(c);
        self
    }
    /// hgq2's `allow_heterogeneous_table`: `true` keeps the tables' input quantizers per
    /// element. Default: `false`.
    pub fn allow_heterogeneous_table(mut self, on: bool) -> Self {
        self.heterogeneous_table = on;
        self
    }
    /// The exponential's input is multiplied by it (finite, positive). Default: 1.
    pub fn input_scaler(mut self, s: f64) -> Self {
        self.input_scaler = s;
        self
    }
    /// hgq2's `parallelization_factor`: how many softmax instances the firmware computes at
    /// once (its own EBOPs scale by it over the number of instances). Default: all.
    pub fn parallelization_factor(mut self, p: usize) -> Self {
        self.parallelization_factor = Some(p);
        self
    }

    /// The axes as positions after the batch (sorted), or an error.
    fn axes_after_batch(&self) -> Result<Vec<usize>> {
        let ndim = self.input_dims.len() as i64 + 1;
        let mut out = Vec::new();
        for &a in &self.axes {
            let pos = if a < 0 { a + ndim } else { a };
            if pos <= 0 || pos >= ndim {
                return Err(TorchError::Invalid {
                    what: "QSoftmax axes",
                    why: format!(
                        "{a} for inputs of {ndim} dimensions (an axis after the batch axis)"
                    ),
                });
            }
            let p = (pos - 1) as usize;
            if out.contains(&p) {
                return Err(TorchError::Invalid {
                    what: "QSoftmax axes",
                    why: format!("{:?} repeats an axis", self.axes),
                });
            }
            out.push(p);
        }
        if out.is_empty() {
            return Err(TorchError::Invalid {
                what: "QSoftmax axes",
                why: "none".into(),
            });
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Builds the layer under `root / name` (its tables under it); `names` gives Keras'
    /// unique names.
    pub fn build(self, root: &nn::Path, names: &mut Names) -> Result<QSoftmax> {
        check_beta(self.beta)?;
        super::check_ebops_factor(self.ebops_factor)?;
        if self.input_dims.is_empty() || self.input_dims.contains(&0) {
            return Err(TorchError::Invalid {
                what: "QSoftmax input dimensions",
                why: format!("{:?} (positive sizes)", self.input_dims),
            });
        }
        if !(self.input_scaler.is_finite() && self.input_scaler > 0.0) {
            return Err(TorchError::Invalid {
                what: "QSoftmax input_scaler",
                why: format!("{} (finite, positive)", self.input_scaler),
            });
        }
        if self.parallelization_factor == Some(0) {
            return Err(TorchError::Invalid {
                what: "parallelization_factor",
                why: "0 (at least 1)".into(),
            });
        }
        let axes = self.axes_after_batch()?;
        let name = self.name.clone().unwrap_or_else(|| names.next("q_softmax"));
        let p = root / name.as_str();
        let iq_conf = match self.enable_iq {
            true => Some(config_or_default(self.iq.clone(), Place::Datalane)?),
            false => None,
        };
        let (oq, iq) = io_quantizers(
            names,
            &p,
            &name,
            self.oq.clone(),
            &self.input_dims,
            iq_conf,
            &self.input_dims,
        )?;
        let table_iq = |c: Option<QuantizerConfig>| -> Result<QuantizerConfig> {
            let c = config_or_default(c, Place::Datalane)?;
            Ok(match self.heterogeneous_table {
                true => c,
                false => one_bit_width(c),
            })
        };
        let table_oq = |c: Option<QuantizerConfig>| {
            Ok::<_, TorchError>(forced_table(config_or_default(c, Place::Table)?))
        };
        let sums_dims: Vec<usize> = (0..self.input_dims.len())
            .map(|k| {
                if axes.contains(&k) {
                    1
                } else {
                    self.input_dims[k]
                }
            })
            .collect();
        // hgq2 makes the inverse table first, then the exponential's.
        let table = |function, dims: &[usize]| {
            let b: QUnaryFunctionLutBuilder = QUnaryFunctionLut::builder_of(dims, function)
                .beta(self.beta)
                .enable_ebops(self.enable_ebops)
                .allow_heterogeneous_table(self.heterogeneous_table);
            match &self.tape {
                Some(t) => b.ebops_tape(t),
                None => b,
            }
        };
        let inv = table(TableFn::Inverse, &sums_dims)
            .iq(table_iq(self.inv_iq.clone())?)
            .oq(table_oq(self.inv_oq.clone())?)
            .enable_ebops(self.enable_ebops)
            .build_named(&p, names, format!("{name}_inv_table"), &sums_dims)?;
        let exp = table(
            TableFn::Exp {
                scale: self.input_scaler,
                negate: self.stable,
            },
            &self.input_dims,
        )
        .oq(table_oq(self.exp_oq.clone())?);
        let exp = match self.stable {
            true => exp
                .iq(table_iq(self.exp_iq.clone())?)
                .enable_ebops(self.enable_ebops),
            false => exp.no_iq(),
        }
        .build_named(&p, names, format!("{name}_exp_table"), &self.input_dims)?;
        let mut inv = inv;
        let mut exp = exp;
        // The tables' Keras paths are under the layer's.
        for t in [&mut inv, &mut exp] {
            for q in [&mut t.base.iq, &mut t.base.oq].into_iter().flatten() {
                q.keras_path = format!("{name}/{}", q.keras_path);
            }
        }
        Ok(QSoftmax {
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
            axes,
            stable: self.stable,
            input_scaler: self.input_scaler,
            heterogeneous_table: self.heterogeneous_table,
            parallelization_factor: self.parallelization_factor,
            exp,
            inv,
        })
    }
}

/// A table's output quantizer as hgq2 forces it: SAT, RND_CONV, `k0 = 0` where the type has
/// `k0`.
fn forced_table(mut c: QuantizerConfig) -> QuantizerConfig {
    match &mut c.params {
        Params::Kbi(k) => {
            k.k0 = InitValue::Int(0);
            k.overflow_mode = OverflowMode::Sat;
            k.round_mode = RoundMode::RndConv;
        }
        Params::Kif(k) => {
            k.k0 = InitValue::Int(0);
            k.overflow_mode = OverflowMode::Sat;
            k.round_mode = RoundMode::RndConv;
        }
        Params::Float(_) | Params::Dummy => {}
    }
    c
}

layer_builder!(QSoftmaxBuilder);

/// hgq2's `QSoftmax`: `e = exp_table(max(x) - x)` (stable) and `e * inv_table(sum(e))` over
/// its axes, each table a [`QUnaryFunctionLut`] with its own quantizers, beta and EBOPs.
///
/// ```
/// use hgq_torch::layers::{Layer, QSoftmax};
/// use hgq_torch::hgq_core::CallMode;
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let s = QSoftmax::builder(&[10]).build(&vs.root(), &mut Default::default())?;
/// let out = s.forward(&Tensor::randn([4, 10], (Kind::Float, Device::Cpu)), CallMode::Training)?;
/// assert_eq!(out.y.size(), [4, 10]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QSoftmax {
    base: QBase,
    /// Positions after the batch, sorted.
    axes: Vec<usize>,
    stable: bool,
    input_scaler: f64,
    heterogeneous_table: bool,
    parallelization_factor: Option<usize>,
    exp: QUnaryFunctionLut,
    inv: QUnaryFunctionLut,
}

impl QSoftmax {
    /// A builder for inputs `[batch, *input_dims]`.
    pub fn builder(input_dims: &[usize]) -> QSoftmaxBuilder {
        QSoftmaxBuilder {
            input_dims: input_dims.to_vec(),
            axes: vec![-1],
            stable: true,
            tape: None,
            beta: 1e-5,
            name: None,
            iq: None,
            oq: None,
            enable_iq: false,
            enable_ebops: true,
            trainable: true,
            ebops_factor: 1.0,
            exp_iq: None,
            exp_oq: None,
            inv_iq: None,
            inv_oq: None,
            heterogeneous_table: false,
            input_scaler: 1.0,
            parallelization_factor: None,
        }
    }

    /// The softmax axes as positions after the batch (0 is the first axis after it).
    pub fn axes(&self) -> &[usize] {
        &self.axes
    }
    /// Whether the maximum is subtracted first.
    pub fn stable(&self) -> bool {
        self.stable
    }
    /// The exponential's table.
    pub fn exp_table(&self) -> &QUnaryFunctionLut {
        &self.exp
    }
    /// The inverse's table.
    pub fn inv_table(&self) -> &QUnaryFunctionLut {
        &self.inv
    }

    /// The axes as torch dimensions (the batch counted).
    fn dims(&self) -> Vec<i64> {
        self.axes.iter().map(|&a| a as i64 + 1).collect()
    }

    /// hgq2's number of softmax instances (the values per sample outside the axes).
    fn instances(&self) -> usize {
        (0..self.base.input_dims.len())
            .filter(|k| !self.axes.contains(k))
            .map(|k| self.base.input_dims[k])
            .product()
    }

    /// The layer's and its tables' bookkeeping with their Keras paths (`{name}`,
    /// `{name}/{name}_inv_table`, `{name}/{name}_exp_table`).
    fn bookkeeping_bases(&self) -> [(String, &QBase); 3] {
        let name = &self.base.name;
        [
            (name.clone(), &self.base),
            (format!("{name}/{}", self.inv.base.name), &self.inv.base),
            (format!("{name}/{}", self.exp.base.name), &self.exp.base),
        ]
    }

    /// The layer's own EBOPs (its tables' are theirs).
    pub fn compute_ebops(&self) -> Result<Tensor> {
        let shape: Vec<i64> = std::iter::once(1)
            .chain(self.base.input_dims.iter().map(|&d| d as i64))
            .collect();
        let accum: Vec<i64> = std::iter::once(1)
            .chain((0..self.base.input_dims.len()).map(|k| {
                if self.axes.contains(&k) {
                    1
                } else {
                    shape[k + 1]
                }
            }))
            .collect();
        let no_q = |t: &str| TorchError::Invalid {
            what: "EBOPs",
            why: format!("{}: no {t} quantizer", self.base.name),
        };
        let exp_oq = self
            .exp
            .base
            .oq
            .as_ref()
            .ok_or_else(|| no_q("exp output"))?;
        let inv_oq = self
            .inv
            .base
            .oq
            .as_ref()
            .ok_or_else(|| no_q("inv output"))?;
        let exp_bits = exp_oq.q.bits_like(&shape)?;
        let dev = exp_bits.device();
        let inv_bits = inv_oq.q.bits_like(&accum)?.f_to_device(dev)?;
        let dims = self.dims();
        let mut e = exp_bits
            .f_sum(Kind::Float)?
            .f_sub(
                &exp_bits
                    .f_amin(dims.as_slice(), false)?
                    .f_sum(Kind::Float)?,
            )?
            .f_add(&exp_bits.f_mul(&inv_bits)?.f_sum(Kind::Float)?)?;
        if self.stable {
            let q = match &self.base.iq {
                Some(iq) => iq,
                None => self.exp.base.iq.as_ref().ok_or_else(|| no_q("exp input"))?,
            };
            e =
                q.q.bits_like(&shape)?
                    .f_to_device(dev)?
                    .f_sum(Kind::Float)?
                    .f_add(&e)?;
        } else {
            // The exponential's table has no input quantizer: its cost from the layer's.
            let inp = match &self.base.iq {
                Some(iq) => iq.q.bits_like(&shape)?.f_to_device(dev)?,
                None => Tensor::zeros_like(&exp_bits),
            };
            let two = Tensor::from(2.0f32).f_to_device(dev)?;
            let table = two.f_pow(&inp)?.f_mul(&exp_bits)?.f_sum(Kind::Float)?;
            e = e.f_add(&table.f_mul_scalar(1e-4)?)?;
        }
        let n = self.instances();
        let pf = self.parallelization_factor.unwrap_or(n);
        Ok(e.f_mul_scalar(pf as f64 / n as f64)?)
    }
}

impl Layer for QSoftmax {
    fn name(&self) -> &str {
        &self.base.name
    }
    fn input_dims(&self) -> &[usize] {
        &self.base.input_dims
    }
    fn output_dims(&self) -> Vec<usize> {
        self.base.input_dims.clone()
    }
    /// hgq2's `layer.ebops`: the layer's own and its tables'.
    fn ebops(&self) -> u32 {
        self.base
            .ebops()
            .saturating_add(self.exp.ebops())
            .saturating_add(self.inv.ebops())
    }
    fn beta(&self) -> Option<f64> {
        self.base.enable_ebops.then(|| self.base.beta.get())
    }
    /// Sets the weight of the layer's EBOPs and its tables'.
    fn set_beta(&self, beta: f64) -> Result<()> {
        check_beta(beta)?;
        self.base.set_beta(beta)?;
        self.exp.base.set_beta(beta)?;
        self.inv.base.set_beta(beta)
    }
    fn restore_ebops(&self, ebops: u32) {
        *self.base.ebops.borrow_mut() = Ebops::Value(ebops);
    }
    fn trainable(&self) -> bool {
        self.base.trainable
    }
    /// The layer's own, then its tables' (those with EBOPs), as hgq2 keeps them.
    fn bookkeeping(&self) -> Vec<(String, f64, u32)> {
        self.bookkeeping_bases()
            .into_iter()
            .filter(|(_, b)| b.enable_ebops)
            .map(|(path, b)| (path, b.beta.get(), b.ebops()))
            .collect()
    }
    fn restore_bookkeeping(&self, path: &str, beta: Option<f64>, ebops: Option<u32>) -> Result<()> {
        for (p, b) in self.bookkeeping_bases() {
            if p == path {
                if let Some(v) = beta {
                    b.set_beta(v)?;
                }
                if let Some(e) = ebops {
                    *b.ebops.borrow_mut() = Ebops::Value(e);
                }
            }
        }
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn forward(&self, x: &Tensor, mode: CallMode) -> Result<Output> {
        check_float_input("QSoftmax input", x, &self.exp.base)?;
        let dims = self.dims();
        let mut xq = self.base.input(x, mode)?;
        if self.stable {
            xq = xq.f_amax(dims.as_slice(), true)?.f_sub(&xq)?;
        }
        let e = self.exp.call(&xq, mode)?;
        let sums = e.y.f_sum_dim_intlist(dims.as_slice(), true, None::<Kind>)?;
        let d = self.inv.call(&sums, mode)?;
        let y = e.y.f_mul(&d.y)?;
        let y = self.base.output(y, mode)?;
        let own = self.base.ebops_loss(mode, || self.compute_ebops())?;
        let dev = own.device();
        let ebops_loss = own
            .f_add(&e.ebops_loss.f_to_device(dev)?)?
            .f_add(&d.ebops_loss.f_to_device(dev)?)?;
        Ok(Output { y, ebops_loss })
    }

    fn quantizers(&self) -> Vec<&Named> {
        self.base
            .oq
            .iter()
            .chain(self.base.iq.iter())
            .chain(self.inv.quantizers())
            .chain(self.exp.quantizers())
            .collect()
    }
    fn keras_variables(&self) -> Vec<(String, Tensor)> {
        quantizer_variables(&self.quantizers())
    }
    fn keras_spec(&self) -> Result<LayerSpec> {
        let cfg = |q: &Option<Named>| q.as_ref().map(|q| q.config.clone());
        let mut s = QSoftmaxSpec::new();
        // Written only when stable (the unstable exponential's table has no input quantizer).
        if let Some(c) = cfg(&self.exp.base.iq) {
            s = s.exp_iq(c);
        }
        let inv_iq = cfg(&self.inv.base.iq).unwrap_or_else(|| s.inv_iq.clone());
        let exp_oq = cfg(&self.exp.base.oq).unwrap_or_else(|| s.exp_oq.clone());
        let inv_oq = cfg(&self.inv.base.oq).unwrap_or_else(|| s.inv_oq.clone());
        Ok(s.name(self.name())
            .trainable(self.base.trainable)
            .axes(self.dims())
            .stable(self.stable)
            .beta0(self.base.beta0)
            .iq(cfg(&self.base.iq))
            .oq(cfg(&self.base.oq))
            .enable_ebops(self.base.enable_ebops)
            .ebops_factor(self.base.ebops_factor)
            .exp_oq(exp_oq)
            .inv_iq(inv_iq)
            .inv_oq(inv_oq)
            .allow_heterogeneous_table(self.heterogeneous_table)
            .input_scaler(self.input_scaler)
            .parallelization_factor(self.parallelization_factor.map_or(-1, |p| p as i64))
            .into())
    }
}

module_t!(QSoftmax);
