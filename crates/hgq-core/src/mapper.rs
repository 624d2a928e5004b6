//! Bit-width mapping (SPEC 5): which axes of the input share a bit width.
use crate::error::{CoreError, Result};
use crate::real::Real;
use crate::shape::TensorRef;
use std::sync::Arc;

/// Exactly one way of naming which axes share a bit width: the enum makes "both" and
/// "neither" unrepresentable.
#[derive(Debug, Clone)]
pub enum Axes {
    /// These axes get their own bit width per index; all others share.
    Heterogeneous(Vec<isize>),
    /// These axes share one bit width; all others get their own.
    Homogeneous(Vec<isize>),
    /// A mapper of the user's own chooses the bit-width shape for each input shape.
    Mapper(Arc<dyn BitwidthMapper>),
}

/// Mappers are equal when they are the same object.
impl PartialEq for Axes {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Axes::Heterogeneous(a), Axes::Heterogeneous(b)) => a == b,
            (Axes::Homogeneous(a), Axes::Homogeneous(b)) => a == b,
            (Axes::Mapper(a), Axes::Mapper(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Axes {}

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

/// A bit-width mapper of the user's own (the reference's `bw_mapper` argument): for an input
/// shape, the shape of the bit widths. The bit widths broadcast to the input (numpy rules), so
/// each dimension of the bit-width shape is 1 (that axis shares a bit width) or the input's
/// size (a bit width per index); the quantizer refuses any other shape with
/// [`CoreError::MapperShape`]. Integer-bit tracking and `minimal_i`/`any_k` reduce over the
/// axes of size 1.
///
/// ```
/// use hgq_core::{mapper::Axes, quantizer::Layout, BitwidthMapper, Result};
/// use std::sync::Arc;
/// /// A bit width per channel (the last axis) of 4-D inputs, one for all of 2-D ones.
/// #[derive(Debug)]
/// struct PerChannel;
/// impl BitwidthMapper for PerChannel {
///     fn bw_shape(&self, input: &[Option<usize>]) -> Result<Vec<usize>> {
///         let mut s = vec![1; input.len()];
///         if input.len() == 4 {
///             s[3] = input[3].unwrap_or(1);
///         }
///         Ok(s)
///     }
/// }
/// let axes = Axes::Mapper(Arc::new(PerChannel));
/// let l = Layout::new(&axes, &[None, Some(8), Some(8), Some(3)]).unwrap();
/// assert_eq!((l.bw_shape, l.homogeneous), (vec![1, 1, 1, 3], vec![0, 1, 2]));
/// ```
pub trait BitwidthMapper: std::fmt::Debug + Send + Sync {
    /// The bit-width shape for inputs of `input_shape` (`None`: a dimension of any size, such
    /// as the batch): the same rank, each dimension 1 or the input's.
    fn bw_shape(&self, input_shape: &[Option<usize>]) -> Result<Vec<usize>>;
}

/// The reference's `DefaultBitwidthMapper`.
///
/// ```
/// use hgq_core::{mapper::Axes, BitwidthMapper, DefaultBitwidthMapper};
/// let mut m = DefaultBitwidthMapper::new(Axes::Homogeneous(vec![0]));
/// assert_eq!(m.build(&[None, Some(16)]).unwrap(), vec![1, 16]);
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

    /// The resolved (heterogeneous, homogeneous) axes, after [`DefaultBitwidthMapper::build`].
    pub fn resolved(&self) -> Option<(&[usize], &[usize])> {
        self.resolved
            .as_ref()
            .map(|(a, b)| (a.as_slice(), b.as_slice()))
    }

    /// The bit-width shape for an input shape, the axes resolved against its rank and kept
    /// for the reductions below.
    pub fn build(&mut self, input_shape: &[Option<usize>]) -> Result<Vec<usize>> {
        let (shape, resolved) = self.resolve(input_shape)?;
        self.resolved = Some(resolved);
        Ok(shape)
    }

    /// The homogeneous axes (resolved by [`DefaultBitwidthMapper::build`]).
    pub fn homogeneous_axes(&self) -> Result<&[usize]> {
        self.resolved
            .as_ref()
            .map(|r| r.1.as_slice())
            .ok_or(CoreError::NotBuilt)
    }
    /// `bw_to_x`: the bit widths broadcast to the input's shape.
    ///
    /// ```
    /// use hgq_core::{mapper::Axes, BitwidthMapper, DefaultBitwidthMapper};
    /// let m = DefaultBitwidthMapper::new(Axes::Homogeneous(vec![0]));
    /// assert_eq!(m.broadcast(&[1.0f32, 2.0], &[1, 2], &[2, 2]).unwrap(), vec![1.0, 2.0, 1.0, 2.0]);
    /// ```
    pub fn broadcast<C: Real>(
        &self,
        bw: &[C],
        bw_shape: &[usize],
        x_shape: &[usize],
    ) -> Result<Vec<C>> {
        crate::shape::broadcast_to(bw, bw_shape, x_shape)
    }
    /// `max |x|` over the homogeneous axes, keeping dims (NaN propagates).
    pub fn absmax<C: Real>(&self, x: TensorRef<'_, C>) -> Result<(Vec<C>, Vec<usize>)> {
        self.reduce(x, C::ZERO, |acc, v| acc.maximum(v.abs()))
    }
    /// `any(x < 0)` over the homogeneous axes, keeping dims.
    pub fn any_negative<C: Real>(&self, x: TensorRef<'_, C>) -> Result<(Vec<bool>, Vec<usize>)> {
        let (v, s) = self.reduce(x, C::ZERO, |acc, v| if v < C::ZERO { C::ONE } else { acc })?;
        Ok((v.into_iter().map(|a| a == C::ONE).collect(), s))
    }
    /// A keep-dims reduction over the homogeneous axes.
    pub fn reduce<C: Real>(
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
        // Row-major walk of x, tracking the output offset, over x's dimensions with the
        // neighbours that are reduced alike merged (the same walk in fewer, longer rows: a
        // `[batch, 8, 8, 1]` input with one bit width per pixel has rows of 64, not of 1).
        let (walk, kept) = merged(x.shape, &shape);
        let nd = walk.len();
        let mut ostride = vec![0usize; nd];
        let mut acc = 1;
        for d in (0..nd).rev() {
            ostride[d] = if kept[d] == 1 { 0 } else { acc };
            acc *= kept[d];
        }
        let Some((&last, outer)) = walk.split_last() else {
            // A scalar: one element, one output.
            if let (Some(o), Some(&v)) = (out.first_mut(), x.data.first()) {
                *o = f(*o, v);
            }
            return Ok((out, shape));
        };
        if last == 0 {
            return Ok((out, shape));
        }
        // Row by row of the last dimension (in x's order, so each output element sees its
        // inputs in the order of a row-major walk): the output offset moves once per row.
        let mut idx = vec![0usize; outer.len()];
        // The whole walk at the CPU's widest vectors (the baseline target has 4 lanes and no
        // blend): each output element sees the same operations in the same order, so the same
        // values.
        crate::simd::widest(|| {
            for row in x.data.chunks_exact(last) {
                let base: usize = idx.iter().zip(&ostride).map(|(i, s)| i * s).sum();
                if ostride[nd - 1] == 0 {
                    let o = &mut out[base];
                    for &v in row {
                        *o = f(*o, v);
                    }
                } else {
                    for (o, &v) in out[base..base + last].iter_mut().zip(row) {
                        *o = f(*o, v);
                    }
                }
                for d in (0..outer.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < outer[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        });
        Ok((out, shape))
    }
}

/// `x_shape` and the keep-dims `out_shape` of a reduction over it, with dimensions of 1 left
/// out and neighbours that are both reduced or both kept multiplied together: the same
/// row-major walk in as few dimensions as it takes.
fn merged(x_shape: &[usize], out_shape: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let (mut walk, mut kept) = (Vec::<usize>::new(), Vec::<usize>::new());
    for (&n, &o) in x_shape.iter().zip(out_shape) {
        if n == 1 {
            continue;
        }
        match (walk.last_mut(), kept.last_mut()) {
            (Some(w), Some(k)) if (*k == 1) == (o == 1) => {
                *w *= n;
                *k *= o;
            }
            _ => {
                walk.push(n);
                kept.push(o);
            }
        }
    }
    (walk, kept)
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

impl DefaultBitwidthMapper {
    /// The bit-width shape and the (heterogeneous, homogeneous) axes for an input shape.
    #[allow(clippy::type_complexity)]
    fn resolve(
        &self,
        input_shape: &[Option<usize>],
    ) -> Result<(Vec<usize>, (Vec<usize>, Vec<usize>))> {
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
            Axes::Mapper(m) => {
                let shape = m.bw_shape(input_shape)?;
                let fits = shape.len() == n
                    && shape
                        .iter()
                        .zip(input_shape)
                        .all(|(&b, &d)| b == 1 || Some(b) == d);
                if !fits {
                    return Err(CoreError::MapperShape {
                        bw_shape: shape,
                        input_shape: input_shape.to_vec(),
                    });
                }
                let (o, h) = (0..n).partition(|&d| shape[d] == 1);
                return Ok((shape, (h, o)));
            }
        };
        let mut shape = vec![1; n];
        for &d in &hetero {
            shape[d] = input_shape[d].ok_or_else(|| CoreError::UnknownAxisSize {
                axis: d,
                shape: input_shape.to_vec(),
            })?;
        }
        Ok((shape, (hetero, homo)))
    }
}

impl BitwidthMapper for DefaultBitwidthMapper {
    fn bw_shape(&self, input_shape: &[Option<usize>]) -> Result<Vec<usize>> {
        Ok(self.resolve(input_shape)?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The absolute maximum over the batch (the AVX2 row fold where the CPU has it) is the
    /// plain loop's, NaN propagating, over rows of a width that is not a multiple of the lanes.
    #[test]
    fn absmax_over_the_batch_is_the_plain_fold() {
        let (rows, cols) = (7, 19);
        let mut x: Vec<f32> = (0..rows * cols)
            .map(|j| ((j * 7919) % 113) as f32 * 0.37 - 20.0)
            .collect();
        x[3 * cols + 5] = f32::NAN;
        x[6 * cols + 18] = f32::NEG_INFINITY;
        x[cols + 2] = -0.0;
        let mut m = DefaultBitwidthMapper::new(Axes::Homogeneous(vec![0]));
        m.build(&[None, Some(cols)]).unwrap();
        let (a, s) = m
            .absmax(TensorRef::new(&x, &[rows, cols]).unwrap())
            .unwrap();
        assert_eq!(s, vec![1, cols]);
        for (j, &got) in a.iter().enumerate() {
            let want = (0..rows).fold(0.0f32, |acc, r| Real::maximum(acc, x[r * cols + j].abs()));
            assert_eq!(got.to_bits(), want.to_bits(), "column {j}");
        }
        assert!(a[5].is_nan() && a[18] == f32::INFINITY);
    }

    #[test]
    fn reductions_over_homogeneous_axes() {
        let mut m = DefaultBitwidthMapper::new(Axes::Heterogeneous(vec![-1]));
        assert_eq!(m.build(&[None, Some(2), Some(3)]).unwrap(), vec![1, 1, 3]);
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

    /// The row-wise walk (neighbouring dimensions merged) folds what a naive per-element walk
    /// folds, in the same order (the fold is not associative), for every set of homogeneous
    /// axes of inputs with and without dimensions of 1, and a 0-D input.
    #[test]
    fn reduce_matches_a_per_element_walk() {
        for shape in [
            vec![3usize, 4, 5],
            vec![3, 1, 4, 5],
            vec![1, 3, 4, 1],
            vec![2, 3, 1, 2, 2],
            vec![4, 0, 3],
        ] {
            let nd = shape.len();
            let n: usize = shape.iter().product();
            let x: Vec<f64> = (0..n).map(|j| ((j * 37) % 23) as f64 - 11.0).collect();
            for mask in 0..1u32 << nd {
                let homo: Vec<isize> = (0..nd as isize).filter(|d| mask >> d & 1 == 1).collect();
                let mut m = DefaultBitwidthMapper::new(Axes::Homogeneous(homo.clone()));
                let known: Vec<Option<usize>> = shape.iter().map(|&d| Some(d)).collect();
                m.build(&known).unwrap();
                let (got, out_shape) = m
                    .reduce(TensorRef::new(&x, &shape).unwrap(), 0.0, |a, v| a * 0.5 + v)
                    .unwrap();
                let mut want = vec![0.0; out_shape.iter().product()];
                for (j, &v) in x.iter().enumerate() {
                    // x's index of element j, row-major, then its output offset.
                    let mut idx = vec![0; nd];
                    let mut r = j;
                    for d in (0..nd).rev() {
                        idx[d] = r % shape[d];
                        r /= shape[d];
                    }
                    let off = (0..nd).fold(0, |o, d| o * out_shape[d] + idx[d] % out_shape[d]);
                    want[off] = want[off] * 0.5 + v;
                }
                assert_eq!(got, want, "shape {shape:?}, homogeneous axes {homo:?}");
            }
        }
        let mut m = DefaultBitwidthMapper::new(Axes::Homogeneous(vec![]));
        m.build(&[]).unwrap();
        let (got, s) = m
            .reduce(TensorRef::new(&[3.0f32], &[]).unwrap(), 1.0, |a, v| a + v)
            .unwrap();
        assert_eq!((got, s), (vec![4.0], vec![]));
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
