//! Layer-level quantizers (SPEC 4, 8, 9), written once over a [`Backend`].
//!
//! A quantizer is made from a spec ([`QuantizerSpec`]) for an input shape (`None` for the
//! batch), holds its variables in a backend's storage (the raw, trainable bit widths and the
//! non-trainable state), and is called in a [`CallMode`]. [`Quantizer`] holds the logic for
//! every backend; [`CpuQuantizer`] runs it on hgq-core's CPU buffers, where a training call
//! returns the gradients of the input and of every trainable variable for an upstream
//! gradient. hgq-torch runs the same logic on tch tensors, with autograd.
//!
//! ```
//! use hgq_core::quantizer::{CpuQuantizer, KifSpec, QuantizerSpec};
//! use hgq_core::{mapper::Axes, CallMode, OverflowMode, RoundMode, TensorRef};
//! // One bit width per feature: the batch axis (0) shares.
//! let spec = KifSpec::new(1.0, 2.0, 4.0, RoundMode::Rnd, OverflowMode::Sat).with_axes(Axes::Homogeneous(vec![0]));
//! let mut q = CpuQuantizer::<f32>::new(QuantizerSpec::Kif(spec), &[None, Some(3)])?;
//! let x = [0.3f32, -9.0, 1.01, 0.5, 3.99, -4.0];
//! let mut y = [0.0f32; 6];
//! q.forward(TensorRef::new(&x, &[2, 3])?, CallMode::Inference, &mut y)?;
//! assert_eq!(y, [0.3125, -4.0, 1.0, 0.5, 3.9375, -4.0]);
//! # Ok::<(), hgq_core::CoreError>(())
//! ```
mod backend;
mod constraint;
mod cpu;
mod dual;
mod dummy;
mod fixed;
mod float;

pub use backend::{Backend, BitWidthArith, BwOp, Operand, OperandOf};
pub use constraint::{Constraint, Regularizer};
pub use cpu::{Cpu, CpuQuantizer, CpuStore, CpuTensor, Grads, HostVar, SavedPass};
pub use dual::{Dual, DualArith};
pub use dummy::DummyQuantizer;
pub use fixed::{FixedKind, FixedQuantizer, FixedSpec, KbiSpec, KifSpec, Param, TrackRule};
pub use float::{FloatQuantizer, FloatSpec};

use crate::error::{CoreError, Result};
use crate::mapper::{Axes, DefaultBitwidthMapper};
use crate::modes::CallMode;
use crate::real::Real;
use backend::Arith;

/// The name of a quantizer's variable, as the reference names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VarName {
    /// Keep-negative (`k`, 0 or 1; not trainable).
    K,
    /// Bits (KBI).
    B,
    /// Integer bits.
    I,
    /// Fractional bits (KIF).
    F,
    /// Mantissa bits (minifloat).
    M,
    /// Exponent bits (minifloat).
    E,
    /// Exponent offset (minifloat).
    E0,
    /// How fast WRAP integer bits decay.
    IDecaySpeed,
    /// `[seed, calls]` of stochastic rounding (the reference's Keras `SeedGenerator`).
    SeedState,
}

impl VarName {
    /// The reference's name (`k`, `b`, `i`, `f`, `m`, `e`, `e0`, `i_decay_speed`,
    /// `seed_generator_state`).
    pub fn as_str(self) -> &'static str {
        match self {
            VarName::K => "k",
            VarName::B => "b",
            VarName::I => "i",
            VarName::F => "f",
            VarName::M => "m",
            VarName::E => "e",
            VarName::E0 => "e0",
            VarName::IDecaySpeed => "i_decay_speed",
            VarName::SeedState => "seed_generator_state",
        }
    }
}

impl std::fmt::Display for VarName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The storage type of a variable, as Keras declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarDtype {
    /// A float variable (the compute type).
    Float,
    /// `uint8` (the keep-negative bit `k`).
    U8,
    /// `int32` (the stochastic-rounding generator state).
    I32,
}

/// One variable of a quantizer: what it is, and its storage in a backend (`value`).
#[derive(Debug, Clone, PartialEq)]
pub struct Variable<V> {
    /// Which variable.
    pub name: VarName,
    /// Its shape (the bit-width shape, or `[]`).
    pub shape: Vec<usize>,
    /// Its storage (hgq-core's CPU backend: row-major values).
    pub value: V,
    /// Whether an optimizer trains it.
    pub trainable: bool,
    /// Its Keras dtype.
    pub dtype: VarDtype,
    /// Applied by [`Quantizer::apply_constraints`] (after an optimizer step).
    pub constraint: Option<Constraint>,
    /// Adds to [`Quantizer::regularization_loss`].
    pub regularizer: Option<Regularizer>,
}

/// How to create a variable: what a [`Store`] is given.
#[derive(Debug, Clone, PartialEq)]
pub struct VarInit {
    /// Which variable.
    pub name: VarName,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its initial values: one for every element, or all of them (row-major).
    pub values: Vec<f64>,
    /// Whether an optimizer trains it.
    pub trainable: bool,
    /// Its Keras dtype.
    pub dtype: VarDtype,
    /// Its constraint.
    pub constraint: Option<Constraint>,
    /// Its regularizer.
    pub regularizer: Option<Regularizer>,
}

impl VarInit {
    fn new(name: VarName, shape: &[usize], init: f64, trainable: bool) -> Self {
        VarInit {
            name,
            shape: shape.to_vec(),
            values: vec![init],
            trainable,
            dtype: VarDtype::Float,
            constraint: None,
            regularizer: None,
        }
    }

    fn dtype(mut self, d: VarDtype) -> Self {
        self.dtype = d;
        self
    }

    fn rules(mut self, c: Option<Constraint>, r: Option<Regularizer>) -> Self {
        self.constraint = c;
        self.regularizer = r;
        self
    }

    fn values(mut self, v: Vec<f64>) -> Self {
        self.values = v;
        self
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The initial value of element `j`.
    pub fn value_at(&self, j: usize) -> f64 {
        match self.values.as_slice() {
            [one] => *one,
            all => all.get(j).copied().unwrap_or(0.0),
        }
    }
}

/// Where a backend keeps variables: creates one for a [`VarInit`].
pub trait Store {
    /// The storage of one variable.
    type Var;
    /// The store's error.
    type Error: From<CoreError>;
    /// A new variable.
    fn var(&mut self, init: &VarInit) -> std::result::Result<Self::Var, Self::Error>;
}

fn make_vars<S: Store>(
    store: &mut S,
    inits: Vec<VarInit>,
) -> std::result::Result<Vec<Variable<S::Var>>, S::Error> {
    inits
        .into_iter()
        .map(|init| {
            Ok(Variable {
                value: store.var(&init)?,
                name: init.name,
                shape: init.shape,
                trainable: init.trainable,
                dtype: init.dtype,
                constraint: init.constraint,
                regularizer: init.regularizer,
            })
        })
        .collect()
}

/// The most elements a bit-width tensor may have (2^40): a bigger one is a mistake in the
/// input shape, and an error here instead of an allocation that aborts the process.
pub const MAX_BW_ELEMENTS: usize = 1 << 40;

/// Where a quantizer's bit widths sit relative to its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The input shape it was built for (`None`: any size).
    pub input_shape: Vec<Option<usize>>,
    /// The bit-width shape (same rank, 1 along the homogeneous axes).
    pub bw_shape: Vec<usize>,
    /// The homogeneous axes (resolved, ascending).
    pub homogeneous: Vec<usize>,
}

impl Layout {
    /// The layout of `axes` for inputs of `input_shape`.
    pub fn new(axes: &Axes, input_shape: &[Option<usize>]) -> Result<Layout> {
        let mut m = DefaultBitwidthMapper::new(axes.clone());
        let bw_shape = m.build(input_shape)?;
        let n = crate::shape::numel(&bw_shape)?;
        if n > MAX_BW_ELEMENTS {
            return Err(CoreError::TooLarge {
                what: "bit-width tensor",
                shape: bw_shape,
                max: MAX_BW_ELEMENTS,
            });
        }
        Ok(Layout {
            input_shape: input_shape.to_vec(),
            homogeneous: m.homogeneous_axes()?.to_vec(),
            bw_shape,
        })
    }

    /// The number of bit widths.
    pub fn bw_len(&self) -> usize {
        self.bw_shape.iter().product()
    }
}

/// The derived properties of a quantizer, each in the bit-width shape (scalars for the
/// dummy): CPU values, or differentiable tensors on a backend with autograd.
#[derive(Debug, Clone, PartialEq)]
pub struct Props<T> {
    /// Bits of the firmware type (sign included where it counts); EBOPs use these.
    pub bits: T,
    /// Bits used for resource estimates.
    pub fbits: T,
    /// Smallest representable value.
    pub min: T,
    /// Largest representable value.
    pub max: T,
    /// The step (2^-f).
    pub epsilon: T,
}

/// What a layer quantizer is: the reference's quantizer classes.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantizerSpec {
    /// A KBI fixed-point quantizer.
    Kbi(KbiSpec),
    /// A KIF fixed-point quantizer.
    Kif(KifSpec),
    /// A minifloat quantizer.
    Float(FloatSpec),
    /// The identity.
    Dummy,
}

/// Any of the four layer quantizers, its variables in a backend's storage `V`: the logic of
/// every backend.
#[derive(Debug)]
pub enum Quantizer<V> {
    /// KBI or KIF fixed point.
    Fixed(FixedQuantizer<V>),
    /// Minifloat.
    Float(FloatQuantizer<V>),
    /// The identity.
    Dummy(DummyQuantizer),
}

impl<V> Quantizer<V> {
    /// Validates `spec` and creates the quantizer's variables for inputs of `input_shape`
    /// (`None`: any size) in `store`.
    pub fn new<S: Store<Var = V>>(
        store: &mut S,
        spec: &QuantizerSpec,
        input_shape: &[Option<usize>],
    ) -> std::result::Result<Self, S::Error> {
        Ok(match spec {
            QuantizerSpec::Kbi(s) => Quantizer::Fixed(FixedQuantizer::new(
                store,
                FixedKind::Kbi(s.clone()),
                input_shape,
            )?),
            QuantizerSpec::Kif(s) => Quantizer::Fixed(FixedQuantizer::new(
                store,
                FixedKind::Kif(s.clone()),
                input_shape,
            )?),
            QuantizerSpec::Float(s) => {
                Quantizer::Float(FloatQuantizer::new(store, s.clone(), input_shape)?)
            }
            QuantizerSpec::Dummy => Quantizer::Dummy(DummyQuantizer::new(input_shape)),
        })
    }

    /// The spec it was made from.
    pub fn spec(&self) -> QuantizerSpec {
        match self {
            Quantizer::Fixed(q) => match q.kind() {
                FixedKind::Kbi(s) => QuantizerSpec::Kbi(s.clone()),
                FixedKind::Kif(s) => QuantizerSpec::Kif(s.clone()),
            },
            Quantizer::Float(q) => QuantizerSpec::Float(q.spec().clone()),
            Quantizer::Dummy(_) => QuantizerSpec::Dummy,
        }
    }

    /// The input shape it was built for.
    pub fn input_shape(&self) -> &[Option<usize>] {
        match self {
            Quantizer::Fixed(q) => &q.layout().input_shape,
            Quantizer::Float(q) => &q.layout().input_shape,
            Quantizer::Dummy(q) => q.input_shape(),
        }
    }

    /// Where its bit widths sit relative to its input (none for the dummy).
    pub fn layout(&self) -> Option<&Layout> {
        match self {
            Quantizer::Fixed(q) => Some(q.layout()),
            Quantizer::Float(q) => Some(q.layout()),
            Quantizer::Dummy(_) => None,
        }
    }

    /// The variables (none for the dummy).
    pub fn variables(&self) -> &[Variable<V>] {
        match self {
            Quantizer::Fixed(q) => q.variables(),
            Quantizer::Float(q) => q.variables(),
            Quantizer::Dummy(_) => &[],
        }
    }

    /// The variables, to set values (loading weights).
    pub fn variables_mut(&mut self) -> &mut [Variable<V>] {
        match self {
            Quantizer::Fixed(q) => q.variables_mut(),
            Quantizer::Float(q) => q.variables_mut(),
            Quantizer::Dummy(_) => &mut [],
        }
    }

    /// A variable by name.
    pub fn variable(&self, name: VarName) -> Option<&Variable<V>> {
        self.variables().iter().find(|v| v.name == name)
    }

    /// Quantizes `x` in `mode` (training, inference, or tracing of the WRAP integer bits). On
    /// an error nothing changes.
    pub fn forward<B: Backend<Var = V>>(
        &mut self,
        b: &B,
        x: &B::Tensor,
        mode: CallMode,
    ) -> std::result::Result<B::Tensor, B::Error> {
        match self {
            Quantizer::Fixed(q) => q.forward(b, x, mode),
            Quantizer::Float(q) => q.forward(b, x, mode),
            Quantizer::Dummy(q) => q.forward(b, x, mode),
        }
    }

    /// `bits` (bit-width shape; a scalar for the dummy), what EBOPs use.
    pub fn bits<B: BitWidthArith<Var = V>>(&self, b: &B) -> std::result::Result<B::Bw, B::Error> {
        match self {
            Quantizer::Fixed(q) => q.bits(b),
            Quantizer::Float(q) => q.bits(b),
            Quantizer::Dummy(q) => q.bits(b),
        }
    }

    /// bits, fbits, min, max and epsilon.
    pub fn props<B: BitWidthArith<Var = V>>(
        &self,
        b: &B,
    ) -> std::result::Result<Props<B::Bw>, B::Error> {
        match self {
            Quantizer::Fixed(q) => q.props(b),
            Quantizer::Float(q) => q.props(b),
            Quantizer::Dummy(q) => q.props(b),
        }
    }

    /// Applies every variable's constraint in place (call after an optimizer step).
    pub fn apply_constraints<B: Backend<Var = V>>(
        &mut self,
        b: &B,
    ) -> std::result::Result<(), B::Error> {
        for v in self.variables_mut() {
            if let Some(c) = v.constraint {
                b.constrain(&mut v.value, c)?;
            }
        }
        Ok(())
    }

    /// The sum of the regularizers' losses (a scalar), `None` where no variable has one.
    pub fn regularization_loss<B: BitWidthArith<Var = V>>(
        &self,
        b: &B,
    ) -> std::result::Result<Option<B::Bw>, B::Error> {
        let a = Arith(b);
        let mut total: Option<B::Bw> = None;
        for v in self.variables() {
            if let Some(r) = v.regularizer {
                let l = b.regularize(r, v)?;
                total = Some(match total {
                    Some(t) => a.add(&t, &l)?,
                    None => l,
                });
            }
        }
        Ok(total)
    }

    /// Resets WRAP tracking before a tracing pass (`i := -1e9`, `k := 0`), as hgq2's
    /// `trace_minmax` does; no-op for other quantizers.
    pub fn reset_trace<B: Backend<Var = V>>(&mut self, b: &B) -> std::result::Result<(), B::Error> {
        match self {
            Quantizer::Fixed(q) => q.reset_trace(b),
            _ => Ok(()),
        }
    }

    /// [`FixedQuantizer::pending_maxima`]: what a training call under
    /// [`crate::sync::defer`] left to reduce over the processes (other kinds leave nothing).
    pub fn pending_maxima(&self) -> Option<&[f64]> {
        match self {
            Quantizer::Fixed(q) => q.pending_maxima(),
            _ => None,
        }
    }

    /// [`FixedQuantizer::finish_tracking`]: the reduced maxima become the integer bits (an
    /// error for kinds that never leave any pending).
    pub fn finish_tracking<B: Backend<Var = V>>(
        &mut self,
        b: &B,
        maxima: &[f64],
    ) -> std::result::Result<(), B::Error> {
        match self {
            Quantizer::Fixed(q) => q.finish_tracking(b, maxima),
            _ => Err(CoreError::Unsupported(
                "finish_tracking: only fixed-point quantizers track their integer bits",
            )
            .into()),
        }
    }
}

/// Checks a call's input against the built shape: same rank, known dims equal.
pub(crate) fn check_input(built: &[Option<usize>], shape: &[usize]) -> Result<()> {
    let ok = built.len() == shape.len()
        && built
            .iter()
            .zip(shape)
            .all(|(d, &s)| d.is_none_or(|d| d == s));
    if !ok {
        return Err(CoreError::InputShape {
            got: shape.to_vec(),
            built: built.to_vec(),
        });
    }
    Ok(())
}

/// `round_conv` of one value: round half to even with the reference's straight-through form
/// `round(x) + (x - x)`, which turns `-0` into `+0` (and an infinity into NaN).
#[inline]
#[allow(clippy::eq_op)] // x - x is 0 or NaN: the reference's straight-through term, kept.
pub fn rc1<C: Real>(x: C) -> C {
    x.round_even() + (x - x)
}

/// The `k` value of a spec: 0 or 1.
pub(crate) fn check_k(k0: f64) -> Result<f64> {
    if k0 == 0.0 || k0 == 1.0 {
        Ok(k0)
    } else {
        Err(CoreError::InvalidK(k0))
    }
}

/// A spec value that must pass `ok`.
pub(crate) fn check_real(
    name: &'static str,
    v: f64,
    ok: impl Fn(f64) -> bool,
    why: &'static str,
) -> Result<()> {
    if ok(v) {
        Ok(())
    } else {
        Err(CoreError::InvalidParameter {
            name,
            value: v,
            why,
        })
    }
}

/// Constraint bounds are numbers (an infinite bound is no bound), `min <= max`.
pub(crate) fn check_constraint(name: VarName, c: Option<Constraint>) -> Result<()> {
    let bad = |value: f64, why: &'static str| CoreError::InvalidRule {
        var: name.as_str(),
        what: "constraint",
        value,
        why,
    };
    match c {
        Some(Constraint::MinMax { min, max }) => {
            if min.is_nan() || max.is_nan() {
                return Err(bad(f64::NAN, "bounds must be numbers"));
            }
            if min > max {
                return Err(bad(min, "min must not exceed max"));
            }
        }
        Some(Constraint::Min(v) | Constraint::Max(v)) if v.is_nan() => {
            return Err(bad(v, "the bound must be a number"));
        }
        Some(Constraint::Constant(v)) if !v.is_finite() => {
            return Err(bad(v, "the value must be finite"));
        }
        _ => {}
    }
    Ok(())
}

/// Regularizer factors are finite.
pub(crate) fn check_regularizer(name: VarName, r: Option<Regularizer>) -> Result<()> {
    let l = match r {
        Some(Regularizer::MonoL1(l) | Regularizer::L1(l) | Regularizer::L2(l)) => l,
        None => return Ok(()),
    };
    if l.is_finite() {
        Ok(())
    } else {
        Err(CoreError::InvalidRule {
            var: name.as_str(),
            what: "regularizer",
            value: l,
            why: "the factor must be finite",
        })
    }
}
