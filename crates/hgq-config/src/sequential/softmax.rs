//! hgq2's `QSoftmax` (module `hgq.layers.softmax`).
use super::table::{default_table, force_heterogeneous, force_table_output, unforceable};
use super::value_err;
use crate::de::{At, dict};
use crate::error::Result;
use crate::keras::{DTypePolicy, Initializer, Num};
use crate::model_json::{default_config, read_beta0};
use crate::pyjson::{PyValue, float_repr};
use crate::quantizer::{Place, QuantizerConfig};

/// The module of hgq2's `QSoftmax`.
pub const QSOFTMAX_MODULE: &str = "hgq.layers.softmax";

/// One `QSoftmax` layer: a softmax over [`Self::axes`] through two lookup tables, `exp`
/// (of the input minus its maximum when `stable`) and `1 / sum`: `QSoftmax(axis=None,
/// iq_conf=None, stable=True, enable_iq=False, exp_iq_conf=None, exp_oq_conf=None,
/// inv_iq_conf=None, inv_oq_conf=None, allow_heterogeneous_table=False, input_scaler=1.0,
/// parallelization_factor=-1, enable_ebops=None, ...)`. The output shape is the input's.
///
/// What hgq2 writes, and what is unusual in it:
///
/// - the base layer's keys (`enable_ebops`, ..., `oq_conf`, `iq_conf`), then `axes`,
///   `stable`, `exp_oq_conf`, `exp_iq_conf`, `inv_oq_conf`, `inv_iq_conf`,
///   `allow_heterogeneous_table`, `input_scaler`, `parallelization_factor`;
/// - the input quantizer is off by default (`enable_iq=False`), and EBOPs are on by default
///   without it (the tables' quantizers count);
/// - `axes` is written as built: sorted, counted from the batch axis (`axis=-1` on inputs
///   `(batch, 4, 6)` is written `[2]`); here [`Self::axes`] is as given and written so, and a
///   document whose `axes` is the last axis alone reads as `[-1]`;
/// - `exp_iq_conf` is `null` without `stable` (the exp table has no input quantizer then);
/// - the table outputs (`exp_oq_conf`, `inv_oq_conf`) get `k0=0` (the int), `overflow_mode
///   'SAT'`, `round_mode 'RND_CONV'` whatever they were (hls4ml's tables); without
///   `allow_heterogeneous_table` (the default), the four table quantizers get
///   `homogeneous_axis=None`, `heterogeneous_axis=()` (written `null`, `[]`);
/// - `parallelization_factor` is written as given (`-1` stays `-1`), `input_scaler` as given
///   (a float here: an int is an error at `input_scaler`);
/// - it is called with `"kwargs": {"mask": null}`.
///
/// The setters make hgq2's changes to the configurations, so that a layer built with them
/// reads back equal; configurations set directly in the fields are changed when written
/// ([`Self::with_forced_configs`]). A `float` or `dummy` table output, or a `dummy` table
/// input without `allow_heterogeneous_table`, is refused (hgq2 would add keys to it).
///
/// Errors: an axis out of range or the batch axis (`axes[i]`; hgq2 takes the batch axis,
/// which is not described here), an axis given twice (`axes`), no axis.
///
/// ```
/// use hgq_config::model_json::QDenseSpec;
/// use hgq_config::sequential::{ChainModelSpec, QSoftmaxSpec};
/// let m = ChainModelSpec::new([4, 6])
///     .layer(QSoftmaxSpec::new())
///     .layer(QSoftmaxSpec::new().axis(1).stable(false).name("over_rows"));
/// assert_eq!(m.layer_names().unwrap(), ["q_softmax", "over_rows"]);
/// assert_eq!(m.output_shapes().unwrap(), [vec![4, 6], vec![4, 6]]);
/// let json = m.to_json().unwrap();
/// assert!(json.contains(r#""iq_conf": null, "axes": [2], "stable": true"#));
/// assert!(json.contains(r#""axes": [1], "stable": false"#));
/// assert!(json.contains(r#""k0": 0, "b0": 8, "i0": 2, "round_mode": "RND_CONV", "overflow_mode": "SAT""#));
/// assert_eq!(ChainModelSpec::from_json(&json).unwrap(), m);
///
/// let bad = ChainModelSpec::new([4, 6]).layer(QSoftmaxSpec::new().axis(3));
/// assert_eq!(bad.to_json().unwrap_err().path(), Some("$.config.layers[1].config.axes[0]"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QSoftmaxSpec {
    /// The layer name; `None` takes Keras' automatic name (`q_softmax`, `q_softmax_1`, ...).
    pub name: Option<String>,
    /// The axes the softmax is over, counted with the batch axis (`-1`: the last; `1`: the
    /// first after the batch), as given; written sorted and non-negative.
    pub axes: Vec<i64>,
    /// `stable`: the exp table takes the maximum minus the input (and has an input
    /// quantizer); else it takes the input.
    pub stable: bool,
    /// Whether the layer is trainable.
    pub trainable: bool,
    /// The initial EBOPs regularization factor (`beta0`, written `Constant(float(beta0))`).
    pub beta0: f64,
    /// Whether EBOPs are computed (`enable_ebops`; on by default, with or without `iq`).
    pub enable_ebops: bool,
    /// The EBOPs scale (`ebops_factor`).
    pub ebops_factor: f64,
    /// The input quantizer (`iq_conf`); `None` (the default) is `enable_iq=False`.
    pub iq: Option<QuantizerConfig>,
    /// The output quantizer (`oq_conf`); `Some` is `enable_oq=True`.
    pub oq: Option<QuantizerConfig>,
    /// The exp table's input quantizer (`exp_iq_conf`; written only with `stable`).
    pub exp_iq: QuantizerConfig,
    /// The exp table's output quantizer (`exp_oq_conf`).
    pub exp_oq: QuantizerConfig,
    /// The inverse table's input quantizer (`inv_iq_conf`).
    pub inv_iq: QuantizerConfig,
    /// The inverse table's output quantizer (`inv_oq_conf`).
    pub inv_oq: QuantizerConfig,
    /// `allow_heterogeneous_table`: `false` (the default) makes the four table quantizers
    /// one bit width per element.
    pub allow_heterogeneous_table: bool,
    /// The exp table's input is multiplied by it (`input_scaler`).
    pub input_scaler: f64,
    /// `parallelization_factor` (EBOPs only), written as given; `-1` by default.
    pub parallelization_factor: i64,
}

impl Default for QSoftmaxSpec {
    fn default() -> Self {
        Self::new()
    }
}

impl QSoftmaxSpec {
    /// `QSoftmax()` with the reference's defaults: unnamed, over the last axis, stable, no
    /// input or output quantizer, EBOPs on, `beta0=1e-5`, the `'default'` datalane table
    /// inputs and `'default'` table outputs (changed as hgq2 changes them), homogeneous
    /// tables, `input_scaler=1.0`, `parallelization_factor=-1`.
    pub fn new() -> Self {
        let mut s = QSoftmaxSpec {
            name: None,
            axes: vec![-1],
            stable: true,
            trainable: true,
            beta0: 1e-5,
            enable_ebops: true,
            ebops_factor: 1.0,
            iq: None,
            oq: None,
            exp_iq: default_config(Place::Datalane),
            exp_oq: default_table(),
            inv_iq: default_config(Place::Datalane),
            inv_oq: default_table(),
            allow_heterogeneous_table: false,
            input_scaler: 1.0,
            parallelization_factor: -1,
        };
        s.force();
        s
    }

    spec_setters!(name, trainable, beta0, enable_ebops, ebops_factor, oq);

    /// Sets one axis (`axis=a`).
    pub fn axis(mut self, a: i64) -> Self {
        self.axes = vec![a];
        self
    }

    /// Sets the axes (`axis=(a, b)`).
    pub fn axes(mut self, a: impl IntoIterator<Item = i64>) -> Self {
        self.axes = a.into_iter().collect();
        self
    }

    /// Sets `stable`.
    pub fn stable(mut self, s: bool) -> Self {
        self.stable = s;
        self
    }

    /// Sets the input quantizer (`Some`: `enable_iq=True`); EBOPs are unchanged.
    pub fn iq(mut self, c: impl Into<Option<QuantizerConfig>>) -> Self {
        self.iq = c.into();
        self
    }

    /// Sets the exp table's input quantizer (changed as hgq2 changes it).
    pub fn exp_iq(mut self, c: QuantizerConfig) -> Self {
        self.exp_iq = c;
        self.force();
        self
    }

    /// Sets the exp table's output quantizer (changed as hgq2 changes it).
    pub fn exp_oq(mut self, c: QuantizerConfig) -> Self {
        self.exp_oq = c;
        self.force();
        self
    }

    /// Sets the inverse table's input quantizer (changed as hgq2 changes it).
    pub fn inv_iq(mut self, c: QuantizerConfig) -> Self {
        self.inv_iq = c;
        self.force();
        self
    }

    /// Sets the inverse table's output quantizer (changed as hgq2 changes it).
    pub fn inv_oq(mut self, c: QuantizerConfig) -> Self {
        self.inv_oq = c;
        self.force();
        self
    }

    /// Sets `allow_heterogeneous_table`. `false` changes the four table quantizers as hgq2
    /// does; `true` gives the table inputs that are still the (changed) defaults back their
    /// defaults, and leaves the other configurations as they are: set it before setting
    /// them.
    pub fn allow_heterogeneous_table(mut self, a: bool) -> Self {
        self.allow_heterogeneous_table = a;
        if a {
            let mut forced = default_config(Place::Datalane);
            force_heterogeneous(&mut forced);
            for c in [&mut self.exp_iq, &mut self.inv_iq] {
                if *c == forced {
                    *c = default_config(Place::Datalane);
                }
            }
        }
        self.force();
        self
    }

    /// Sets `input_scaler`.
    pub fn input_scaler(mut self, s: f64) -> Self {
        self.input_scaler = s;
        self
    }

    /// Sets `parallelization_factor`.
    pub fn parallelization_factor(mut self, p: i64) -> Self {
        self.parallelization_factor = p;
        self
    }

    /// hgq2's changes to the table configurations (see the type's documentation).
    fn force(&mut self) {
        force_table_output(&mut self.exp_oq);
        force_table_output(&mut self.inv_oq);
        if !self.allow_heterogeneous_table {
            for c in [
                &mut self.exp_iq,
                &mut self.inv_iq,
                &mut self.exp_oq,
                &mut self.inv_oq,
            ] {
                force_heterogeneous(c);
            }
        }
    }

    /// The layer with hgq2's changes made to its configurations (what is written); errors
    /// on configurations as writing does (see the type's documentation).
    pub fn with_forced_configs(mut self) -> Result<Self> {
        self.check_configs("$")?;
        self.force();
        Ok(self)
    }

    /// The axes as written for inputs of `input_shape` (without batch): sorted, counted from
    /// the batch axis (0) on. Errors as the type's documentation says, at
    /// `$.config.axes[i]` or `$.config.axes`.
    ///
    /// ```
    /// use hgq_config::sequential::QSoftmaxSpec;
    /// assert_eq!(QSoftmaxSpec::new().resolved_axes(&[4, 6]).unwrap(), [2]);
    /// assert_eq!(QSoftmaxSpec::new().axes([-1, 1]).resolved_axes(&[4, 6]).unwrap(), [1, 2]);
    /// assert!(QSoftmaxSpec::new().axis(0).resolved_axes(&[4, 6]).is_err());
    /// ```
    pub fn resolved_axes(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        self.axes_at(input_shape.len() + 1, "$")
            .map(|a| a.into_iter().map(|x| x as usize).collect())
    }

    /// [`Self::resolved_axes`] for inputs of `rank` axes (the batch included), errors under
    /// `at`.
    fn axes_at(&self, rank: usize, at: &str) -> Result<Vec<i64>> {
        let r = rank as i64;
        if self.axes.is_empty() {
            return Err(value_err(
                format!("{at}.config.axes"),
                "no axis (the default is [-1])",
            ));
        }
        let mut out = Vec::with_capacity(self.axes.len());
        for (i, &a) in self.axes.iter().enumerate() {
            let path = format!("{at}.config.axes[{i}]");
            if a >= r || a < -r {
                return Err(value_err(
                    path,
                    format!("axis {a} for an input of {rank} dimensions"),
                ));
            }
            let p = if a < 0 { a + r } else { a };
            if p == 0 {
                return Err(value_err(
                    path,
                    format!(
                        "axis {a} is the batch axis (hgq2 takes it; a softmax over the batch \
                         is not described here)"
                    ),
                ));
            }
            out.push(p);
        }
        out.sort_unstable();
        if out.windows(2).any(|w| w[0] == w[1]) {
            return Err(value_err(
                format!("{at}.config.axes"),
                format!("an axis given twice in {:?}", self.axes),
            ));
        }
        Ok(out)
    }

    /// Configurations hgq2 would add keys to; errors at `{at}.config.exp_oq_conf` etc.
    fn check_configs(&self, at: &str) -> Result<()> {
        for (c, key) in [(&self.exp_oq, "exp_oq_conf"), (&self.inv_oq, "inv_oq_conf")] {
            if !force_table_output(&mut c.clone()) {
                return Err(unforceable(
                    format!("{at}.config.{key}"),
                    "round_mode and overflow_mode",
                    c,
                ));
            }
        }
        if !self.allow_heterogeneous_table {
            for (c, key) in [(&self.exp_iq, "exp_iq_conf"), (&self.inv_iq, "inv_iq_conf")] {
                if !force_heterogeneous(&mut c.clone()) {
                    return Err(unforceable(
                        format!("{at}.config.{key}"),
                        "homogeneous_axis and heterogeneous_axis",
                        c,
                    ));
                }
            }
        }
        Ok(())
    }

    /// The output shape (the input's); errors under `at` (`$.config.layers[j]`) as the type's
    /// documentation says.
    pub(crate) fn output_shape(&self, input: &[usize], at: &str) -> Result<Vec<usize>> {
        self.axes_at(input.len() + 1, at)?;
        self.check_configs(at)?;
        Ok(input.to_vec())
    }

    /// Reads the axes back as given: the last axis alone as `-1`.
    pub(crate) fn normalize_axes(&mut self, input: &[usize]) {
        if self.axes == [input.len() as i64] {
            self.axes = vec![-1];
        }
    }

    /// The layer's `config` for inputs of `input` (without batch).
    pub(crate) fn config_value(&self, name: &str, input: &[usize]) -> PyValue {
        let mut l = self.clone();
        l.force();
        let axes = l
            .axes_at(input.len() + 1, "$")
            .unwrap_or_else(|_| l.axes.clone());
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
                "axes",
                PyValue::List(axes.into_iter().map(PyValue::Int).collect()),
            ),
            ("stable", PyValue::Bool(l.stable)),
            ("exp_oq_conf", l.exp_oq.to_value()),
            ("exp_iq_conf", conf(l.stable.then_some(&l.exp_iq))),
            ("inv_oq_conf", l.inv_oq.to_value()),
            ("inv_iq_conf", l.inv_iq.to_value()),
            (
                "allow_heterogeneous_table",
                PyValue::Bool(l.allow_heterogeneous_table),
            ),
            ("input_scaler", PyValue::Float(l.input_scaler)),
            (
                "parallelization_factor",
                PyValue::Int(l.parallelization_factor),
            ),
        ])
    }

    /// Reads a `QSoftmax` `config`; the name and the axes are kept as written.
    pub(crate) fn read(at: &At<'_>) -> Result<Self> {
        let mut c = at.dict()?;
        let conf = |a: At<'_>| a.nullable(QuantizerConfig::read);
        let allow_heterogeneous_table = c.req("allow_heterogeneous_table")?.bool()?;
        let input_scaler = {
            let a = c.req("input_scaler")?;
            match a.v {
                PyValue::Float(_) => a.number()?,
                PyValue::Int(i) => {
                    return Err(a.value_err(format!(
                        "the int {i}: hgq2 writes input_scaler as given, and only floats \
                         (`{}`) are described here",
                        float_repr(*i as f64)
                    )));
                }
                _ => return Err(a.type_err("float")),
            }
        };
        let exp_iq = match conf(c.req("exp_iq_conf")?)? {
            Some(q) => q,
            None => {
                let mut q = default_config(Place::Datalane);
                if !allow_heterogeneous_table {
                    force_heterogeneous(&mut q);
                }
                q
            }
        };
        Ok(QSoftmaxSpec {
            name: Some(c.req("name")?.str()?.to_string()),
            axes: c.req("axes")?.ints()?,
            stable: c.req("stable")?.bool()?,
            trainable: c.req("trainable")?.bool()?,
            beta0: read_beta0(&c.req("beta0")?)?,
            enable_ebops: c.req("enable_ebops")?.bool()?,
            ebops_factor: c.req("ebops_factor")?.float()?,
            iq: conf(c.req("iq_conf")?)?,
            oq: conf(c.req("oq_conf")?)?,
            exp_iq,
            exp_oq: QuantizerConfig::read(&c.req("exp_oq_conf")?)?,
            inv_iq: QuantizerConfig::read(&c.req("inv_iq_conf")?)?,
            inv_oq: QuantizerConfig::read(&c.req("inv_oq_conf")?)?,
            allow_heterogeneous_table,
            input_scaler,
            parallelization_factor: c.req("parallelization_factor")?.int()?,
        })
    }
}
