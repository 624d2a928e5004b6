//! Matrix products computed in registers straight from their operands, without the packed
//! copies that `matrixmultiply` makes of both operands on every call.
//!
//! A step's products are small (a batch of 64 rows by layers of a few hundred), and on them
//! `matrixmultiply`'s packing costs a third to a half of its kernel's time (`benches/RESULTS.md`).
//! Here `a` is read in place (one value per row and inner index, broadcast; any strides) and `b`
//! in place where its rows are contiguous whole vectors, else from a padded row-major copy; a
//! tile of `c` (up to 8 rows by 2 vectors, or 16 rows by 1; 6 by 2 at AVX2) stays in registers
//! over the inner loop.
//!
//! The bits are `matrixmultiply`'s on the same CPU: each element of `c` is a chain of fused
//! multiply-adds over the inner index, in order, from zero, over blocks of [`KC`] inner indices,
//! each block's sum then added to `c` (the first block's to `beta * c`, or stored for
//! `beta = 0`). That is its kernels' order, and this runs only where they fuse (x86-64-v3 and
//! v4), so a step's results do not depend on which of the two computes a product.
use std::array;

use pulp::{Simd, WithSimd};

use hgq_core::scratch;

/// Inner indices per block: `matrixmultiply`'s `kc` for float32, whose blocks' sums it adds to
/// `c` one after the other.
pub(super) const KC: usize = 256;

use crate::blas::{RawGemm, RawOperand};

/// The most multiply-adds of a product this computes at x86-64-v3 (AVX2: 16 registers, tiles
/// of 6 rows by 2 vectors), and only with `a`'s rows contiguous: larger products and a
/// transposed `a` ran faster in `matrixmultiply` (its packed panels), smaller ones here
/// (`benches/RESULTS.md`).
const V3_MOST_MACS: usize = 1 << 21;

/// `g` ([`RawGemm`]: `c = a @ b + beta * c`) on a CPU that fuses multiply-adds (x86-64-v4, or
/// v3 for products of at most [`V3_MOST_MACS`] with `a`'s rows contiguous); `false` (nothing
/// done) elsewhere and for `k = 0`, where the caller computes it otherwise.
///
/// # Safety
/// Every element of `a`, `b` and `c` at these strides is in its buffer, and no other thread
/// reads or writes the part of `c` this writes. With `beta = 0`, `c` is written, not read.
pub(super) unsafe fn sgemm(g: RawGemm) -> bool {
    let (m, k, n) = g.dims;
    if m == 0 || n == 0 || k == 0 {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(s) = pulp::x86::V4::try_new() {
            // SAFETY: as the caller promises.
            unsafe { at(s, g) };
            return true;
        }
        if let Some(s) = pulp::x86::V3::try_new()
            && m * k * n <= V3_MOST_MACS
            && g.a.2 == 1
        {
            // SAFETY: as the caller promises.
            unsafe { at(s, g) };
            return true;
        }
    }
    false
}

/// [`sgemm`] at the level of `s` (one whose multiply-adds fuse), `k > 0`.
///
/// # Safety
/// As [`sgemm`]'s.
unsafe fn at<S: Simd>(s: S, g: RawGemm) {
    let (_, k, n) = g.dims;
    let product = |b| Product {
        dims: g.dims,
        a: g.a,
        b,
        beta: g.beta,
        c: g.c,
        ldc: g.ldc,
    };
    // SAFETY: as the caller promises.
    unsafe { with_rows(g.b, (k, n), S::F32_LANES, |b| s.vectorize(product(b))) };
}

/// Calls `f` with `b` (`k x n`) as contiguous rows of whole vectors of `lanes` (its pointer and
/// row length): `b` itself where its columns are contiguous and `n` is a whole number of
/// vectors, else a copy padded with zeros.
///
/// # Safety
/// Every element of `b` at its strides is in its buffer.
pub(super) unsafe fn with_rows<R>(
    (b, rsb, csb): RawOperand,
    (k, n): (usize, usize),
    lanes: usize,
    f: impl FnOnce((*const f32, usize)) -> R,
) -> R {
    if csb == 1 && n.is_multiple_of(lanes) {
        return f((b, rsb));
    }
    let np = n.next_multiple_of(lanes);
    let mut rows = scratch::elements::<f32>(k * np);
    // SAFETY: `b`'s elements are in its buffer, as the caller promises.
    unsafe { copy_columns((b, rsb, csb), k, (0, n), &mut rows) };
    let out = f((rows.as_ptr(), np));
    scratch::give(rows);
    out
}

/// `to` (`k` rows of `to.len() / k`) = the `n` columns of `b` (`k` rows at its strides) from
/// column `j0`, each row's values past them zeros: rows of contiguous columns copied, a
/// transposed `b` (rows 1 apart) through [`transpose`], any other element by element.
///
/// # Safety
/// Every element `(t, j)` of `b` at its strides, `t < k` and `j0 <= j < j0 + n`, is in its
/// buffer.
pub(super) unsafe fn copy_columns(
    (b, rsb, csb): RawOperand,
    k: usize,
    (j0, n): (usize, usize),
    to: &mut [f32],
) {
    let ld = to.len() / k.max(1);
    if n > 0 && csb == 1 {
        for (t, row) in to.chunks_exact_mut(ld).enumerate() {
            // SAFETY: row t of `b` holds the columns from j0 (as the caller promises).
            let from = unsafe { std::slice::from_raw_parts(b.add(t * rsb + j0), n) };
            row[..n].copy_from_slice(from);
        }
    } else if n > 0 && rsb == 1 {
        // SAFETY: with rows 1 apart, the columns lie from (0, j0) to (k - 1, j0 + n - 1), all
        // in `b`'s buffer (as the caller promises).
        let cols = unsafe { std::slice::from_raw_parts(b.add(j0 * csb), (n - 1) * csb + k) };
        transpose(cols, csb, k, n, to);
    } else {
        for (t, row) in to.chunks_exact_mut(ld).enumerate() {
            for (j, v) in row[..n].iter_mut().enumerate() {
                // SAFETY: (t, j0 + j) is an element of `b`, as the caller promises.
                *v = unsafe { *b.add(t * rsb + (j0 + j) * csb) };
            }
        }
    }
    for row in to.chunks_exact_mut(ld) {
        row[n..].fill(0.0);
    }
}

/// `rows` (`k` rows of `rows.len() / k`, the first `n` of each written) = the `k x n` matrix
/// `b` whose columns are contiguous (column `j` from `b[j * csb]`): blocks of 8 by 8 through
/// AVX's registers where the CPU has it (each block read as 8 pieces of columns and written as
/// 8 pieces of rows: a column-major matrix read element by element touches a line of cache per
/// element, and plain loops over such blocks do not become shuffles), the rest element by
/// element.
pub(super) fn transpose(b: &[f32], csb: usize, k: usize, n: usize, rows: &mut [f32]) {
    const B: usize = 8;
    let np = rows.len() / k.max(1);
    let (mut kb, mut nb) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        (kb, nb) = (k - k % B, n - n % B);
        // Blocks in squares of 2 by 2, so that each side reads and writes whole lines of 16
        // values (a line half used is gone from cache when the other half is wanted).
        for j1 in (0..nb).step_by(2 * B) {
            for t1 in (0..kb).step_by(2 * B) {
                for j0 in (j1..nb.min(j1 + 2 * B)).step_by(B) {
                    for t0 in (t1..kb.min(t1 + 2 * B)).step_by(B) {
                        let from = (j0 * csb + t0)..b.len();
                        let to = (t0 * np + j0)..rows.len();
                        // SAFETY: the CPU has AVX; the block's 8 columns (j0.., 8 values from
                        // t0) are in `b` ((j0 + 7) * csb + t0 + 7 < (n - 1) * csb + k, the
                        // length `with_rows` gives it) and its 8 rows (t0.., 8 values from
                        // j0) in `rows` (t < k rows of np >= n values).
                        unsafe { transpose8(&b[from], csb, &mut rows[to], np) };
                    }
                }
            }
        }
    }
    // The rows past whole blocks, then the columns past them (everything without AVX).
    for t in kb..k {
        for j in 0..nb {
            rows[t * np + j] = b[j * csb + t];
        }
    }
    for j in nb..n {
        for t in 0..k {
            rows[t * np + j] = b[j * csb + t];
        }
    }
}

/// `to`'s 8 rows (`ldt` apart, 8 values each) = the transpose of `from`'s 8 rows (`ldf`
/// apart, 8 values each): AVX's unpacks, shuffles and lane permutes.
///
/// # Safety
/// The CPU has AVX; `from` holds `7 * ldf + 8` values and `to` `7 * ldt + 8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8(from: &[f32], ldf: usize, to: &mut [f32], ldt: usize) {
    use std::arch::x86_64::*;
    debug_assert!(from.len() >= 7 * ldf + 8 && to.len() >= 7 * ldt + 8);
    // SAFETY: the reads and writes are within `from` and `to`, as the caller promises.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(from.as_ptr().add(i * ldf)));
        // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves.
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xee>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xee>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xee>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xee>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (i, v) in out.into_iter().enumerate() {
            _mm256_storeu_ps(to.as_mut_ptr().add(i * ldt), v);
        }
    }
}

/// A product for [`WithSimd`]: `b` as rows of whole vectors (pointer, row length).
pub(super) struct Product {
    pub(super) dims: (usize, usize, usize),
    pub(super) a: RawOperand,
    pub(super) b: (*const f32, usize),
    pub(super) beta: f32,
    pub(super) c: *mut f32,
    pub(super) ldc: usize,
}

impl WithSimd for Product {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let p = &self;
        let (m, _, n) = p.dims;
        let lanes = S::F32_LANES;
        // A tile's sums stay in registers: at 16 lanes (32 registers) 8 rows of two vectors,
        // or 16 rows of one where `a`'s columns are contiguous (a transposed operand: each
        // inner index then reads one whole line of `a`); at 8 lanes (16 registers) 6 rows of
        // two vectors (twelve sums: fewer leave the two multiply-add units waiting on each
        // sum's latency) or 8 of one.
        let wide = lanes >= 16;
        let tall = p.a.1 == 1 && wide;
        let np = n.next_multiple_of(lanes);
        // Panels of two vectors' columns (the last one of one where `np` ends there), each
        // panel's rows of `b` kept in cache while every tile of rows passes over them.
        let mut j0 = 0;
        while j0 < np {
            let two = np - j0 >= 2 * lanes;
            let mut i0 = 0;
            while i0 < m {
                // SAFETY: the tiles' rows (i0 and the rows returned after it) and columns (the
                // panel's) are within the product; the buffers' bounds are `sgemm`'s caller's.
                i0 += unsafe {
                    match (m - i0, two) {
                        (16.., _) if tall => {
                            tile::<S, 16, 1>(s, p, i0, j0);
                            if two {
                                tile::<S, 16, 1>(s, p, i0, j0 + lanes);
                            }
                            16
                        }
                        (8.., true) if wide => tile::<S, 8, 2>(s, p, i0, j0),
                        (6.., true) if !wide => tile::<S, 6, 2>(s, p, i0, j0),
                        (8.., false) => tile::<S, 8, 1>(s, p, i0, j0),
                        (4.., true) => tile::<S, 4, 2>(s, p, i0, j0),
                        (4.., false) => tile::<S, 4, 1>(s, p, i0, j0),
                        (2.., true) => tile::<S, 2, 2>(s, p, i0, j0),
                        (2.., false) => tile::<S, 2, 1>(s, p, i0, j0),
                        (_, true) => tile::<S, 1, 2>(s, p, i0, j0),
                        (_, false) => tile::<S, 1, 1>(s, p, i0, j0),
                    }
                };
            }
            j0 += if two { 2 * lanes } else { lanes };
        }
    }
}

/// Rows `i0 .. i0 + MR` by the `NV` vectors of columns from `j0` of `c`: per block of [`KC`]
/// inner indices, the sums in registers (fused multiply-adds in the inner order from zero),
/// then added to `c` (the first block's to `beta * c`, or stored for `beta = 0`). Columns past
/// `n` (the padding of `b`'s rows) are computed and not stored. Returns `MR`.
///
/// # Safety
/// The tile's rows and columns are within the product of `p`, whose buffers hold them.
#[inline(always)]
unsafe fn tile<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    p: &Product,
    i0: usize,
    j0: usize,
) -> usize {
    let ((_, k, n), (a, rsa, csa), (b, ldb)) = (p.dims, p.a, p.b);
    let lanes = S::F32_LANES;
    let zero = s.splat_f32s(0.0);
    let mut t0 = 0;
    while t0 < k {
        let t1 = (t0 + KC).min(k);
        let mut sums = [[zero; NV]; MR];
        // SAFETY (this block): elements (i0 + r, t) of `a` and (t, j0 + v * lanes ..) of
        // `b`'s rows for t < k are in their buffers, as the caller promises.
        unsafe {
            let mut at: [*const f32; MR] = array::from_fn(|r| a.add((i0 + r) * rsa + t0 * csa));
            let mut bt = b.add(t0 * ldb + j0);
            for _ in t0..t1 {
                let bv: [S::f32s; NV] =
                    array::from_fn(|v| bt.add(v * lanes).cast::<S::f32s>().read_unaligned());
                for (row, ar) in sums.iter_mut().zip(&mut at) {
                    let av = s.splat_f32s(**ar);
                    for (sum, &bv) in row.iter_mut().zip(&bv) {
                        *sum = s.mul_add_f32s(av, bv, *sum);
                    }
                    // Past the last inner index this points past `a`, never read: wrapping.
                    *ar = ar.wrapping_add(csa);
                }
                bt = bt.wrapping_add(ldb);
            }
        }
        // SAFETY: the tile is in `c`, as the caller promises.
        unsafe {
            if j0 + NV * lanes <= n {
                store::<S, MR, NV, true>(s, p, sums, (i0, j0), t0 == 0);
            } else {
                store::<S, MR, NV, false>(s, p, sums, (i0, j0), t0 == 0);
            }
        }
        t0 = t1;
    }
    MR
}

/// Adds a tile's sums of a block of inner indices to `c` (rows from `i0`, columns from `j0`):
/// the first block's to `beta * c`, or stores them for `beta = 0`. `WHOLE`: every vector's
/// columns are within `n` (plain loads and stores; else masked ones, lanes past `n` neither
/// read nor written).
///
/// # Safety
/// The tile's elements within `n` are in `c`.
#[inline(always)]
pub(super) unsafe fn store<S: Simd, const MR: usize, const NV: usize, const WHOLE: bool>(
    s: S,
    p: &Product,
    sums: [[S::f32s; NV]; MR],
    (i0, j0): (usize, usize),
    first: bool,
) {
    let lanes = S::F32_LANES;
    let beta = s.splat_f32s(p.beta);
    for (r, row) in sums.iter().enumerate() {
        for (v, &sum) in row.iter().enumerate() {
            let j = j0 + v * lanes;
            let valid = p.dims.2.saturating_sub(j).min(lanes);
            if !WHOLE && valid == 0 {
                continue;
            }
            let mask = s.mask_between_m32s(0, valid as u32);
            // SAFETY: element (i0 + r, j) and the `valid` after it are in `c`, as the caller
            // promises (all `lanes` of them where `WHOLE`).
            unsafe {
                let out = p.c.add((i0 + r) * p.ldc + j);
                let total = if first && p.beta == 0.0 {
                    sum
                } else {
                    let old = if WHOLE {
                        out.cast::<S::f32s>().read_unaligned()
                    } else {
                        s.mask_load_ptr_f32s(mask, out)
                    };
                    let old = if first { s.mul_f32s(old, beta) } else { old };
                    s.add_f32s(sum, old)
                };
                if WHOLE {
                    out.cast::<S::f32s>().write_unaligned(total);
                } else {
                    s.mask_store_ptr_f32s(mask, out, total);
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
pub(super) mod tests {
    use super::*;
    use crate::layers::native::Operand;

    /// Values whose products and sums round (the bits depend on the order of the sums), of
    /// both signs and many magnitudes.
    fn fill(len: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mantissa = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                mantissa * ((x >> 8) % 7) as f32 * 0.37
            })
            .collect()
    }

    /// The bits of `matrixmultiply` for every shape a step makes and their edges: rows and
    /// columns not a whole tile or vector (1 to 37), inner lengths across a block (255, 256,
    /// 257, 600), each operand plain or transposed, `c` with a row stride past `n`, and
    /// `beta` 0, 1 and another (`c`'s old values NaN where `beta = 0`: not read); at each
    /// level this CPU has (x86-64-v4 and v3) and through [`sgemm`]'s choice.
    #[test]
    fn the_bits_of_matrixmultiply() {
        let mut levels = 0;
        if let Some(s) = pulp::x86::V4::try_new() {
            check(|g| unsafe { at(s, g) });
            levels += 1;
        }
        if let Some(s) = pulp::x86::V3::try_new() {
            check(|g| unsafe { at(s, g) });
            levels += 1;
        }
        if levels > 0 {
            // What the step runs: this kernel where it takes the product (at v4 always),
            // else `matrixmultiply`.
            check(|g| unsafe {
                if !sgemm(g) {
                    assert!(pulp::x86::V4::try_new().is_none(), "refused at v4");
                    crate::blas::matrixmultiply(g);
                }
            });
        }
    }

    /// Runs `product` (a [`sgemm`] that computes) on the shapes of
    /// [`the_bits_of_matrixmultiply`] against `matrixmultiply`.
    fn check(product: impl Fn(RawGemm)) {
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (8, 64, 16),
            (9, 33, 17),
            (64, 64, 128),
            (64, 128, 10),
            (128, 64, 128),
            (37, 255, 33),
            (13, 256, 48),
            (16, 257, 31),
            (5, 600, 20),
        ];
        for (m, k, n) in shapes {
            for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
                for beta in [0.0f32, 1.0, -0.75] {
                    let (a, b) = (fill(m * k, 1 + m as u64), fill(k * n, 2 + n as u64));
                    let (rsa, csa) = if a_t { (1, m) } else { (k, 1) };
                    let (rsb, csb) = if b_t { (1, k) } else { (n, 1) };
                    let old = fill(m * (n + 3), 3);
                    let at = format!("{m}x{k}x{n} a_t {a_t} b_t {b_t} beta {beta}");
                    same_bits_as_matrixmultiply(
                        (m, k, n),
                        ((&a, rsa, csa), (&b, rsb, csb)),
                        (beta, &old),
                        &product,
                        &at,
                    );
                }
            }
        }
    }

    /// Runs `product` on `c = a @ b + beta * c` for `c` of `m` rows `n + 3` apart starting
    /// as `old` (NaN where `beta = 0`: not read) and compares it with `matrixmultiply`'s: the
    /// same bits within `n`, nothing written past it. `at` names the case in a failure.
    pub(in crate::layers::native) fn same_bits_as_matrixmultiply(
        (m, k, n): (usize, usize, usize),
        ((a, rsa, csa), (b, rsb, csb)): (Operand<'_>, Operand<'_>),
        (beta, old): (f32, &[f32]),
        product: impl Fn(RawGemm),
        at: &str,
    ) {
        let ldc = n + 3;
        let mut want = old.to_vec();
        let mut got = if beta == 0.0 {
            vec![f32::NAN; m * ldc]
        } else {
            old.to_vec()
        };
        let gemm = |c: &mut Vec<f32>| RawGemm {
            dims: (m, k, n),
            a: (a.as_ptr(), rsa, csa),
            b: (b.as_ptr(), rsb, csb),
            beta,
            c: c.as_mut_ptr(),
            ldc,
        };
        // SAFETY: the buffers hold every element at these strides (the caller's operands).
        unsafe { crate::blas::matrixmultiply(gemm(&mut want)) };
        product(gemm(&mut got));
        for i in 0..m {
            for j in 0..ldc {
                let (w, g) = (want[i * ldc + j], got[i * ldc + j]);
                if j < n {
                    assert_eq!(w.to_bits(), g.to_bits(), "{at} ({i}, {j}): {w} vs {g}");
                } else if beta != 0.0 {
                    assert_eq!(g.to_bits(), old[i * ldc + j].to_bits(), "{at}: past n");
                } else {
                    assert!(g.is_nan(), "{at}: wrote past n");
                }
            }
        }
    }

    /// `k = 0` is left to the caller (`false`, `c` untouched).
    #[test]
    fn an_empty_inner_length_is_refused() {
        let mut c = [7.0f32; 4];
        // SAFETY: nothing is read for k = 0; `c` holds 2 x 2.
        let done = unsafe {
            sgemm(RawGemm {
                dims: (2, 0, 2),
                a: ([].as_ptr(), 0, 1),
                b: ([].as_ptr(), 2, 1),
                beta: 0.0,
                c: c.as_mut_ptr(),
                ldc: 2,
            })
        };
        assert!(!done);
        assert_eq!(c, [7.0; 4]);
    }
}
