//! `QuantizerConfig`, `HardTanhConfig` and `HardSigmoidConfig`: the reference's defaults
//! table, its override rules, and the exact JSON.
use crate::de::{At, Dict, Envelope, envelope, ints, opt};
use crate::error::{ConfigError, Result};
use crate::keras::{Constraint, InitValue, Regularizer};
use crate::mapper::BitwidthMapperConfig;
use crate::pyjson::{PyValue, float_repr};
use hgq_core::{OverflowMode, RoundMode};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The module the quantizer configurations live in.
pub const CONFIG_MODULE: &str = "hgq.quantizer.config";

/// The quantizer type (`q_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QType {
    /// Fixed point, parametrized by sign, total bits and integer bits.
    Kbi,
    /// Fixed point, parametrized by sign, integer bits and fractional bits.
    Kif,
    /// Minifloat: mantissa bits, exponent bits, exponent offset.
    Float,
    /// No quantization (identity), no parameters.
    Dummy,
}

impl QType {
    /// The reference's string.
    pub fn as_str(self) -> &'static str {
        match self {
            QType::Kbi => "kbi",
            QType::Kif => "kif",
            QType::Float => "float",
            QType::Dummy => "dummy",
        }
    }

    /// The type `'default'` resolves to at a place: kif for datalane, kbi elsewhere.
    pub fn default_for(place: Place) -> QType {
        match place {
            Place::Datalane => QType::Kif,
            Place::Weight | Place::Bias | Place::Table => QType::Kbi,
        }
    }
}

impl fmt::Display for QType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QType {
    type Err = String;
    /// Case-insensitive `kbi`, `kif`, `float`, `dummy` (`default` depends on the place; see
    /// [`QType::default_for`]).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "kbi" => Ok(QType::Kbi),
            "kif" => Ok(QType::Kif),
            "float" => Ok(QType::Float),
            "dummy" => Ok(QType::Dummy),
            _ => Err(format!("unknown q_type {s:?} (kbi, kif, float, dummy)")),
        }
    }
}

/// Where the quantizer sits; it only selects the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Place {
    /// A layer's weights (kernel).
    Weight,
    /// Activations flowing between layers.
    Datalane,
    /// A layer's bias.
    Bias,
    /// A lookup table.
    Table,
}

impl Place {
    /// Every place.
    pub const ALL: [Place; 4] = [Place::Weight, Place::Datalane, Place::Bias, Place::Table];

    /// The reference's string.
    pub fn as_str(self) -> &'static str {
        match self {
            Place::Weight => "weight",
            Place::Datalane => "datalane",
            Place::Bias => "bias",
            Place::Table => "table",
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Place {
    type Err = String;
    /// Case-insensitive, as the reference lower-cases it.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let l = s.to_ascii_lowercase();
        Place::ALL
            .into_iter()
            .find(|p| p.as_str() == l)
            .ok_or_else(|| format!("unknown place {s:?} (weight, datalane, bias, table)"))
    }
}

/// Which of the three registered config classes this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Flavor {
    /// `QuantizerConfig`.
    Plain,
    /// `HardTanhConfig(symmetric)`: `k0=1, ic=Constant(0), i0=0`, overflow `SAT` or `SAT_SYM`.
    ///
    /// The reference does not write `symmetric` (nor the overflow mode), so a config read
    /// from JSON has `symmetric: false`, as the reference's own `from_config` gives.
    HardTanh {
        /// `SAT_SYM` instead of `SAT`.
        symmetric: bool,
    },
    /// `HardSigmoidConfig`: `k0=1, ic=Constant(1), i0=1`, overflow `SAT`, affine `(0.25, 0.5)`.
    HardSigmoid,
}

impl Flavor {
    /// The class name.
    pub fn class_name(self) -> &'static str {
        match self {
            Flavor::Plain => "QuantizerConfig",
            Flavor::HardTanh { .. } => "HardTanhConfig",
            Flavor::HardSigmoid => "HardSigmoidConfig",
        }
    }

    /// Keys the class fixes itself: refused as overrides, not written.
    fn fixed_keys(self) -> &'static [&'static str] {
        match self {
            Flavor::Plain => &[],
            _ => &["ic", "k0", "i0", "overflow_mode", "affine"],
        }
    }

    /// The values of the fixed keys.
    fn fixed_values(self) -> Vec<(&'static str, PyValue)> {
        match self {
            Flavor::Plain => vec![],
            Flavor::HardTanh { symmetric } => vec![
                ("k0", PyValue::Int(1)),
                ("ic", Constraint::Constant(0.0).to_value()),
                ("i0", PyValue::Int(0)),
                (
                    "overflow_mode",
                    PyValue::str(if symmetric { "SAT_SYM" } else { "SAT" }),
                ),
            ],
            Flavor::HardSigmoid => vec![
                ("k0", PyValue::Int(1)),
                ("ic", Constraint::Constant(1.0).to_value()),
                ("i0", PyValue::Int(1)),
                ("overflow_mode", PyValue::str("SAT")),
            ],
        }
    }

    fn affine(self) -> Option<(f64, f64)> {
        match self {
            Flavor::HardSigmoid => Some((0.25, 0.5)),
            _ => None,
        }
    }
}

/// The keys every non-dummy type has: how its bit widths map onto the input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Common {
    /// Axes sharing one bit width (`None`: not given).
    pub homogeneous_axis: Option<Vec<i64>>,
    /// Axes with a bit width per index (`None`: not given).
    pub heterogeneous_axis: Option<Vec<i64>>,
    /// An explicit mapper (overrides the two axis lists).
    pub bw_mapper: Option<BitwidthMapperConfig>,
    /// Whether the bit widths are trained.
    pub trainable: bool,
    /// Whether the quantizer is on weights.
    pub is_weight: bool,
}

/// Parameters of a KBI fixed-point quantizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KbiParams {
    /// Initial sign bit (`True`: signed).
    pub k0: InitValue,
    /// Initial bits (excluding sign).
    pub b0: InitValue,
    /// Initial integer bits (excluding sign).
    pub i0: InitValue,
    /// Rounding mode.
    #[serde(with = "crate::serde_impl::by_str")]
    pub round_mode: RoundMode,
    /// Overflow mode.
    #[serde(with = "crate::serde_impl::by_str")]
    pub overflow_mode: OverflowMode,
    /// Constraint on the bits.
    pub bc: Option<Constraint>,
    /// Constraint on the integer bits.
    pub ic: Option<Constraint>,
    /// Regularizer on the bits.
    pub br: Option<Regularizer>,
    /// Regularizer on the integer bits.
    pub ir: Option<Regularizer>,
    /// Decay of the integer bits under WRAP (per step).
    pub i_decay_speed: InitValue,
    /// Axes, mapper, flags.
    pub common: Common,
}

/// Parameters of a KIF fixed-point quantizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KifParams {
    /// Initial sign bit.
    pub k0: InitValue,
    /// Initial integer bits (excluding sign).
    pub i0: InitValue,
    /// Initial fractional bits.
    pub f0: InitValue,
    /// Rounding mode.
    #[serde(with = "crate::serde_impl::by_str")]
    pub round_mode: RoundMode,
    /// Overflow mode.
    #[serde(with = "crate::serde_impl::by_str")]
    pub overflow_mode: OverflowMode,
    /// Constraint on the integer bits.
    pub ic: Option<Constraint>,
    /// Regularizer on the integer bits.
    pub ir: Option<Regularizer>,
    /// Constraint on the fractional bits.
    pub fc: Option<Constraint>,
    /// Regularizer on the fractional bits.
    pub fr: Option<Regularizer>,
    /// Decay of the integer bits under WRAP (per step).
    pub i_decay_speed: InitValue,
    /// Axes, mapper, flags.
    pub common: Common,
}

/// Parameters of a minifloat quantizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloatParams {
    /// Initial mantissa bits.
    pub m0: InitValue,
    /// Initial exponent bits.
    pub e0: InitValue,
    /// Initial exponent offset.
    pub e00: InitValue,
    /// Constraint on the mantissa bits.
    pub mc: Option<Constraint>,
    /// Constraint on the exponent bits.
    pub ec: Option<Constraint>,
    /// Constraint on the exponent offset.
    pub e0c: Option<Constraint>,
    /// Regularizer on the mantissa bits.
    pub mr: Option<Regularizer>,
    /// Regularizer on the exponent bits.
    pub er: Option<Regularizer>,
    /// Regularizer on the exponent offset.
    pub e0r: Option<Regularizer>,
    /// Axes, mapper, flags.
    pub common: Common,
}

/// The type-specific parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "q_type", rename_all = "lowercase")]
pub enum Params {
    /// `q_type='kbi'`.
    Kbi(KbiParams),
    /// `q_type='kif'`.
    Kif(KifParams),
    /// `q_type='float'`.
    Float(FloatParams),
    /// `q_type='dummy'`.
    Dummy,
}

impl Params {
    /// The quantizer type.
    pub fn q_type(&self) -> QType {
        match self {
            Params::Kbi(_) => QType::Kbi,
            Params::Kif(_) => QType::Kif,
            Params::Float(_) => QType::Float,
            Params::Dummy => QType::Dummy,
        }
    }

    /// The axes/mapper/flags, except for dummy.
    pub fn common(&self) -> Option<&Common> {
        match self {
            Params::Kbi(p) => Some(&p.common),
            Params::Kif(p) => Some(&p.common),
            Params::Float(p) => Some(&p.common),
            Params::Dummy => None,
        }
    }

    /// The reference's defaults table, `default_configs[(q_type, place)]`.
    ///
    /// ```
    /// use hgq_config::{Params, Place, QType};
    /// let Params::Kbi(p) = Params::defaults(QType::Kbi, Place::Weight) else { panic!() };
    /// assert_eq!(p.b0.as_f64(), 8.0);
    /// assert_eq!(p.i_decay_speed.as_f64(), f64::INFINITY);
    /// ```
    pub fn defaults(q_type: QType, place: Place) -> Params {
        let weight_like = matches!(place, Place::Weight | Place::Table);
        let l1 = Some(Regularizer::MonoL1(1e-8));
        let mm = |a: f64, b: f64| {
            Some(Constraint::MinMax {
                min_value: a,
                max_value: b,
            })
        };
        // Table: the weight defaults, heterogeneous over every axis, not a weight.
        // Bias: the datalane defaults, homogeneous over every axis.
        let common = |float: bool| {
            let (hom, het): (Option<Vec<i64>>, Option<Vec<i64>>) = match (place, float) {
                (Place::Weight, _) => (Some(vec![]), None),
                (Place::Table, _) => (None, Some(vec![])),
                (Place::Datalane, false) => (Some(vec![0]), None),
                (Place::Datalane, true) => (None, Some(vec![])),
                (Place::Bias, false) => (Some(vec![]), None),
                // float_bias: float_datalane with homogeneous_axis=() added.
                (Place::Bias, true) => (Some(vec![]), Some(vec![])),
            };
            Common {
                homogeneous_axis: hom,
                heterogeneous_axis: het,
                bw_mapper: None,
                trainable: true,
                is_weight: place == Place::Weight,
            }
        };
        let (overflow_mode, decay) = if weight_like {
            (OverflowMode::SatSym, f64::INFINITY)
        } else {
            (OverflowMode::Wrap, 0.01)
        };
        match q_type {
            QType::Kbi => Params::Kbi(KbiParams {
                k0: InitValue::Bool(true),
                b0: InitValue::Int(8),
                i0: InitValue::Int(2),
                round_mode: RoundMode::Rnd,
                overflow_mode,
                bc: mm(0.0, if weight_like { 23.0 } else { 24.0 }),
                ic: None,
                br: l1,
                ir: None,
                i_decay_speed: InitValue::Float(decay),
                common: common(false),
            }),
            QType::Kif => Params::Kif(KifParams {
                k0: InitValue::Bool(true),
                i0: InitValue::Int(2),
                f0: InitValue::Int(6),
                round_mode: RoundMode::Rnd,
                overflow_mode,
                ic: mm(-23.0, 23.0),
                ir: l1,
                fc: mm(-24.0, 24.0),
                fr: l1,
                i_decay_speed: InitValue::Float(decay),
                common: common(false),
            }),
            QType::Float => Params::Float(FloatParams {
                m0: InitValue::Int(2),
                e0: InitValue::Int(4),
                e00: InitValue::Int(0),
                mc: mm(-1.0, 8.0),
                ec: mm(0.0, 4.0),
                e0c: mm(-16.0, 16.0),
                mr: l1,
                er: l1,
                e0r: None,
                common: common(true),
            }),
            QType::Dummy => Params::Dummy,
        }
    }

    /// The `config` entries after `q_type`, `place`, `scaler`, `qnoise_factor`, `affine`,
    /// in the reference's order.
    fn entries(&self) -> Vec<(&'static str, PyValue)> {
        let con = |c: &Option<Constraint>| opt(c, Constraint::to_value);
        let reg = |r: &Option<Regularizer>| opt(r, Regularizer::to_value);
        let (mut e, common) = match self {
            Params::Kbi(p) => (
                vec![
                    ("k0", p.k0.to_value()),
                    ("b0", p.b0.to_value()),
                    ("i0", p.i0.to_value()),
                    ("round_mode", PyValue::str(p.round_mode.as_str())),
                    ("overflow_mode", PyValue::str(p.overflow_mode.as_str())),
                    ("bc", con(&p.bc)),
                    ("ic", con(&p.ic)),
                    ("br", reg(&p.br)),
                    ("ir", reg(&p.ir)),
                    ("i_decay_speed", p.i_decay_speed.to_value()),
                ],
                &p.common,
            ),
            Params::Kif(p) => (
                vec![
                    ("k0", p.k0.to_value()),
                    ("i0", p.i0.to_value()),
                    ("f0", p.f0.to_value()),
                    ("round_mode", PyValue::str(p.round_mode.as_str())),
                    ("overflow_mode", PyValue::str(p.overflow_mode.as_str())),
                    ("ic", con(&p.ic)),
                    ("ir", reg(&p.ir)),
                    ("fc", con(&p.fc)),
                    ("fr", reg(&p.fr)),
                    ("i_decay_speed", p.i_decay_speed.to_value()),
                ],
                &p.common,
            ),
            Params::Float(p) => (
                vec![
                    ("m0", p.m0.to_value()),
                    ("e0", p.e0.to_value()),
                    ("e00", p.e00.to_value()),
                    ("mc", con(&p.mc)),
                    ("ec", con(&p.ec)),
                    ("e0c", con(&p.e0c)),
                    ("mr", reg(&p.mr)),
                    ("er", reg(&p.er)),
                    ("e0r", reg(&p.e0r)),
                ],
                &p.common,
            ),
            Params::Dummy => return vec![],
        };
        e.extend([
            (
                "homogeneous_axis",
                opt(&common.homogeneous_axis, |a| ints(a)),
            ),
            (
                "heterogeneous_axis",
                opt(&common.heterogeneous_axis, |a| ints(a)),
            ),
            ("bw_mapper", opt(&common.bw_mapper, |m| m.to_value())),
            ("trainable", PyValue::Bool(common.trainable)),
            ("is_weight", PyValue::Bool(common.is_weight)),
        ]);
        e
    }

    /// Reads the type's keys from `d` (all required).
    fn read(q_type: QType, d: &mut Dict<'_>) -> Result<Params> {
        fn con(d: &mut Dict<'_>, k: &str) -> Result<Option<Constraint>> {
            d.req(k)?.nullable(Constraint::read)
        }
        fn reg(d: &mut Dict<'_>, k: &str) -> Result<Option<Regularizer>> {
            d.req(k)?.nullable(Regularizer::read)
        }
        // Initial bit widths and the decay speed: any number but NaN (a negative decay
        // turns tracing on in inference; an infinite one is the weights' default).
        fn init(d: &mut Dict<'_>, k: &str) -> Result<InitValue> {
            InitValue::read_checked(&d.req(k)?, |v| !v.is_nan(), "must be a number")
        }
        fn k0(d: &mut Dict<'_>) -> Result<InitValue> {
            InitValue::read_checked(&d.req("k0")?, |k| k == 0.0 || k == 1.0, "k0 must be 0 or 1")
        }
        fn modes(d: &mut Dict<'_>) -> Result<(RoundMode, OverflowMode)> {
            let r = d.req("round_mode")?;
            let round = r.str()?.parse().map_err(|e| r.value_err(format!("{e}")))?;
            let o = d.req("overflow_mode")?;
            let over = o.str()?.parse().map_err(|e| o.value_err(format!("{e}")))?;
            Ok((round, over))
        }
        fn common(d: &mut Dict<'_>) -> Result<Common> {
            Ok(Common {
                homogeneous_axis: d.req("homogeneous_axis")?.nullable(At::ints)?,
                heterogeneous_axis: d.req("heterogeneous_axis")?.nullable(At::ints)?,
                bw_mapper: d.req("bw_mapper")?.nullable(BitwidthMapperConfig::read)?,
                trainable: d.req("trainable")?.bool()?,
                is_weight: d.req("is_weight")?.bool()?,
            })
        }
        Ok(match q_type {
            QType::Kbi => {
                let k0 = k0(d)?;
                let b0 = init(d, "b0")?;
                let i0 = init(d, "i0")?;
                let (round_mode, overflow_mode) = modes(d)?;
                Params::Kbi(KbiParams {
                    k0,
                    b0,
                    i0,
                    round_mode,
                    overflow_mode,
                    bc: con(d, "bc")?,
                    ic: con(d, "ic")?,
                    br: reg(d, "br")?,
                    ir: reg(d, "ir")?,
                    i_decay_speed: init(d, "i_decay_speed")?,
                    common: common(d)?,
                })
            }
            QType::Kif => {
                let k0 = k0(d)?;
                let i0 = init(d, "i0")?;
                let f0 = init(d, "f0")?;
                let (round_mode, overflow_mode) = modes(d)?;
                Params::Kif(KifParams {
                    k0,
                    i0,
                    f0,
                    round_mode,
                    overflow_mode,
                    ic: con(d, "ic")?,
                    ir: reg(d, "ir")?,
                    fc: con(d, "fc")?,
                    fr: reg(d, "fr")?,
                    i_decay_speed: init(d, "i_decay_speed")?,
                    common: common(d)?,
                })
            }
            QType::Float => Params::Float(FloatParams {
                m0: init(d, "m0")?,
                e0: init(d, "e0")?,
                e00: init(d, "e00")?,
                mc: con(d, "mc")?,
                ec: con(d, "ec")?,
                e0c: con(d, "e0c")?,
                mr: reg(d, "mr")?,
                er: reg(d, "er")?,
                e0r: reg(d, "e0r")?,
                common: common(d)?,
            }),
            QType::Dummy => Params::Dummy,
        })
    }
}

/// A quantizer configuration: `QuantizerConfig`, `HardTanhConfig` or `HardSigmoidConfig`.
///
/// Build one with [`QuantizerConfig::builder`] (the reference's
/// `QuantizerConfig(q_type, place, **overrides)`), read one with
/// [`QuantizerConfig::from_json`], write it with [`QuantizerConfig::to_json`].
///
/// ```
/// use hgq_config::{Place, QType, QuantizerConfig};
/// use hgq_core::OverflowMode;
/// // QuantizerConfig('kbi', 'weight', b0=6, i0=3, overflow_mode='SAT', heterogeneous_axis=(-1,))
/// let c = QuantizerConfig::builder(QType::Kbi, Place::Weight)
///     .b0(6)
///     .i0(3)
///     .overflow_mode(OverflowMode::Sat)
///     .heterogeneous_axis([-1])
///     .build()
///     .unwrap();
/// let json = c.to_json();
/// assert!(json.contains(r#""b0": 6, "i0": 3"#));
/// assert!(json.contains(r#""homogeneous_axis": null, "heterogeneous_axis": [-1]"#));
/// assert_eq!(QuantizerConfig::from_json(&json).unwrap(), c);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantizerConfig {
    /// Which registered class.
    pub flavor: Flavor,
    /// The place (selects defaults only).
    pub place: Place,
    /// Inputs are divided by it before quantization and multiplied back after.
    #[serde(with = "crate::serde_impl::opt_float")]
    pub scaler: Option<f64>,
    /// Fraction of the quantization noise applied in training.
    #[serde(with = "crate::serde_impl::opt_float")]
    pub qnoise_factor: Option<f64>,
    /// Post-quantization `(scale, shift)`.
    #[serde(with = "crate::serde_impl::opt_pair")]
    pub affine: Option<(f64, f64)>,
    /// The type-specific parameters.
    pub params: Params,
}

impl QuantizerConfig {
    /// `QuantizerConfig(q_type, place, ...)`: start from the defaults of `(q_type, place)`.
    pub fn builder(q_type: QType, place: Place) -> QuantizerConfigBuilder {
        QuantizerConfigBuilder::new(Some(q_type), place, Flavor::Plain)
    }

    /// `QuantizerConfig('default', place, ...)`: kif for datalane, kbi elsewhere.
    pub fn builder_default(place: Place) -> QuantizerConfigBuilder {
        QuantizerConfigBuilder::new(None, place, Flavor::Plain)
    }

    /// `HardTanhConfig(q_type='kif', place='datalane', symmetric=...)`.
    pub fn hard_tanh(symmetric: bool) -> QuantizerConfigBuilder {
        QuantizerConfigBuilder::new(
            Some(QType::Kif),
            Place::Datalane,
            Flavor::HardTanh { symmetric },
        )
    }

    /// `HardSigmoidConfig(q_type='kif', place='datalane')`.
    pub fn hard_sigmoid() -> QuantizerConfigBuilder {
        QuantizerConfigBuilder::new(Some(QType::Kif), Place::Datalane, Flavor::HardSigmoid)
    }

    /// `QuantizerConfig('dummy')` (place datalane).
    pub fn dummy() -> QuantizerConfig {
        QuantizerConfig {
            flavor: Flavor::Plain,
            place: Place::Datalane,
            scaler: None,
            qnoise_factor: None,
            affine: None,
            params: Params::Dummy,
        }
    }

    /// The quantizer type.
    pub fn q_type(&self) -> QType {
        self.params.q_type()
    }

    /// The Keras envelope as a value.
    pub fn to_value(&self) -> PyValue {
        let mut cfg: Vec<(String, PyValue)> = vec![
            ("q_type".into(), PyValue::str(self.q_type().as_str())),
            ("place".into(), PyValue::str(self.place.as_str())),
            ("scaler".into(), opt(&self.scaler, |&s| PyValue::Float(s))),
            (
                "qnoise_factor".into(),
                opt(&self.qnoise_factor, |&s| PyValue::Float(s)),
            ),
            (
                "affine".into(),
                opt(&self.affine, |&(a, b)| {
                    PyValue::List(vec![PyValue::Float(a), PyValue::Float(b)])
                }),
            ),
        ];
        cfg.extend(
            self.params
                .entries()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
        let fixed = self.flavor.fixed_keys();
        cfg.retain(|(k, _)| !fixed.contains(&k.as_str()));
        envelope(
            CONFIG_MODULE,
            self.flavor.class_name(),
            PyValue::Dict(cfg),
            true,
        )
    }

    /// The exact JSON text the reference writes.
    pub fn to_json(&self) -> String {
        self.to_value().to_json()
    }

    /// Reads the JSON text of a `QuantizerConfig`, `HardTanhConfig` or `HardSigmoidConfig`.
    ///
    /// ```
    /// use hgq_config::{ConfigError, QuantizerConfig};
    /// let bad = r#"{"module": "hgq.quantizer.config", "class_name": "QuantizerConfig", "config": {"q_type": "dummy", "place": "datalane", "scaler": 0.0, "qnoise_factor": null, "affine": null}, "registered_name": "hgq>QuantizerConfig"}"#;
    /// let e = QuantizerConfig::from_json(bad).unwrap_err();
    /// assert_eq!(e.path(), Some("$.config.scaler"));
    /// ```
    pub fn from_json(text: &str) -> Result<QuantizerConfig> {
        let v = PyValue::parse(text)?;
        Self::from_value(&v)
    }

    /// Reads a parsed `QuantizerConfig` (or HardTanh/HardSigmoid) envelope.
    pub fn from_value(v: &PyValue) -> Result<QuantizerConfig> {
        Self::read(&At::root(v))
    }

    /// Checks what reading this configuration's Keras JSON checks (see
    /// [`QuantizerConfig::from_json`]), for one made another way (a struct literal, serde,
    /// [`QuantizerConfig::from_core`]): `k0` 0 or 1, initial bit widths and `i_decay_speed`
    /// not NaN, constraint bounds not NaN, regularizer factors finite, `scaler` finite and not
    /// 0, `qnoise_factor` in `[0, 1]`, `affine` finite with a scale that is not 0, a mapper with
    /// its axes, and for `HardTanhConfig` / `HardSigmoidConfig` the values the class fixes.
    /// Errors name the JSON path the value has in the Keras JSON (`$.config.i_decay_speed`).
    ///
    /// ```
    /// use hgq_config::{InitValue, Params, Place, QType, QuantizerConfig};
    /// let mut c = QuantizerConfig::builder(QType::Kbi, Place::Weight).build().unwrap();
    /// assert!(c.validate().is_ok());
    /// if let Params::Kbi(p) = &mut c.params {
    ///     p.i_decay_speed = InitValue::Float(f64::NAN);
    /// }
    /// assert_eq!(c.validate().unwrap_err().path(), Some("$.config.i_decay_speed"));
    /// ```
    pub fn validate(&self) -> Result<()> {
        if self.flavor != Flavor::Plain {
            let class = self.flavor.class_name();
            let err = |key: &str, msg: String| ConfigError::Value {
                path: format!("$.config.{key}"),
                msg,
            };
            if !matches!(self.q_type(), QType::Kbi | QType::Kif) {
                return Err(err("q_type", format!("{class} needs q_type kbi or kif")));
            }
            let entries = self.params.entries();
            for (k, v) in self.flavor.fixed_values() {
                if entries.iter().find(|(e, _)| *e == k).map(|(_, x)| x) != Some(&v) {
                    return Err(err(k, format!("{class} fixes {k} to {v}")));
                }
            }
            if self.affine != self.flavor.affine() {
                return Err(err(
                    "affine",
                    format!("{class} fixes affine to {:?}", self.flavor.affine()),
                ));
            }
        }
        Self::from_value(&self.to_value()).map(|_| ())
    }

    /// Whether a value is the envelope of one of the three config classes.
    pub fn is_config_value(v: &PyValue) -> bool {
        matches!(v.get("module"), Some(PyValue::Str(m)) if m == CONFIG_MODULE)
            && matches!(v.get("class_name"), Some(PyValue::Str(c))
                if matches!(c.as_str(), "QuantizerConfig" | "HardTanhConfig" | "HardSigmoidConfig"))
    }

    pub(crate) fn read(at: &At<'_>) -> Result<QuantizerConfig> {
        let e = Envelope::read(at)?;
        let flavor = match e.class_name {
            "QuantizerConfig" => Flavor::Plain,
            "HardTanhConfig" => Flavor::HardTanh { symmetric: false },
            "HardSigmoidConfig" => Flavor::HardSigmoid,
            _ => return Err(e.unknown()),
        };
        e.expect(CONFIG_MODULE, true)?;
        let mut d = e.config.dict()?;
        for k in flavor.fixed_keys() {
            if d.has(k) {
                return Err(ConfigError::UnknownKey {
                    path: d.path.clone(),
                    key: k.to_string(),
                });
            }
        }
        let cfg = read_config(&mut d, flavor)?;
        d.finish()?;
        e.finish()?;
        Ok(cfg)
    }
}

fn read_config(d: &mut Dict<'_>, flavor: Flavor) -> Result<QuantizerConfig> {
    let place_at = d.req("place")?;
    let place: Place = place_at
        .str()?
        .parse()
        .map_err(|m: String| place_at.value_err(m))?;
    let q_at = d.req("q_type")?;
    let q_str = q_at.str()?;
    let q_type = if q_str.eq_ignore_ascii_case("default") {
        QType::default_for(place)
    } else {
        q_str.parse().map_err(|m: String| q_at.value_err(m))?
    };
    let s_at = d.req("scaler")?;
    let scaler = s_at.nullable(At::finite)?;
    if scaler == Some(0.0) {
        return Err(s_at.value_err("scaler must not be 0"));
    }
    let n_at = d.req("qnoise_factor")?;
    let qnoise_factor = n_at.nullable(At::float)?;
    if let Some(q) = qnoise_factor
        && !(0.0..=1.0).contains(&q)
    {
        return Err(n_at.value_err(format!(
            "qnoise_factor must be between 0 and 1, not {}",
            float_repr(q)
        )));
    }
    let affine = match flavor {
        Flavor::Plain => {
            let a_at = d.req("affine")?;
            a_at.nullable(|a| {
                let l = a.list()?;
                if l.len() != 2 {
                    return Err(a.value_err("affine must be (scale, shift)"));
                }
                let (s, t) = (l[0].finite()?, l[1].finite()?);
                if s == 0.0 {
                    return Err(l[0].value_err("affine scale must not be 0"));
                }
                Ok((s, t))
            })?
        }
        f => f.affine(),
    };
    if flavor != Flavor::Plain && !matches!(q_type, QType::Kbi | QType::Kif) {
        return Err(q_at.value_err(format!("{} needs q_type kbi or kif", flavor.class_name())));
    }
    let params = if flavor == Flavor::Plain {
        Params::read(q_type, d)?
    } else {
        // Put back the keys the class fixes, then read as a plain config.
        let mut full: Vec<(String, PyValue)> = flavor
            .fixed_values()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        for k in Params::defaults(q_type, place)
            .entries()
            .into_iter()
            .map(|(k, _)| k)
        {
            if let Some(at) = d.opt(k) {
                full.push((k.to_string(), at.v.clone()));
            }
        }
        let full = PyValue::Dict(full);
        let mut fd = At::new(&full, d.path.clone()).dict()?;
        let p = Params::read(q_type, &mut fd)?;
        fd.finish()?;
        p
    };
    Ok(QuantizerConfig {
        flavor,
        place,
        scaler,
        qnoise_factor,
        affine,
        params,
    })
}

/// Builds a [`QuantizerConfig`] the way the reference's constructor does: start from the
/// defaults of `(q_type, place)`, then apply overrides; an override the type does not have is
/// an error, and so is giving both `homogeneous_axis` and `heterogeneous_axis` (giving one
/// clears the other).
///
/// ```
/// use hgq_config::{ConfigError, Place, QType, QuantizerConfig};
/// let e = QuantizerConfig::builder(QType::Kbi, Place::Weight).f0(3).build().unwrap_err();
/// assert!(matches!(e, ConfigError::Override { .. }));
/// let e = QuantizerConfig::builder(QType::Kif, Place::Weight)
///     .homogeneous_axis([0])
///     .heterogeneous_axis([1])
///     .build()
///     .unwrap_err();
/// assert!(matches!(e, ConfigError::Override { .. }));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct QuantizerConfigBuilder {
    q_type: Option<QType>,
    place: Place,
    flavor: Flavor,
    scaler: Option<f64>,
    qnoise_factor: Option<f64>,
    affine: Option<(f64, f64)>,
    overrides: Vec<(&'static str, PyValue)>,
}

macro_rules! init_setters {
    ($($name:ident: $doc:literal),* $(,)?) => {$(
        #[doc = $doc]
        pub fn $name(self, v: impl Into<InitValue>) -> Self {
            self.set(stringify!($name), v.into().to_value())
        }
    )*};
}
macro_rules! constraint_setters {
    ($($name:ident: $doc:literal),* $(,)?) => {$(
        #[doc = $doc]
        pub fn $name(self, c: impl Into<Option<Constraint>>) -> Self {
            self.set(stringify!($name), opt(&c.into(), Constraint::to_value))
        }
    )*};
}
macro_rules! regularizer_setters {
    ($($name:ident: $doc:literal),* $(,)?) => {$(
        #[doc = $doc]
        pub fn $name(self, r: impl Into<Option<Regularizer>>) -> Self {
            self.set(stringify!($name), opt(&r.into(), Regularizer::to_value))
        }
    )*};
}

impl QuantizerConfigBuilder {
    fn new(q_type: Option<QType>, place: Place, flavor: Flavor) -> Self {
        QuantizerConfigBuilder {
            q_type,
            place,
            flavor,
            scaler: None,
            qnoise_factor: None,
            affine: None,
            overrides: Vec::new(),
        }
    }

    fn set(mut self, key: &'static str, v: PyValue) -> Self {
        self.overrides.retain(|(k, _)| *k != key);
        self.overrides.push((key, v));
        self
    }

    /// `q_type=` (HardTanh/HardSigmoid accept kbi or kif).
    pub fn q_type(mut self, q: QType) -> Self {
        self.q_type = Some(q);
        self
    }

    /// `place=`.
    pub fn place(mut self, p: Place) -> Self {
        self.place = p;
        self
    }

    init_setters! {
        k0: "`k0=`: initial sign (bool, 0/1 or an initializer).",
        b0: "`b0=` (kbi): initial bits.",
        i0: "`i0=` (kbi, kif): initial integer bits.",
        f0: "`f0=` (kif): initial fractional bits.",
        m0: "`m0=` (float): initial mantissa bits.",
        e0: "`e0=` (float): initial exponent bits.",
        e00: "`e00=` (float): initial exponent offset.",
        i_decay_speed: "`i_decay_speed=` (kbi, kif).",
    }
    constraint_setters! {
        bc: "`bc=` (kbi): constraint on bits.",
        ic: "`ic=` (kbi, kif): constraint on integer bits.",
        fc: "`fc=` (kif): constraint on fractional bits.",
        mc: "`mc=` (float): constraint on mantissa bits.",
        ec: "`ec=` (float): constraint on exponent bits.",
        e0c: "`e0c=` (float): constraint on the exponent offset.",
    }
    regularizer_setters! {
        br: "`br=` (kbi): regularizer on bits.",
        ir: "`ir=` (kbi, kif): regularizer on integer bits.",
        fr: "`fr=` (kif): regularizer on fractional bits.",
        mr: "`mr=` (float): regularizer on mantissa bits.",
        er: "`er=` (float): regularizer on exponent bits.",
        e0r: "`e0r=` (float): regularizer on the exponent offset.",
    }

    /// `round_mode=`.
    pub fn round_mode(self, m: RoundMode) -> Self {
        self.set("round_mode", PyValue::str(m.as_str()))
    }

    /// `overflow_mode=`.
    pub fn overflow_mode(self, m: OverflowMode) -> Self {
        self.set("overflow_mode", PyValue::str(m.as_str()))
    }

    /// `homogeneous_axis=(...)`: clears `heterogeneous_axis`.
    pub fn homogeneous_axis(self, axes: impl IntoIterator<Item = i64>) -> Self {
        let v: Vec<i64> = axes.into_iter().collect();
        self.set("homogeneous_axis", ints(&v))
    }

    /// `heterogeneous_axis=(...)`: clears `homogeneous_axis`.
    pub fn heterogeneous_axis(self, axes: impl IntoIterator<Item = i64>) -> Self {
        let v: Vec<i64> = axes.into_iter().collect();
        self.set("heterogeneous_axis", ints(&v))
    }

    /// `bw_mapper=`.
    pub fn bw_mapper(self, m: impl Into<Option<BitwidthMapperConfig>>) -> Self {
        self.set("bw_mapper", opt(&m.into(), BitwidthMapperConfig::to_value))
    }

    /// `trainable=`.
    pub fn trainable(self, t: bool) -> Self {
        self.set("trainable", PyValue::Bool(t))
    }

    /// `is_weight=`.
    pub fn is_weight(self, w: bool) -> Self {
        self.set("is_weight", PyValue::Bool(w))
    }

    /// `scaler=` (finite, not 0).
    pub fn scaler(mut self, s: f64) -> Self {
        self.scaler = Some(s);
        self
    }

    /// `qnoise_factor=` (in `[0, 1]`).
    pub fn qnoise_factor(mut self, q: f64) -> Self {
        self.qnoise_factor = Some(q);
        self
    }

    /// `affine=(scale, shift)` (finite, scale not 0; not for HardTanh/HardSigmoid).
    pub fn affine(mut self, scale: f64, shift: f64) -> Self {
        self.affine = Some((scale, shift));
        self.overrides.push(("affine", PyValue::Null));
        self
    }

    /// Applies the reference's rules and returns the configuration.
    pub fn build(self) -> Result<QuantizerConfig> {
        let ov = |key: &str, msg: &str| ConfigError::Override {
            key: key.into(),
            msg: msg.into(),
        };
        let q_type = self.q_type.unwrap_or(QType::default_for(self.place));
        if let Some(s) = self.scaler
            && (s == 0.0 || !s.is_finite())
        {
            return Err(ov("scaler", "scaler must be finite and not 0"));
        }
        if let Some((a, b)) = self.affine
            && (a == 0.0 || !a.is_finite() || !b.is_finite())
        {
            return Err(ov(
                "affine",
                "affine must be finite, with a scale that is not 0",
            ));
        }
        if let Some(q) = self.qnoise_factor
            && !(0.0..=1.0).contains(&q)
        {
            return Err(ov("qnoise_factor", "qnoise_factor must be between 0 and 1"));
        }
        let fixed = self.flavor.fixed_keys();
        let mut overrides: Vec<(&str, PyValue)> = Vec::new();
        for (k, v) in self.overrides {
            if k == "i0" && self.flavor != Flavor::Plain {
                continue; // popped by HardTanhConfig / HardSigmoidConfig
            }
            if fixed.contains(&k) {
                return Err(ov(
                    k,
                    &format!("must not be set for {}", self.flavor.class_name()),
                ));
            }
            if k != "affine" {
                overrides.push((k, v));
            }
        }
        let mut cfg = QuantizerConfig {
            flavor: self.flavor,
            place: self.place,
            scaler: self.scaler,
            qnoise_factor: self.qnoise_factor,
            affine: self.flavor.affine().or(self.affine),
            params: Params::Dummy,
        };
        if q_type == QType::Dummy {
            if self.flavor != Flavor::Plain {
                return Err(ov("q_type", "dummy has no integer bits to fix"));
            }
            if let Some((k, _)) = overrides.first() {
                return Err(ov(k, "not a valid parameter for dummy quantizer config"));
            }
            return Ok(cfg);
        }
        let has = |k: &str| {
            overrides
                .iter()
                .any(|(o, v)| *o == k && *v != PyValue::Null)
        };
        if has("homogeneous_axis") && has("heterogeneous_axis") {
            return Err(ov(
                "homogeneous_axis",
                "homogeneous_axis and heterogeneous_axis are mutually exclusive",
            ));
        }
        if has("homogeneous_axis") {
            overrides.push(("heterogeneous_axis", PyValue::Null));
        } else if has("heterogeneous_axis") {
            overrides.push(("homogeneous_axis", PyValue::Null));
        }
        overrides.extend(self.flavor.fixed_values());
        let mut entries: Vec<(String, PyValue)> = Params::defaults(q_type, self.place)
            .entries()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        for (k, v) in overrides {
            match entries.iter_mut().find(|(e, _)| e == k) {
                Some(slot) => slot.1 = v,
                None => {
                    return Err(ov(
                        k,
                        &format!("not a valid parameter for {q_type} quantizer config"),
                    ));
                }
            }
        }
        let full = PyValue::Dict(entries);
        let mut d = At::new(&full, "$.config").dict()?;
        cfg.params = Params::read(q_type, &mut d)?;
        d.finish()?;
        Ok(cfg)
    }
}
