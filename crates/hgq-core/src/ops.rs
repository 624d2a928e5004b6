//! The [`ElemOp`]s behind the public quantizer functions, and the
//! runtime-to-const-generic mode dispatch.
use crate::kernels::check::{finite, is_int, zero_one};
use crate::kernels::fixed::{self, o, r};
use crate::kernels::op::{ElemOp, ElemOut, N_DERIVED};
use crate::real::Real;
use crate::stateless::BitWidths;

/// Counter-based uniform noise in [0, 1): the same for an element whatever the thread split.
#[inline(always)]
pub(crate) fn uniform<C: Real>(seed: u64, index: u64) -> C {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // 24 bits: exact in f32 and f64.
    C::from_f64((z >> 40) as f64 * (1.0 / (1u64 << 24) as f64))
}

/// The fixed-point quantizer with modes as consts.
#[derive(Clone, Copy)]
pub(crate) struct FixedOp<const R: u8, const O: u8, const TRAIN: bool> {
    pub seed: u64,
    /// Zero the output where `k + i + f <= 0` (the layer quantizers' inference; never with
    /// `TRAIN`, see [`FixedOp::masks`]).
    pub mask: bool,
    /// `i` and `f` are raw (trainable) values that the op rounds half to even itself; else
    /// they must be integers (rounding them is then the identity).
    pub raw: bool,
    /// The two bit-width operands are KBI's raw `b` and `i` (with `raw`): the op uses
    /// `i = rc(i)` and `f = rc(b) - rc(i)`, and returns the gradients of that `i` and `f` (the
    /// caller forms `b`'s and `i`'s from them, see `FixedPoint::call`), or with `chain` those
    /// of `b` and `i`.
    pub kbi: bool,
    /// With `kbi`, the op returns b's and i's gradients themselves (`df` and `di + -df`,
    /// formed per element), not those of the `i` and `f` it formed: for element-wise bit
    /// widths, whose gradients are stored, not summed (see `FixedPoint::call`).
    pub chain: bool,
    /// The rounding mode's id when `R` is [`r::RARE`] (modes that share one instantiation).
    pub rare: u8,
}

impl<const R: u8, const O: u8, const TRAIN: bool> FixedOp<R, O, TRAIN> {
    /// Whether the zero mask applies: only outside training (the mask is an inference rule),
    /// so that in training it is a constant and the loops carry no compare and select for it.
    #[inline(always)]
    fn masks(self) -> bool {
        !TRAIN && self.mask
    }

    /// The `(i, f)` the op quantizes with, from the two bit-width operands (rounded half to
    /// even: the identity on the integers of a non-raw call, so one body serves both, and the
    /// loop has no branch on `raw`; KBI's `b`, `i` formed into `i`, `f`, a select on a value
    /// that is the same for the whole loop).
    #[inline(always)]
    fn bit_widths<C: Real>(self, p: [C; 3]) -> (C, C) {
        let (a, b) = (p[1].round_even(), p[2].round_even());
        let kbi_f = a - b;
        if self.kbi { (b, kbi_f) } else { (a, b) }
    }
}

impl<C: Real, const R: u8, const O: u8, const TRAIN: bool> ElemOp<C> for FixedOp<R, O, TRAIN> {
    const HAS_GRAD: [bool; 3] = [false, true, true];
    const N_DERIVED_USED: usize = N_DERIVED;
    const PRECOMPUTE: bool = true;
    #[inline(always)]
    fn passes(self, p: [C; 3]) -> bool {
        // `|` and `&`, not `||`: no branches in the element loop.
        zero_one(p[0]) & finite(p[1]) & finite(p[2]) & (self.raw | (is_int(p[1]) & is_int(p[2])))
    }
    #[inline(always)]
    fn derive(self, p: [C; 3]) -> [C; N_DERIVED] {
        let (i, f) = self.bit_widths(p);
        fixed::derive::<C, O, false>(p[0], i, f, self.masks())
    }
    const HAS_NORMAL: bool = true;
    #[inline(always)]
    fn all_normal(self, s: [&[C]; 3]) -> bool {
        // One loop each: raw values need no integer test, which is half of the work.
        if self.kbi {
            kbi_all_normal::<C>(s)
        } else if self.raw {
            fixed_all_normal::<C, true>(s)
        } else {
            fixed_all_normal::<C, false>(s)
        }
    }
    #[inline(always)]
    fn derive_normal(self, p: [C; 3]) -> [C; N_DERIVED] {
        let (i, f) = self.bit_widths(p);
        fixed::derive::<C, O, true>(p[0], i, f, self.masks())
    }
    #[inline(always)]
    fn apply<const GRAD: bool>(self, x: C, d: [C; N_DERIVED], g: C, index: u64) -> ElemOut<C> {
        let u = if R == r::STOCH || (R == r::RARE && self.rare == r::STOCH) {
            uniform::<C>(self.seed, index)
        } else {
            C::ZERO
        };
        let l = fixed::forward_grad::<C, R, O, TRAIN, GRAD>(x, d, g, u, self.rare);
        let zero = self.masks() && d[fixed::d::KEEP] == C::ZERO;
        // KBI's chain rule where the caller asks for it: b's gradient is f's, i's is its own
        // plus minus f's (i's two uses), as autograd forms them.
        let (g1, g2) = if self.chain {
            (l.gf, l.gi + -l.gf)
        } else {
            (l.gi, l.gf)
        };
        ElemOut {
            y: if zero { C::ZERO } else { l.y },
            gx: l.gx,
            gp: [C::ZERO, g1, g2],
        }
    }
}

/// [`ElemOp::all_normal`] of [`FixedOp`]: k is 0 or 1, i and f lie in [-100, 100] and (unless
/// `RAW`) are integers. `|v| <= 100` is false for NaN and implies finite; the rounded raw
/// values stay within [-100, 100], so every exponent `derive` forms (f, -f, max(i, -f), and
/// with k <= 1 the WRAP ones) lies in [-101, 101].
///
/// Normal elements also have at most `C::DIGITS` bits (`k + max(i, -f) + f`, one less for raw
/// values, which round by at most a half each), so that every bound and sum the pass forms is
/// exact in `C`: wider elements take the general path, after which the caller looks for them
/// (and computes in f64 where there are; see `crate::wide`).
#[inline(always)]
fn fixed_all_normal<C: Real, const RAW: bool>(s: [&[C]; 3]) -> bool {
    let n = s[0].len();
    let (k, i, f) = (&s[0][..n], &s[1][..n], &s[2][..n]);
    let hundred = C::from_f64(100.0);
    let digits = C::from_f64(C::DIGITS as f64 - if RAW { 1.0 } else { 0.0 });
    // An OR of 0/1 flags (LLVM vectorizes it; a select of a float flag it leaves scalar).
    let mut bad = 0u32;
    for j in 0..n {
        let (kv, iv, fv) = (k[j], i[j], f[j]);
        let small = (iv.abs() <= hundred) & (fv.abs() <= hundred);
        let nf = -fv;
        let ip = if iv > nf { iv } else { nf };
        let narrow = kv + ip + fv <= digits;
        let ints = RAW | (is_int(iv) & is_int(fv));
        bad |= !(zero_one(kv) & small & narrow & ints) as u32;
    }
    bad == 0
}

/// [`ElemOp::all_normal`] of a KBI [`FixedOp`] (`s` is `[k, b, i]`, raw): what
/// [`fixed_all_normal`] checks, on the integers `i = rc(i)`, `f = rc(b) - rc(i)` the op forms
/// (which hold exactly what they are, so the width may use every digit of `C`).
#[inline(always)]
fn kbi_all_normal<C: Real>(s: [&[C]; 3]) -> bool {
    let n = s[0].len();
    let (k, b, i) = (&s[0][..n], &s[1][..n], &s[2][..n]);
    let hundred = C::from_f64(100.0);
    let digits = C::from_f64(C::DIGITS as f64);
    let mut bad = 0u32;
    for j in 0..n {
        let kv = k[j];
        let iv = i[j].round_even();
        let fv = b[j].round_even() - iv;
        let small = (iv.abs() <= hundred) & (fv.abs() <= hundred);
        let nf = -fv;
        let ip = if iv > nf { iv } else { nf };
        let narrow = kv + ip + fv <= digits;
        bad |= !(zero_one(kv) & small & narrow) as u32;
    }
    bad == 0
}

/// The minifloat quantizer.
#[derive(Clone, Copy)]
pub(crate) struct FloatOp;

impl<C: Real> ElemOp<C> for FloatOp {
    const HAS_GRAD: [bool; 3] = [true, true, true];
    const N_DERIVED_USED: usize = 3;
    const PRECOMPUTE: bool = false;
    #[inline(always)]
    fn passes(self, p: [C; 3]) -> bool {
        is_int(p[0]) & is_int(p[1]) & is_int(p[2])
    }
    #[inline(always)]
    fn derive(self, p: [C; 3]) -> [C; N_DERIVED] {
        [
            p[0],
            p[1],
            p[2],
            C::ZERO,
            C::ZERO,
            C::ZERO,
            C::ZERO,
            C::ZERO,
        ]
    }
    #[inline(always)]
    fn apply<const GRAD: bool>(self, x: C, d: [C; N_DERIVED], g: C, _index: u64) -> ElemOut<C> {
        let [y, gx, gm, ge, ge0] =
            crate::kernels::float::forward_grad::<C, GRAD>(x, d[0], d[1], d[2], g);
        ElemOut {
            y,
            gx,
            gp: [gm, ge, ge0],
        }
    }
}

/// Something generic to run with a [`FixedOp`] of runtime-chosen modes.
pub(crate) trait WithFixedOp {
    type Output;
    fn call<const R: u8, const O: u8, const TRAIN: bool>(
        self,
        op: FixedOp<R, O, TRAIN>,
    ) -> Self::Output;
}

macro_rules! op {
    ($v:expr, $R:expr, $O:expr, $train:expr, $a:expr) => {
        $v.call(FixedOp::<{ $R }, { $O }, $train> {
            seed: $a.seed,
            mask: $a.mask,
            raw: $a.raw,
            kbi: $a.kbi,
            chain: $a.chain,
            rare: $a.rare,
        })
    };
}

macro_rules! by_overflow {
    ($v:expr, $ov:expr, $train:expr, $a:expr, $R:expr) => {
        match ($ov, $train) {
            (o::WRAP, false) => op!($v, $R, o::WRAP, false, $a),
            (o::WRAP, true) => op!($v, $R, o::WRAP, true, $a),
            (o::SAT, _) => op!($v, $R, o::SAT, false, $a),
            (o::SAT_SYM, _) => op!($v, $R, o::SAT_SYM, false, $a),
            (_, _) => op!($v, r::RARE, o::WRAP_SM, false, $a),
        }
    };
}

/// The runtime values of a [`FixedOp`].
#[derive(Clone, Copy)]
pub(crate) struct Args {
    seed: u64,
    mask: bool,
    raw: bool,
    kbi: bool,
    chain: bool,
    /// The rounding mode's id (see [`with_fixed_op`]).
    rare: u8,
}

impl Args {
    /// The values of a pass with rounding `round` (its id), noise `seed`, the zero `mask`,
    /// bit widths of kind `bit_widths`, and (for [`BitWidths::KbiRaw`]) KBI's `chain` rule
    /// formed per element ([`FixedOp::chain`]).
    pub(crate) fn new(
        round: u8,
        seed: u64,
        mask: bool,
        bit_widths: BitWidths,
        chain: bool,
    ) -> Args {
        let kbi = bit_widths == BitWidths::KbiRaw;
        Args {
            seed,
            mask,
            raw: bit_widths != BitWidths::Integer,
            kbi,
            chain: kbi && chain,
            rare: round,
        }
    }
}

/// Monomorphizes on (round, overflow, training): only WRAP depends on training. The rare
/// rounding modes share the [`r::RARE`] instantiation, and so does the rare overflow mode
/// WRAP_SM (its rounding a runtime value): each instantiation is every kernel again for every
/// element type and SIMD level, most of hgq-core's build time.
pub(crate) fn with_fixed_op<V: WithFixedOp>(
    v: V,
    overflow: u8,
    training: bool,
    a: Args,
) -> V::Output {
    match a.rare {
        r::TRN => by_overflow!(v, overflow, training, a, r::TRN),
        r::RND => by_overflow!(v, overflow, training, a, r::RND),
        r::RND_CONV => by_overflow!(v, overflow, training, a, r::RND_CONV),
        r::STOCH => by_overflow!(v, overflow, training, a, r::STOCH),
        _ => by_overflow!(v, overflow, training, a, r::RARE),
    }
}

/// The seed of one training step, from a quantizer's seed and its step counter.
pub(crate) fn uniform_seed(seed: u64, step: u64) -> u64 {
    let mut z = seed.wrapping_add(step.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    z ^ (z >> 33)
}
