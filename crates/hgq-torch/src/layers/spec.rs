//! Layers built from their Keras descriptions (hgq-config's specs), for the models' Keras
//! JSON readers.
use hgq_config::QuantizerConfig;
use hgq_config::sequential::{LayerSpec, PoolWindow};
use tch::nn;

use super::{
    Activation, ActivationLayer, Flatten, Layer, LayerBuilder, Names, QBatchNorm,
    QBatchNormBuilder, QBatchNormDense, QBatchNormDenseBuilder, QConv, QConvBuilder, QDense,
    QDenseBuilder, QEinsumDense, QEinsumDenseBatchnorm, QEinsumDenseBatchnormBuilder,
    QEinsumDenseBuilder, QMerge, QMergeBuilder, QPool, QPoolBuilder, QSoftmax, QSoftmaxBuilder,
    QUnaryFunctionLut, QUnaryFunctionLutBuilder, ReLU, Reshape,
};
use crate::{Result, TorchError};

/// A builder of any layer of a model JSON.
// Built once per layer read: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum AnyBuilder {
    Activation(ActivationLayer),
    Relu(ReLU),
    Dense(QDenseBuilder),
    BatchNormDense(QBatchNormDenseBuilder),
    Einsum(QEinsumDenseBuilder),
    EinsumBatchnorm(QEinsumDenseBatchnormBuilder),
    Lut(QUnaryFunctionLutBuilder),
    Softmax(QSoftmaxBuilder),
    BatchNorm(QBatchNormBuilder),
    Merge(QMergeBuilder),
    Conv(QConvBuilder),
    Pool(QPoolBuilder),
    Flatten(Flatten),
    Reshape(Reshape),
}

impl AnyBuilder {
    /// The builder of layer `l` named `name` on inputs `dims` (its output `out`); what this
    /// crate does not build is an error naming the layer.
    pub(crate) fn of(l: &LayerSpec, name: &str, ins: &[Vec<usize>], out: &[usize]) -> Result<Self> {
        let refuse = |what: &str| {
            TorchError::Unsupported(format!("{name}: {what} (not built by this crate yet)"))
        };
        let act = |a: Option<hgq_config::Activation>| match Activation::from_config(a) {
            Some(a) => Ok(a),
            None => Err(refuse(&format!(
                "activation {}",
                a.map_or("?", |a| a.as_str())
            ))),
        };
        // What every quantized layer must have here.
        let common = |iq: &Option<QuantizerConfig>,
                      oq: &Option<QuantizerConfig>,
                      ebops: bool,
                      factor: f64|
         -> Result<Option<QuantizerConfig>> {
            if let Some(oq) = oq {
                oq.to_core()?;
            }
            if ebops {
                super::check_ebops_factor(factor)?;
            }
            if let Some(iq) = iq {
                iq.to_core()?;
            }
            Ok(iq.clone())
        };
        // A builder's input quantizer: the configuration, or none (`enable_iq=False`, with
        // the EBOPs switch as written; hgq-config checks EBOPs have their input quantizer).
        macro_rules! with_iq {
            ($b:expr, $iq:expr, $ebops:expr) => {
                match $iq {
                    Some(c) => $b.iq(c),
                    None => $b.no_iq().enable_ebops($ebops),
                }
            };
        }
        let single = |ins: &[Vec<usize>]| match ins {
            [d] => Ok(d.clone()),
            _ => Err(refuse(&format!("{} inputs to a layer of one", ins.len()))),
        };
        if let LayerSpec::QMerge(m) = l {
            let iq = match &m.iq {
                Some(v) if v.windows(2).all(|w| w[0] == w[1]) && !v.is_empty() => {
                    Some(v[0].clone())
                }
                Some(_) => return Err(refuse("input quantizers that differ per input")),
                None => None,
            };
            let iq = common(&iq, &m.oq, m.enable_ebops, m.ebops_factor)?;
            let dims = ins.first().cloned().unwrap_or_default();
            let b = QMerge::builder(m.op, &dims, ins.len())
                .beta(m.beta0)
                .enable_ebops(m.enable_ebops)
                .ebops_factor(m.ebops_factor)
                .name(name)
                .trainable(m.trainable);
            let mut b = with_iq!(b, iq, m.enable_ebops);
            if let Some(oq) = &m.oq {
                b = b.oq(oq.clone());
            }
            return Ok(AnyBuilder::Merge(b));
        }
        let dims = single(ins)?;
        let dims = dims.as_slice();
        let dense = |d: &hgq_config::QDenseSpec| -> Result<QDenseBuilder> {
            let iq = common(&d.iq, &d.oq, d.enable_ebops, d.ebops_factor)?;
            if d.parallelization_factor == 0 {
                return Err(refuse("parallelization_factor=0"));
            }
            let b = QDense::builder(dims.last().copied().unwrap_or(0), d.units)
                .input_dims(dims)
                .activation(act(d.activation)?)
                .use_bias(d.use_bias)
                .beta(d.beta0)
                .enable_ebops(d.enable_ebops)
                .ebops_factor(d.ebops_factor)
                .kq(d.kq.clone())
                .name(name)
                .trainable(d.trainable);
            let mut b = with_iq!(b, iq, d.enable_ebops);
            d.kq.to_core()?;
            if d.use_bias {
                d.bq.to_core()?;
                b = b.bq(d.bq.clone());
            }
            if let Some(oq) = &d.oq {
                b = b.oq(oq.clone());
            }
            if d.parallelization_factor > 0 {
                b = b.parallelization_factor(d.parallelization_factor as usize);
            }
            Ok(b)
        };
        let einsum = |e: &hgq_config::sequential::QEinsumDenseSpec| -> Result<QEinsumDenseBuilder> {
            let iq = common(&e.iq, &e.oq, e.enable_ebops, e.ebops_factor)?;
            if e.parallelization_factor == 0 {
                return Err(refuse("parallelization_factor=0"));
            }
            let b = QEinsumDense::builder(&e.equation, dims, &e.output_shape)
                .activation(act(e.activation)?)
                .beta(e.beta0)
                .enable_ebops(e.enable_ebops)
                .ebops_factor(e.ebops_factor)
                .kq(e.kq.clone())
                .name(name)
                .trainable(e.trainable);
            let mut b = with_iq!(b, iq, e.enable_ebops);
            e.kq.to_core()?;
            if let Some(axes) = &e.bias_axes {
                e.bq.to_core()?;
                b = b.bias_axes(axes.clone()).bq(e.bq.clone());
            }
            if let Some(oq) = &e.oq {
                b = b.oq(oq.clone());
            }
            if e.parallelization_factor > 0 {
                b = b.parallelization_factor(e.parallelization_factor as usize);
            }
            Ok(b)
        };
        Ok(match l {
            LayerSpec::QMerge(_) => unreachable!("handled above"),
            LayerSpec::QBatchNorm(b) => {
                let iq = common(&b.iq, &b.oq, b.enable_ebops, b.ebops_factor)?;
                if b.axis != -1 && b.axis != dims.len() as i64 {
                    return Err(refuse(&format!("axis {} (the last axis only)", b.axis)));
                }
                b.kq.to_core()?;
                b.bq.to_core()?;
                let n = QBatchNorm::builder(dims)
                    .momentum(b.momentum)
                    .epsilon(b.epsilon)
                    .center(b.center)
                    .scale(b.scale)
                    .beta(b.beta0)
                    .enable_ebops(b.enable_ebops)
                    .ebops_factor(b.ebops_factor)
                    .kq(b.kq.clone())
                    .bq(b.bq.clone())
                    .name(name)
                    .trainable(b.trainable);
                let mut n = with_iq!(n, iq, b.enable_ebops);
                if let Some(oq) = &b.oq {
                    n = n.oq(oq.clone());
                }
                AnyBuilder::BatchNorm(n)
            }
            LayerSpec::QDense(d) => AnyBuilder::Dense(dense(d)?),
            LayerSpec::QBatchNormDense(b) => {
                if b.synchronized {
                    return Err(refuse("synchronized=True"));
                }
                AnyBuilder::BatchNormDense(
                    QBatchNormDense::builder(dense(&b.dense)?)
                        .scale(b.scale)
                        .momentum(b.momentum)
                        .epsilon(b.epsilon),
                )
            }
            LayerSpec::QEinsumDense(e) => AnyBuilder::Einsum(einsum(e)?),
            LayerSpec::QEinsumDenseBatchnorm(e) => {
                let mut b = QEinsumDenseBatchnorm::builder(einsum(&e.dense)?)
                    .momentum(e.momentum)
                    .center(e.center)
                    .scale(e.scale);
                if let Some(n) = &e.normalize_axes {
                    b = b.normalize_axes(n.clone());
                }
                AnyBuilder::EinsumBatchnorm(b)
            }
            LayerSpec::QUnaryFunctionLut(t) => {
                let iq = common(&t.iq, &t.oq, t.enable_ebops, t.ebops_factor)?;
                let b = QUnaryFunctionLut::builder(dims, t.activation)?
                    .beta(t.beta0)
                    .ebops_factor(t.ebops_factor)
                    .allow_heterogeneous_input(t.allow_heterogeneous_input)
                    .allow_heterogeneous_table(t.allow_heterogeneous_table)
                    .name(name)
                    .trainable(t.trainable);
                let b = match &t.oq {
                    Some(oq) => b.oq(oq.clone()),
                    None => b.no_oq(),
                };
                let b = match iq {
                    Some(c) => b.iq(c),
                    None => b.no_iq(),
                };
                AnyBuilder::Lut(b.enable_ebops(t.enable_ebops && t.iq.is_some() && t.oq.is_some()))
            }
            LayerSpec::QSoftmax(q) => {
                let iq = common(&q.iq, &q.oq, q.enable_ebops, q.ebops_factor)?;
                for c in [&q.exp_iq, &q.exp_oq, &q.inv_iq, &q.inv_oq] {
                    c.to_core()?;
                }
                if q.parallelization_factor == 0 {
                    return Err(refuse("parallelization_factor=0"));
                }
                let mut b = QSoftmax::builder(dims)
                    .axes(&q.axes)
                    .stable(q.stable)
                    .beta(q.beta0)
                    .enable_ebops(q.enable_ebops)
                    .ebops_factor(q.ebops_factor)
                    .exp_iq(q.exp_iq.clone())
                    .exp_oq(q.exp_oq.clone())
                    .inv_iq(q.inv_iq.clone())
                    .inv_oq(q.inv_oq.clone())
                    .allow_heterogeneous_table(q.allow_heterogeneous_table)
                    .input_scaler(q.input_scaler)
                    .name(name)
                    .trainable(q.trainable);
                if let Some(c) = iq {
                    b = b.iq(c);
                }
                if let Some(oq) = &q.oq {
                    b = b.oq(oq.clone());
                }
                if q.parallelization_factor > 0 {
                    b = b.parallelization_factor(q.parallelization_factor as usize);
                }
                AnyBuilder::Softmax(b)
            }
            LayerSpec::QConv(c) => {
                let iq = common(&c.iq, &c.oq, c.enable_ebops, c.ebops_factor)?;
                if c.parallelization_factor == 0 {
                    return Err(refuse("parallelization_factor=0"));
                }
                let b = match (c.kernel_size.as_slice(), dims) {
                    (&[k], &[n, ch]) => QConv::builder_1d([n, ch], c.filters, k),
                    (&[kh, kw], &[h, w, ch]) => QConv::builder_2d([h, w, ch], c.filters, [kh, kw]),
                    _ => {
                        return Err(refuse(&format!(
                            "a convolution of kernel {:?} on {dims:?}",
                            c.kernel_size
                        )));
                    }
                };
                let b = b
                    .strides(&c.strides)
                    .padding(c.padding)
                    .dilation(&c.dilation_rate)
                    .groups(c.groups)
                    .activation(act(c.activation)?)
                    .use_bias(c.use_bias)
                    .beta(c.beta0)
                    .enable_ebops(c.enable_ebops)
                    .ebops_factor(c.ebops_factor)
                    .kq(c.kq.clone())
                    .name(name)
                    .trainable(c.trainable);
                let mut b = with_iq!(b, iq, c.enable_ebops);
                c.kq.to_core()?;
                if c.use_bias {
                    c.bq.to_core()?;
                    b = b.bq(c.bq.clone());
                }
                if let Some(oq) = &c.oq {
                    b = b.oq(oq.clone());
                }
                if c.parallelization_factor > 0 {
                    b = b.parallelization_factor(c.parallelization_factor as usize);
                }
                AnyBuilder::Conv(b)
            }
            LayerSpec::QPool(p) => {
                let iq = common(&p.iq, &p.oq, p.enable_ebops, p.ebops_factor)?;
                let b = match (&p.window, dims) {
                    (PoolWindow::Global { keepdims: true, .. }, _) => {
                        return Err(refuse("keepdims=True"));
                    }
                    (PoolWindow::Global { .. }, _) => QPool::global(p.kind, dims),
                    (
                        PoolWindow::Local {
                            pool_size,
                            strides,
                            padding,
                        },
                        _,
                    ) => {
                        let b = match (pool_size.as_slice(), dims) {
                            (&[k], &[n, ch]) => QPool::builder_1d(p.kind, [n, ch], k),
                            (&[kh, kw], &[h, w, ch]) => {
                                QPool::builder_2d(p.kind, [h, w, ch], [kh, kw])
                            }
                            _ => {
                                return Err(refuse(&format!(
                                    "a pooling of {pool_size:?} on {dims:?}"
                                )));
                            }
                        };
                        let b = b.padding(*padding);
                        match strides {
                            Some(s) => b.strides(s),
                            None => b,
                        }
                    }
                };
                let b = b
                    .beta(p.beta0)
                    .enable_ebops(p.enable_ebops)
                    .ebops_factor(p.ebops_factor)
                    .name(name)
                    .trainable(p.trainable);
                let b = with_iq!(b, iq, p.enable_ebops);
                AnyBuilder::Pool(match &p.oq {
                    Some(oq) => b.oq(oq.clone()),
                    None => b,
                })
            }
            LayerSpec::Flatten(_) => AnyBuilder::Flatten(Flatten::new(dims)?.with_name(name)),
            LayerSpec::Activation(a) => AnyBuilder::Activation(
                ActivationLayer::new(dims, act(a.activation)?)?.with_name(name),
            ),
            LayerSpec::Relu(r) => {
                if r.negative_slope != 0.0 || r.threshold != 0.0 {
                    return Err(refuse("a ReLU with negative_slope or threshold"));
                }
                let relu = ReLU::new(dims)?.with_name(name);
                AnyBuilder::Relu(match r.max_value {
                    Some(m) => relu.max_value(m)?,
                    None => relu,
                })
            }
            LayerSpec::Reshape(_) => AnyBuilder::Reshape(Reshape::new(dims, out)?.with_name(name)),
        })
    }
}

impl LayerBuilder for AnyBuilder {
    fn input_dims(&self) -> Vec<usize> {
        match self {
            AnyBuilder::Activation(b) => LayerBuilder::input_dims(b),
            AnyBuilder::Relu(b) => LayerBuilder::input_dims(b),
            AnyBuilder::Dense(b) => b.input_dims(),
            AnyBuilder::BatchNormDense(b) => b.input_dims(),
            AnyBuilder::Einsum(b) => b.input_dims(),
            AnyBuilder::EinsumBatchnorm(b) => b.input_dims(),
            AnyBuilder::Lut(b) => b.input_dims(),
            AnyBuilder::Softmax(b) => b.input_dims(),
            AnyBuilder::BatchNorm(b) => b.input_dims(),
            AnyBuilder::Merge(b) => b.input_dims().to_vec(),
            AnyBuilder::Conv(b) => b.input_dims(),
            AnyBuilder::Pool(b) => b.input_dims(),
            AnyBuilder::Flatten(b) => LayerBuilder::input_dims(b),
            AnyBuilder::Reshape(b) => LayerBuilder::input_dims(b),
        }
    }
    fn build_layer(self, root: &nn::Path, names: &mut Names) -> Result<Box<dyn Layer>> {
        match self {
            AnyBuilder::Activation(b) => b.build_layer(root, names),
            AnyBuilder::Relu(b) => b.build_layer(root, names),
            AnyBuilder::Dense(b) => b.build_layer(root, names),
            AnyBuilder::BatchNormDense(b) => b.build_layer(root, names),
            AnyBuilder::Einsum(b) => b.build_layer(root, names),
            AnyBuilder::EinsumBatchnorm(b) => b.build_layer(root, names),
            AnyBuilder::Lut(b) => b.build_layer(root, names),
            AnyBuilder::Softmax(b) => b.build_layer(root, names),
            AnyBuilder::BatchNorm(b) => b.build_layer(root, names),
            AnyBuilder::Merge(b) => Ok(Box::new(b.build(root, names)?)),
            AnyBuilder::Conv(b) => b.build_layer(root, names),
            AnyBuilder::Pool(b) => b.build_layer(root, names),
            AnyBuilder::Flatten(b) => b.build_layer(root, names),
            AnyBuilder::Reshape(b) => b.build_layer(root, names),
        }
    }
}
