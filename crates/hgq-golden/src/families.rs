//! One check function per family.
use crate::backend::{Backend, FixedFnOut, TypedInputs, of_elem, to_elem};
use crate::boundary::{boundary_cap, candidates};
use crate::json::{bool_, f32s, shape, str_, typed};
use crate::{Dtype, GradTolerance, same_value};
use half::{bf16, f16};
use hgq_core::kernels::SimdLevel;
use hgq_core::{Element, FixedPoint, FloatGrads, Par, Path, Real, TensorRef};
use serde_json::Value;
use std::collections::BTreeSet;

/// A family's check: reads a case, runs it on a backend, compares, records into [`Case`].
pub type CheckFn = fn(&Value, &mut Case, &dyn Backend) -> Result<(), String>;

/// The families that run on any [`Backend`] (the others are hgq-core's alone).
pub static BACKEND_FAMILIES: &[&str] = &["fixed_fn", "layers"];

/// The families of layer models against hgq2 (`tests/data/reference/{cnn,graph,more}.json`):
/// the layers are hgq-torch's (libtorch) code and hgq-core has none, so only hgq-torch's
/// `hgq-golden-torch` checks them (`cargo xtask golden --backend torch`); this checker names
/// them as such ([`torch_only`]) instead of calling them unknown.
pub static TORCH_FAMILIES: &[&str] = &["cnn", "graph", "more"];

/// What hgq-core's checker says of a family of [`TORCH_FAMILIES`]: that it runs on the torch
/// backend only, and how to run it.
pub fn torch_only(family: &str) -> String {
    format!(
        "{family}: torch backend only (hgq2's layer models are hgq-torch's libtorch layers; \
         hgq-core has none): cargo xtask golden --backend torch --family {family}"
    )
}

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
    /// Gradient elements accepted by `grad_tol` but not by `base_tol`.
    pub(crate) tolerated: usize,
    pub(crate) details: Vec<String>,
    /// Why the case was not checked (the backend does not run its dtype).
    pub(crate) skipped: Option<String>,
    /// The tolerance of the case's dtype ([`Dtype::grad_tolerance`]).
    base_tol: GradTolerance,
    /// The tolerance of the check ([`crate::Options::grad`]).
    options_tol: GradTolerance,
    /// What gradients are compared under: `options_tol`, and for float16/bfloat16 the looser of
    /// it and `base_tol`.
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
            skipped: None,
            base_tol: GradTolerance::DEFAULT,
            options_tol: grad_tol,
            grad_tol,
        }
    }

    /// The case is computed in `dtype`: its gradients compare under that type's tolerance (or
    /// the check's, where looser).
    pub(crate) fn set_dtype(&mut self, dtype: Dtype) {
        self.base_tol = dtype.grad_tolerance();
        self.grad_tol = match dtype.is_narrow() {
            true => self.base_tol.max(self.options_tol),
            false => self.options_tol,
        };
    }

    /// The case is not checked, for the reason `why`.
    pub(crate) fn skip(&mut self, why: String) {
        self.skipped = Some(why);
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
        let (tol, base) = (self.grad_tol, self.base_tol);
        if tol != base && got.len() == want.len() {
            self.tolerated += got
                .iter()
                .zip(want)
                .filter(|&(&g, &w)| tol.accepts(g, w) && !base.accepts(g, w))
                .count();
        }
        self.compare(what, got, want, &|g, w| tol.accepts(g, w), excuse)
    }

    /// Values of `dtype` (held exactly by f64) must be bit-identical as that type.
    pub(crate) fn values_typed(&mut self, dtype: Dtype, what: &str, got: &[f64], want: &[f64]) {
        let same = |g: f64, w: f64| (g.is_nan() && w.is_nan()) || g.to_bits() == w.to_bits();
        self.compare_typed(dtype, what, got, want, &same)
    }

    /// Gradients of a `dtype` case: ours rounded to the type (hgq-core computes the bit widths'
    /// gradients of float16/bfloat16 in float32), then within the case's tolerance.
    pub(crate) fn grads_typed(&mut self, dtype: Dtype, what: &str, got: &[f64], want: &[f64]) {
        let got: Vec<f64> = got.iter().map(|&g| dtype.round(g)).collect();
        let (tol, base) = (self.grad_tol, self.base_tol);
        if tol != base && got.len() == want.len() {
            self.tolerated += got
                .iter()
                .zip(want)
                .filter(|&(&g, &w)| tol.accepts_f64(g, w) && !base.accepts_f64(g, w))
                .count();
        }
        self.compare_typed(dtype, what, &got, want, &|g, w| tol.accepts_f64(g, w))
    }

    /// [`Case::compare`] for values of `dtype` held by f64 (reported with the type's bits).
    fn compare_typed(
        &mut self,
        dtype: Dtype,
        what: &str,
        got: &[f64],
        want: &[f64],
        ok: &dyn Fn(f64, f64) -> bool,
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
            self.mismatches += 1;
            if lines < MAX_LINES {
                self.details.push(format!(
                    "{}: {what}[{j}] = {g:e} ({dtype} bits {}), expected {w:e} (bits {})",
                    self.name,
                    dtype.bits(g),
                    dtype.bits(w)
                ));
            }
            lines += 1;
        }
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
    let dtype = crate::json::dtype(c)?;
    if dtype != Dtype::F32 {
        let q = FixedPoint::new(rm, om).map_err(|e| e.to_string())?;
        return fixed_fn_typed(c, case, backend, q, dtype);
    }
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
    for (label, ql) in core_runs(q) {
        runs.push((
            label,
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
        // of nearly equal terms); float64's is the exact one, so it is compared with the
        // float64 cases' (fixed_fn_typed), not these.
        if label != "float64" {
            case.grads(&format!("grad.f ({label})"), &o.df, &gf);
        }
    }
    Ok(())
}

/// The hgq-core runs of a case beyond the one as given: its scalar path on one thread and every
/// SIMD level this CPU runs.
fn core_runs(q: FixedPoint) -> Vec<(String, FixedPoint)> {
    let mut runs = vec![(
        "scalar, one thread".to_string(),
        q.with_path(Path::Scalar).with_par(Par::Seq),
    )];
    for level in SimdLevel::available() {
        runs.push((format!("{level:?}"), q.with_path(Path::Level(level))));
    }
    runs
}

/// A `fixed_fn` case of another dtype than float32: run in that element type (on hgq-core also
/// on its scalar path and at every SIMD level), values bit for bit, every gradient (`grad.f`
/// included) under the dtype's tolerance.
fn fixed_fn_typed(
    c: &Value,
    case: &mut Case,
    backend: &dyn Backend,
    q: FixedPoint,
    dtype: Dtype,
) -> Result<(), String> {
    let training = bool_(c, "training")?;
    let s = shape(c, "shape")?;
    let rd = |key: &str| typed(c, key, dtype);
    let (x, k, i, f, dy, want) = (rd("x")?, rd("k")?, rd("i")?, rd("f")?, rd("dy")?, rd("y")?);
    let g = c.get("grad").ok_or("missing grad")?;
    let (gx, gi, gf) = (
        typed(g, "x", dtype)?,
        typed(g, "i", dtype)?,
        typed(g, "f", dtype)?,
    );
    case.set_dtype(dtype);
    let inputs = TypedInputs {
        dtype,
        shape: &s,
        x: &x,
        k: &k,
        i: &i,
        f: &f,
        training,
        dy: &dy,
    };
    let mut runs = vec![(String::new(), q)];
    if backend.name() == "core" {
        runs.extend(
            core_runs(q)
                .into_iter()
                .map(|(l, q)| (format!(" ({l})"), q)),
        );
    }
    for (label, q) in runs {
        let Some(o) = backend.fixed_fn_typed(q, &inputs)? else {
            case.skip(format!("{dtype} on {}", backend.name()));
            return Ok(());
        };
        case.values_typed(dtype, &format!("y{label}"), &o.y, &want);
        if let Some(yf) = &o.y_forward {
            case.values_typed(dtype, &format!("y (forward only){label}"), yf, &want);
        }
        case.grads_typed(dtype, &format!("grad.x{label}"), &o.dx, &gx);
        case.grads_typed(dtype, &format!("grad.i{label}"), &o.di, &gi);
        case.grads_typed(dtype, &format!("grad.f{label}"), &o.df, &gf);
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
    let inputs = TypedInputs {
        dtype: Dtype::F64,
        shape: s,
        x: &x,
        k: &k,
        i: &i,
        f: &f,
        training,
        dy: &dy,
    };
    let o = crate::backend::core_typed::<f64>(q, &inputs)?;
    let narrow = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
    Ok(FixedFnOut {
        y: narrow(o.y),
        y_forward: o.y_forward.map(narrow),
        dx: narrow(o.dx),
        di: narrow(o.di),
        df: narrow(o.df),
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
    match crate::json::dtype(c)? {
        Dtype::F32 => {}
        Dtype::F64 => return float_fn_typed::<f64>(c, case, Dtype::F64),
        Dtype::F16 => return float_fn_typed::<f16>(c, case, Dtype::F16),
        Dtype::Bf16 => return float_fn_typed::<bf16>(c, case, Dtype::Bf16),
    }
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
    // At a log2-boundary element, each side must give the value of one of the two exponents:
    // ours one, the reference's the other.
    let cands: Vec<Option<[[f32; 5]; 2]>> = (0..n)
        .map(|j| candidates(x[j], m[j], e[j], e0[j], dy[j]))
        .collect();
    let tol = case.grad_tolerance();
    let grad_ok = |g: f32, w: f32| tol.accepts(g, w);
    let cands = &cands;
    let want_y = f32s(c, "y")?;
    // hgq-core as called, then on its scalar path and at every SIMD level this CPU has (float64
    // runs in the float64 cases of the set).
    let paths = [
        (String::new(), Path::Simd),
        (" (scalar)".into(), Path::Scalar),
    ]
    .into_iter()
    .chain(
        SimdLevel::available()
            .into_iter()
            .map(|l| (format!(" ({l:?})"), Path::Level(l))),
    );
    for (label, path) in paths {
        let (mut y, mut dx, mut dm, mut de, mut de0) = (
            vec![0.0; n],
            vec![0.0; n],
            vec![0.0; n],
            vec![0.0; n],
            vec![0.0; n],
        );
        hgq_core::stateless::minifloat_backward_with_path(
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
            path,
        )
        .map_err(|e| e.to_string())?;
        case.compare(
            &format!("y{label}"),
            &y,
            &want_y,
            &same_value,
            Some(&|j, got, want| other_exponent(cands[j], 0, got, want, &same_value)),
        );
        for (q, (name, got)) in [("x", &dx), ("m", &dm), ("e", &de), ("e0", &de0)]
            .into_iter()
            .enumerate()
        {
            case.grads_excused(
                &format!("grad.{name}{label}"),
                got,
                &f32s(g, name)?,
                Some(&|j, got, want| other_exponent(cands[j], q + 1, got, want, &grad_ok)),
            );
        }
    }
    case.cap_boundary(n);
    Ok(())
}

/// A `float_fn` case of another dtype than float32, on hgq-core's `minifloat_backward::<T>`:
/// values bit for bit, gradients under the dtype's tolerance. No log2-boundary excuse: random
/// float64 inputs do not come within a few ulps below a power of two, and the generator draws
/// none at the wider boundary of float16/bfloat16 (where the type's rounding of the reference's
/// log2 reaches the integer above; see gen.py); an element there would be a mismatch.
fn float_fn_typed<T: Element>(c: &Value, case: &mut Case, dtype: Dtype) -> Result<(), String> {
    let s = shape(c, "shape")?;
    let rd = |key: &str| typed(c, key, dtype);
    let (x, m, e, e0, dy) = (rd("x")?, rd("m")?, rd("e")?, rd("e0")?, rd("dy")?);
    let g = c.get("grad").ok_or("missing grad")?;
    let n = x.len();
    if [&m, &e, &e0, &dy].iter().any(|v| v.len() != n) {
        return Err(format!("m, e, e0 and dy must have x's {n} elements"));
    }
    case.set_dtype(dtype);
    let el = |v: &[f64]| v.iter().map(|&v| to_elem::<T>(v)).collect::<Vec<T>>();
    let cv = |v: &[f64]| v.iter().map(|&v| T::C::from_f64(v)).collect::<Vec<T::C>>();
    let (xt, dyt, mt, et, e0t) = (el(&x), el(&dy), cv(&m), cv(&e), cv(&e0));
    let (mut y, mut dx) = (vec![T::default(); n], vec![T::default(); n]);
    let (mut dm, mut de, mut de0) = (
        vec![T::C::ZERO; n],
        vec![T::C::ZERO; n],
        vec![T::C::ZERO; n],
    );
    let err = |e: hgq_core::CoreError| e.to_string();
    hgq_core::minifloat_backward(
        TensorRef::new(&xt, &s).map_err(err)?,
        TensorRef::new(&mt, &s).map_err(err)?,
        TensorRef::new(&et, &s).map_err(err)?,
        TensorRef::new(&e0t, &s).map_err(err)?,
        &dyt,
        &mut y,
        FloatGrads {
            dx: &mut dx,
            dm: &mut dm,
            de: &mut de,
            de0: &mut de0,
        },
    )
    .map_err(err)?;
    let wide = |v: &[T]| v.iter().map(|&v| of_elem(v)).collect::<Vec<f64>>();
    let wide_c = |v: &[T::C]| v.iter().map(|&v| v.to_f64()).collect::<Vec<f64>>();
    case.values_typed(dtype, "y", &wide(&y), &rd("y")?);
    case.grads_typed(dtype, "grad.x", &wide(&dx), &typed(g, "x", dtype)?);
    for (name, got) in [("m", &dm), ("e", &de), ("e0", &de0)] {
        case.grads_typed(
            dtype,
            &format!("grad.{name}"),
            &wide_c(got),
            &typed(g, name, dtype)?,
        );
    }
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
