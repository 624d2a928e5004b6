//! Bit widths with their derivatives: the bit-width arithmetic in forward mode, so that the
//! gradients of `bits`, `props` and the regularization losses with respect to the raw
//! variables come from the same logic that computes their values (a native training step has
//! no autograd to ask).
//!
//! The arithmetic is elementwise with numpy broadcasting, so a value depends on each variable
//! through a diagonal (or, for a variable of one element, a column) Jacobian: [`Dual`] keeps
//! that per variable as a vector. Every operation's derivative is the one torch's autograd
//! takes through the same operations on the other backend (round with a straight-through
//! gradient, `relu`'s gradient 0 at 0, `a > 0` without one).
use std::marker::PhantomData;

use super::backend::{BitWidthArith, BwOp};
use super::constraint::Regularizer;
use super::cpu::{HostVar, map, zip};
use super::{VarName, Variable};
use crate::error::{CoreError, Result};
use crate::real::Real;

/// Bit-width values and their derivatives with respect to the variables they depend on.
#[derive(Debug, Clone, PartialEq)]
pub struct Dual<C> {
    /// The values (row-major, the bit-width shape or one element).
    pub value: Vec<C>,
    /// Per variable: its element count and the derivative of each value element with respect
    /// to its element of the same index (a variable of the values' length), or to its only
    /// element (a variable of one element), or, for a one-element value (a sum such as a
    /// regularizer's loss), to each element of the variable.
    d: Vec<Derivative<C>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Derivative<C> {
    var: VarName,
    var_len: usize,
    d: Slope<C>,
}

/// A derivative's elements: all one (a variable itself, or it through steps whose derivative
/// is one: rounding, adding), kept without a vector, or one each.
#[derive(Debug, Clone, PartialEq)]
enum Slope<C> {
    Ones(usize),
    Each(Vec<C>),
}

impl<C: Real> Slope<C> {
    fn len(&self) -> usize {
        match self {
            Slope::Ones(n) => *n,
            Slope::Each(d) => d.len(),
        }
    }

    /// `d * s(j)` for each element `j` (for ones `s(j)` itself: `1 * x` is `x`).
    fn times(&self, s: impl Fn(usize) -> C) -> Vec<C> {
        match self {
            Slope::Ones(n) => (0..*n).map(s).collect(),
            Slope::Each(d) => d.iter().enumerate().map(|(j, &d)| d * s(j)).collect(),
        }
    }

    fn at(&self, j: usize) -> C {
        match self {
            Slope::Ones(_) => C::ONE,
            Slope::Each(d) => d[j],
        }
    }

    fn into_vec(self) -> Vec<C> {
        match self {
            Slope::Ones(n) => vec![C::ONE; n],
            Slope::Each(d) => d,
        }
    }
}

impl<C: Real> Dual<C> {
    fn constant(value: Vec<C>) -> Self {
        Dual {
            value,
            d: Vec::new(),
        }
    }

    /// The values' count, which `upstream` must have.
    fn upstream_len(&self, upstream: &[C]) -> Result<usize> {
        let n = self.value.len();
        if upstream.len() != n {
            return Err(CoreError::Length {
                what: "upstream of bit widths",
                len: upstream.len(),
                shape: vec![n],
                expected: n,
            });
        }
        Ok(n)
    }

    /// The gradients of `sum(upstream * value)` with respect to each variable the values
    /// depend on, in the variable's shape (its element count): the vector-Jacobian product an
    /// autograd backward of these values computes.
    pub fn backward(&self, upstream: &[C]) -> Result<Vec<(VarName, Vec<C>)>> {
        let n = self.upstream_len(upstream)?;
        Ok(self
            .d
            .iter()
            .map(|dv| {
                let g = if n == 1 {
                    dv.d.times(|_| upstream[0])
                } else if dv.var_len == n {
                    dv.d.times(|j| upstream[j])
                } else {
                    // A one-element variable broadcast to the values: the sum over them.
                    let s = (0..n).fold(C::ZERO, |acc, j| acc + upstream[j] * dv.d.at(j));
                    vec![s]
                };
                (dv.var, g)
            })
            .collect())
    }

    /// [`Dual::backward`] added into `grads`, for the variables `wanted` accepts: each
    /// gradient `g` becomes `g + d * upstream` element by element (a variable without one
    /// starts from zeros). A training step sums the gradients a variable gets from several
    /// terms (the quantizer's pass, EBOPs, regularizers) in place, in the order of its calls,
    /// without a vector per term.
    pub fn backward_add(
        &self,
        upstream: &[C],
        grads: &mut super::Grads<C>,
        wanted: impl Fn(VarName) -> bool,
    ) -> Result<()> {
        let n = self.upstream_len(upstream)?;
        self.add_into(grads, &wanted, |dv, g| {
            // The slope's form chosen outside the loops: each loop is plain arithmetic.
            if n == 1 || dv.var_len == n {
                match (&dv.d, n == 1) {
                    (Slope::Ones(_), true) => g.iter_mut().for_each(|g| *g = *g + upstream[0]),
                    (Slope::Ones(_), false) => {
                        g.iter_mut().zip(upstream).for_each(|(g, &u)| *g = *g + u)
                    }
                    (Slope::Each(d), true) => {
                        let u = upstream[0];
                        g.iter_mut().zip(d).for_each(|(g, &d)| *g = *g + d * u)
                    }
                    (Slope::Each(d), false) => g
                        .iter_mut()
                        .zip(d.iter().zip(upstream))
                        .for_each(|(g, (&d, &u))| *g = *g + d * u),
                }
            } else {
                let s = (0..n).fold(C::ZERO, |acc, j| acc + upstream[j] * dv.d.at(j));
                g[0] = g[0] + s;
            }
        })
    }

    /// Runs `add` on each wanted variable's derivative and its gradient in `grads` (zeros
    /// where it has none yet), once every existing gradient's length is checked: an error
    /// leaves `grads` as it was.
    fn add_into(
        &self,
        grads: &mut super::Grads<C>,
        wanted: &impl Fn(VarName) -> bool,
        mut add: impl FnMut(&Derivative<C>, &mut Vec<C>),
    ) -> Result<()> {
        self.check_grad_lens(grads, wanted)?;
        for dv in self.d.iter().filter(|dv| wanted(dv.var)) {
            if let Some(slot) = grads.slot(dv.var) {
                add(dv, slot.get_or_insert_with(|| vec![C::ZERO; dv.var_len]));
            }
        }
        Ok(())
    }

    /// Every wanted gradient that exists has its variable's length: checked before anything
    /// is added, so that an error leaves `grads` as it was.
    fn check_grad_lens(
        &self,
        grads: &mut super::Grads<C>,
        wanted: &impl Fn(VarName) -> bool,
    ) -> Result<()> {
        for dv in self.d.iter().filter(|dv| wanted(dv.var)) {
            if let Some(Some(g)) = grads.slot(dv.var)
                && g.len() != dv.var_len
            {
                return Err(CoreError::Length {
                    what: "gradient of a bit-width variable",
                    len: g.len(),
                    shape: vec![dv.var_len],
                    expected: dv.var_len,
                });
            }
        }
        Ok(())
    }

    /// [`Dual::backward_add`] for an upstream constant along rows: value `j`'s upstream is
    /// `rows[j / (n / rows.len())]` (EBOPs' upstream of a kernel's bit widths is the input's
    /// bit width of the kernel's row). The same sums, without the upstream as an array of the
    /// values' length.
    pub fn backward_add_rows(
        &self,
        rows: &[C],
        grads: &mut super::Grads<C>,
        wanted: impl Fn(VarName) -> bool,
    ) -> Result<()> {
        let n = self.value.len();
        if rows.is_empty() || !n.is_multiple_of(rows.len()) {
            return Err(CoreError::Length {
                what: "upstream rows of bit widths",
                len: rows.len(),
                shape: vec![n],
                expected: n.max(1),
            });
        }
        let row_len = n / rows.len();
        // A one-element variable broadcast to the values sums over all of them: the general
        // path, on the upstream spelled out.
        if self.d.iter().any(|dv| wanted(dv.var) && dv.var_len != n) {
            let up: Vec<C> = rows
                .iter()
                .flat_map(|&u| std::iter::repeat_n(u, row_len))
                .collect();
            return self.backward_add(&up, grads, wanted);
        }
        self.add_into(grads, &wanted, |dv, g| {
            let g_rows = g.chunks_exact_mut(row_len.max(1)).zip(rows);
            crate::simd::widest(|| match &dv.d {
                Slope::Ones(_) => {
                    for (g, &u) in g_rows {
                        g.iter_mut().for_each(|g| *g = *g + u);
                    }
                }
                Slope::Each(d) => {
                    for ((g, &u), d) in g_rows.zip(d.chunks_exact(row_len.max(1))) {
                        g.iter_mut().zip(d).for_each(|(g, &d)| *g = *g + d * u);
                    }
                }
            })
        })
    }
}

/// The bit-width arithmetic of hgq-core's CPU variables (`Vec<C>`), with derivatives
/// ([`Dual`]).
///
/// ```
/// use hgq_core::quantizer::{CpuQuantizer, DualArith, KifSpec, QuantizerSpec, VarName};
/// use hgq_core::{mapper::Axes, OverflowMode, RoundMode};
/// let spec = KifSpec::new(1.0, 2.0, 3.0, RoundMode::Rnd, OverflowMode::Wrap)
///     .with_axes(Axes::Homogeneous(vec![0]));
/// let q = CpuQuantizer::<f32>::new(QuantizerSpec::Kif(spec), &[None, Some(2)])?;
/// // bits = relu(rc(i) + rc(f)): d bits / d f is 1 where bits > 0.
/// let bits = q.inner().bits(&DualArith::<f32>::new())?;
/// assert_eq!(bits.value, [5.0, 5.0]);
/// let grads = bits.backward(&[1.0, 2.0])?;
/// assert!(grads.contains(&(VarName::F, vec![1.0, 2.0])));
/// # Ok::<(), hgq_core::CoreError>(())
/// ```
///
/// Variables other than `Vec`s work through [`HostVar`] (the `V` parameter).
#[derive(Debug, Clone, Copy, Default)]
pub struct DualArith<C, V = Vec<C>>(PhantomData<C>, PhantomData<fn(&V)>);

impl<C, V> DualArith<C, V> {
    /// The arithmetic (it holds nothing).
    pub fn new() -> Self {
        DualArith(PhantomData, PhantomData)
    }
}

/// `a`'s derivatives scaled elementwise by `s` (values of the result's length), broadcast to
/// the result's length `n`.
fn scaled<C: Real>(a: &Dual<C>, n: usize, s: impl Fn(usize) -> C) -> Result<Vec<Derivative<C>>> {
    a.d.iter()
        .map(|dv| {
            let d = match dv.d.len() {
                // A sum over a variable (one value): its derivative per variable element.
                _ if n == 1 && a.value.len() == 1 => dv.d.times(|_| s(0)),
                len if len == n => dv.d.times(&s),
                1 => (0..n).map(|j| dv.d.at(0) * s(j)).collect(),
                len => {
                    return Err(CoreError::Broadcast {
                        from: vec![len],
                        to: vec![n],
                    });
                }
            };
            Ok(Derivative {
                var: dv.var,
                var_len: dv.var_len,
                d: Slope::Each(d),
            })
        })
        .collect()
}

/// [`scaled`] by one: `a`'s derivatives themselves where they have the result's length (ones
/// stay ones without a vector).
fn unscaled<C: Real>(a: &Dual<C>, n: usize) -> Result<Vec<Derivative<C>>> {
    if a.value.len() == n && a.d.iter().all(|dv| n == 1 || dv.d.len() == n) {
        return Ok(a.d.clone());
    }
    scaled(a, n, |_| C::ONE)
}

/// The sum of two derivative lists (same result length), by variable.
fn merge<C: Real>(mut a: Vec<Derivative<C>>, b: Vec<Derivative<C>>) -> Vec<Derivative<C>> {
    for db in b {
        match a.iter_mut().find(|da| da.var == db.var) {
            Some(da) => {
                let y = db.d.into_vec();
                let mut x = std::mem::replace(&mut da.d, Slope::Ones(0)).into_vec();
                x.iter_mut().zip(&y).for_each(|(x, &y)| *x = *x + y);
                da.d = Slope::Each(x);
            }
            None => a.push(db),
        }
    }
    a
}

impl<C: Real, V: HostVar<C>> BitWidthArith for DualArith<C, V> {
    type C = C;
    type Var = V;
    type Bw = Dual<C>;
    type Error = CoreError;

    fn bw(&self, v: &Variable<V>) -> Result<Dual<C>> {
        let value = v.value.host()?;
        let n = value.len();
        Ok(Dual {
            value: value.to_vec(),
            d: vec![Derivative {
                var: v.name,
                var_len: n,
                d: Slope::Ones(n),
            }],
        })
    }

    fn bw_rc(&self, v: &Variable<V>) -> Result<Dual<C>> {
        let value = v.value.host()?;
        let n = value.len();
        Ok(Dual {
            value: map(value, super::rc1),
            d: vec![Derivative {
                var: v.name,
                var_len: n,
                d: Slope::Ones(n),
            }],
        })
    }

    fn bw_const(&self, value: f64, shape: &[usize]) -> Result<Dual<C>> {
        Ok(Dual::constant(vec![
            C::from_f64(value);
            crate::shape::numel(shape)?
        ]))
    }

    fn bw_op(&self, op: BwOp<'_, Dual<C>>) -> Result<Dual<C>> {
        Ok(match op {
            BwOp::RoundSte(a) => Dual {
                value: map(&a.value, super::rc1),
                d: a.d.clone(),
            },
            BwOp::Add(a, b) | BwOp::Sub(a, b) => {
                let sub = matches!(op, BwOp::Sub(..));
                let value = zip(&a.value, &b.value, |x, y| if sub { x - y } else { x + y })?;
                let n = value.len();
                let db = if sub {
                    scaled(b, n, |_| -C::ONE)?
                } else {
                    unscaled(b, n)?
                };
                Dual {
                    value,
                    d: merge(unscaled(a, n)?, db),
                }
            }
            BwOp::Mul(a, b) => {
                let value = zip(&a.value, &b.value, |x, y| x * y)?;
                let n = value.len();
                let at = |v: &[C], j: usize| if v.len() == 1 { v[0] } else { v[j] };
                Dual {
                    value,
                    d: merge(
                        scaled(a, n, |j| at(&b.value, j))?,
                        scaled(b, n, |j| at(&a.value, j))?,
                    ),
                }
            }
            BwOp::AddScalar(a, c) => Dual {
                value: a.value.iter().map(|&v| v + C::from_f64(c)).collect(),
                d: a.d.clone(),
            },
            BwOp::MulScalar(a, c) => {
                let c = C::from_f64(c);
                Dual {
                    value: a.value.iter().map(|&v| v * c).collect(),
                    d: scaled(a, a.value.len(), |_| c)?,
                }
            }
            BwOp::Exp2(a) => {
                let value: Vec<C> = a.value.iter().map(|&v| v.exp2()).collect();
                let ln2 = C::from_f64(std::f64::consts::LN_2);
                let d = scaled(a, value.len(), |j| value[j] * ln2)?;
                Dual { value, d }
            }
            BwOp::Relu(a) => {
                let pos = |j: usize| a.value[j] > C::ZERO;
                Dual {
                    value: a.value.iter().map(|&v| v.maximum(C::ZERO)).collect(),
                    d: scaled(a, a.value.len(), |j| if pos(j) { C::ONE } else { C::ZERO })?,
                }
            }
            BwOp::Positive(a) => Dual::constant(
                a.value
                    .iter()
                    .map(|&v| if v > C::ZERO { C::ONE } else { C::ZERO })
                    .collect(),
            ),
            BwOp::Maximum(a, b) => Dual::constant(zip(&a.value, &b.value, Real::maximum)?),
        })
    }

    fn regularize(&self, r: Regularizer, v: &Variable<V>) -> Result<Dual<C>> {
        let value = v.value.host()?;
        let mut d = vec![C::ZERO; value.len()];
        r.add_grad(value, 1.0, &mut d);
        Ok(Dual {
            value: vec![C::from_f64(r.loss(value))],
            d: vec![Derivative {
                var: v.name,
                var_len: value.len(),
                d: Slope::Each(d),
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantizer::Grads;

    fn each(d: &[f32]) -> Slope<f32> {
        Slope::Each(d.to_vec())
    }

    /// `backward_add_rows` is `backward_add` of the upstream spelled out row by row, bit for
    /// bit: every slope form, a variable broadcast from one element (the general path), a
    /// gradient that does not exist yet; rows that do not divide the values, or a gradient of
    /// another length, are errors that add nothing.
    #[test]
    fn backward_add_rows_is_backward_add_spelled_out() -> Result<()> {
        let (rows, row_len) = ([0.3f32, -1.7, 2.5e-3], 4);
        let n = rows.len() * row_len;
        let d = |s: f32| each(&(0..n).map(|j| s * (j as f32 - 4.5)).collect::<Vec<_>>());
        let deriv = |var, var_len, d| Derivative { var, var_len, d };
        let per_element = Dual {
            value: vec![1.0f32; n],
            d: vec![
                deriv(VarName::B, n, Slope::Ones(n)),
                deriv(VarName::I, n, d(0.37)),
            ],
        };
        let mut broadcast = per_element.clone();
        broadcast.d.push(deriv(VarName::F, 1, d(-1.1)));
        let up: Vec<f32> = rows
            .iter()
            .flat_map(|&u| std::iter::repeat_n(u, row_len))
            .collect();
        let base = || Grads {
            b: Some((0..n).map(|j| 0.01 * j as f32).collect()),
            ..Grads::default()
        };
        for dual in [&per_element, &broadcast] {
            let (mut got, mut want) = (base(), base());
            dual.backward_add_rows(&rows, &mut got, |_| true)?;
            dual.backward_add(&up, &mut want, |_| true)?;
            assert_eq!(got, want);
            assert_ne!(got, base());
        }
        assert!(
            per_element
                .backward_add_rows(&[0.1; 5], &mut base(), |_| true)
                .is_err()
        );
        let short = || Grads {
            b: Some(vec![0.0f32; n]),
            i: Some(vec![0.0f32; 3]),
            ..Grads::default()
        };
        let mut g = short();
        assert!(
            per_element
                .backward_add_rows(&rows, &mut g, |_| true)
                .is_err()
        );
        assert_eq!(g, short());
        Ok(())
    }

    /// `backward_add` is `backward` summed onto the gradients there are, bit for bit, for
    /// derivatives of ones, one each, a one-element variable broadcast to the values, and a
    /// one-element value (a loss); unwanted variables are left alone.
    #[test]
    fn backward_add_is_backward_summed() -> Result<()> {
        let n = 5;
        let up = [0.3f32, -1.7, 2.5e-3, 7.0, -0.1];
        let wide = Dual {
            value: vec![1.0f32; n],
            d: vec![
                Derivative {
                    var: VarName::B,
                    var_len: n,
                    d: Slope::Ones(n),
                },
                Derivative {
                    var: VarName::I,
                    var_len: n,
                    d: each(&[0.5, -1.0, 3.0, 0.0, 1.25]),
                },
                Derivative {
                    var: VarName::F,
                    var_len: 1,
                    d: each(&[1.0, 2.0, -0.5, 0.25, 3.0]),
                },
                Derivative {
                    var: VarName::K,
                    var_len: n,
                    d: Slope::Ones(n),
                },
            ],
        };
        let loss = Dual {
            value: vec![4.0f32],
            d: vec![Derivative {
                var: VarName::B,
                var_len: n,
                d: each(&[1e-3, 2e-3, -1e-3, 0.0, 5e-4]),
            }],
        };
        let base = || Grads {
            b: Some(vec![0.1f32, 0.2, 0.3, 0.4, 0.5]),
            i: Some(vec![-0.7f32; n]),
            f: None,
            ..Grads::default()
        };
        for (dual, upstream) in [(&wide, &up[..]), (&loss, &[0.75f32][..])] {
            let mut got = base();
            let wanted = |v: VarName| v != VarName::K;
            dual.backward_add(upstream, &mut got, wanted)?;
            let mut want = base();
            for (var, g) in dual.backward(upstream)? {
                if !wanted(var) {
                    continue;
                }
                let Some(slot) = want.slot(var) else { continue };
                match slot {
                    Some(s) => s.iter_mut().zip(&g).for_each(|(s, &x)| *s += x),
                    None => *slot = Some(g),
                }
            }
            assert_eq!(got, want);
        }
        // The broadcast variable's sum and the added terms did move the gradients.
        let mut got = base();
        wide.backward_add(&up, &mut got, |_| true)?;
        assert_ne!(got.b, base().b);
        assert_eq!(got.f.as_deref().map(<[f32]>::len), Some(1));
        // An upstream or a gradient of another length: an error, nothing half added.
        assert!(wide.backward_add(&up[..4], &mut base(), |_| true).is_err());
        let short = || Grads {
            b: Some(vec![0.0f32; n]),
            i: Some(vec![0.0f32; 3]),
            ..Grads::default()
        };
        let mut g = short();
        assert!(wide.backward_add(&up, &mut g, |_| true).is_err());
        assert_eq!(g, short());
        Ok(())
    }
}
