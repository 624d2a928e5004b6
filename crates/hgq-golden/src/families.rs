//! One check function per family.
use crate::backend::Backend;
use crate::backend::FixedFnOut;
use crate::boundary::{boundary_cap, candidates};
use crate::json::{bool_, f32s, shape, str_};
use crate::{GradTolerance, close_grad, same_value};
use hgq_core::kernels::SimdLevel;
use hgq_core::{FixedGrads, FixedPoint, FloatGrads, Par, Path, TensorRef};
use serde_json::Value;
use std::collections::BTreeSet;

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
    /// The elements excused at the log2 boundary (indices into the case's elements).
    pub(crate) boundary: BTreeSet<usize>,
    /// Gradient elements accepted by `grad_tol` but not by the default tolerance.
    pub(crate) tolerated: usize,
    pub(crate) details: Vec<String>,
    grad_tol: GradTolerance,
}

/// At most this many element lines per case and quantity.
const MAX_LINES: usize = 5;

/// Decides whether a differing element `j` (ours, the reference's) is excused.
pub(crate) type Excuse<'a> = &'a dyn Fn(usize, f32, f32) -> bool;

impl Case {
    pub(crate) fn new(name: &str, grad_tol: GradTolerance) -> Self {
        Case {
            name: name.to_string(),
            mismatches: 0,
            boundary: BTreeSet::new(),
            tolerated: 0,
            details: Vec::new(),
            grad_tol,
        }
    }

    /// A free-form mismatch.
    pub(crate) fn fail(&mut self, what: String) {
        self.mismatches += 1;
        self.details.push(format!("{}: {what}", self.name));
    }

    /// Values must be bit-identical.
    pub(crate) fn values(&mut self, what: &str, got: &[f32], want: &[f32]) {
        self.compare(what, got, want, &same_value, None)
    }

    /// Gradients within the case's tolerance.
    pub(crate) fn grads(&mut self, what: &str, got: &[f32], want: &[f32]) {
        self.grads_excused(what, got, want, None)
    }

    /// Gradients within the case's tolerance, with an excuse for some elements.
    pub(crate) fn grads_excused(
        &mut self,
        what: &str,
        got: &[f32],
        want: &[f32],
        excuse: Option<Excuse<'_>>,
    ) {
        let tol = self.grad_tol;
        if tol != GradTolerance::DEFAULT && got.len() == want.len() {
            self.tolerated += got
                .iter()
                .zip(want)
                .filter(|&(&g, &w)| tol.accepts(g, w) && !close_grad(g, w))
                .count();
        }
        self.compare(what, got, want, &|g, w| tol.accepts(g, w), excuse)
    }

    /// The tolerance gradients are compared under.
    pub(crate) fn grad_tolerance(&self) -> GradTolerance {
        self.grad_tol
    }

    /// Compares element by element with `ok`; an element that fails it but that `excuse`
    /// accepts is recorded as a log2-boundary element (see [`Case::cap_boundary`]).
    pub(crate) fn compare(
        &mut self,
        what: &str,
        got: &[f32],
        want: &[f32],
        ok: &dyn Fn(f32, f32) -> bool,
        excuse: Option<Excuse<'_>>,
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
            if excuse.is_some_and(|b| b(j, g, w)) {
                self.boundary.insert(j);
                self.details.push(format!(
                    "{}: {what}[{j}] = {g:e}, reference {w:e} (float32 log2 boundary: the \
                     value of the other exponent)",
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

    /// Fails the case when more than [`boundary_cap`]`(n)` of its `n` elements were excused at
    /// the log2 boundary.
    pub(crate) fn cap_boundary(&mut self, n: usize) {
        let (excused, cap) = (self.boundary.len(), boundary_cap(n));
        if excused > cap {
            self.fail(format!(
                "{excused} of {n} elements differ at the float32 log2 boundary; at most {cap} \
                 may"
            ));
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
    let (gx, gi, gf) = (f32s(g, "x")?, f32s(g, "i")?, f32s(g, "f")?);
    case.grads("grad.x", &o.dx, &gx);
    case.grads("grad.i", &o.di, &gi);
    case.grads("grad.f", &o.df, &gf);
    if backend.name() != "core" {
        return Ok(());
    }
    // hgq-core also on its scalar path on one thread, at every SIMD level this CPU runs, and
    // in float64 (whose values of these types are the float32 ones exactly).
    let mut runs: Vec<(String, FixedFnOut)> = Vec::new();
    let scalar = q.with_path(Path::Scalar).with_par(Par::Seq);
    runs.push((
        "scalar, one thread".into(),
        backend.fixed_fn(scalar, &s, &x, &k, &i, &f, training, &dy)?,
    ));
    for level in SimdLevel::available() {
        let ql = q.with_path(Path::Level(level));
        runs.push((
            format!("{level:?}"),
            backend.fixed_fn(ql, &s, &x, &k, &i, &f, training, &dy)?,
        ));
    }
    runs.push((
        "float64".into(),
        fixed_fn_f64(q, &s, [&x, &k, &i, &f], training, &dy)?,
    ));
    for (label, o) in runs {
        case.values(&format!("y ({label})"), &o.y, &want);
        case.grads(&format!("grad.x ({label})"), &o.dx, &gx);
        case.grads(&format!("grad.i ({label})"), &o.di, &gi);
        // hgq2's float32 grad.f carries the rounding of its float32 surrogate (a difference
        // of nearly equal terms); float64's is the exact one, so it is compared with float64
        // reference vectors, not these.
        if label != "float64" {
            case.grads(&format!("grad.f ({label})"), &o.df, &gf);
        }
    }
    Ok(())
}

/// A `fixed_fn` case computed in float64 (inputs widened exactly), its outputs rounded to
/// float32.
fn fixed_fn_f64(
    q: FixedPoint,
    s: &[usize],
    [x, k, i, f]: [&[f32]; 4],
    training: bool,
    dy: &[f32],
) -> Result<FixedFnOut, String> {
    let wide = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (x, k, i, f, dy) = (wide(x), wide(k), wide(i), wide(f), wide(dy));
    let n = x.len();
    let (mut y, mut dx, mut di, mut df) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let err = |e: hgq_core::CoreError| e.to_string();
    q.forward_backward(
        TensorRef::new(&x, s).map_err(err)?,
        TensorRef::new(&k, s).map_err(err)?,
        TensorRef::new(&i, s).map_err(err)?,
        TensorRef::new(&f, s).map_err(err)?,
        training,
        &dy,
        &mut y,
        FixedGrads {
            dx: &mut dx,
            di: &mut di,
            df: &mut df,
        },
    )
    .map_err(|e| e.to_string())?;
    let narrow = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
    Ok(FixedFnOut {
        y: narrow(y),
        y_forward: None,
        dx: narrow(dx),
        di: narrow(di),
        df: narrow(df),
    })
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
    case.compare("y", &y, &f32s(c, "y")?, &|a, b| a == b, None);
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
    if [&m, &e, &e0, &dy].iter().any(|v| v.len() != n) {
        return Err(format!("m, e, e0 and dy must have x's {n} elements"));
    }
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
    // At a log2-boundary element, each side must give the value of one of the two exponents:
    // ours one, the reference's the other.
    let cands: Vec<Option<[[f32; 5]; 2]>> = (0..n)
        .map(|j| candidates(x[j], m[j], e[j], e0[j], dy[j]))
        .collect();
    let tol = case.grad_tolerance();
    let grad_ok = |g: f32, w: f32| tol.accepts(g, w);
    let cands = &cands;
    case.compare(
        "y",
        &y,
        &f32s(c, "y")?,
        &same_value,
        Some(&|j, got, want| other_exponent(cands[j], 0, got, want, &same_value)),
    );
    for (q, (name, got)) in [("x", &dx), ("m", &dm), ("e", &de), ("e0", &de0)]
        .into_iter()
        .enumerate()
    {
        case.grads_excused(
            &format!("grad.{name}"),
            got,
            &f32s(g, name)?,
            Some(&|j, got, want| other_exponent(cands[j], q + 1, got, want, &grad_ok)),
        );
    }
    case.cap_boundary(n);
    Ok(())
}

/// Whether `got` and `want` of quantity `q` are the results of the two exponents of a
/// log2-boundary element (one each), as `ok` compares.
fn other_exponent(
    cands: Option<[[f32; 5]; 2]>,
    q: usize,
    got: f32,
    want: f32,
    ok: &dyn Fn(f32, f32) -> bool,
) -> bool {
    cands.is_some_and(|[a, b]| {
        (ok(got, a[q]) && ok(want, b[q])) || (ok(got, b[q]) && ok(want, a[q]))
    })
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
