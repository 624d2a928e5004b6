//! One check function per family.
use crate::backend::Backend;
use crate::json::{bool_, f32s, shape, str_};
use crate::{close_grad, same_value};
use hgq_core::{FixedPoint, FloatGrads, TensorRef, log2_boundary};
use serde_json::Value;

/// A family's check: reads a case, runs it on a backend, compares, records into [`Case`].
pub type CheckFn = fn(&Value, &mut Case, &dyn Backend) -> Result<(), String>;

/// The families that run on any [`Backend`] (the others are hgq-core's alone).
pub static BACKEND_FAMILIES: &[&str] = &["fixed_fn", "layers"];

/// The families this checker implements, in the default order.
pub static FAMILIES: &[(&str, CheckFn)] = &[
    ("fixed_fn", fixed_fn),
    ("ap_fixed", ap_fixed),
    ("float_fn", float_fn),
    ("minimal_i", minimal_i),
    ("layers", crate::layers::layers),
    ("config", crate::config::config),
];

/// What one case found.
pub struct Case {
    pub(crate) name: String,
    pub(crate) mismatches: usize,
    pub(crate) boundary: usize,
    pub(crate) details: Vec<String>,
}

/// At most this many element lines per case and quantity.
const MAX_LINES: usize = 5;

impl Case {
    pub(crate) fn new(name: &str) -> Self {
        Case {
            name: name.to_string(),
            mismatches: 0,
            boundary: 0,
            details: Vec::new(),
        }
    }

    /// A free-form mismatch.
    pub(crate) fn fail(&mut self, what: String) {
        self.mismatches += 1;
        self.details.push(format!("{}: {what}", self.name));
    }

    /// Values must be bit-identical.
    pub(crate) fn values(&mut self, what: &str, got: &[f32], want: &[f32]) {
        self.compare(what, got, want, same_value, None)
    }

    /// Gradients within tolerance.
    pub(crate) fn grads(&mut self, what: &str, got: &[f32], want: &[f32]) {
        self.compare(what, got, want, close_grad, None)
    }

    pub(crate) fn compare(
        &mut self,
        what: &str,
        got: &[f32],
        want: &[f32],
        ok: fn(f32, f32) -> bool,
        boundary: Option<&dyn Fn(usize) -> bool>,
    ) {
        if got.len() != want.len() {
            self.fail(format!(
                "{what}: {} values, expected {}",
                got.len(),
                want.len()
            ));
            return;
        }
        let mut lines = 0;
        for (j, (&g, &w)) in got.iter().zip(want).enumerate() {
            if ok(g, w) {
                continue;
            }
            if boundary.is_some_and(|b| b(j)) {
                self.boundary += 1;
                self.details.push(format!(
                    "{}: {what}[{j}] = {g:e}, reference {w:e} (float32 log2 boundary)",
                    self.name
                ));
                continue;
            }
            self.mismatches += 1;
            if lines < MAX_LINES {
                self.details.push(format!(
                    "{}: {what}[{j}] = {g:e} (bits {:08x}), expected {w:e} (bits {:08x})",
                    self.name,
                    g.to_bits(),
                    w.to_bits()
                ));
            }
            lines += 1;
        }
    }
}

fn t<'a>(d: &'a [f32], s: &'a [usize]) -> Result<TensorRef<'a, f32>, String> {
    TensorRef::new(d, s).map_err(|e| e.to_string())
}

fn fixed_fn(c: &Value, case: &mut Case, backend: &dyn Backend) -> Result<(), String> {
    let rm = str_(c, "round_mode")?
        .parse()
        .map_err(|e: hgq_core::CoreError| e.to_string())?;
    let om = str_(c, "overflow_mode")?
        .parse()
        .map_err(|e: hgq_core::CoreError| e.to_string())?;
    let training = bool_(c, "training")?;
    let s = shape(c, "shape")?;
    let (x, k, i, f, dy) = (
        f32s(c, "x")?,
        f32s(c, "k")?,
        f32s(c, "i")?,
        f32s(c, "f")?,
        f32s(c, "dy")?,
    );
    let g = c.get("grad").ok_or("missing grad")?;
    let q = FixedPoint::new(rm, om).map_err(|e| e.to_string())?;
    let o = backend.fixed_fn(q, &s, &x, &k, &i, &f, training, &dy)?;
    let want = f32s(c, "y")?;
    case.values("y", &o.y, &want);
    // The forward alone must give the same bits as the fused pass.
    if let Some(yf) = &o.y_forward {
        case.values("y (forward only)", yf, &want);
    }
    case.grads("grad.x", &o.dx, &f32s(g, "x")?);
    case.grads("grad.i", &o.di, &f32s(g, "i")?);
    case.grads("grad.f", &o.df, &f32s(g, "f")?);
    Ok(())
}

fn ap_fixed(c: &Value, case: &mut Case, _: &dyn Backend) -> Result<(), String> {
    let rm = str_(c, "round_mode")?
        .parse()
        .map_err(|e: hgq_core::CoreError| e.to_string())?;
    let om = str_(c, "overflow_mode")?
        .parse()
        .map_err(|e: hgq_core::CoreError| e.to_string())?;
    let (k, i, f) = (f32s(c, "k")?, f32s(c, "i")?, f32s(c, "f")?);
    let x = f32s(c, "x")?;
    let q = FixedPoint::new(rm, om).map_err(|e| e.to_string())?;
    let mut y = vec![0.0; x.len()];
    let s = [x.len()];
    let one = [1usize];
    q.forward(
        t(&x, &s)?,
        t(&k, &one)?,
        t(&i, &one)?,
        t(&f, &one)?,
        false,
        &mut y,
    )
    .map_err(|e| e.to_string())?;
    // Firmware has no negative zero: compare as numbers there (NaN never occurs).
    case.compare("y", &y, &f32s(c, "y")?, |a, b| a == b, None);
    Ok(())
}

fn float_fn(c: &Value, case: &mut Case, _: &dyn Backend) -> Result<(), String> {
    let s = shape(c, "shape")?;
    let (x, m, e, e0, dy) = (
        f32s(c, "x")?,
        f32s(c, "m")?,
        f32s(c, "e")?,
        f32s(c, "e0")?,
        f32s(c, "dy")?,
    );
    let g = c.get("grad").ok_or("missing grad")?;
    let n = x.len();
    let (mut y, mut dx, mut dm, mut de, mut de0) = (
        vec![0.0; n],
        vec![0.0; n],
        vec![0.0; n],
        vec![0.0; n],
        vec![0.0; n],
    );
    hgq_core::minifloat_backward(
        t(&x, &s)?,
        t(&m, &s)?,
        t(&e, &s)?,
        t(&e0, &s)?,
        &dy,
        &mut y,
        FloatGrads {
            dx: &mut dx,
            dm: &mut dm,
            de: &mut de,
            de0: &mut de0,
        },
    )
    .map_err(|e| e.to_string())?;
    let at_boundary = |j: usize| log2_boundary(x[j]);
    let want = f32s(c, "y")?;
    case.compare("y", &y, &want, same_value, Some(&at_boundary));
    case.compare(
        "grad.x",
        &dx,
        &f32s(g, "x")?,
        close_grad,
        Some(&at_boundary),
    );
    case.compare(
        "grad.m",
        &dm,
        &f32s(g, "m")?,
        close_grad,
        Some(&at_boundary),
    );
    case.compare(
        "grad.e",
        &de,
        &f32s(g, "e")?,
        close_grad,
        Some(&at_boundary),
    );
    case.compare(
        "grad.e0",
        &de0,
        &f32s(g, "e0")?,
        close_grad,
        Some(&at_boundary),
    );
    Ok(())
}

fn minimal_i(c: &Value, case: &mut Case, _: &dyn Backend) -> Result<(), String> {
    let func = str_(c, "function")?;
    let sym = bool_(c, "symmetric")?;
    let x = f32s(c, "x")?;
    let mut y = vec![0.0; x.len()];
    match func {
        "minimal_i_given_xb" => hgq_core::minimal_i_given_xb(&x, &f32s(c, "b")?, sym, &mut y),
        "minimal_i_given_xf" => hgq_core::minimal_i_given_xf(&x, &f32s(c, "f")?, sym, &mut y),
        other => return Err(format!("unknown function {other:?}")),
    }
    .map_err(|e| e.to_string())?;
    case.values("y", &y, &f32s(c, "y")?);
    Ok(())
}
