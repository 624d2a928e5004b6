//! Layer-level quantizers (SPEC 4, 8, 9) as plain Rust state with a CPU implementation.
//!
//! A quantizer is built from an input shape (`None` for the batch), holds its variables (the
//! raw, trainable bit widths and the non-trainable `k`, `i_decay_speed`), and is called in a
//! [`CallMode`]. In training, [`Quantizer::forward_backward`] returns the gradients with respect
//! to the input and every trainable variable for an upstream gradient; WRAP quantizers update
//! their integer bits from the data in training and tracing.
//!
//! ```
//! use hgq_core::quantizer::{KifSpec, Quantizer, FixedPointQuantizerKIF};
//! use hgq_core::{mapper::Axes, CallMode, OverflowMode, RoundMode, TensorRef};
//! // One bit width per feature: the batch axis (0) shares.
//! let spec = KifSpec::new(1.0, 2.0, 4.0, RoundMode::Rnd, OverflowMode::Sat).with_axes(Axes::Homogeneous(vec![0]));
//! let mut q = FixedPointQuantizerKIF::<f32>::new(spec).unwrap();
//! q.build(&[None, Some(3)]).unwrap();
//! let x = [0.3f32, -9.0, 1.01, 0.5, 3.99, -4.0];
//! let mut y = [0.0f32; 6];
//! q.forward(TensorRef::new(&x, &[2, 3]).unwrap(), CallMode::Inference, &mut y).unwrap();
//! assert_eq!(y, [0.3125, -4.0, 1.0, 0.5, 3.9375, -4.0]);
//! ```
mod constraint;
mod dummy;
mod fixed;
mod float;

pub use constraint::{Constraint, Regularizer};
pub use dummy::DummyQuantizer;
pub use fixed::{FixedPointQuantizerKBI, FixedPointQuantizerKIF, FixedSpec, KbiSpec, KifSpec};
pub use float::{FloatPointQuantizer, FloatSpec};

use crate::error::{CoreError, Result};
use crate::modes::CallMode;
use crate::real::{Element, Real};
use crate::shape::TensorRef;

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

/// One variable of a quantizer.
#[derive(Debug, Clone, PartialEq)]
pub struct Variable<C> {
    /// The reference's name (`k`, `b`, `i`, `f`, `m`, `e`, `e0`, `i_decay_speed`).
    pub name: &'static str,
    /// Its shape (the bit-width shape, or `[]`).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub value: Vec<C>,
    /// Whether an optimizer trains it.
    pub trainable: bool,
    /// Its Keras dtype.
    pub dtype: VarDtype,
    /// Applied by [`Quantizer::apply_constraints`] (after an optimizer step).
    pub constraint: Option<Constraint>,
    /// Adds to [`Quantizer::regularization_loss`].
    pub regularizer: Option<Regularizer>,
}

impl<C: Real> Variable<C> {
    pub(crate) fn new(name: &'static str, shape: &[usize], init: f64, trainable: bool) -> Self {
        let n = shape.iter().product();
        Variable {
            name,
            shape: shape.to_vec(),
            value: vec![C::from_f64(init); n],
            trainable,
            dtype: VarDtype::Float,
            constraint: None,
            regularizer: None,
        }
    }
}

/// The derived properties of a quantizer, each in the bit-width shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Props<C> {
    /// Bits of the firmware type (sign included where it counts).
    pub bits: Vec<C>,
    /// Bits used for resource estimates.
    pub fbits: Vec<C>,
    /// Smallest representable value.
    pub min: Vec<C>,
    /// Largest representable value.
    pub max: Vec<C>,
    /// The step (2^-f).
    pub epsilon: Vec<C>,
}

/// Gradients of the trainable variables, by name, in each variable's shape.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Grads<C> {
    /// (variable name, gradient).
    pub vars: Vec<(&'static str, Vec<C>)>,
}

impl<C> Grads<C> {
    /// The gradient of one variable.
    pub fn get(&self, name: &str) -> Option<&[C]> {
        self.vars
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, g)| g.as_slice())
    }
}

/// What every layer-level quantizer does.
pub trait Quantizer<C: Real> {
    /// Creates the variables for an input shape (`None`: unknown size, e.g. the batch).
    fn build(&mut self, input_shape: &[Option<usize>]) -> Result<()>;
    /// The variables (empty before `build`).
    fn variables(&self) -> &[Variable<C>];
    /// The variables, to set values (an optimizer step, loading weights).
    fn variables_mut(&mut self) -> &mut [Variable<C>];
    /// Quantizes `x` in the given mode; training and tracing may update WRAP state.
    fn forward<T: Element<C = C>>(
        &mut self,
        x: TensorRef<'_, T>,
        mode: CallMode,
        y: &mut [T],
    ) -> Result<()>;
    /// A training call with gradients for upstream `dy`: the output, `dx`, and the gradients of
    /// every trainable variable.
    fn forward_backward<T: Element<C = C>>(
        &mut self,
        x: TensorRef<'_, T>,
        dy: &[T],
        y: &mut [T],
        dx: &mut [T],
    ) -> Result<Grads<C>>;
    /// bits, fbits, min, max, epsilon.
    fn props(&self) -> Result<Props<C>>;
    /// Applies each variable's constraint (call after an optimizer step).
    fn apply_constraints(&mut self) {
        for v in self.variables_mut() {
            if let Some(c) = v.constraint {
                c.apply(&mut v.value);
            }
        }
    }
    /// The sum of the regularizers' losses.
    fn regularization_loss(&self) -> f64 {
        self.variables()
            .iter()
            .filter_map(|v| v.regularizer.map(|r| r.loss(&v.value)))
            .sum()
    }
    /// Adds `scale * d(regularization loss)` to the matching gradients.
    fn add_regularization_grads(&self, scale: f64, grads: &mut Grads<C>) {
        for v in self.variables() {
            if let (Some(r), Some((_, g))) = (
                v.regularizer,
                grads.vars.iter_mut().find(|(n, _)| *n == v.name),
            ) {
                r.add_grad(&v.value, scale, g);
            }
        }
    }
    /// A variable by name.
    fn variable(&self, name: &str) -> Option<&Variable<C>> {
        self.variables().iter().find(|v| v.name == name)
    }
}

/// Any of the four quantizers, for code that picks one at run time (the config layer).
#[derive(Debug, Clone)]
pub enum AnyQuantizer<C: Real> {
    /// KBI fixed point.
    Kbi(FixedPointQuantizerKBI<C>),
    /// KIF fixed point.
    Kif(FixedPointQuantizerKIF<C>),
    /// Minifloat.
    Float(FloatPointQuantizer<C>),
    /// Identity.
    Dummy(DummyQuantizer<C>),
}

macro_rules! each {
    ($s:expr, $q:ident => $e:expr) => {
        match $s {
            AnyQuantizer::Kbi($q) => $e,
            AnyQuantizer::Kif($q) => $e,
            AnyQuantizer::Float($q) => $e,
            AnyQuantizer::Dummy($q) => $e,
        }
    };
}

impl<C: Real> Quantizer<C> for AnyQuantizer<C> {
    fn build(&mut self, input_shape: &[Option<usize>]) -> Result<()> {
        each!(self, q => q.build(input_shape))
    }
    fn variables(&self) -> &[Variable<C>] {
        each!(self, q => q.variables())
    }
    fn variables_mut(&mut self) -> &mut [Variable<C>] {
        each!(self, q => q.variables_mut())
    }
    fn forward<T: Element<C = C>>(
        &mut self,
        x: TensorRef<'_, T>,
        mode: CallMode,
        y: &mut [T],
    ) -> Result<()> {
        each!(self, q => q.forward(x, mode, y))
    }
    fn forward_backward<T: Element<C = C>>(
        &mut self,
        x: TensorRef<'_, T>,
        dy: &[T],
        y: &mut [T],
        dx: &mut [T],
    ) -> Result<Grads<C>> {
        each!(self, q => q.forward_backward(x, dy, y, dx))
    }
    fn props(&self) -> Result<Props<C>> {
        each!(self, q => q.props())
    }
}

/// Checks a call's input against the built shape: same rank, known dims equal.
pub(crate) fn check_input(built: &Option<Vec<Option<usize>>>, shape: &[usize]) -> Result<()> {
    let b = built.as_ref().ok_or(CoreError::NotBuilt)?;
    let ok = b.len() == shape.len() && b.iter().zip(shape).all(|(d, &s)| d.is_none_or(|d| d == s));
    if !ok {
        return Err(CoreError::InputShape {
            got: shape.to_vec(),
            built: b.clone(),
        });
    }
    Ok(())
}

/// `round_conv`: round half to even with the reference's straight-through form
/// `round(x) + (x - x)`, which turns `-0` into `+0` (the gradient passes straight through).
pub(crate) fn rc<C: Real>(v: &[C]) -> Vec<C> {
    v.iter().map(|&x| rc1(x)).collect()
}

/// [`rc`] of one value.
#[inline]
#[allow(clippy::eq_op)] // x - x is 0 or NaN: the reference's straight-through term, kept.
pub(crate) fn rc1<C: Real>(x: C) -> C {
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

/// Widens x into the compute type when the storage differs (for the reductions of WRAP).
pub(crate) fn widen<T: Element>(x: &[T]) -> std::borrow::Cow<'_, [T::C]> {
    match T::as_c(x) {
        Some(c) => std::borrow::Cow::Borrowed(c),
        None => std::borrow::Cow::Owned(x.iter().map(|v| v.to_c()).collect()),
    }
}
