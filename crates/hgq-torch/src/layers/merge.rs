//! hgq2's merge layers (`QAdd`, `QSubtract`, `QMultiply`, `QMaximum`, `QMinimum`,
//! `QAveragePow2`): one input quantizer per input, then the element-wise operation. Their
//! EBOPs, as hgq2 counts them over the inputs' bit widths `b_j` of one sample:
//! - add and average: `0.65 * (sum_j b_j - min_j b_j)` summed over the elements;
//! - maximum and minimum: `sum_j b_j - min_j b_j`;
//! - subtract: `max(b_0, b_1)`;
//! - multiply: `prod_j b_j`.
use std::cell::{Cell, RefCell};

use hgq_config::sequential::{LayerSpec, MergeOp, QMergeSpec};
use hgq_config::{Place, QuantizerConfig};
use hgq_core::CallMode;
use tch::{Kind, Tensor, nn};

use super::{
    Ebops, EbopsTape, Layer, Named, Names, Output, QBase, batch_shape, builder_common_setters,
    check_beta, check_input, config_or_default, named_quantizer, qbase_layer_methods,
    quantizer_variables,
};
use crate::quantizer::Quantizer;
use crate::{Result, TorchError};

/// Builder of a [`QMerge`] of `inputs` tensors of the same shape; defaults as hgq2:
/// `beta = 1e-5`, every input quantizer `default`/datalane.
#[derive(Debug, Clone)]
pub struct QMergeBuilder {
    op: MergeOp,
    input_dims: Vec<usize>,
    inputs: usize,
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

impl QMergeBuilder {
    builder_common_setters!();

    /// How many inputs.
    pub fn inputs(&self) -> usize {
        self.inputs
    }
    /// The dimensions every input has after the batch.
    pub fn input_dims(&self) -> &[usize] {
        &self.input_dims
    }

    /// Builds the layer under `root / name`; `names` gives Keras' unique names.
    pub fn build(self, root: &nn::Path, names: &mut Names) -> Result<QMerge> {
        check_beta(self.beta)?;
        super::check_ebops_factor(self.ebops_factor)?;
        QBase::check_ebops_need_iq("the layer", self.enable_iq, self.enable_ebops)?;
        let arity_ok = match self.op {
            MergeOp::Subtract => self.inputs == 2,
            _ => self.inputs >= 2,
        };
        if !arity_ok || self.input_dims.is_empty() || self.input_dims.contains(&0) {
            return Err(TorchError::Invalid {
                what: "merge layer",
                why: format!(
                    "{} inputs of {:?} for {} (at least 2, subtract exactly 2; positive sizes)",
                    self.inputs,
                    self.input_dims,
                    self.op.class_name()
                ),
            });
        }
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| names.next(self.op.auto_name_prefix()));
        let p = root / name.as_str();
        let conf = config_or_default(self.iq, Place::Datalane)?;
        // hgq2 keeps them in a `MultipleQuantizers` layer, each an unnamed `Quantizer`.
        // hgq2 makes the output quantizer first (its base class's), so it takes the first
        // number of its class.
        let oq = match self.oq {
            Some(c) => Some(named_quantizer(
                names,
                &p,
                &name,
                "oq",
                c,
                &batch_shape(&self.input_dims),
            )?),
            None => None,
        };
        let core = conf.to_core()?;
        let mut iqs = Vec::with_capacity(self.inputs);
        // Without input quantizers (`enable_iq=False`) hgq2 makes no `MultipleQuantizers`.
        let group = if self.enable_iq {
            names.next("multiple_quantizers")
        } else {
            String::new()
        };
        for _ in 0..if self.enable_iq { self.inputs } else { 0 } {
            let qname = names.next("quantizer");
            let inner = names.next(super::quantizer_class(&core));
            let qp = &p / group.as_str() / qname.as_str() / inner.as_str();
            iqs.push(Named {
                q: Quantizer::new(&qp, &core, &batch_shape(&self.input_dims))?,
                config: conf.clone(),
                keras_path: format!("{name}/{group}/{qname}/{inner}"),
            });
        }
        let like = iqs
            .iter()
            .chain(&oq)
            .flat_map(|q| q.q.variables())
            .map(|(_, t)| t)
            .find(|t| t.kind() == Kind::Float)
            .unwrap_or_else(|| Tensor::zeros([1], (Kind::Float, p.device())));
        let mut iqs = iqs.into_iter();
        let first = iqs.next();
        Ok(QMerge {
            base: QBase {
                name,
                input_dims: self.input_dims,
                beta: Cell::new(self.beta),
                beta0: self.beta,
                tape: self.tape,
                ebops: RefCell::new(Ebops::Value(0)),
                iq: first,
                oq,
                enable_ebops: self.enable_ebops,
                trainable: self.trainable,
                ebops_factor: self.ebops_factor,
            },
            rest: iqs.collect(),
            n_inputs: self.inputs,
            op: self.op,
            like,
        })
    }
}

/// hgq2's merge layers: `op(iq_0(x_0), iq_1(x_1), ...)` element-wise over inputs of one
/// shape. A layer of several inputs: [`Layer::forward_inputs`] runs it (a
/// [`super::Functional`] model calls it so); [`Layer::forward`] of one tensor is an error.
///
/// ```
/// use hgq_torch::layers::{Layer, MergeOp, QMerge};
/// use hgq_torch::hgq_core::CallMode;
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let add = QMerge::builder(MergeOp::Add, &[8], 2).build(&vs.root(), &mut Default::default())?;
/// let (a, b) = (Tensor::randn([4, 8], (Kind::Float, Device::Cpu)), Tensor::randn([4, 8], (Kind::Float, Device::Cpu)));
/// let y = add.forward_inputs(&[&a, &b], CallMode::Training)?.y;
/// assert_eq!(y.size(), [4, 8]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QMerge {
    /// The first input's quantizer is the base's.
    base: QBase,
    /// The other inputs' quantizers.
    rest: Vec<Named>,
    n_inputs: usize,
    op: MergeOp,
    like: Tensor,
}

impl QMerge {
    /// A builder of `op` over `inputs` tensors of dimensions `input_dims` after the batch.
    pub fn builder(op: MergeOp, input_dims: &[usize], inputs: usize) -> QMergeBuilder {
        QMergeBuilder {
            op,
            input_dims: input_dims.to_vec(),
            inputs,
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

    /// The operation.
    pub fn op(&self) -> MergeOp {
        self.op
    }
    /// How many inputs.
    pub fn inputs(&self) -> usize {
        self.n_inputs
    }
    /// The input quantizers, one per input (none without them: `enable_iq=False`).
    pub fn iqs(&self) -> Vec<&Named> {
        self.base.iq.iter().chain(&self.rest).collect()
    }

    /// EBOPs from the current bit widths (differentiable through them).
    pub fn compute_ebops(&self) -> Result<Tensor> {
        let one: Vec<i64> = std::iter::once(1)
            .chain(self.base.input_dims.iter().map(|&d| d as i64))
            .collect();
        let bits: Vec<Tensor> = self
            .iqs()
            .iter()
            .map(|q| q.q.bits_like(&one))
            .collect::<Result<_>>()?;
        let fold = |f: &dyn Fn(&Tensor, &Tensor) -> std::result::Result<Tensor, tch::TchError>| {
            bits[1..]
                .iter()
                .try_fold(bits[0].shallow_clone(), |acc, b| f(&acc, b))
        };
        let sum_excl_min = || -> Result<Tensor> {
            let total = fold(&|a, b| a.f_add(b))?.f_sum(Kind::Float)?;
            let min = fold(&|a, b| a.f_minimum(b))?.f_sum(Kind::Float)?;
            Ok(total.f_sub(&min)?)
        };
        Ok(match self.op {
            MergeOp::Add | MergeOp::AveragePow2 => sum_excl_min()?.f_mul_scalar(0.65)?,
            MergeOp::Maximum | MergeOp::Minimum => sum_excl_min()?,
            MergeOp::Subtract => fold(&|a, b| a.f_maximum(b))?.f_sum(Kind::Float)?,
            MergeOp::Multiply => fold(&|a, b| a.f_mul(b))?.f_sum(Kind::Float)?,
        })
    }

    /// `2 ** round(log2(1 / n))`: `QAveragePow2`'s scale.
    fn pow2_scale(&self) -> f64 {
        let n = self.inputs() as f64;
        2f64.powf((1.0 / n).log2().round_ties_even())
    }
}

impl Layer for QMerge {
    qbase_layer_methods!();

    fn output_dims(&self) -> Vec<usize> {
        self.base.input_dims.clone()
    }
    fn arity(&self) -> usize {
        self.inputs()
    }
    fn forward(&self, _x: &Tensor, _mode: CallMode) -> Result<Output> {
        Err(TorchError::Invalid {
            what: "merge layer input",
            why: format!(
                "{} takes {} inputs (forward_inputs), not one",
                self.base.name,
                self.inputs()
            ),
        })
    }
    fn forward_inputs(&self, xs: &[&Tensor], mode: CallMode) -> Result<Output> {
        if xs.len() != self.inputs() {
            return Err(TorchError::Invalid {
                what: "merge layer inputs",
                why: format!(
                    "{} inputs for {}'s {}",
                    xs.len(),
                    self.base.name,
                    self.inputs()
                ),
            });
        }
        for x in xs {
            check_input("merge layer input", x, &self.like, &self.base.input_dims)?;
        }
        let mut q = Vec::with_capacity(xs.len());
        let iqs = self.iqs();
        for (k, x) in xs.iter().enumerate() {
            q.push(match iqs.get(k) {
                Some(iq) => iq.q.forward(x, mode)?,
                None => x.shallow_clone(),
            });
        }
        let fold = |f: &dyn Fn(&Tensor, &Tensor) -> std::result::Result<Tensor, tch::TchError>| {
            q[1..]
                .iter()
                .try_fold(q[0].shallow_clone(), |acc, b| f(&acc, b))
        };
        let y = match self.op {
            MergeOp::Add => fold(&|a, b| a.f_add(b))?,
            MergeOp::AveragePow2 => fold(&|a, b| a.f_add(b))?.f_mul_scalar(self.pow2_scale())?,
            MergeOp::Subtract => fold(&|a, b| a.f_sub(b))?,
            MergeOp::Multiply => fold(&|a, b| a.f_mul(b))?,
            MergeOp::Maximum => fold(&|a, b| a.f_maximum(b))?,
            MergeOp::Minimum => fold(&|a, b| a.f_minimum(b))?,
        };
        let y = self.base.output(y, mode)?;
        let ebops_loss = self.base.ebops_loss(mode, || self.compute_ebops())?;
        Ok(Output { y, ebops_loss })
    }

    fn quantizers(&self) -> Vec<&Named> {
        self.base.oq.iter().chain(self.iqs()).collect()
    }
    fn keras_variables(&self) -> Vec<(String, Tensor)> {
        quantizer_variables(&self.quantizers())
    }
    fn keras_spec(&self) -> Result<LayerSpec> {
        Ok(QMergeSpec::new(self.op)
            .name(self.name())
            .trainable(self.base.trainable)
            .beta0(self.base.beta0)
            .iq(self.base.iq.as_ref().map(|q| q.config.clone()))
            .oq(self.base.oq.as_ref().map(|q| q.config.clone()))
            .enable_ebops(self.base.enable_ebops)
            .ebops_factor(self.base.ebops_factor)
            .into())
    }
}
