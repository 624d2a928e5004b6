//! What a layer quantizer needs of the numbers it works on: the [`Backend`] trait.
//!
//! The quantizers' logic (which pass a mode runs, how WRAP tracks its integer bits, tracing,
//! `props`, seeds, constraints, regularizers) is written once in this module's siblings,
//! generic over a backend. A backend brings the arithmetic: hgq-core's CPU buffers
//! ([`Cpu`](super::Cpu), gradients returned explicitly) or hgq-torch's tensors (gradients
//! through autograd, CPU and CUDA). The fused passes themselves ([`FixedPoint`] and the
//! minifloat pass) are defined in hgq-core, so every backend computes the same thing: the CPU
//! backends run hgq-core's kernels, others may run the same formulas their own way.
use super::constraint::{Constraint, Regularizer};
use super::{VarName, Variable};
use crate::error::CoreError;
use crate::real::Real;
use crate::stateless::FixedPoint;

use super::fixed::TrackRule;

/// A bit-width operand of a pass: a variable (its gradient, where the backend tracks one,
/// reaches it) or bit-width values the logic formed (`W`, the backend's
/// [`BitWidthArith::Bw`]) in the variable's shape (no gradient).
#[derive(Debug)]
pub enum Operand<'a, V, W> {
    /// A quantizer's variable.
    Var(&'a Variable<V>),
    /// Values the logic formed (WRAP tracking's integer bits) and their shape.
    Bw(&'a W, &'a [usize]),
}

impl<V, W> Clone for Operand<'_, V, W> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V, W> Copy for Operand<'_, V, W> {}

impl<V, W> Operand<'_, V, W> {
    /// The variable's name, for a variable operand.
    pub fn name(&self) -> Option<VarName> {
        match self {
            Operand::Var(v) => Some(v.name),
            Operand::Bw(..) => None,
        }
    }
}

/// The operand type of a backend.
pub type OperandOf<'a, B> = Operand<'a, <B as BitWidthArith>::Var, <B as BitWidthArith>::Bw>;

/// The arithmetic of bit widths: what a quantizer's derived properties (`bits`, `props`, the
/// EBOPs terms) and its regularization losses are computed with. A [`Backend`] has it; so does
/// [`super::Dual`], which carries the derivatives with respect to the variables along (the
/// bit-width gradients of a native training step).
pub trait BitWidthArith {
    /// The type in which the logic computes bit widths on the host (`f32` for float32 state).
    type C: Real;
    /// The storage of one variable.
    type Var;
    /// Bit-width-shaped values computed from variables (differentiable where the backend has
    /// autograd): what `props` and the regularization losses return.
    type Bw;
    /// The backend's error.
    type Error: From<CoreError>;

    /// A variable as bit-width values (differentiable where the backend has autograd).
    fn bw(&self, v: &Variable<Self::Var>) -> Result<Self::Bw, Self::Error>;
    /// A variable rounded with a straight-through gradient (`rc(bw(v))`, the form every
    /// quantizer reads its bit widths in): backends that hold values override it to round in
    /// the copy they make anyway.
    fn bw_rc(&self, v: &Variable<Self::Var>) -> Result<Self::Bw, Self::Error> {
        self.bw_op(BwOp::RoundSte(&self.bw(v)?))
    }
    /// `value` everywhere in `shape` (no gradient).
    fn bw_const(&self, value: f64, shape: &[usize]) -> Result<Self::Bw, Self::Error>;
    /// The elementwise arithmetic of bit widths.
    fn bw_op(&self, op: BwOp<'_, Self::Bw>) -> Result<Self::Bw, Self::Error>;
    /// A regularizer's loss on a variable: a scalar.
    fn regularize(&self, r: Regularizer, v: &Variable<Self::Var>) -> Result<Self::Bw, Self::Error>;
}

/// The few tensor operations a layer quantizer needs, beside its bit-width arithmetic.
///
/// Shapes are row-major dimension lists; reductions keep the reduced dimensions (size 1), so
/// their results have the bit-width shape. Errors are the backend's, which every backend makes
/// able to carry a [`CoreError`]: the logic's own checks give the same error on every backend.
pub trait Backend: BitWidthArith {
    /// An input or output tensor.
    type Tensor;

    /// The shape of `x`, or an error if its element type is not a float type this backend
    /// quantizes.
    fn shape(&self, x: &Self::Tensor) -> Result<Vec<usize>, Self::Error>;
    /// Whether every element of `x` is finite.
    fn all_finite(&self, x: &Self::Tensor) -> Result<bool, Self::Error>;
    /// `max |x|` over the dimensions `reduce` (kept as size 1), row-major. Only called for an
    /// `x` without NaN.
    fn absmax(&self, x: &Self::Tensor, reduce: &[usize]) -> Result<Vec<Self::C>, Self::Error>;
    /// `any(x < 0)` over the dimensions `reduce` (kept as size 1), row-major.
    fn any_negative(&self, x: &Self::Tensor, reduce: &[usize]) -> Result<Vec<bool>, Self::Error>;
    /// `x` unchanged (the dummy quantizer): the same values, the gradient straight through.
    fn identity(&self, x: &Self::Tensor) -> Result<Self::Tensor, Self::Error>;

    /// A variable's values.
    fn read(&self, v: &Self::Var) -> Result<Vec<Self::C>, Self::Error>;
    /// Sets a variable's values (no gradient); `values` has the variable's element count.
    fn write(&self, v: &mut Self::Var, values: &[Self::C]) -> Result<(), Self::Error>;
    /// Applies a constraint to a variable in place (after an optimizer step).
    fn constrain(&self, v: &mut Self::Var, c: Constraint) -> Result<(), Self::Error>;

    /// WRAP tracking's reads and writes: bit-width values that stay where the backend keeps
    /// its tensors (a device backend reads nothing back to the host for them).
    ///
    /// `err` where `x` has a value that is not finite. A backend that would have to wait for
    /// its device to know may check later instead (its documentation says when), provided
    /// that the call's writes leave every bit width whose data was not finite as it was
    /// ([`TrackRule::apply`] does).
    fn require_finite(&self, x: &Self::Tensor, err: CoreError) -> Result<(), Self::Error>;
    /// [`Backend::absmax`] as bit-width values (no gradient).
    fn absmax_bw(&self, x: &Self::Tensor, reduce: &[usize]) -> Result<Self::Bw, Self::Error>;
    /// [`Backend::any_negative`] as bit-width values: 1 where any element is negative, else 0
    /// (no gradient).
    fn any_negative_bw(&self, x: &Self::Tensor, reduce: &[usize]) -> Result<Self::Bw, Self::Error>;
    /// A variable's values now (no gradient), unchanged by later writes to the variable.
    fn snapshot(&self, v: &Self::Var) -> Result<Self::Bw, Self::Error>;
    /// Bit-width values as host values, row-major (for collectives over processes).
    fn bw_host(&self, w: &Self::Bw) -> Result<Vec<Self::C>, Self::Error>;
    /// Host values of `shape` as bit-width values (no gradient).
    fn bw_from_host(&self, values: &[Self::C], shape: &[usize]) -> Result<Self::Bw, Self::Error>;
    /// [`TrackRule::apply`] on every element (`decay` one value or the bit widths' shape):
    /// the new integer bits and the integer bits the pass reads.
    fn track_bw(
        &self,
        rule: TrackRule,
        absmax: &Self::Bw,
        i: &Self::Bw,
        p: &Self::Bw,
        decay: &Self::Bw,
    ) -> Result<(Self::Bw, Self::Bw), Self::Error>;
    /// Sets a variable's values (no gradient); `values` has the variable's element count.
    fn assign(&self, v: &mut Self::Var, values: &Self::Bw) -> Result<(), Self::Error>;
    /// `w` (of `shape`), each value the maximum over the data-parallel processes where a
    /// [`StateSync`](crate::sync::StateSync) is installed on this thread (else `w`): by
    /// default through host values; a backend may reduce where its values live.
    fn max_over_processes(&self, w: Self::Bw, shape: &[usize]) -> Result<Self::Bw, Self::Error> {
        if !crate::sync::installed() {
            return Ok(w);
        }
        let v = crate::sync::max_over_processes(self.bw_host(&w)?)?;
        self.bw_from_host(&v, shape)
    }

    /// The fixed-point pass `q` on `x` with bit widths `k` and `p` (what `p` holds is
    /// `q.bit_widths()`), broadcast to x. In training, gradients reach `x` and the variable
    /// operands `p` (never `k`) as [`FixedPoint::forward_backward`] computes them.
    fn fixed(
        &self,
        q: &FixedPoint,
        x: &Self::Tensor,
        k: OperandOf<'_, Self>,
        p: [OperandOf<'_, Self>; 2],
        training: bool,
    ) -> Result<Self::Tensor, Self::Error>;
    /// The minifloat pass on `x` with raw `m`, `e`, `e0` (rounded half to even with a
    /// straight-through gradient), gradients as [`crate::minifloat_backward`] computes them.
    fn minifloat(
        &self,
        x: &Self::Tensor,
        p: [OperandOf<'_, Self>; 3],
    ) -> Result<Self::Tensor, Self::Error>;
}

/// One elementwise operation of bit-width arithmetic, with numpy broadcasting.
#[derive(Debug, Clone, Copy)]
pub enum BwOp<'a, T> {
    /// `round(a) + (a - stop_gradient(a))`: round half to even, gradient straight through.
    RoundSte(&'a T),
    /// `a + b`.
    Add(&'a T, &'a T),
    /// `a - b`.
    Sub(&'a T, &'a T),
    /// `a * b`.
    Mul(&'a T, &'a T),
    /// `a + c`.
    AddScalar(&'a T, f64),
    /// `a * c`.
    MulScalar(&'a T, f64),
    /// `2^a`.
    Exp2(&'a T),
    /// `max(a, 0)`.
    Relu(&'a T),
    /// 1 where `a > 0`, else 0 (no gradient).
    Positive(&'a T),
    /// `max(a, b)`, NaN-propagating (no gradient).
    Maximum(&'a T, &'a T),
}

/// Applies `f` to a backend's bit-width operation (a short way to write `b.bw_op(...)`).
pub(crate) struct Arith<'b, B: ?Sized>(pub &'b B);

impl<B: BitWidthArith + ?Sized> Arith<'_, B> {
    pub(crate) fn add(&self, a: &B::Bw, b: &B::Bw) -> Result<B::Bw, B::Error> {
        self.0.bw_op(BwOp::Add(a, b))
    }
    pub(crate) fn sub(&self, a: &B::Bw, b: &B::Bw) -> Result<B::Bw, B::Error> {
        self.0.bw_op(BwOp::Sub(a, b))
    }
    pub(crate) fn mul(&self, a: &B::Bw, b: &B::Bw) -> Result<B::Bw, B::Error> {
        self.0.bw_op(BwOp::Mul(a, b))
    }
    pub(crate) fn add_c(&self, a: &B::Bw, c: f64) -> Result<B::Bw, B::Error> {
        self.0.bw_op(BwOp::AddScalar(a, c))
    }
    pub(crate) fn mul_c(&self, a: &B::Bw, c: f64) -> Result<B::Bw, B::Error> {
        self.0.bw_op(BwOp::MulScalar(a, c))
    }
    pub(crate) fn exp2(&self, a: &B::Bw) -> Result<B::Bw, B::Error> {
        self.0.bw_op(BwOp::Exp2(a))
    }
    pub(crate) fn relu(&self, a: &B::Bw) -> Result<B::Bw, B::Error> {
        self.0.bw_op(BwOp::Relu(a))
    }
    pub(crate) fn positive(&self, a: &B::Bw) -> Result<B::Bw, B::Error> {
        self.0.bw_op(BwOp::Positive(a))
    }
    pub(crate) fn maximum(&self, a: &B::Bw, b: &B::Bw) -> Result<B::Bw, B::Error> {
        self.0.bw_op(BwOp::Maximum(a, b))
    }
    pub(crate) fn round(&self, a: &B::Bw) -> Result<B::Bw, B::Error> {
        self.0.bw_op(BwOp::RoundSte(a))
    }
}
