//! Matrix products of the native step: over the nonzero values of a mostly zero left operand
//! (`sparse`), else MKL's `sgemm` through libtorch on Intel processors, else the step's own
//! kernel in registers (`direct`), else `matrixmultiply`; narrow ones in plain loops; split
//! over threads where that pays.
use rayon::prelude::*;

use crate::blas::RawGemm;
use crate::{Result, TorchError, simd};
use hgq_core::scratch;

/// A matrix operand: its values with their row and column strides (a transpose is a stride
/// swap).
pub(crate) type Operand<'a> = (&'a [f32], usize, usize);

/// `a @ b` (`m x k` by `k x n`) into a row-major `m x n` buffer from [`scratch`], not zeroed
/// first: a product with `beta = 0` writes every element of its output without reading it
/// (BLAS's and `matrixmultiply`'s contract, `k = 0` included), so zeroing would be a pass for
/// nothing.
pub(crate) fn product(
    dims: (usize, usize, usize),
    a: Operand<'_>,
    b: Operand<'_>,
) -> Result<Vec<f32>> {
    let mut c = scratch::elements::<f32>(dims.0 * dims.2);
    gemm(dims, a, b, 0.0, &mut c)?;
    Ok(c)
}

/// `c = a @ b + beta * c` for row-major `c` (`m x n`); `a` is `m x k`, `b` is `k x n`.
pub(super) fn gemm(
    (m, k, n): (usize, usize, usize),
    (a, rsa, csa): Operand<'_>,
    (b, rsb, csb): Operand<'_>,
    beta: f32,
    c: &mut [f32],
) -> Result<()> {
    let last = |r: usize, rs: usize, cc: usize, cs: usize| (r - 1) * rs + (cc - 1) * cs;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let fits = c.len() >= m * n
        && (k == 0 || (a.len() > last(m, rsa, k, csa) && b.len() > last(k, rsb, n, csb)));
    if !fits {
        return Err(TorchError::Kernel(format!(
            "matrix product of {m}x{k} by {k}x{n}: buffers of {}, {}, {}",
            a.len(),
            b.len(),
            c.len()
        )));
    }
    if k.min(n) <= LANES && m * k * n <= NARROW_MACS {
        narrow((m, k, n), (a, rsa, csa), (b, rsb, csb), beta, c);
        return Ok(());
    }
    // Products big enough to pay for a fork: blocks of c on the threads of the current rayon
    // pool, each block a product of its own (each element the same sums in the same order).
    // Every block packs the whole of one operand again: a split of c's rows packs `b` once
    // per block, a split of its columns `a`, so the split goes along the side whose other
    // operand is the smaller one (the columns for a batch of 64 rows by a wide layer).
    // Inside a team session (the native step on several threads) its spinning threads, from
    // smaller products on; else rayon's pool.
    let team = hgq_core::team::width();
    let (threads, min_macs) = if team > 1 {
        (team, TEAM_MACS)
    } else {
        (rayon::current_num_threads(), PARALLEL_MACS)
    };
    let (rows, cols) = if threads < 2 || m * k * n < min_macs {
        (m, n)
    } else if m >= n {
        (m.div_ceil(threads), n)
    } else {
        (m, n.div_ceil(threads))
    };
    let out = SharedOut(c.as_mut_ptr());
    // Block j: rows j * rows.. where the rows are split, else columns j * cols.. (one of the
    // two is split at most, so the other offset is 0).
    let block = |j: usize| {
        let (r0, c0) = if cols == n {
            (j * rows, 0)
        } else {
            (0, j * cols)
        };
        // SAFETY: the block's rows and columns of a, b and c are in bounds (checked above;
        // r0 < m and c0 < n, and a split needs k > 0); blocks are disjoint, so no two
        // threads write the same element of c.
        unsafe {
            sgemm_block(RawGemm {
                dims: (rows.min(m - r0), k, cols.min(n - c0)),
                a: (a.as_ptr().add(r0 * rsa), rsa, csa),
                b: (b.as_ptr().add(c0 * csb), rsb, csb),
                beta,
                c: out.at(r0 * n + c0),
                ldc: n,
            });
        }
    };
    match m.div_ceil(rows) * n.div_ceil(cols) {
        1 => block(0),
        blocks if team > 1 => hgq_core::team::for_each(blocks, &block),
        blocks => (0..blocks).into_par_iter().for_each(block),
    }
    Ok(())
}

/// The most multiply-adds of a product that [`narrow`] computes.
const NARROW_MACS: usize = 1 << 21;

/// Lanes of the vectors [`narrow`] works in; it takes products with at most this many
/// columns or this inner length (wider ones are faster in `sgemm`, with its fused
/// multiply-adds: `benches/RESULTS.md`).
const LANES: usize = 8;

/// [`gemm`] of a product with few columns or a short inner length (a convolution's window of
/// a few taps, its filters, a layer of a few outputs) in plain loops at AVX2's vectors:
/// `sgemm` spends more on such shapes than their arithmetic (its blocking is made for wide
/// operands). Each element of `c` is `beta * c` (0 for `beta = 0`) plus the products in the
/// inner order, rounded after each. The operands' bounds are the caller's (`gemm` checked
/// them; `c` holds at least `m x n`).
fn narrow(
    (m, k, n): (usize, usize, usize),
    (a, rsa, csa): Operand<'_>,
    (b, rsb, csb): Operand<'_>,
    beta: f32,
    c: &mut [f32],
) {
    // Rows of `b` (and of the sums) padded to whole vectors of LANES, zeros in `b`, so that
    // every update is whole vectors that stay in registers (a loop over a row of 8 or 10
    // values runs scalar at 16 lanes).
    let np = n.next_multiple_of(LANES);
    let mut bp = scratch::elements::<f32>(k * np);
    for (t, row) in bp.chunks_exact_mut(np).enumerate() {
        let (head, pad) = row.split_at_mut(n);
        for (j, v) in head.iter_mut().enumerate() {
            *v = b[t * rsb + j * csb];
        }
        pad.fill(0.0);
    }
    // Rows of `n` that are whole vectors: `c` itself; else a padded copy.
    let padded = np != n;
    let mut cp = padded.then(|| scratch::elements::<f32>(m * np));
    let work = match &mut cp {
        Some(cp) => {
            for (row, out) in cp.chunks_exact_mut(np).zip(c.chunks_exact(n)) {
                let (head, pad) = row.split_at_mut(n);
                head.iter_mut().zip(out).for_each(|(v, &c)| *v = beta * c);
                pad.fill(0.0);
            }
            &mut cp[..]
        }
        None => &mut c[..m * n],
    };
    // Not `beta * c` for `beta = 0`: `c` is not read (it may hold anything, NaN included).
    if beta == 0.0 {
        work.fill(0.0);
    } else if beta != 1.0 && !padded {
        work.iter_mut().for_each(|v| *v *= beta);
    }
    narrow_loops((m, np), (a, rsa, csa), &bp, work);
    scratch::give(bp);
    if let Some(cp) = cp {
        for (out, row) in c.chunks_exact_mut(n).zip(cp.chunks_exact(np)) {
            out.iter_mut().zip(row).for_each(|(o, &v)| *o = v);
        }
        scratch::give(cp);
    }
}

simd::avx2_fn! {
    /// [`narrow`]'s loops: `a` times the padded `bp` (rows of `np`) added to `work` (`m` rows
    /// of `np`), each sum in the inner order; at AVX2, whose vectors are [`LANES`] wide.
    fn narrow_loops(dims: (usize, usize), a: Operand<'_>, bp: &[f32], work: &mut [f32]) {
        let ((m, np), (a, rsa, csa)) = (dims, a);
        let (bv, _) = bp.as_chunks::<LANES>();
        let (cv, _) = work.as_chunks_mut::<LANES>();
        let w = np / LANES;
        // A small `c` stays in cache while each row of `b` is added to all of its rows (their
        // sums independent of each other); a tall one is finished row by row.
        if m * np <= 1 << 12 {
            for (t, bt) in bv.chunks_exact(w).enumerate() {
                for (i, ci) in cv.chunks_exact_mut(w).enumerate() {
                    let ai = a[i * rsa + t * csa];
                    ci.iter_mut().zip(bt).for_each(|(c, b)| axpy(c, ai, b));
                }
            }
            return;
        }
        match w {
            1 => rows::<1>(cv, bv, (a, rsa, csa)),
            2 => rows::<2>(cv, bv, (a, rsa, csa)),
            _ => {
                for (i, ci) in cv.chunks_exact_mut(w).enumerate() {
                    for (t, bt) in bv.chunks_exact(w).enumerate() {
                        let ai = a[i * rsa + t * csa];
                        ci.iter_mut().zip(bt).for_each(|(c, b)| axpy(c, ai, b));
                    }
                }
            }
        }
    }
}

/// `c += a * b`, lane by lane.
#[inline(always)]
fn axpy(c: &mut [f32; LANES], a: f32, b: &[f32; LANES]) {
    for l in 0..LANES {
        c[l] += a * b[l];
    }
}

/// Rows of `W` vectors, each row's sums kept in registers over the inner loop (rows
/// independent of each other).
#[inline(always)]
fn rows<const W: usize>(cv: &mut [[f32; LANES]], bv: &[[f32; LANES]], a: Operand<'_>) {
    let (a, rsa, csa) = a;
    for (i, ci) in cv.chunks_exact_mut(W).enumerate() {
        let mut acc: [[f32; LANES]; W] = std::array::from_fn(|j| ci[j]);
        for (t, bt) in bv.chunks_exact(W).enumerate() {
            let ai = a[i * rsa + t * csa];
            acc.iter_mut().zip(bt).for_each(|(c, b)| axpy(c, ai, b));
        }
        ci.copy_from_slice(&acc);
    }
}

/// `g` (one block of a product): over `a`'s nonzero values where it is mostly zeros (a step's
/// quantized activations and the gradients behind a ReLU: [`sparse`](super::sparse), on x86-64-v3
/// and v4, the bits of the step's own dense kernel), else MKL's `sgemm` where libtorch brings it on
/// an Intel processor (faster there on the products of a step), else the step's own kernel
/// ([`direct`](super::direct), on x86-64-v3 and v4), else `matrixmultiply` (the same bits as
/// the kernel).
///
/// # Safety
/// Every element of `a` (`m x k`), `b` (`k x n`) and `c` at these strides is in its buffer, and
/// no other thread reads or writes the part of `c` this writes.
unsafe fn sgemm_block(g: RawGemm) {
    // SAFETY: as the caller promises; with beta 0 `c` is written, not read.
    unsafe {
        if super::sparse::sgemm(g) {
            return;
        }
        let mkl = crate::blas::mkl();
        if mkl.is_some_and(|mkl| crate::blas::sgemm(mkl, g)) || super::direct::sgemm(g) {
            return;
        }
        crate::blas::matrixmultiply(g);
    }
}

/// A product's output that the threads of a split write to, each its own block.
struct SharedOut(*mut f32);

// SAFETY: the threads write disjoint elements (see `gemm`'s blocks).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element `offset` past the start.
    ///
    /// # Safety
    /// `offset` is within the output.
    unsafe fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY: as the caller promises.
        unsafe { self.0.add(offset) }
    }
}

/// Multiply-adds from which a matrix product is split over threads: below it, waking the other
/// workers costs more than half the product (`benches/RESULTS.md` has the measurements).
const PARALLEL_MACS: usize = 1 << 22;

/// [`PARALLEL_MACS`] for a team's spinning threads, which take work in about a microsecond
/// (smaller products gain less than the other thread's reads of their operands cost).
const TEAM_MACS: usize = 1 << 19;

#[cfg(test)]
mod tests {
    use super::*;

    /// Products split over threads (along the rows, or the columns where `m < n`) give the
    /// bits of the product in one piece, and those are the plain sums up to float32 rounding;
    /// a transposed operand (strides swapped) and `beta = 1` included.
    #[test]
    fn split_products_are_the_product_in_one_piece() -> Result<()> {
        /// A team session of two threads on this thread, once no other test's step leads
        /// one.
        fn lead_team() -> hgq_core::team::Session {
            loop {
                if let Some(s) = hgq_core::team::session(2) {
                    return s;
                }
                std::thread::yield_now();
            }
        }
        let fill = |len: usize, seed: u32| -> Vec<f32> {
            (0..len)
                .map(|j| ((j as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000)
                .map(|v| v as f32 / 500.0 - 1.0)
                .collect()
        };
        let pool = |t| hgq_core::kernels::thread_pool(t).expect("a thread pool");
        let (single, pool) = (pool(1), pool(2));
        // (m, k, n): a split of the columns (m < n), of the rows, and one too small to split.
        for (m, k, n) in [(64, 512, 512), (512, 64, 300), (8, 8, 8)] {
            let (a, bt) = (fill(m * k, 1), fill(n * k, 2));
            // b given transposed: stored n x k, read k x n through its strides.
            let (ao, bo) = ((&a[..], k, 1), (&bt[..], 1, k));
            let one = single.install(|| product((m, k, n), ao, bo))?;
            let split = pool.install(|| product((m, k, n), ao, bo))?;
            assert!(
                one.iter()
                    .zip(&split)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{m}x{k}x{n}"
            );
            // On the team of a session (the native step's threads): the same bits.
            let teamed = pool.install(|| {
                let _team = lead_team();
                product((m, k, n), ao, bo)
            })?;
            assert!(
                one.iter()
                    .zip(&teamed)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{m}x{k}x{n} on a team"
            );
            let mut acc = fill(m * n, 3);
            let start = acc.clone();
            pool.install(|| gemm((m, k, n), ao, bo, 1.0, &mut acc))?;
            for (r, row) in one.chunks_exact(n).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    let want: f64 = (0..k)
                        .map(|t| f64::from(a[r * k + t]) * f64::from(bt[j * k + t]))
                        .sum();
                    assert!(
                        (f64::from(v) - want).abs() <= 1e-4 * (k as f64),
                        "{m}x{k}x{n}"
                    );
                    let sum = start[r * n + j] + v;
                    assert!((acc[r * n + j] - sum).abs() <= 1e-4 * (k as f32));
                }
            }
        }
        Ok(())
    }

    /// Products of few columns or a short inner length (`narrow`: a convolution's window, its
    /// filters) are each element's products summed in the inner order in float32, bit for
    /// bit, whatever the loop (all of `c` in cache, rows of one, two or more vectors, padded
    /// or not); `b` transposed; `beta = 1` adds to `c`, `beta = 0` does not read it (NaN).
    #[test]
    fn narrow_products_are_the_sums_in_order() -> Result<()> {
        let fill = |len: usize, seed: u32| -> Vec<f32> {
            (0..len)
                .map(|j| ((j as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000)
                .map(|v| v as f32 / 300.0 - 1.7)
                .collect()
        };
        for (m, k, n) in [
            (2304, 9, 8),
            (9, 2304, 8),
            (300, 8, 13),
            (50, 4, 40),
            (600, 3, 30),
            (7, 5, 3),
        ] {
            assert!(k.min(n) <= LANES && m * k * n <= NARROW_MACS);
            let (a, bt) = (fill(m * k, 5), fill(n * k, 6));
            for transposed in [false, true] {
                // b stored k x n, or n x k and read through its strides.
                let b = if transposed {
                    bt.clone()
                } else {
                    (0..k * n).map(|j| bt[(j % n) * k + j / n]).collect()
                };
                let bo = if transposed {
                    (&b[..], 1, k)
                } else {
                    (&b[..], n, 1)
                };
                let mut c = vec![f32::NAN; m * n];
                gemm((m, k, n), (&a, k, 1), bo, 0.0, &mut c)?;
                let start = fill(m * n, 7);
                let mut acc = start.clone();
                gemm((m, k, n), (&a, k, 1), bo, 1.0, &mut acc)?;
                for i in 0..m {
                    for j in 0..n {
                        let mut s = 0.0f32;
                        let mut s1 = start[i * n + j];
                        for t in 0..k {
                            let p = a[i * k + t] * bt[j * k + t];
                            s += p;
                            s1 += p;
                        }
                        let at = format!("{m}x{k}x{n} [{i}, {j}], transposed {transposed}");
                        assert_eq!(c[i * n + j].to_bits(), s.to_bits(), "{at}");
                        assert_eq!(acc[i * n + j].to_bits(), s1.to_bits(), "{at}, beta 1");
                    }
                }
            }
        }
        Ok(())
    }
}
