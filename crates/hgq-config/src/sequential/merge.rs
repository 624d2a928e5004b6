//! hgq2's element-wise merge layers: `QAdd`, `QSubtract`, `QMultiply`, `QMaximum`,
//! `QMinimum`, `QAveragePow2` (module `hgq.layers.ops.merge`).
use std::fmt;
use std::str::FromStr;

use super::value_err;
use crate::de::{At, dict};
use crate::error::{ConfigError, Result};
use crate::keras::{DTypePolicy, Initializer, Num};
use crate::model_json::{default_config, read_beta0};
use crate::pyjson::PyValue;
use crate::quantizer::{Place, QuantizerConfig};

/// The element-wise operation of a [`QMergeSpec`], one per hgq2 class.
///
/// ```
/// use hgq_config::sequential::MergeOp;
/// assert_eq!(MergeOp::AveragePow2.class_name(), "QAveragePow2");
/// assert_eq!(MergeOp::AveragePow2.auto_name_prefix(), "q_average_pow2");
/// assert_eq!("QSubtract".parse::<MergeOp>().unwrap(), MergeOp::Subtract);
/// assert!("QDot".parse::<MergeOp>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MergeOp {
    /// `QAdd`: the sum of the inputs.
    Add,
    /// `QSubtract`: the first input minus the second (exactly two inputs).
    Subtract,
    /// `QMultiply`: the product of the inputs.
    Multiply,
    /// `QMaximum`: the element-wise maximum.
    Maximum,
    /// `QMinimum`: the element-wise minimum.
    Minimum,
    /// `QAveragePow2`: the sum times `2 ** round(log2(1 / n))` for `n` inputs (the mean
    /// when `n` is a power of two).
    AveragePow2,
}

impl MergeOp {
    /// Every operation.
    pub const ALL: [MergeOp; 6] = [
        MergeOp::Add,
        MergeOp::Subtract,
        MergeOp::Multiply,
        MergeOp::Maximum,
        MergeOp::Minimum,
        MergeOp::AveragePow2,
    ];

    /// The Keras class name (`QAdd`, ...).
    pub fn class_name(self) -> &'static str {
        match self {
            MergeOp::Add => "QAdd",
            MergeOp::Subtract => "QSubtract",
            MergeOp::Multiply => "QMultiply",
            MergeOp::Maximum => "QMaximum",
            MergeOp::Minimum => "QMinimum",
            MergeOp::AveragePow2 => "QAveragePow2",
        }
    }

    /// The first automatic name Keras gives the class in a fresh session, the prefix of the
    /// later ones (`q_add`, `q_add_1`, ...).
    pub fn auto_name_prefix(self) -> &'static str {
        match self {
            MergeOp::Add => "q_add",
            MergeOp::Subtract => "q_subtract",
            MergeOp::Multiply => "q_multiply",
            MergeOp::Maximum => "q_maximum",
            MergeOp::Minimum => "q_minimum",
            MergeOp::AveragePow2 => "q_average_pow2",
        }
    }
}

impl fmt::Display for MergeOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class_name())
    }
}

impl FromStr for MergeOp {
    type Err = ConfigError;

    /// Reads a class name (`QAdd`, `QSubtract`, ...).
    fn from_str(s: &str) -> Result<Self> {
        MergeOp::ALL
            .into_iter()
            .find(|op| op.class_name() == s)
            .ok_or_else(|| value_err("$", format!("unknown merge class `{s}`")))
    }
}

/// One merge layer of hgq2 (`QAdd()([a, b])`, ...), with its input quantizers (one per
/// input) and output quantizer.
///
/// hgq2 writes the input quantizers of a built merge layer as `iq_confs`, a list of one
/// configuration per input (a single `QuantizerConfig` given in Python is written once per
/// input), or `null` with `enable_iq=False`. Here [`Self::iq`] is `None` for that, one
/// configuration for the same on every input, or one per input.
///
/// ```
/// use hgq_config::sequential::{MergeOp, QMergeSpec};
/// use hgq_config::{Place, QType, QuantizerConfig};
/// let a = QuantizerConfig::builder(QType::Kif, Place::Datalane).i0(3).f0(4).build().unwrap();
/// let b = QuantizerConfig::builder(QType::Kbi, Place::Datalane).b0(6).build().unwrap();
/// let s = QMergeSpec::subtract().iq_per_input([a, b]).name("diff");
/// assert_eq!(s.op, MergeOp::Subtract);
/// assert_eq!(s.iq.as_ref().map(Vec::len), Some(2));
/// let m = QMergeSpec::maximum().iq(None);
/// assert!(m.iq.is_none() && !m.enable_ebops);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QMergeSpec {
    /// The operation (the class).
    pub op: MergeOp,
    /// The layer name; `None` takes Keras' automatic name (`q_add`, `q_subtract_1`, ...).
    pub name: Option<String>,
    /// Whether the layer is trainable.
    pub trainable: bool,
    /// The initial EBOPs regularization factor (`beta0`, written `Constant(float(beta0))`).
    pub beta0: f64,
    /// Whether EBOPs are computed (`enable_ebops`); it needs the input quantizers.
    pub enable_ebops: bool,
    /// The EBOPs scale (`ebops_factor`).
    pub ebops_factor: f64,
    /// The input quantizers (`iq_confs`): `None` is `enable_iq=False`; one configuration is
    /// the same for every input (written once per input); else one per input, as many as
    /// the layer has inputs. A document whose configurations are all equal reads as one.
    pub iq: Option<Vec<QuantizerConfig>>,
    /// The output quantizer (`oq_conf`); `Some` is `enable_oq=True`.
    pub oq: Option<QuantizerConfig>,
}

impl QMergeSpec {
    /// The layer of `op` with the reference's defaults: unnamed, `beta0=1e-5`, EBOPs on,
    /// the `'default'` datalane input quantizer on every input, no output quantizer.
    pub fn new(op: MergeOp) -> Self {
        QMergeSpec {
            op,
            name: None,
            trainable: true,
            beta0: 1e-5,
            enable_ebops: true,
            ebops_factor: 1.0,
            iq: Some(vec![default_config(Place::Datalane)]),
            oq: None,
        }
    }

    /// `QAdd()`.
    pub fn add() -> Self {
        Self::new(MergeOp::Add)
    }

    /// `QSubtract()`.
    pub fn subtract() -> Self {
        Self::new(MergeOp::Subtract)
    }

    /// `QMultiply()`.
    pub fn multiply() -> Self {
        Self::new(MergeOp::Multiply)
    }

    /// `QMaximum()`.
    pub fn maximum() -> Self {
        Self::new(MergeOp::Maximum)
    }

    /// `QMinimum()`.
    pub fn minimum() -> Self {
        Self::new(MergeOp::Minimum)
    }

    /// `QAveragePow2()`.
    pub fn average_pow2() -> Self {
        Self::new(MergeOp::AveragePow2)
    }

    /// The Keras class name (`QAdd`, ...).
    pub fn class_name(&self) -> &'static str {
        self.op.class_name()
    }

    spec_setters!(name, trainable, beta0, enable_ebops, ebops_factor, oq);

    /// Sets one input quantizer for every input (`iq_confs=conf`); `None` turns them off
    /// (`enable_iq=False`) and, as the reference's default does, EBOPs with them.
    pub fn iq(mut self, c: impl Into<Option<QuantizerConfig>>) -> Self {
        self.iq = c.into().map(|c| vec![c]);
        if self.iq.is_none() {
            self.enable_ebops = false;
        }
        self
    }

    /// Sets one input quantizer per input (`iq_confs=[...]`), in argument order.
    pub fn iq_per_input(mut self, c: impl IntoIterator<Item = QuantizerConfig>) -> Self {
        self.iq = Some(c.into_iter().collect());
        self
    }

    /// The output shape (without batch) for inputs of `inputs`: Keras' merge rule for
    /// inputs of equal shapes. Errors name paths under `at` (`$.config.layers[j]`): the
    /// number of inputs (`inbound_nodes[0].args[0]`: at least one, exactly two for
    /// `QSubtract`), an input whose shape differs from the first one's
    /// (`build_config.input_shape[i]`; Keras would broadcast sizes of 1, which is not
    /// described here), `iq_confs` of another length than the inputs.
    pub(crate) fn output_shape(&self, inputs: &[&[usize]], at: &str) -> Result<Vec<usize>> {
        self.check_arity(inputs.len(), at)?;
        let first = inputs[0];
        for (i, s) in inputs.iter().enumerate().skip(1) {
            if *s != first {
                return Err(value_err(
                    format!("{at}.build_config.input_shape[{i}]"),
                    format!(
                        "{} input {i} of shape {s:?} does not match input 0 of shape \
                         {first:?} (only equal shapes are described)",
                        self.class_name()
                    ),
                ));
            }
        }
        Ok(first.to_vec())
    }

    /// Errors on a number of inputs the class (or `iq_confs`) does not take.
    pub(crate) fn check_arity(&self, n: usize, at: &str) -> Result<()> {
        let args = format!("{at}.inbound_nodes[0].args[0]");
        if n == 0 {
            return Err(value_err(args, "a merge layer takes at least one input"));
        }
        if self.op == MergeOp::Subtract && n != 2 {
            return Err(value_err(
                args,
                format!("QSubtract takes exactly 2 inputs, not {n}"),
            ));
        }
        if let Some(iq) = &self.iq
            && iq.len() != 1
            && iq.len() != n
        {
            return Err(value_err(
                format!("{at}.config.iq_confs"),
                format!(
                    "{} input quantizer configurations for {n} inputs (one, or one per input)",
                    iq.len()
                ),
            ));
        }
        Ok(())
    }

    /// The layer's `config`, for `n_inputs` inputs.
    pub(crate) fn config_value(&self, name: &str, n_inputs: usize) -> PyValue {
        let iq = match &self.iq {
            None => PyValue::Null,
            Some(c) if c.len() == 1 => PyValue::List(vec![c[0].to_value(); n_inputs]),
            Some(c) => PyValue::List(c.iter().map(QuantizerConfig::to_value).collect()),
        };
        dict([
            ("name", PyValue::str(name)),
            ("trainable", PyValue::Bool(self.trainable)),
            ("dtype", DTypePolicy::default().to_value()),
            ("enable_ebops", PyValue::Bool(self.enable_ebops)),
            ("ebops_factor", PyValue::Float(self.ebops_factor)),
            (
                "beta0",
                Initializer::Constant(Num::Float(self.beta0)).to_value(),
            ),
            ("enable_oq", PyValue::Bool(self.oq.is_some())),
            ("enable_iq", PyValue::Bool(self.iq.is_some())),
            (
                "oq_conf",
                self.oq
                    .as_ref()
                    .map_or(PyValue::Null, QuantizerConfig::to_value),
            ),
            ("iq_confs", iq),
        ])
    }

    /// Reads the `config` of a layer of class `class`; `Ok(None)` when the class is not a
    /// merge layer described here. The name is kept as written; `iq_confs` all equal read
    /// as one configuration.
    pub(crate) fn read(at: &At<'_>, class: &str) -> Result<Option<Self>> {
        let Ok(op) = class.parse::<MergeOp>() else {
            return Ok(None);
        };
        let mut c = at.dict()?;
        let iq = c.req("iq_confs")?.nullable(|a| {
            let mut confs = a
                .list()?
                .iter()
                .map(QuantizerConfig::read)
                .collect::<Result<Vec<_>>>()?;
            if confs.len() > 1 && confs.iter().all(|x| *x == confs[0]) {
                confs.truncate(1);
            }
            Ok(confs)
        })?;
        Ok(Some(QMergeSpec {
            op,
            name: Some(c.req("name")?.str()?.to_string()),
            trainable: c.req("trainable")?.bool()?,
            beta0: read_beta0(&c.req("beta0")?)?,
            enable_ebops: c.req("enable_ebops")?.bool()?,
            ebops_factor: c.req("ebops_factor")?.float()?,
            iq,
            oq: c.req("oq_conf")?.nullable(QuantizerConfig::read)?,
        }))
    }
}
