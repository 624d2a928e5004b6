//! Constraints (applied to a variable after an optimizer step) and regularizers (losses).
use crate::fold::lane_sum;
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

    /// The constraint as a clip `v.maximum(lo).minimum(hi)` (infinite bounds where it has none),
    /// for loops that apply it beside other work (an optimizer's update); `None` for the
    /// constraints that are not clips (`Constant`, `NonNeg`).
    ///
    /// ```
    /// use hgq_core::quantizer::Constraint;
    /// assert_eq!(Constraint::Min(0.0).clip_bounds(), Some((0.0, f64::INFINITY)));
    /// assert_eq!(Constraint::NonNeg.clip_bounds(), None);
    /// ```
    pub fn clip_bounds(&self) -> Option<(f64, f64)> {
        match *self {
            Constraint::MinMax { min, max } => Some((min, max)),
            Constraint::Min(m) => Some((m, f64::INFINITY)),
            Constraint::Max(m) => Some((f64::NEG_INFINITY, m)),
            Constraint::Constant(_) | Constraint::NonNeg => None,
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
            Regularizer::MonoL1(l) => l * lane_sum(w, |v| v.to_f64()),
            Regularizer::L1(l) => l * lane_sum(w, |v| v.to_f64().abs()),
            Regularizer::L2(l) => {
                l * lane_sum(w, |v| {
                    let v = v.to_f64();
                    v * v
                })
            }
        }
    }

    /// Adds `scale * d loss / d w` to `grad`.
    pub fn add_grad<C: Real>(&self, w: &[C], scale: f64, grad: &mut [C]) {
        // The mode chosen once, outside the loops: each loop is then plain arithmetic, at the
        // CPU's widest vectors.
        crate::simd::widest(|| match *self {
            Regularizer::MonoL1(l) => {
                let d = C::from_f64(scale * l);
                grad.iter_mut().for_each(|g| *g = *g + d);
            }
            Regularizer::L1(l) => {
                for (g, v) in grad.iter_mut().zip(w) {
                    let v = v.to_f64();
                    let d = l * v.signum() * f64::from(u8::from(v != 0.0));
                    *g = *g + C::from_f64(scale * d);
                }
            }
            Regularizer::L2(l) => {
                for (g, v) in grad.iter_mut().zip(w) {
                    *g = *g + C::from_f64(scale * (2.0 * l * v.to_f64()));
                }
            }
        })
    }
}
