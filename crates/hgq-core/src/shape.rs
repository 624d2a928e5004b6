//! Shapes: numpy broadcasting, and the reductions that undo it.
use crate::error::{CoreError, Result};
use crate::real::Real;

/// A borrowed tensor: row-major `data` of the given `shape`.
///
/// ```
/// use hgq_core::TensorRef;
/// let x = [1.0f32, 2.0, 3.0, 4.0];
/// let t = TensorRef::new(&x, &[2, 2]).unwrap();
/// assert_eq!(t.shape, &[2, 2]);
/// assert!(TensorRef::new(&x, &[3]).is_err());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a, T> {
    /// Row-major elements.
    pub data: &'a [T],
    /// Dimensions.
    pub shape: &'a [usize],
}

impl<'a, T> TensorRef<'a, T> {
    /// Checks that `data` has `prod(shape)` elements.
    pub fn new(data: &'a [T], shape: &'a [usize]) -> Result<Self> {
        check_len("tensor", data.len(), shape)?;
        Ok(TensorRef { data, shape })
    }
}

/// The number of elements of `shape`, or an error where it does not fit in a `usize`.
pub(crate) fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| CoreError::TooLarge {
            what: "tensor",
            shape: shape.to_vec(),
            max: usize::MAX,
        })
}

pub(crate) fn check_len(what: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    let expected = numel(shape)?;
    if len != expected {
        return Err(CoreError::Length {
            what,
            len,
            shape: shape.to_vec(),
            expected,
        });
    }
    Ok(())
}

/// Whether `shape` broadcasts to `to` (numpy rules, `to` unchanged): an error naming both if
/// not.
///
/// ```
/// use hgq_core::shape::check_broadcast;
/// assert!(check_broadcast(&[1, 3], &[4, 3]).is_ok());
/// assert!(check_broadcast(&[2], &[4, 3]).is_err());
/// ```
pub fn check_broadcast(shape: &[usize], to: &[usize]) -> Result<()> {
    // Right-aligned, each dim 1 or equal (numpy's rule; `align` builds on it).
    let fits = shape.len() <= to.len()
        && shape
            .iter()
            .rev()
            .zip(to.iter().rev())
            .all(|(&s, &t)| s == 1 || s == t);
    if fits {
        Ok(())
    } else {
        Err(CoreError::Broadcast {
            from: shape.to_vec(),
            to: to.to_vec(),
        })
    }
}

/// `src` of shape `from` broadcast to `to` (numpy rules), row-major.
///
/// ```
/// use hgq_core::shape::broadcast_to;
/// assert_eq!(broadcast_to(&[1.0f32, 2.0], &[2], &[2, 2])?, [1.0, 2.0, 1.0, 2.0]);
/// # Ok::<(), hgq_core::CoreError>(())
/// ```
pub fn broadcast_to<C: Copy>(src: &[C], from: &[usize], to: &[usize]) -> Result<Vec<C>> {
    check_len("broadcast source", src.len(), from)?;
    let aligned = align(from, to)?;
    if aligned == to {
        return Ok(src.to_vec());
    }
    Ok(broadcast(src, &aligned, to))
}

/// The adjoint of [`broadcast_to`]: `src` of shape `from` summed over the dimensions that
/// `to` broadcasts (the gradient of a broadcast, in `to`'s shape).
///
/// ```
/// use hgq_core::shape::sum_to;
/// assert_eq!(sum_to(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2], &[1, 2])?, [4.0, 6.0]);
/// # Ok::<(), hgq_core::CoreError>(())
/// ```
pub fn sum_to<C: Real>(src: &[C], from: &[usize], to: &[usize]) -> Result<Vec<C>> {
    check_len("summed source", src.len(), from)?;
    let aligned = align(to, from)?;
    if aligned == from {
        return Ok(src.to_vec());
    }
    let mut out = vec![C::ZERO; numel(to)?];
    reduce_sum(src, from, &mut out, &aligned);
    Ok(out)
}

/// `shape` right-aligned to rank `ndim` (leading 1s), or an error if it has more dims.
pub(crate) fn align(shape: &[usize], to: &[usize]) -> Result<Vec<usize>> {
    check_broadcast(shape, to)?;
    let mut out = Vec::with_capacity(to.len());
    out.resize(to.len() - shape.len(), 1);
    out.extend_from_slice(shape);
    Ok(out)
}

/// Copies `src` of shape `from` (same rank, dims 1 or equal) into the larger shape `to`.
pub(crate) fn broadcast<C: Copy>(src: &[C], from: &[usize], to: &[usize]) -> Vec<C> {
    let n: usize = to.iter().product();
    let strides = bcast_strides(from, to);
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; to.len()];
    for _ in 0..n {
        let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        out.push(src[off]);
        bump(&mut idx, to);
    }
    out
}

/// Sums `src` of shape `from` into `dst` of the smaller shape `to` (same rank), overwriting.
pub(crate) fn reduce_sum<C: Real>(src: &[C], from: &[usize], dst: &mut [C], to: &[usize]) {
    dst.fill(C::ZERO);
    let strides = bcast_strides(to, from);
    let mut idx = vec![0usize; from.len()];
    for &v in src {
        let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        dst[off] = dst[off] + v;
        bump(&mut idx, from);
    }
}

/// Row-major strides of `small` read at the indices of `big` (0 on broadcast dims).
fn bcast_strides(small: &[usize], big: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; small.len()];
    let mut acc = 1;
    for d in (0..small.len()).rev() {
        strides[d] = if small[d] == 1 && big[d] != 1 { 0 } else { acc };
        acc *= small[d];
    }
    strides
}

fn bump(idx: &mut [usize], shape: &[usize]) {
    for d in (0..shape.len()).rev() {
        idx[d] += 1;
        if idx[d] < shape[d] {
            return;
        }
        idx[d] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_and_reduce_are_adjoint() {
        let src = [1.0f32, 2.0, 3.0];
        let b = broadcast(&src, &[1, 3], &[2, 3]);
        assert_eq!(b, vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        let mut d = [0.0f32; 3];
        reduce_sum(&b, &[2, 3], &mut d, &[1, 3]);
        assert_eq!(d, [2.0, 4.0, 6.0]);
        assert_eq!(align(&[3], &[2, 3]).unwrap(), vec![1, 3]);
        assert!(align(&[2], &[2, 3]).is_err());
        assert!(align(&[1, 2, 3], &[2, 3]).is_err());
    }
}
