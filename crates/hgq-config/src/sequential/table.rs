//! hgq2's `QUnaryFunctionLUT` (module `hgq.layers.activation`), and the changes hgq2 makes
//! to the quantizer configurations of its tables.
use super::value_err;
use crate::de::{At, dict};
use crate::error::Result;
use crate::keras::{DTypePolicy, InitValue, Initializer, Num};
use crate::model_json::{Activation, default_config, read_activation, read_beta0};
use crate::pyjson::PyValue;
use crate::quantizer::{Params, Place, QuantizerConfig};
use hgq_core::{OverflowMode, RoundMode};

/// The module of hgq2's `QUnaryFunctionLUT`.
pub const QUNARY_FUNCTION_LUT_MODULE: &str = "hgq.layers.activation";

/// hgq2's `config['homogeneous_axis'] = None; config['heterogeneous_axis'] = ()` (one
/// bit width per element); `false` for a `dummy` configuration, which has no such keys
/// (hgq2 adds them, which is not described here).
pub(crate) fn force_heterogeneous(c: &mut QuantizerConfig) -> bool {
    let common = match &mut c.params {
        Params::Kbi(p) => &mut p.common,
        Params::Kif(p) => &mut p.common,
        Params::Float(p) => &mut p.common,
        Params::Dummy => return false,
    };
    common.homogeneous_axis = None;
    common.heterogeneous_axis = Some(vec![]);
    true
}

/// `k0` set to `v` where the configuration has one (kbi, kif).
pub(crate) fn force_k0(c: &mut QuantizerConfig, v: InitValue) {
    match &mut c.params {
        Params::Kbi(p) => p.k0 = v,
        Params::Kif(p) => p.k0 = v,
        Params::Float(_) | Params::Dummy => {}
    }
}

/// `QSoftmax`'s table output: `k0=0` (where there is one), `overflow_mode='SAT'`,
/// `round_mode='RND_CONV'`; `false` for a `float` or `dummy` configuration (hgq2 adds the
/// modes as keys, which is not described here).
pub(crate) fn force_table_output(c: &mut QuantizerConfig) -> bool {
    force_k0(c, InitValue::Int(0));
    let (round, overflow) = match &mut c.params {
        Params::Kbi(p) => (&mut p.round_mode, &mut p.overflow_mode),
        Params::Kif(p) => (&mut p.round_mode, &mut p.overflow_mode),
        Params::Float(_) | Params::Dummy => return false,
    };
    *round = RoundMode::RndConv;
    *overflow = OverflowMode::Sat;
    true
}

/// The error for a configuration hgq2 would add keys to.
pub(crate) fn unforceable(path: String, what: &str, c: &QuantizerConfig) -> crate::ConfigError {
    value_err(
        path,
        format!(
            "hgq2 sets {what} on this configuration, which a `{}` configuration does not have \
             (hgq2 adds the keys; not described here)",
            c.q_type().as_str()
        ),
    )
}

/// `QuantizerConfig('default', 'table')`: a LUT's default output quantizer.
pub(crate) fn default_table() -> QuantizerConfig {
    default_config(Place::Table)
}

/// One `QUnaryFunctionLUT` layer: a unary function computed through a lookup table, its
/// input quantized by `iq` (the table's address) and its output by `oq` (the table's
/// entries): `QUnaryFunctionLUT(activation, iq_conf=None, oq_conf=None, enable_oq=True,
/// enable_iq=True, allow_heterogeneous_input=True, allow_heterogeneous_table=True,
/// override_oq_k0_to_0=False, ...)`.
///
/// What hgq2 writes: the base layer's keys (`enable_ebops`, ..., `oq_conf`, `iq_conf`), then
/// Keras' `Activation` key `activation` (`'swish'` written `"silu"`, `None`/`'linear'`
/// written `"linear"`), `allow_heterogeneous_table`, `allow_heterogeneous_input`. The output
/// quantizer is on by default, `QuantizerConfig('default', 'table')` (kbi, one bit width per
/// element). hgq2 changes the configurations it is given, and writes them changed:
///
/// - `allow_heterogeneous_table=False`: the output quantizer's `homogeneous_axis=None`,
///   `heterogeneous_axis=()` (one bit width per element: written `null`, `[]`);
/// - `allow_heterogeneous_input=False`: the same for the input quantizer;
/// - `override_oq_k0_to_0=True`: the output quantizer's `k0=False` (not written as a key:
///   see [`Self::override_oq_k0_to_0`]).
///
/// The setters here make the same changes, so that a layer built with them reads back
/// equal; configurations set directly in the fields are changed when written
/// ([`Self::with_forced_configs`]). A `dummy` configuration there is refused (hgq2 would add
/// keys to it).
///
/// `softmax` and `log_softmax` are refused (hgq2: not unary). hgq2 0.2.0 writes
/// `enable_ebops: true` for a LUT made with `enable_oq=False` (unless `enable_ebops=False`
/// is given), and such a layer fails when trained (its EBOPs need the output quantizer);
/// such a document is read as written, and [`Self::oq`]`(None)` turns EBOPs off.
///
/// ```
/// use hgq_config::model_json::{Activation, QDenseSpec};
/// use hgq_config::sequential::{ChainModelSpec, QUnaryFunctionLUTSpec};
/// let m = ChainModelSpec::new([8])
///     .layer(QDenseSpec::new(8))
///     .layer(QUnaryFunctionLUTSpec::new(Activation::Tanh));
/// assert_eq!(m.layer_names().unwrap(), ["q_dense", "q_unary_function_lut"]);
/// let json = m.to_json().unwrap();
/// assert!(json.contains(r#""activation": "tanh", "allow_heterogeneous_table": true, "allow_heterogeneous_input": true}"#));
/// assert_eq!(ChainModelSpec::from_json(&json).unwrap(), m);
///
/// let bad = ChainModelSpec::new([8]).layer(QUnaryFunctionLUTSpec::new(Activation::Softmax));
/// assert_eq!(bad.to_json().unwrap_err().path(), Some("$.config.layers[1].config.activation"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QUnaryFunctionLUTSpec {
    /// The layer name; `None` takes Keras' automatic name (`q_unary_function_lut`,
    /// `q_unary_function_lut_1`, ...).
    pub name: Option<String>,
    /// The function; `None` is the identity (`"linear"`). Not `softmax` nor `log_softmax`.
    pub activation: Option<Activation>,
    /// Whether the layer is trainable.
    pub trainable: bool,
    /// The initial EBOPs regularization factor (`beta0`, written `Constant(float(beta0))`).
    pub beta0: f64,
    /// Whether EBOPs are computed (`enable_ebops`); it needs the input quantizer (and, to
    /// train, the output quantizer).
    pub enable_ebops: bool,
    /// The EBOPs scale (`ebops_factor`).
    pub ebops_factor: f64,
    /// The input quantizer (`iq_conf`); `None` is `enable_iq=False`.
    pub iq: Option<QuantizerConfig>,
    /// The output (table) quantizer (`oq_conf`); `None` is `enable_oq=False`.
    pub oq: Option<QuantizerConfig>,
    /// `allow_heterogeneous_input`: `false` makes the input quantizer one bit width per
    /// element.
    pub allow_heterogeneous_input: bool,
    /// `allow_heterogeneous_table`: `false` makes the output quantizer one bit width per
    /// element.
    pub allow_heterogeneous_table: bool,
}

impl QUnaryFunctionLUTSpec {
    /// `QUnaryFunctionLUT(activation)` with the reference's defaults: unnamed, `beta0=1e-5`,
    /// EBOPs on, the `'default'` datalane input quantizer, the `'default'` table output
    /// quantizer, heterogeneous input and table allowed.
    pub fn new(activation: impl Into<Option<Activation>>) -> Self {
        QUnaryFunctionLUTSpec {
            name: None,
            activation: activation.into(),
            trainable: true,
            beta0: 1e-5,
            enable_ebops: true,
            ebops_factor: 1.0,
            iq: Some(default_config(Place::Datalane)),
            oq: Some(default_table()),
            allow_heterogeneous_input: true,
            allow_heterogeneous_table: true,
        }
    }

    spec_setters!(name, trainable, beta0, enable_ebops, ebops_factor);

    /// Sets the function (`None`: linear).
    pub fn activation(mut self, a: impl Into<Option<Activation>>) -> Self {
        self.activation = a.into();
        self
    }

    /// Sets the input quantizer (changed as hgq2 changes it without
    /// `allow_heterogeneous_input`); `None` turns it off (`enable_iq=False`) and, as the
    /// reference's default does, EBOPs with it.
    pub fn iq(mut self, c: impl Into<Option<QuantizerConfig>>) -> Self {
        self.iq = c.into();
        if self.iq.is_none() {
            self.enable_ebops = false;
        }
        self.force();
        self
    }

    /// Sets the output quantizer (changed as hgq2 changes it without
    /// `allow_heterogeneous_table`); `None` turns it off (`enable_oq=False`) and EBOPs
    /// with it (see the type's documentation).
    pub fn oq(mut self, c: impl Into<Option<QuantizerConfig>>) -> Self {
        self.oq = c.into();
        if self.oq.is_none() {
            self.enable_ebops = false;
        }
        self.force();
        self
    }

    /// `override_oq_k0_to_0=True`: the output quantizer's `k0` becomes `False` (where it has
    /// one). hgq2 does not write the argument; the changed `k0` is written.
    pub fn override_oq_k0_to_0(mut self) -> Self {
        if let Some(c) = &mut self.oq {
            force_k0(c, InitValue::Bool(false));
        }
        self
    }

    /// Sets `allow_heterogeneous_input`. `false` changes the input quantizer as hgq2 does;
    /// `true` gives an input quantizer that is still the (changed) default back its default,
    /// and leaves another as it is: set it before the input quantizer.
    pub fn allow_heterogeneous_input(mut self, a: bool) -> Self {
        self.allow_heterogeneous_input = a;
        if a {
            let mut forced = default_config(Place::Datalane);
            force_heterogeneous(&mut forced);
            if self.iq.as_ref() == Some(&forced) {
                self.iq = Some(default_config(Place::Datalane));
            }
        }
        self.force();
        self
    }

    /// Sets `allow_heterogeneous_table`; `false` changes the output quantizer as hgq2 does
    /// (the default one is unchanged by it), a change that `true` does not undo: set it
    /// before the output quantizer.
    pub fn allow_heterogeneous_table(mut self, a: bool) -> Self {
        self.allow_heterogeneous_table = a;
        self.force();
        self
    }

    /// hgq2's changes to the configurations (see the type's documentation).
    fn force(&mut self) {
        if !self.allow_heterogeneous_input
            && let Some(c) = &mut self.iq
        {
            force_heterogeneous(c);
        }
        if !self.allow_heterogeneous_table
            && let Some(c) = &mut self.oq
        {
            force_heterogeneous(c);
        }
    }

    /// The layer with hgq2's changes made to its configurations (what is written); errors
    /// as [`Self::check`].
    pub fn with_forced_configs(mut self) -> Result<Self> {
        self.check("$")?;
        self.force();
        Ok(self)
    }

    /// What hgq2 refuses (a `softmax` or `log_softmax` function, at `{at}.config.activation`)
    /// and configurations hgq2 would add keys to (`{at}.config.iq_conf`, `oq_conf`).
    pub fn check(&self, at: &str) -> Result<()> {
        if let Some(a @ (Activation::Softmax | Activation::LogSoftmax)) = self.activation {
            return Err(value_err(
                format!("{at}.config.activation"),
                format!("`{a}` is not unary: hgq2's QUnaryFunctionLUT refuses it"),
            ));
        }
        let forced = [
            (!self.allow_heterogeneous_input, &self.iq, "iq_conf"),
            (!self.allow_heterogeneous_table, &self.oq, "oq_conf"),
        ];
        for (on, c, key) in forced {
            if let (true, Some(c)) = (on, c)
                && !force_heterogeneous(&mut c.clone())
            {
                return Err(unforceable(
                    format!("{at}.config.{key}"),
                    "homogeneous_axis and heterogeneous_axis",
                    c,
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn config_value(&self, name: &str) -> PyValue {
        let mut l = self.clone();
        l.force();
        let conf = |c: Option<&QuantizerConfig>| c.map_or(PyValue::Null, QuantizerConfig::to_value);
        dict([
            ("name", PyValue::str(name)),
            ("trainable", PyValue::Bool(l.trainable)),
            ("dtype", DTypePolicy::default().to_value()),
            ("enable_ebops", PyValue::Bool(l.enable_ebops)),
            ("ebops_factor", PyValue::Float(l.ebops_factor)),
            (
                "beta0",
                Initializer::Constant(Num::Float(l.beta0)).to_value(),
            ),
            ("enable_oq", PyValue::Bool(l.oq.is_some())),
            ("enable_iq", PyValue::Bool(l.iq.is_some())),
            ("oq_conf", conf(l.oq.as_ref())),
            ("iq_conf", conf(l.iq.as_ref())),
            (
                "activation",
                PyValue::str(l.activation.map_or("linear", Activation::as_str)),
            ),
            (
                "allow_heterogeneous_table",
                PyValue::Bool(l.allow_heterogeneous_table),
            ),
            (
                "allow_heterogeneous_input",
                PyValue::Bool(l.allow_heterogeneous_input),
            ),
        ])
    }

    /// Reads a `QUnaryFunctionLUT` `config`; the name is kept as written.
    pub(crate) fn read(at: &At<'_>) -> Result<Self> {
        let mut c = at.dict()?;
        let conf = |a: At<'_>| a.nullable(QuantizerConfig::read);
        Ok(QUnaryFunctionLUTSpec {
            name: Some(c.req("name")?.str()?.to_string()),
            activation: read_activation(&c.req("activation")?)?,
            trainable: c.req("trainable")?.bool()?,
            beta0: read_beta0(&c.req("beta0")?)?,
            enable_ebops: c.req("enable_ebops")?.bool()?,
            ebops_factor: c.req("ebops_factor")?.float()?,
            iq: conf(c.req("iq_conf")?)?,
            oq: conf(c.req("oq_conf")?)?,
            allow_heterogeneous_input: c.req("allow_heterogeneous_input")?.bool()?,
            allow_heterogeneous_table: c.req("allow_heterogeneous_table")?.bool()?,
        })
    }
}
