//! Constraints (applied to a variable after an optimizer step) and regularizers (losses).
use crate::real::Real;

/// A projection applied to a variable's values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Constraint {
    /// Clip to `[min, max]` (hgq's `MinMax`).
    MinMax {
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
    },
    /// `max(w, min)` (hgq's `Min`).
    Min(f64),
    /// `min(w, max)` (hgq's `Max`).
    Max(f64),
    /// Every value becomes this (hgq's `Constant`).
    Constant(f64),
    /// Keras' `NonNeg`: `w * (w >= 0)`.
    NonNeg,
}

impl Constraint {
    /// Applies the constraint in place.
    ///
    /// ```
    /// use hgq_core::quantizer::Constraint;
    /// let mut w = [-1.0f32, 5.0, 20.0];
    /// Constraint::MinMax { min: 0.0, max: 12.0 }.apply(&mut w);
    /// assert_eq!(w, [0.0, 5.0, 12.0]);
    /// ```
    pub fn apply<C: Real>(&self, w: &mut [C]) {
        for v in w.iter_mut() {
            *v = self.one(*v);
        }
    }

    /// The constraint of one value (NaN-propagating like torch's clamp/maximum).
    pub fn one<C: Real>(&self, v: C) -> C {
        match *self {
            Constraint::MinMax { min, max } => {
                v.maximum(C::from_f64(min)).minimum(C::from_f64(max))
            }
            Constraint::Min(m) => v.maximum(C::from_f64(m)),
            Constraint::Max(m) => v.minimum(C::from_f64(m)),
            Constraint::Constant(c) => C::from_f64(c),
            Constraint::NonNeg => {
                if v >= C::ZERO {
                    v
                } else {
                    v * C::ZERO
                }
            }
        }
    }
}

/// A loss on a variable's values, added to the training loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Regularizer {
    /// hgq's `MonoL1`: `l1 * sum(w)` (bit widths are non-negative, so no abs).
    MonoL1(f64),
    /// Keras' `L1`: `l1 * sum(|w|)`.
    L1(f64),
    /// Keras' `L2`: `l2 * sum(w^2)`.
    L2(f64),
}

impl Regularizer {
    /// The loss of these values.
    ///
    /// ```
    /// use hgq_core::quantizer::Regularizer;
    /// assert_eq!(Regularizer::MonoL1(0.5).loss(&[2.0f32, 4.0]), 3.0);
    /// ```
    pub fn loss<C: Real>(&self, w: &[C]) -> f64 {
        match *self {
            Regularizer::MonoL1(l) => l * w.iter().map(|v| v.to_f64()).sum::<f64>(),
            Regularizer::L1(l) => l * w.iter().map(|v| v.to_f64().abs()).sum::<f64>(),
            Regularizer::L2(l) => l * w.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>(),
        }
    }

    /// Adds `scale * d loss / d w` to `grad`.
    pub fn add_grad<C: Real>(&self, w: &[C], scale: f64, grad: &mut [C]) {
        for (g, v) in grad.iter_mut().zip(w) {
            let d = match *self {
                Regularizer::MonoL1(l) => l,
                Regularizer::L1(l) => l * v.to_f64().signum() * (v.to_f64() != 0.0) as u8 as f64,
                Regularizer::L2(l) => 2.0 * l * v.to_f64(),
            };
            *g = *g + C::from_f64(scale * d);
        }
    }
}
