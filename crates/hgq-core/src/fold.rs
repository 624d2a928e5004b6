//! Folds over whole slices that the compiler vectorizes: whether every value is finite, and
//! sums in independent running sums. One copy for every user: hgq-core's CPU backend and
//! regularizers, hgq-torch's native training step and its optimizer.
use crate::kernels::check::finite;
use crate::real::Real;

/// Whether every value is finite (no NaN, no infinity): a branch-free test per value, one exit
/// per block of 256 values (an exit per value keeps a loop scalar).
///
/// ```
/// use hgq_core::fold::all_finite;
/// assert!(all_finite(&[0.0f32, -3.5, f32::MAX]));
/// assert!(!all_finite(&[1.0f64, f64::NAN]));
/// ```
pub fn all_finite<C: Real>(x: &[C]) -> bool {
    // Inside a team session (a training step on several threads) a long check splits.
    let team = crate::team::width();
    if team > 1 && x.len() >= crate::kernels::TEAM_MIN {
        let parts: Vec<&[C]> = x.chunks(crate::team::part_len(x.len())).collect();
        return crate::team::map_items(parts, all_finite_here)
            .into_iter()
            .all(|ok| ok);
    }
    all_finite_here(x)
}

/// [`all_finite`] on the calling thread, at the widest vectors this CPU has
/// ([`crate::simd`]).
fn all_finite_here<C: Real>(x: &[C]) -> bool {
    crate::simd::widest(|| all_finite_plain(x))
}

#[inline(always)]
fn all_finite_plain<C: Real>(x: &[C]) -> bool {
    x.chunks(256)
        .all(|c| c.iter().fold(true, |ok, &v| ok & finite(v)))
}

/// `sum(term(v))` in `A` over eight running sums: independent additions that the compiler
/// vectorizes (one running sum waits an addition's latency per value). The order of the
/// additions is fixed by the length alone; sums that are exact in `A` (integers below 2^24 in
/// float32, float32 terms in float64 almost always) do not depend on it.
///
/// ```
/// use hgq_core::fold::lane_sum;
/// let bits = [3.0f32, 4.0, 5.0, 1.0, 0.0, 2.0, 8.0, 1.0, 6.0];
/// assert_eq!(lane_sum(&bits, |v| v), 30.0);
/// assert_eq!(lane_sum(&bits, |v| f64::from(v).abs()), 30.0f64);
/// ```
pub fn lane_sum<C: Copy, A: Real>(x: &[C], term: impl Fn(C) -> A) -> A {
    // At the CPU's widest vectors: the same sums, whose order the length alone fixes.
    crate::simd::widest(|| lane_sum_plain(x, term))
}

#[inline(always)]
fn lane_sum_plain<C: Copy, A: Real>(x: &[C], term: impl Fn(C) -> A) -> A {
    let mut acc = [A::ZERO; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder().iter().fold(A::ZERO, |s, &v| s + term(v));
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = *a + term(v);
        }
    }
    acc.iter().fold(A::ZERO, |s, &a| s + a) + rest
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At the dispatched level, and at each level this CPU runs.
    fn finds_every_nan_and_infinity<C: Real>() {
        finds_every_nan_and_infinity_with::<C>(&all_finite);
        for level in crate::simd::Level::ALL {
            if level.available() {
                finds_every_nan_and_infinity_with::<C>(&|x| {
                    crate::simd::at(level, || all_finite_plain(x)).is_ok_and(|ok| ok)
                });
            }
        }
    }

    fn finds_every_nan_and_infinity_with<C: Real>(all_finite: &dyn Fn(&[C]) -> bool) {
        let ok: Vec<C> = [
            0.0,
            -0.0,
            3.5,
            1e-45,
            f64::from(f32::MAX),
            -f64::from(f32::MAX),
        ]
        .iter()
        .map(|&v| C::from_f64(v))
        .collect();
        let bad = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN].map(C::from_f64);
        for n in [1, 7, 16, 17, 256, 300, 1000] {
            let mut x: Vec<C> = (0..n).map(|j| ok[j % ok.len()]).collect();
            assert!(all_finite(&x));
            for b in bad {
                for at in [0, n / 2, n - 1] {
                    let keep = x[at];
                    x[at] = b;
                    assert!(!all_finite(&x), "{b:?} at {at} of {n}");
                    x[at] = keep;
                }
            }
        }
    }

    #[test]
    fn all_finite_finds_every_nan_and_infinity() {
        finds_every_nan_and_infinity::<f32>();
        finds_every_nan_and_infinity::<f64>();
    }

    #[test]
    fn lane_sum_is_the_sum() {
        for n in [0, 1, 7, 8, 9, 64, 1001] {
            let x: Vec<f32> = (0..n).map(|j| ((j * 7) % 13) as f32).collect();
            let want: f32 = x.iter().sum();
            assert_eq!(lane_sum(&x, |v| v), want, "n = {n}");
            let sq: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            assert_eq!(lane_sum(&x, |v| f64::from(v) * f64::from(v)), sq, "n = {n}");
        }
    }
}
