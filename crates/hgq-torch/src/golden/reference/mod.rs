//! Layer models against hgq2 itself: the reference documents of `tests/data/reference`, each
//! made by a script there running hgq2 0.2.0 (Keras 3 on torch, float32 on the CPU), checked on
//! hgq-torch's layers. Three families, one document each:
//!
//! - `cnn` (`cnn.json`, made by `gen_cnn.py`): Sequential models of QConv1D/2D (strides,
//!   `same`/`causal` padding, dilation, groups), max/average pools (windowed and global),
//!   Flatten and QDense, built layer by layer from a description ([`cnn_models`]), and the Keras
//!   JSON hgq2 wrote, written again by us byte for byte ([`cnn_keras_json`]);
//! - `graph` (`graph.json`, `gen_graph.py`): functional graphs built from hgq2's model JSON
//!   (written back byte for byte): residual blocks, the merge layers, two inputs and two outputs,
//!   QBatchNormalization ([`graph`]);
//! - `more` (`more.json`, `gen_more.py`): the same checks on graphs of QEinsumDense,
//!   QBatchNormDense, QEinsumDenseBatchnorm, QUnaryFunctionLUT and QSoftmax ([`more`]).
//!
//! Each case runs hgq2's three calls and compares after each:
//!
//! 1. a training step: the outputs bit for bit, the EBOPs of every layer, the EBOPs and
//!    regularization terms of the loss (within 1e-6 relative), every gradient (the inputs'
//!    too, within [`close`]'s tolerance: 1e-5 of the largest magnitude, at least 1, plus 1e-5
//!    relative; sums in another order than hgq2's), that a variable hgq2 gives no gradient has
//!    none, and every variable after the step bit for bit (the WRAP integer bits tracked, the
//!    batch norm statistics);
//! 2. `trace_minmax` over two batches: the total and every layer's EBOPs, the variables after;
//! 3. inference: the outputs and the variables after, bit for bit.
//!
//! A document also has to cover what it is meant to (a number of cases, every layer kind
//! built; [`Checked::document`]).
//!
//! A case that differs gives `Err` with what differed, named by the case
//! (`more/lut: training: EBOPs of q_unary_function_lut: 5 != 4`); a case that cannot run (a
//! model that does not build, a key missing from the document, a panic inside libtorch) is a
//! failed case too, with its error. Nothing here panics on a mismatch: `cargo xtask golden
//! --backend torch --family cnn|graph|more` (`hgq-golden-torch`) reports the cases, and the
//! tests `tests/reference_cnn.rs` and `tests/reference_graph.rs` assert that all passed.
//!
//! # Devices
//!
//! The models run on the given device; hgq2's values are float32 from the CPU. On the CPU
//! everything above is compared as said, values bit for bit. On CUDA the values (outputs and
//! variables) are compared within the gradient tolerance instead, and an element that only
//! that tolerance accepts is counted ([`Checked::tolerated`]): there the batch statistics of
//! QBatchNormalization, QBatchNormDense and QEinsumDenseBatchnorm (means and variances, and
//! the moving statistics made of them) are reductions CUDA computes in another order than the
//! CPU, cuDNN may run the convolutions in TF32 (torch's default for cuDNN) and sums their
//! products in another order, and the transcendental functions (QSoftmax's `exp`, the tables'
//! functions, the activations) are CUDA's, a few ulps away from the CPU's. A value that lands
//! on a quantizer's rounding boundary can still be quantized one step apart there: that is a
//! mismatch (reported, never hidden). The EBOPs (integers), the loss terms and the JSON are
//! compared as on the CPU.
use std::collections::BTreeSet;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind, Tensor};

mod cnn;
mod graph;

pub use cnn::{cnn_keras_json, cnn_models};
pub use graph::{graph, more};

/// The reference families, in the order `hgq-golden-torch` runs them (the same names as
/// hgq-golden's [`TORCH_FAMILIES`](hgq_golden::TORCH_FAMILIES), which hgq-core's checker
/// reports as torch-only). Each reads `<family>.json` of a reference folder.
pub const FAMILIES: &[&str] = hgq_golden::TORCH_FAMILIES;

/// The layer kinds `cnn.json` must cover (at least one case has each).
pub const CNN_KINDS: &[&str] = &[
    "QConv1D",
    "QConv2D",
    "QMaxPooling1D",
    "QMaxPooling2D",
    "QAveragePooling1D",
    "QAveragePooling2D",
    "QGlobalMaxPooling2D",
    "QGlobalAveragePooling1D",
    "QGlobalAveragePooling2D",
    "Flatten",
    "QDense",
];

/// The layer kinds `graph.json` must cover.
pub const GRAPH_KINDS: &[&str] = &[
    "QAdd",
    "QSubtract",
    "QMultiply",
    "QMaximum",
    "QMinimum",
    "QAveragePow2",
    "QBatchNormalization",
];

/// The layer kinds `more.json` must cover.
pub const MORE_KINDS: &[&str] = &[
    "QEinsumDense",
    "QBatchNormDense",
    "QUnaryFunctionLUT",
    "QSoftmax",
];

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name in the document (`cnn/conv1d`, `more/lut`).
    pub name: String,
    /// `Ok` when every comparison held; otherwise what differed first, or why the case could
    /// not run, prefixed with the case's name.
    pub result: Result<(), String>,
}

/// The outcome of checking a reference document.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The family (`cnn`, `graph`, `more`).
    pub family: String,
    /// Every case of the document, in its order.
    pub cases: Vec<CaseResult>,
    /// The checks of the document as a whole: enough cases, every layer kind of the family
    /// ([`CNN_KINDS`], [`GRAPH_KINDS`], [`MORE_KINDS`]) in some case.
    pub document: Result<(), String>,
    /// Value elements not bit for bit equal to hgq2's but within the gradient tolerance
    /// (CUDA only, see the module docs; always 0 on the CPU).
    pub tolerated: usize,
}

impl Checked {
    /// The cases that failed.
    pub fn mismatches(&self) -> usize {
        self.cases.iter().filter(|c| c.result.is_err()).count()
    }

    /// Every case passed and the document covers what it must.
    pub fn passed(&self) -> bool {
        self.mismatches() == 0 && self.document.is_ok()
    }

    /// The failures, one line each: the failed cases' messages, then the document's.
    pub fn failures(&self) -> Vec<String> {
        self.cases
            .iter()
            .filter_map(|c| c.result.as_ref().err().cloned())
            .chain(self.document.as_ref().err().cloned())
            .collect()
    }
}

impl fmt::Display for Checked {
    /// `FAMILY: cases=N mismatches=M` (hgq-golden's line), then ` value-tolerated=T` when some
    /// value was accepted by the tolerance alone.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: cases={} mismatches={}",
            self.family,
            self.cases.len(),
            self.mismatches()
        )?;
        if self.tolerated > 0 {
            write!(f, " value-tolerated={}", self.tolerated)?;
        }
        Ok(())
    }
}

/// The checkout's reference folder, `tests/data/reference` (where the binary or test was
/// built from).
pub fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/reference")
}

/// `dir/<family>.json`, parsed.
pub fn read_reference(dir: &Path, family: &str) -> Result<Value, String> {
    let path = dir.join(format!("{family}.json"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))
}

/// Checks family `family` (one of [`FAMILIES`]) from `dir/<family>.json` on `device`. For
/// `cnn` a case is both [`cnn_models`]' and [`cnn_keras_json`]'s checks of it (the first
/// failure reported). An unknown family or an unreadable document is an `Err`.
pub fn check_family(family: &str, dir: &Path, device: Device) -> Result<Checked, String> {
    if !FAMILIES.contains(&family) {
        return Err(format!(
            "unknown reference family {family:?}; known: {}",
            FAMILIES.join(", ")
        ));
    }
    let doc = read_reference(dir, family)?;
    Ok(match family {
        "cnn" => {
            let mut models = cnn_models(&doc, device);
            let json = cnn_keras_json(&doc, device);
            for (m, j) in models.cases.iter_mut().zip(json.cases) {
                if m.result.is_ok() {
                    m.result = j.result;
                }
            }
            models.tolerated += json.tolerated;
            if models.document.is_ok() {
                models.document = json.document;
            }
            models
        }
        "graph" => graph(&doc, device),
        _ => more(&doc, device),
    })
}

/// `Err(format!(...))` unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}
pub(crate) use ensure;

/// Runs `case` for every element of `cases` (a panic inside it, from libtorch or the layers, is
/// that case's failure), prefixing errors with the case's name; `Checked::document` is `Ok`.
pub(crate) fn run_cases(
    family: &str,
    cases: &[Value],
    mut case: impl FnMut(&Value, &str, &mut Compare) -> Result<(), String>,
    cmp: &mut Compare,
) -> Checked {
    let results = cases
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let name = c["name"]
                .as_str()
                .map_or_else(|| format!("{family}/#{k}"), str::to_string);
            let run = catch_unwind(AssertUnwindSafe(|| case(c, &name, cmp)));
            let result = match run {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("{name}: {e}")),
                Err(p) => Err(format!("{name}: panicked: {}", panic_message(p.as_ref()))),
            };
            CaseResult { name, result }
        })
        .collect();
    Checked {
        family: family.to_string(),
        cases: results,
        document: Ok(()),
        tolerated: cmp.tolerated,
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// The document's list `key` (its cases).
pub(crate) fn cases_of<'a>(doc: &'a Value, key: &str) -> Result<&'a [Value], String> {
    doc[key]
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| format!("the document has no list {key:?}"))
}

/// Every kind of `want` is in `kinds`, and there are at least `min` cases.
pub(crate) fn coverage(
    n: usize,
    min: usize,
    kinds: &BTreeSet<String>,
    want: &[&str],
) -> Result<(), String> {
    ensure!(n >= min, "{n} cases (at least {min} expected)");
    for k in want {
        ensure!(kinds.contains(*k), "no case has a {k}");
    }
    Ok(())
}

pub(crate) fn array<'a>(v: &'a Value, what: &str) -> Result<&'a [Value], String> {
    v.as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| format!("{what}: not a list"))
}

pub(crate) fn str_<'a>(v: &'a Value, what: &str) -> Result<&'a str, String> {
    v.as_str().ok_or_else(|| format!("{what}: not a string"))
}

pub(crate) fn u64_(v: &Value, what: &str) -> Result<u64, String> {
    v.as_u64()
        .ok_or_else(|| format!("{what}: not a whole number"))
}

pub(crate) fn usizes(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    array(v, what)?
        .iter()
        .map(|n| u64_(n, what).map(|n| n as usize))
        .collect()
}

pub(crate) fn f32s(v: &Value, what: &str) -> Result<Vec<f32>, String> {
    array(v, what)?
        .iter()
        .map(|x| {
            x.as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| format!("{what}: not a number"))
        })
        .collect()
}

/// The sum of the document's loss terms (`losses`, a list of numbers).
pub(crate) fn loss_terms(v: &Value, what: &str) -> Result<f64, String> {
    array(v, what)?
        .iter()
        .map(|l| l.as_f64().ok_or_else(|| format!("{what}: not a number")))
        .sum()
}

/// Call `k` of a case, which must be of `mode` (`training`, `trace_minmax`, `inference`).
pub(crate) fn call<'a>(calls: &'a [Value], k: usize, mode: &str) -> Result<&'a Value, String> {
    let c = calls
        .get(k)
        .ok_or_else(|| format!("no call {k} ({mode})"))?;
    ensure!(
        c["mode"] == mode,
        "call {k}: mode {} (expected {mode:?})",
        c["mode"]
    );
    Ok(c)
}

/// How values are compared on a device, and what the tolerance let through.
pub(crate) struct Compare {
    device: Device,
    /// Value elements accepted by the tolerance alone (CUDA).
    tolerated: usize,
}

impl Compare {
    pub(crate) fn new(device: Device) -> Self {
        Compare {
            device,
            tolerated: 0,
        }
    }

    pub(crate) fn device(&self) -> Device {
        self.device
    }

    /// hgq2's float32 values (`v`, flattened) as a tensor of `shape` on the device.
    pub(crate) fn tensor(&self, v: &Value, shape: &[i64], what: &str) -> Result<Tensor, String> {
        let x = f32s(v, what)?;
        Tensor::f_from_slice(&x)
            .and_then(|t| t.f_reshape(shape))
            .and_then(|t| t.f_to_device(self.device))
            .map_err(|e| format!("{what}: {} values as {shape:?}: {e}", x.len()))
    }

    /// Values: bit for bit on the CPU (zeros of either sign equal); on CUDA within [`close`]'s
    /// tolerance, counting the elements only it accepts.
    pub(crate) fn same(&mut self, got: &Tensor, want: &Value, what: &str) -> Result<(), String> {
        let (g, w) = (values(got)?, f32s(want, what)?);
        ensure!(
            g.len() == w.len(),
            "{what}: length {} != {}",
            g.len(),
            w.len()
        );
        let exact = self.device == Device::Cpu;
        let scale = max_abs(&w);
        for (j, (a, b)) in g.iter().zip(&w).enumerate() {
            if a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0) {
                continue;
            }
            if !exact && within(*a, *b, scale) {
                self.tolerated += 1;
                continue;
            }
            return Err(format!("{what}[{j}]: {a} (ours) != {b} (hgq2)"));
        }
        Ok(())
    }
}

/// A tensor's values as float32, flattened, from any device.
pub(crate) fn values(t: &Tensor) -> Result<Vec<f32>, String> {
    t.detach()
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_to_device(Device::Cpu))
        .and_then(|t| t.f_contiguous())
        .and_then(|t| t.f_view([-1]))
        .and_then(|t| Vec::<f32>::try_from(&t))
        .map_err(|e| e.to_string())
}

fn max_abs(w: &[f32]) -> f32 {
    w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0)
}

fn within(a: f32, b: f32, scale: f32) -> bool {
    (a - b).abs() <= 1e-5 * scale + 1e-5 * b.abs()
}

/// Gradients: sums in another order than hgq2's, so within float32 rounding: each element
/// within 1e-5 of the largest magnitude of hgq2's (at least 1) plus 1e-5 of its own.
pub fn close(got: &Tensor, want: &Value, what: &str) -> Result<(), String> {
    let (g, w) = (values(got)?, f32s(want, what)?);
    ensure!(
        g.len() == w.len(),
        "{what}: length {} != {}",
        g.len(),
        w.len()
    );
    let scale = max_abs(&w);
    for (j, (a, b)) in g.iter().zip(&w).enumerate() {
        ensure!(
            within(*a, *b, scale),
            "{what}[{j}]: {a} (ours) != {b} (hgq2)"
        );
    }
    Ok(())
}

/// The loss terms: ours (EBOPs and regularization) within 1e-6 relative of hgq2's sum.
pub(crate) fn check_terms(ebops_loss: &Tensor, reg: &Tensor, want: f64) -> Result<(), String> {
    let terms = ebops_loss
        .f_double_value(&[])
        .and_then(|e| reg.f_double_value(&[]).map(|r| e + r))
        .map_err(|e| e.to_string())?;
    // Written so that a NaN fails.
    if (terms - want).abs() <= 1e-6 * want.abs().max(1.0) {
        Ok(())
    } else {
        Err(format!("EBOPs and regularization terms {terms} != {want}"))
    }
}

/// A variable without hgq2's gradient has none of ours either.
pub(crate) fn no_grad_expected(t: &Tensor, what: &str) -> Result<(), String> {
    ensure!(
        !t.requires_grad() || !t.grad().defined(),
        "{what} has a gradient hgq2 does not"
    );
    Ok(())
}
