//! hgq2's pooling layers: `QMaxPooling1D/2D`, `QAveragePooling1D/2D`,
//! `QGlobalMaxPooling1D/2D`, `QGlobalAveragePooling1D/2D`.
use super::{Padding, read_padding, read_sizes, sizes_value, value_err};
use crate::de::{At, dict};
use crate::error::Result;
use crate::keras::{DTypePolicy, Initializer, Num};
use crate::model_json::{check_size, default_config, read_beta0};
use crate::pyjson::PyValue;
use crate::quantizer::{Place, QuantizerConfig};

/// Maximum or average pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// `QMaxPooling*` / `QGlobalMaxPooling*`.
    Max,
    /// `QAveragePooling*` / `QGlobalAveragePooling*`.
    Average,
}

/// The window of a pooling layer: a sliding window, or the whole of the spatial axes.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolWindow {
    /// `QMaxPooling1D/2D(pool_size, strides, padding)`, `QAveragePooling1D/2D(...)`.
    Local {
        /// The window size per spatial axis (`pool_size`); its length is the rank (1 or 2).
        pool_size: Vec<usize>,
        /// The step per spatial axis; `None` is `pool_size`, as Keras resolves it (and
        /// writes it).
        strides: Option<Vec<usize>>,
        /// `valid` or `same`.
        padding: Padding,
    },
    /// `QGlobalMaxPooling1D/2D(keepdims=...)`, `QGlobalAveragePooling1D/2D(...)`.
    Global {
        /// The number of spatial axes pooled (1 or 2).
        rank: usize,
        /// Whether the pooled axes stay, of size 1 (`keepdims`).
        keepdims: bool,
    },
}

/// One pooling layer of hgq2 (channels last), with its input and output quantizers.
///
/// hgq2 writes no `parallelization_factor` for a pooling layer (its `QBasePooling` takes
/// the argument but does not save it), so there is none here.
///
/// ```
/// use hgq_config::sequential::{Padding, PoolKind, PoolWindow, QPoolSpec};
/// let p = QPoolSpec::max([3]).strides([2]).padding(Padding::Same);
/// assert_eq!(p.class_name(), Some("QMaxPooling1D"));
/// assert_eq!(
///     p.window,
///     PoolWindow::Local { pool_size: vec![3], strides: Some(vec![2]), padding: Padding::Same }
/// );
/// let g = QPoolSpec::global_average(2).keepdims(true);
/// assert_eq!(g.class_name(), Some("QGlobalAveragePooling2D"));
/// assert_eq!(g.kind, PoolKind::Average);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QPoolSpec {
    /// The layer name; `None` takes Keras' automatic name (`q_max_pooling2d`,
    /// `q_global_average_pooling1d`, ...).
    pub name: Option<String>,
    /// Maximum or average.
    pub kind: PoolKind,
    /// Sliding window or global.
    pub window: PoolWindow,
    /// Whether the layer is trainable.
    pub trainable: bool,
    /// The initial EBOPs regularization factor (`beta0`, written `Constant(float(beta0))`).
    pub beta0: f64,
    /// Whether EBOPs are computed (`enable_ebops`); it needs the input quantizer.
    pub enable_ebops: bool,
    /// The EBOPs scale (`ebops_factor`).
    pub ebops_factor: f64,
    /// The input quantizer (`iq_conf`); `None` is `enable_iq=False`.
    pub iq: Option<QuantizerConfig>,
    /// The output quantizer (`oq_conf`); `Some` is `enable_oq=True`.
    pub oq: Option<QuantizerConfig>,
}

impl QPoolSpec {
    /// A sliding-window pooling of `pool_size` (one size: 1-D, two: 2-D), strides
    /// `pool_size`, `valid` padding, and the reference's defaults for the rest: unnamed,
    /// `beta0=1e-5`, EBOPs on, the `'default'` datalane input quantizer, no output quantizer.
    pub fn new(kind: PoolKind, pool_size: impl Into<Vec<usize>>) -> Self {
        Self::with_window(
            kind,
            PoolWindow::Local {
                pool_size: pool_size.into(),
                strides: None,
                padding: Padding::Valid,
            },
        )
    }

    /// A global pooling over `rank` spatial axes (1 or 2), `keepdims=False`, and the
    /// reference's defaults for the rest (as [`Self::new`]).
    pub fn global(kind: PoolKind, rank: usize) -> Self {
        Self::with_window(
            kind,
            PoolWindow::Global {
                rank,
                keepdims: false,
            },
        )
    }

    /// `QMaxPooling1D/2D(pool_size)`.
    pub fn max(pool_size: impl Into<Vec<usize>>) -> Self {
        Self::new(PoolKind::Max, pool_size)
    }

    /// `QAveragePooling1D/2D(pool_size)`.
    pub fn average(pool_size: impl Into<Vec<usize>>) -> Self {
        Self::new(PoolKind::Average, pool_size)
    }

    /// `QGlobalMaxPooling1D()` (`rank` 1) or `QGlobalMaxPooling2D()` (`rank` 2).
    pub fn global_max(rank: usize) -> Self {
        Self::global(PoolKind::Max, rank)
    }

    /// `QGlobalAveragePooling1D()` (`rank` 1) or `QGlobalAveragePooling2D()` (`rank` 2).
    pub fn global_average(rank: usize) -> Self {
        Self::global(PoolKind::Average, rank)
    }

    fn with_window(kind: PoolKind, window: PoolWindow) -> Self {
        QPoolSpec {
            name: None,
            kind,
            window,
            trainable: true,
            beta0: 1e-5,
            enable_ebops: true,
            ebops_factor: 1.0,
            iq: Some(default_config(Place::Datalane)),
            oq: None,
        }
    }

    /// The number of spatial axes pooled.
    pub fn rank(&self) -> usize {
        match &self.window {
            PoolWindow::Local { pool_size, .. } => pool_size.len(),
            PoolWindow::Global { rank, .. } => *rank,
        }
    }

    /// Whether the pooling is global.
    pub fn is_global(&self) -> bool {
        matches!(self.window, PoolWindow::Global { .. })
    }

    /// The Keras class name (`QMaxPooling2D`, `QGlobalAveragePooling1D`, ...); `None` for a
    /// rank other than 1 or 2.
    pub fn class_name(&self) -> Option<&'static str> {
        use PoolKind::{Average, Max};
        Some(match (self.is_global(), self.kind, self.rank()) {
            (false, Max, 1) => "QMaxPooling1D",
            (false, Max, 2) => "QMaxPooling2D",
            (false, Average, 1) => "QAveragePooling1D",
            (false, Average, 2) => "QAveragePooling2D",
            (true, Max, 1) => "QGlobalMaxPooling1D",
            (true, Max, 2) => "QGlobalMaxPooling2D",
            (true, Average, 1) => "QGlobalAveragePooling1D",
            (true, Average, 2) => "QGlobalAveragePooling2D",
            _ => return None,
        })
    }

    spec_setters!(name, trainable, beta0, enable_ebops, ebops_factor, iq, oq);

    /// Sets `strides` of a sliding window (no effect on a global pooling).
    pub fn strides(mut self, s: impl Into<Vec<usize>>) -> Self {
        if let PoolWindow::Local { strides, .. } = &mut self.window {
            *strides = Some(s.into());
        }
        self
    }

    /// Sets `padding` of a sliding window (no effect on a global pooling).
    pub fn padding(mut self, p: Padding) -> Self {
        if let PoolWindow::Local { padding, .. } = &mut self.window {
            *padding = p;
        }
        self
    }

    /// Sets `keepdims` of a global pooling (no effect on a sliding window).
    pub fn keepdims(mut self, k: bool) -> Self {
        if let PoolWindow::Global { keepdims, .. } = &mut self.window {
            *keepdims = k;
        }
        self
    }

    /// The output shape (without batch) for an input of `input`, as Keras computes it;
    /// errors name paths under `at` (`$.config.layers[j]`).
    pub(crate) fn output_shape(&self, input: &[usize], at: &str) -> Result<Vec<usize>> {
        let c = format!("{at}.config");
        let rank = self.rank();
        if !(1..=2).contains(&rank) {
            let path = match self.window {
                PoolWindow::Local { .. } => format!("{c}.pool_size"),
                PoolWindow::Global { .. } => format!("{at}.class_name"),
            };
            return Err(value_err(
                path,
                format!("pooling of rank {rank} (1 or 2 only)"),
            ));
        }
        if let PoolWindow::Local {
            pool_size,
            strides,
            padding,
        } = &self.window
        {
            for (i, &n) in pool_size.iter().enumerate() {
                check_size(n, &format!("{c}.pool_size[{i}]"))?;
            }
            if let Some(s) = strides {
                if s.len() != rank {
                    return Err(value_err(
                        format!("{c}.strides"),
                        format!("{} strides for a pooling of rank {rank}", s.len()),
                    ));
                }
                for (i, &n) in s.iter().enumerate() {
                    check_size(n, &format!("{c}.strides[{i}]"))?;
                }
            }
            if *padding == Padding::Causal {
                return Err(value_err(
                    format!("{c}.padding"),
                    "a pooling layer's padding is valid or same",
                ));
            }
        }
        if input.len() != rank + 1 {
            return Err(value_err(
                format!("{at}.build_config.input_shape"),
                format!(
                    "an input of {} dimensions for a pooling of rank {rank} \
                     (it takes (batch, {}channels))",
                    input.len() + 1,
                    "size, ".repeat(rank)
                ),
            ));
        }
        let channels = input[rank];
        match &self.window {
            PoolWindow::Global { keepdims, .. } => Ok(if *keepdims {
                let mut out = vec![1; rank];
                out.push(channels);
                out
            } else {
                vec![channels]
            }),
            PoolWindow::Local {
                pool_size,
                strides,
                padding,
            } => {
                let strides = strides.as_ref().unwrap_or(pool_size);
                let mut out = Vec::with_capacity(rank + 1);
                for (i, (&n, (&p, &s))) in
                    input.iter().zip(pool_size.iter().zip(strides)).enumerate()
                {
                    out.push(match padding {
                        Padding::Valid if p > n => {
                            return Err(value_err(
                                format!("{c}.pool_size[{i}]"),
                                format!(
                                    "a window of {p} does not fit an input of {n} with valid \
                                     padding"
                                ),
                            ));
                        }
                        Padding::Valid => (n - p) / s + 1,
                        _ => (n - 1) / s + 1,
                    });
                }
                out.push(channels);
                Ok(out)
            }
        }
    }

    /// The layer's `config`.
    pub(crate) fn config_value(&self, name: &str) -> PyValue {
        let conf = |c: Option<&QuantizerConfig>| c.map_or(PyValue::Null, QuantizerConfig::to_value);
        let mut entries = vec![
            ("name".to_string(), PyValue::str(name)),
            ("trainable".into(), PyValue::Bool(self.trainable)),
            ("dtype".into(), DTypePolicy::default().to_value()),
        ];
        match &self.window {
            PoolWindow::Local {
                pool_size,
                strides,
                padding,
            } => {
                entries.push(("pool_size".into(), sizes_value(pool_size)));
                entries.push(("padding".into(), PyValue::str(padding.as_str())));
                entries.push((
                    "strides".into(),
                    sizes_value(strides.as_ref().unwrap_or(pool_size)),
                ));
                entries.push(("data_format".into(), PyValue::str("channels_last")));
            }
            PoolWindow::Global { keepdims, .. } => {
                entries.push(("data_format".into(), PyValue::str("channels_last")));
                entries.push(("keepdims".into(), PyValue::Bool(*keepdims)));
            }
        }
        let PyValue::Dict(rest) = dict([
            ("enable_ebops", PyValue::Bool(self.enable_ebops)),
            ("ebops_factor", PyValue::Float(self.ebops_factor)),
            (
                "beta0",
                Initializer::Constant(Num::Float(self.beta0)).to_value(),
            ),
            ("enable_oq", PyValue::Bool(self.oq.is_some())),
            ("enable_iq", PyValue::Bool(self.iq.is_some())),
            ("oq_conf", conf(self.oq.as_ref())),
            ("iq_conf", conf(self.iq.as_ref())),
        ]) else {
            unreachable!("dict() builds a dict")
        };
        entries.extend(rest);
        PyValue::Dict(entries)
    }

    /// Reads the `config` of a layer of class `class`; `Ok(None)` when the class is not a
    /// pooling layer described here. The name is kept as written; strides equal to
    /// `pool_size` read as `None`.
    pub(crate) fn read(at: &At<'_>, class: &str) -> Result<Option<Self>> {
        let Some((global, kind, rank)) = parse_class(class) else {
            return Ok(None);
        };
        let mut c = at.dict()?;
        let conf = |a: At<'_>| a.nullable(QuantizerConfig::read);
        let window = if global {
            PoolWindow::Global {
                rank,
                keepdims: c.req("keepdims")?.bool()?,
            }
        } else {
            let pool_size = read_sizes(&c.req("pool_size")?, rank)?;
            let strides = read_sizes(&c.req("strides")?, rank)?;
            PoolWindow::Local {
                strides: (strides != pool_size).then_some(strides),
                pool_size,
                padding: read_padding(&c.req("padding")?)?,
            }
        };
        Ok(Some(QPoolSpec {
            name: Some(c.req("name")?.str()?.to_string()),
            kind,
            window,
            trainable: c.req("trainable")?.bool()?,
            beta0: read_beta0(&c.req("beta0")?)?,
            enable_ebops: c.req("enable_ebops")?.bool()?,
            ebops_factor: c.req("ebops_factor")?.float()?,
            iq: conf(c.req("iq_conf")?)?,
            oq: conf(c.req("oq_conf")?)?,
        }))
    }
}

/// `QGlobalAveragePooling2D` -> `(true, Average, 2)`.
fn parse_class(class: &str) -> Option<(bool, PoolKind, usize)> {
    let rest = class.strip_prefix('Q')?;
    let (global, rest) = match rest.strip_prefix("Global") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (kind, rest) = if let Some(r) = rest.strip_prefix("MaxPooling") {
        (PoolKind::Max, r)
    } else {
        (PoolKind::Average, rest.strip_prefix("AveragePooling")?)
    };
    let rank = match rest {
        "1D" => 1,
        "2D" => 2,
        _ => return None,
    };
    Some((global, kind, rank))
}
