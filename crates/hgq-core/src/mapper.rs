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
