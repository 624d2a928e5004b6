//! Bit-width mapping (SPEC 5): which axes of the input share a bit width.
use crate::error::{CoreError, Result};
use crate::real::Real;
use crate::shape::TensorRef;

/// Exactly one way of naming the axes: the enum makes "both" and "neither" unrepresentable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Axes {
    /// These axes get their own bit width per index; all others share.
    Heterogeneous(Vec<isize>),
    /// These axes share one bit width; all others get their own.
    Homogeneous(Vec<isize>),
}

impl Axes {
    /// From the reference's pair of optional lists: exactly one must be given.
    pub fn from_pair(
        heterogeneous: Option<Vec<isize>>,
        homogeneous: Option<Vec<isize>>,
    ) -> Result<Axes> {
        match (heterogeneous, homogeneous) {
            (Some(h), None) => Ok(Axes::Heterogeneous(h)),
            (None, Some(h)) => Ok(Axes::Homogeneous(h)),
            _ => Err(CoreError::AxisSpec),
        }
    }
}

/// Maps bit-width tensors to inputs and reduces inputs to bit-width shape.
pub trait BitwidthMapper {
    /// The bit-width shape for an input shape (`None`: a dimension of unknown size, such as the
    /// batch). Resolves negative axes against the rank.
    fn bw_shape(&mut self, input_shape: &[Option<usize>]) -> Result<Vec<usize>>;
    /// The homogeneous axes (resolved by [`BitwidthMapper::bw_shape`]).
    fn homogeneous_axes(&self) -> Result<&[usize]>;
    /// `bw_to_x`: the bit widths broadcast to the input's shape.
    ///
    /// ```
    /// use hgq_core::{mapper::Axes, BitwidthMapper, DefaultBitwidthMapper};
    /// let m = DefaultBitwidthMapper::new(Axes::Homogeneous(vec![0]));
    /// assert_eq!(m.broadcast(&[1.0f32, 2.0], &[1, 2], &[2, 2]).unwrap(), vec![1.0, 2.0, 1.0, 2.0]);
    /// ```
    fn broadcast<C: Real>(
        &self,
        bw: &[C],
        bw_shape: &[usize],
        x_shape: &[usize],
    ) -> Result<Vec<C>> {
        crate::shape::check_len("bit width", bw.len(), bw_shape)?;
        let aligned = crate::shape::align(bw_shape, x_shape)?;
        Ok(crate::shape::broadcast(bw, &aligned, x_shape))
    }
    /// `max |x|` over the homogeneous axes, keeping dims (NaN propagates).
    fn absmax<C: Real>(&self, x: TensorRef<'_, C>) -> Result<(Vec<C>, Vec<usize>)> {
        self.reduce(x, C::ZERO, |acc, v| acc.maximum(v.abs()))
    }
    /// `any(x < 0)` over the homogeneous axes, keeping dims.
    fn any_negative<C: Real>(&self, x: TensorRef<'_, C>) -> Result<(Vec<bool>, Vec<usize>)> {
        let (v, s) = self.reduce(x, C::ZERO, |acc, v| if v < C::ZERO { C::ONE } else { acc })?;
        Ok((v.into_iter().map(|a| a == C::ONE).collect(), s))
    }
    /// A keep-dims reduction over the homogeneous axes.
    fn reduce<C: Real>(
        &self,
        x: TensorRef<'_, C>,
        init: C,
        f: impl Fn(C, C) -> C,
    ) -> Result<(Vec<C>, Vec<usize>)> {
        let homo = self.homogeneous_axes()?;
        crate::shape::check_len("x", x.data.len(), x.shape)?;
        let shape: Vec<usize> = x
            .shape
            .iter()
            .enumerate()
            .map(|(d, &n)| if homo.contains(&d) { 1 } else { n })
            .collect();
        if homo.iter().any(|&a| a >= x.shape.len()) {
            return Err(CoreError::Axis {
                axis: *homo.iter().max().unwrap_or(&0) as isize,
                ndim: x.shape.len(),
            });
        }
        let n: usize = shape.iter().product();
        let mut out = vec![init; n];
        // Row-major walk of x, tracking the output offset.
        let nd = x.shape.len();
        let mut ostride = vec![0usize; nd];
        let mut acc = 1;
        for d in (0..nd).rev() {
            ostride[d] = if shape[d] == 1 { 0 } else { acc };
            acc *= shape[d];
        }
        let mut idx = vec![0usize; nd];
        for &v in x.data {
            let off: usize = idx.iter().zip(&ostride).map(|(i, s)| i * s).sum();
            out[off] = f(out[off], v);
            for d in (0..nd).rev() {
                idx[d] += 1;
                if idx[d] < x.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok((out, shape))
    }
}

/// The reference's `DefaultBitwidthMapper`.
///
/// ```
/// use hgq_core::{mapper::Axes, BitwidthMapper, DefaultBitwidthMapper};
/// let mut m = DefaultBitwidthMapper::new(Axes::Homogeneous(vec![0]));
/// assert_eq!(m.bw_shape(&[None, Some(16)]).unwrap(), vec![1, 16]);
/// assert!(DefaultBitwidthMapper::new(Axes::Heterogeneous(vec![0])).bw_shape(&[None, Some(4)]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DefaultBitwidthMapper {
    axes: Axes,
    /// (heterogeneous, homogeneous), resolved against a rank.
    resolved: Option<(Vec<usize>, Vec<usize>)>,
}

impl DefaultBitwidthMapper {
    /// A mapper for the given axes.
    pub fn new(axes: Axes) -> Self {
        DefaultBitwidthMapper {
            axes,
            resolved: None,
        }
    }

    /// The axes as given.
    pub fn axes(&self) -> &Axes {
        &self.axes
    }

    /// The resolved (heterogeneous, homogeneous) axes, after `bw_shape`.
    pub fn resolved(&self) -> Option<(&[usize], &[usize])> {
        self.resolved
            .as_ref()
            .map(|(a, b)| (a.as_slice(), b.as_slice()))
    }
}

/// Resolves negative axes; an axis outside `[0, ndim)` after that is an error.
pub fn check_axis(axis: &[isize], ndim: usize) -> Result<Vec<usize>> {
    axis.iter()
        .map(|&a| {
            let r = if a < 0 { a + ndim as isize } else { a };
            if r < 0 || r >= ndim as isize {
                Err(CoreError::Axis { axis: a, ndim })
            } else {
                Ok(r as usize)
            }
        })
        .collect()
}

impl BitwidthMapper for DefaultBitwidthMapper {
    fn bw_shape(&mut self, input_shape: &[Option<usize>]) -> Result<Vec<usize>> {
        let n = input_shape.len();
        let (hetero, homo) = match &self.axes {
            Axes::Heterogeneous(a) => {
                let h = check_axis(a, n)?;
                let o = (0..n).filter(|d| !h.contains(d)).collect();
                (h, o)
            }
            Axes::Homogeneous(a) => {
                let o = check_axis(a, n)?;
                let h = (0..n).filter(|d| !o.contains(d)).collect();
                (h, o)
            }
        };
        let mut shape = vec![1; n];
        for &d in &hetero {
            shape[d] = input_shape[d].ok_or_else(|| CoreError::UnknownAxisSize {
                axis: d,
                shape: input_shape.to_vec(),
            })?;
        }
        self.resolved = Some((hetero, homo));
        Ok(shape)
    }

    fn homogeneous_axes(&self) -> Result<&[usize]> {
        self.resolved
            .as_ref()
            .map(|r| r.1.as_slice())
            .ok_or(CoreError::NotBuilt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_over_homogeneous_axes() {
        let mut m = DefaultBitwidthMapper::new(Axes::Heterogeneous(vec![-1]));
        assert_eq!(
            m.bw_shape(&[None, Some(2), Some(3)]).unwrap(),
            vec![1, 1, 3]
        );
        assert_eq!(m.resolved().unwrap(), (&[2usize][..], &[0usize, 1][..]));
        let x = [
            1.0f32, -5.0, 0.5, -2.0, 3.0, 0.25, 0.0, 1.0, -0.5, 4.0, -1.0, 0.0,
        ];
        let (a, s) = m.absmax(TensorRef::new(&x, &[2, 2, 3]).unwrap()).unwrap();
        assert_eq!((a, s), (vec![4.0, 5.0, 0.5], vec![1, 1, 3]));
        let (n, _) = m
            .any_negative(TensorRef::new(&x, &[2, 2, 3]).unwrap())
            .unwrap();
        assert_eq!(n, vec![true, true, true]);
        let nan = [f32::NAN, 1.0, 1.0, 1.0, 1.0, 1.0];
        let (a, _) = m.absmax(TensorRef::new(&nan, &[1, 2, 3]).unwrap()).unwrap();
        assert!(a[0].is_nan() && a[1] == 1.0);
        assert!(m.broadcast(&[1.0f32, 2.0], &[1, 1, 2], &[2, 2, 3]).is_err());
    }

    #[test]
    fn axis_errors() {
        assert_eq!(check_axis(&[-1, 0], 3).unwrap(), vec![2, 0]);
        assert!(matches!(
            check_axis(&[3], 3),
            Err(CoreError::Axis { axis: 3, ndim: 3 })
        ));
        assert!(matches!(
            check_axis(&[-4], 3),
            Err(CoreError::Axis { axis: -4, ndim: 3 })
        ));
        assert!(matches!(
            Axes::from_pair(Some(vec![0]), Some(vec![1])),
            Err(CoreError::AxisSpec)
        ));
        assert!(matches!(
            Axes::from_pair(None, None),
            Err(CoreError::AxisSpec)
        ));
        let m = DefaultBitwidthMapper::new(Axes::Homogeneous(vec![0]));
        assert!(matches!(m.homogeneous_axes(), Err(CoreError::NotBuilt)));
    }
}
