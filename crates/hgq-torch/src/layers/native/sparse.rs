//! Products whose left operand is mostly zeros, computed over its nonzero values only.
//!
//! An HGQ network's quantized activations are mostly zeros once trained (a ReLU's negative half,
//! and every value below the quantizer's last bit), and so are the gradients that come back
//! through a ReLU: at the wide layers of the bench's networks 40 to 90 % of the left operand of
//! a step's products (`x @ W`, `x^T @ g`, `g @ W^T`) are zeros (`benches/RESULTS.md`). Here the
//! rows of `a` are taken [`MR`] at a time, and each such group is first listed as the inner
//! indices where any of its rows is nonzero, with the group's values there; a tile of `c` (the
//! group's rows by a panel of columns) is then summed in registers over those indices alone, one
//! row of `b` loaded per index for all the group's rows, as the dense kernel's tiles do over
//! every index.
//!
//! The bits are the dense product's ([`direct`](super::direct), `matrixmultiply`): each element
//! is a chain of fused multiply-adds in the inner order from zero over blocks of [`KC`] inner
//! indices, and every term left out has a zero factor from `a`. A sum that starts at `+0` is
//! never `-0` (round to nearest gives `+0` to an exact zero of two terms unless both are `-0`),
//! and `s + a * b` with `a = ±0` and a finite `b` is `s` exactly. With an infinite or NaN value
//! in `b` a zero of `a` would give NaN, so such a product is left to the dense kernels.
use pulp::{Simd, WithSimd};

use hgq_core::scratch;

use super::direct::{self, KC, Product};
use crate::blas::{RawGemm, RawOperand};

/// Rows of `a` (and of `c`) per group: one loaded vector of `b` serves this many rows' sums,
/// and a group's inner indices are those where any of its rows is nonzero.
const MR: usize = 4;

/// The most listed values of `a` (every group's indices times [`MR`]), as a share of its
/// `m x k` (numerator, denominator), for which a product is computed here: the tiles run at the
/// dense kernel's multiply-adds per cycle, but the scan of `a` and the copy of `b` come on top
/// (a product listed whole took 1.13 times the dense kernel's time; `benches/RESULTS.md`).
const MOST_LISTED: (usize, usize) = (3, 4);

/// The fewest multiply-adds of a product tried here: on smaller ones the scan of `a` and the
/// copy of `b` cost about what the zeros save (`benches/RESULTS.md`).
const LEAST_MACS: usize = 1 << 21;

/// The fewest columns of a product tried here: narrower panels load a row of `b` for fewer
/// sums.
const LEAST_COLUMNS: usize = 32;

/// `g` ([`RawGemm`]: `c = a @ b + beta * c`) over `a`'s nonzero values, where the CPU fuses
/// multiply-adds (x86-64-v3 or v4), `a` is sparse enough ([`MOST_LISTED`]) and every value of
/// `b` is finite; `false` (nothing done) otherwise, where the caller computes it densely.
///
/// # Safety
/// Every element of `a`, `b` and `c` at these strides is in its buffer, and no other thread
/// reads or writes the part of `c` this writes. With `beta = 0`, `c` is written, not read.
pub(super) unsafe fn sgemm(g: RawGemm) -> bool {
    let (m, k, n) = g.dims;
    if m.saturating_mul(k).saturating_mul(n) < LEAST_MACS
        || n < LEAST_COLUMNS
        || u32::try_from(k).is_err()
    {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(s) = pulp::x86::V4::try_new() {
            // SAFETY: as the caller promises.
            return unsafe { at(s, g) };
        }
        if let Some(s) = pulp::x86::V3::try_new() {
            // SAFETY: as the caller promises.
            return unsafe { at(s, g) };
        }
    }
    false
}

/// [`sgemm`] at the level of `s` (one whose multiply-adds fuse), `k > 0`.
///
/// # Safety
/// As [`sgemm`]'s.
unsafe fn at<S: Simd>(s: S, g: RawGemm) -> bool {
    let (m, k, _) = g.dims;
    // SAFETY: as the caller promises.
    unsafe { listing(s, g, m * k / MOST_LISTED.1 * MOST_LISTED.0) }
}

/// [`at`] for at most `most` listed values of `a`.
///
/// # Safety
/// As [`sgemm`]'s.
unsafe fn listing<S: Simd>(s: S, g: RawGemm, most: usize) -> bool {
    let (m, k, n) = g.dims;
    // SAFETY: as the caller promises.
    let Some(groups) = (unsafe { Groups::of(g.a, (m, k), most) }) else {
        return false;
    };
    // Pack reads `b` at its strides, all within its buffer (as the caller promises).
    let Some(panels) = s.vectorize(Pack { b: g.b, k, n }) else {
        groups.give();
        return false;
    };
    s.vectorize(Sparse {
        p: Product {
            dims: g.dims,
            a: g.a,
            // The panels have no one row stride: each tile takes its panel's (`Tile::b`).
            b: (panels.as_ptr(), 0),
            beta: g.beta,
            c: g.c,
            ldc: g.ldc,
        },
        groups: &groups,
    });
    scratch::give(panels);
    groups.give();
    true
}

/// The vectors of the widest panel at this level: [`MR`] rows of 4 (at 16 lanes, 32
/// registers) or 2 (at 8 lanes, 16 registers) vectors of sums, with the vectors of `b` and
/// the broadcast values beside them.
#[inline(always)]
fn widest<S: Simd>() -> usize {
    if S::F32_LANES >= 16 { 4 } else { 2 }
}

/// The vectors of the panel that starts with `left` vectors of columns to go: `widest`, or
/// fewer at the end (2, 1).
#[inline(always)]
fn panel_width(left: usize, widest: usize) -> usize {
    if left >= widest {
        widest
    } else if left >= 2 {
        2
    } else {
        1
    }
}

/// Groups of [`MR`] rows of an `m x k` matrix, each as the inner indices where any of its rows
/// is nonzero, in order, with the group's values there (rows past `m` in the last group count
/// as zeros).
struct Groups {
    /// Group `g`'s indices at `g * k ..`.
    t: Vec<u32>,
    /// Group `g`'s values from `g * MR * k`: row `r`'s at listed index `e` at `r * rs + e * es`
    /// past that (rows one after the other, or each index's [`MR`] values together).
    v: Vec<f32>,
    /// `(rs, es)`: see `v`.
    layout: (usize, usize),
    /// Per group and block of [`KC`] inner indices, where its indices of the block end.
    ends: Vec<u32>,
    blocks: usize,
}

/// How much of a matrix a scan reads before it gives up on a product whose listed share so
/// far is past [`MOST_LISTED`]: a dense operand costs a fraction of the scan.
const SAMPLE: usize = 8;

impl Groups {
    /// The groups of `a` (`m x k` at its strides), or `None` where more than `most` values
    /// would be listed (or more than their share of it in a part read after the first
    /// [`SAMPLE`]th). NaN counts as nonzero.
    ///
    /// # Safety
    /// Every element of `a` at its strides is in its buffer.
    unsafe fn of((a, rsa, csa): RawOperand, (m, k): (usize, usize), most: usize) -> Option<Self> {
        let count = m.div_ceil(MR);
        let blocks = k.div_ceil(KC);
        let columns = rsa == 1 && csa != 1;
        let mut groups = Self {
            t: scratch::indices(count * k),
            v: scratch::elements::<f32>(count * MR * k),
            layout: if columns { (1, MR) } else { (k, 1) },
            ends: scratch::indices(count * blocks),
            blocks,
        };
        // SAFETY: as the caller promises.
        let dense = unsafe {
            if columns {
                groups.by_columns((a, csa), (m, k), most)
            } else {
                groups.by_rows((a, rsa, csa), (m, k), most)
            }
        };
        if dense {
            groups.give();
            return None;
        }
        Some(groups)
    }

    /// Whether `listed` values after `done` of `all` parts are past the share of `most` that
    /// gives up (after the first [`SAMPLE`]th), or all of them past `most`.
    fn too_many(listed: usize, most: usize, (done, all): (usize, usize)) -> bool {
        if done == all {
            return listed > most;
        }
        let share = |x: usize, y: usize| x as u128 * y as u128;
        done * SAMPLE >= all && share(listed, all) > share(most, done)
    }

    /// Fills the groups from `a`'s rows, each group's [`MR`] rows at once (a copy where its
    /// columns are not contiguous); whether `a` is too dense (the groups are then partial).
    ///
    /// # Safety
    /// Every element of `a` at its strides is in its buffer.
    unsafe fn by_rows(
        &mut self,
        (a, rsa, csa): RawOperand,
        (m, k): (usize, usize),
        most: usize,
    ) -> bool {
        let mut copy = None;
        let (rows, ld) = if csa == 1 {
            (a, rsa)
        } else {
            let mut c = scratch::elements::<f32>(m * k);
            for (i, row) in c.chunks_exact_mut(k).enumerate() {
                for (tt, x) in row.iter_mut().enumerate() {
                    // SAFETY: (i, tt) is an element of `a`, as the caller promises.
                    *x = unsafe { *a.add(i * rsa + tt * csa) };
                }
            }
            (copy.insert(c).as_ptr(), k)
        };
        let count = m.div_ceil(MR);
        // The last group's rows past `m`: zeros (a recycled buffer, zeroed: only a partial
        // group reads it).
        let mut zeros = scratch::elements::<f32>(if m % MR == 0 { 0 } else { k });
        zeros.fill(0.0);
        let mut listed = 0;
        let mut dense = false;
        for g in 0..count {
            let group: [&[f32]; MR] = std::array::from_fn(|r| {
                let i = g * MR + r;
                if i < m {
                    // SAFETY: row i's k values are in `a` or in the copy.
                    unsafe { std::slice::from_raw_parts(rows.add(i * ld), k) }
                } else {
                    &zeros[..]
                }
            });
            let t = &mut self.t[g * k..][..k];
            let v = &mut self.v[g * MR * k..][..MR * k];
            let len = union(group, t, v);
            self.end_blocks(g, len, k);
            listed += len * MR;
            if Self::too_many(listed, most, (g + 1, count)) {
                dense = true;
                break;
            }
        }
        if let Some(c) = copy {
            scratch::give(c);
        }
        scratch::give(zeros);
        dense
    }

    /// Fills the groups from `a`'s contiguous columns (`a[i, t]` at `i + t * csa`: a
    /// transposed operand), one inner index at a time for all groups, each index's [`MR`]
    /// values written together at its group's next free place (kept only where one is
    /// nonzero); whether `a` is too dense (the groups are then partial).
    ///
    /// # Safety
    /// Every element of `a` at these strides is in its buffer.
    unsafe fn by_columns(
        &mut self,
        (a, csa): (*const f32, usize),
        (m, k): (usize, usize),
        most: usize,
    ) -> bool {
        let count = m.div_ceil(MR);
        let full = m / MR;
        let mut len = scratch::indices(count);
        len.fill(0);
        let mut listed = 0;
        let mut dense = false;
        for tt in 0..k {
            // SAFETY: column tt's m values are in `a`, as the caller promises.
            let col = unsafe { std::slice::from_raw_parts(a.add(tt * csa), m) };
            let (whole, rest) = col.split_at(full * MR);
            let last = (!rest.is_empty()).then(|| {
                let x: [f32; MR] = std::array::from_fn(|r| rest.get(r).copied().unwrap_or(0.0));
                x
            });
            let values = whole.as_chunks::<MR>().0.iter().copied().chain(last);
            for ((g, x), l) in values.enumerate().zip(&mut len) {
                let at = *l as usize;
                self.t[g * k + at] = tt as u32;
                self.v[(g * k + at) * MR..][..MR].copy_from_slice(&x);
                let nonzero = u32::from(x.iter().any(|&x| x != 0.0));
                *l += nonzero;
                listed += nonzero as usize * MR;
            }
            if Self::too_many(listed, most, (tt + 1, k)) {
                dense = true;
                break;
            }
        }
        for (g, &l) in len.iter().enumerate() {
            self.end_blocks(g, l as usize, k);
        }
        scratch::give(len);
        dense
    }

    /// Records where group `g`'s `len` listed indices of each block of [`KC`] end.
    fn end_blocks(&mut self, g: usize, len: usize, k: usize) {
        let t = &self.t[g * k..][..len];
        for (b, end) in self.ends[g * self.blocks..][..self.blocks]
            .iter_mut()
            .enumerate()
        {
            *end = t.partition_point(|&t| (t as usize) < (b + 1) * KC) as u32;
        }
    }

    /// Returns the buffers to [`scratch`].
    fn give(self) {
        scratch::give(self.t);
        scratch::give(self.v);
        scratch::give(self.ends);
    }
}

/// Writes the indices where any of `rows` (each as long as `t`) is nonzero (NaN included), in
/// order, to the start of `t`, each row's values there to the start of its part of `v` (row
/// `r`'s from `r * t.len()`), and returns how many: AVX-512's compress where the CPU has it,
/// else a loop that writes every index at the next free place and moves the place on past the
/// listed ones only (no branch on where the zeros are).
fn union(rows: [&[f32]; MR], t: &mut [u32], v: &mut [f32]) -> usize {
    let k = t.len();
    assert!(rows.iter().all(|r| r.len() == k) && v.len() == MR * k);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the lengths are as checked.
        return unsafe { union512(rows, t, v) };
    }
    union_from(rows, (t, v), 0, 0)
}

/// [`union`]'s plain loop from index `from`, with `at` indices listed before it.
fn union_from(
    rows: [&[f32]; MR],
    (t, v): (&mut [u32], &mut [f32]),
    from: usize,
    at: usize,
) -> usize {
    let k = t.len();
    let mut at = at;
    for tt in from..k {
        let x: [f32; MR] = rows.map(|row| row[tt]);
        t[at] = tt as u32;
        for (r, &x) in x.iter().enumerate() {
            v[r * k + at] = x;
        }
        at += usize::from(x.iter().any(|&x| x != 0.0));
    }
    at
}

/// [`union`] in vectors of 16: each vector of indices' listed lanes (any row nonzero, by an
/// unordered compare, so NaN too) packed to its front, with each row's values likewise, and
/// stored whole at the next free place (its stale lanes past the packed ones are overwritten
/// by the next vector's or left past the count).
///
/// # Safety
/// The CPU has AVX-512F; every row is as long as `t`, and `v` is [`MR`] times as long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn union512(rows: [&[f32]; MR], t: &mut [u32], v: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let k = t.len();
    let whole = k - k % 16;
    let mut index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let sixteen = _mm512_set1_epi32(16);
    let mut at = 0;
    for c in (0..whole).step_by(16) {
        // SAFETY: each row's 16 values from c are read; 16 lanes are written at `at`, at
        // most `c`, so they end by `c + 16 <= k`, within `t` and each row's part of `v`.
        unsafe {
            let x: [__m512; MR] = std::array::from_fn(|r| _mm512_loadu_ps(rows[r].as_ptr().add(c)));
            let listed = x.iter().fold(0, |m, &x| {
                m | _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(x, _mm512_setzero_ps())
            });
            let packed = _mm512_maskz_compress_epi32(listed, index);
            _mm512_storeu_si512(t.as_mut_ptr().add(at).cast(), packed);
            for (r, &x) in x.iter().enumerate() {
                let to = v.as_mut_ptr().add(r * k + at);
                _mm512_storeu_ps(to, _mm512_maskz_compress_ps(listed, x));
            }
            at += listed.count_ones() as usize;
        }
        index = _mm512_add_epi32(index, sixteen);
    }
    union_from(rows, (t, v), whole, at)
}

/// `b` (`k x n` at its strides) copied into panels of [`panel_width`] vectors, each panel's
/// `k` rows contiguous (the panel of columns from `j0` at `k * j0`) and its columns past `n`
/// zeros, for [`WithSimd`]: `None` where a value is infinite or NaN. A product reads a panel's
/// rows in an order of its own; contiguous, they do not share the few sets of cache that rows
/// a power of two apart map to. A `b` whose rows are 1 apart (a transposed kernel) is
/// transposed into the panels directly ([`direct::copy_columns`]), not into rows first.
struct Pack {
    b: RawOperand,
    k: usize,
    n: usize,
}

impl WithSimd for Pack {
    type Output = Option<Vec<f32>>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> Option<Vec<f32>> {
        let Self { b, k, n } = self;
        let (lanes, widest) = (S::F32_LANES, widest::<S>());
        let np = n.next_multiple_of(lanes);
        let mut panels = scratch::elements::<f32>(k * np);
        // The largest magnitude's bits (infinity's or above: not finite), over the columns
        // within `n` (the padding past it is zeros).
        let mut most = 0;
        let mut j0 = 0;
        while j0 < np {
            let w = panel_width((np - j0) / lanes, widest) * lanes;
            let within = n.saturating_sub(j0).min(w);
            let panel = &mut panels[k * j0..][..k * w];
            // SAFETY: the panel's columns are elements of `b` (as `Pack`'s maker promises).
            unsafe { direct::copy_columns(b, k, (j0, within), panel) };
            for row in panel.chunks_exact(w) {
                most = row[..within]
                    .iter()
                    .fold(most, |m, x| m.max(x.to_bits() & 0x7fff_ffff));
            }
            j0 += w;
        }
        if most >= f32::INFINITY.to_bits() {
            scratch::give(panels);
            return None;
        }
        Some(panels)
    }
}

/// A product over `a`'s listed values for [`WithSimd`]: the dense [`Product`] (its `b` the
/// packed panels) and the rows of `a` as [`Groups`].
struct Sparse<'a> {
    p: Product,
    groups: &'a Groups,
}

impl WithSimd for Sparse<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let (m, k, n) = self.p.dims;
        let lanes = S::F32_LANES;
        let np = n.next_multiple_of(lanes);
        let widest = widest::<S>();
        // Panel by panel (its rows of `b` in cache while every group passes over it).
        let mut j0 = 0;
        while j0 < np {
            let nv = panel_width((np - j0) / lanes, widest);
            // SAFETY: the panel's k rows of nv vectors are in the packed panels.
            let b = (unsafe { self.p.b.0.add(k * j0) }, nv * lanes);
            for g in 0..m.div_ceil(MR) {
                let mut r0 = 0;
                while r0 < MR && g * MR + r0 < m {
                    let at = Tile { g, r0, j0, b };
                    // SAFETY: the tile's rows (r0.. of group g, below m) and the panel's
                    // columns are within the product; the buffers' bounds are `sgemm`'s
                    // caller's.
                    r0 += unsafe {
                        match (m - g * MR - r0, nv) {
                            (MR.., 4) => tile::<S, MR, 4>(s, &self, at),
                            (MR.., 2) => tile::<S, MR, 2>(s, &self, at),
                            (MR.., _) => tile::<S, MR, 1>(s, &self, at),
                            (2.., 4) => tile::<S, 2, 4>(s, &self, at),
                            (2.., 2) => tile::<S, 2, 2>(s, &self, at),
                            (2.., _) => tile::<S, 2, 1>(s, &self, at),
                            (_, 4) => tile::<S, 1, 4>(s, &self, at),
                            (_, 2) => tile::<S, 1, 2>(s, &self, at),
                            (_, _) => tile::<S, 1, 1>(s, &self, at),
                        }
                    };
                }
            }
            j0 += nv * lanes;
        }
    }
}

/// Where a tile is: rows `r0..` of group `g`, the panel of columns from `j0`, and that panel's
/// packed rows of `b` (pointer, row length).
#[derive(Clone, Copy)]
struct Tile {
    g: usize,
    r0: usize,
    j0: usize,
    b: (*const f32, usize),
}

/// Rows `r0 .. r0 + R` of group `g` by the `NV` vectors of columns from `j0` of `c`: per block
/// of [`KC`] inner indices, the sums over the group's listed indices in registers (fused
/// multiply-adds in the inner order from zero), then added to `c` as the dense kernel adds
/// them. Returns `R`.
///
/// # Safety
/// The tile's rows and columns are within the product of `q`, whose buffers hold them.
#[inline(always)]
unsafe fn tile<S: Simd, const R: usize, const NV: usize>(s: S, q: &Sparse, at: Tile) -> usize {
    let Tile {
        g,
        r0,
        j0,
        b: (b, ldb),
    } = at;
    let (_, k, n) = q.p.dims;
    let lanes = S::F32_LANES;
    let groups = q.groups;
    let ts = &groups.t[g * k..][..k];
    let (rs, es) = groups.layout;
    let vs = &groups.v[g * MR * k..][..MR * k];
    let ends = &groups.ends[g * groups.blocks..][..groups.blocks];
    let zero = s.splat_f32s(0.0);
    let mut e = 0;
    for (block, &end) in ends.iter().enumerate() {
        let end = end as usize;
        let mut sums = [[zero; NV]; R];
        // SAFETY (this block): e..end is within the group's listed indices (< k), each a row
        // of the panel (NV vectors); each row's values run k from its start.
        unsafe {
            let mut av: [*const f32; R] =
                std::array::from_fn(|r| vs.as_ptr().add((r0 + r) * rs + e * es));
            let mut tp = ts.as_ptr().add(e);
            for _ in e..end {
                let bt = b.add(*tp as usize * ldb);
                let bv: [S::f32s; NV] =
                    std::array::from_fn(|v| bt.add(v * lanes).cast::<S::f32s>().read_unaligned());
                for (row, ar) in sums.iter_mut().zip(&mut av) {
                    let a = s.splat_f32s(**ar);
                    for (sum, &bv) in row.iter_mut().zip(&bv) {
                        *sum = s.mul_add_f32s(a, bv, *sum);
                    }
                    *ar = ar.wrapping_add(es);
                }
                tp = tp.add(1);
            }
        }
        let (i0, first) = (g * MR + r0, block == 0);
        // SAFETY: the tile is in `c`, as the caller promises.
        unsafe {
            if j0 + NV * lanes <= n {
                direct::store::<S, R, NV, true>(s, &q.p, sums, (i0, j0), first);
            } else {
                direct::store::<S, R, NV, false>(s, &q.p, sums, (i0, j0), first);
            }
        }
        e = end;
    }
    R
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::layers::native::direct::tests::same_bits_as_matrixmultiply;

    /// A small generator of uniform values in [0, 1).
    fn uniform(seed: u64) -> impl FnMut() -> f64 {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// An `rows x cols` row-major matrix of values whose products and sums round, zero (half
    /// of those `-0`) except with probability `density` in the columns where `alive(col)`:
    /// an activation's dead units, whose zeros every row shares.
    fn matrix(
        (rows, cols): (usize, usize),
        seed: u64,
        density: f64,
        alive: impl Fn(usize) -> bool,
    ) -> Vec<f32> {
        let mut u = uniform(seed);
        (0..rows * cols)
            .map(|j| {
                let (p, x) = (u(), u());
                if alive(j % cols) && p < density {
                    ((x - 0.5) * 7.3) as f32
                } else if p < 0.5 {
                    -0.0
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Runs `product` on a sparse `a` (dead columns, a transposed layout of it, both signs of
    /// zero) and compares its bits with `matrixmultiply`'s: shapes across tiles, panels and
    /// blocks of [`KC`], each operand plain or transposed, `beta` 0, 1 and another, `c` with a
    /// row stride past `n` (NaN where `beta = 0`: not read; untouched past `n`).
    fn check(product: impl Fn(RawGemm) -> bool) {
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (9, 33, 17),
            (64, 64, 128),
            (64, 128, 10),
            (37, 255, 33),
            (13, 256, 48),
            (16, 257, 31),
            (5, 600, 20),
            (130, 300, 70),
        ];
        for (m, k, n) in shapes {
            // `b` plain (0), transposed (1) or every other element of a matrix twice as
            // wide (2: neither stride 1).
            for (a_t, b_l) in [false, true]
                .into_iter()
                .flat_map(|t| [(t, 0), (t, 1), (t, 2)])
            {
                let b_t = b_l == 1;
                for beta in [0.0f32, 1.0, -0.75] {
                    // `a` stored m x k, or k x m and read through its strides; a third of
                    // its inner indices alive, 30 % of those nonzero.
                    let a = if a_t {
                        matrix((k, m), 1 + m as u64, 0.3, |_| true)
                            .chunks_exact(m)
                            .enumerate()
                            .flat_map(|(t, row)| {
                                row.iter().map(move |&x| if t % 3 == 0 { x } else { 0.0 })
                            })
                            .collect()
                    } else {
                        matrix((m, k), 1 + m as u64, 0.3, |t| t % 3 == 0)
                    };
                    let b = matrix((k, n), 2 + n as u64, 1.0, |_| true);
                    // Plain, transposed, or (for a plain `a` with `b` transposed) every
                    // other element of a matrix twice as wide, neither stride 1.
                    let spaced = !a_t && b_t;
                    let a = if spaced {
                        a.iter().flat_map(|&x| [x, f32::NAN]).collect()
                    } else {
                        a
                    };
                    let (rsa, csa) = match (a_t, spaced) {
                        (true, _) => (1, m),
                        (_, true) => (2 * k, 2),
                        _ => (k, 1),
                    };
                    let (b, rsb, csb) = match b_l {
                        0 => (b, n, 1),
                        1 => (b, 1, k),
                        _ => (b.iter().flat_map(|&x| [x, f32::NAN]).collect(), 2 * n, 2),
                    };
                    let old = matrix((m, n + 3), 3, 1.0, |_| true);
                    let at = format!("{m}x{k}x{n} a_t {a_t} b {b_l} beta {beta}");
                    same_bits_as_matrixmultiply(
                        (m, k, n),
                        ((&a, rsa, csa), (&b, rsb, csb)),
                        (beta, &old),
                        |g| assert!(product(g), "{at}: refused"),
                        &at,
                    );
                }
            }
        }
    }

    /// The bits of the dense product (`matrixmultiply`'s, as the dense kernel's) at each level
    /// this CPU has (x86-64-v4 and v3), every product listed (however dense).
    #[test]
    fn the_bits_of_the_dense_product() {
        if let Some(s) = pulp::x86::V4::try_new() {
            // SAFETY (each call): `check`'s buffers hold its products.
            check(|g| unsafe { listing(s, g, usize::MAX) });
        }
        if let Some(s) = pulp::x86::V3::try_new() {
            check(|g| unsafe { listing(s, g, usize::MAX) });
        }
    }

    /// The scan's two paths (AVX-512's compress and the plain loop) list the same indices
    /// and values.
    #[test]
    fn both_scans_list_the_same() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        for k in [1, 15, 16, 17, 100, 257] {
            let rows: Vec<Vec<f32>> = (0..MR as u64)
                .map(|r| matrix((1, k), 7 + r, 0.2, |t| t % 5 != 1))
                .collect();
            let rows: [&[f32]; MR] = std::array::from_fn(|r| &rows[r][..]);
            let (mut t0, mut v0) = (vec![u32::MAX; k], vec![f32::NAN; MR * k]);
            let (mut t1, mut v1) = (t0.clone(), v0.clone());
            // SAFETY: the CPU has AVX-512F; the lengths are as `union512` needs.
            let n0 = unsafe { union512(rows, &mut t0, &mut v0) };
            let n1 = union_from(rows, (&mut t1, &mut v1), 0, 0);
            assert_eq!(n0, n1, "k {k}");
            assert_eq!(t0[..n0], t1[..n1], "k {k}");
            for r in 0..MR {
                let (a, b) = (&v0[r * k..][..n0], &v1[r * k..][..n1]);
                assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
                // Listed exactly where a row is nonzero.
                assert!((0..n0).all(|e| rows.iter().any(|row| row[t0[e] as usize] != 0.0)));
            }
        }
    }

    /// What is left to the dense kernels (`false`, `c` untouched): an infinite or NaN value
    /// in `b` (a zero of `a` times it is NaN), a dense `a`; and through [`sgemm`], products
    /// too small or too narrow to gain. NaN in `a` is a nonzero: the bits of the dense
    /// product (NaN where it has NaN).
    #[test]
    fn what_is_left_to_the_dense_kernels() {
        let Some(s) = pulp::x86::V3::try_new() else {
            return;
        };
        let (m, k, n) = (64, 128, 64);
        let a = matrix((m, k), 1, 0.1, |_| true);
        let b = matrix((k, n), 2, 1.0, |_| true);
        let run = |a: &[f32], b: &[f32], c: &mut [f32], dims: (usize, usize, usize)| {
            let g = RawGemm {
                dims,
                a: (a.as_ptr(), dims.1, 1),
                b: (b.as_ptr(), dims.2, 1),
                beta: 1.0,
                c: c.as_mut_ptr(),
                ldc: dims.2,
            };
            // SAFETY: the buffers hold these shapes.
            (unsafe { at(s, g) }, unsafe { sgemm(g) })
        };
        for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            let mut b = b.clone();
            b[5 * n + 7] = bad;
            let mut c = vec![1.5f32; m * n];
            assert_eq!(run(&a, &b, &mut c, (m, k, n)), (false, false), "{bad} in b");
            assert!(c.iter().all(|&c| c == 1.5));
        }
        let full = matrix((m, k), 3, 1.0, |_| true);
        let mut c = vec![1.5f32; m * n];
        assert_eq!(run(&full, &b, &mut c, (m, k, n)), (false, false), "dense a");
        assert!(c.iter().all(|&c| c == 1.5));
        // Too small for `sgemm` (computed by `at` all the same), too narrow.
        let (small, narrow) = ((8, 16, 32), (1024, 128, 16));
        for dims in [small, narrow] {
            let a = matrix((dims.0, dims.1), 4, 0.1, |_| true);
            let b = matrix((dims.1, dims.2), 5, 1.0, |_| true);
            let mut c = vec![0.0f32; dims.0 * dims.2];
            let (_, taken) = run(&a, &b, &mut c, dims);
            assert!(!taken, "{dims:?}");
        }
        // NaN in a: listed, and NaN where the dense product has it.
        let mut a = a.clone();
        a[3 * k + 9] = f32::NAN;
        let (mut got, mut want) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
        assert!(run(&a, &b, &mut got, (m, k, n)).0, "NaN in a refused");
        // SAFETY: the buffers hold these shapes.
        unsafe {
            crate::blas::matrixmultiply(RawGemm {
                dims: (m, k, n),
                a: (a.as_ptr(), k, 1),
                b: (b.as_ptr(), n, 1),
                beta: 1.0,
                c: want.as_mut_ptr(),
                ldc: n,
            });
        }
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.is_nan(), w.is_nan());
            if !w.is_nan() {
                assert_eq!(g.to_bits(), w.to_bits());
            }
        }
        assert!(got[3 * n..4 * n].iter().all(|g| g.is_nan()));
    }
}
